#!/usr/bin/env bash
# Structured retraining-free pruning benchmark (MiniLM SST-2, 50% encoder FLOPs), run twice: with the default glibc
# allocator and with a steady one. Run from the repo root after the dense teacher exists
# (runs/bench/minilm-sst2-dense/final, see run_glue_fine_pruning.sh). Extra arguments go to both runs.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
MODEL=${MODEL:-runs/bench/minilm-sst2-dense/final}
RESULTS=benchmarks/results

# 1. Default allocator (MALLOC_* unset even if the calling shell exports them).
env -u MALLOC_MMAP_THRESHOLD_ -u MALLOC_TRIM_THRESHOLD_ \
    python benchmarks/structured_retraining_free.py --model "$MODEL" \
    --output "$RESULTS/structured_retraining_free.json" "$@"

# 2. Steady allocator: glibc otherwise returns multi-MB activation buffers to the OS and page-faults them back.
MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483648 \
    python benchmarks/structured_retraining_free.py --model "$MODEL" \
    --output "$RESULTS/structured_retraining_free_steady_alloc.json" "$@"
