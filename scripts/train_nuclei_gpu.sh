#!/usr/bin/env bash
# Continue training the shipped nuclei model on a GPU (prepared for a session with a CUDA device).
# On CUDA the distance targets are computed on the GPU (star_dist3d_torch, bit-exact with
# stardist); the DataLoader workers only sample, augment and compute the prob targets.
#
#   scripts/train_nuclei_gpu.sh [RUN_DIR] [MINUTES]
#
# RUN_DIR must hold a checkpoint.pt of the shipped architecture (copy the CPU run, e.g.
# runs/neuroseg_nuclei). Keep --synthetic 20 and --seed 0: the validation split (and so the
# best validation loss stored in the checkpoint, which decides the kept weights) stays the same.
set -euo pipefail
RUN=${1:-runs/neuroseg_nuclei}
MIN=${2:-8}
python benchmarks/bench_star_dist_targets.py --device cuda --batch 8 || true   # speed + exactness on this GPU
neuroseg train nuclei --synthetic 20 --synthetic-shape 48 128 128 --synthetic-seed 0 --synthetic-vary 0.25 \
  --val-fraction 0.1 --n-rays 64 --grid 1 2 2 --anisotropy 2 1 1 --backbone unet --n-filter-base 16 \
  --unet-depth 2 --conv-after 64 --lr 1e-3 --val-every 100 --seed 0 --device cuda --threads 4 \
  --workers "$(( $(nproc) - 2 ))" --steps 100000 --batch-size 8 --patch-size 48 96 96 --checkpoint-every 250 \
  --no-optimize-thresholds --max-minutes "$MIN" --log-every 100 -o "$RUN" --resume
# then, on any machine: thresholds and the held-out evaluation as in scripts/train_nuclei.sh
