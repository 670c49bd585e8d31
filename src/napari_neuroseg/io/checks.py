"""Validation helpers shared by readers, writers and other areas (models, metrics, napari)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg.errors import NeurosegError

__all__ = [
    "require_3d",
    "require_same_shape",
    "check_label_dtype",
    "check_label_values",
    "as_label_array",
    "is_lazy",
]


def is_lazy(data: Any) -> bool:
    """True for dask arrays and other chunked arrays that are not numpy."""
    return not isinstance(data, np.ndarray)


def require_3d(
    volume: Any,
    path: str | Path | None = None,
    *,
    what: str = "volume",
    allow_channels: bool = False,
) -> None:
    """Raise a :class:`NeurosegError` unless ``volume`` is 3D (ZYX).

    ``volume`` is an array or a :class:`~napari_neuroseg.io.Volume`. With ``allow_channels`` a
    4D (C,Z,Y,X) array is accepted too. Singleton axes are not squeezed: the message says so.
    """
    data = getattr(volume, "data", volume)
    axes = getattr(volume, "axes", None)
    shape = tuple(int(s) for s in (data.shape if hasattr(data, "shape") else np.shape(data)))
    ok = len(shape) == 3 or (allow_channels and len(shape) == 4)
    if axes is not None:
        spatial = [a for a in axes if a in "ZYX"]
        ok = ok and len(spatial) == 3
    if ok:
        return
    expected = "3D (Z, Y, X)" + (" or 4D (C, Z, Y, X)" if allow_channels else "")
    if len(shape) == 2 or (axes is not None and "Z" not in axes):
        fix = "open a 3D stack (one TIFF with all Z slices, or a Zarr/HDF5 volume); a single 2D plane cannot be used here"
    elif len(shape) > 3 and any(s == 1 for s in shape):
        fix = "remove the singleton axes (e.g. numpy.squeeze) or pick one channel/time point"
    else:
        fix = "pick a single channel/time point (or pass --axes / --key to say which axis is which)"
    desc = f"shape {shape}" + (f", axes {axes}" if axes else "")
    raise NeurosegError(f"the {what} is not {expected} ({desc})", path=path, fix=fix)


def require_same_shape(
    a: Any, b: Any, *, path: str | Path | None = None, what: tuple[str, str] = ("image", "labels")
) -> None:
    """Raise a :class:`NeurosegError` unless ``a`` and ``b`` have the same shape."""
    sa, sb = tuple(np.shape(a)), tuple(np.shape(b))
    if sa != sb:
        raise NeurosegError(
            f"the {what[0]} has shape {sa} but the {what[1]} has shape {sb}",
            path=path,
            fix=f"use a {what[1]} volume with the same shape as the {what[0]} (crop or resample one of them)",
        )


def check_label_dtype(data: Any, path: str | Path | None = None, *, what: str = "label volume") -> None:
    """Labels must be integers (or bool); floats, complex and strings are refused."""
    dtype = np.dtype(data.dtype)
    if dtype == np.bool_ or np.issubdtype(dtype, np.integer):
        return
    if np.issubdtype(dtype, np.floating):
        fix = "save the labels with an integer type (uint16/uint32); if this is a probability map, threshold and label it first"
    else:
        fix = "save the labels as an integer array (uint8/uint16/uint32)"
    raise NeurosegError(f"the {what} has dtype {dtype}, labels must be integers", path=path, fix=fix)


def check_label_values(data: np.ndarray, path: str | Path | None = None, *, what: str = "label volume") -> None:
    """Label ids must be >= 0 (0 is background). Only checked for signed in-memory arrays."""
    if is_lazy(data) or data.dtype == np.bool_ or not np.issubdtype(data.dtype, np.signedinteger):
        return
    if data.size and int(data.min()) < 0:
        raise NeurosegError(
            f"the {what} contains negative ids (min {int(data.min())})",
            path=path,
            fix="use 0 for background and positive ids for objects (e.g. relabel with skimage.segmentation.relabel_sequential)",
        )


def as_label_array(data: Any, path: str | Path | None = None, *, what: str = "label volume") -> Any:
    """Validate a label array (integer/bool dtype, no negative ids); bool becomes uint8."""
    check_label_dtype(data, path, what=what)
    if np.dtype(data.dtype) == np.bool_:
        data = data.astype(np.uint8)
    check_label_values(data, path, what=what)
    return data
