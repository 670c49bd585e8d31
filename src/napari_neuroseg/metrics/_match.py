"""Matching rules of the FlyLight preset: greedy one-to-one, partly-labelled false positives,
per-threshold false merges, and the greedy many-to-many matching with consumption (FS/FM).

Matrices are ``(G+1, P+1)`` float32 with row/column 0 for background, exactly as the official
evaluator builds them, so that ties and float32 rounding behave identically.
"""

from __future__ import annotations

import heapq
from itertools import count

import numpy as np

from ._sparse import SparseLabels


def greedy_assign(loc: np.ndarray, thresh: float) -> tuple[list[int], list[int]]:
    """Greedy one-to-one assignment of pairs with ``loc > thresh``.

    Pairs are taken by descending score, ties by GT then prediction index. Returns the matched
    (1-based) GT and prediction ids in assignment order.
    """
    fg = loc[1:, 1:]
    gi, pi = np.nonzero(fg > thresh)
    if gi.size == 0:
        return [], []
    locs = fg[gi, pi]
    order = np.lexsort((pi, gi, -locs))
    used_g: set[int] = set()
    used_p: set[int] = set()
    out_g: list[int] = []
    out_p: list[int] = []
    for g, p in zip(gi[order], pi[order]):
        g, p = int(g), int(p)
        if g not in used_g and p not in used_p:
            used_g.add(g)
            used_p.add(p)
            out_g.append(g + 1)
            out_p.append(p + 1)
    return out_g, out_p


def false_labels(
    tp_pred: list[int],
    n_pred: int,
    prec: np.ndarray,
    rec: np.ndarray,
    thresh: float,
    rec_wo_overlap: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, list[np.ndarray]]:
    """Unmatched predictions split by where they lie, and per-threshold false merges.

    Returns ``(fs_ind, fp_bg_ind, fm_count, fm_pred_ind, fm_gt_ind)``: ``fs_ind`` are unmatched
    predictions whose best clPrecision row is a GT (argmax ties go to background 0) — the
    false positives of partly labelled samples; ``fp_bg_ind`` those lying mostly in background.
    """
    all_p = np.arange(1, n_pred + 1)
    unassigned = all_p[~np.isin(all_p, np.asarray(tp_pred, np.int64))]
    best = np.argmax(prec[:, unassigned], axis=0) if unassigned.size else np.zeros(0, int)
    fs_ind = unassigned[best > 0]
    fp_bg = unassigned[best == 0]
    if rec_wo_overlap is not None:
        mask = np.logical_and(rec[1:, 1:] > thresh, rec_wo_overlap[1:, 1:] > thresh)
    else:
        mask = rec[1:, 1:] > thresh
    per_pred = np.maximum(0, np.sum(mask, axis=0) - 1)
    fm_count = int(np.sum(per_pred))
    fm_pred = np.nonzero(per_pred)[0]
    fm_gt = [np.nonzero(mask[:, i])[0] + 1 for i in fm_pred]
    return fs_ind, fp_bg, fm_count, fm_pred + 1, fm_gt


class _LazyHeap:
    """Min-heap with lazy invalidation (same semantics and tie order as the official one)."""

    def __init__(self) -> None:
        self._heap: list = []
        self._version: dict = {}
        self._tb = count()

    def push(self, key, priority) -> None:
        v = self._version.get(key, 0) + 1
        self._version[key] = v
        heapq.heappush(self._heap, (priority, next(self._tb), v, key))

    def invalidate(self, key) -> None:
        if key in self._version:
            self._version[key] = -1

    def _discard_stale(self) -> None:
        while self._heap:
            _, _, v, key = self._heap[0]
            if self._version.get(key) == v:
                return
            heapq.heappop(self._heap)

    def pop(self):
        while self._heap:
            prio, _, v, key = heapq.heappop(self._heap)
            if self._version.get(key) == v:
                self._version.pop(key, None)
                return prio, key
        raise KeyError("pop from empty priority queue")

    def empty(self) -> bool:
        self._discard_stale()
        return not self._heap


def m2m_matches(
    rec: np.ndarray,
    thresh: float,
    gt: SparseLabels,
    pred: SparseLabels,
    gt_skel: dict[int, np.ndarray],
    overlaps: bool,
) -> dict[int, list[int]] | None:
    """Many-to-many matching on clRecall (1-based ids: ``{gt: [preds]}``).

    Without overlaps: every pair with ``rec > thresh``. With overlaps: greedy matching with
    consumption — after matching (g, p) the prediction's mask is removed from g's available
    skeleton and g's mask from p's available mask; pairs involving g or p are re-scored. All
    masks are only ever evaluated on GT skeleton voxels, so this never touches a dense volume.
    """
    fg = rec[1:, 1:]
    if not overlaps:
        matches: dict[int, list[int]] = {}
        rows, cols = np.nonzero(fg > thresh)
        for g, p in zip(rows, cols):
            matches.setdefault(int(g) + 1, []).append(int(p) + 1)
        return matches
    if not np.any(fg > thresh):
        return None
    return _greedy_consuming_matches(fg, thresh, gt, pred, gt_skel)


class _SkeletonHits:
    """Per GT skeleton (0-based g): which predictions / GT instances cover each skeleton voxel,
    and which voxels are still available (not consumed by a matched prediction)."""

    def __init__(self, gs, gt: SparseLabels, pred: SparseLabels, gt_skel: dict[int, np.ndarray]) -> None:
        self.skel: dict[int, np.ndarray] = {}
        self.avail: dict[int, np.ndarray] = {}
        self.pred_hits: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.gt_hits: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for g in gs:
            g = int(g)
            s = gt_skel[g + 1]
            self.skel[g] = s
            self.avail[g] = np.ones(s.size, bool)
            pos, ids, _ = pred.query(s)
            self.pred_hits[g] = (pos, ids)
            pos, ids, _ = gt.query(s)
            self.gt_hits[g] = (pos, ids)

    def by_pred(self, g: int, p: int) -> np.ndarray:  # p 0-based
        pos, ids = self.pred_hits[g]
        out = np.zeros(self.skel[g].size, bool)
        out[pos[ids == p + 1]] = True
        return out

    def by_gts(self, g: int, others: list[int]) -> np.ndarray:  # 0-based gts
        pos, ids = self.gt_hits[g]
        out = np.zeros(self.skel[g].size, bool)
        if others:
            out[pos[np.isin(ids, np.asarray(others) + 1)]] = True
        return out


def _greedy_consuming_matches(fg: np.ndarray, thresh: float, gt: SparseLabels, pred: SparseLabels,
                              gt_skel: dict[int, np.ndarray]) -> dict[int, list[int]]:
    """The greedy matching with consumption of :func:`m2m_matches` (overlapping instances)."""
    heap = _LazyHeap()
    gt_ids, pred_ids = np.nonzero(fg > thresh)
    for g, p in zip(gt_ids, pred_ids):
        heap.push((int(g), int(p)), (-1) * fg[g, p])
    hits = _SkeletonHits(np.unique(gt_ids), gt, pred, gt_skel)
    matched_gts: dict[int, list[int]] = {}  # pred (0-based) -> gts consumed from its mask
    result: dict[int, list[int]] = {}
    while not heap.empty():
        try:
            _, (g, p) = heap.pop()
        except KeyError:
            break
        result.setdefault(g, []).append(p)
        hits.avail[g] = np.logical_and(hits.avail[g], ~hits.by_pred(g, p))
        matched_gts.setdefault(p, []).append(g)

        denom = float(hits.skel[g].size) or 1.0
        for op in np.nonzero(fg[g, :] > thresh)[0]:
            op = int(op)
            inter = np.count_nonzero(np.logical_and(hits.avail[g], hits.by_pred(g, op)))
            new = np.int64(inter) / denom
            if new > thresh:
                heap.push((g, op), -new)
            else:
                heap.invalidate((g, op))
        for og in np.nonzero(fg[:, p] > thresh)[0]:
            og = int(og)
            d = float(hits.skel[og].size) or 1.0
            pav = np.logical_and(hits.by_pred(og, p), ~hits.by_gts(og, matched_gts[p]))
            new = np.int64(np.count_nonzero(pav)) / d
            if new > thresh:
                heap.push((og, p), -new)
            else:
                heap.invalidate((og, p))
    return {g + 1: [p + 1 for p in ps] for g, ps in result.items()}


def m2m_counts(matches: dict[int, list[int]] | None, n_pred: int) -> tuple[int, int]:
    """``(FM, FS)`` from many-to-many matches."""
    fm = fs = 0
    if matches:
        for ps in matches.values():
            fs += max(0, len(ps) - 1)
        if n_pred > 0:
            per = np.zeros(n_pred)
            for ps in matches.values():
                for p in ps:
                    per[p - 1] += 1
            fm = int(np.sum(np.maximum(per - 1, 0)))
    return fm, fs
