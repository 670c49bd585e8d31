"""Training data for StarDist-3D: normalisation, targets and foreground-biased patch sampling.

Targets are those of ``stardist``'s ``StarDistData3D``: the object probability is the Euclidean
distance transform of each object normalised to 1 at its centre (``stardist.utils.edt_prob`` with
the anisotropy), taken on the grid; the distances are ``stardist.geometry.star_dist3D(labels,
rays, grid)`` (or, bit-exact, :mod:`.star_dist_torch` on the training device).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models.stardist3d.config import NORM_PERCENTILES

__all__ = ["PatchSampler", "check_pairs", "make_targets", "mix_weights", "normalize_volume", "prob_target"]


def normalize_volume(image: np.ndarray, percentiles: tuple[float, float] = NORM_PERCENTILES) -> np.ndarray:
    """A (Z,Y,X) or (C,Z,Y,X) image as float32 (C,Z,Y,X), percentile-normalised per channel
    exactly as at prediction time."""
    from napari_neuroseg.models.stardist3d.model import normalize_image

    x = np.asarray(image)
    if x.ndim == 3:
        x = x[np.newaxis]
    if x.ndim != 4:
        raise NeurosegError(f"training image of shape {x.shape} is not 3D", fix="pass (Z,Y,X) or (C,Z,Y,X) volumes")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise NeurosegError("a training image contains NaN or infinite values", fix="clean it first")
    return normalize_image(x, percentiles)


def check_pairs(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], n_channel_in: int = 1) -> None:
    """Raise :class:`NeurosegError` unless images and labels form matching (image, labels) pairs."""
    if len(images) == 0:
        raise NeurosegError("no training volumes given", fix="pass at least one (image, labels) pair")
    if len(images) != len(labels):
        raise NeurosegError(
            f"{len(images)} images but {len(labels)} label volumes", fix="pass one label volume per image"
        )
    for i, (x, y) in enumerate(zip(images, labels)):
        y = np.asarray(y)
        if x.ndim not in (3, 4) or y.ndim != 3:
            raise NeurosegError(
                f"pair {i}: StarDist-3D trains on 3D volumes, but the image is {x.ndim}D {tuple(x.shape)} "
                f"and the labels are {y.ndim}D {tuple(y.shape)}",
                fix="pass (Z,Y,X) images (or (C,Z,Y,X)) with (Z,Y,X) labels; a 2D plane cannot be used",
            )
        shape = x.shape[-3:] if x.ndim == 4 else x.shape
        if y.ndim != 3 or tuple(shape) != tuple(y.shape):
            raise NeurosegError(
                f"pair {i}: image shape {x.shape} does not match labels shape {y.shape}",
                fix="labels must be a (Z,Y,X) volume of the image's spatial shape",
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise NeurosegError(f"pair {i}: labels have dtype {y.dtype}, not integer", fix="pass instance labels")
        if x.ndim == 4 and x.shape[0] != n_channel_in:
            raise NeurosegError(
                f"pair {i}: image has {x.shape[0]} channels, the model {n_channel_in}",
                fix="use (C,Z,Y,X) images with the model's channel count",
            )


def prob_target(
    labels: np.ndarray, grid: tuple[int, int, int], anisotropy: tuple[float, float, float] | None = None
) -> np.ndarray:
    """The ``prob`` target of :func:`make_targets` alone: ``(Z',Y',X')`` float32."""
    from stardist.utils import edt_prob

    lbl = np.ascontiguousarray(labels, dtype=np.uint16 if labels.max() < 65535 else np.int32)
    sub = tuple(slice(0, None, g) for g in grid)
    if lbl.max() == 0:
        return np.zeros(lbl[sub].shape, np.float32)
    return np.ascontiguousarray(edt_prob(lbl, anisotropy=anisotropy)[sub], np.float32)


def make_targets(
    labels: np.ndarray,
    rays,
    grid: tuple[int, int, int],
    anisotropy: tuple[float, float, float] | None = None,
    device=None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(prob (Z',Y',X') float32, dist (n_rays,Z',Y',X') float32)`` targets of a label patch on
    the grid (Z' = ceil(Z / grid_z) etc.).

    ``device`` (a torch device): compute the distances with
    :func:`~napari_neuroseg.models.stardist3d.training.star_dist_torch.star_dist3d_torch` there
    (bit-exact with ``star_dist3D``); default ``None``: ``stardist``'s C++ ``star_dist3D``."""
    lbl = np.ascontiguousarray(labels, dtype=np.uint16 if labels.max() < 65535 else np.int32)
    prob = prob_target(lbl, grid, anisotropy)
    if lbl.max() == 0:
        return prob, np.zeros((len(rays),) + prob.shape, np.float32)
    if device is None:
        from stardist.geometry import star_dist3D

        dist = star_dist3D(lbl, rays, grid=tuple(grid))
    else:
        from napari_neuroseg.models.stardist3d.training.star_dist_torch import star_dist3d_torch

        dist = star_dist3d_torch(lbl, rays, tuple(grid), device=device).cpu().numpy()
    return prob, np.ascontiguousarray(np.moveaxis(dist, -1, 0), np.float32)


def mix_weights(first: Sequence, second: Sequence, first_fraction: float) -> list[float]:
    """Per-volume sampling weights (for :class:`PatchSampler`) for the volumes ``first + second``
    (label volumes or shapes): ``first_fraction`` of the patches come from ``first``, the rest from
    ``second``; within each group in proportion to the volumes' sizes. E.g. a few annotated real
    volumes mixed with many (larger) synthetic ones at a fixed share, which sampling by size alone
    would drown (one real 57×51×51 volume among 43 synthetic 48×128×128 ones: 0.4 %)."""
    f = float(first_fraction)
    if not 0.0 <= f <= 1.0:
        raise NeurosegError(f"mixing fraction {first_fraction} is outside [0, 1]", fix="pass e.g. 0.5")
    if not first or not second:
        raise NeurosegError("mixing needs volumes in both groups",
                            fix="give annotated and synthetic volumes, or do not set a mixing fraction")

    def sizes(group):
        return np.array([float(np.prod(np.shape(v) if not isinstance(v, tuple) else v)) for v in group])

    a, b = sizes(first), sizes(second)
    return [float(v) for v in np.concatenate([f * a / a.sum(), (1.0 - f) * b / b.sum()])]


class PatchSampler:
    """Random (image, labels) patches of ``patch_size`` from a list of volumes.

    With probability ``foreground_prob`` the patch is centred (up to a random offset) on a random
    foreground voxel, otherwise placed uniformly (as ``train_foreground_only`` in ``stardist``).
    Volumes smaller than the patch are reflect-padded (labels with 0).

    Each patch comes from a volume drawn in proportion to its size, or to ``weights`` (one
    non-negative number per volume, e.g. :func:`mix_weights`: a fixed share of the patches from
    a few annotated volumes among many synthetic ones).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        patch_size: tuple[int, int, int],
        foreground_prob: float = 0.9,
        weights: Sequence[float] | None = None,
    ):
        self.images = [x if x.ndim == 4 else x[np.newaxis] for x in images]
        self.labels = [np.asarray(y) for y in labels]
        self.patch_size = tuple(int(p) for p in patch_size)
        self.foreground_prob = float(foreground_prob)
        self._fg: dict[int, np.ndarray] = {}
        if weights is None:
            w = np.array([y.size for y in self.labels], dtype=float)
        else:
            w = np.asarray(weights, dtype=float)
            if w.shape != (len(self.labels),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise NeurosegError(
                    f"{w.size} sampling weights for {len(self.labels)} training volumes (they must be one "
                    "non-negative number per volume, not all 0)", fix="give one weight per training volume")
        self._weights = w / w.sum()

    def _pad(self, k: int) -> None:
        x, y = self.images[k], self.labels[k]
        pads = [max(0, p - s) for p, s in zip(self.patch_size, y.shape)]
        if any(pads):
            mode = "reflect" if all(s > p for s, p in zip(y.shape, pads)) else "edge"
            x = np.pad(x, [(0, 0)] + [(0, p) for p in pads], mode=mode)
            y = np.pad(y, [(0, p) for p in pads])
            self.images[k], self.labels[k] = x, y

    def _foreground(self, k: int) -> np.ndarray:
        if k not in self._fg:
            idx = np.flatnonzero(self.labels[k].ravel())
            # a subsample is plenty to pick centres from
            if len(idx) > 200_000:
                idx = idx[:: len(idx) // 200_000 + 1]
            self._fg[k] = idx
        return self._fg[k]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One ``(image (C,pz,py,px) float32, labels (pz,py,px))`` patch."""
        k = int(rng.choice(len(self.labels), p=self._weights))
        self._pad(k)
        x, y = self.images[k], self.labels[k]
        shape = np.asarray(y.shape)
        ps = np.asarray(self.patch_size)
        hi = shape - ps
        fg = self._foreground(k)
        if len(fg) and rng.random() < self.foreground_prob:
            centre = np.asarray(np.unravel_index(int(fg[rng.integers(len(fg))]), y.shape))
            jitter = rng.integers(-(ps // 4), ps // 4 + 1)
            start = np.clip(centre - ps // 2 + jitter, 0, hi)
        else:
            start = np.array([rng.integers(h + 1) for h in hi])
        sl = tuple(slice(int(s), int(s) + int(p)) for s, p in zip(start, ps))
        return x[(slice(None),) + sl], y[sl]
