#!/usr/bin/env python
"""2:4 sparsity in one shot, no retraining: the fine-tuned MiniLM SST-2 classifier's encoder linear layers pruned to
N:M 2:4 by magnitude and by Wanda (|W| x input-feature norm from 128 SST-2 training sentences), SST-2 dev accuracy
on all 872 rows. Accuracy only: on CPU 2:4 zeros run at dense speed (no kernel), and no GPU was available.

    python benchmarks/nm_minilm.py --model runs/bench/minilm-sst2-dense/final
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from structured_retraining_free import SEQ_LEN, accuracy, dev_batches, machine  # noqa: E402


REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "runs" / "bench" / "minilm-sst2-dense" / "final")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "glue")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "nm_minilm.json")
    parser.add_argument("--num-calibration", type=int, default=128)
    parser.add_argument("--patterns", default="2:4,1:4,4:8")
    args = parser.parse_args()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hfprune import PruningConfig, prune_
    from hfprune.adapters import get_adapter
    from hfprune.recipes import glue_calibration_batches
    from hfprune.semi_structured import nm_violations
    from hfprune.targets import resolve_targets

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dense = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    dev = dev_batches(tokenizer, args.data_dir, None)
    batches = glue_calibration_batches("sst2", args.data_dir, tokenizer, num_examples=args.num_calibration,
                                       batch_size=32, max_seq_length=SEQ_LEN)  # fmt: skip
    targets = set(resolve_targets(dense, get_adapter(dense).default_target_modules, None))
    results = {"command": "python " + " ".join(sys.argv), "machine": machine(),
               "variants": {"dense": {"dev_accuracy": accuracy(dense, dev)}}}  # fmt: skip
    for pattern in args.patterns.split(","):
        n, m = (int(part) for part in pattern.split(":"))
        for importance in ("magnitude", "wanda"):
            model = copy.deepcopy(dense)
            config = PruningConfig(structure={"type": "nm", "n": n, "m": m}, sparsity=1 - n / m, importance=importance)
            start = time.perf_counter()
            prune_(model, config, batches if importance == "wanda" else None)
            seconds = time.perf_counter() - start
            pruned = [module for name, module in model.named_modules() if name in targets]
            violations = sum(nm_violations(layer.weight, n, m) for layer in pruned)
            record = {"dev_accuracy": accuracy(model, dev), "prune_s": seconds, "pattern_violations": violations}
            results["variants"][f"{pattern} {importance}"] = record
            print(pattern, importance, record, flush=True)
    args.output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
