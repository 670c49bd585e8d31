"""Format dispatch: ``read_image``, ``read_labels``, ``list_keys`` for every supported format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io.checks import as_label_array
from napari_neuroseg.io.fisbe import GT_KEY, RAW_KEY, is_fisbe
from napari_neuroseg.io.formats import file_stem
from napari_neuroseg.io.hdf5 import (
    HDF5_SUFFIXES,
    hdf5_keys,
    hdf5_scale,
    open_hdf5_dataset,
    read_hdf5,
    resolve_hdf5_key,
)
from napari_neuroseg.io.npy import read_npy
from napari_neuroseg.io.tiff import (
    TIFF_SUFFIXES,
    open_tiff_array,
    read_tiff,
    tiff_series_keys,
)
from napari_neuroseg.io.volume import Volume, guess_axes, normalize_axes, spatial_scale
from napari_neuroseg.io.zarr_io import (
    is_ome_zarr,
    is_zarr,
    ome_label_names,
    open_zarr,
    read_zarr_array,
    read_zarr_image,
    zarr_keys,
)

__all__ = ["detect_format", "read_image", "read_labels", "list_keys", "open_array", "OpenArray", "FORMATS", "split_key"]

#: Formats :func:`detect_format` can return.
FORMATS = ("tiff", "zarr", "ome-zarr", "fisbe", "hdf5", "npy")


def split_key(path: str | Path) -> tuple[Path, str | None]:
    """Split ``store.zarr/inner/key`` or ``file.h5/inner/key`` into ``(store, key)``.

    Only used when ``path`` itself does not exist; returns ``(path, None)`` otherwise.
    """
    p = Path(path)
    if p.exists():
        return p, None
    parts = p.parts
    for i in range(len(parts) - 1, 0, -1):
        head = Path(*parts[:i])
        if head.exists():
            if head.is_file() and head.suffix.lower() in HDF5_SUFFIXES or head.is_dir() and is_zarr(head):
                return head, "/".join(parts[i:])
            break
    return p, None


def detect_format(path: str | Path) -> str:
    """The format of ``path``: one of :data:`FORMATS` (from the extension and folder contents)."""
    p = Path(path)
    name = p.name.lower()
    if not p.exists():
        raise NeurosegError("file or folder not found", path=p, fix="check the path")
    if p.is_dir():
        if is_fisbe(p):
            return "fisbe"
        if is_zarr(p):
            return "ome-zarr" if is_ome_zarr(p) else "zarr"
        raise NeurosegError(
            "this folder is not a Zarr store (no .zgroup/.zarray/zarr.json)",
            path=p,
            fix="open a .zarr folder, a TIFF, or an HDF5 file",
        )
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    if name.endswith(HDF5_SUFFIXES):
        return "hdf5"
    if name.endswith(".npy"):
        return "npy"
    with open(p, "rb") as f:
        head = f.read(8)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head == b"\x89HDF\r\n\x1a\n":
        return "hdf5"
    raise NeurosegError(
        f"unsupported file type {p.suffix or '(no extension)'}",
        path=p,
        fix="use TIFF (.tif/.tiff), Zarr/OME-Zarr (.zarr folder), HDF5 (.h5/.hdf/.hdf5) or .npy",
    )


def list_keys(path: str | Path) -> list[str]:
    """Arrays/datasets inside a container: Zarr array paths, HDF5 dataset paths, TIFF series
    (``"0"``, ``"1"``...); ``[]`` for single-array files (.npy, root Zarr array)."""
    p = Path(path)
    fmt = detect_format(p)
    if fmt in ("zarr", "ome-zarr", "fisbe"):
        return zarr_keys(p)
    if fmt == "hdf5":
        return hdf5_keys(p)
    if fmt == "tiff":
        return tiff_series_keys(p)
    return []


def _volume_from_array(data: Any, p: Path, *, axes: str | None, scale_by_axis: dict, fmt: str, key: str | None,
                       unit: str = "micrometer") -> Volume:
    guessed = not axes
    use_axes = axes.upper() if axes else guess_axes(tuple(data.shape), p)
    data, norm = normalize_axes(data, use_axes, p)
    name = file_stem(p)
    return Volume(
        data=data,
        axes=norm,
        scale=spatial_scale(norm, scale_by_axis),
        name=f"{name}:{key}" if key else name,
        meta={"format": fmt, "key": key, "source_axes": use_axes, "axes_guessed": guessed, "unit": unit},
    )


def read_image(path: str | Path, key: str | None = None, *, lazy: bool = False, axes: str | None = None) -> Volume:
    """Read an image volume from TIFF, Zarr/OME-Zarr, a FISBe sample, HDF5 or .npy.

    Returns a :class:`Volume` with channels first (``ZYX`` or ``CZYX``; ``YX``/``CYX`` for 2D),
    the voxel size of Z, Y, X in ``scale`` (1.0 where the file does not say) and numpy data,
    or dask data with ``lazy=True`` (nothing is read until computed). ``key`` picks an array in
    a container (Zarr path, HDF5 dataset, OME-Zarr level, TIFF series); without it a FISBe
    sample gives ``volumes/raw``, an OME-Zarr its level 0, and a container with one array that
    array. ``axes`` overrides the stored or guessed axes (e.g. ``"ZCYX"``).
    """
    p, inner = split_key(path)
    key = key if key is not None else inner
    fmt = detect_format(p)
    if fmt == "tiff":
        return read_tiff(p, key, lazy=lazy, axes=axes)
    if fmt in ("zarr", "ome-zarr", "fisbe"):
        k = (key or RAW_KEY).strip("/")
        if fmt == "fisbe" and axes is None and k in (RAW_KEY, GT_KEY) and getattr(open_zarr(p, k), "ndim", 0) == 4:
            axes = "CZYX"  # the FISBe layout is channels (or instances) first
        vol = read_zarr_image(p, key, lazy=lazy, axes=axes)
        if fmt == "fisbe":
            vol.meta["format"] = "fisbe"
            vol.meta["axes_guessed"] = vol.meta["axes_guessed"] and axes is None
        return vol
    if fmt == "hdf5":
        k = resolve_hdf5_key(p, key)
        data = read_hdf5(p, k, lazy=lazy)
        use_axes = axes.upper() if axes else None
        spatial = "".join(a for a in (use_axes or guess_axes(tuple(data.shape), p)) if a in "ZYX")
        return _volume_from_array(data, p, axes=axes, scale_by_axis=hdf5_scale(p, k, spatial), fmt="hdf5", key=k)
    data = read_npy(p, mmap=lazy)
    if lazy:
        import dask.array as da

        data = da.from_array(data, chunks="auto")
    return _volume_from_array(data, p, axes=axes, scale_by_axis={}, fmt="npy", key=None)


def _labels_key_for_zarr(p: Path, fmt: str) -> str | None:
    if fmt == "fisbe":
        if (p / GT_KEY).is_dir():
            return GT_KEY
        raise NeurosegError(
            f"this FISBe sample has no '{GT_KEY}' (only {zarr_keys(p)})",
            path=p,
            fix="open a sample with ground truth, or read the raw image with read_image",
        )
    if fmt == "ome-zarr":
        names = ome_label_names(p)
        root = open_zarr(p)
        attrs = dict(root.attrs)
        if "image-label" in attrs or "image-label" in (attrs.get("ome") or {}):
            return None  # the multiscale image itself is a label image
        if len(names) == 1:
            return f"labels/{names[0]}"
        if len(names) > 1:
            raise NeurosegError(
                f"the OME-Zarr image has {len(names)} label images and no key was given: "
                f"{[f'labels/{n}' for n in names]}",
                path=p,
                fix="pass the key of one, e.g. --key labels/" + names[0],
            )
    if fmt == "zarr":
        from napari_neuroseg.io.hdf5 import KNOWN_LABEL_KEYS

        keys = zarr_keys(p)
        known = [k for k in KNOWN_LABEL_KEYS if k in keys]
        if len(keys) > 1 and known:
            return known[0]
        if len(keys) > 1:
            raise NeurosegError(
                f"the Zarr group holds {len(keys)} arrays and no key was given: {keys}",
                path=p,
                fix=f"pass the key of the label array (--key), e.g. {keys[0]!r}",
            )
    return None


def read_labels(path: str | Path, key: str | None = None, *, lazy: bool = False) -> Any:
    """Read a label volume (ZYX, integer ids, 0 = background) or a FISBe instance stack.

    - FISBe sample folder, no key: ``volumes/gt_instances`` (N,Z,Y,X) uint8, overlaps intact
      (flatten with :func:`instances_to_labels`).
    - OME-Zarr: its single ``labels/<name>`` image (level 0), or the key given.
    - HDF5/Zarr with several arrays and no key: a known label key if present
      (``volumes/gmm_label_cleaned`` for FISBe predictions), else a NeurosegError listing keys.
    - TIFF / .npy: the stored array, squeezed of singleton leading axes.

    Float, complex or negative ids raise a NeurosegError (negatives are checked for numpy
    results only); bool becomes uint8. Returns numpy, or dask with ``lazy=True``.
    """
    p, inner = split_key(path)
    key = key if key is not None else inner
    fmt = detect_format(p)
    if fmt == "tiff":
        vol = read_tiff(p, key, lazy=lazy, axes=None)
        data = vol.data
    elif fmt in ("zarr", "ome-zarr", "fisbe"):
        if key is None:
            key = _labels_key_for_zarr(p, fmt)
        arr, *_ = read_zarr_array(p, key)
        if lazy:
            import dask.array as da

            data = da.from_zarr(arr)
        else:
            data = arr[...]
    elif fmt == "hdf5":
        k = resolve_hdf5_key(p, key, labels=True)
        data = read_hdf5(p, k, lazy=lazy)
    else:
        data = read_npy(p, mmap=lazy)
        if lazy:
            import dask.array as da

            data = da.from_array(data, chunks="auto")
    while data.ndim > 3 and data.shape[0] == 1 and not (fmt == "fisbe" and data.ndim == 4):
        data = data[0]
    return as_label_array(data, p)


@dataclass
class OpenArray:
    """A stored array opened for block reads: slicing ``data`` reads (decodes) only that block.

    ``data`` is a Zarr array, an HDF5 dataset, a read-only memory map (uncompressed TIFF, .npy)
    or a Zarr view of a compressed TIFF; it is valid until :meth:`close`. ``axes`` are the stored
    axes when the file's metadata names them (else None), ``scale`` the voxel size per axis
    letter the file gives (``{}`` when it says nothing) in ``unit``; ``key`` the array read.
    """

    data: Any
    format: str
    axes: str | None = None
    scale: dict[str, float] = field(default_factory=dict)
    unit: str = "micrometer"
    key: str | None = None
    _close: Callable[[], Any] | None = field(default=None, repr=False)

    def close(self) -> None:
        close, self._close = self._close, None
        if close is not None:
            close()

    def __enter__(self) -> OpenArray:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_array(path: str | Path, key: str | None = None, *, labels: bool = False) -> OpenArray:
    """Open the image (or, ``labels``, the label) array of any supported file without reading it.

    The array is chosen as :func:`read_image` / :func:`read_labels` choose it (a FISBe sample:
    ``volumes/raw``, or ``volumes/gt_instances`` for labels; an OME-Zarr: level 0; a container
    with one array: that array). For readers of volumes larger than memory (batch's blockwise
    runs); the caller closes it.
    """
    p, inner = split_key(path)
    key = key if key is not None else inner
    fmt = detect_format(p)
    if fmt == "tiff":
        data, axes, scale, unit, close = open_tiff_array(p, key)
        return OpenArray(data, fmt, axes, scale, unit, key, close)
    if fmt in ("zarr", "ome-zarr", "fisbe"):
        if key is None and labels:
            key = _labels_key_for_zarr(p, fmt)
        arr, axes, scale, unit, key = read_zarr_array(p, key)
        return OpenArray(arr, fmt, axes, scale, unit, key)
    if fmt == "hdf5":
        dset, close = open_hdf5_dataset(p, key, labels=labels)
        try:
            spatial = "".join(a for a in guess_axes(tuple(dset.shape), p) if a in "ZYX")
            scale = hdf5_scale(p, dset.name.strip("/"), spatial)
        except NeurosegError:
            scale = {}
        return OpenArray(dset, fmt, None, scale, "micrometer", dset.name.strip("/"), close)
    return OpenArray(read_npy(p, mmap=True), fmt, None, {}, "micrometer", None)
