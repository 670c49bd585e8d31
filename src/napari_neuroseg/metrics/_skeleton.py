"""Per-instance skeletons (Lee's 3D thinning, as ``skimage.morphology.skeletonize``).

Thinning only looks at 26-neighbourhoods and the image is zero-padded, so the skeleton of one
instance computed inside its bounding box plus a margin is voxel-for-voxel the skeleton computed
on the full volume (checked in the tests), at a small fraction of the cost.
"""

from __future__ import annotations

import numpy as np
from skimage.morphology import skeletonize

MARGIN = 2


def bbox_mask(keys: np.ndarray, shape: tuple[int, int, int], margin: int = MARGIN):
    """Dense boolean mask of ``keys`` (flat indices) in their bounding box plus ``margin``.

    Returns ``(mask, origin)``; the box is clipped to the volume.
    """
    zyx = np.unravel_index(keys, shape)
    lo = [max(0, int(a.min()) - margin) for a in zyx]
    hi = [min(s, int(a.max()) + 1 + margin) for a, s in zip(zyx, shape)]
    mask = np.zeros([h - l for l, h in zip(lo, hi)], bool)
    mask[tuple(a - l for a, l in zip(zyx, lo))] = True
    return mask, lo


def skeleton_keys(keys: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Flat indices (sorted) of the skeleton of the voxel set ``keys``."""
    if keys.size == 0:
        return np.zeros(0, np.int64)
    mask, lo = bbox_mask(keys, shape)
    skel = skeletonize(mask.astype(np.uint8)) > 0
    local = np.nonzero(skel)
    glob = tuple(a + l for a, l in zip(local, lo))
    return np.ravel_multi_index(glob, shape).astype(np.int64)
