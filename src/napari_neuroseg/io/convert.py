"""Conversion between TIFF, Zarr, OME-Zarr, the FISBe layout and HDF5 (used by ``neuroseg convert``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io.fisbe import instances_to_labels, is_fisbe, labels_to_instances, read_fisbe, write_fisbe
from napari_neuroseg.io.hdf5 import HDF5_SUFFIXES, write_hdf5
from napari_neuroseg.io.readers import read_image, read_labels
from napari_neuroseg.io.tiff import TIFF_SUFFIXES, write_tiff
from napari_neuroseg.io.zarr_io import write_ome_zarr, write_zarr

__all__ = ["OUTPUT_FORMATS", "ConvertResult", "output_format", "convert"]

OUTPUT_FORMATS = ("tiff", "zarr", "ome-zarr", "fisbe", "hdf5")


@dataclass
class ConvertResult:
    """What :func:`convert` wrote: the path, the format, shape/dtype and any warnings."""

    path: Path
    format: str
    shape: tuple[int, ...]
    dtype: str
    warnings: list[str] = field(default_factory=list)


def output_format(dst: str | Path, fmt: str | None = None, *, src_is_fisbe: bool = False) -> str:
    """Output format from ``fmt`` or the extension of ``dst``.

    ``.tif/.tiff`` → tiff, ``.ome.zarr`` → ome-zarr, ``.zarr`` → fisbe when the input is a
    FISBe sample, else ome-zarr; ``.h5/.hdf/.hdf5`` → hdf5.
    """
    if fmt:
        fmt = fmt.lower()
        if fmt not in OUTPUT_FORMATS:
            raise NeurosegError(f"unknown output format {fmt!r}", path=dst, fix=f"use one of {', '.join(OUTPUT_FORMATS)}")
        return fmt
    name = Path(dst).name.lower()
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    if name.endswith(".ome.zarr"):
        return "ome-zarr"
    if name.endswith(".zarr"):
        return "fisbe" if src_is_fisbe else "ome-zarr"
    if name.endswith(HDF5_SUFFIXES):
        return "hdf5"
    raise NeurosegError(
        f"cannot tell the output format from the name {Path(dst).name!r}",
        path=dst,
        fix="end the output name with .tif, .zarr, .ome.zarr or .h5, or pass --format",
    )


def _scale_of(src: Path, key: str | None, override: tuple[float, ...] | None) -> tuple[float, ...] | None:
    if override is not None:
        return tuple(float(s) for s in override)
    try:
        return read_image(src, key, lazy=True).scale
    except NeurosegError:
        return None


#: Memory a scheduled chunk copy takes per chunk (dask task and key); a declared shape with
#: billions of chunks would exhaust memory just planning the copy.
_TASK_BYTES = 2048


def _budget(data, src: Path, out: str, *, streamed: bool) -> None:
    """Refuse, from the declared shape alone, a conversion that cannot fit in memory: a read of
    the whole input (TIFF, HDF5, instance stacks) or a chunk-by-chunk copy with too many chunks."""
    from napari_neuroseg.runtime.memory import require_memory, require_volume_fits

    shape = tuple(int(s) for s in data.shape)
    if not streamed:
        require_volume_fits(
            shape, np.dtype(data.dtype).itemsize, what=f"converting to {out} (read whole)", path=src,
            fix="convert to .zarr or .ome.zarr (written chunk by chunk), or crop the input first",
        )
        return
    numblocks = getattr(data, "numblocks", None)
    if numblocks is None:
        chunks = getattr(data, "chunks", None) or shape
        numblocks = [-(-s // max(1, int(c))) for s, c in zip(shape, chunks)]
    n = 1
    for b in numblocks:
        n *= int(b)
    require_memory(
        n * _TASK_BYTES, what=f"copying the input of shape {shape} chunk by chunk ({n:,} chunks)", path=src,
        fix="check the array's declared shape; re-save it with larger chunks or crop it first",
    )


def _overlap_warning(count: np.ndarray) -> list[str]:
    n = int((count > 1).sum())
    if not n:
        return []
    return [
        f"{n} voxels where neurons overlap keep only the lower id in this format; "
        "write the FISBe layout (.zarr) or a TIFF with --labels to keep every instance"
    ]


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    key: str | None = None,
    axes: str | None = None,
    fmt: str | None = None,
    labels: bool = False,
    scale: tuple[float, ...] | None = None,
    n_levels: int = 1,
    overwrite: bool = False,
) -> ConvertResult:
    """Convert ``src`` to ``dst`` (atomically). ``labels`` reads ``src`` as labels (a FISBe
    sample: its instance stack). FISBe → TIFF with ``labels`` writes the full (N,Z,Y,X) stack
    as channels, so overlaps survive; formats with one id per voxel (OME-Zarr labels) keep the
    lower id and a warning says how many voxels overlap."""
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise NeurosegError("input not found", path=src, fix="check the input path")
    if src.resolve() == dst.resolve():
        raise NeurosegError("input and output are the same path", path=dst, fix="choose another output path")
    if dst.exists() and not overwrite:
        raise NeurosegError("the output already exists", path=dst, fix="choose a new name or pass --overwrite")
    fisbe_in = is_fisbe(src) and key is None
    out = output_format(dst, fmt, src_is_fisbe=fisbe_in)
    if fisbe_in:
        return _convert_fisbe(src, dst, out, labels=labels, scale=scale, n_levels=n_levels)
    if labels:
        return _convert_labels(src, dst, out, key=key, scale=scale, n_levels=n_levels)
    return _convert_image(src, dst, out, key=key, axes=axes, scale=scale, n_levels=n_levels)


def _convert_fisbe(
    src: Path, dst: Path, out: str, *, labels: bool, scale: tuple[float, ...] | None, n_levels: int
) -> ConvertResult:
    """A FISBe sample: the whole layout, its instance stack (``labels``, or no raw) or its raw."""
    warnings: list[str] = []
    sample = read_fisbe(src, lazy=True)
    use_labels = labels or sample.raw is None
    for arr in (sample.raw, sample.gt_instances):
        if arr is not None:
            _budget(arr, src, out, streamed=out in ("fisbe", "zarr") or (out == "ome-zarr" and arr is sample.raw
                                                                             and not use_labels))
    if out == "fisbe":
        write_fisbe(dst, raw=sample.raw, gt_instances=sample.gt_instances, dim_neurons=sample.dim_neurons)
        arr = sample.gt_instances if sample.raw is None else sample.raw
        return ConvertResult(dst, out, tuple(arr.shape), str(arr.dtype), warnings)
    if use_labels and sample.gt_instances is None:
        raise NeurosegError("the FISBe sample has no gt_instances", path=src, fix="leave out --labels")
    if use_labels:
        stack = np.asarray(sample.gt_instances)
        if out == "tiff":
            write_tiff(dst, stack, axes="CZYX", scale=scale)
            return ConvertResult(dst, out, stack.shape, str(stack.dtype), warnings)
        if out == "zarr":
            write_zarr(dst, stack, axes="CZYX", scale=scale, attrs={"dim_neurons": sample.dim_neurons})
            return ConvertResult(dst, out, stack.shape, str(stack.dtype), warnings)
        flat, count = instances_to_labels(stack)
        warnings += _overlap_warning(count)
        if out == "hdf5":
            write_hdf5(dst, flat, key="volumes/labels", scale=scale)
        else:
            write_ome_zarr(dst, flat, axes="ZYX", scale=scale, is_label=True, n_levels=n_levels)
        return ConvertResult(dst, out, flat.shape, str(flat.dtype), warnings)
    raw = sample.raw
    if out == "tiff":
        raw = np.asarray(raw)
        write_tiff(dst, raw, axes="CZYX", scale=scale)
    elif out == "zarr":
        write_zarr(dst, raw, axes="CZYX", scale=scale)
    elif out == "hdf5":
        write_hdf5(dst, np.asarray(raw), key="volumes/raw", scale=scale)
    else:
        lab = None
        if sample.gt_instances is not None:
            flat, count = instances_to_labels(sample.gt_instances)
            warnings += _overlap_warning(count)
            lab = {"neurons": flat}
        write_ome_zarr(dst, raw, axes="CZYX", scale=scale, labels=lab, n_levels=n_levels)
    return ConvertResult(dst, out, tuple(raw.shape), str(raw.dtype), warnings)


def _convert_labels(
    src: Path, dst: Path, out: str, *, key: str | None, scale: tuple[float, ...] | None, n_levels: int
) -> ConvertResult:
    """A label volume (ZYX) or an instance stack (CZYX)."""
    warnings: list[str] = []
    data = read_labels(src, key, lazy=True)
    _budget(data, src, out, streamed=out == "zarr" or (out == "ome-zarr" and data.ndim != 4))
    sc = _scale_of(src, key, scale)
    if data.ndim == 4:
        lab_axes = "CZYX"
    elif data.ndim in (2, 3):
        lab_axes = "ZYX"[-data.ndim:]
    else:
        raise NeurosegError(f"labels of shape {tuple(data.shape)} are not 2D-4D", path=src, fix="pass --key")
    if sc is not None and len(sc) != len(lab_axes.replace("C", "")):
        sc = None
    if out == "fisbe":
        arr = np.asarray(data)
        if arr.ndim == 3:
            arr = labels_to_instances(arr)
        elif arr.ndim != 4:
            raise NeurosegError("FISBe needs 3D labels or a 4D instance stack", path=src, fix="pass --key")
        write_fisbe(dst, gt_instances=arr)
        return ConvertResult(dst, out, arr.shape, str(arr.dtype), warnings)
    if out == "tiff":
        arr = np.asarray(data)
        write_tiff(dst, arr, axes=lab_axes, scale=sc)
    elif out == "zarr":
        arr = data
        write_zarr(dst, data, axes=lab_axes, scale=sc)
    elif out == "hdf5":
        arr = np.asarray(data)
        write_hdf5(dst, arr, key="volumes/labels", scale=sc)
    else:
        arr = data
        if data.ndim == 4:
            arr, count = instances_to_labels(data)
            warnings += _overlap_warning(count)
            lab_axes = "ZYX"
        write_ome_zarr(dst, arr, axes=lab_axes, scale=sc, is_label=True, n_levels=n_levels)
    return ConvertResult(dst, out, tuple(arr.shape), str(arr.dtype), warnings)


def _convert_image(
    src: Path, dst: Path, out: str, *, key: str | None, axes: str | None, scale: tuple[float, ...] | None,
    n_levels: int,
) -> ConvertResult:
    """An image volume, with its axes and voxel size."""
    warnings: list[str] = []
    vol = read_image(src, key, lazy=True, axes=axes)
    _budget(vol.data, src, out, streamed=out in ("fisbe", "zarr", "ome-zarr"))
    sc = tuple(float(s) for s in scale) if scale is not None else vol.scale
    data = vol.data
    if out == "fisbe":
        if vol.axes == "ZYX":
            data = data[None]
        elif vol.axes != "CZYX":
            raise NeurosegError(
                f"FISBe raw must be 3D (with channels), the input has axes {vol.axes}", path=src,
                fix="convert a 3D (Z, Y, X) or (C, Z, Y, X) volume",
            )
        write_fisbe(dst, raw=data)
    elif out == "tiff":
        write_tiff(dst, np.asarray(data), axes=vol.axes, scale=sc, unit=vol.meta.get("unit", "micrometer"))
    elif out == "zarr":
        write_zarr(dst, data, axes=vol.axes, scale=sc)
    elif out == "hdf5":
        write_hdf5(dst, np.asarray(data), key="data", scale=sc)
    else:
        write_ome_zarr(dst, data, axes=vol.axes, scale=sc, n_levels=n_levels, name=vol.name)
    return ConvertResult(dst, out, tuple(data.shape), str(data.dtype), warnings)
