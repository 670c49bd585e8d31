#!/usr/bin/env bash
# The exact commands that trained and evaluated the shipped model
# src/napari_neuroseg/models/stardist3d/pretrained/neuroseg_nuclei (see docs/nuclei-model-card.md).
# Runs on 2 CPU cores (~45 min); the data are synthetic nuclei only (seeds 0-19).
set -euo pipefail
RUN=${1:-runs/neuroseg_nuclei}

nice -n 10 neuroseg train nuclei \
  --synthetic 20 --synthetic-shape 48 128 128 --synthetic-seed 0 --synthetic-vary 0.25 --val-fraction 0.1 \
  --n-rays 64 --grid 1 2 2 --anisotropy 2 1 1 --backbone unet --n-filter-base 16 --unet-depth 2 --conv-after 64 \
  --steps 900 --batch-size 2 --patch-size 16 64 64 --lr 1e-3 \
  --val-every 50 --checkpoint-every 50 --seed 0 --device cpu --threads 2 --workers 1 \
  -o "$RUN"

# ship the model files (not the checkpoint / optimizer state)
DEST=src/napari_neuroseg/models/stardist3d/pretrained/neuroseg_nuclei
mkdir -p "$DEST"
cp "$RUN"/config.json "$RUN"/thresholds.json "$RUN"/weights.pt "$RUN"/training.json "$DEST"/

# held-out evaluation: the stardist package's 3D test image + 4 unseen synthetic volumes (seeds 900000-900003)
nice -n 10 python -m napari_neuroseg.models.stardist3d.training.evaluate "$DEST" \
  --synthetic 4 --seed 900000 --shape 48 128 128 --json "$RUN"/evaluation.json
