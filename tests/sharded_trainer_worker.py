"""Fine-prune a tiny BERT with `PruningTrainer` for six steps, unsharded, or on 2 CPU ranks under accelerate's FSDP2
or DeepSpeed ZeRO-2.

Run by tests/test_trainer_sharded.py:

    python tests/sharded_trainer_worker.py single OUT IMPORTANCE STRUCTURE [--max-grad-norm G]
    torchrun --nproc_per_node 2 tests/sharded_trainer_worker.py MODE OUT IMPORTANCE STRUCTURE \
        [--state-dict-type SHARDED_STATE_DICT] [--stop-at 3 | --resume] [--max-grad-norm G] [--bf16]
        [--deepspeed-fp16]

MODE is ``full_shard`` or ``shard_grad_op`` (FSDP2), or ``zero2`` (DeepSpeed, with ``DS_ACCELERATOR=cpu``). The
loss is cross-entropy plus distillation from a frozen DistilBERT teacher (sharded too under FSDP2). Every run
sees the same global batch of 8 per step, in order (sequential sampler): the unsharded run in one batch, each of
the 2 ranks half of it. ``--stop-at K`` ends the run after step K (a checkpoint is written every 3 steps);
``--resume`` continues from the newest complete checkpoint in a new process group. At the end every rank writes
``masks_rank{r}.pt``, ``state_rank{r}.pt`` (the pruner state) and ``sharded_rank{r}.txt`` (how FSDP2 sharded
student and teacher), rank 0 writes ``log_history.json``, `save_pruned_model` (called on every rank) writes
``OUT/pruned`` from rank 0, and a second call to the same folder is refused on every rank (``refused_rank{r}.txt``).
Sharded runs bypass accelerate's GPU-only check (tests/cpu_sharding.py).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from transformers import TrainerCallback


STEPS, GLOBAL_BATCH, SAVE_EVERY = 6, 8, 3


def tiny_student():
    """tests/models.py's tiny BERT, wider, without dropout (dropout would differ with how the batch is split)."""
    from models import tiny_bert  # tests/ is on the path: it is this script's folder

    torch.manual_seed(0)
    return tiny_bert(hidden_size=64, intermediate_size=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_teacher():
    """A tiny DistilBERT on the same vocabulary: a teacher of another family than the student, whose layer class
    (TransformerBlock) is not the student's BertLayer that FSDP2 is configured to wrap."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(1)
    config = DistilBertConfig(vocab_size=100, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                              max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                              seq_classif_dropout=0.0)  # fmt: skip
    return DistilBertForSequenceClassification(config).eval()


class StopAt(TrainerCallback):
    """Ends training after step ``step``: to the next run, as if it had been killed there."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if state.global_step >= self.step:
            control.should_training_stop = True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["single", "full_shard", "shard_grad_op", "zero2"])
    parser.add_argument("out", type=Path)
    parser.add_argument("importance")
    parser.add_argument("structure")
    parser.add_argument("--state-dict-type", default="FULL_STATE_DICT")
    parser.add_argument("--stop-at", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--max-grad-norm", type=float, default=0.02)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--deepspeed-fp16", action="store_true", help="fp16 in DeepSpeed's config (zero2)")
    args = parser.parse_args()
    sharded = args.mode != "single"
    if sharded:
        from cpu_sharding import open_cpu_gates

        open_cpu_gates()

    from datasets import Dataset
    from torch.distributed.fsdp import FSDPModule
    from transformers import TrainingArguments

    from hfprune import PruningConfig, PruningTrainer
    from hfprune.sharding import is_sharded

    generator = torch.Generator().manual_seed(1)
    rows = GLOBAL_BATCH * STEPS
    train = Dataset.from_dict({
        "input_ids": torch.randint(0, 100, (rows, 16), generator=generator).tolist(),
        "labels": torch.randint(0, 2, (rows,), generator=generator).tolist(),
    })  # fmt: skip
    sharding = {}
    if args.mode == "zero2":
        # DeepSpeed's own engine and ZeRO-2 optimizer around the Trainer's AdamW (its CPU accelerator, gloo).
        sharding = dict(deepspeed={
            "zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "zero_allow_untested_optimizer": True,
            "fp16": {"enabled": args.deepspeed_fp16},
        })  # fmt: skip
    elif sharded:
        sharding = dict(fsdp=[args.mode, "auto_wrap"],
                        fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["BertLayer"],
                                     "state_dict_type": args.state_dict_type})  # fmt: skip
    training = TrainingArguments(
        output_dir=str(args.out / "run"), use_cpu=True, report_to=[], seed=0, max_steps=STEPS,
        per_device_train_batch_size=GLOBAL_BATCH // (2 if sharded else 1), train_sampling_strategy="sequential",
        learning_rate=1e-3, lr_scheduler_type="constant", save_steps=SAVE_EVERY, logging_steps=1,
        max_grad_norm=args.max_grad_norm, bf16=args.bf16, disable_tqdm=True, **sharding,
    )  # fmt: skip
    scope = "local" if args.structure == "nm" else "global"  # N:M is chosen within each group of m weights
    pruning = PruningConfig(importance=args.importance, structure=args.structure, sparsity=0.5, scope=scope,
                            schedule={"type": "cubic", "start_step": 1, "end_step": 4, "every": 1})  # fmt: skip
    student = tiny_student()
    # The dtype a layer really computes in (FSDP2's mixed precision casts the gathered weights for the forward).
    compute_dtypes: list[str] = []
    query = student.bert.encoder.layer[0].attention.self.query
    query.register_forward_pre_hook(lambda module, _: compute_dtypes.append(str(module.weight.dtype)))
    trainer = PruningTrainer(
        model=student, args=training, train_dataset=train, pruning_config=pruning,
        teacher_model=tiny_teacher(), callbacks=[StopAt(args.stop_at)] if args.stop_at else [],
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    if args.stop_at:
        return
    rank = trainer.args.process_index
    torch.save(trainer.pruner.masks(), args.out / f"masks_rank{rank}.pt")
    torch.save(trainer.pruner.state_dict(), args.out / f"state_rank{rank}.pt")  # a collective under FSDP2
    # Whether the student's parameters are DTensors, how many FSDP units it has (a root and one per BertLayer when
    # wrapped as configured), whether the teacher is an FSDP module, and the dtype its first layer computed in.
    units = sum(isinstance(module, FSDPModule) for module in trainer.model.modules())
    sharded_student = is_sharded(next(trainer.model.parameters()))
    facts = f"{sharded_student} {units} {isinstance(trainer.teacher_model, FSDPModule)} {compute_dtypes[0]}"
    (args.out / f"sharded_rank{rank}.txt").write_text(facts)
    if rank == 0:
        (args.out / "log_history.json").write_text(json.dumps(trainer.state.log_history))
    trainer.save_pruned_model(args.out / "pruned")
    try:  # the folder exists now: rank 0 refuses it, and every rank must hear so rather than wait in the gather
        trainer.save_pruned_model(args.out / "pruned")
    except Exception as err:  # noqa: BLE001 - the test reads which error each rank got
        (args.out / f"refused_rank{rank}.txt").write_text(type(err).__name__)


if __name__ == "__main__":
    from hfprune.cli import exit_process

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
    exit_process(0)  # a gloo rank must not leave through interpreter teardown
