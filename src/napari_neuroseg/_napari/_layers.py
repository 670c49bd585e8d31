"""Build napari layer-data tuples from arrays read by :mod:`napari_neuroseg.io` (no I/O here).

Shared by the readers and the sample-data commands, so a file and a sample look the same:

- a FISBe raw volume (3, Z, Y, X) becomes one image layer per channel, additive red/green/blue;
- a FISBe instance stack (N, Z, Y, X) becomes one Labels layer (neuron i → id i + 1; where
  neurons overlap the lower id is shown) that keeps the full stack in
  ``metadata["fisbe_instances"]`` and the dim neurons in ``metadata["fisbe_dim_neurons"]``, plus
  an "overlaps" Labels layer (value = how many neurons share the voxel) when neurons overlap.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

__all__ = [
    "FISBE_INSTANCES",
    "FISBE_DIM_NEURONS",
    "AXES_KEY",
    "ROLE_KEY",
    "GROUND_TRUTH",
    "looks_like_ground_truth",
    "is_ground_truth",
    "EAGER_BYTES",
    "EAGER_LABEL_BYTES",
    "looks_like_labels",
    "maybe_load",
    "image_layer",
    "labels_layer",
    "fisbe_raw_layer",
    "fisbe_instance_layers",
]

#: Metadata keys of a Labels layer made from a FISBe instance stack.
FISBE_INSTANCES = "fisbe_instances"
FISBE_DIM_NEURONS = "fisbe_dim_neurons"
#: Metadata key holding the axes of the layer data as read (e.g. "ZYX").
AXES_KEY = "neuroseg_axes"
#: Metadata key of a layer's role; ``GROUND_TRUTH`` marks reference annotations (set by the readers
#: for FISBe instance stacks and label arrays whose name says gt / truth), which proofreading edits
#: only after asking.
ROLE_KEY = "neuroseg_role"
GROUND_TRUTH = "ground_truth"
#: Images up to this size are loaded into memory; larger ones stay lazy (dask).
EAGER_BYTES = 2**30
#: Label volumes up to this size are loaded (napari can only paint/undo on in-memory labels).
EAGER_LABEL_BYTES = 2 * 2**30

LayerData = tuple[Any, dict, str]

_LABEL_HINTS = ("label", "mask", "seg", "instance", "annot", "gt_", "_gt", "ground_truth", "truth")
_IMAGE_HINTS = {"raw", "image", "img", "intensity", "data", "volume"}


def looks_like_labels(name: str, dtype: Any) -> bool:
    """Guess whether an array named ``name`` with ``dtype`` holds labels (documented rule).

    bool → labels; floats → image; integers → labels if the name contains a label word
    (label, mask, seg, instance, annot, gt, truth), image if it says raw/image/img, otherwise
    labels for 32/64-bit integers (ids) and image for 8/16-bit integers (intensities).
    """
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return True
    if not np.issubdtype(dtype, np.integer):
        return False
    low = name.lower()
    tokens = set(re.split(r"[^a-z0-9]+", low))
    if "gt" in tokens or any(h in low for h in _LABEL_HINTS):
        return True
    if tokens & _IMAGE_HINTS:
        return False
    return dtype.itemsize >= 4


def looks_like_ground_truth(name: str) -> bool:
    """Whether a layer/array name says ground truth: a word ``gt``, ``truth`` or ``groundtruth``
    (``sample_gt``, ``gt_instances``, ``ground truth``; not ``segment``)."""
    tokens = set(re.split(r"[^a-z0-9]+", name.lower()))
    return bool(tokens & {"gt", "truth", "groundtruth"})


def is_ground_truth(layer: Any) -> bool:
    """Whether a layer holds ground truth: its ``metadata["neuroseg_role"]`` when set (the
    plugin's readers set it), else its name (:func:`looks_like_ground_truth`)."""
    md = getattr(layer, "metadata", None) or {}
    role = md.get(ROLE_KEY)
    if role is not None:
        return role == GROUND_TRUTH
    return looks_like_ground_truth(str(getattr(layer, "name", "")))


def maybe_load(data: Any, limit: int = EAGER_BYTES) -> Any:
    """Load a lazy (dask) array into memory if it is at most ``limit`` bytes."""
    if isinstance(data, np.ndarray):
        return data
    nbytes = int(np.prod(data.shape, dtype=np.int64)) * np.dtype(data.dtype).itemsize
    if nbytes <= limit:
        return np.asarray(data)
    return data


def _contrast_limits(data: Any) -> list[float] | None:
    """Cheap contrast limits for a lazy array (percentiles of a subsampled middle slab)."""
    if isinstance(data, np.ndarray) or data.ndim < 2:
        return None
    index = tuple(s // 2 for s in data.shape[:-2]) + (slice(None, None, 4), slice(None, None, 4))
    sample = np.asarray(data[index], dtype=np.float64)
    if sample.size == 0:
        return None
    lo, hi = np.percentile(sample, [0.1, 99.9])
    return [float(lo), float(hi if hi > lo else lo + 1)]


def image_layer(
    data: Any,
    *,
    name: str,
    axes: str,
    scale: tuple[float, ...] | None = None,
    metadata: dict | None = None,
    **kwargs: Any,
) -> LayerData:
    """An image layer; a channel axis (``C`` first in ``axes``) is split into layers.

    Three channels are shown additive red/green/blue; other counts use napari's defaults.
    ``data`` may be a list of arrays (a multiscale pyramid, level 0 first).
    """
    multiscale = isinstance(data, (list, tuple))
    level0 = data[0] if multiscale else data
    meta = dict(metadata or {})
    kw: dict[str, Any] = {"name": name}
    spatial_axes = axes.replace("C", "")
    meta[AXES_KEY] = spatial_axes
    if scale is not None:
        kw["scale"] = tuple(float(s) for s in scale)
    if multiscale:
        kw["multiscale"] = True
    else:
        cl = _contrast_limits(level0)
        if cl is not None:
            kw["contrast_limits"] = cl
    if "C" in axes:
        n = int(level0.shape[axes.index("C")])
        kw["channel_axis"] = axes.index("C")
        kw["blending"] = "additive"
        if n == 3:
            kw["colormap"] = ["red", "green", "blue"]
            kw["name"] = [f"{name} [{c}]" for c in ("red", "green", "blue")]
        else:
            kw["name"] = [f"{name} [ch{i}]" for i in range(n)]
        if "contrast_limits" in kw:
            kw.pop("contrast_limits")
    kw["metadata"] = meta
    kw.update(kwargs)
    return (data, kw, "image")


def labels_layer(
    data: Any,
    *,
    name: str,
    scale: tuple[float, ...] | None = None,
    metadata: dict | None = None,
    **kwargs: Any,
) -> LayerData:
    """A Labels layer (bool data becomes uint8); a ground-truth name sets the role (``ROLE_KEY``)."""
    if not isinstance(data, (list, tuple)) and np.dtype(data.dtype) == np.bool_:
        data = data.astype(np.uint8)
    level0 = data[0] if isinstance(data, (list, tuple)) else data
    meta = dict(metadata or {})
    meta.setdefault(AXES_KEY, "ZYX"[-level0.ndim:] if level0.ndim <= 3 else "CZYX"[-level0.ndim:])
    if looks_like_ground_truth(name):
        meta.setdefault(ROLE_KEY, GROUND_TRUTH)
    kw: dict[str, Any] = {"name": name, "metadata": meta}
    if isinstance(data, (list, tuple)):
        kw["multiscale"] = True
    if scale is not None:
        kw["scale"] = tuple(float(s) for s in scale)
    kw.update(kwargs)
    return (data, kw, "labels")


def fisbe_raw_layer(raw: Any, *, name: str, scale: tuple[float, ...] | None = None) -> LayerData:
    """FISBe raw (C, Z, Y, X): one additive image layer per channel (red/green/blue for 3)."""
    return image_layer(raw, name=f"{name} raw", axes="CZYX", scale=scale, metadata={"fisbe_raw": True})


def fisbe_instance_layers(
    stack: np.ndarray,
    *,
    name: str,
    dim_neurons: list[int] | None = None,
    scale: tuple[float, ...] | None = None,
    source: str | None = None,
    overlaps: bool = True,
) -> list[LayerData]:
    """The Labels layer for a FISBe (N, Z, Y, X) instance stack, plus an overlaps layer.

    The stack itself travels in ``metadata["fisbe_instances"]`` so the FISBe writer can write
    it back unchanged where the labels were not edited (``labels_to_instances``).
    """
    from napari_neuroseg.io import instances_to_labels

    stack = np.asarray(stack)
    labels, count = instances_to_labels(stack)
    meta = {
        FISBE_INSTANCES: stack,
        FISBE_DIM_NEURONS: [int(i) for i in (dim_neurons or [])],
        AXES_KEY: "ZYX",
        ROLE_KEY: GROUND_TRUTH,  # a FISBe file's instance stack is its ground truth
    }
    if source is not None:
        meta["fisbe_source"] = str(source)
    out = [labels_layer(labels, name=f"{name} instances", scale=scale, metadata=meta)]
    count = np.asarray(count)
    if overlaps and count.size and int(count.max()) > 1:
        shared = np.where(count > 1, count, 0).astype(np.uint8)
        out.append(
            labels_layer(
                shared,
                name=f"{name} overlaps",
                scale=scale,
                metadata={"fisbe_overlaps": True, ROLE_KEY: GROUND_TRUTH,
                          "description": "value = number of neurons sharing the voxel"},
                opacity=0.8,
            )
        )
    return out
