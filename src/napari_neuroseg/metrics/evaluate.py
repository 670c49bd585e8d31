"""FISBe metrics (FlyLight preset of the official evaluator), exact and per instance.

``evaluate(gt, pred, partly=False)`` returns the leaderboard numbers (avF1, C, S, clDice_TP, tp,
FS, FM), the per-threshold table, per-GT coverage, the dim/overlap sub-metrics, the matching and
the error lists (with the user's original ids), plus ``official``: the same numbers in the layout
of the official evaluator's TOML file. ``evaluate_iter`` is the same as a progress generator.
"""

from __future__ import annotations

import warnings as _warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..runtime.progress import Progress, run_to_completion
from ._localize import cldice, overlap_matrix
from ._match import false_labels, greedy_assign, m2m_counts, m2m_matches
from ._skeleton import skeleton_keys
from ._sparse import SparseLabels, _View, build, match_shapes

#: thresholds in the order the official evaluator visits them (avF1 uses the first nine)
THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                                 0.55, 0.65, 0.75, 0.85, 0.95)
#: FlyLight preset
MIN_SIZE = 800
FM_THRESH = 0.1
FS_THRESH = 0.05


def th_key(th: float) -> str:
    """``0.55 -> "th_0_55"`` (the official TOML table name)."""
    return "th_" + str(th).replace(".", "_")


def _coverage(
    prec: np.ndarray,
    rec: np.ndarray,
    gt_overlapping: bool,
    pred_overlapping: bool,
    row_skeletons: dict[int, np.ndarray],
    pred: SparseLabels,
) -> list:
    """Per-GT coverage: clRecall of each GT skeleton against the union of the predictions whose
    best clPrecision row is that GT (a prediction counts for one GT only)."""
    best = np.argmax(prec, axis=0)
    if gt_overlapping and pred_overlapping:
        assigned = np.unique(best[best > 0])
        out: list = []
        for i in range(1, rec.shape[0]):
            if i in assigned:
                preds = np.arange(prec.shape[1])[best == i]
                sk = row_skeletons.get(i, np.zeros(0, np.int64))
                hit = pred.covered(sk, preds)
                with np.errstate(invalid="ignore", divide="ignore"):
                    out.append(np.sum(hit, dtype=float) / np.float64(sk.size))
            else:
                out.append(0.0)
        return out
    return [np.sum(rec[i, best == i]) for i in range(1, rec.shape[0])]


def _has_overlap(keys: np.ndarray) -> bool:
    return bool(keys.size > 1 and np.any(keys[1:] == keys[:-1]))


def _subset_metrics(
    ids: list[int],
    gt: SparseLabels,
    pred: SparseLabels,
    skel_p: dict[int, np.ndarray],
    skel_g: dict[int, np.ndarray],
    loc: np.ndarray,
    rec: np.ndarray,
    *,
    need_pred: bool,
    warn: list[str],
    what: str,
) -> tuple[int, int, float, list, Any]:
    """GT-subset numbers (dim or overlapping neurons): count, TP@0.5, its fraction, coverages."""
    k = len(ids)
    tp, rel, covs, avg = 0, 0.0, [], 0
    if k > 0 and (pred.n > 0 or not need_pred):
        prec_sub = np.ascontiguousarray(overlap_matrix(skel_p, pred.n, gt, subset=np.asarray(ids)).T)
        rows = [0] + list(ids)
        rec_sub, loc_sub = rec[rows], loc[rows]
        sub_keys = gt.keys[np.isin(gt.ids, np.asarray(ids))]
        covs = _coverage(
            prec_sub, rec_sub, _has_overlap(sub_keys), pred.has_overlaps,
            {j + 1: skel_g[i] for j, i in enumerate(ids)}, pred,
        )
        avg = np.mean(covs)
        fg = loc_sub[1:, 1:]
        if fg.size == 0:
            warn.append(f"no predicted instances: TP_05_{what} set to 0 (the official evaluator "
                        "crashes here)")
        elif np.max(fg) > 0.5:
            tp = len(greedy_assign(loc_sub, 0.5)[0])
        rel = tp / float(k)
    return k, tp, rel, covs, avg


def _py(x: Any) -> Any:
    """numpy scalars/arrays -> plain Python (for TOML/JSON)."""
    if isinstance(x, dict):
        return {k: _py(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_py(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_py(v) for v in x.tolist()]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


@dataclass
class _Overlaps:
    """The instance overlaps of one sample: ``prec`` (pred skeleton in GT, (G+1, P+1)), ``rec`` (GT
    skeleton in pred), ``loc`` (clDice), ``rec_wo`` (recall without GT-overlap voxels; partly
    labelled samples with overlaps only) and whether GT / prediction instances overlap."""

    prec: np.ndarray
    rec: np.ndarray
    loc: np.ndarray
    rec_wo: np.ndarray | None
    gt_over: bool
    pred_over: bool

    @property
    def any_overlaps(self) -> bool:
        return self.gt_over or self.pred_over


@dataclass
class _AtThresholds:
    """The greedy matching at every threshold of :data:`THRESHOLDS` (in that order)."""

    cm: dict[str, dict[str, Any]] = field(default_factory=dict)  # official TOML tables (th_0_1, ...)
    per_th: dict[str, dict[str, Any]] = field(default_factory=dict)
    matches: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    aps: list[float] = field(default_factory=list)
    fscores: list[float] = field(default_factory=list)
    # at clDice 0.5: TP count, the TPs' clDice, the matched (gt, pred) rows and the false positives
    tp_05: int = 0
    tp_05_cl: list = field(default_factory=list)
    tp05_pairs: tuple[list, list] = ([], [])
    fp05: list[int] = field(default_factory=list)


def evaluate_iter(
    gt: Any,
    pred: Any,
    partly: bool = False,
    *,
    dim_ids: Sequence[int] | None = None,
    min_size: int = MIN_SIZE,
    fm_thresh: float = FM_THRESH,
    fs_thresh: float = FS_THRESH,
    with_instances: bool = False,
):
    """Progress generator version of :func:`evaluate` (yields ``Progress``, returns the dict).

    ``with_instances`` adds ``result["_instances"] = {"gt": SparseLabels, "pred": ...}`` (the
    foreground voxels of every instance, e.g. to draw error layers without another pass over
    the volumes); keys starting with ``_`` are left out of JSON.

    Steps: read the instances, skeletonise them, overlap matrices, matching at every threshold,
    the official ``general`` numbers (TP, clDice, coverage, false merges/splits, dim and
    overlapping neurons), then the error lists and the result dict.
    """
    warn: list[str] = []
    gt_l, pred_l, removed, shape = yield from _read_instances(gt, pred, min_size, warn)
    G, P = gt_l.n, pred_l.n
    total = 2 + P + G + 2
    skel_p, skel_g = yield from _skeletonise(gt_l, pred_l, shape, total)
    step = 2 + P + G
    ov = _overlaps(gt_l, pred_l, skel_p, skel_g, shape, partly)
    step += 1
    yield Progress(step, total, "matching")

    at = _match_at_thresholds(ov, gt_l, pred_l, partly)
    gen: dict[str, Any] = {"Num GT": G, "Num Pred": P}
    _tp_at_05(gen, at, G, P, warn)
    av = _averages(at)
    _coverage_numbers(gen, ov, skel_g, pred_l, av["avFscore19"])

    step += 1
    yield Progress(step, total, "false merges and splits")
    fm_m, fs_m, fm, fs = _merges_and_splits(ov, gt_l, pred_l, skel_g, fm_thresh, fs_thresh)
    gen["FM"] = fm
    gen["FS"] = fs
    _subset_numbers(gen, dim_ids, gt_l, pred_l, skel_p, skel_g, ov, warn)

    official = _py({"general": gen, "confusion_matrix": {**av, **at.cm}})
    errors, best = _error_lists(gt_l, pred_l, ov, at, fm_m, fs_m, partly)
    result = _result(official, at, errors, best, gt_l, pred_l, removed, fs, fm, partly, warn)
    if with_instances:
        result["_instances"] = {"gt": gt_l, "pred": pred_l}
    yield Progress(total, total, "done")
    return result


def _read_instances(gt: Any, pred: Any, min_size: int, warn: list[str]):
    """The GT and predicted instances as :class:`SparseLabels` (predictions of <= ``min_size``
    voxels removed), with warnings for a shape mismatch or an empty side; yields steps 0 and 1."""
    gv = _View(gt, "ground truth")
    pv = _View(pred, "prediction")
    msg = match_shapes(gv, pv)
    if msg:
        warn.append(msg)
    shape = gv.spatial
    yield Progress(0, 4, "reading ground truth")
    gt_l, _ = build(gv.extract(), shape)
    yield Progress(1, 4, "reading prediction")
    pred_l, removed = build(pv.extract(), shape, min_size=min_size)
    if gt_l.n == 0:
        warn.append("the ground truth has no instances: recall-based numbers are 0 and C is "
                    "set to 0 (the official evaluator crashes here)")
    if pred_l.n == 0:
        warn.append("the prediction is empty" + (f" after removing {len(removed)} ids with "
                    f"<= {min_size} voxels" if removed else "") +
                    ": every GT instance is missed (the official evaluator crashes here)")
    return gt_l, pred_l, removed, shape


def _skeletonise(gt_l: SparseLabels, pred_l: SparseLabels, shape, total: int):
    """Skeleton keys of every instance (one at a time inside its bounding box); one step each."""
    P, G = pred_l.n, gt_l.n
    step = 2
    skel_p: dict[int, np.ndarray] = {}
    for p in range(1, P + 1):
        skel_p[p] = skeleton_keys(pred_l.coords(p), shape)
        step += 1
        yield Progress(step, total, f"skeletonising prediction {p}/{P}")
    skel_g: dict[int, np.ndarray] = {}
    for g in range(1, G + 1):
        skel_g[g] = skeleton_keys(gt_l.coords(g), shape)
        step += 1
        yield Progress(step, total, f"skeletonising ground truth {g}/{G}")
    return skel_p, skel_g


def _overlaps(gt_l: SparseLabels, pred_l: SparseLabels, skel_p, skel_g, shape, partly: bool) -> _Overlaps:
    """clPrecision, clRecall and clDice of every (GT, prediction) pair."""
    G, P = gt_l.n, pred_l.n
    prec = np.ascontiguousarray(overlap_matrix(skel_p, P, gt_l).T)
    rec = overlap_matrix(skel_g, G, pred_l)
    ov = _Overlaps(prec, rec, cldice(prec, rec), None, gt_l.has_overlaps, pred_l.has_overlaps)
    if partly and ov.any_overlaps:
        # recall without GT-overlap voxels, used only for the per-threshold false merges
        ov_keys = gt_l.overlap_keys()
        skel_wo = {}
        for g in range(1, G + 1):
            c = gt_l.coords(g)
            skel_wo[g] = skeleton_keys(c[~np.isin(c, ov_keys)], shape)
        ov.rec_wo = overlap_matrix(skel_wo, G, pred_l)
    return ov


def _match_at_thresholds(ov: _Overlaps, gt_l: SparseLabels, pred_l: SparseLabels, partly: bool) -> _AtThresholds:
    """Greedy one-to-one matching on clDice at every threshold: TP/FP/FN, precision, recall, AP,
    F1 (partly labelled: false positives are only the false splits)."""
    G, P = gt_l.n, pred_l.n
    loc = ov.loc
    at = _AtThresholds()
    num_matches = min(G, P)
    for th in THRESHOLDS:
        if num_matches > 0 and np.max(loc) > th:
            tp_g, tp_p = greedy_assign(loc, th)
        else:
            tp_g, tp_p = [], []
        tp = len(tp_g)
        if partly:
            fs_ind, _fp_bg, fm_count, _, _ = false_labels(tp_p, P, ov.prec, ov.rec, th, ov.rec_wo)
            fp, fp_ind = len(fs_ind), fs_ind
        else:
            fp = P - tp
            all_p = np.arange(1, P + 1)
            fp_ind = all_p[~np.isin(all_p, np.asarray(tp_p, np.int64))]
        fn = G - tp
        precision = 1.0 * tp / max(1, tp + fp)
        recall = 1.0 * tp / max(1, tp + fn)
        ap = precision * recall
        fscore = (2.0 * precision * recall) / (precision + recall) if precision + recall > 0 else 0.0
        at.aps.append(ap)
        at.fscores.append(fscore)
        tbl: dict[str, Any] = {"AP_TP": tp, "AP_FP": fp, "AP_FN": fn, "precision": precision,
                               "recall": recall, "AP": ap, "fscore": fscore}
        row = {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall,
               "f1": fscore, "ap": ap}
        if partly:
            tbl["false_split"] = row["false_split"] = len(fs_ind)
            tbl["false_merge"] = row["false_merge"] = fm_count
        at.cm[th_key(th)] = tbl
        at.per_th[str(th)] = row
        at.matches[str(th)] = [
            {"gt": int(gt_l.original[g]), "pred": int(pred_l.original[p]), "cldice": float(loc[g, p])}
            for g, p in zip(tp_g, tp_p)
        ]
        if th == 0.5:
            at.tp_05 = tp
            at.tp_05_cl = list(loc[tp_g, tp_p]) if tp_g else []
            at.tp05_pairs = (tp_g, tp_p)
            at.fp05 = [int(x) for x in fp_ind]
    return at


#: positions in :data:`THRESHOLDS` of 0.1, 0.2, ..., 0.9 (avAP19 and avFscore19 = avF1)
TH_01_TO_09 = slice(0, 9)
#: positions in :data:`THRESHOLDS` of 0.5, ..., 0.9 and 0.55, ..., 0.95 (avAP59, avFscore59)
TH_05_TO_095 = slice(4, None)


def _averages(at: _AtThresholds) -> dict[str, Any]:
    """The head of the official confusion matrix: AP and F1 averaged over 0.1-0.9 and 0.5-0.95."""
    avAP19 = np.mean(at.aps[TH_01_TO_09])
    avAP59 = np.mean(at.aps[TH_05_TO_095])
    avF19 = np.mean(at.fscores[TH_01_TO_09])
    avF59 = np.mean(at.fscores[TH_05_TO_095])
    return {"avAP": avAP59, "avAP59": avAP59, "avAP19": avAP19,
            "avFscore": avF19, "avFscore59": avF59, "avFscore19": avF19}


def _tp_at_05(gen: dict[str, Any], at: _AtThresholds, G: int, P: int, warn: list[str]) -> None:
    """TP_05, its fraction of the GT and the clDice of those true positives."""
    gen["TP_05"] = at.tp_05
    gen["TP_05_rel"] = at.tp_05 / float(G) if G > 0 else 0.0
    gen["TP_05_cldice"] = at.tp_05_cl
    if at.tp_05_cl:
        gen["avg_TP_05_cldice"] = np.mean(at.tp_05_cl)
    else:
        gen["avg_TP_05_cldice"] = float("nan")
        if G > 0 and P > 0:
            warn.append("no true positives at clDice 0.5: clDice_TP is undefined (NaN, as in "
                        "the official evaluator)")


def _coverage_numbers(gen: dict[str, Any], ov: _Overlaps, skel_g, pred_l: SparseLabels, avF19) -> None:
    """Per-GT skeleton coverage, its mean (C) and S = (avF1 + C) / 2."""
    gt_cov = _coverage(ov.prec, ov.rec, ov.gt_over, ov.pred_over, skel_g, pred_l)
    if gt_cov:
        with np.errstate(invalid="ignore"), _warnings.catch_warnings():
            _warnings.simplefilter("ignore", RuntimeWarning)
            cov_mean = np.mean(gt_cov)
    else:
        cov_mean = np.float32(0.0)
    gen["gt_skel_coverage"] = gt_cov
    gen["avg_gt_skel_coverage"] = cov_mean
    gen["avg_f1_cov_score"] = 0.5 * avF19 + 0.5 * cov_mean


def _merges_and_splits(ov: _Overlaps, gt_l, pred_l, skel_g, fm_thresh: float, fs_thresh: float):
    """Many-to-many matches at the false-merge and false-split thresholds and their counts:
    ``(fm_matches, fs_matches, FM, FS)``."""
    fm_m = m2m_matches(ov.rec, fm_thresh, gt_l, pred_l, skel_g, ov.any_overlaps)
    fm, fs_at_fm = m2m_counts(fm_m, pred_l.n)
    if fs_thresh == fm_thresh:
        return fm_m, fm_m, fm, fs_at_fm
    fs_m = m2m_matches(ov.rec, fs_thresh, gt_l, pred_l, skel_g, ov.any_overlaps)
    _, fs = m2m_counts(fs_m, pred_l.n)
    return fm_m, fs_m, fm, fs


def _subset_numbers(gen: dict[str, Any], dim_ids, gt_l, pred_l, skel_p, skel_g, ov: _Overlaps,
                    warn: list[str]) -> None:
    """The numbers of the dim neurons (``dim_ids``, original ids) and of the overlapping ones."""
    orig_to_rel = {int(o): i for i, o in enumerate(gt_l.original) if i > 0}
    dim_rel: list[int] = []
    for d in dim_ids or []:
        if int(d) in orig_to_rel:
            dim_rel.append(orig_to_rel[int(d)])
        else:
            warn.append(f"dim neuron id {d} is not in the ground truth; ignored")
    k, t, r, c, a = _subset_metrics(dim_rel, gt_l, pred_l, skel_p, skel_g, ov.loc, ov.rec,
                                    need_pred=True, warn=warn, what="dim")
    gen.update({"GT_dim": k, "TP_05_dim": t, "TP_05_rel_dim": r, "gt_covs_dim": c,
                "avg_gt_cov_dim": a})
    ov_keys = gt_l.overlap_keys()
    ov_ids = [int(x) for x in np.unique(gt_l.query(ov_keys)[1])] if ov_keys.size else []
    k, t, r, c, a = _subset_metrics(ov_ids, gt_l, pred_l, skel_p, skel_g, ov.loc, ov.rec,
                                    need_pred=False, warn=warn, what="overlap")
    gen.update({"GT_overlap": k, "TP_05_overlap": t, "TP_05_rel_overlap": r,
                "gt_covs_overlap": c, "avg_gt_cov_overlap": a})


def _error_lists(gt_l, pred_l, ov: _Overlaps, at: _AtThresholds, fm_m, fs_m, partly: bool):
    """The errors at clDice 0.5 with the user's ids (missed GT, false positives, false merges and
    splits; partly labelled: predictions ignored as background) and each prediction's best GT row."""
    og, op = gt_l.original, pred_l.original
    G, P = gt_l.n, pred_l.n
    matched_g = set(at.tp05_pairs[0])
    missed = [int(og[g]) for g in range(1, G + 1) if g not in matched_g]
    pred_to_gts: dict[int, list[int]] = {}
    for g, ps in (fm_m or {}).items():
        for p in ps:
            pred_to_gts.setdefault(p, []).append(g)
    false_merge = [{"pred": int(op[p]), "gts": sorted(int(og[g]) for g in gs)}
                   for p, gs in sorted(pred_to_gts.items()) if len(gs) > 1]
    false_split = [{"gt": int(og[g]), "preds": sorted(int(op[p]) for p in ps)}
                   for g, ps in sorted((fs_m or {}).items()) if len(ps) > 1]
    best = np.argmax(ov.prec, axis=0)
    errors = {
        "missed_gt": missed,
        "false_positive": [int(op[p]) for p in at.fp05],
        "false_merge": false_merge,
        "false_split": false_split,
    }
    if partly:
        tp_p05 = set(at.tp05_pairs[1])
        errors["ignored_background"] = [int(op[p]) for p in range(1, P + 1)
                                        if p not in tp_p05 and best[p] == 0]
    return errors, best


def _result(official, at: _AtThresholds, errors, best, gt_l, pred_l, removed, fs, fm, partly: bool,
            warn: list[str]) -> dict[str, Any]:
    """The result dict of :func:`evaluate` (leaderboard numbers first, ``official`` last)."""
    og, op = gt_l.original, pred_l.original
    gc = official["general"]
    return {
        "avF1": official["confusion_matrix"]["avFscore19"],
        "C": gc["avg_gt_skel_coverage"],
        "S": gc["avg_f1_cov_score"],
        "clDice_TP": gc["avg_TP_05_cldice"],
        "tp": gc["TP_05_rel"],
        "FS": fs,
        "FM": fm,
        "n_gt": gt_l.n,
        "n_pred": pred_l.n,
        "TP_05": at.tp_05,
        "per_threshold": at.per_th,
        "gt_coverage": gc["gt_skel_coverage"],
        "tp_cldice": gc["TP_05_cldice"],
        "dim": {"n": gc["GT_dim"], "TP_05": gc["TP_05_dim"], "tp": gc["TP_05_rel_dim"],
                "gt_coverage": gc["gt_covs_dim"], "C": gc["avg_gt_cov_dim"]},
        "overlap": {"n": gc["GT_overlap"], "TP_05": gc["TP_05_overlap"],
                    "tp": gc["TP_05_rel_overlap"], "gt_coverage": gc["gt_covs_overlap"],
                    "C": gc["avg_gt_cov_overlap"]},
        "errors": errors,
        "matches": at.matches,
        "coverage_assignment": {int(op[p]): int(og[best[p]]) for p in range(1, pred_l.n + 1)},
        "gt_ids": [int(x) for x in og[1:]],
        "pred_ids": [int(x) for x in op[1:]],
        "removed_small_pred_ids": removed,
        "partly": bool(partly),
        "warnings": warn,
        "official": official,
    }


def evaluate(gt: Any, pred: Any, partly: bool = False, **opts: Any) -> dict[str, Any]:
    """FISBe metrics of one sample (see module docstring and ``docs/metrics.md``).

    ``gt``: (N,Z,Y,X) instance stack (FISBe ``volumes/gt_instances``) or (Z,Y,X) label volume;
    ``pred``: (Z,Y,X) label volume or stack. numpy, Zarr, HDF5 and dask arrays are read in slabs.
    ``partly``: the sample is partly labelled (predictions lying mostly in unlabelled background
    are not false positives). Options: ``dim_ids`` (original ids of dim GT neurons),
    ``min_size`` (800), ``fm_thresh`` (0.1), ``fs_thresh`` (0.05).
    """
    return run_to_completion(evaluate_iter(gt, pred, partly, **opts))
