"""Non-maximum suppression and rendering of star-convex polyhedra (StarDist-3D), in numba.

The same decisions as ``stardist``'s C++ ``non_maximum_suppression_3d_sparse`` and the same
label images as its ``polyhedron_to_label`` (see ``docs/stardist3d.md``, section "NMS"), but
100-300x faster and without holding Python's global lock, so it can run in a napari worker
thread and report progress (candidates processed) between chunks.

Definitions as in ``stardist`` (0.9.2):

* candidates are processed by decreasing probability (numpy's ``argsort(prob)[::-1]``, applied
  twice exactly as ``stardist.nms`` does, so ties are ordered the same way);
* a candidate ``j`` is suppressed by an earlier *kept* candidate ``i`` if
  ``overlap(i, j) / (min(volume_i, volume_j) + 1e-10) > nms_thresh``, where the volumes are the
  exact polyhedron volumes and the overlap is decided by stardist's cascade of tests:
  an upper bound (the smaller of the intersection of the outer bounding spheres, in "isotropic"
  coordinates scaled by the candidates' mean bounding-box aspect, and of the bounding boxes)
  at or below the threshold keeps ``j``; a lower bound (the intersection of the inscribed
  spheres) above it suppresses ``j``; then the Qhull volumes of the intersection of the two
  kernels (above: suppress) and of the two convex hulls (at or below: keep); else the number
  of integer voxels inside both polyhedra. Here the voxel count comes first; only pairs whose
  count is within :data:`MARGIN` of the threshold go through the two Qhull tests (SciPy's
  Qhull), which is where a voxel count and a continuous volume can fall on different sides.
* a voxel ``v`` is inside a polyhedron with centre ``c``, distances ``d`` and ray directions
  ``r`` if it lies in one of the tetrahedra (centre, three vertices of a face). Here the face
  whose cone (spanned by its three ray directions, the same for every candidate) contains
  ``v - c`` is looked up in a table over integer offsets, with the cone coordinates
  ``v - c = a·r_A + b·r_B + c·r_C``; the voxel is inside iff ``a/d_A + b/d_B + c/d_C <= 1``:
  one table read and three multiplications per voxel instead of stardist's loop over all
  faces. Candidates with non-integer centres (or offsets beyond the table) use the same test
  with the face searched per voxel.

Candidates are found through a uniform grid of cells holding the kept polyhedra's bounding
boxes, so each candidate meets only the kept polyhedra whose boxes overlap its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import numba as nb
import numpy as np

from napari_neuroseg.errors import NeurosegError

__all__ = ["nms_3d", "nms_3d_iter", "polyhedra_to_label", "sort_order", "warmup", "warmup_async"]

#: cache: compiled once per install, not per process: loading takes ~0.4 s instead of a 10-25 s
#: compilation whose ~190,000 short-lived objects set off full garbage collections of the viewer
#: process (0.2-0.5 s each, holding the GIL), and keeps ~50,000 fewer objects alive (issue 17)
_JIT = {"nogil": True, "cache": True, "error_model": "numpy"}

#: Largest offset (per axis, voxels) covered by the face lookup table; beyond it the face is
#: searched per voxel (correct, slower).
TABLE_RADIUS_MAX = 40


# ------------------------------------------------------------------------------------------------
# geometry shared by NMS and rendering
# ------------------------------------------------------------------------------------------------
class _Geometry:
    """Per-ray-set data: ray directions, faces, the inverse cone matrices and the face table."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, radius: int):
        self.verts = np.ascontiguousarray(vertices, np.float64)
        self.verts32 = np.ascontiguousarray(vertices, np.float32)
        self.faces = np.ascontiguousarray(faces, np.int64)
        mats = np.stack([self.verts[self.faces[:, 0]], self.verts[self.faces[:, 1]], self.verts[self.faces[:, 2]]], -1)
        with np.errstate(all="ignore"):
            det = np.linalg.det(mats)
        if len(self.faces) == 0 or not np.all(np.abs(det) > 1e-12):
            raise NeurosegError("the rays have a degenerate face", fix="use stardist's ray classes (e.g. Rays_GoldenSpiral)")
        self.minv = np.ascontiguousarray(np.linalg.inv(mats))  # (F, 3, 3): cone coordinates of a direction
        n_rays = len(self.verts)
        vf = [[] for _ in range(n_rays)]
        for f, tri in enumerate(self.faces):
            for k in tri:
                vf[int(k)].append(f)
        self.vf_ptr = np.zeros(n_rays + 1, np.int64)
        self.vf_ptr[1:] = np.cumsum([len(v) for v in vf])
        self.vf_idx = np.array([f for v in vf for f in v], np.int64)
        self.radius = int(radius)
        d = 2 * self.radius + 1
        self.tab_ray = np.empty((d * d * d, 3), np.int32)  # the three rays of the face containing the offset
        self.tab_coef = np.empty((d * d * d, 3), np.float32)  # and the offset's cone coordinates
        _build_table(self.verts, self.minv, self.faces, self.vf_ptr, self.vf_idx, self.radius, self.tab_ray, self.tab_coef)

    def args(self):
        """The arrays the kernels take, in order."""
        return self.tab_ray, self.tab_coef, self.radius, self.faces, self.verts, self.minv, self.vf_ptr, self.vf_idx


@nb.njit(**_JIT)
def _cone_coords(minv, f, oz, oy, ox, out):
    m = minv[f]
    out[0] = m[0, 0] * oz + m[0, 1] * oy + m[0, 2] * ox
    out[1] = m[1, 0] * oz + m[1, 1] * oy + m[1, 2] * ox
    out[2] = m[2, 0] * oz + m[2, 1] * oy + m[2, 2] * ox


@nb.njit(**_JIT)
def _find_face(verts, minv, vf_ptr, vf_idx, oz, oy, ox, coef):
    """The face whose cone contains the direction (oz, oy, ox) ≠ 0, and its cone coordinates."""
    n_rays = verts.shape[0]
    best_k = 0
    best_dot = -np.inf
    for k in range(n_rays):
        dt = verts[k, 0] * oz + verts[k, 1] * oy + verts[k, 2] * ox
        if dt > best_dot:
            best_dot = dt
            best_k = k
    tmp = coef[3:6]
    best_f = -1
    best_m = -np.inf
    for t in range(vf_ptr[best_k], vf_ptr[best_k + 1]):
        best_m, best_f = _try_face(minv, vf_idx[t], oz, oy, ox, tmp, coef, best_m, best_f)
    norm = np.sqrt(oz * oz + oy * oy + ox * ox)
    if best_m < -1e-9 * norm:  # not in a face around the nearest ray: search all faces
        for f in range(minv.shape[0]):
            best_m, best_f = _try_face(minv, f, oz, oy, ox, tmp, coef, best_m, best_f)
    return best_f


@nb.njit(**_JIT)
def _try_face(minv, f, oz, oy, ox, tmp, coef, best_m, best_f):
    """Face ``f`` for :func:`_find_face`: its cone coordinates of the direction (in ``tmp``) and,
    when their smallest beats ``best_m``, ``f`` as the new best with its coordinates in ``coef``."""
    _cone_coords(minv, f, oz, oy, ox, tmp)
    m = min(tmp[0], min(tmp[1], tmp[2]))
    if m > best_m:
        coef[0] = tmp[0]
        coef[1] = tmp[1]
        coef[2] = tmp[2]
        return m, f
    return best_m, best_f


@nb.njit(**_JIT)
def _build_table(verts, minv, faces, vf_ptr, vf_idx, radius, tab_ray, tab_coef):
    coef = np.empty(6)
    q = 0
    for iz in range(-radius, radius + 1):
        for iy in range(-radius, radius + 1):
            for ix in range(-radius, radius + 1):
                if iz == 0 and iy == 0 and ix == 0:
                    f = 0
                    coef[0] = coef[1] = coef[2] = 0.0
                else:
                    f = _find_face(verts, minv, vf_ptr, vf_idx, float(iz), float(iy), float(ix), coef)
                for k in range(3):
                    tab_ray[q, k] = faces[f, k]
                    tab_coef[q, k] = max(coef[k], 0.0)
                q += 1


@nb.njit(**_JIT)
def _inside_slow(fz, fy, fx, inv, faces, verts, minv, vf_ptr, vf_idx, coef):
    """The inside test for any offset (fz, fy, fx) from the centre, face searched."""
    if fz == 0.0 and fy == 0.0 and fx == 0.0:
        return True
    f = _find_face(verts, minv, vf_ptr, vf_idx, fz, fy, fx, coef)
    s = max(coef[0], 0.0) * inv[faces[f, 0]] + max(coef[1], 0.0) * inv[faces[f, 1]] + max(coef[2], 0.0) * inv[faces[f, 2]]
    return s <= 1.0


@nb.njit(**_JIT)
def _row(out, o0, vz, vy, x0, x1, c, int_center, inv, tab_ray, tab_coef, radius, faces, verts, minv, vf_ptr, vf_idx, coef):
    """``out[o0 + (vx - x0)]`` = voxel (vz, vy, vx) inside the polyhedron with centre ``c`` and
    inverse distances ``inv``, for vx in [x0, x1]."""
    d = 2 * radius + 1
    xa, xb = x1 + 1, x1
    base = 0
    if int_center:
        cz, cy, cx = int(c[0]), int(c[1]), int(c[2])
        oz, oy = vz - cz, vy - cy
        if -radius <= oz <= radius and -radius <= oy <= radius:
            xa = max(x0, cx - radius)
            xb = min(x1, cx + radius)
            base = ((oz + radius) * d + (oy + radius)) * d + radius - cx
    for vx in range(x0, x1 + 1):
        if xa <= vx <= xb:
            k = base + vx
            s = (
                np.float64(tab_coef[k, 0]) * inv[tab_ray[k, 0]]
                + np.float64(tab_coef[k, 1]) * inv[tab_ray[k, 1]]
                + np.float64(tab_coef[k, 2]) * inv[tab_ray[k, 2]]
            )
            out[o0 + vx - x0] = s <= 1.0
        else:
            out[o0 + vx - x0] = _inside_slow(vz - c[0], vy - c[1], vx - c[2], inv, faces, verts, minv, vf_ptr, vf_idx, coef)


@nb.njit(**_JIT)
def _inverse_dist(dist_row, out):
    for k in range(dist_row.shape[0]):
        d = np.float64(dist_row[k])
        out[k] = 1.0 / d if d > 0 else 1e300


# ------------------------------------------------------------------------------------------------
# per-candidate quantities (stardist's formulas)
# ------------------------------------------------------------------------------------------------
@nb.njit(**_JIT)
def _bbox_volume(dist, points, verts32, faces, bbox, vol):
    """stardist's ``polyhedron_bbox`` (float32 vertices, rounded half to even, inclusive) and
    ``polyhedron_volume``; returns the summed box extents (for the anisotropy)."""
    n, n_rays = dist.shape
    ext = np.zeros(3)
    for i in range(n):
        lo0 = lo1 = lo2 = 2**62
        hi0 = hi1 = hi2 = -1
        for k in range(n_rays):
            dk = dist[i, k]
            z = int(np.rint(points[i, 0] + dk * verts32[k, 0]))
            y = int(np.rint(points[i, 1] + dk * verts32[k, 1]))
            x = int(np.rint(points[i, 2] + dk * verts32[k, 2]))
            lo0 = min(lo0, z)
            hi0 = max(hi0, z)
            lo1 = min(lo1, y)
            hi1 = max(hi1, y)
            lo2 = min(lo2, x)
            hi2 = max(hi2, x)
        bbox[i, 0] = lo0
        bbox[i, 1] = hi0
        bbox[i, 2] = lo1
        bbox[i, 3] = hi1
        bbox[i, 4] = lo2
        bbox[i, 5] = hi2
        ext[0] += hi0 - lo0
        ext[1] += hi1 - lo1
        ext[2] += hi2 - lo2
        v = 0.0
        for f in range(faces.shape[0]):
            a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
            az, ay, ax = dist[i, a] * verts32[a, 0], dist[i, a] * verts32[a, 1], dist[i, a] * verts32[a, 2]
            bz, by, bx = dist[i, b] * verts32[b, 0], dist[i, b] * verts32[b, 1], dist[i, b] * verts32[b, 2]
            cz, cy, cx = dist[i, c] * verts32[c, 0], dist[i, c] * verts32[c, 1], dist[i, c] * verts32[c, 2]
            m00, m01, m02 = bz - az, by - ay, bx - ax
            m10, m11, m12 = cz - az, cy - ay, cx - ax
            m20, m21, m22 = -az, -ay, -ax
            det = m00 * (m11 * m22 - m21 * m12) - m01 * (m10 * m22 - m12 * m20) + m02 * (m10 * m21 - m11 * m20)
            v += det / 6.0
        vol[i] = v
    return ext


@nb.njit(**_JIT)
def _radii(dist, verts, faces, aniso, r_out, r_in):
    """stardist's ``bounding_radius_outer_isotropic`` / ``bounding_radius_inner_isotropic``."""
    n, n_rays = dist.shape
    for i in range(n):
        rmax = 0.0
        for k in range(n_rays):
            z = aniso[0] * dist[i, k] * verts[k, 0]
            y = aniso[1] * dist[i, k] * verts[k, 1]
            x = aniso[2] * dist[i, k] * verts[k, 2]
            rmax = max(rmax, z * z + y * y + x * x)
        r_out[i] = np.sqrt(rmax)
        rmin = np.inf
        for f in range(faces.shape[0]):
            a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
            az, ay, ax = aniso[0] * dist[i, a] * verts[a, 0], aniso[1] * dist[i, a] * verts[a, 1], aniso[2] * dist[i, a] * verts[a, 2]
            bz, by, bx = aniso[0] * dist[i, b] * verts[b, 0], aniso[1] * dist[i, b] * verts[b, 1], aniso[2] * dist[i, b] * verts[b, 2]
            cz, cy, cx = aniso[0] * dist[i, c] * verts[c, 0], aniso[1] * dist[i, c] * verts[c, 1], aniso[2] * dist[i, c] * verts[c, 2]
            pz, py, px = bz - az, by - ay, bx - ax
            qz, qy, qx = cz - az, cy - ay, cx - ax
            nz = px * qy - py * qx
            ny = pz * qx - px * qz
            nx = py * qz - pz * qy
            nrm = 1.0 / (np.sqrt(nz * nz + ny * ny + nx * nx) + 1e-10)
            r = (az * nz + ay * ny + ax * nx) * nrm
            rmin = min(rmin, r)
        r_in[i] = rmin


@nb.njit(**_JIT)
def _sphere_overlap(r1, p1, r2, p2, aniso):
    """stardist's ``intersect_sphere_isotropic`` (volume in voxels)."""
    dz = aniso[0] * (p1[0] - p2[0])
    dy = aniso[1] * (p1[1] - p2[1])
    dx = aniso[2] * (p1[2] - p2[2])
    d = np.sqrt(dz * dz + dy * dy + dx * dx)
    rmin = min(r1, r2)
    rmax = max(r1, r2)
    if d > r1 + r2:
        return 0.0
    if rmax >= d + rmin - 1e-10:
        return np.pi * 4.0 / 3.0 * rmin * rmin * rmin
    t = (r1 + r2 - d) / 2.0 / d
    h1 = (r2 - r1 + d) * t
    h2 = (r1 - r2 + d) * t
    v1 = np.pi / 3.0 * h1 * h1 * (3 * r1 - h1)
    v2 = np.pi / 3.0 * h2 * h2 * (3 * r2 - h2)
    return (v1 + v2) / (aniso[0] * aniso[1] * aniso[2])


@nb.njit(**_JIT)
def _bbox_overlap(b1, b2):
    wz = max(0.0, float(min(b1[1], b2[1]) - max(b1[0], b2[0])))
    wy = max(0.0, float(min(b1[3], b2[3]) - max(b1[2], b2[2])))
    wx = max(0.0, float(min(b1[5], b2[5]) - max(b1[4], b2[4])))
    return wx * wy * wz


# ------------------------------------------------------------------------------------------------
# the suppression loop
# ------------------------------------------------------------------------------------------------
@nb.njit(**_JIT)
def _cell_range(bbox, i, origin, csize, gdim, out):
    for ax in range(3):
        lo = (bbox[i, 2 * ax] - origin[ax]) // csize[ax]
        hi = (bbox[i, 2 * ax + 1] - origin[ax]) // csize[ax]
        out[2 * ax] = min(max(lo, 0), gdim[ax] - 1)
        out[2 * ax + 1] = min(max(hi, 0), gdim[ax] - 1)


@nb.njit(**_JIT)
def _count_cells(bbox, origin, csize, gdim):
    rng = np.empty(6, np.int64)
    total = 0
    for i in range(bbox.shape[0]):
        _cell_range(bbox, i, origin, csize, gdim, rng)
        total += (rng[1] - rng[0] + 1) * (rng[3] - rng[2] + 1) * (rng[5] - rng[4] + 1)
    return total


@nb.njit(**_JIT)
def _rasterise(mask, off, inv, point, int_center, bb, tab_ray, tab_coef, radius, faces, verts, minv, vf_ptr, vf_idx, coef):
    """Write the polyhedron's inside mask over its box (C order) to ``mask[off:]``."""
    q = off
    nx = bb[5] - bb[4] + 1
    for vz in range(bb[0], bb[1] + 1):
        for vy in range(bb[2], bb[3] + 1):
            _row(mask, q, vz, vy, bb[4], bb[5], point, int_center, inv, tab_ray, tab_coef, radius, faces, verts, minv, vf_ptr, vf_idx, coef)
            q += nx
    return q


# long function: numba kernel (the NMS inner loop); calls between the steps would cost speed
@nb.njit(**_JIT)
def _nms_chunk(
    start, stop, order, dist, points, int_center, bbox, vol, r_out, r_in, aniso, thresh,
    tab_ray, tab_coef, radius, faces, verts, minv, vf_ptr, vf_idx,
    origin, csize, gdim, cell_head, entry_obj, entry_next, n_entries, seen, mask_off, mask_buf, n_mask, keep, stats,
    stamp, margin, pend, dec_i, dec_v, n_dec,
):
    """Process candidates ``order[start:stop]``: each is compared with the kept polyhedra whose
    boxes share a grid cell with its box; a kept one is added to the grid and its voxel mask
    (over its box) to ``mask_buf``.

    Returns ``(next position, n_entries, n_mask, status)``: status 0 = done; 1 = ``mask_buf`` is
    full (the caller enlarges it and resumes); 2 = the pair ``pend = (i, j, voxel count)`` has a
    voxel overlap within ``margin`` of the threshold, where stardist's exact kernel and convex
    hull tests can decide otherwise: the caller decides it, appends ``(i, decision)`` to
    ``dec_i``/``dec_v`` (``n_dec[0]`` entries, for the candidate at the next position) and
    resumes there."""
    n_rays = dist.shape[1]
    rng = np.empty(6, np.int64)
    inv_j = np.empty(n_rays)
    coef = np.empty(6)
    scratch = np.empty(bbox[:, 5].max() - bbox[:, 4].min() + 2 if bbox.shape[0] else 1, np.uint8)
    gy, gx = gdim[1], gdim[2]
    dtab = 2 * radius + 1
    for t in range(start, stop):
        j = order[t]
        bz, by, bx = bbox[j, 1] - bbox[j, 0] + 1, bbox[j, 3] - bbox[j, 2] + 1, bbox[j, 5] - bbox[j, 4] + 1
        if n_mask + bz * by * bx > mask_buf.shape[0]:
            return t, n_entries, n_mask, 1
        stamp[0] += 1
        st = stamp[0]
        _cell_range(bbox, j, origin, csize, gdim, rng)
        suppressed = False
        _inverse_dist(dist[j], inv_j)
        for cz in range(rng[0], rng[1] + 1):
            if suppressed:
                break
            for cy in range(rng[2], rng[3] + 1):
                if suppressed:
                    break
                for cx in range(rng[4], rng[5] + 1):
                    if suppressed:
                        break
                    e = cell_head[(cz * gy + cy) * gx + cx]
                    while e >= 0:
                        i = entry_obj[e]
                        e = entry_next[e]
                        if seen[i] == st:
                            continue
                        seen[i] = st
                        stats[0] += 1
                        a_min = min(vol[i], vol[j])
                        # upper bound: outer spheres and boxes
                        a_inter = min(_sphere_overlap(r_out[i], points[i], r_out[j], points[j], aniso), _bbox_overlap(bbox[i], bbox[j]))
                        iou = min(1.0, a_inter / (a_min + 1e-10))
                        if a_inter < 1e-10 or iou <= thresh:
                            stats[1] += 1
                            continue
                        # lower bound: inscribed spheres
                        a_inter = _sphere_overlap(r_in[i], points[i], r_in[j], points[j], aniso)
                        if max(0.0, a_inter / (a_min + 1e-10)) > thresh:
                            stats[2] += 1
                            suppressed = True
                            break
                        # voxels inside both: i's stored mask, then j's test
                        stats[3] += 1
                        limit = (a_min + 1e-10) * thresh
                        lim_hi = limit + margin * (a_min + 1e-10) + 2.0  # above: surely suppressed
                        lim_lo = limit - margin * (a_min + 1e-10) - 2.0  # at or below: surely kept
                        z0, z1 = max(bbox[i, 0], bbox[j, 0]), min(bbox[i, 1], bbox[j, 1])
                        y0, y1 = max(bbox[i, 2], bbox[j, 2]), min(bbox[i, 3], bbox[j, 3])
                        x0, x1 = max(bbox[i, 4], bbox[j, 4]), min(bbox[i, 5], bbox[j, 5])
                        iny = bbox[i, 3] - bbox[i, 2] + 1
                        inx = bbox[i, 5] - bbox[i, 4] + 1
                        row = x1 - x0 + 1
                        left = (z1 - z0 + 1) * (y1 - y0 + 1) * row
                        count = 0
                        base = mask_off[i]
                        # rows from the middle of the common box outwards (the overlap is densest there)
                        nzr, nyr = z1 - z0 + 1, y1 - y0 + 1
                        zm, ym = (z0 + z1) // 2, (y0 + y1) // 2
                        jz, jy, jx = int(points[j, 0]), int(points[j, 1]), int(points[j, 2])
                        done = False
                        for kz in range(2 * nzr):
                            vz = zm + (kz + 1) // 2 if kz % 2 else zm - kz // 2
                            if vz < z0 or vz > z1:
                                continue
                            for ky in range(2 * nyr):
                                vy = ym + (ky + 1) // 2 if ky % 2 else ym - ky // 2
                                if vy < y0 or vy > y1:
                                    continue
                                q = base + ((vz - bbox[i, 0]) * iny + (vy - bbox[i, 2])) * inx - bbox[i, 4]
                                oz, oy = vz - jz, vy - jy
                                if (int_center[j] and -radius <= oz <= radius and -radius <= oy <= radius
                                        and x0 - jx >= -radius and x1 - jx <= radius):
                                    kb = ((oz + radius) * dtab + (oy + radius)) * dtab + radius - jx
                                    for vx in range(x0, x1 + 1):
                                        if mask_buf[q + vx]:
                                            k = kb + vx
                                            sj = (np.float64(tab_coef[k, 0]) * inv_j[tab_ray[k, 0]]
                                                  + np.float64(tab_coef[k, 1]) * inv_j[tab_ray[k, 1]]
                                                  + np.float64(tab_coef[k, 2]) * inv_j[tab_ray[k, 2]])
                                            if sj <= 1.0:
                                                count += 1
                                else:
                                    _row(scratch, 0, vz, vy, x0, x1, points[j], int_center[j], inv_j,
                                         tab_ray, tab_coef, radius, faces, verts, minv, vf_ptr, vf_idx, coef)
                                    for vx in range(x0, x1 + 1):
                                        count += mask_buf[q + vx] & scratch[vx - x0]
                                left -= row
                                stats[4] += row
                                if count > lim_hi or count + left <= lim_lo:
                                    done = True
                                    break
                            if done:
                                break
                        if lim_lo < count <= lim_hi:  # near the threshold: stardist's exact tests
                            found = -1
                            if t == start:  # the decisions are for the first candidate of this call
                                for q in range(n_dec[0]):
                                    if dec_i[q] == i:
                                        found = q
                            if found < 0:
                                pend[0] = i
                                pend[1] = j
                                pend[2] = count
                                return t, n_entries, n_mask, 2
                            stats[6] += 1
                            if dec_v[found]:
                                stats[5] += 1
                                suppressed = True
                                break
                            continue
                        if count / (a_min + 1e-10) > thresh:
                            stats[5] += 1
                            suppressed = True
                            break
        if suppressed:
            continue
        keep[j] = 1
        mask_off[j] = n_mask
        n_mask = _rasterise(mask_buf, n_mask, inv_j, points[j], int_center[j], bbox[j],
                            tab_ray, tab_coef, radius, faces, verts, minv, vf_ptr, vf_idx, coef)
        for cz in range(rng[0], rng[1] + 1):
            for cy in range(rng[2], rng[3] + 1):
                for cx in range(rng[4], rng[5] + 1):
                    c = (cz * gy + cy) * gx + cx
                    entry_obj[n_entries] = j
                    entry_next[n_entries] = cell_head[c]
                    cell_head[c] = n_entries
                    n_entries += 1
    return stop, n_entries, n_mask, 0


# ------------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------------
@nb.njit(**_JIT)
def _render(labels_out, ids, dist, points, int_center, bbox, tab_ray, tab_coef, radius, faces, verts, minv, vf_ptr, vf_idx):
    """Paint polyhedra in the given order with ``ids``; a voxel keeps the first id it gets."""
    nz, ny, nx = labels_out.shape
    inv = np.empty(dist.shape[1])
    coef = np.empty(6)
    scratch = np.empty(nx, np.uint8)
    for t in range(dist.shape[0]):
        _inverse_dist(dist[t], inv)
        lab = ids[t]
        x0, x1 = max(0, bbox[t, 4]), min(nx - 1, bbox[t, 5])
        if x1 < x0:
            continue
        for vz in range(max(0, bbox[t, 0]), min(nz - 1, bbox[t, 1]) + 1):
            for vy in range(max(0, bbox[t, 2]), min(ny - 1, bbox[t, 3]) + 1):
                _row(scratch, 0, vz, vy, x0, x1, points[t], int_center[t], inv,
                     tab_ray, tab_coef, radius, faces, verts, minv, vf_ptr, vf_idx, coef)
                for vx in range(x0, x1 + 1):
                    if scratch[vx - x0] and labels_out[vz, vy, vx] == 0:
                        labels_out[vz, vy, vx] = lab


@nb.njit(**_JIT)
def _relabel_sequential(labels, n_ids):
    """Map the ids present to 1..k in increasing order (as ``skimage``'s relabel_sequential)."""
    present = np.zeros(n_ids + 1, np.int64)
    flat = labels.reshape(-1)
    for v in range(flat.size):
        present[flat[v]] = 1
    present[0] = 0
    new = np.zeros(n_ids + 1, np.int32)
    k = 0
    for lab in range(1, n_ids + 1):
        if present[lab]:
            k += 1
            new[lab] = k
    for v in range(flat.size):
        flat[v] = new[flat[v]]
    return k


# ------------------------------------------------------------------------------------------------
# Python API
# ------------------------------------------------------------------------------------------------
def _rays_arrays(rays) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(rays, tuple):
        verts, faces = rays
    else:
        verts, faces = rays.vertices, rays.faces
    return np.asarray(verts), np.asarray(faces)


def _check_inputs(dist, prob, points, n_rays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dist = np.asarray(dist)
    prob = np.asarray(prob)
    points = np.asarray(points)
    if dist.ndim != 2 or prob.ndim != 1 or points.ndim != 2 or points.shape[-1] != 3 or not (
        len(prob) == len(dist) == len(points)
    ):
        raise NeurosegError(
            f"inconsistent candidates: dist {dist.shape}, prob {prob.shape}, points {points.shape}",
            fix="pass dist (n, n_rays), prob (n,) and points (n, 3)",
        )
    if dist.shape[1] != n_rays:
        raise NeurosegError(f"dist has {dist.shape[1]} rays but the rays object {n_rays}", fix="use the model's rays")
    for name, a in (("distances", dist), ("probabilities", prob), ("points", points)):
        if a.size and not np.isfinite(a).all():
            raise NeurosegError(
                f"{int((~np.isfinite(a)).sum())} candidate {name} are NaN or infinite",
                fix="check the model and image (the network produced non-finite outputs)",
            )
    return dist, prob, points


def sort_order(prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted, process)``: stardist's output order (``argsort(prob)[::-1]``) and its processing
    order (the same applied once more to the sorted probabilities, as ``stardist.nms`` does)."""
    prob = np.asarray(prob)
    srt = np.argsort(prob)[::-1]
    inner = np.argsort(prob[srt])[::-1]
    return srt, inner


def _table_radius(dist: np.ndarray) -> int:
    if dist.size == 0:
        return 1
    dmax = float(dist.max())
    return int(min(TABLE_RADIUS_MAX, max(1, int(np.ceil(dmax)) + 1)))


def _is_int_center(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, np.float64)
    return np.all(np.floor(p) == p, axis=1) & np.all(np.abs(p) < 2**40, axis=1)


#: Voxel overlaps within this fraction of the smaller volume (+2 voxels) of the threshold are
#: decided with stardist's exact tests (see :meth:`_NMSState.exact_decision`).
MARGIN = 0.05


def _kernel_halfspaces(pv: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """stardist's ``build_halfspace`` of every face (float32 arithmetic as in its C++)."""
    a, b, c = pv[faces[:, 0]], pv[faces[:, 1]], pv[faces[:, 2]]
    p, q = b - a, c - a
    nz = -(p[:, 1] * q[:, 2] - p[:, 2] * q[:, 1])
    ny = -(p[:, 2] * q[:, 0] - p[:, 0] * q[:, 2])
    nx = -(p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0])
    n = np.stack([nz, ny, nx], 1)
    off = -(a[:, 0] * nz + a[:, 1] * ny + a[:, 2] * nx)
    return np.concatenate([n, off[:, None]], 1).astype(np.float64)


def _hull_halfspaces(pv: np.ndarray) -> np.ndarray:
    from scipy.spatial import ConvexHull

    return ConvexHull(pv.astype(np.float64)).equations


def _halfspace_volume(hs: np.ndarray, interior: np.ndarray, err: float) -> float:
    """Volume of the intersection of the halfspaces ``hs`` (rows ``n·x + o <= 0``) through the
    interior point; ``err`` if Qhull fails (as stardist)."""
    from scipy.spatial import ConvexHull, HalfspaceIntersection

    try:
        pts = HalfspaceIntersection(hs, interior).intersections
        return float(ConvexHull(pts).volume)
    except Exception:  # noqa: BLE001 - QhullError, degenerate input: stardist's error value
        return err


class _NMSState:
    def __init__(self, dist, points, rays_vf, nms_thresh):
        verts, faces = rays_vf
        n = len(dist)
        self.dist = np.ascontiguousarray(dist, np.float32)
        self.points32 = np.ascontiguousarray(points, np.float32)
        self.points = self.points32.astype(np.float64)
        self.geo = _Geometry(verts, faces, _table_radius(self.dist))
        self.int_center = _is_int_center(self.points32).astype(np.uint8)
        self.bbox = np.empty((n, 6), np.int64)
        self.vol = np.empty(n, np.float64)
        ext = _bbox_volume(self.dist, self.points32, self.geo.verts32, self.geo.faces, self.bbox, self.vol)
        with np.errstate(all="ignore"):
            ext = ext / max(n, 1)
            aniso = ext.max() / ext
        self.aniso = np.ascontiguousarray(aniso, np.float64)
        self.r_out = np.empty(n, np.float64)
        self.r_in = np.empty(n, np.float64)
        _radii(self.dist.astype(np.float64), self.geo.verts32.astype(np.float64), self.geo.faces, self.aniso, self.r_out, self.r_in)
        self.thresh = float(nms_thresh)
        # grid of cells (about the median box size)
        if n:
            lo = self.bbox[:, 0::2].min(0)
            hi = self.bbox[:, 1::2].max(0)
            ext_med = np.median(self.bbox[:, 1::2] - self.bbox[:, 0::2] + 1, axis=0)
        else:
            lo = hi = np.zeros(3, np.int64)
            ext_med = np.ones(3)
        csize = np.maximum(1, np.ceil(ext_med)).astype(np.int64)
        while True:
            gdim = (hi - lo) // csize + 1
            if np.prod(gdim.astype(np.float64)) <= 4 * n + 4096:
                break
            csize = csize * 2
        self.origin = lo.astype(np.int64)
        self.csize = csize
        self.gdim = gdim.astype(np.int64)
        cap = _count_cells(self.bbox, self.origin, self.csize, self.gdim) if n else 0
        self.cell_head = np.full(int(np.prod(self.gdim)), -1, np.int64)
        self.entry_obj = np.empty(max(cap, 1), np.int64)
        self.entry_next = np.empty(max(cap, 1), np.int64)
        self.n_entries = 0
        self.seen = np.full(n, -1, np.int64)
        self.mask_off = np.full(n, -1, np.int64)
        box_vox = np.prod(self.bbox[:, 1::2] - self.bbox[:, 0::2] + 1, axis=1) if n else np.zeros(1, np.int64)
        self.mask_buf = np.empty(int(max(box_vox.max(), 1 << 20)), np.uint8)
        self.n_mask = 0
        self.keep = np.zeros(n, np.uint8)
        #: pairs compared, kept by the upper bound, suppressed by the lower bound, voxel counts,
        #: voxels scanned, suppressed by the voxel count
        #: (and 6:) pairs decided by the exact tests
        self.stats = np.zeros(7, np.int64)
        self.stamp = np.zeros(1, np.int64)
        self.pend = np.zeros(3, np.int64)
        self.dec_i = np.zeros(64, np.int64)
        self.dec_v = np.zeros(64, np.uint8)
        self.n_dec = np.zeros(1, np.int64)

    def run(self, order, start, stop):
        g = self.geo
        while start < stop:
            pos, self.n_entries, self.n_mask, status = _nms_chunk(
                start, stop, order, self.dist, self.points, self.int_center, self.bbox, self.vol, self.r_out, self.r_in,
                self.aniso, self.thresh, *g.args(),
                self.origin, self.csize, self.gdim, self.cell_head, self.entry_obj, self.entry_next, self.n_entries,
                self.seen, self.mask_off, self.mask_buf, self.n_mask, self.keep, self.stats,
                self.stamp, MARGIN, self.pend, self.dec_i, self.dec_v, self.n_dec,
            )
            if pos != start:
                self.n_dec[0] = 0  # decisions belong to the candidate at position `start`
            start = pos
            if status == 1:  # the mask buffer is full: double it
                buf = np.empty(2 * len(self.mask_buf), np.uint8)
                buf[: self.n_mask] = self.mask_buf[: self.n_mask]
                self.mask_buf = buf
            elif status == 2:
                i, j, count = (int(v) for v in self.pend)
                k = int(self.n_dec[0])
                if k == len(self.dec_i):
                    self.dec_i = np.concatenate([self.dec_i, np.zeros_like(self.dec_i)])
                    self.dec_v = np.concatenate([self.dec_v, np.zeros_like(self.dec_v)])
                self.dec_i[k] = i
                self.dec_v[k] = self.exact_decision(i, j, count)
                self.n_dec[0] = k + 1

    def exact_decision(self, i: int, j: int, count: int) -> bool:
        """stardist's decision for a pair near the threshold: suppress if the volume of the
        intersection of the two kernels exceeds it, keep if that of the two convex hulls does
        not, else compare the voxel count (Qhull, as stardist; errors as stardist treats them)."""
        v = self.geo.verts32
        pv_i = self.points32[i] + self.dist[i][:, None] * v
        pv_j = self.points32[j] + self.dist[j][:, None] * v
        a_min = min(self.vol[i], self.vol[j]) + 1e-10
        interior = 0.5 * (self.points32[i].astype(np.float64) + self.points32[j])
        hs = np.concatenate([_kernel_halfspaces(pv_i, self.geo.faces), _kernel_halfspaces(pv_j, self.geo.faces)])
        if _halfspace_volume(hs, interior, 0.0) / a_min > self.thresh:
            return True
        try:
            hs = np.concatenate([_hull_halfspaces(pv_i), _hull_halfspaces(pv_j)])
        except Exception:  # noqa: BLE001 - as stardist: a failed hull gives 1e10
            hs = None
        conv = 1e10 if hs is None else _halfspace_volume(hs, interior, 1e10)
        if conv / a_min <= self.thresh:
            return False
        return count / a_min > self.thresh


_WARM: dict[str, Any] = {}
_WARM_LOCK = threading.Lock()


def warmup() -> None:
    """Compile the numba kernels on a tiny problem (10-25 s once per install; later processes load
    them from numba's on-disk cache in ~0.4 s)."""
    from stardist.rays3d import Rays_GoldenSpiral

    rays = Rays_GoldenSpiral(8)
    d = np.full((3, len(rays)), 2.5, np.float32)
    pts = np.array([[4, 4, 4], [4, 5, 4], [4.5, 8, 8]], np.float32)
    p = np.array([0.9, 0.8, 0.7], np.float32)
    nms_3d(d, p, pts, rays, 0.3)
    polyhedra_to_label(d, pts, rays, (9, 10, 11), p, sequential=True)


def warmup_async() -> threading.Thread:
    """:func:`warmup` in a daemon thread, started once per process (later calls return the same
    thread). Start it early (e.g. before the network runs, which releases the GIL) so that the
    compilation is done when NMS starts; numba's compiler lock makes early NMS calls wait."""
    with _WARM_LOCK:
        th = _WARM.get("thread")
        if th is None:
            th = threading.Thread(target=_warmup_quiet, name="neuroseg-nms-compile", daemon=True)
            _WARM["thread"] = th
            th.start()
        return th


def _warmup_quiet() -> None:
    from napari_neuroseg.runtime import collector

    try:
        warmup()
    except Exception as err:  # noqa: BLE001 - the real call compiles (and reports) again
        _WARM["error"] = err
    # numba's compiled objects join the settled heap: full collections later skip them
    # (runtime/collector.py; postponed when a job runs)
    collector.settle()


def nms_3d_iter(
    dist: np.ndarray, prob: np.ndarray, points: np.ndarray, rays: Any, nms_thresh: float = 0.5, *, chunk_seconds: float = 0.05
) -> Generator[int, None, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Generator form of :func:`nms_3d`: yields the number of candidates processed after each
    chunk (about ``chunk_seconds`` of compute, without the GIL), returns the same result."""
    verts, faces = _rays_arrays(rays)
    dist, prob, points = _check_inputs(dist, prob, points, len(verts))
    if not np.isfinite(nms_thresh):
        raise NeurosegError(f"nms_thresh={nms_thresh} is not a number", fix="use a value in [0, 1], e.g. 0.4")
    n = len(prob)
    srt, inner = sort_order(prob)
    if n == 0:
        return points[srt], prob[srt], dist[srt], srt
    st = _NMSState(dist[srt], points[srt], (verts, faces), nms_thresh)
    order = np.ascontiguousarray(inner, np.int64)
    done, step = 0, 256
    yield 0
    while done < n:
        stop = min(n, done + step)
        t0 = time.perf_counter()
        st.run(order, done, stop)
        dt = time.perf_counter() - t0
        done = stop
        step = int(min(max(step * min(4.0, max(0.25, chunk_seconds / max(dt, 1e-6))), 64), 1 << 20))
        yield done
    keep = st.keep.astype(bool)
    return points[srt][keep], prob[srt][keep], dist[srt][keep], srt[keep]


def nms_3d(
    dist: np.ndarray,
    prob: np.ndarray,
    points: np.ndarray,
    rays: Any,
    nms_thresh: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sparse 3D NMS with ``stardist.nms.non_maximum_suppression_3d_sparse``'s signature and
    result: ``(points, prob, dist, indices)`` of the kept candidates, by decreasing probability.

    ``rays``: a ``stardist`` rays object or ``(vertices (n_rays, 3), faces (n_faces, 3))``;
    ``progress(done, total)`` is called after each chunk of candidates.
    """
    from napari_neuroseg.runtime.progress import run_to_completion

    n = len(np.asarray(prob))
    return run_to_completion(nms_3d_iter(dist, prob, points, rays, nms_thresh),
                             None if progress is None else (lambda done: progress(done, n)))


def polyhedra_to_label(
    dist: np.ndarray,
    points: np.ndarray,
    rays: Any,
    shape: tuple[int, int, int],
    prob: np.ndarray | None = None,
    *,
    sequential: bool = False,
) -> np.ndarray:
    """``stardist.geometry.polyhedron_to_label(dist, points, rays, shape, prob)`` ("full" mode):
    an int32 label image, polyhedron ``k`` labelled ``k + 1``, painted by decreasing ``prob``
    (the first polyhedron to reach a voxel keeps it). ``sequential=True`` relabels the labels
    present to 1..m in increasing order (as ``skimage.segmentation.relabel_sequential``).
    Distances must be positive (as in stardist)."""
    verts, faces = _rays_arrays(rays)
    dist = np.asarray(dist)
    points = np.asarray(points)
    if dist.ndim == 1:
        dist = dist.reshape(1, -1)
    if points.ndim == 1:
        points = points.reshape(1, -1)
    prob_ = np.ones(len(points)) if prob is None else np.asarray(prob)
    if len(points) == 0:
        return np.zeros(tuple(int(s) for s in shape), np.int32)
    dist, prob_, points = _check_inputs(dist, prob_, points, len(verts))
    if np.amin(dist) <= 0:
        raise NeurosegError("polyhedron distances must be positive", fix="clip the distances, e.g. at 1e-3")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise NeurosegError(f"bad label image shape {shape}", fix="pass a 3D shape (Z, Y, X)")
    ind = np.argsort(prob_)[::-1]
    ids = (np.arange(len(points), dtype=np.int32) + 1)[ind]
    d = np.ascontiguousarray(dist[ind], np.float32)
    p32 = np.ascontiguousarray(points[ind], np.float32)
    geo = _Geometry(verts, faces, _table_radius(d))
    bbox = np.empty((len(d), 6), np.int64)
    vol = np.empty(len(d), np.float64)
    _bbox_volume(d, p32, geo.verts32, geo.faces, bbox, vol)
    labels = np.zeros(shape, np.int32)
    _render(labels, ids, d, p32.astype(np.float64), _is_int_center(p32).astype(np.uint8), bbox, *geo.args())
    if sequential:
        _relabel_sequential(labels, len(points))
    return labels
