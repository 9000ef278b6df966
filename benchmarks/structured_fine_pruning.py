#!/usr/bin/env python
"""Structured fine-pruning benchmark: heads and FFN neurons removed during training, MiniLM on SST-2.

Each student starts from the dense fine-tuned MiniLM (the teacher of benchmarks/recipes/minilm_sst2_dense.yaml),
trains for the same number of steps with the same distillation from it, and loses heads and neurons on the same
cubic schedule until the encoder keeps ``--target-flops`` of its FLOPs (same kept fraction of heads and of
neurons, ranked globally, kept FFN widths rounded to 8). Methods: group movement pruning (one learned score per
head/neuron) and group magnitude. The saved models are compacted; the script reloads them with
`hfprune.load_pruned`, counts their FLOPs (eager attention) and measures their CPU latency against the dense
model in interleaved rounds after a full-size warm-up (paired ratios, medians).

    python benchmarks/structured_fine_pruning.py --teacher runs/bench/minilm-sst2-dense/final --steps 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from glue_fine_pruning import base_recipe, schedule  # noqa: E402
from structured_retraining_free import SEQ_LEN, machine, measured_flops, num_params, paired_latency  # noqa: E402


METHODS = {
    "group_movement": {"importance": {"type": "movement", "update_every": 10}},
    "group_magnitude": {"importance": "magnitude"},
}


def run_method(args: argparse.Namespace, method: str) -> dict[str, Any]:
    from hfprune.recipes import GlueRecipe, train_glue

    recipe = base_recipe(args, method)
    recipe["model"] = str(args.teacher)  # start from the fine-tuned dense model
    recipe["pruning"] = {
        **METHODS[method],
        "structure": {"type": "heads_and_neurons", "round_to": 8},
        "target_flops": args.target_flops,
        "flops_seq_len": SEQ_LEN,
        "scope": "global",
        "schedule": schedule(args.steps),
    }
    start = time.perf_counter()
    result = train_glue(GlueRecipe(**recipe))
    plan = json.loads(Path(result["output_dir"], "pruning_plan.json").read_text())
    return {
        "dev_accuracy": result["metrics"]["validation"]["eval_validation_accuracy"],
        "train_runtime_s": result["train_runtime_s"],
        "wall_s": time.perf_counter() - start,
        "pruning_config": recipe["pruning"],
        "kept_heads_per_layer": [len(h) for h in plan["heads"]],
        "kept_neurons_per_layer": [len(n) for n in plan["neurons"]],
        "output_dir": result["output_dir"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=REPO / "runs" / "bench" / "minilm-sst2-dense" / "final")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "glue")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bench" / "structured")
    parser.add_argument(
        "--output", type=Path, default=REPO / "benchmarks" / "results" / "structured_fine_pruning.json"
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--rounds-b1", type=int, default=10)
    parser.add_argument("--rounds-b32", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    from transformers import AutoModelForSequenceClassification

    from hfprune import load_pruned
    from hfprune.adapters.base import text_example_inputs

    run_start = time.perf_counter()
    results: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine(),
        "teacher": str(args.teacher),
        "data": f"GLUE SST-2 from {args.data_dir}: train (batch 32, max length 64), full dev set",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "flops_method": "torch.utils.flop_counter.FlopCounterMode, eager attention, batch 1 x 128 random tokens",
        "latency_method": "CPU, sdpa, inference_mode; full-size warm-up; interleaved rounds; paired medians",
    }
    dense = AutoModelForSequenceClassification.from_pretrained(args.teacher).eval()
    dense_flops = measured_flops(dense)
    variants: dict[str, dict[str, Any]] = {"dense": {"flops": dense_flops, "flops_ratio": 1.0,
                                                     "params": num_params(dense)}}  # fmt: skip
    teacher_eval = json.loads((args.teacher / "eval_results.json").read_text())
    variants["dense"]["dev_accuracy"] = teacher_eval["metrics"]["validation"]["eval_validation_accuracy"]
    models = {"dense": dense}
    for method in args.methods:
        print(f"[structured_fine_pruning] {method}: {args.steps} steps", flush=True)
        info = run_method(args, method)
        model = load_pruned(info["output_dir"])
        flops = measured_flops(model)
        variants[method] = {**info, "flops": flops, "flops_ratio": flops / dense_flops, "params": num_params(model)}
        models[method] = model
        print(f"[structured_fine_pruning] {method}: acc {info['dev_accuracy']:.4f}, FLOPs {flops / dense_flops:.3f}",
              flush=True)  # fmt: skip
    for model in models.values():
        model.set_attn_implementation("sdpa")
    full = text_example_inputs(dense, 32, SEQ_LEN)
    latency = {}
    for key, batch, rounds in (("batch32", 32, args.rounds_b32), ("batch1", 1, args.rounds_b1)):
        inputs = full if batch == 32 else text_example_inputs(dense, batch, SEQ_LEN)
        latency[key] = {"batch_size": batch, "seq_len": SEQ_LEN,
                        **paired_latency(models, inputs, rounds, args.warmup, full)}  # fmt: skip
        for name in args.methods:
            speedup = latency[key]["paired_speedup_vs_dense"][name]
            variants[name][f"{key}_paired_speedup"] = speedup
            variants[name][f"{key}_speedup_x_flops_ratio"] = speedup * variants[name]["flops_ratio"]
    results["variants"] = variants
    results["latency"] = latency
    results["total_wall_s"] = time.perf_counter() - run_start
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print("| variant | dev acc | FLOPs | params (M) | b32 speedup | b1 speedup |\n|---|---:|---:|---:|---:|---:|")
    for name, data in variants.items():
        print(
            f"| {name} | {data['dev_accuracy']:.4f} | {data['flops_ratio']:.3f} | {data['params'] / 1e6:.2f} | "
            f"{data.get('batch32_paired_speedup', 1.0):.2f} | {data.get('batch1_paired_speedup', 1.0):.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
