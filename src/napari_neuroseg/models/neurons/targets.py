"""Training targets: foreground and affinities from a FISBe (N,Z,Y,X) instance stack.

Network output channels: ``0`` = foreground logit, ``1 + k`` = affinity logit for
``OFFSETS[k]``: 1 where the voxel and the voxel at ``+offset`` are foreground and belong to exactly the same
neuron(s) (so an overlap voxel has affinity 0 to the voxels of either neuron alone).
"""

from __future__ import annotations

import numpy as np

#: (dz, dy, dx) offsets of the predicted affinities: 3 short-range, 3 long-range (gap bridging).
OFFSETS: tuple[tuple[int, int, int], ...] = (
    (1, 0, 0),
    (0, 1, 0),
    (0, 0, 1),
    (4, 0, 0),
    (0, 4, 0),
    (0, 0, 4),
)
N_SHORT = 3
N_OUTPUTS = 1 + len(OFFSETS)


def _shifted_pair(a: np.ndarray, off: tuple[int, int, int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices ``src``/``dst`` (over the last 3 axes) so that ``a[..., dst]`` is ``a`` at ``+off``."""
    src, dst = [], []
    for o in off:
        if o >= 0:
            src.append(slice(0, -o if o else None))
            dst.append(slice(o, None))
        else:
            src.append(slice(-o, None))
            dst.append(slice(0, o))
    return tuple(src), tuple(dst)


def make_targets(stack: np.ndarray, offsets=OFFSETS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets for a (N,Z,Y,X) instance stack (any nonzero = member).

    Returns ``(fg (Z,Y,X) float32, affs (K,Z,Y,X) float32, aff_mask (K,Z,Y,X) float32)`` where
    ``aff_mask`` is 1 where the pair is inside the volume and at least one end is foreground.
    """
    masks = np.asarray(stack) > 0
    fg = masks.any(0)
    K = len(offsets)
    affs = np.zeros((K,) + fg.shape, np.float32)
    amask = np.zeros((K,) + fg.shape, np.float32)
    for k, off in enumerate(offsets):
        src, dst = _shifted_pair(fg, off)
        # same set of instances at both ends (so crossings/overlaps become their own fragments
        # instead of gluing the two crossing neurons together)
        same = fg[src] & fg[dst]
        for m in masks:
            same &= m[src] == m[dst]
        affs[(k,) + src] = same
        amask[(k,) + src] = fg[src] | fg[dst]
    return fg.astype(np.float32), affs, amask
