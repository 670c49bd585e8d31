"""Result data made ready for napari in the worker thread, so that adding the layer is cheap.

What napari does in the main thread when a Labels layer is added, and what is done here instead
(measured with ``benchmarks/bench_widget_stalls.py``, see ``docs/widgets.md``, Responsiveness):

- labels of 32/64-bit integers are remapped on every slice to a texture dtype
  (``zero_preserving_modulo``, numba ``parallel=True``): the first remap of a session loads the
  kernels and numba's typing context, and each later slice pays the remap. 8/16-bit labels are
  used as they are. :func:`compact_labels` casts a result whose ids fit to ``uint16`` (here, in
  the worker), so napari skips the remap altogether;
- the first Labels layer of a session builds vispy's dash-pattern table (13 patterns of 1024
  steps in a Python loop, ``lru_cache``-d, pure numpy: ~0.2 s) for its polygon overlay.
  :func:`warm_labels_display` fills that cache in the worker.

Nothing here touches Qt or a layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["compact_labels", "warm_labels_display"]

#: the largest id napari shows without a per-slice remap (16-bit labels)
U16_MAX = int(np.iinfo(np.uint16).max)


def compact_labels(labels: Any) -> Any:
    """``labels`` as ``uint16`` when it is an in-memory integer array wider than 16 bits whose
    ids all lie in 0..65535 (the same values), else ``labels`` itself (a lazy array, floats,
    already 8/16-bit, or more ids than 16 bits hold)."""
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu" or labels.dtype.itemsize <= 2:
        return labels
    if labels.size == 0:
        return labels.astype(np.uint16)
    import fastremap

    lo, hi = fastremap.minmax(labels)
    if int(lo) < 0 or int(hi) > U16_MAX:
        return labels
    return labels.astype(np.uint16)


def warm_labels_display() -> None:
    """Fill, off the main thread, the caches the first Labels layer of a session builds in it
    (vispy's dash patterns for napari's labels polygon overlay). Harmless when already filled;
    does nothing if vispy lays out its module differently."""
    try:
        from vispy.visuals.line.dash_atlas import DashAtlas
    except ImportError:  # pragma: no cover - another vispy: napari builds it as before
        return
    DashAtlas()  # its patterns come from an lru_cache shared by every later atlas
