"""clDice localisation from per-instance skeletons and sparse lookups.

``prec[g, p] = |S_p ∩ mask_g| / |S_p|`` (row 0: the part of ``S_p`` outside every GT),
``rec[g, p] = |S_g ∩ mask_p| / |S_g|`` (column 0: the part of ``S_g`` outside every prediction),
``cl = nan_to_num(2·prec·rec / (prec + rec))`` — all float32, as in the official evaluator.
"""

from __future__ import annotations

import numpy as np

from ._sparse import SparseLabels


def overlap_matrix(
    skeletons: dict[int, np.ndarray],
    n_rows: int,
    compare: SparseLabels,
    subset: np.ndarray | None = None,
) -> np.ndarray:
    """``m[s, c] = |S_s ∩ mask_c| / |S_s|`` for skeleton ids ``s`` (rows, 1..n_rows) against
    the instances of ``compare`` (columns; column 0 = outside all of them)."""
    n_cols = (compare.n if subset is None else len(subset)) + 1
    m = np.zeros((n_rows + 1, n_cols), np.float32)
    for s, sk in skeletons.items():
        size = sk.size
        if size == 0:
            continue
        counts = compare.counts_at(sk, subset)
        nz = np.nonzero(counts)[0]
        m[s, nz] = counts[nz] / float(size)
    return m


def cldice(prec: np.ndarray, rec: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(2 * prec * rec / (prec + rec))
