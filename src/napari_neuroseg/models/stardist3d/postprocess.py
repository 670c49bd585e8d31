"""From per-voxel predictions to instances: candidate selection, NMS and rendering.

:func:`nms_and_render` is a module-level function so it can run in the worker process of
:mod:`napari_neuroseg.runtime.subprocess` (the ``stardist`` C++ code holds the GIL).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Candidates", "nms_and_render", "polyhedra_surface", "select_candidates"]


class Candidates:
    """Object candidates collected tile by tile: probabilities, distances (n, n_rays) and
    centre points (n, 3) in input voxel coordinates."""

    def __init__(self, n_rays: int):
        self.n_rays = n_rays
        self._prob: list[np.ndarray] = []
        self._dist: list[np.ndarray] = []
        self._points: list[np.ndarray] = []

    def add(self, prob: np.ndarray, dist: np.ndarray, points: np.ndarray) -> None:
        self._prob.append(prob)
        self._dist.append(dist)
        self._points.append(points)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self._prob:
            return (np.zeros(0, np.float32), np.zeros((0, self.n_rays), np.float32), np.zeros((0, 3), np.int64))
        return (
            np.concatenate(self._prob).astype(np.float32, copy=False),
            np.concatenate(self._dist).astype(np.float32, copy=False),
            np.concatenate(self._points).astype(np.int64, copy=False),
        )

    def __len__(self) -> int:
        return int(sum(len(p) for p in self._prob))


def select_candidates(
    prob: np.ndarray,
    dist: np.ndarray,
    *,
    offset: tuple[int, int, int],
    grid: tuple[int, int, int],
    prob_thresh: float,
    border: tuple[tuple[int, int], ...],
    shape: tuple[int, int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates of one tile core as StarDist selects them.

    ``prob`` (z, y, x) and ``dist`` (n_rays, z, y, x) at grid resolution; ``offset``: the core's
    position in the (padded) output; ``border``: per axis the (before, after) number of grid
    voxels excluded (2 at the volume's edge, 0 inside); ``shape``: the unpadded image shape —
    points outside it (in the padding) are dropped. Distances are clipped at 1e-3.
    """
    mask = prob > prob_thresh
    for ax, (b0, b1) in enumerate(border):
        if b0 > 0:
            sl = [slice(None)] * 3
            sl[ax] = slice(0, b0)
            mask[tuple(sl)] = False
        if b1 > 0:
            sl = [slice(None)] * 3
            sl[ax] = slice(max(prob.shape[ax] - b1, 0), None)
            mask[tuple(sl)] = False
    idx = np.nonzero(mask)
    points = (np.stack(idx, axis=1) + np.asarray(offset)) * np.asarray(grid)
    keep = np.all(points < np.asarray(shape), axis=1)
    p = prob[idx][keep]
    d = np.maximum(dist[(slice(None),) + idx].T[keep], 1e-3)
    return p, d, points[keep]


def nms_and_render(
    prob: np.ndarray,
    dist: np.ndarray,
    points: np.ndarray,
    rays_spec: dict[str, Any],
    n_rays: int,
    nms_thresh: float,
    shape: tuple[int, int, int],
    render: bool = True,
) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """Sparse 3D NMS (``stardist.nms.non_maximum_suppression_3d_sparse``) then rendering
    (``polyhedron_to_label``, higher probability wins overlaps) and sequential relabelling.

    Returns ``(labels int32 (Z, Y, X) or None, details)`` with details ``points``, ``prob``,
    ``dist``, ``rays_vertices``, ``rays_faces`` (as ``stardist``'s ``predict_instances``).
    """
    from skimage.segmentation import relabel_sequential
    from stardist.geometry import polyhedron_to_label
    from stardist.nms import non_maximum_suppression_3d_sparse

    from napari_neuroseg.models.stardist3d.rays import make_rays

    rays = make_rays(rays_spec, n_rays)
    if len(prob) > 0:
        points_k, prob_k, dist_k, _ = non_maximum_suppression_3d_sparse(
            dist, prob, points, rays, nms_thresh=nms_thresh, verbose=False
        )
    else:
        points_k, prob_k, dist_k = points, prob, dist
    labels = None
    if render:
        if len(points_k) == 0:
            labels = np.zeros(shape, np.int32)
        else:
            labels = polyhedron_to_label(dist_k, points_k, rays=rays, prob=prob_k, shape=shape, verbose=False)
            labels = relabel_sequential(labels)[0].astype(np.int32, copy=False)
    details = {
        "points": np.asarray(points_k),
        "prob": np.asarray(prob_k),
        "dist": np.asarray(dist_k),
        "rays_vertices": np.asarray(rays.vertices),
        "rays_faces": np.asarray(rays.faces),
    }
    return labels, details


def polyhedra_surface(details: dict[str, np.ndarray], scale: tuple[float, float, float] = (1.0, 1.0, 1.0)):
    """One triangle mesh of all kept polyhedra, for a napari Surface layer.

    Returns ``(vertices (n_obj·n_rays, 3) float32, faces (n_obj·n_faces, 3) int, values
    (n_obj·n_rays,) float32)`` where ``values`` is the object's index + 1 (its label before
    relabelling, in NMS order) so the layer can be coloured per object.
    """
    points = np.asarray(details["points"], np.float32)
    dist = np.asarray(details["dist"], np.float32)
    rays = np.asarray(details["rays_vertices"], np.float32)
    faces = np.asarray(details["rays_faces"], np.int64)
    n, r = dist.shape if dist.ndim == 2 else (0, len(rays))
    if n == 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), np.zeros(0, np.float32)
    verts = points[:, None, :] + dist[:, :, None] * rays[None, :, :]
    verts = (verts * np.asarray(scale, np.float32)).reshape(-1, 3)
    all_faces = (faces[None, :, :] + (np.arange(n) * r)[:, None, None]).reshape(-1, 3)
    values = np.repeat(np.arange(1, n + 1, dtype=np.float32), r)
    return verts, all_faces, values
