"""Fine-tuning a StarDist-3D model on one corrected annotation, in minutes on a CPU.

What makes it fast (measured in ``docs/finetune.md``):

- **train at the base model's scale**: the image is resampled to the voxel size the base model
  was trained at (:func:`napari_neuroseg.runtime.scale.resample_image`, anti-aliased linear) and
  the labels with nearest neighbour (:func:`~napari_neuroseg.runtime.scale.restore_nearest`), so
  the network only has to adapt to the appearance, not to a new object size; a 100³ confocal crop
  at 0.28 × 0.13 × 0.13 µm becomes 57 × 51 × 51 voxels at the shipped model's 0.5 × 0.25 × 0.25 µm,
  and a training step is ~8x cheaper than at the input's resolution;
- **patches that fit the data** (:func:`fit_patch_size`): the largest multiple of the network's
  divisor up to ``(32, 48, 48)`` that the training part holds, so no step is spent on padding;
- **validation without a second volume** (:func:`holdout_slab`): with one annotated volume a slab
  along its longest axis (~25 %) is held out — never trained on — for the validation loss (best
  weights) and the probability/NMS thresholds chosen at the end;
- a short warm-up (10 steps) and a cosine schedule fitted to ``--max-minutes``.

The saved model keeps the base model's ``scale.json``, so ``neuroseg nuclei IN --model DIR``
resamples inputs the same way. No torch at module level.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg.errors import NeurosegError

__all__ = [
    "FINETUNE_PATCH",
    "FINETUNE_RECIPE",
    "FineTuneData",
    "check_annotation",
    "finetune_settings",
    "fit_patch_size",
    "heldout_score",
    "holdout_slab",
    "prepare_finetune_data",
    "to_model_scale",
    "write_model_card",
]

#: the largest patch fine-tuning uses (Z, Y, X at the model's scale)
FINETUNE_PATCH = (32, 48, 48)
#: fraction of a single volume held out for validation (a slab along its longest axis)
HOLDOUT_FRACTION = 0.25
#: a held-out slab or training part thinner than this (voxels at the model's scale) is too little
MIN_PART = 8


def check_annotation(labels: np.ndarray, path: str | Path | None = None, *, what: str = "annotation") -> int:
    """The number of objects in ``labels``; a NeurosegError if it is empty or has a single object
    (nothing to learn object boundaries from and nothing left for validation)."""
    y = np.asarray(labels)
    if not np.issubdtype(y.dtype, np.integer):
        raise NeurosegError(f"the {what} has dtype {y.dtype}, not integer instance ids", path=path,
                            fix="save the labels layer (integer ids, 0 = background)")
    if (y < 0).any():
        raise NeurosegError(f"the {what} has negative ids", path=path, fix="use ids >= 0 (0 = background)")
    n = len(np.unique(y[y > 0]))
    if n == 0:
        raise NeurosegError(f"the {what} is empty (no labelled object)", path=path,
                            fix="annotate (or correct) some objects before fine-tuning")
    if n == 1:
        raise NeurosegError(f"the {what} has only one object: too little to fine-tune on and to validate", path=path,
                            fix="annotate at least a few objects (ideally all objects in a region)")
    return n


def to_model_scale(image: np.ndarray, labels: np.ndarray, factors: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (Z, Y, X) resampled by ``factors`` (anti-aliased linear, float32) and ``labels``
    to the same shape by nearest neighbour (ids unchanged; objects too small at the new scale may
    vanish)."""
    from napari_neuroseg.runtime.scale import (
        IDENTITY_TOLERANCE,
        resample_image,
        resampled_shape,
        restore_nearest,
    )

    x, y = np.asarray(image), np.asarray(labels)
    if all(abs(float(f) - 1.0) <= IDENTITY_TOLERANCE for f in factors):
        return x, y
    channel_axis = 0 if x.ndim == 4 else None
    xr = resample_image(x, factors, channel_axis=channel_axis)
    yr = restore_nearest(y, resampled_shape(y.shape, factors))
    return xr, yr


def holdout_slab(
    image: np.ndarray, labels: np.ndarray, fraction: float = HOLDOUT_FRACTION, *, path: str | Path | None = None
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], dict]:
    """Split one volume into a training part and a held-out slab of ``fraction`` of its longest
    axis (the slab at the high end of that axis). Both parts must hold objects; a NeurosegError
    otherwise. Returns ``(train_image, train_labels), (val_image, val_labels), info``."""
    y = np.asarray(labels)
    spatial = y.shape
    axis = int(np.argmax(spatial))
    n = spatial[axis]
    n_val = int(round(n * float(fraction)))
    if n_val < MIN_PART or n - n_val < MIN_PART:
        raise NeurosegError(
            f"too little data for a validation split: the volume is {tuple(spatial)} voxels at the model's scale, "
            f"so a {fraction:.0%} slab along axis {'ZYX'[axis]} would be {n_val} voxels thick (at least {MIN_PART} "
            "needed on both sides)", path=path,
            fix="annotate a larger region, or give separate validation volumes (--val-images/--val-labels)")
    cut = n - n_val
    sl_tr = [slice(None)] * 3
    sl_va = [slice(None)] * 3
    sl_tr[axis], sl_va[axis] = slice(0, cut), slice(cut, n)
    x = np.asarray(image)
    lead = (slice(None),) * (x.ndim - 3)
    x_tr, x_va = x[lead + tuple(sl_tr)], x[lead + tuple(sl_va)]
    y_tr, y_va = y[tuple(sl_tr)], y[tuple(sl_va)]
    n_tr = len(np.unique(y_tr[y_tr > 0]))
    n_va = len(np.unique(y_va[y_va > 0]))
    if n_tr < 1 or n_va < 1:
        raise NeurosegError(
            f"too little data for a validation split: the held-out slab (last {n_val} voxels along "
            f"{'ZYX'[axis]}) has {n_va} objects and the training part {n_tr}", path=path,
            fix="annotate objects all over the volume, or give separate validation volumes")
    info = {"axis": "ZYX"[axis], "start": cut, "stop": n, "fraction": n_val / n,
            "objects_train": n_tr, "objects_val": n_va}
    return (x_tr, y_tr), (x_va, y_va), info


def fit_patch_size(shapes: Sequence[Sequence[int]], divisor: Sequence[int],
                   largest: Sequence[int] = FINETUNE_PATCH) -> tuple[int, int, int]:
    """The largest patch (per axis a multiple of ``divisor``, at most ``largest``) that fits in
    the biggest of the training ``shapes`` (rounded up to one divisor where the volume is thinner)."""
    big = [max(int(s[-3:][a]) for s in shapes) for a in range(3)]
    out = []
    for a in range(3):
        d = int(divisor[a])
        p = min(int(largest[a]), (big[a] // d) * d)
        out.append(max(d, p))
    return tuple(out)  # type: ignore[return-value]


@dataclass
class FineTuneData:
    """What :func:`prepare_finetune_data` made: training and validation volumes at the model's
    scale, and a description of what was done (for the model card)."""

    images: list
    labels: list
    val_images: list
    val_labels: list
    factors: list = field(default_factory=list)
    voxel_sizes: list = field(default_factory=list)
    split: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def prepare_finetune_data(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], voxel_sizes: Sequence, model_scale,
    *, paths: Sequence | None = None, fraction: float = HOLDOUT_FRACTION,
    val_images: Sequence | None = None, val_labels: Sequence | None = None, val_voxel_sizes: Sequence | None = None,
) -> FineTuneData:
    """Resample every (image, labels) pair to ``model_scale`` (a :class:`ModelScale`; None or an
    unknown voxel size: used as it is) and hold out validation data: the given validation volumes,
    else a slab of each training volume (:func:`holdout_slab`)."""
    from napari_neuroseg.runtime.scale import check_growth, plan_scale

    paths = list(paths) if paths is not None else [None] * len(images)
    out = FineTuneData([], [], [], [])

    def rescale(x, y, vs, path):
        plan = plan_scale(model_scale, voxel_size=vs)
        check_growth(np.asarray(y).shape, plan.factors, path=None if path is None else str(path))
        if plan.identity:
            out.notes.append(f"{path or 'volume'}: {plan.reason} (no resampling)")
        xr, yr = to_model_scale(x, y, plan.factors)
        return xr, yr, [float(f) for f in plan.factors], plan

    for x, y, vs, path in zip(images, labels, voxel_sizes, paths):
        if np.asarray(x).shape[-3:] != np.asarray(y).shape:
            raise NeurosegError(f"image shape {tuple(np.asarray(x).shape)} and labels shape "
                                f"{tuple(np.asarray(y).shape)} differ", path=path,
                                fix="give the label volume drawn on this image (same Z, Y, X size)")
        check_annotation(y, path)
        xr, yr, f, plan = rescale(x, y, vs, path)
        if len(np.unique(yr[yr > 0])) < 2:
            raise NeurosegError("at the model's scale fewer than two annotated objects remain "
                                f"({plan.describe()})", path=path,
                                fix="check the voxel size, or annotate larger/more objects")
        out.factors.append(f)
        out.voxel_sizes.append(None if vs is None else [float(v) for v in vs])
        if val_images is None:
            (xt, yt), (xv, yv), info = holdout_slab(xr, yr, fraction, path=path)
            info["shape_at_model_scale"] = list(yr.shape)
            out.split.append(info)
            out.images.append(xt)
            out.labels.append(yt)
            out.val_images.append(xv)
            out.val_labels.append(yv)
        else:
            out.split.append({"shape_at_model_scale": list(yr.shape), "validation": "separate volumes"})
            out.images.append(xr)
            out.labels.append(yr)
    if val_images is not None:
        vvs = list(val_voxel_sizes) if val_voxel_sizes is not None else [None] * len(val_images)
        for x, y, vs in zip(val_images, val_labels or [], vvs):
            check_annotation(y, what="validation annotation")
            xr, yr, _, _ = rescale(x, y, vs, None)
            out.val_images.append(xr)
            out.val_labels.append(yr)
    return out


def f1_at(model, images: Sequence, labels: Sequence, thresholds=None, iou: float = 0.5,
          nms: str = "neuroseg") -> float:
    """F1 at IoU ``iou`` (``stardist.matching`` rules, pooled over the volumes) of ``model`` with
    ``thresholds`` (default: its own) on volumes already at its scale."""
    from stardist.matching import matching_dataset

    th = thresholds or model.thresholds
    preds = []
    for x in images:
        pred, _ = model.predict_instances(np.asarray(x), prob_thresh=th.prob, nms_thresh=th.nms, border=th.border,
                                         nms=nms)
        preds.append(pred)
    return float(matching_dataset([np.asarray(y) for y in labels], preds, thresh=iou, show_progress=False).f1)


#: the fine-tuning recipe: what ``train nuclei --init-from`` and the Fine-tune dock change in
#: :class:`~napari_neuroseg.models.stardist3d.train.TrainSettings` (measurements behind it in
#: docs/finetune.md): peak learning rate and warm-up, validation and checkpoint interval (steps),
#: the kept weights chosen by the held-out segmentation score (:func:`heldout_score`) instead of
#: the validation loss, an early stop once that score has not improved in ``patience`` checks, and
#: the schedule's length: the cosine decay is fitted to ``steps`` (or to fewer when the time budget
#: holds fewer), so a long budget does not stretch it (a 10-minute budget used to keep the learning
#: rate near its peak for the ~250 steps the early stop allowed, and scored worse than 2 minutes)
FINETUNE_RECIPE: dict[str, Any] = {
    "steps": 250,
    "learning_rate": 5e-4,
    "warmup_steps": 10,
    "val_every": 25,
    "checkpoint_every": 25,
    "select_by": "score",
    "score_every": 25,
    "patience": 8,
    "freeze": (),
}


def finetune_settings(settings, **given):
    """``settings`` (a ``TrainSettings``) with the fine-tuning recipe (:data:`FINETUNE_RECIPE`)
    for every field not in ``given``; ``given`` (fields the user chose, None = not chosen) wins."""
    from dataclasses import replace

    chosen = {k: v for k, v in given.items() if v is not None}
    rec = {k: v for k, v in FINETUNE_RECIPE.items() if k not in chosen}
    return replace(settings, **rec, **chosen)


#: probability thresholds tried by :func:`heldout_score` (with the model's NMS threshold)
SCORE_PROBS = (0.3, 0.4, 0.5, 0.6, 0.7)


def heldout_score(model, images: Sequence, labels: Sequence, *, probs: Sequence[float] = SCORE_PROBS,
                  iou_threshs: Sequence[float] = (0.3, 0.5, 0.7), nms: str = "neuroseg",
                  nms_thresh: float | None = None) -> tuple[float, float]:
    """How well ``model`` segments the held-out part during fine-tuning: the mean F1 over
    ``iou_threshs`` (pooled over the volumes, ``stardist.matching``) at the best of ``probs``
    (the model's NMS threshold), and that probability threshold. ``images`` are normalised
    (C, Z, Y, X) volumes at the model's scale. One forward pass per volume, then only NMS:
    cheap enough to run at every validation, so the kept weights are those that segment best,
    not those of the lowest loss (which need not be the same)."""
    from napari_neuroseg.models.stardist3d.rays import rays_spec
    from napari_neuroseg.models.stardist3d.training.evaluate import instances_from_prediction, score_instances

    preds = [model.predict(np.asarray(x), n_tiles=1) for x in images]
    spec = rays_spec(model.config)
    nt = model.thresholds.nms if nms_thresh is None else float(nms_thresh)
    shapes = [tuple(np.asarray(y).shape) for y in labels]
    best = (-1.0, float(probs[0]))
    for t in probs:
        inst = [instances_from_prediction(p, d, sh, rays_spec=spec, n_rays=model.config.n_rays, grid=model.grid,
                                          prob_thresh=float(t), nms_thresh=nt, border=0, nms=nms)
                for (p, d), sh in zip(preds, shapes)]
        sc = score_instances([np.asarray(y) for y in labels], inst, iou_threshs)
        f = float(np.mean([v["f1"] for v in sc.values()]))
        if f > best[0]:
            best = (f, float(t))
    return best


def write_model_card(out_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write ``MODEL_CARD.md`` (atomically) into ``out_dir`` from ``info`` (base model, data files,
    voxel sizes, steps, minutes, device, scores before/after on the held-out part)."""
    out = Path(out_dir)
    made = _dt.datetime.now().isoformat(timespec="seconds")
    lines = [f"# {info.get('name', out.name)}", "",
             f"Fine-tuned StarDist-3D nuclei model, made by `neuroseg train nuclei` on {made}.", "",
             "| | |", "|---|---|",
             f"| base model | `{info.get('base')}` |",
             f"| training data | {', '.join(f'`{p}`' for p in info.get('images', []))} |",
             f"| annotation | {', '.join(f'`{p}`' for p in info.get('labels', []))} |",
             f"| voxel size of the data (Z Y X µm) | {_fmt_list(info.get('voxel_sizes'))} |",
             f"| model scale (Z Y X µm) | {_fmt_list(info.get('model_voxel_size'))} |",
             f"| resampling factors | {_fmt_list(info.get('factors'))} |",
             f"| validation | {info.get('validation', '')} |",
             f"| steps | {info.get('steps')} (batch {info.get('batch_size')}, patch {info.get('patch_size')}) |",
             f"| minutes | {info.get('minutes', float('nan')):.1f} |",
             f"| device | {info.get('device')} ({info.get('threads')} threads) |",
             f"| thresholds | prob {info.get('prob', float('nan')):.3f}, nms {info.get('nms')} |", "",
             "## Scores on the held-out part (F1 at IoU 0.5, stardist.matching)", "",
             "| model | F1@0.5 |", "|---|---|",
             f"| base model (its thresholds) | {_fmt_score(info.get('f1_before'))} |",
             f"| fine-tuned (thresholds chosen on the same part) | {_fmt_score(info.get('f1_after'))} |", "",
             ("The held-out part was never trained on, but the thresholds were chosen on it, so the "
              "fine-tuned score is optimistic; check on another annotated volume."), ""]
    notes = info.get("notes") or []
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    text = "\n".join(lines)
    from napari_neuroseg.io.atomic import atomic_write_text

    path = out / "MODEL_CARD.md"
    atomic_write_text(path, text, fsync=False)
    return path


def _fmt_list(v) -> str:
    if v is None:
        return "unknown"
    if isinstance(v, (list, tuple)) and v and isinstance(v[0], (list, tuple)):
        return "; ".join(_fmt_list(x) for x in v)
    if isinstance(v, (list, tuple)):
        return " × ".join("?" if x is None else f"{float(x):.4g}" for x in v)
    return str(v)


def _fmt_score(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.3f}"
