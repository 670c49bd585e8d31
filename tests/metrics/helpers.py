"""Hand-made volumes with known FISBe metrics."""

from __future__ import annotations

import numpy as np

SHAPE = (24, 48, 140)


def tube(shape=SHAPE, z=6, y=8, x0=5, x1=130, r=1):
    """A straight tube along X (cross-section (2r+1)^2) as a boolean mask."""
    m = np.zeros(shape, bool)
    m[z - r : z + r + 1, y - r : y + r + 1, x0:x1] = True
    return m


def labels_from(masks, ids=None, dtype=np.uint16):
    """ZYX label volume from non-overlapping masks (ids 1.. unless given)."""
    out = np.zeros(masks[0].shape, dtype)
    for i, m in enumerate(masks):
        out[m] = (i + 1) if ids is None else ids[i]
    return out


def stack_from(masks):
    """FISBe-style (N,Z,Y,X) uint8 stack: channel i holds {0, i+1}."""
    return np.stack([m.astype(np.uint8) * (i + 1) for i, m in enumerate(masks)])


def three_tubes():
    return [tube(y=8), tube(y=24), tube(z=16, y=38)]
