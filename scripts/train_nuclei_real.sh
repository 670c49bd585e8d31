#!/usr/bin/env bash
# neuroseg_nuclei fine-tuned on the real GoNuclear volume MIXED with the wide-randomised synthetic
# volumes it was trained on (issue 12, nuclei; results in docs/nuclei-model-card.md).
#
# Recipe (fixed before any candidate was scored; the same for the X-split runs and the final run):
#   start: the shipped neuroseg_nuclei weights (session 4);
#   real data: /work/shared/real_nuclei/gonuclear_1135 (README: usable for training), resampled to the
#     model's scale by its voxel size (0.2837 x 0.1268 x 0.1268 um from the ImageJ metadata -> 0.5 x 0.25
#     x 0.25 um; training.finetune.to_model_scale, the functions prediction uses): SIDE=low -> X < 50 only,
#     SIDE=high -> X >= 50 only, SIDE=all -> the whole volume (the shipped candidate);
#   synthetic data: the 48 session-4 volumes (make_nuclei seeds 1000-1047, 75 % wide randomisation;
#     cached by scripts/train_nuclei_robust.sh in /work/runs/nuc_robust/data.npz, regenerated if absent),
#     split as in session 4 (_split(48, 0.1, seed 0): 43 train, 5 validation);
#   mixing: half of the patches from the real part, half from the synthetic training volumes
#     (TrainSettings.sample_weights = training.data.mix_weights(real, synthetic, 0.5));
#   schedule: 500 steps, batch 2, patch 32 x 48 x 24 (fits the 25-voxel-wide X half at the model's scale),
#     Adam peak lr 5e-4, 10 warm-up steps, cosine to 5 %; the trainer's augmentation;
#   weights: the LAST weights (no checkpoint selection at all: keep_best=False);
#   thresholds: prob searched by the trainer's optimize_thresholds (nms 0.3, border 0 as shipped) on the
#     5 synthetic validation volumes + the real training part (so they never see the X-split test half);
#   CPU, 1 torch thread, no worker processes, nice.
#
# Ship rule (written before any candidate was scored):
#   1. X-split estimate: the recipe with SIDE=low scored on X >= 50 and with SIDE=high scored on X < 50
#      (F1 @ IoU 0.5, stardist.matching, the test half segmented at its voxel size from the metadata):
#      mean of the two >= 0.80 AND higher than the shipped model's mean on the same halves;
#   2. the final model (SIDE=all): stardist's test_image_nuclei_3d >= 0.90;
#   3. own synthetic (bench_heldout_nuclei, make_nuclei seed 900000) >= 0.90;
#   4. independent generator (benchmarks/heldout, 4 volumes, voxel-size mode): mean F1 not lower than the
#      shipped model's (0.847) by more than 0.02.
#   The stardist image and the independent generator are only scored, never used to choose anything.
#   If the rule fails, nothing is shipped.
#
# RECIPE=A (above) FAILED the rule: X-split 0.703 (train X<50, test X>=50) and 0.652 (train X>=50, test X<50),
#   mean 0.678 < 0.80 and below the shipped model's 0.718 (0.686 / 0.750). Not shipped.
# RECIPE=B, written after seeing A's X-split scores (so its X-split estimate is that of a second try on the
#   same halves; nothing else was looked at): A chose the probability threshold on validation data dominated
#   by the hard synthetic volumes (hundreds of nuclei vs ~20 real ones) and kept the last weights. B is the
#   fine-tuning recipe of `neuroseg train nuclei --init-from` (training.finetune.FINETUNE_RECIPE: weights
#   with the best held-out segmentation score, checked every 25 steps, early stop after 8 checks without a
#   better one, peak lr 5e-4, 10 warm-up steps; prob/NMS/border searched by the trainer) with the validation
#   on REAL data only: a slab of 25 % of the real part's longest axis at the model's scale (Z >= 43 of 57,
#   training.finetune.holdout_slab) is held out of training and chooses the weights and the thresholds;
#   the 43 synthetic training volumes are mixed in at half of the patches (as A); at most 600 steps, batch 2,
#   patch 32 x 48 x 24. The final model (SIDE=all) therefore trains on the whole volume except that slab
#   (Z < 43 at the model's scale, ~75 %). Same ship rule.
# RECIPE=B FAILED the rule too: X-split 0.743 (train X<50) and 0.800 (train X>=50), mean 0.772 < 0.80 (above
#   the shipped 0.718); its X<50 model also lost the independent generator (mean 0.567 vs 0.847). No final
#   (SIDE=all) model was trained; nothing shipped. Full matrix: docs/nuclei-model-card.md, "Session 5".
#   Runs: /work/runs/nuc_real_{low,high} (A), /work/runs/nuc_realB_{low,high} (B), each with xsplit.json,
#   heldout.json/.log, log.txt; the shipped model's halves: /work/runs/nuc_real_shipped/xsplit.json.
#
#   SIDE=low  scripts/train_nuclei_real.sh     # X-split candidate, test X >= 50
#   SIDE=high scripts/train_nuclei_real.sh     # X-split candidate, test X < 50
#   SIDE=all  scripts/train_nuclei_real.sh     # the final model (whole real volume)
#   SIDE=shipped EVAL_ONLY=1 scripts/train_nuclei_real.sh   # the shipped model on both test halves
#   D=src/napari_neuroseg/models/stardist3d/pretrained/neuroseg_nuclei
#   cp /work/runs/nuc_real_all/{weights.pt,thresholds.json,training.json,scale.json} "$D"/  # config.json unchanged
# Runs the library API (train()) from a snapshot of src/ (SRC) so edits in the shared checkout cannot
# change a running job.
# RECIPE=C, declared (committed) after A and B failed and BEFORE any C model was scored on the matrix: the
#   real-only fine-tuning recipe of `neuroseg train nuclei --init-from neuroseg_nuclei --images --labels`
#   (FINETUNE_RECIPE with the 250-step cap, held-out real slab for weights/thresholds, --max-minutes 10,
#   1 thread, CPU clock), i.e. no synthetic mixing; the gates (2)-(4) check directly whether it lost what the
#   model knew. Its X-split (rule 1) is the issue-13 measurement of the cap: 0.831 (train X<50) / 0.833
#   (train X>=50), mean 0.832 (benchmarks/bench_finetune_nuclei.py --minutes 10, /work/runs/ft_cap_{low,high});
#   similar real-only scores were known before this session (docs/finetune.md), so rule 1 is no surprise
#   for C; gates (2)-(4) are what decides. The final model: the same command on the whole volume
#   (scripts/train_nuclei_real_c.sh), run from a clean `git archive HEAD` of src/.
# RECIPE=C FAILED gate (4): final model own synthetic 0.940, stardist 0.942 (pass), independent mean 0.774
#   (0.903 / 0.667 / 0.839 / 0.686) < 0.827; its X-split models 0.773 / 0.812 there too. Nothing shipped.
set -euo pipefail
SIDE=${SIDE:-low}
RUN=${RUN:-/work/runs/nuc_real_$SIDE}
SRC=${SRC:-/work/runs/nuc_real_src}
RECIPE=${RECIPE:-B}
if [[ "$RECIPE" == B ]]; then RUN=${RUN_B:-/work/runs/nuc_realB_$SIDE}; fi
STEPS=${STEPS:-$([[ "$RECIPE" == B ]] && echo 600 || echo 500)}
REAL_FRACTION=${REAL_FRACTION:-0.5}
if [[ "${EVAL_ONLY:-0}" != 1 ]]; then
  rm -rf "$SRC" && mkdir -p "$SRC" && cp -r src/napari_neuroseg "$SRC"/
fi
mkdir -p "$RUN"
export OMP_NUM_THREADS=1
PYTHONPATH="$SRC:${PYTHONPATH:-}" SIDE="$SIDE" RUN="$RUN" STEPS="$STEPS" REAL_FRACTION="$REAL_FRACTION" \
  RECIPE="$RECIPE" EVAL_ONLY="${EVAL_ONLY:-0}" nice -n 5 python - <<'PY'
import json, os, time
from pathlib import Path
import numpy as np
import torch
torch.set_num_threads(1)
from stardist.matching import matching
from napari_neuroseg.io import read_image, read_labels
from napari_neuroseg.models.stardist3d import load_model
from napari_neuroseg.models.stardist3d.model import StarDist3D
from napari_neuroseg.models.stardist3d.pretrained import resolve_model_path
from napari_neuroseg.models.stardist3d.train import TrainSettings, _split, synthetic_dataset, train
from napari_neuroseg.models.stardist3d.training.data import mix_weights
from napari_neuroseg.models.stardist3d.training.finetune import to_model_scale
from napari_neuroseg.runtime.scale import plan_scale, voxel_size_from_volume

side, run = os.environ["SIDE"], Path(os.environ["RUN"])
REAL = Path("/work/shared/real_nuclei")
vol = read_image(REAL / "gonuclear_1135_raw.tif")
raw, lab = np.asarray(vol.data), np.asarray(read_labels(REAL / "gonuclear_1135_labels.tif"))
vs = voxel_size_from_volume(vol)
CUT = 50
halves = {"low": (slice(None), slice(None), slice(0, CUT)), "high": (slice(None), slice(None), slice(CUT, None))}


def test_scores(model, log):
    """F1@0.5 on the X-split test half(s) of this run (SIDE=shipped: both), at the file's voxel size;
    also with the data set's crop-border rule applied to the split plane (bench_finetune_nuclei.f1)."""
    out = {}
    sides = ["low", "high"] if side == "shipped" else [side] if side in halves else []
    for s in sides:
        test = halves["high" if s == "low" else "low"]
        x, y = raw[test], lab[test].copy()
        pred, _ = model.predict_instances(x, voxel_size=vs)
        m = matching(y, pred, thresh=0.5)
        plane = 0 if s == "low" else -1  # the split plane inside the test half
        ids, counts = np.unique(y, return_counts=True)
        cut = set(np.unique(np.take(y, plane, axis=2)).tolist()) - {0}
        y[np.isin(y, [int(i) for i, c in zip(ids, counts) if int(i) in cut and c < 200])] = 0
        m2 = matching(y, pred, thresh=0.5)
        out[f"train {s}"] = {"test": "X>=50" if s == "low" else "X<50", "f1": float(m.f1), "n_true": int(m.n_true),
                             "n_pred": int(m.n_pred), "f1_cut_rule": float(m2.f1)}
        log(f"train {s} -> test {out[f'train {s}']['test']}: F1@0.5 {m.f1:.3f} ({m.n_pred} pred / {m.n_true} true), "
            f"cut rule {m2.f1:.3f}")
    return out


def log(msg):
    print(msg, flush=True)
    with open(run / "log.txt", "a") as fh:
        fh.write(msg + "\n")


if os.environ["EVAL_ONLY"] == "1":
    model = load_model(None if side == "shipped" else str(run), device="cpu")
    (run / "xsplit.json").write_text(json.dumps(test_scores(model, log), indent=1))
    raise SystemExit(0)

base = StarDist3D.load(resolve_model_path("neuroseg_nuclei"), device="cpu")
plan = plan_scale(base.scale, voxel_size=vs)
x_real, y_real = (raw, lab) if side == "all" else (raw[halves[side]], lab[halves[side]])
xr, yr = to_model_scale(x_real, y_real, plan.factors)
log(f"real part {side}: {x_real.shape} at {vs} um -> {xr.shape} at the model's scale "
    f"(factors {np.round(plan.factors, 3).tolist()}), {len(np.unique(yr)) - 1} objects")

cache = Path("/work/runs/nuc_robust/data.npz")
t = time.perf_counter()
if cache.is_file():
    z = np.load(cache)
    n = len([k for k in z.files if k.startswith("x")])
    xs, ys = [z[f"x{i}"] for i in range(n)], [z[f"y{i}"] for i in range(n)]
else:
    xs, ys = synthetic_dataset(48, (48, 128, 128), seed=1000, anisotropy=(2, 1, 1), vary=0.25,
                               axial_blur=(1.0, 4.5), dome=(0.0, 0.6), randomize=0.75)
tr, va = _split(len(xs), 0.1, np.random.default_rng(0))  # session 4's split of the same volumes
log(f"{len(xs)} synthetic volumes in {time.perf_counter() - t:.0f} s: train {len(tr)}, validation {va}")

if os.environ["RECIPE"] == "A":
    images = [xr] + [xs[i] for i in tr]
    labels = [yr] + [ys[i] for i in tr]
    weights = mix_weights([yr], [ys[i] for i in tr], float(os.environ["REAL_FRACTION"]))
    val_images = [xs[i] for i in va] + [xr]
    val_labels = [ys[i] for i in va] + [yr]
    settings = TrainSettings(
        steps=int(os.environ["STEPS"]), batch_size=2, patch_size=(32, 48, 24), learning_rate=5e-4, warmup_steps=10,
        val_every=100, checkpoint_every=50, keep_best=False, optimize_thresholds=True, nms_threshs=(0.3,),
        borders=(0,), seed=0, device="cpu", threads=1, workers=0, init_from="neuroseg_nuclei",
        model_scale=base.scale.to_dict(), sample_weights=tuple(weights),
    )
else:  # B: the fine-tuning recipe, validated on a held-out slab of the real part only
    from napari_neuroseg.models.stardist3d.train import quick_nms_backend
    from napari_neuroseg.models.stardist3d.training.finetune import finetune_settings, holdout_slab

    (xt, yt), (xv, yv), info = holdout_slab(xr, yr, 0.25)
    log(f"held-out slab {info}")
    images = [xt] + [xs[i] for i in tr]
    labels = [yt] + [ys[i] for i in tr]
    weights = mix_weights([yt], [ys[i] for i in tr], float(os.environ["REAL_FRACTION"]))
    val_images, val_labels = [xv], [yv]
    settings = finetune_settings(TrainSettings(
        steps=int(os.environ["STEPS"]), batch_size=2, patch_size=(32, 48, 24), seed=0, device="cpu", threads=1,
        workers=0, init_from="neuroseg_nuclei", model_scale=base.scale.to_dict(), sample_weights=tuple(weights),
        nms_backend=quick_nms_backend()), steps=int(os.environ["STEPS"]))
    (run / "split.json").write_text(json.dumps(info, indent=1, default=str))


def show(p):
    if p.step % 25 == 0 or "val" in p.message or not p.message.startswith("step"):
        log(p.message)


t = time.perf_counter()
res = train(images, labels, base.config_dict(), out_dir=run, settings=settings, val_images=val_images,
            val_labels=val_labels, callback=show)
log(f"trained {res.step} steps in {(time.perf_counter() - t) / 60:.1f} min; thresholds {res.thresholds}, "
    f"validation mean F1 {res.val_f1}")
(run / "xsplit.json").write_text(json.dumps(test_scores(res.model, log), indent=1))
PY

# the held-out matrix for the candidate (bench_heldout_nuclei.py with load_model pointed at RUN)
if [[ "$SIDE" != shipped && "${EVAL:-1}" == 1 ]]; then
  PYTHONPATH="$SRC:${PYTHONPATH:-}" nice -n 5 python -c "
import sys; sys.argv = ['bench', '--threads', '1', '--modes', '${MODES:-default,voxel}', '--json', '$RUN/heldout.json']
sys.path.insert(0, 'benchmarks')
import napari_neuroseg.models.stardist3d as m
_load = m.load_model
m.load_model = lambda name=None, **kw: _load('$RUN', **kw)
import bench_heldout_nuclei as b; b.main()" | tee "$RUN/heldout.log"
fi
