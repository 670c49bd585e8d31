"""Test-time flip averaging (TTA): run a network on the 8 flips of a tile (every subset of the
Z, Y and X axes), map each output back to the original orientation and average.

Generic over the model: :func:`flip_average` wraps a tile ``forward`` (the function the tiler
calls, :mod:`napari_neuroseg.runtime.tiling`) and calls an ``unflip(outputs, axes)`` hook that knows
what the outputs mean, e.g. which affinity channels point along a flipped axis
(:func:`affinity_unflip`) or which StarDist rays a flip maps onto which (:func:`ray_flip_weights`).
Averaging happens on probabilities (and distances), never on logits.

Grids: a network with output grid ``g`` on an axis (StarDist's subsampling) samples the tile at
voxels ``0, g, 2g, ...``. A plain flip would sample the flipped tile at voxels that sit ``g-1``
voxels off that lattice, so the flipped input is shifted by ``g-1`` voxels (the vacated end is
filled by reflection): its outputs then lie on the same lattice and un-flip with a plain flip.

No Qt; imports numpy only (torch stays in the model's forward).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations

import numpy as np

__all__ = ["FLIPS", "affinity_unflip", "flip_average", "flip_tile", "ray_flip_weights", "unflip_dist"]

#: The 8 flips of a 3D volume: every subset of the spatial axes (0 = Z, 1 = Y, 2 = X).
FLIPS: tuple[tuple[int, ...], ...] = tuple(c for k in range(4) for c in combinations((0, 1, 2), k))


def flip_tile(x: np.ndarray, axes: Sequence[int], grid: Sequence[int] = (1, 1, 1)) -> np.ndarray:
    """Flip the spatial axes ``axes`` (0..2 = the last three axes) of a (C, Z, Y, X) tile, shifted by
    ``grid - 1`` voxels so that the output lattice of a grid-``g`` network stays aligned."""
    out = x
    for a in axes:
        ax = x.ndim - 3 + a
        out = np.flip(out, axis=ax)
        g = int(grid[a])
        if g > 1:
            n = out.shape[ax]
            keep = [slice(None)] * out.ndim
            keep[ax] = slice(g - 1, n)
            pads = [(0, 0)] * out.ndim
            pads[ax] = (0, g - 1)
            out = np.pad(out[tuple(keep)], pads, mode="reflect")
    return np.ascontiguousarray(out)


def _flip_out(o: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    for a in axes:
        o = np.flip(o, axis=o.ndim - 3 + a)
    return o


def flip_average(
    forward: Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, ...]],
    *,
    grid: Sequence[int] = (1, 1, 1),
    unflip: Callable[[tuple[np.ndarray, ...], tuple[int, ...]], tuple[np.ndarray, ...]] | None = None,
    flips: Sequence[tuple[int, ...]] = FLIPS,
    finish: Callable[[tuple[np.ndarray, ...]], np.ndarray | tuple[np.ndarray, ...]] | None = None,
):
    """A tile forward that averages ``forward`` over ``flips``.

    ``forward(tile)`` returns one float array or a tuple of float arrays (K, z/gz, y/gy, x/gx) of
    probabilities/distances; each flipped pass is flipped back spatially and then given to
    ``unflip(outputs, axes)`` (channel fixes: affinity shifts, ray permutations). ``finish`` maps
    the averaged tuple to what the tiler gets (e.g. uint8 quantisation); default: the arrays
    (one array if ``forward`` returned one).
    """

    def tta_forward(tile: np.ndarray):
        acc: list[np.ndarray] | None = None
        single = False
        for axes in flips:
            out = forward(flip_tile(tile, axes, grid) if axes else tile)
            single = not isinstance(out, tuple)
            outs = (out,) if single else tuple(out)
            outs = tuple(_flip_out(np.asarray(o, np.float32), axes) for o in outs)
            if axes and unflip is not None:
                outs = tuple(unflip(outs, tuple(axes)))
            if acc is None:
                acc = [np.array(o, np.float32) for o in outs]
            else:
                for s, o in zip(acc, outs):
                    s += o
        assert acc is not None
        res = tuple(s / np.float32(len(flips)) for s in acc)
        if finish is not None:
            return finish(res)
        return res[0] if single else res

    return tta_forward


# ------------------------------------------------------------------------------ affinities
def affinity_unflip(offsets: Sequence[Sequence[int]], first_channel: int = 1):
    """``unflip`` hook for one (K, Z, Y, X) output whose channels ``first_channel + k`` are
    affinities between voxel ``v`` and ``v + offsets[k]``.

    On a flipped tile the network's affinity at ``v'`` links ``v'`` and ``v' + o``, i.e. the original
    voxels ``v`` and ``v - o``; after the spatial flip-back it sits at ``v``, so it is the original
    affinity of voxel ``v - o``: shift it back by ``o`` along each flipped axis. The last ``|o|``
    voxels (pairs leaving the tile) keep the unshifted value."""
    offs = [tuple(int(v) for v in o) for o in offsets]

    def unflip(outs: tuple[np.ndarray, ...], axes: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        o0 = outs[0]
        res = o0.copy()
        for k, off in enumerate(offs):
            c = first_channel + k
            src = o0[c]
            cur = src
            for a in axes:
                s = off[a]
                if s == 0:
                    continue
                shifted = cur.copy()
                n = cur.shape[a]
                if abs(s) < n:
                    dst_sl = [slice(None)] * 3
                    src_sl = [slice(None)] * 3
                    if s > 0:
                        dst_sl[a], src_sl[a] = slice(0, n - s), slice(s, n)
                    else:
                        dst_sl[a], src_sl[a] = slice(-s, n), slice(0, n + s)
                    shifted[tuple(dst_sl)] = cur[tuple(src_sl)]
                cur = shifted
            res[c] = cur
        return (res,) + tuple(outs[1:])

    return unflip


# ------------------------------------------------------------------------------ StarDist rays
def ray_flip_weights(vertices: np.ndarray, faces: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """(R, R) matrix ``W`` such that distances predicted on a tile flipped along ``axes`` and
    flipped back map to the original rays as ``d_orig = d_flipped @ W.T``.

    Ray ``k``'s direction ``v_k`` is, in the flipped tile, the direction ``F v_k`` (the flipped
    components negated). If ``F v_k`` is another ray ``j`` (a flip-symmetric ray set), row ``k`` is
    the unit vector ``e_j`` (a permutation). Otherwise ``F v_k`` falls inside a face of the rays'
    triangulation and row ``k`` holds its barycentric weights (normalised to sum 1, so a constant
    distance stays constant) on the face's three rays: a linear interpolation over the sphere of
    ray directions."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    R = len(v)
    target = v.copy()
    for a in axes:
        target[:, a] = -target[:, a]
    W = np.zeros((R, R), np.float64)
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    tu = target / np.linalg.norm(target, axis=1, keepdims=True)
    # exact matches first (symmetric ray sets): a permutation
    cos = tu @ unit.T
    best = np.argmax(cos, axis=1)
    exact = cos[np.arange(R), best] > 1 - 1e-6
    M = np.transpose(v[f], (0, 2, 1))  # (F, 3, 3): columns are the face's vertices
    inv = np.linalg.inv(M)
    for k in range(R):
        if exact[k]:
            W[k, best[k]] = 1.0
            continue
        coef = inv @ target[k]  # (F, 3): target as a combination of each face's vertices
        score = coef.min(axis=1)  # the containing face has all coefficients >= 0
        i = int(np.argmax(score))
        c = np.clip(coef[i], 0, None)
        W[k, f[i]] += c / c.sum()
    return W.astype(np.float32)


def unflip_dist(dist: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Apply :func:`ray_flip_weights` to a (R, z, y, x) distance map (rays first)."""
    R = dist.shape[0]
    return (W @ dist.reshape(R, -1)).reshape(dist.shape).astype(np.float32, copy=False)
