#!/usr/bin/env bash
# The exact commands that trained, tuned and evaluated the shipped model
# src/napari_neuroseg/models/stardist3d/pretrained/neuroseg_nuclei (see docs/nuclei-model-card.md).
# Data: synthetic nuclei only (make_nuclei seeds 0-19, 48x128x128, appearance varied by 25 %);
# 2 of them (seeds 4 and 19) are held out for validation. 2 shared CPU cores, no GPU.
# The run was stopped and resumed (--resume) with a new step count / patch shape as CPU time
# allowed; resuming recomputes the cosine learning-rate schedule for the new --steps.
set -euo pipefail
RUN=${1:-runs/neuroseg_nuclei}
COMMON=(--synthetic 20 --synthetic-shape 48 128 128 --synthetic-seed 0 --synthetic-vary 0.25 --val-fraction 0.1
        --n-rays 64 --grid 1 2 2 --anisotropy 2 1 1 --backbone unet --n-filter-base 16 --unet-depth 2 --conv-after 64
        --lr 1e-3 --val-every 50 --seed 0 --device cpu --threads 2 --workers 1 -o "$RUN")

# 1) steps 0-200: the original run was this command with --steps 900 and no --no-optimize-thresholds,
#    stopped by hand (kill) right after its step-200 checkpoint because one step took ~6 s on the
#    shared CPU; `--steps 900` is kept so that the learning-rate schedule of steps 0-200 is the same.
#    Stop it yourself after "step 200/900 ... val" appears in the log.
# 2) steps 200-500, 3) 500-640: patches 16x64x64, batch 2
# 4) steps 640-N: patches 32x64x64, batch 1 (fewer nuclei cut by the patch's Z border)
if [[ "${FROM_SCRATCH:-1}" == 1 ]]; then
  nice -n 10 neuroseg train nuclei "${COMMON[@]}" --steps 900 --batch-size 2 --patch-size 16 64 64 \
    --checkpoint-every 50 || true
fi
nice -n 10 neuroseg train nuclei "${COMMON[@]}" --resume --steps 500 --batch-size 2 --patch-size 16 64 64 \
  --checkpoint-every 50 --no-optimize-thresholds
nice -n 10 neuroseg train nuclei "${COMMON[@]}" --resume --steps 640 --batch-size 2 --patch-size 16 64 64 \
  --checkpoint-every 20 --no-optimize-thresholds
nice -n 10 neuroseg train nuclei "${COMMON[@]}" --resume --steps "${FINAL_STEPS:-1050}" --batch-size 1 \
  --patch-size 32 64 64 --checkpoint-every 25 --no-optimize-thresholds

# thresholds: see docs/nuclei-model-card.md (optimize_thresholds on crops of the validation volumes)

# ship the model files (not the checkpoint / optimizer state)
DEST=src/napari_neuroseg/models/stardist3d/pretrained/neuroseg_nuclei
mkdir -p "$DEST"
cp "$RUN"/config.json "$RUN"/thresholds.json "$RUN"/weights.pt "$RUN"/training.json "$DEST"/

# held-out evaluation: the stardist package's 3D test image + unseen synthetic volumes
nice -n 10 python -m napari_neuroseg.models.stardist3d.training.evaluate "$DEST" \
  --synthetic 2 --seed 900000 --shape 32 96 96 --json "$RUN"/evaluation.json
