"""Threshold optimisation as ``stardist``'s ``optimize_thresholds``: for each NMS threshold, a
golden-section search of the probability threshold (in ``[max_prob / 2, max_prob]``) that
maximises the mean F1 over IoU thresholds 0.3, 0.5 and 0.7 on validation volumes; the best pair
wins. Optionally the same search for each of several ``borders`` (grid voxels at the volume's edge
without object centres; stardist always uses 2), and the best triple wins."""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence

import numpy as np

from napari_neuroseg.models.stardist3d.config import Thresholds
from napari_neuroseg.runtime.progress import Progress, run_to_completion

__all__ = ["optimize_thresholds", "optimize_thresholds_iter"]

_INV_PHI = (math.sqrt(5) - 1) / 2


def optimize_thresholds_iter(
    model,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    nms_threshs: Sequence[float] = (0.3, 0.4, 0.5),
    iou_threshs: Sequence[float] = (0.3, 0.5, 0.7),
    tol: float = 1e-2,
    maxiter: int = 20,
    predictions: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    borders: Sequence[int] = (2,),
    nms: str = "neuroseg",
) -> Generator[Progress, None, tuple[Thresholds, float, dict]]:
    """Generator form of :func:`optimize_thresholds`; returns ``(thresholds, mean_f1, history)``
    where ``history`` maps ``"nms"`` (or ``"nms/border"`` when several borders are searched) →
    list of ``(prob_thresh, mean_f1)`` tried."""
    from napari_neuroseg.errors import NeurosegError

    borders = [int(b) for b in borders]
    if not borders or min(borders) < 0:
        raise NeurosegError(f"borders {borders} are not non-negative grid voxel counts", fix="use e.g. (2, 0)")
    total = len(borders) * len(nms_threshs) * (maxiter + 2) + len(images)
    step = 0
    if predictions is None:
        predictions = []
        for x in images:
            predictions.append(model.predict(x))
            step += 1
            yield Progress(step, total, f"validation prediction {len(predictions)}/{len(images)}")
    max_prob = max(float(p.max()) for p, _ in predictions)
    lo, hi = max_prob / 2, max_prob
    history: dict[str, list[tuple[float, float]]] = {}
    best = (0.5, 0.4, 2, -1.0)

    for border, nms_thresh in [(b, n) for b in borders for n in nms_threshs]:
        key = f"{nms_thresh:g}" if len(borders) == 1 else f"{nms_thresh:g}/{border}"
        value, cache = _mean_f1_of_prob(model, predictions, labels, iou_threshs, lo, hi,
                                        nms_thresh=nms_thresh, border=border, backend=nms)
        step = yield from _golden_section_iter(value, lo, hi, tol=tol, maxiter=maxiter, key=key, step=step,
                                               total=total)
        t_best, f_best = max(cache.items(), key=lambda kv: (kv[1], -kv[0]))
        history[key] = sorted(cache.items())
        if f_best > best[3]:
            best = (t_best, float(nms_thresh), border, f_best)
    yield Progress(total, total, f"best: prob {best[0]:.3f}, nms {best[1]:g}, border {best[2]} → mean F1 {best[3]:.3f}")
    return Thresholds(prob=float(best[0]), nms=float(best[1]), border=int(best[2])), float(best[3]), history


def _mean_f1_of_prob(model, predictions, labels, iou_threshs, lo: float, hi: float, *, nms_thresh: float,
                     border: int, backend: str):
    """``(value, cache)``: ``value(prob_thresh)`` is the mean F1 over ``iou_threshs`` of the
    instances from ``predictions`` at that threshold (clipped to ``[lo, hi]``), with the given
    NMS threshold, border and NMS ``backend``; ``cache`` maps each threshold tried to its F1."""
    from napari_neuroseg.models.stardist3d.rays import rays_spec
    from napari_neuroseg.models.stardist3d.training.evaluate import instances_from_prediction, score_instances

    spec = rays_spec(model.config)
    shapes = [tuple(y.shape) for y in labels]
    cache: dict[float, float] = {}

    def value(t: float) -> float:
        t = float(np.clip(t, lo, hi))
        if t not in cache:
            preds = [
                instances_from_prediction(p, d, s, rays_spec=spec, n_rays=model.config.n_rays,
                                          grid=model.grid, prob_thresh=t, nms_thresh=nms_thresh, border=border,
                                          nms=backend)
                for (p, d), s in zip(predictions, shapes)
            ]
            scores = score_instances(labels, preds, iou_threshs)
            cache[t] = float(np.mean([v["f1"] for v in scores.values()]))
        return cache[t]

    return value, cache


def _golden_section_iter(value, lo: float, hi: float, *, tol: float, maxiter: int, key: str, step: int,
                         total: int) -> Generator[Progress, None, int]:
    """Golden-section search of the maximum of ``value`` in ``[lo, hi]`` (until the bracket is
    narrower than ``tol`` or after ``maxiter`` narrowings), a :class:`Progress` per narrowing
    (steps counted on from ``step``); returns the step reached (the values tried are in
    ``value``'s cache)."""
    a, b = lo, hi
    c, d = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
    fc, fd = value(c), value(d)
    step += 2
    yield Progress(step, total, f"nms {key}: prob {c:.3f} → F1 {fc:.3f}")
    for _ in range(maxiter):
        if abs(b - a) < tol:
            break
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - _INV_PHI * (b - a)
            fc = value(c)
        else:
            a, c, fc = c, d, fd
            d = a + _INV_PHI * (b - a)
            fd = value(d)
        step += 1
        yield Progress(step, total, f"nms {key}: prob {min(c, d):.3f}-{max(c, d):.3f} → F1 {max(fc, fd):.3f}")
    return step


def optimize_thresholds(model, images, labels, **kwargs) -> tuple[Thresholds, float, dict]:
    """Best ``Thresholds(prob, nms)`` of ``model`` on normalised validation ``images`` (C,Z,Y,X)
    with ``labels``, their mean F1 and the search history (see :func:`optimize_thresholds_iter`)."""
    return run_to_completion(optimize_thresholds_iter(model, images, labels, **kwargs))
