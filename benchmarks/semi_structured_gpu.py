#!/usr/bin/env python
"""2:4 semi-structured sparsity on an NVIDIA GPU: measured latency of a 2:4-pruned encoder against the dense one.

Needs a CUDA GPU of compute capability 8.0 or later (torch's 2:4 kernels; there is none for CPUs, where the script
stops with that message). A BERT-base-shaped encoder classifier (random init from its config: weights do not
change the kernels' speed) in fp16; its encoder linear layers pruned 2:4 by magnitude with hfprune
(``structure={"type": "nm", "n": 2, "m": 4}``), converted with ``hfprune.semi_structured.to_semi_structured_``.
Reported: the largest logit difference between the zeroed and the converted model, and paired medians of
interleaved rounds (CUDA events) at each batch size, for the whole model and for one FFN up-projection alone.

    python benchmarks/semi_structured_gpu.py                      # BERT-base shape, batches 1 and 32 x 128 tokens
    python benchmarks/semi_structured_gpu.py --hidden 384 --layers 6 --heads 12 --intermediate 1536   # MiniLM shape
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import torch


REPO = Path(__file__).resolve().parents[1]


def time_forward(fn: Any, iterations: int) -> float:
    """Milliseconds per call of ``fn`` over ``iterations`` calls, timed with CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iterations):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iterations


def paired(variants: dict[str, Any], rounds: int, iterations: int) -> dict[str, Any]:
    """Interleaved rounds (the order alternates), warm-up first; medians and the median of per-round ratios."""
    for fn in variants.values():
        for _ in range(10):
            fn()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            times[name].append(time_forward(variants[name], iterations))
    base = names[0]
    return {
        "median_ms": {name: statistics.median(values) for name, values in times.items()},
        "speedup_vs_dense": {
            name: statistics.median(a / b for a, b in zip(times[base], values, strict=True))
            for name, values in times.items()
        },  # fmt: skip
        "rounds": rounds,
        "iterations_per_round": iterations,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=3072)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "semi_structured_gpu.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("semi_structured_gpu.py needs an NVIDIA GPU (compute capability 8.0+): torch has no 2:4 kernel for "
              "CPUs, where 2:4 zeros run at dense speed. Nothing was measured.", file=sys.stderr)  # fmt: skip
        return 2
    from transformers import BertConfig, BertForSequenceClassification

    from hfprune import PruningConfig, prune_
    from hfprune.adapters import get_adapter
    from hfprune.semi_structured import nm_violations, to_semi_structured_
    from hfprune.targets import resolve_targets

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    config = BertConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                        intermediate_size=args.intermediate, num_labels=2)  # fmt: skip
    dense = BertForSequenceClassification(config).eval()
    zeroed = copy.deepcopy(dense)
    prune_(zeroed, PruningConfig(structure={"type": "nm", "n": 2, "m": 4}, sparsity=0.5, importance="magnitude"))
    targets = sorted(resolve_targets(zeroed, get_adapter(zeroed).default_target_modules, None))
    violations = sum(nm_violations(zeroed.get_submodule(name).weight) for name in targets)
    dense, zeroed = dense.to("cuda", dtype), zeroed.to("cuda", dtype)
    sparse = copy.deepcopy(zeroed)
    converted = to_semi_structured_(sparse, targets)
    capability = torch.cuda.get_device_capability()
    results: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv),
        "machine": {
            "gpu": torch.cuda.get_device_name(),
            "capability": list(capability),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "host": platform.node(),
        },  # fmt: skip
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "converted_layers": len(converted),
        "pattern_violations": violations,
        "model": {},
        "ffn_up_projection": {},
    }
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        ids = torch.randint(0, config.vocab_size, (batch_size, args.seq_len), device="cuda")
        with torch.inference_mode():
            difference = float((zeroed(input_ids=ids).logits - sparse(input_ids=ids).logits).abs().max())
            models = {"dense": dense, "2:4 zeros, dense kernels": zeroed, "2:4 semi-structured": sparse}
            variants = {name: (lambda m=model, i=ids: m(input_ids=i)) for name, model in models.items()}
            record = paired(variants, args.rounds, args.iterations)
        record["max_logit_difference_vs_zeroed"] = difference
        results["model"][f"{batch_size}x{args.seq_len}"] = record
        print(f"model {batch_size}x{args.seq_len}", json.dumps(record["speedup_vs_dense"]), flush=True)
        name = targets[[t.endswith("intermediate.dense") for t in targets].index(True)]
        layer_dense, layer_sparse = dense.get_submodule(name), sparse.get_submodule(name)
        x = torch.randn(batch_size * args.seq_len, args.hidden, device="cuda", dtype=dtype)
        with torch.inference_mode():
            results["ffn_up_projection"][f"{batch_size * args.seq_len} tokens"] = paired(
                {"dense": lambda f=layer_dense, i=x: f(i), "2:4 semi-structured": lambda f=layer_sparse, i=x: f(i)},
                args.rounds, args.iterations,
            )  # fmt: skip
    args.output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
