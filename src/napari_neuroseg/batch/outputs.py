"""Batch outputs: their names, and how a label volume is written in the chosen format.

The writing itself is :mod:`napari_neuroseg.io`'s (``write_tiff``, ``write_zarr``,
``write_ome_zarr``, ``create_label_store``; all atomic through :mod:`napari_neuroseg.io.atomic`):
a target path never holds a partial file — after a crash, a cancel or a write error (full disk)
only a ``.*.tmp-*`` leftover can exist, which :func:`~napari_neuroseg.io.atomic.clean_temporaries`
removes on the next run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io import read_labels, write_ome_zarr, write_tiff, write_zarr

FORMATS = ("tif", "zarr", "ome-zarr")
_EXT = {"tif": ".tif", "zarr": ".zarr", "ome-zarr": ".ome.zarr", "json": ".json"}
#: chunks of whole-volume Zarr outputs (at most; smaller volumes: one chunk per axis)
_CHUNKS = (64, 256, 256)


def output_path(outdir: str | Path, name: str, task: str, fmt: str) -> Path:
    """``OUTDIR/<name>_<task><ext>`` (``.tif``, ``.zarr``, ``.ome.zarr`` or ``.json``)."""
    if fmt not in _EXT:
        raise NeurosegError(f"unknown output format {fmt!r}", fix=f"use one of {', '.join(FORMATS)}")
    return Path(outdir) / f"{name}_{task}{_EXT[fmt]}"


def write_labels(
    target: str | Path,
    labels: np.ndarray,
    fmt: str,
    *,
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0),
    chunks: tuple[int, int, int] | None = None,
) -> Path:
    """Write a ZYX label volume atomically as TIFF, Zarr (v2, the layout of blockwise outputs) or
    OME-Zarr (an NGFF label image), with its voxel size; returns the target."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    ch = chunks or tuple(min(s, c) for s, c in zip(labels.shape, _CHUNKS))
    if fmt == "tif":
        return write_tiff(target, labels, axes="ZYX", scale=scale)
    if fmt == "zarr":
        return write_zarr(target, labels, axes="ZYX", scale=scale, chunks=ch, zarr_format=2)
    if fmt == "ome-zarr":
        return write_ome_zarr(target, labels, axes="ZYX", scale=scale, chunks=ch, name=target.name, is_label=True)
    raise NeurosegError(f"unknown output format {fmt!r}", path=target, fix=f"use one of {', '.join(FORMATS)}")


def read_output(path: str | Path, *, lazy: bool = False):
    """Read a batch label output (TIFF, Zarr or OME-Zarr): numpy, or dask with ``lazy``."""
    return read_labels(path, lazy=lazy)
