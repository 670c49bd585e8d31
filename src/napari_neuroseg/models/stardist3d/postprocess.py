"""From per-voxel predictions to instances: candidate selection, NMS and rendering.

Two NMS/rendering backends give the same objects (see ``docs/stardist3d.md``, "NMS"):

* ``"neuroseg"`` (default): :mod:`napari_neuroseg.models.stardist3d.nms`, numba without the GIL,
  10-100x faster; :func:`nms_and_render_iter` runs it in the calling thread and yields the
  candidates processed;
* ``"stardist"``: the C++ code of the ``stardist`` package (the reference). It holds the GIL for
  its whole run, so :func:`nms_and_render` is a module-level function that can run in the worker
  process of :mod:`napari_neuroseg.runtime.subprocess`.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.runtime.progress import Progress, relay

__all__ = [
    "NMS_BACKENDS",
    "Candidates",
    "check_nms_backend",
    "nms_and_render",
    "nms_and_render_iter",
    "polyhedra_surface",
    "select_candidates",
]

#: NMS/rendering implementations: the own numba one (default) and stardist's C++ (reference).
NMS_BACKENDS = ("neuroseg", "stardist")


def check_nms_backend(nms: str) -> str:
    """``nms`` if it names a backend of :data:`NMS_BACKENDS`, else a :class:`NeurosegError`."""
    if nms not in NMS_BACKENDS:
        raise NeurosegError(f"unknown NMS backend {nms!r}", fix=f"use one of {', '.join(map(repr, NMS_BACKENDS))}")
    return nms


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


def nms_and_render(*args: Any, **kwargs: Any) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """Sparse 3D NMS (as ``stardist.nms.non_maximum_suppression_3d_sparse``) then rendering
    (as ``polyhedron_to_label``, higher probability wins overlaps) and sequential relabelling,
    with the backend ``nms`` (:data:`NMS_BACKENDS`).

    Returns ``(labels int32 (Z, Y, X) or None, details)`` with details ``points``, ``prob``,
    ``dist``, ``rays_vertices``, ``rays_faces`` (as ``stardist``'s ``predict_instances``).
    :func:`nms_and_render_iter` (the same arguments) run to completion.
    """
    from napari_neuroseg.runtime.progress import run_to_completion

    return run_to_completion(nms_and_render_iter(*args, **kwargs))


def nms_and_render_iter(
    prob: np.ndarray,
    dist: np.ndarray,
    points: np.ndarray,
    rays_spec: dict[str, Any],
    n_rays: int,
    nms_thresh: float,
    shape: tuple[int, int, int],
    render: bool = True,
    nms: str = "neuroseg",
) -> Generator[Progress, None, tuple[np.ndarray | None, dict[str, np.ndarray]]]:
    """Generator form of :func:`nms_and_render`: yields ``Progress(candidates processed,
    candidates + 1)`` about every 50 ms of NMS (``"neuroseg"``; the GIL is released in between)
    and once before rendering; returns the same result."""
    from napari_neuroseg.models.stardist3d.rays import make_rays

    check_nms_backend(nms)
    rays = make_rays(rays_spec, n_rays)
    n = len(prob)
    if nms == "stardist":
        from stardist.nms import non_maximum_suppression_3d_sparse

        if n > 0:
            points_k, prob_k, dist_k, _ = non_maximum_suppression_3d_sparse(
                dist, prob, points, rays, nms_thresh=nms_thresh, verbose=False
            )
        else:
            points_k, prob_k, dist_k = points, prob, dist
    else:
        from napari_neuroseg.models.stardist3d.nms import nms_3d_iter

        points_k, prob_k, dist_k, _ = yield from relay(
            nms_3d_iter(dist, prob, points, rays, nms_thresh),
            lambda done: Progress(done, n + 1, f"non-maximum suppression: {done}/{n} candidates"),
        )
    labels = None
    if render:
        yield Progress(n, n + 1, f"rendering {len(points_k)} objects")
        labels = render_labels(dist_k, points_k, prob_k, rays, shape, nms=nms)
    details = {
        "points": np.asarray(points_k),
        "prob": np.asarray(prob_k),
        "dist": np.asarray(dist_k),
        "rays_vertices": np.asarray(rays.vertices),
        "rays_faces": np.asarray(rays.faces),
    }
    return labels, details


def render_labels(dist, points, prob, rays, shape, nms: str = "neuroseg") -> np.ndarray:
    """Label image (int32, labels 1..k sequential in NMS order) of the kept polyhedra."""
    if len(points) == 0:
        return np.zeros(tuple(shape), np.int32)
    if check_nms_backend(nms) == "stardist":
        from skimage.segmentation import relabel_sequential
        from stardist.geometry import polyhedron_to_label

        labels = polyhedron_to_label(dist, points, rays=rays, prob=prob, shape=shape, verbose=False)
        return relabel_sequential(labels)[0].astype(np.int32, copy=False)
    from napari_neuroseg.models.stardist3d.nms import polyhedra_to_label

    return polyhedra_to_label(dist, points, rays, shape, prob, sequential=True)


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
