"""Ready the metrics' numba kernels before an evaluation needs them (a GUI's background thread).

An evaluation compiles, the first time after an install, the FISBe skeletoniser's thinning
(``_thin``, cached on disk by numba) and, for the nuclei metrics, stardist's overlap table once
per pair of label dtypes (cached on disk once :func:`~napari_neuroseg.metrics.nuclei` enables
it); a later process loads them from the cache. Compiled inside a run, numba's compiler (Python
code) competes with the viewer for the GIL and its allocations set off full garbage
collections: the Evaluate dock's first run after an install stalled the viewer 110-116 ms.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["label_signature", "warmup"]


def label_signature(arr: Any) -> tuple[str, int] | None:
    """(dtype, ndim) of a label array as the nuclei metrics see it (booleans as uint8), or None
    when it is not an integer (or boolean) array of 2 or 3 dimensions."""
    try:
        dt, nd = np.dtype(getattr(arr, "dtype", object)), int(getattr(arr, "ndim", 0))
    except (TypeError, ValueError):  # an array-like whose dtype numpy does not read
        return None
    if dt == np.bool_:
        dt = np.dtype(np.uint8)
    if dt.kind not in "iu" or nd not in (2, 3):
        return None
    return dt.str, nd


def warmup(pairs: Iterable[tuple[tuple[str, int], tuple[str, int]]] = (), *, thinning: bool = True) -> None:
    """Compile (or load from numba's cache) what an evaluation calls: the thinning kernels
    (``thinning``) and stardist's overlap table for each (ground truth, prediction)
    :func:`label_signature` pair of the same ndim."""
    if thinning:
        from ._thin import HAVE_NUMBA, thin_coords

        if HAVE_NUMBA:
            thin_coords(np.nonzero(np.ones((3, 3, 3), bool)))
    pairs = [(g, p) for g, p in pairs if g is not None and p is not None and g[1] == p[1]]
    if not pairs:
        return
    from stardist.matching import matching

    from .nuclei import _cache_stardist_overlap

    _cache_stardist_overlap()
    for (gdt, nd), (pdt, _) in pairs:
        shape = (2, 3, 3)[-nd:]
        a = np.zeros(shape, gdt)
        a.reshape(-1)[:2] = 1
        matching(a, a.astype(pdt), thresh=0.5)
