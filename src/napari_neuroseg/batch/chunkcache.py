"""A small LRU cache of decoded input chunks, so that block halos do not decode chunks again.

A block read with a halo touches the chunks of its neighbours; without a cache every chunk of a
Zarr/HDF5 input is decoded once per block that touches it (4–8 times for chunks as large as the
blocks). :func:`read_region` assembles a region from whole decoded chunks kept in a per-process
cache bounded in bytes (the caller passes a bound proportional to one block, never to the
volume). Entries belong to one run (``run_id``): a new run clears the cache, so an input rewritten
between runs is never served stale.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

_lock = threading.Lock()
_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
_state = {"run": None, "nbytes": 0, "hits": 0, "misses": 0}


def chunk_shape(array: Any) -> tuple[int, ...] | None:
    """The regular chunk shape of a Zarr/HDF5-like array, or None (memmaps, numpy)."""
    ch = getattr(array, "chunks", None)
    if not isinstance(ch, tuple) or len(ch) != len(array.shape):
        return None
    if not all(isinstance(c, (int, np.integer)) and c > 0 for c in ch):
        return None
    return tuple(int(c) for c in ch)


def touched_bytes(array: Any, region: tuple[slice, ...]) -> int:
    """Bytes of all chunks a ``region`` (one slice per axis, no steps) touches."""
    ch = chunk_shape(array)
    if ch is None:
        return 0
    n = 1
    for s, c, size in zip(region, ch, array.shape):
        start, stop, _ = s.indices(size)
        n *= max(0, (stop - 1) // c - start // c + 1) if stop > start else 0
    return n * int(np.prod(ch)) * np.dtype(array.dtype).itemsize


def clear() -> None:
    """Drop every cached chunk of this process (and reset the hit/miss counters)."""
    with _lock:
        _cache.clear()
        _state.update(run=None, nbytes=0, hits=0, misses=0)


def stats() -> dict[str, int]:
    """Hits, misses and cached bytes of this process (for tests and benchmarks)."""
    with _lock:
        return {"hits": _state["hits"], "misses": _state["misses"], "nbytes": _state["nbytes"], "chunks": len(_cache)}


def read_region(array: Any, region: tuple[slice, ...], *, run_id: str, source: str, capacity: int) -> np.ndarray:
    """``array[region]`` assembled from cached decoded chunks (LRU, at most ``capacity`` bytes).

    ``region`` has one step-less slice per axis of ``array``; ``source`` names the array (path
    and key) within the run. Arrays without a regular chunk grid, or ``capacity <= 0``, are read
    directly.
    """
    ch = chunk_shape(array)
    if ch is None or capacity <= 0:
        return np.asarray(array[region])
    bounds = [s.indices(size)[:2] for s, size in zip(region, array.shape)]
    out = np.empty([b - a for a, b in bounds], dtype=array.dtype)
    ranges = [range(a // c, (b - 1) // c + 1) if b > a else range(0) for (a, b), c in zip(bounds, ch)]
    with _lock:
        if _state["run"] != run_id:
            _cache.clear()
            _state.update(run=run_id, nbytes=0)
    for idx in itertools.product(*ranges):
        key = (source, idx)
        with _lock:
            data = _cache.get(key)
            if data is not None:
                _cache.move_to_end(key)
                _state["hits"] += 1
        if data is None:
            sl = tuple(slice(i * c, min((i + 1) * c, size)) for i, c, size in zip(idx, ch, array.shape))
            data = np.asarray(array[sl])
            with _lock:
                _state["misses"] += 1
                if data.nbytes <= capacity and _state["run"] == run_id and key not in _cache:
                    _cache[key] = data
                    _state["nbytes"] += data.nbytes
                    while _state["nbytes"] > capacity and _cache:
                        _, old = _cache.popitem(last=False)
                        _state["nbytes"] -= old.nbytes
        src = tuple(slice(max(a, i * c) - i * c, min(b, (i + 1) * c) - i * c) for (a, b), i, c in zip(bounds, idx, ch))
        dst = tuple(slice(max(a, i * c) - a, min(b, (i + 1) * c) - a) for (a, b), i, c in zip(bounds, idx, ch))
        out[dst] = data[src]
    return out
