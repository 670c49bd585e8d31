"""StarDist-3D distance targets in PyTorch, bit-exact with ``stardist.geometry.star_dist3D``.

``stardist``'s C++ ``c_star_dist3d`` marches, for every grid point ``(i, j, k)`` with label
``v != 0`` and every ray ``(dz, dy, dx)`` (float32), ``z += dz; y += dy; x += dx`` (float32) until
``lbl[rint(i·gz + z), rint(j·gy + y), rint(k·gx + x)]`` is out of bounds or ``!= v``; the distance
is ``sqrt(rint(x)² + rint(y)² + rint(z)²)`` (``rint``: round half to even). On a 16-core machine
that takes ~1.5 s per 48×96×96 patch with 64 rays, which starves a GPU during training.

Here the step positions ``z_t, y_t, x_t`` — the same for every point — are accumulated once per
ray in float32 exactly as the C loop does, and so are the distances ``D_t`` belonging to each
step. Then all (point, ray) pairs march together, one step per iteration: the float32 sum of the
point's integer origin and ``z_t`` is rounded half to even (as ``lrint``), the label gathered there
and the pairs that stop take ``D_t``; only the still-active pairs are kept (compaction). Every
operation is an IEEE float32 add, a round-half-even or an integer gather, so the result equals the
C++ one bit for bit on CPU and CUDA (tested against ``star_dist3D`` on CPU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

__all__ = ["ray_steps", "star_dist3d_torch"]


def _vertices(rays_vertices) -> np.ndarray:
    v = getattr(rays_vertices, "vertices", rays_vertices)
    v = np.asarray(v)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise ValueError(f"rays vertices must be an (n_rays, 3) array, not of shape {v.shape}")
    v = np.ascontiguousarray(v, dtype=np.float32)  # as stardist: dz, dy, dx .astype(float32)
    if not np.isfinite(v).all() or np.any(np.abs(v).max(axis=1) == 0):
        raise ValueError("every ray needs a finite, non-zero direction")
    return v


@lru_cache(maxsize=32)
def _ray_steps_cached(vbytes: bytes, n_rays: int, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    v = np.frombuffer(vbytes, dtype=np.float32).reshape(n_rays, 3)
    pos = np.empty((n_steps, 3, n_rays), np.float32)
    acc = np.zeros((3, n_rays), np.float32)
    step = np.ascontiguousarray(v.T)  # (3, n_rays): dz, dy, dx
    for t in range(n_steps):  # sequential float32 accumulation, exactly as the C loop
        acc = acc + step
        pos[t] = acc
    r = np.rint(pos).astype(np.int64)  # round half to even, as lrint
    dist = np.sqrt((r * r).sum(axis=1).astype(np.float64)).astype(np.float32)  # (n_steps, n_rays)
    pos.setflags(write=False)
    dist.setflags(write=False)
    return pos, dist


def ray_steps(rays_vertices, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(positions (n_steps, 3, n_rays) float32, distances (n_steps, n_rays) float32)``: the
    float32 position ``(z, y, x)`` after step ``t + 1`` along each ray and the distance that
    ``star_dist3D`` reports when the march stops there."""
    v = _vertices(rays_vertices)
    return _ray_steps_cached(v.tobytes(), len(v), int(n_steps))


def _n_steps(v: np.ndarray, shape: Sequence[int]) -> int:
    """Enough steps for every ray to leave a volume of ``shape`` from any voxel: along its largest
    component a ray moves ≥ min|d|max per step, and leaves after ``max(shape) + 1`` voxels."""
    m = float(np.abs(v).max(axis=1).min())
    return int(math.ceil((max(shape) + 2) / m)) + 4


def _labels_u16(labels, device) -> torch.Tensor:
    """Labels as stardist sees them (``astype(np.uint16)``, i.e. modulo 2¹⁶), as int32 on device."""
    if isinstance(labels, torch.Tensor):
        t = labels.to(device)
        if t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) or t.dtype == torch.bool:
            t = t.to(torch.int64)
        return (t.to(torch.int64) & 0xFFFF).to(torch.int32)
    a = np.asarray(labels)
    if a.dtype != np.uint16:
        a = a.astype(np.uint16)
    return torch.from_numpy(a.astype(np.int32)).to(device)


def star_dist3d_torch(
    labels: torch.Tensor | np.ndarray,
    rays_vertices,
    grid: Sequence[int] = (1, 1, 1),
    device: torch.device | str | None = None,
    max_pairs: int = 1 << 25,
) -> torch.Tensor:
    """Star distances of a label volume, equal to ``stardist.geometry.star_dist3D(labels, rays,
    grid)``.

    ``labels``: (Z, Y, X) or a batch (B, Z, Y, X) of integer labels (cast to uint16 as stardist
    does); ``rays_vertices``: a ``stardist`` ``Rays`` object or an (n_rays, 3) array of (dz, dy,
    dx) steps; ``device``: where to compute (default: the tensor's device, or CPU);
    ``max_pairs``: (point, ray) pairs marched at once (memory ~60 bytes each).
    Returns float32 ``((Z-1)//gz+1, (Y-1)//gy+1, (X-1)//gx+1, n_rays)`` (with a leading B for a
    batch) on ``device``.
    """
    if device is None:
        device = labels.device if isinstance(labels, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    gz, gy, gx = (int(g) for g in grid)
    if min(gz, gy, gx) < 1:
        raise ValueError(f"grid {tuple(grid)} must be positive")
    v = _vertices(rays_vertices)
    n_rays = len(v)
    lbl = _labels_u16(labels, device)
    batched = lbl.ndim == 4
    if lbl.ndim == 3:
        lbl = lbl[None]
    if lbl.ndim != 4:
        raise ValueError(f"labels must be (Z,Y,X) or (B,Z,Y,X), not of shape {tuple(lbl.shape)}")
    lbl = lbl.contiguous()
    nb, nz, ny, nx = lbl.shape
    sub = lbl[:, ::gz, ::gy, ::gx]
    out = torch.zeros(tuple(sub.shape) + (n_rays,), dtype=torch.float32, device=device)
    bi, ii, jj, kk = torch.nonzero(sub, as_tuple=True)
    n_pts = int(bi.numel())
    if n_pts:
        n_steps = _n_steps(v, (nz, ny, nx))
        pos_np, dist_np = ray_steps(v, n_steps)
        pos = torch.from_numpy(pos_np.copy()).to(device)  # (T, 3, R)
        dist = torch.from_numpy(dist_np.copy()).to(device)  # (T, R)
        # int32 indices where they fit (half the memory traffic of int64)
        itype = torch.int32 if max(lbl.numel(), n_pts * n_rays) < 2**31 else torch.int64
        # per point: its integer origin as float32 (as C's ``int + float``), base offset and value
        origin = torch.stack((ii * gz, jj * gy, kk * gx), dim=1).to(torch.float32)  # (P, 3)
        base = bi.to(itype) * (nz * ny * nx)
        value = sub[bi, ii, jj, kk]
        step_pos = pos.transpose(1, 2).contiguous()  # (T, R, 3)
        upper = torch.tensor([nz, ny, nx], device=device, dtype=itype)
        strides = torch.tensor([ny * nx, nx, 1], device=device, dtype=itype)
        flat = lbl.view(-1)
        res = torch.empty(n_pts * n_rays, dtype=torch.float32, device=device)
        chunk = max(1, int(max_pairs) // n_rays)  # points per march: bounds the memory
        for p0 in range(0, n_pts, chunk):
            p1 = min(n_pts, p0 + chunk)
            # active pairs, point-major (pair index = p * R + r)
            pair = torch.arange(p0 * n_rays, p1 * n_rays, device=device, dtype=itype)
            p = pair // n_rays
            r = pair % n_rays
            for t in range(n_steps):
                if pair.numel() == 0:
                    break
                q = torch.round(origin[p] + step_pos[t][r]).to(itype)  # (N, 3): rint(i*gz + z), ...
                inside = ((q >= 0) & (q < upper)).all(dim=1)
                idx = base[p] + (torch.minimum(q.clamp_(min=0), upper - 1) * strides).sum(dim=1, dtype=itype)
                stop = ~inside | (flat[idx] != value[p])
                res[pair[stop]] = dist[t][r[stop]]
                keep = ~stop
                pair, p, r = pair[keep], p[keep], r[keep]
            if pair.numel():  # cannot happen: n_steps covers the volume
                raise RuntimeError("star_dist3d_torch: rays did not leave the volume")
        out[bi, ii, jj, kk] = res.view(n_pts, n_rays)
    return out if batched else out[0]
