"""Chunk-level readers (Zarr v2 on disk, chunked HDF5 with gzip), used by the FISBe metrics'
sparse extraction (``metrics/_sparse.py``).

A FISBe volume is >99.8% background, so the fastest way to find its foreground is to decode the
stored chunks directly (in two threads: the codecs release the GIL) and keep only their nonzero
voxels, without assembling dense slabs. Anything these readers do not understand returns
``None`` and the caller falls back to reading slabs through the array's own API.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

N_THREADS = max(1, min(4, os.cpu_count() or 1))


@dataclass
class ChunkSource:
    """Decodable chunks of an array: ``tasks`` (opaque) and ``decode(task) -> (origin, chunk)``
    with the chunk already cut to the array bounds."""

    shape: tuple[int, ...]
    dtype: np.dtype
    tasks: list
    decode: Callable[[Any], tuple[tuple[int, ...], np.ndarray | None]]
    close: Callable[[], None] | None = None

    def iter_decoded(self, fn: Callable[[tuple[int, ...], np.ndarray], Any]) -> Iterator[Any]:
        """``fn(origin, chunk)`` for every non-empty chunk, in worker threads."""

        def work(task):
            origin, chunk = self.decode(task)
            if chunk is None:
                return None
            return fn(origin, chunk)

        if N_THREADS == 1 or len(self.tasks) < 4:
            for t in self.tasks:
                yield work(t)
            return
        with ThreadPoolExecutor(N_THREADS) as pool:
            yield from pool.map(work, self.tasks, chunksize=8)


def _cut(origin, chunk, shape):
    sl = tuple(slice(0, min(c, s - o)) for o, c, s in zip(origin, chunk.shape, shape))
    return chunk[sl]


def zarr_v2_source(arr: Any) -> ChunkSource | None:
    """Chunks of a local Zarr v2 array (any numcodecs compressor, no filters, C order)."""
    try:
        import zarr

        if not isinstance(arr, zarr.Array):
            return None
        md = arr.metadata
        if getattr(md, "zarr_format", None) != 2 or md.filters or md.order != "C":
            return None
        root = getattr(arr.store_path.store, "root", None)
        if root is None:
            return None
        fill = md.fill_value
        if fill not in (0, None, False):
            return None
        folder = Path(root) / arr.store_path.path
        sep = md.dimension_separator or "."
        codec = md.compressor
        dtype = np.dtype(arr.dtype)
        if dtype.byteorder not in ("=", "|", "<" if np.little_endian else ">"):
            return None
        shape, chunks = tuple(arr.shape), tuple(md.chunks)
    except Exception:  # noqa: BLE001 - any surprise: use the generic path
        return None
    grid = [range(0, s, c) for s, c in zip(shape, chunks)]
    import itertools

    tasks = list(itertools.product(*grid))

    def decode(origin):
        name = sep.join(str(o // c) for o, c in zip(origin, chunks))
        p = folder / name
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            return origin, None
        buf = codec.decode(raw) if codec is not None else raw
        if not np.frombuffer(buf, np.uint8).any():
            return origin, None
        chunk = np.frombuffer(buf, dtype=dtype).reshape(chunks)
        return origin, _cut(origin, chunk, shape)

    return ChunkSource(shape, dtype, tasks, decode)


def hdf5_source(ds: Any) -> ChunkSource | None:
    """Chunks of a chunked HDF5 dataset stored with gzip (and optionally shuffle) or raw."""
    try:
        import h5py

        if not isinstance(ds, h5py.Dataset) or ds.chunks is None:
            return None
        filters = dict(ds._filters)
        if set(filters) - {"gzip", "shuffle"} or ds.fillvalue != 0:
            return None
        dtype = np.dtype(ds.dtype)
        if dtype.byteorder not in ("=", "|", "<" if np.little_endian else ">"):
            return None
        shape, chunks = tuple(ds.shape), tuple(ds.chunks)
        dsid = ds.id
        infos: list = []
        if hasattr(dsid, "chunk_iter"):
            dsid.chunk_iter(infos.append)  # one pass over the chunk index (HDF5 >= 1.12.3)
        else:  # pragma: no cover - old HDF5: one index lookup per chunk
            infos = [dsid.get_chunk_info(i) for i in range(dsid.get_num_chunks())]
        if any(i.filter_mask != 0 or i.byte_offset is None for i in infos):
            return None
        filename = ds.file.filename
    except Exception:  # noqa: BLE001
        return None
    gz, shuffle = "gzip" in filters, "shuffle" in filters
    fd = os.open(filename, os.O_RDONLY)

    def decode(info):
        raw = os.pread(fd, info.size, info.byte_offset)
        if gz:
            raw = zlib.decompress(raw)
        buf = np.frombuffer(raw, np.uint8)
        if not buf.any():
            return None, None
        if shuffle and dtype.itemsize > 1:
            buf = buf.reshape(dtype.itemsize, -1).T.copy().reshape(-1)
        chunk = buf.view(dtype).reshape(chunks)
        origin = tuple(int(o) for o in info.chunk_offset)
        return origin, _cut(origin, chunk, shape)

    return ChunkSource(shape, dtype, infos, decode, close=lambda: os.close(fd))


def chunk_source(data: Any) -> ChunkSource | None:
    """A direct chunk reader for ``data`` if it is a local Zarr v2 array or a gzip HDF5
    dataset; ``None`` otherwise (or with ``NEUROSEG_METRICS_CHUNKS=0``)."""
    if os.environ.get("NEUROSEG_METRICS_CHUNKS", "1") == "0":
        return None
    return zarr_v2_source(data) or hdf5_source(data)
