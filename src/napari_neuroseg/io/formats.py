"""File-name conventions of the supported formats: the one list of suffixes, and a file's stem.

Imported by the readers and writers here and by every module that recognises a volume file by
its name (batch input discovery, the napari readers), so the suffixes live in one place.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["HDF5_SUFFIXES", "OME_SUFFIXES", "TIFF_SUFFIXES", "VOLUME_SUFFIXES", "ZARR_SUFFIXES", "file_stem"]

TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf", ".hdf5", ".he5")
ZARR_SUFFIXES = (".zarr",)
#: multi-part suffixes (matched before the single ones)
OME_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr")
VOLUME_SUFFIXES = OME_SUFFIXES + TIFF_SUFFIXES + ZARR_SUFFIXES + HDF5_SUFFIXES


def file_stem(path: str | Path) -> str:
    """The name of a volume file without its format suffix (``a.ome.tif`` -> ``a``,
    ``b.zarr/`` -> ``b``); other names lose their last suffix only (``c.npy`` -> ``c``)."""
    name = Path(path).name.rstrip("/")
    low = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem
