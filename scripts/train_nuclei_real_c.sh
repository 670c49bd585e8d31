#!/usr/bin/env bash
# Recipe C of scripts/train_nuclei_real.sh (ship rule and recipes A/B there): the real-only fine-tuning
# recipe of `neuroseg train nuclei --init-from` on the whole real GoNuclear volume (it holds out its own
# 25 % slab along Z at the model's scale for the kept weights and the thresholds), then the held-out matrix.
# Runs from a clean `git archive HEAD` of src/ (the shared checkout may hold others' unfinished edits).
#   scripts/train_nuclei_real_c.sh                # final model -> /work/runs/nuc_realC_all
#   MATRIX_ONLY=/work/runs/ft_cap_low/ft_10min scripts/train_nuclei_real_c.sh   # matrix of an X-split model
# Recipe D (session 7, docs/nuclei-model-card.md "Session 7"): the same with a 20 % synthetic anchor:
#   RUN=/work/runs/nuc_realD_all SRC=/work/runs/nuc_realD_src EXTRA="$D_FLAGS" scripts/train_nuclei_real_c.sh
#   D_FLAGS="--synthetic 16 --synthetic-seed 1000 --synthetic-vary 0.25 --synthetic-axial-blur 1.0 4.5
#            --synthetic-dome 0.0 0.6 --synthetic-randomize 0.75 --synthetic-share 0.2"
set -euo pipefail
RUN=${RUN:-/work/runs/nuc_realC_all}
SRC=${SRC:-/work/runs/nuc_realC_src}
REAL=/work/shared/real_nuclei
export OMP_NUM_THREADS=1
if [[ -z "${MATRIX_ONLY:-}" ]]; then
  rm -rf "$SRC" && mkdir -p "$SRC" && git archive HEAD src | tar -x -C "$SRC"
  PYTHONPATH="$SRC/src" NEUROSEG_MODELS_DIR="$RUN.registry" nice -n 5 python -m napari_neuroseg.cli train nuclei \
    --init-from neuroseg_nuclei --images "$REAL/gonuclear_1135_raw.tif" --labels "$REAL/gonuclear_1135_labels.tif" \
    --max-minutes 10 --threads 1 --budget-clock cpu --no-register ${EXTRA:-} -o "$RUN" 2>&1 | tee "$RUN.log"
fi
M=${MATRIX_ONLY:-$RUN}
PYTHONPATH="$SRC/src" nice -n 5 python -c "
import sys; sys.argv = ['bench', '--threads', '1', '--modes', 'default,voxel', '--json', '$M/heldout.json']
sys.path.insert(0, 'benchmarks')
import napari_neuroseg.models.stardist3d as m
_load = m.load_model
m.load_model = lambda name=None, **kw: _load('$M', **kw)
import bench_heldout_nuclei as b; b.main()" | tee "$M/heldout.log"
