"""Proofreading FISBe ground truth: overlapping neurons stored as an (N, Z, Y, X) stack.

The label volume shown for editing keeps the lower id where neurons overlap. The edited stack
is derived from the current labels and the ORIGINAL stack (stateless, so any sequence of edits,
undos and redos gives the same result as its net change):

- an edit only changes the neurons the user sees: where a voxel's visible id went from ``a`` to
  ``b``, channel ``a`` loses the voxel and channel ``b`` gains it; neurons hidden under ``a``
  there keep it (splitting or deleting neuron 1 never cuts a neuron 3 crossing it);
- ids that disappeared (deleted or merged away) are cleared everywhere, hidden parts included;
- new ids add channels; everything else is bit-identical to the original (so an unedited
  volume, or one whose edits were all undone, is written back exactly).

The flattened view of the result can differ from ``labels`` only where a hidden neuron was
uncovered (e.g. the neuron above it was deleted): it shows again after reloading.
(:func:`napari_neuroseg.io.labels_to_instances` is the simpler rule that clears every channel at
an edited voxel.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def edited_instances(labels: Any, original_stack: Any) -> np.ndarray:
    """The (N', Z, Y, X) instance stack after the edits that turned the original into ``labels``."""
    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.io import instances_to_labels

    labels = np.asarray(labels)
    if len(original_stack.shape) != 4 or tuple(original_stack.shape[1:]) != labels.shape:
        raise NeurosegError(
            f"labels of shape {labels.shape} do not match the instance stack {tuple(original_stack.shape)}",
            fix="edit the label volume made from this (N, Z, Y, X) stack",
        )
    n0 = int(original_stack.shape[0])
    before, _ = instances_to_labels(original_stack)
    flat_b, flat_a = before.reshape(-1), labels.reshape(-1)
    changed = np.flatnonzero(flat_b != flat_a)
    max_id = int(flat_a[changed].max()) if changed.size else 0
    n = max(n0, max_id)
    dtype = np.dtype(original_stack.dtype)
    if np.iinfo(dtype).max < n:
        dtype = np.dtype(np.uint16 if n < 2**16 else np.uint32)
    out = np.zeros((n,) + labels.shape, dtype)
    for i in range(n0):
        out[i] = np.asarray(original_stack[i])
    if not changed.size:
        return out
    flat = out.reshape(n, -1)
    old, new = flat_b[changed].astype(np.int64), flat_a[changed].astype(np.int64)
    o = old > 0
    flat[old[o] - 1, changed[o]] = 0
    g = new > 0
    flat[new[g] - 1, changed[g]] = new[g]
    visible_before = set(np.unique(flat_b[changed]).tolist()) - {0}
    for gone in sorted(visible_before):
        if not (flat_a == gone).any():
            out[gone - 1] = 0
    return out


def save_fisbe_edits(
    path: str | Path,
    labels: Any,
    original_stack: Any,
    *,
    dim_neurons: Sequence[int] | None = None,
) -> Path:
    """Write the edited ground truth into the FISBe sample at ``path`` (``volumes/gt_instances``;
    ``volumes/raw`` of an existing sample is kept). Atomic: a failure leaves the old sample."""
    from napari_neuroseg.io import write_fisbe

    stack = edited_instances(labels, original_stack)
    dims = None if dim_neurons is None else [int(d) for d in dim_neurons if int(d) <= stack.shape[0]]
    return write_fisbe(path, gt_instances=stack, dim_neurons=dims)
