"""Keep Python's full garbage collections short while a long job runs next to a GUI.

A full collection traverses every tracked object of the process, holding the GIL for its whole
length, in whichever thread crosses the collector's threshold. With napari, torch and numba
loaded a process tracks ~600,000 objects: 0.5-1.4 s per full collection on a loaded 2-core
machine, measured as the viewer's longest stalls during a Fine-tune run (its set-up imports and
first steps allocate enough to trigger one; ``benchmarks/bench_stalls_finetune.py``).

:func:`frozen_heap` moves the objects that exist when it is entered into the collector's
permanent generation (``gc.freeze()``) and back when the last user leaves (``gc.unfreeze()``):
while it is held, full collections traverse only the objects made since, and garbage is still
collected among those. Objects that existed before and become cyclic garbage meanwhile (a layer
the user deletes during the job) are freed by the first full collection after it. Process-wide
and nestable: concurrent users (a job, the NMS compilation) share one freeze, released when the
last of them leaves. No Qt.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["frozen_depth", "frozen_heap"]

_LOCK = threading.Lock()
_DEPTH = [0]


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the objects that exist now for the collector until the block (and every other
    user's) has ended; see the module docstring."""
    with _LOCK:
        gc.freeze()  # also the objects made since an enclosing user froze
        _DEPTH[0] += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH[0] -= 1
            if _DEPTH[0] == 0:
                gc.unfreeze()


def frozen_depth() -> int:
    """How many :func:`frozen_heap` blocks are open now (0: nothing frozen by them)."""
    return _DEPTH[0]
