#!/usr/bin/env bash
# CNN channel pruning benchmark: pretrained CIFAR ResNet-56 to half FLOPs (uniform L1, EagleEye, Torch-Pruning),
# each followed by the same distillation fine-tune, plus timm resnet50 / mobilenetv2_100 (random init) FLOPs and
# latency. Run from the repo root with the venv's python first on PATH. Extra arguments go to the script, e.g.
#   bash benchmarks/run_cnn_channel_pruning.sh --epochs 3
# Output: benchmarks/results/cnn_channel_pruning.json (override with --output) and a markdown table on stdout.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Steady allocator: glibc otherwise returns multi-MB activation buffers to the OS and page-faults them back.
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483648
python benchmarks/cnn_channel_pruning.py "$@"
