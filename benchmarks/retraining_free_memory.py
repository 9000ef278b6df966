"""Peak memory of retraining-free pruning through the CLI (Fisher mask search, compaction, least squares).

Each case runs ``hfprune prune`` in its own process and reads that process's peak resident set size from the
kernel (``wait4``). Cases: the MiniLM SST-2 teacher calibrated on SST-2 (with dev accuracy, which must stay
85.89%), and on the GLUE tasks with the longest inputs here (MRPC, RTE: sentence pairs up to 128 tokens), and a
BERT-base-sized model (12 layers, hidden 768, FFN 3072, random weights: only memory is measured) on SST-2.
The MiniLM teacher is benchmarks/recipes/minilm_sst2_dense.yaml's output (see configs/
minilm_sst2_retraining_free_50.yaml for how to make it).

    python benchmarks/retraining_free_memory.py --output benchmarks/results/retraining_free_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path


TEACHER = "runs/bench/minilm-sst2-dense/final"
BERT_BASE = "runs/bench/bert-base-random"
RECIPE = "configs/minilm_sst2_retraining_free_50.yaml"
GOALS_GB = {"minilm": 1.5, "bert-base": 8.0}


def make_bert_base(path: Path) -> None:
    """A BERT-base-sized classifier with random weights and the teacher's (BERT uncased) tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, num_labels=2)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(TEACHER).save_pretrained(path)


def run_case(model: str, task: str, evaluate: bool, output: Path) -> dict:
    command = [sys.executable, "-m", "hfprune.cli", "prune", "--config", RECIPE, "--model", model,
               "--task", task, "--output", str(output), "--overwrite", "--no-latency",
               "--eval" if evaluate else "--no-eval"]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = process.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{out[-3000:]}")
    result = {"command": " ".join(command[1:]), "peak_rss_gb": usage.ru_maxrss / 1e6, "wall_s": round(seconds, 1)}
    pruned = re.search(r"Pruned in ([\d.]+) s", out)
    result["pruning_s"] = float(pruned.group(1)) if pruned else None
    accuracy = re.search(r"after: \{'validation': \{'accuracy': ([\d.]+)", out)
    if accuracy:
        result["dev_accuracy_after"] = float(accuracy.group(1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/results/retraining_free_memory.json")
    parser.add_argument("--skip-bert-base", action="store_true")
    args = parser.parse_args()
    if not Path(TEACHER).is_dir():
        raise SystemExit(f"{TEACHER} is missing: train the teacher first (see {RECIPE}).")
    cases = [("minilm", TEACHER, "sst2", True), ("minilm", TEACHER, "mrpc", False), ("minilm", TEACHER, "rte", False)]
    if not args.skip_bert_base:
        if not Path(BERT_BASE).is_dir():
            make_bert_base(Path(BERT_BASE))
        # SST-2 only: on 2 CPU cores a BERT-base-sized model takes ~10 min here, RTE's long pairs far longer.
        cases += [("bert-base", BERT_BASE, "sst2", False)]
    results = []
    for size, model, task, evaluate in cases:
        output = Path(f"runs/bench/memory-{size}-{task}")
        result = {"model": size, "task": task, **run_case(model, task, evaluate, output)}
        result["goal_gb"] = GOALS_GB[size]
        result["goal_met"] = result["peak_rss_gb"] <= GOALS_GB[size]
        print(json.dumps(result), flush=True)
        results.append(result)
    machine = {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
               "python": platform.python_version()}  # fmt: skip
    import torch
    import transformers

    machine.update(torch=torch.__version__, transformers=transformers.__version__)
    payload = {"benchmark": "retraining_free_memory", "num_calibration": 512, "machine": machine,
               "command": "python benchmarks/retraining_free_memory.py", "results": results}  # fmt: skip
    Path(args.output).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
