"""Instance metrics for nuclei (compact objects), as ``stardist.matching.matching`` defines them,
and the task choice between them and the FISBe neuron preset.

``nuclei_metrics_iter(gt, pred)`` matches ground-truth and predicted objects one-to-one by IoU
(optimal assignment, stardist's rule) at each threshold of :data:`NUCLEI_THRESHOLDS` and returns
precision, recall, F1, AP (stardist's ``accuracy`` = TP / (TP + FP + FN)), the mean IoU of the
matched pairs, panoptic quality, and the error lists at IoU 0.5 (unmatched GT = ``missed_gt``,
unmatched predictions = ``false_positive``; no size filter, every object counts). The numbers are
``stardist.matching.matching``'s own: it is called once for all thresholds (one overlap table).

``guess_task(gt)`` says whether a ground truth looks like nuclei or like FISBe neurons, and
``evaluate_task_iter(task, ...)`` runs the chosen one (``"auto"``: guessed). Qt-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import NeurosegError
from ..runtime.progress import Progress, run_to_completion

#: IoU thresholds (stardist's usual 0.1 … 0.9)
NUCLEI_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: threshold of the error lists and of the headline numbers
MATCH_THRESHOLD = 0.5
TASKS = ("nuclei", "neurons")
TASK_TITLES = {"nuclei": "nuclei (instance IoU, stardist)", "neurons": "neurons (FISBe preset)"}
#: median fraction of its bounding box an object fills, above which objects count as compact
COMPACT_FILL = 0.2


def _label_volume(data: Any, what: str, warn: list[str]) -> np.ndarray:
    """A 2D/3D non-negative integer label array (an (N,Z,Y,X) instance stack is flattened)."""
    arr = np.asarray(data[...] if hasattr(data, "shape") and not isinstance(data, np.ndarray)
                     else data)
    if arr.dtype.kind not in "biu":
        raise NeurosegError(
            f"{what} labels are {arr.dtype}; instance labels must be integers",
            fix="convert the labels to an integer type (e.g. np.uint32)")
    arr = arr.squeeze() if arr.ndim > 3 else arr
    if arr.ndim == 4:  # FISBe stack: channel i holds instance i (0 elsewhere)
        fg = arr > 0
        if np.any(fg.sum(axis=0, dtype=np.int32) > 1):
            warn.append(f"{what} instances overlap; the nuclei metrics keep the highest id "
                        "where they do")
        arr = arr.max(axis=0)
    if arr.ndim not in (2, 3):
        raise NeurosegError(
            f"{what} has shape {arr.shape}; the nuclei metrics need a 2D or 3D label image",
            fix="pass a (Z,Y,X) or (Y,X) label volume")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise NeurosegError(f"{what} has negative labels",
                            fix="use 0 for background and positive ids for objects")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    return arr


def _cache_stardist_overlap() -> None:
    """Keep the machine code of stardist's numba overlap table on disk (numba's cache, as
    ``cache=True`` would): stardist compiles it without, in every process, on the first
    evaluation (seconds, and the compiler's garbage collections stall a viewer). Harmless when
    already enabled; a stardist without it compiles as before."""
    try:
        from stardist.matching import _label_overlap

        if type(getattr(_label_overlap, "_cache", None)).__name__ == "NullCache":  # not cached yet
            _label_overlap.enable_caching()
    except Exception:  # noqa: BLE001, S110 - another stardist/numba: it compiles as before
        pass


def nuclei_metrics_iter(gt: Any, pred: Any, thresholds: Sequence[float] = NUCLEI_THRESHOLDS, *,
                        with_instances: bool = False):
    """Progress generator: stardist's matching metrics of ``pred`` against ``gt`` (see module
    docstring); returns the result dict (``task == "nuclei"``). ``with_instances`` adds
    ``result["_instances"] = {"gt": array, "pred": array}`` (the label arrays compared)."""
    from stardist.matching import matching

    _cache_stardist_overlap()
    warn: list[str] = []
    yield Progress(0, 3, "reading labels")
    g = _label_volume(gt, "ground truth", warn)
    p = _label_volume(pred, "prediction", warn)
    if g.shape != p.shape:
        raise NeurosegError(
            f"ground truth {g.shape} and prediction {p.shape} have different shapes",
            fix="evaluate a prediction of the same image as the ground truth")
    ths = sorted({float(t) for t in thresholds} | {MATCH_THRESHOLD})
    yield Progress(1, 3, "matching objects by IoU")
    stats = matching(g, p, thresh=ths, criterion="iou", report_matches=True)
    gt_ids = [int(x) for x in np.unique(g) if x != 0]
    pred_ids = [int(x) for x in np.unique(p) if x != 0]
    if not gt_ids:
        warn.append("the ground truth has no objects: recall is 0")
    if not pred_ids:
        warn.append("the prediction is empty: every ground-truth object is missed")

    per_th: dict[str, dict[str, Any]] = {}
    matches: dict[str, list[dict[str, Any]]] = {}
    for th, s in zip(ths, stats):
        per_th[str(th)] = {
            "tp": int(s.tp), "fp": int(s.fp), "fn": int(s.fn),
            "precision": float(s.precision), "recall": float(s.recall), "f1": float(s.f1),
            "ap": float(s.accuracy), "mean_matched_iou": float(s.mean_matched_score),
            "mean_true_iou": float(s.mean_true_score),
            "panoptic_quality": float(s.panoptic_quality),
        }
        ok = set(s.matched_tps)
        matches[str(th)] = [
            {"gt": int(a), "pred": int(b), "iou": float(sc)}
            for k, ((a, b), sc) in enumerate(zip(s.matched_pairs, s.matched_scores)) if k in ok
        ]
    at = per_th[str(MATCH_THRESHOLD)]
    matched_g = {m["gt"] for m in matches[str(MATCH_THRESHOLD)]}
    matched_p = {m["pred"] for m in matches[str(MATCH_THRESHOLD)]}
    used = [str(float(t)) for t in thresholds]
    result: dict[str, Any] = {
        "task": "nuclei",
        "n_gt": len(gt_ids),
        "n_pred": len(pred_ids),
        "TP_05": at["tp"],
        "precision": at["precision"],
        "recall": at["recall"],
        "f1": at["f1"],
        "ap": at["ap"],
        "mean_matched_iou": at["mean_matched_iou"],
        "panoptic_quality": at["panoptic_quality"],
        "mean_f1": float(np.mean([per_th[t]["f1"] for t in used])) if used else float("nan"),
        "mean_ap": float(np.mean([per_th[t]["ap"] for t in used])) if used else float("nan"),
        "per_threshold": {t: per_th[t] for t in used},
        "errors": {
            "missed_gt": [i for i in gt_ids if i not in matched_g],
            "false_positive": [i for i in pred_ids if i not in matched_p],
            "false_merge": [],
            "false_split": [],
        },
        "error_rule": f"unmatched at IoU {MATCH_THRESHOLD} (one-to-one, stardist matching); "
                      "no size filter",
        "matches": {t: matches[t] for t in used} | {str(MATCH_THRESHOLD):
                                                    matches[str(MATCH_THRESHOLD)]},
        "gt_ids": gt_ids,
        "pred_ids": pred_ids,
        "warnings": warn,
    }
    if with_instances:
        result["_instances"] = {"gt": g, "pred": p}
    yield Progress(3, 3, "done")
    return result


def nuclei_metrics(gt: Any, pred: Any, thresholds: Sequence[float] = NUCLEI_THRESHOLDS):
    """:func:`nuclei_metrics_iter` run to its end."""
    return run_to_completion(nuclei_metrics_iter(gt, pred, thresholds))


def guess_task(gt: Any, *, max_voxels: int = 2_000_000) -> tuple[str, str]:
    """``("nuclei" | "neurons", reason)`` for a ground truth.

    An (N,Z,Y,X) instance stack is FISBe's layout: neurons. Otherwise the objects' shapes
    decide, on a strided copy of at most ``max_voxels`` voxels: nuclei fill a good part of their
    bounding box (a ball fills 52 %), neurons (long thin branches) a few percent. Cheap enough
    for a GUI thread on numpy data.
    """
    from scipy import ndimage

    shape = tuple(int(s) for s in getattr(gt, "shape", np.shape(gt)))
    sq = tuple(s for s in shape if s != 1)
    if len(sq) == 4:
        return "neurons", "the ground truth is an instance stack (FISBe layout)"
    if len(sq) not in (2, 3):
        return "nuclei", "not a 2D/3D label volume; nuclei metrics by default"
    n = int(np.prod(sq))
    step = 1
    while n / step ** len(sq) > max_voxels:
        step += 1
    sl = tuple(slice(None, None, step if s != 1 else 1) for s in shape)
    arr = np.asarray(gt[sl]).squeeze()
    if arr.dtype.kind not in "biu" or not np.any(arr):
        return "nuclei", "no objects to look at; nuclei metrics by default"
    import fastremap

    arr, _ = fastremap.renumber(np.ascontiguousarray(arr), in_place=False)  # ids 1..n
    boxes = ndimage.find_objects(arr)
    sizes = np.bincount(arr.ravel())
    fills = []
    for i, b in enumerate(boxes, start=1):
        if b is None or sizes[i] == 0:
            continue
        fills.append(sizes[i] / float(np.prod([s.stop - s.start for s in b])))
    if not fills:
        return "nuclei", "no objects to look at; nuclei metrics by default"
    med = float(np.median(fills))
    if med >= COMPACT_FILL:
        return "nuclei", (f"{len(fills)} compact objects (median {med:.0%} of their bounding "
                          "box filled)")
    return "neurons", (f"{len(fills)} thin, branching objects (median {med:.0%} of their "
                       "bounding box filled)")


def evaluate_task_iter(task: str, gt: Any, pred: Any, partly: bool = False, *,
                       dim_ids: Sequence[int] | None = None, with_instances: bool = False,
                       **opts: Any):
    """Progress generator running the metrics of ``task`` (``"nuclei"``, ``"neurons"`` or
    ``"auto"``); the result has ``task``, ``task_reason`` and, for neurons, ``preset`` (the
    FISBe size filter and partly-labelled mode, stated with the numbers)."""
    from .evaluate import MIN_SIZE, evaluate_iter

    reason = "chosen"
    guessed_note = ""
    if task == "auto":
        yield Progress(0, 1, "guessing the task")
        task, reason = guess_task(gt)
        reason = "guessed: " + reason
    if task not in TASKS:
        raise NeurosegError(f"unknown evaluation task {task!r}",
                            fix="use one of " + ", ".join(TASKS + ("auto",)))
    if task == "nuclei":
        if partly and reason != "chosen":
            partly = False  # guessed nuclei: the FISBe-only option does not apply
            guessed_note = ("'partly labelled' ignored: it is a FISBe neuron option and the task "
                            "was guessed as nuclei")
        elif partly:
            raise NeurosegError(
                "partly labelled ground truth is a FISBe neuron option",
                fix="choose the neurons (FISBe) task or untick 'partly labelled'")
        result = yield from nuclei_metrics_iter(gt, pred, with_instances=with_instances, **opts)
        if guessed_note:
            result["warnings"].append(guessed_note)
    else:
        min_size = int(opts.pop("min_size", MIN_SIZE))
        result = yield from evaluate_iter(gt, pred, partly, dim_ids=dim_ids, min_size=min_size,
                                          with_instances=with_instances, **opts)
        removed = list(result.get("removed_small_pred_ids", []))
        result["task"] = "neurons"
        result["preset"] = {
            "name": "FISBe FlyLight",
            "min_size": min_size,
            "partly": bool(partly),
            "n_removed_small_pred": len(removed),
        }
        result["error_rule"] = (
            f"FISBe preset: predictions with <= {min_size} voxels removed before matching "
            f"({len(removed)} removed); "
            + ("partly labelled: predictions mostly in unlabelled background are not false "
               "positives" if partly else "fully labelled")
            + "; matched by clDice >= 0.5")
    result["task_reason"] = reason
    return result
