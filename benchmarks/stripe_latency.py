#!/usr/bin/env python
"""Does skipping pruned stripes make a CNN faster on this CPU? CIFAR ResNet-56 with 50 % / 75 % / 90 % of the
stripes of every 3 x 3 convolution removed (one-shot stripe magnitude, `structure="stripes"`), compacted with
`hfprune.stripes.compact_stripes_`, timed against the dense model and against the same model with the stripes only
zeroed, at batch 64 and batch 1 (32 x 32), medians of interleaved rounds after a full-size warm-up, paired speedups.
Accuracy is not measured here (no fine-tuning): this is the speed question only. Run with nothing else running:

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483648 python benchmarks/stripe_latency.py
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
ALLOCATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", default="0.5,0.75,0.9")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "stripe_latency.json")
    args = parser.parse_args()
    import timm

    from hfprune import PruningConfig, prune_
    from hfprune.models import cifar_resnet  # noqa: F401 - registers cifar_resnet56 with timm
    from hfprune.stripes import compact_stripes_

    torch.manual_seed(0)
    dense = timm.create_model("cifar_resnet56", num_classes=10).eval()
    convs = [name for name, m in dense.named_modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    results = {"command": "python " + " ".join(sys.argv), "model": "cifar_resnet56 (random init)",
               "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                           "threads": torch.get_num_threads(),
                           "env": {k: os.environ.get(k) for k in ALLOCATOR_SETTINGS}},
               "variants": {}}  # fmt: skip
    models = {"dense": dense}
    for sparsity in (float(s) for s in args.sparsities.split(",")):
        zeroed = prune_(copy.deepcopy(dense), PruningConfig(sparsity=sparsity, structure="stripes",
                                                            target_modules=convs))  # fmt: skip
        compacted = copy.deepcopy(zeroed)
        kept = compact_stripes_(compacted)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            error = float((compacted(x) - zeroed(x)).abs().max())
        models[f"zeroed_{sparsity:g}"] = zeroed
        models[f"stripes_{sparsity:g}"] = compacted
        results["variants"][f"stripes_{sparsity:g}"] = {"sparsity": sparsity, "replaced_convs": len(kept),
                                                        "max_abs_diff_vs_zeroed": error}  # fmt: skip
    names = list(models)
    for batch in (64, 1):
        x = torch.randn(batch, 3, 32, 32)
        times = {name: [] for name in names}
        with torch.inference_mode():
            for name in names:
                for _ in range(3):
                    models[name](x)
            for _ in range(args.rounds):
                for name in names:
                    start = time.perf_counter()
                    models[name](x)
                    times[name].append((time.perf_counter() - start) * 1000)
        medians = {name: statistics.median(times[name]) for name in names}
        speedups = {name: statistics.median(d / t for d, t in zip(times["dense"], times[name], strict=True))
                    for name in names if name != "dense"}  # fmt: skip
        results[f"batch{batch}"] = {"median_ms": medians, "paired_speedup_vs_dense": speedups, "rounds": args.rounds}
        print(f"batch {batch}: " + ", ".join(f"{n} {medians[n]:.2f} ms" for n in names), flush=True)
    args.output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
