"""napari writer contributions: TIFF, OME-Zarr and the FISBe layout.

Thin wrappers over :mod:`napari_neuroseg.io` (all writes are atomic there: temp file, then
rename). A Labels layer that carries a FISBe instance stack (``metadata["fisbe_instances"]``, set
by the FISBe reader and the neuron sample) is written back to the FISBe layout when saved to a
``.zarr`` path (``.ome.zarr`` forces OME-Zarr): ``labels_to_instances(labels, stack)`` keeps
every unchanged voxel and all overlaps bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_neuroseg._napari._layers import AXES_KEY, FISBE_DIM_NEURONS, FISBE_INSTANCES
from napari_neuroseg.errors import NeurosegError

__all__ = [
    "write_image_tiff",
    "write_labels_tiff",
    "write_image_zarr",
    "write_labels_zarr",
    "write_fisbe",
    "fisbe_stack_from_layer",
]


def _level0(data: Any, meta: dict) -> Any:
    """The full-resolution array of a (possibly multiscale) layer."""
    if meta.get("multiscale") or isinstance(data, (list, tuple)):
        return data[0]
    return data


def _axes(data: Any, meta: dict, *, labels: bool) -> str:
    axes = (meta.get("metadata") or {}).get(AXES_KEY)
    if isinstance(axes, str) and len(axes) == data.ndim:
        return axes
    if meta.get("rgb"):
        return {3: "YXC", 4: "ZYXC"}.get(data.ndim, "ZYXC")
    return {2: "YX", 3: "ZYX", 4: "TZYX" if labels else "CZYX", 5: "TCZYX"}.get(data.ndim, "ZYX")


def _spatial_scale(meta: dict, axes: str) -> tuple[float, ...] | None:
    scale = meta.get("scale")
    if scale is None:
        return None
    n = sum(a in "ZYX" for a in axes)
    vals = tuple(float(s) for s in scale)[-n:]
    return vals if len(vals) == n else None


def _prepare(path: str, data: Any, meta: dict, *, labels: bool) -> tuple[Any, str, tuple | None]:
    data = _level0(data, meta)
    if not hasattr(data, "ndim"):
        data = np.asarray(data)
    axes = _axes(data, meta, labels=labels)
    if labels and axes.startswith("T"):
        if data.shape[0] != 1:
            raise NeurosegError(
                f"a {data.ndim}D labels layer of shape {tuple(data.shape)} cannot be saved as one volume",
                path=path,
                fix="save a single 3D (ZYX) label volume",
            )
        data, axes = data[0], axes[1:]
    return data, axes, _spatial_scale(meta, axes)


# ------------------------------------------------------------------------------------ TIFF
def write_image_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """Save an image layer as TIFF with its voxel size (ImageJ-compatible metadata)."""
    from napari_neuroseg.io import write_tiff

    arr, axes, scale = _prepare(path, data, meta, labels=False)
    write_tiff(path, np.asarray(arr), axes=axes, scale=scale)
    return [path]


def write_labels_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """Save a labels layer as TIFF with its voxel size."""
    from napari_neuroseg.io import write_tiff

    arr, axes, scale = _prepare(path, data, meta, labels=True)
    write_tiff(path, np.asarray(arr), axes=axes, scale=scale)
    return [path]


# ------------------------------------------------------------------------------------ Zarr
def write_image_zarr(path: str, data: Any, meta: dict) -> list[str]:
    """Save an image layer as OME-Zarr (NGFF v0.4)."""
    from napari_neuroseg.io import write_ome_zarr

    arr, axes, scale = _prepare(path, data, meta, labels=False)
    write_ome_zarr(path, arr, axes=axes, scale=scale, name=meta.get("name"))
    return [path]


def fisbe_stack_from_layer(data: Any, meta: dict) -> np.ndarray | None:
    """The (N, Z, Y, X) instance stack for a Labels layer carrying a FISBe stack, else None.

    Voxels whose label was not edited keep the original stack's values (overlaps included).
    """
    original = (meta.get("metadata") or {}).get(FISBE_INSTANCES)
    if original is None:
        return None
    from napari_neuroseg.io import labels_to_instances

    labels = np.asarray(_level0(data, meta))
    original = np.asarray(original)
    if original.ndim != 4 or original.shape[1:] != labels.shape:
        raise NeurosegError(
            f"the layer's FISBe instance stack has shape {original.shape}, the labels {labels.shape}",
            path=meta.get("name"),
            fix="the labels were resized after opening; save as OME-Zarr (.ome.zarr) or TIFF instead",
        )
    return labels_to_instances(labels, original)


def write_labels_zarr(path: str, data: Any, meta: dict) -> list[str]:
    """Save a labels layer: FISBe layout if it carries a FISBe stack and the path does not end
    with ``.ome.zarr``; otherwise an OME-Zarr label image."""
    from napari_neuroseg.io import write_ome_zarr

    if not path.lower().endswith(".ome.zarr") and (meta.get("metadata") or {}).get(FISBE_INSTANCES) is not None:
        return write_fisbe(path, [(data, meta, "labels")])
    arr, axes, scale = _prepare(path, data, meta, labels=True)
    write_ome_zarr(path, arr, axes=axes, scale=scale, name=meta.get("name"), is_label=True)
    return [path]


# ----------------------------------------------------------------------------------- FISBe
_CHANNEL_ORDER = ("red", "green", "blue")


def _channel_rank(meta: dict, index: int) -> tuple[int, int]:
    cmap = meta.get("colormap")
    cname = getattr(cmap, "name", cmap if isinstance(cmap, str) else "")
    text = f"{cname} {meta.get('name', '')}".lower()
    for rank, colour in enumerate(_CHANNEL_ORDER):
        if colour in text:
            return (rank, index)
    return (len(_CHANNEL_ORDER), index)


def write_fisbe(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """Save to the FISBe layout: a Labels layer → ``volumes/gt_instances`` (one channel per
    label id, or the layer's own FISBe stack with edits applied) and up to 3 image layers →
    ``volumes/raw`` (ordered red, green, blue by colormap/name, else as given)."""
    from napari_neuroseg.io import labels_to_instances
    from napari_neuroseg.io import write_fisbe as io_write_fisbe

    labels = [(d, m) for d, m, t in layer_data if t == "labels"]
    images = [(i, d, m) for i, (d, m, t) in enumerate(layer_data) if t == "image"]
    if len(labels) > 1:
        raise NeurosegError(
            f"the FISBe layout holds one instance volume, {len(labels)} Labels layers were given",
            path=path,
            fix="select one Labels layer (and up to 3 raw channels) to save",
        )
    gt = None
    dim_neurons = None
    if labels:
        data, meta = labels[0]
        gt = fisbe_stack_from_layer(data, meta)
        if gt is None:
            arr = np.asarray(_level0(data, meta))
            gt = labels_to_instances(arr)
        dim_neurons = list((meta.get("metadata") or {}).get(FISBE_DIM_NEURONS) or [])
    raw = None
    if images:
        images.sort(key=lambda t: _channel_rank(t[2], t[0]))
        chans = [np.asarray(_level0(d, m)) for _, d, m in images]
        shapes = {c.shape for c in chans}
        if len(shapes) != 1:
            raise NeurosegError(
                f"the raw channels have different shapes {sorted(shapes)}",
                path=path,
                fix="select image layers of the same shape (one per colour channel)",
            )
        raw = np.stack(chans)
    if gt is None and raw is None:
        raise NeurosegError("nothing to write", path=path, fix="select a Labels layer and/or raw image layers")
    io_write_fisbe(path, raw=raw, gt_instances=gt, dim_neurons=dim_neurons)
    return [path]
