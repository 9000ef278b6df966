#!/usr/bin/env bash
# Structured fine-pruning benchmark (heads + FFN neurons removed during training, MiniLM SST-2, 50% encoder FLOPs):
# group movement vs group magnitude, same steps and distillation. Run from the repo root after the dense teacher
# exists (runs/bench/minilm-sst2-dense/final, see run_glue_fine_pruning.sh). Extra arguments go to the script.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Steady allocator: glibc otherwise returns multi-MB activation buffers to the OS and page-faults them back.
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483648
python benchmarks/structured_fine_pruning.py --teacher "${TEACHER:-runs/bench/minilm-sst2-dense/final}" "$@"
