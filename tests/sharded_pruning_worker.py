"""Fine-prune a tiny BERT for six steps, unsharded or under FSDP2 (``fully_shard``) on 2 CPU ranks (gloo).

Run by tests/test_sharding.py:

    python tests/sharded_pruning_worker.py single OUT IMPORTANCE STRUCTURE
    torchrun --nproc_per_node 2 tests/sharded_pruning_worker.py sharded OUT IMPORTANCE STRUCTURE [--resume-at 3]

The loss is half cross-entropy, half distillation from a frozen teacher (sharded too under FSDP2). Every run
sees the same global batch of 8 per step (each rank half of it under FSDP2, whose gradient average then
equals the unsharded gradient). Writes ``masks_rank{r}.pt`` and ``state_rank{r}.pt`` (the pruner state) per rank;
with ``--resume-at K`` the run stops after step K with a sharded checkpoint (torch.distributed.checkpoint for the
model and optimizer, the pruner state from rank 0), and a fresh process group resumes it to the end. Rank 0 then
gathers the whole model, compacts it and saves it with ``save_pruned`` into ``OUT/compacted`` (the unsharded
run does the same).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch


STEPS, GLOBAL_BATCH = 6, 8


def tiny_encoder(seed: int):
    """tests/models.py's tiny BERT, wider, without dropout (dropout would differ with how the batch is split)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from models import tiny_bert

    torch.manual_seed(seed)
    return tiny_bert(hidden_size=64, intermediate_size=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def build(importance: str, structure: str):
    from hfprune import PruningConfig
    from hfprune.pruner import Pruner

    model = tiny_encoder(seed=0)
    pruning = PruningConfig(importance=importance, structure=structure, sparsity=0.5, scope="global",
                            schedule={"type": "cubic", "start_step": 1, "end_step": 4, "every": 1})  # fmt: skip
    pruner = Pruner(model, pruning, total_steps=STEPS)
    pruner.attach_()  # before sharding: score parameters must exist when fully_shard takes the parameters
    return model, pruner, pruning


def build_teacher():
    return tiny_encoder(seed=1).requires_grad_(False)


def batches(rank: int, world: int):
    generator = torch.Generator().manual_seed(1)
    share = GLOBAL_BATCH // world
    for _ in range(STEPS):
        ids = torch.randint(0, 100, (GLOBAL_BATCH, 16), generator=generator)
        labels = torch.randint(0, 2, (GLOBAL_BATCH,), generator=generator)
        yield ids[rank * share : (rank + 1) * share], labels[rank * share : (rank + 1) * share]


def run(args: argparse.Namespace, start: int, stop: int) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.fsdp import fully_shard

    from hfprune.distillation import kd_loss

    sharded = args.mode == "sharded"
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)

    model, pruner, pruning = build(args.importance, args.structure)
    teacher = build_teacher()
    checkpoint = args.out / "checkpoint"
    if start:
        pruner.load_state_dict(torch.load(checkpoint / "pruner.pt", weights_only=True))
    if sharded:
        for layer in model.bert.encoder.layer:
            fully_shard(layer)
        fully_shard(model)
        for layer in teacher.bert.encoder.layer:  # the teacher sharded too, as a large one would be
            fully_shard(layer)
        fully_shard(teacher)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)  # momentum: state to resume
    if start:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=str(checkpoint / "dcp"))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    for step, (ids, labels) in enumerate(batches(rank, world), start=1):
        if step <= start:
            continue
        outputs = model(input_ids=ids, labels=labels)
        with torch.no_grad():
            teacher_logits = teacher(input_ids=ids).logits
        (0.5 * outputs.loss + 0.5 * kd_loss(outputs.logits, teacher_logits, temperature=2.0)).backward()
        pruner.accumulate()
        optimizer.step()
        optimizer.zero_grad()
        pruner.step(step)
        if step == stop:
            break
    if stop < STEPS:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(checkpoint / "dcp"))
        state = pruner.state_dict()  # collective under FSDP2 (scores are gathered): every rank builds it
        if rank == 0:
            torch.save(state, checkpoint / "pruner.pt")
        return
    torch.save(pruner.masks(), args.out / f"masks_rank{rank}.pt")
    torch.save(pruner.state_dict(), args.out / f"state_rank{rank}.pt")
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # Under FSDP2 a collective: every rank gathers, rank 0 writes.
    whole = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        save_compacted(args, whole)


def save_compacted(args: argparse.Namespace, whole: dict) -> None:
    """Rank 0: the gathered weights into an unsharded copy, made permanent, compacted (structured) and saved."""
    from hfprune import compact_
    from hfprune.hub import save_pruned

    model, pruner, pruning = build(args.importance, args.structure)
    model.load_state_dict(whole)
    plan = pruner.plan() if pruner.structured else None
    pruner.make_permanent_()
    if plan is not None:
        compact_(model, plan)
    save_pruned(model, args.out / "compacted", pruning_config=pruning, plan=plan)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["single", "sharded"])
    parser.add_argument("out", type=Path)
    parser.add_argument("importance")
    parser.add_argument("structure")
    parser.add_argument("--resume-at", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "checkpoint").mkdir(exist_ok=True)
    if args.mode == "single":
        run(args, 0, STEPS)
        return
    import torch.distributed as dist

    dist.init_process_group("gloo")
    if args.resume_at:
        run(args, 0, args.resume_at)
        dist.barrier()
    run(args, args.resume_at, STEPS)
    dist.barrier()


if __name__ == "__main__":
    from hfprune.cli import exit_process

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
    exit_process(0)  # a gloo rank must not leave through interpreter teardown
