"""Intensity statistics computed once per volume, so every block of a blockwise run is normalised
alike (learned models are trained on normalised inputs: a block normalised on its own gets a
different contrast from its neighbours, and from the whole-volume run).

:func:`sample_values` reads a bounded sample of a lazily sliceable volume: all of it when small,
else a strided subsample, or — for chunked stores where a strided read would decode every
chunk — a fixed pseudo-random set of whole chunks. :func:`percentile_stats` and
:func:`apply_percentiles` are the csbdeep/StarDist percentile normalisation with precomputed
percentiles.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_neuroseg.models.stardist3d.config import NORM_PERCENTILES

#: voxels of the sample (per channel) used for statistics of lazily read volumes
SAMPLE_VOXELS = 4_000_000


def _as_channels(a: np.ndarray, axes: str) -> np.ndarray:
    a = np.asarray(a)
    return a.reshape(1, -1) if axes == "ZYX" else a.reshape(a.shape[0], -1)


def sample_values(image: Any, axes: str, max_voxels: int = SAMPLE_VOXELS, *, seed: int = 0) -> np.ndarray:
    """A ``(C, N)`` sample of the voxel values (``C = 1`` for ZYX), ``N`` about ``max_voxels``.

    In-memory arrays and volumes of at most ``max_voxels`` voxels give every voxel. Chunked
    stores whose strided read would decode more than ~4× the sample's worth of chunks give whole
    chunks picked by a fixed seed (deterministic: a resumed run gets the same statistics).
    """
    from napari_neuroseg.batch.chunkcache import chunk_shape

    spatial = tuple(int(s) for s in image.shape[-3:])
    n = int(np.prod(spatial))
    lead = (slice(None),) if axes == "CZYX" else ()
    if isinstance(image, np.ndarray) and not isinstance(image, np.memmap) or n <= max_voxels:
        return _as_channels(image[...], axes)
    step = max(1, int(np.ceil((n / max_voxels) ** (1 / 3))))
    ch = chunk_shape(image)
    if ch is not None:
        cs = ch[-3:]
        grid = [-(-s // c) for s, c in zip(spatial, cs)]
        n_chunks = int(np.prod(grid))
        per_chunk = int(np.prod(cs))
        want = max(16, -(-4 * max_voxels // per_chunk))
        if want < n_chunks:
            rng = np.random.default_rng(seed)
            picks = np.sort(rng.choice(n_chunks, size=want, replace=False))
            inner = max(1, int((want * per_chunk / max_voxels) ** (1 / 3)))  # about max_voxels in all
            parts = []
            for flat in picks:
                idx = np.unravel_index(int(flat), grid)
                sl = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, cs, spatial))
                block = np.asarray(image[lead + sl])
                parts.append(_as_channels(block[(Ellipsis,) + (slice(None, None, inner),) * 3], axes))
            return np.concatenate(parts, axis=1)
    return _as_channels(image[lead + (slice(None, None, step),) * 3], axes)


def percentile_stats(
    image: Any, axes: str, percentiles: tuple[float, float] = NORM_PERCENTILES, *, max_voxels: int = SAMPLE_VOXELS
) -> list[list[float]]:
    """``[[low, high], ...]`` percentiles per channel of the whole volume (exact for in-memory
    arrays, from :func:`sample_values` for lazy ones) — computed as ``np.percentile`` does in
    StarDist's ``normalize_image``."""
    sample = sample_values(image, axes, max_voxels)
    lo = np.percentile(sample, percentiles[0], axis=1)
    hi = np.percentile(sample, percentiles[1], axis=1)
    return [[float(a), float(b)] for a, b in zip(lo, hi)]


def apply_percentiles(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """``(x − low) / (high − low + 1e-20)`` in float32, no clipping: bit-identical to StarDist's
    ``normalize_image`` given the same percentiles."""
    mi, ma = np.float32(low), np.float32(high)
    out = np.asarray(image).astype(np.float32)
    out -= mi
    out /= ma - mi + np.float32(1e-20)
    return out
