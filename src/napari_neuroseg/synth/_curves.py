"""Branching tube trees: persistent random walks in 3D and their rasterisation (no Qt).

A tree is a list of :class:`Segment`; each segment is a polyline sampled every ``step`` voxels
with a radius and a relative intensity per point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import NeurosegError


@dataclass
class Segment:
    """One unbranched piece of a neurite: points (M,3) ZYX float, radii (M,), intensity (M,)."""

    points: np.ndarray
    radii: np.ndarray
    intensity: np.ndarray
    depth: int = 0  # 0 = trunk, 1 = branch, 2 = sub-branch


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else np.array([0.0, 0.0, 1.0])


def random_direction(rng: np.random.Generator, z_flatten: float) -> np.ndarray:
    """A random unit direction (ZYX) whose Z component is damped by ``z_flatten`` (0..1)."""
    d = rng.normal(size=3)
    d[0] *= z_flatten
    return _unit(d)


def persistent_walk(
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    length: float,
    shape: tuple[int, int, int],
    *,
    step: float = 0.5,
    tortuosity: float = 0.08,
    smoothness: float = 0.8,
    z_flatten: float = 0.5,
    margin: float = 3.0,
    target: np.ndarray | None = None,
    attraction: float = 0.0,
) -> np.ndarray:
    """A smooth random curve (K,3) from ``start``: the direction changes by a correlated (AR(1))
    random turn each step; near the volume border it is steered back inside; it stops when it
    leaves the volume or reaches ``length`` voxels. With ``target``/``attraction`` it bends
    towards ``target`` until it gets within 2 voxels of it (used to make neurons touch/cross).
    """
    n_steps = max(1, int(length / step))
    hi = np.asarray(shape, dtype=float) - 1.0
    p = np.asarray(start, dtype=float).copy()
    d = _unit(np.asarray(direction, dtype=float))
    turn = np.zeros(3)
    noise = rng.normal(size=(n_steps, 3)) * tortuosity
    noise[:, 0] *= z_flatten
    innov = np.sqrt(max(1e-6, 1.0 - smoothness**2))
    out = np.empty((n_steps + 1, 3))
    out[0] = p
    k = 1
    attracting = target is not None and attraction > 0
    for i in range(n_steps):
        turn = smoothness * turn + innov * noise[i]
        d = d + turn
        # steer back from the borders (soft reflection)
        low = p < margin
        high = p > hi - margin
        if low.any() or high.any():
            d = d + 0.25 * low.astype(float) - 0.25 * high.astype(float)
        if attracting:
            to_t = target - p
            dist = float(np.linalg.norm(to_t))
            if dist < 2.0:
                attracting = False
            else:
                d = d + attraction * to_t / dist
        d = _unit(d)
        p = p + step * d
        if np.any(p < -0.5) or np.any(p > hi + 0.5):
            break
        out[k] = p
        k += 1
    return out[:k]


def smooth_noise_1d(rng: np.random.Generator, n: int, *, corr: int, amplitude: float) -> np.ndarray:
    """A smooth 1D random profile of length ``n`` (mean 0, std about ``amplitude``)."""
    if n <= 0:
        return np.zeros(0)
    m = n // max(1, corr) + 3
    coarse = rng.normal(0.0, amplitude, size=m)
    x = np.linspace(0, m - 1, n)
    return np.interp(x, np.arange(m), coarse)


def rasterize_tubes(
    segments: list[Segment],
    shape: tuple[int, int, int],
    *,
    weights: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Voxelise tubes: a voxel is inside when its centre lies within a point's radius.

    Returns ``(flat_indices (unique, sorted), values)`` where ``values`` is, per voxel, the
    maximum intensity of the points covering it (``None`` when ``weights`` is false).
    """
    if not segments:
        return np.zeros(0, dtype=np.int64), (np.zeros(0, dtype=np.float32) if weights else None)
    pts = np.concatenate([s.points for s in segments])
    rad = np.concatenate([s.radii for s in segments])
    val = np.concatenate([s.intensity for s in segments]).astype(np.float32)
    shape_a = np.asarray(shape)
    all_idx = []
    all_val = []
    rmax_int = int(np.ceil(rad.max())) if rad.size else 0
    # group points by the integer half-width of their ball to keep offset arrays small
    half = np.ceil(rad).astype(int)
    for h in range(0, rmax_int + 1):
        sel = half == h
        if not sel.any():
            continue
        r = np.arange(-h, h + 2)
        off = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
        P = pts[sel]
        base = np.floor(P).astype(np.int64)
        cand = base[:, None, :] + off[None, :, :]  # (M, K, 3)
        d2 = ((cand - P[:, None, :]) ** 2).sum(-1)
        inside = d2 <= (rad[sel] ** 2)[:, None]
        inside &= np.all((cand >= 0) & (cand < shape_a), axis=-1)
        c = cand[inside]
        flat = np.ravel_multi_index((c[:, 0], c[:, 1], c[:, 2]), shape)
        all_idx.append(flat)
        if weights:
            all_val.append(np.broadcast_to(val[sel][:, None], inside.shape)[inside])
    idx = np.concatenate(all_idx) if all_idx else np.zeros(0, dtype=np.int64)
    if not weights:
        return np.unique(idx), None
    v = np.concatenate(all_val) if all_val else np.zeros(0, dtype=np.float32)
    # max per voxel: sort by (index, -value) and keep the first of each run
    order = np.lexsort((-v, idx))
    idx, v = idx[order], v[order]
    keep = np.ones(idx.size, dtype=bool)
    keep[1:] = idx[1:] != idx[:-1]
    return idx[keep], v[keep]


def check_shape(shape: tuple[int, ...], minimum: int = 8) -> tuple[int, int, int]:
    """Validate a ZYX shape for the generators."""
    try:
        shp = tuple(int(s) for s in shape)
    except Exception as exc:  # noqa: BLE001
        raise NeurosegError(f"shape {shape!r} is not a tuple of integers", fix="pass e.g. (48, 160, 160)") from exc
    if len(shp) != 3 or min(shp) < minimum:
        raise NeurosegError(
            f"shape {shp} must be 3D (Z, Y, X) with every side >= {minimum}",
            fix="pass a 3-tuple such as (48, 160, 160)",
        )
    return shp  # type: ignore[return-value]
