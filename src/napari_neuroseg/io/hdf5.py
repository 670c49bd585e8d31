"""HDF5 (``.h5``/``.hdf``/``.hdf5``): list datasets, read one by key (FISBe predictions)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io.atomic import atomic_output, defer_sigint
from napari_neuroseg.io.formats import HDF5_SUFFIXES

__all__ = ["HDF5_SUFFIXES", "hdf5_keys", "open_hdf5_dataset", "read_hdf5", "resolve_hdf5_key", "write_hdf5", "KNOWN_LABEL_KEYS"]


#: Keys used for label volumes by known tools; with no key given, the first present one is read
#: by ``read_labels`` (FISBe predictions: ``volumes/gmm_label_cleaned``).
KNOWN_LABEL_KEYS = ("volumes/gmm_label_cleaned", "volumes/labels", "volumes/pred_labels", "labels", "segmentation")
_SCALE_ATTRS = ("element_size_um", "resolution", "voxel_size", "scale", "spacing")


def _open(path: Path):
    import h5py

    if not path.is_file():
        raise NeurosegError("file not found", path=path, fix="check the path")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise NeurosegError(
            f"not a readable HDF5 file ({err})",
            path=path,
            fix="check that the file is complete (re-copy it) and really is HDF5",
        ) from err


def hdf5_keys(path: str | Path) -> list[str]:
    """All dataset paths in an HDF5 file, sorted."""
    import h5py

    keys: list[str] = []
    with _open(Path(path)) as f:
        f.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(keys)


def resolve_hdf5_key(path: str | Path, key: str | None, *, labels: bool = False) -> str:
    """The dataset to read: ``key`` if it exists, the only dataset, or (labels) a known label key."""
    path = Path(path)
    keys = hdf5_keys(path)
    if key not in (None, ""):
        k = key.strip("/")
        if k in keys:
            return k
        raise NeurosegError(
            f"the HDF5 file has no dataset {key!r}; it contains {keys or 'no datasets'}",
            path=path,
            fix="pass one of the listed keys (--key)",
        )
    if len(keys) == 1:
        return keys[0]
    if labels:
        for k in KNOWN_LABEL_KEYS:
            if k in keys:
                return k
    raise NeurosegError(
        f"the HDF5 file holds {len(keys)} datasets and no key was given: {keys or 'none'}",
        path=path,
        fix="pass the key of the dataset to open (--key), e.g. " + (repr(keys[0]) if keys else "'volumes/raw'"),
    )


def read_hdf5(path: str | Path, key: str | None = None, *, lazy: bool = False) -> Any:
    """Read dataset ``key`` (numpy, or dask backed by the open file with ``lazy``)."""
    path = Path(path)
    k = resolve_hdf5_key(path, key)
    f = _open(path)
    dset = f[k]
    if lazy:
        import dask.array as da

        return da.from_array(dset, chunks="auto")  # keeps the file open while the array lives
    try:
        return dset[()]
    finally:
        f.close()


def open_hdf5_dataset(path: str | Path, key: str | None = None, *, labels: bool = False):
    """Open dataset ``key`` for block reads (slicing reads only that block): ``(dataset, close)``.

    The file stays open until ``close()`` is called. ``key`` is resolved as in
    :func:`resolve_hdf5_key` (``labels``: a known label key when several datasets are present).
    """
    path = Path(path)
    k = resolve_hdf5_key(path, key, labels=labels)
    f = _open(path)
    return f[k], f.close


def hdf5_attrs(path: str | Path, key: str) -> dict:
    """Attributes of a dataset (resolution etc.)."""
    with _open(Path(path)) as f:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f[key].attrs.items()}


def hdf5_scale(path: str | Path, key: str, spatial: str) -> dict[str, float]:
    """Voxel size from common dataset attributes (``element_size_um``, ``resolution``...)."""
    attrs = hdf5_attrs(path, key)
    for name in _SCALE_ATTRS:
        val = attrs.get(name)
        if isinstance(val, (list, tuple)) and len(val) == len(spatial):
            try:
                return {a: float(v) for a, v in zip(spatial, val)}
            except (TypeError, ValueError):
                continue
    return {}


def write_hdf5(path: str | Path, data: Any, *, key: str = "data", scale: tuple[float, ...] | None = None) -> Path:
    """Write one dataset to a new HDF5 file atomically (gzip-compressed, chunked).

    The file is built in memory and then written with plain Python I/O: when the HDF5 library
    itself meets a full disk it leaves half-closed objects behind that crash the interpreter at
    exit (segfault), whereas a failed ``write()`` is an ordinary ``OSError`` (a NeurosegError
    "the disk is full" from :func:`atomic_output`). The extra memory is the compressed file size.
    """
    import io

    import h5py

    path = Path(path)
    data = np.asarray(data)
    buf = io.BytesIO()
    with defer_sigint() as sig:  # h5py's C code swallows a KeyboardInterrupt raised inside it
        with h5py.File(buf, "w") as f:
            d = f.create_dataset(key, data=data, compression="gzip", compression_opts=4,
                                 chunks=True if data.size else None)
            if scale is not None:
                d.attrs["element_size_um"] = np.asarray(scale, dtype=float)
        if sig.interrupted:
            raise KeyboardInterrupt
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(buf.getbuffer())
                fh.flush()
                os.fsync(fh.fileno())
    return path
