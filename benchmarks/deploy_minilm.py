#!/usr/bin/env python
"""Deploying a pruned model on CPU: the fine-tuned MiniLM SST-2 classifier dense, compacted (Fisher plan at 50 %
encoder FLOPs + least squares, as benchmarks/structured_retraining_free.py), dynamic int8 (`hfprune.quantization`),
compacted + int8, and the dense and compacted models exported to ONNX (`hfprune.onnx_export`) run by onnxruntime.
SST-2 dev accuracy (all 872 rows) and CPU latency at batch 32 x 128 and 1 x 128: medians of interleaved rounds
after a full-size warm-up, speedups as medians of per-round paired ratios against dense PyTorch. One run; run it
with the steady allocator and nothing else on the machine:

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483648 \\
        python benchmarks/deploy_minilm.py --model runs/bench/minilm-sst2-dense/final
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from structured_retraining_free import (  # noqa: E402 - benchmarks/ is not a package
    SEQ_LEN,
    accuracy,
    dev_batches,
    hfprune_retraining_free,
    log,
    machine,
    paired_latency,
)


REPO = Path(__file__).resolve().parents[1]


class OnnxClassifier:
    """An onnxruntime session called like the PyTorch classifier (``model(**inputs).logits``)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.names = [item.name for item in session.get_inputs()]

    def eval(self) -> OnnxClassifier:
        return self

    def __call__(self, **inputs: torch.Tensor) -> SimpleNamespace:
        feeds = {name: inputs[name].numpy() if name in inputs else torch.zeros_like(inputs["input_ids"]).numpy()
                 for name in self.names}  # fmt: skip
        return SimpleNamespace(logits=torch.from_numpy(self.session.run(["logits"], feeds)[0]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "runs" / "bench" / "minilm-sst2-dense" / "final")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "glue")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "deploy_minilm.json")
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--num-calibration", type=int, default=1024)
    parser.add_argument("--eval-limit", type=int, default=None)
    parser.add_argument("--rounds-b32", type=int, default=10)
    parser.add_argument("--rounds-b1", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hfprune.adapters.base import text_example_inputs
    from hfprune.onnx_export import export_onnx, onnx_session
    from hfprune.quantization import quantize_dynamic_int8

    torch.manual_seed(0)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dense = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    dense.set_attn_implementation("sdpa")
    dev = dev_batches(tokenizer, args.data_dir, args.eval_limit)
    compacted = copy.deepcopy(dense)
    _, _, pruning = hfprune_retraining_free(args, compacted, tokenizer, dev)
    pruning.pop("plan")
    models = {"dense": dense, "compacted": compacted, "int8": quantize_dynamic_int8(dense),
              "compacted_int8": quantize_dynamic_int8(compacted)}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hfprune-onnx-") as folder:
        for name in ("dense", "compacted"):
            export_onnx(models[name], Path(folder) / name)
            models[f"onnx_{name}"] = OnnxClassifier(onnx_session(Path(folder) / name))
    results: dict = {"command": "python " + " ".join(sys.argv), "machine": machine(), "seq_len": SEQ_LEN,
                     "pruning": pruning, "variants": {}}  # fmt: skip
    for name, model in models.items():
        results["variants"][name] = {"dev_accuracy": accuracy(model, dev)}
        log(f"{name}: dev accuracy {results['variants'][name]['dev_accuracy']:.4f}")
    big = text_example_inputs(dense, 32, SEQ_LEN)
    for label, batch, rounds in (("batch32", 32, args.rounds_b32), ("batch1", 1, args.rounds_b1)):
        inputs = text_example_inputs(dense, batch, SEQ_LEN)
        log(f"latency {label}: {rounds} interleaved rounds")
        results[label] = paired_latency(models, inputs, rounds, args.warmup, big)
        results[label].pop("all_ms", None)
    results["wall_s"] = time.perf_counter() - started
    args.output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    for name, variant in results["variants"].items():
        speedups = [results[label]["paired_speedup_vs_dense"].get(name, 1.0) for label in ("batch32", "batch1")]
        print(f"| {name} | {variant['dev_accuracy']:.2%} | {speedups[0]:.2f}x | {speedups[1]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
