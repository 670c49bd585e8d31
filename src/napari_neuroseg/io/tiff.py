"""TIFF reading (ImageJ / OME / plain) and atomic TIFF writing with voxel size."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io.atomic import atomic_output
from napari_neuroseg.io.formats import TIFF_SUFFIXES, file_stem
from napari_neuroseg.io.volume import (
    Volume,
    check_scale,
    guess_axes,
    normalize_axes,
    spatial_scale,
)

__all__ = ["open_tiff_array", "read_tiff", "write_tiff", "tiff_series_keys", "TIFF_SUFFIXES"]


_IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32)
_UNIT_ALIASES = {"micron": "micrometer", "um": "micrometer", "µm": "micrometer", "\\u00B5m": "micrometer"}


class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - trivial
        self.messages.append(record.getMessage())


def _corrupt(path: Path, detail: str) -> NeurosegError:
    return NeurosegError(
        f"the TIFF file is corrupt or truncated ({detail})",
        path=path,
        fix="re-export or re-copy the file (it may be incomplete); open it in Fiji to check",
    )


def _open(path: Path):
    import tifffile

    if not path.is_file():
        raise NeurosegError("file not found", path=path, fix="check the path")
    if path.stat().st_size < 8:
        raise _corrupt(path, "file is too short to be a TIFF")
    logger = logging.getLogger("tifffile")
    cap = _LogCapture()
    logger.addHandler(cap)
    try:
        tif = tifffile.TiffFile(path)
        series = tif.series  # parses pages; corrupt structures log warnings
        pages = len(tif.pages)
    except (tifffile.TiffFileError, ValueError, OSError, EOFError, KeyError, IndexError) as err:
        raise _corrupt(path, str(err) or type(err).__name__) from err
    finally:
        logger.removeHandler(cap)
    bad = [m for m in cap.messages if re.search(r"corrupt|invalid|truncat|unexpected end", m, re.I)]
    if bad:
        tif.close()
        raise _corrupt(path, bad[0].split("\n")[0][:160])
    if not series:
        tif.close()
        raise _corrupt(path, "no image data found")
    ij = tif.imagej_metadata or {}
    if ij.get("images") and int(ij["images"]) > pages and not tif.pages[0].is_contiguous:
        tif.close()
        raise _corrupt(path, f"ImageJ header promises {ij['images']} images, file has {pages}")
    # Every strip/tile must lie inside the file.
    size = path.stat().st_size
    for page in tif.pages:
        offsets = getattr(page, "dataoffsets", ()) or ()
        counts = getattr(page, "databytecounts", ()) or ()
        if any(o + c > size for o, c in zip(offsets, counts) if c):
            tif.close()
            raise _corrupt(path, f"image data ends beyond the end of the file ({size} bytes)")
    # ImageJ hyperstacks > 4 GB store contiguous data without all page headers.
    if tif.pages[0].is_contiguous and ij.get("images"):
        s0 = series[0]
        nbytes = int(np.prod(s0.shape)) * np.dtype(s0.dtype).itemsize
        off = tif.pages[0].dataoffsets[0]
        if off + nbytes > size:
            tif.close()
            raise _corrupt(path, f"the {nbytes}-byte image data ends beyond the end of the file ({size} bytes)")
    return tif


def tiff_series_keys(path: str | Path) -> list[str]:
    """The image series in a TIFF as keys ``"0"``, ``"1"``, ...."""
    tif = _open(Path(path))
    with tif:
        return [str(i) for i in range(len(tif.series))]


def _scale_from_tiff(tif, series) -> tuple[dict[str, float], str]:
    """Voxel size per axis letter and the unit, from OME, ImageJ or resolution tags."""
    scale: dict[str, float] = {}
    unit = "micrometer"
    if tif.is_ome and tif.ome_metadata:
        try:
            import xml.etree.ElementTree as ET

            root = ET.fromstring(tif.ome_metadata)
            pix = next(el for el in root.iter() if el.tag.endswith("Pixels"))
            for a in "XYZ":
                v = pix.get(f"PhysicalSize{a}")
                if v is not None:
                    scale[a] = float(v)
            u = pix.get("PhysicalSizeXUnit")
            if u:
                unit = _UNIT_ALIASES.get(u, u)
        except (StopIteration, ValueError, ET.ParseError):
            pass
    if not scale:
        page = tif.pages[0]
        ij = tif.imagej_metadata or {}
        try:
            xres = page.tags["XResolution"].value
            yres = page.tags["YResolution"].value
            # A resolution of 1 pixel per unit is the TIFF default: treat as unknown.
            if xres and xres[0] and xres != (1, 1):
                scale["X"] = xres[1] / xres[0]
            if yres and yres[0] and yres != (1, 1):
                scale["Y"] = yres[1] / yres[0]
        except KeyError:
            pass
        if ij.get("spacing"):
            scale["Z"] = float(ij["spacing"])
        if ij.get("unit"):
            u = str(ij["unit"])
            unit = _UNIT_ALIASES.get(u, u)
        elif ij:  # an ImageJ file without a unit: ImageJ itself says "pixel" (a ratio, not a size)
            unit = "pixel"
    return scale, unit


def open_tiff_array(path: str | Path, key: str | int | None = None):
    """Open one series of a TIFF for block reads without reading it.

    Returns ``(data, axes | None, scale_by_axis, unit, close)``: ``data`` is a read-only
    memory map when the pixels are stored uncompressed and contiguous, else a Zarr view that
    decodes only the tiles/strips a slice touches; ``axes`` are the stored axes when ImageJ/OME
    metadata says them; ``close`` releases the file. The file is checked as :func:`read_tiff`
    checks it (truncated or corrupt files raise a :class:`NeurosegError` here, not mid-read).
    """
    import tifffile
    import zarr

    path = Path(path)
    tif = _open(path)
    with tif:
        try:
            index = 0 if key in (None, "") else int(key)
            series = tif.series[index]
        except (ValueError, IndexError):
            raise NeurosegError(
                f"the TIFF has no series {key!r}", path=path,
                fix=f"use one of the series {[str(i) for i in range(len(tif.series))]}",
            ) from None
        scale_by_axis, unit = _scale_from_tiff(tif, series)
        axes = series.axes.upper() if (tif.is_imagej or tif.is_ome) else None
    if index == 0:
        try:
            return tifffile.memmap(path, mode="r"), axes, scale_by_axis, unit, lambda: None
        except ValueError:  # compressed or not contiguous: decode tile by tile through Zarr
            pass
    store = tifffile.imread(path, aszarr=True, series=index)
    node = zarr.open(store, mode="r")
    return (node if hasattr(node, "shape") else node["0"]), axes, scale_by_axis, unit, store.close


def read_tiff(
    path: str | Path, key: str | int | None = None, *, lazy: bool = False, axes: str | None = None
) -> Volume:
    """Read one series of a TIFF as a :class:`Volume` (channels first, scale from metadata).

    Axes come from ImageJ or OME metadata; without them they are guessed from the shape
    (:func:`~napari_neuroseg.io.volume.guess_axes`) and ``meta["axes_guessed"]`` is True.
    ``axes`` overrides both. ``key`` selects a series (default ``0``). With ``lazy`` the data is
    a dask array backed by the file (read chunk by chunk).
    """
    path = Path(path)
    tif = _open(path)
    try:
        index = 0 if key in (None, "") else key
        try:
            series = tif.series[int(index)]
        except (ValueError, IndexError):
            raise NeurosegError(
                f"the TIFF has no series {key!r}",
                path=path,
                fix=f"use one of the series {[str(i) for i in range(len(tif.series))]}",
            ) from None
        src_axes = series.axes.upper()
        known = tif.is_imagej or tif.is_ome
        guessed = False
        shape = tuple(int(s) for s in series.shape)
        if axes:
            use_axes = axes.upper()
        elif known and set(src_axes) <= set("TCZYXS"):
            use_axes = src_axes
        elif src_axes.endswith("YXS") and len(shape) in (3, 4):
            # Interleaved RGB(A): samples are channels.
            use_axes = ("Z" if len(shape) == 4 else "") + "YXC"
        else:
            use_axes = guess_axes(shape, path)
            guessed = True
        scale_by_axis, unit = _scale_from_tiff(tif, series)
        if lazy:
            import dask.array as da
            import zarr

            store = series.aszarr()
            z = zarr.open(store, mode="r")
            data = da.from_zarr(z) if hasattr(z, "shape") else da.from_zarr(z["0"])
            meta_extra = {"_store": store}
        else:
            try:
                data = series.asarray()
            except Exception as err:  # noqa: BLE001 - any decode failure means a broken file
                raise _corrupt(path, str(err) or type(err).__name__) from err
            meta_extra = {}
        if tuple(data.shape) != shape:  # squeezed/expanded differently: trust data
            shape = tuple(data.shape)
            if not axes and guessed:
                use_axes = guess_axes(shape, path)
        data, norm_axes = normalize_axes(data, use_axes, path)
        meta = {
            "format": "tiff",
            "source_axes": src_axes if known else use_axes,
            "axes_guessed": guessed,
            "unit": unit,
            "imagej": bool(tif.is_imagej),
            "ome": bool(tif.is_ome),
            **meta_extra,
        }
        return Volume(
            data=data,
            axes=norm_axes,
            scale=spatial_scale(norm_axes, scale_by_axis),
            name=file_stem(path),
            meta=meta,
        )
    finally:
        if not lazy:
            tif.close()


def _tiff_dtype(data: Any, path: Path) -> np.dtype:
    dtype = np.dtype(data.dtype)
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if dtype in (np.int64, np.uint64):
        # OME/ImageJ have no 64-bit integers: narrow when the values allow it.
        if data.size == 0:
            return np.dtype(np.uint32)
        lo, hi = int(np.min(data)), int(np.max(data))
        if lo >= 0 and hi <= np.iinfo(np.uint32).max:
            return np.dtype(np.uint32)
        if lo >= np.iinfo(np.int32).min and hi <= np.iinfo(np.int32).max:
            return np.dtype(np.int32)
        raise NeurosegError(
            f"values {lo}..{hi} do not fit a 32-bit TIFF", path=path, fix="relabel the ids or write OME-Zarr"
        )
    if dtype.kind not in "uif" or dtype.itemsize > 8 or dtype == np.float16:
        if dtype == np.float16:
            return np.dtype(np.float32)
        raise NeurosegError(f"dtype {dtype} cannot be written to TIFF", path=path, fix="cast to uint16 or float32")
    return dtype


def _default_axes(axes: str | None, ndim: int) -> str:
    """``None`` or the default ``"ZYX"`` on non-3D data means the usual axes for ``ndim``."""
    if axes is None or (axes.upper() == "ZYX" and ndim != 3):
        return {2: "YX", 3: "ZYX", 4: "CZYX", 5: "TCZYX"}.get(ndim, axes or "ZYX")
    return axes.upper()


def write_tiff(
    path: str | Path,
    data: Any,
    *,
    axes: str | None = "ZYX",
    scale: tuple[float, ...] | None = None,
    unit: str = "micrometer",
    compression: str | None = "zlib",
) -> Path:
    """Write ``data`` to a TIFF atomically, with its voxel size.

    ``axes`` names the axes of ``data`` (``ZYX``, ``CZYX``, ``ZCYX``, ``YX``, ``CYX``...);
    the default ``"ZYX"`` (or None) stands for ``YX``/``ZYX``/``CZYX`` by the number of dims.
    ``scale`` is the voxel size of its spatial axes in (Z, Y, X) order. uint8/uint16/float32
    data is written as an ImageJ hyperstack (``spacing`` + X/Y resolution, opens in Fiji);
    other dtypes (e.g. uint32/int32 labels) as OME-TIFF with ``PhysicalSize*``. 64-bit integer
    labels are narrowed to 32 bits when the ids fit. Singleton axes are not kept by TIFF
    readers (a 1-channel CZYX stack reads back as ZYX). Returns the path written.
    """
    import tifffile

    path = Path(path)
    data = np.asarray(data)
    axes = _default_axes(axes, data.ndim)
    if len(axes) != data.ndim or len(set(axes)) != len(axes) or not set(axes) <= set("TCZYX"):
        raise NeurosegError(
            f"axes {axes!r} do not fit data of shape {data.shape}",
            path=path,
            fix="pass axes with one letter per dimension, e.g. 'ZYX' or 'CZYX'",
        )
    spatial = "".join(a for a in axes if a in "ZYX")
    sz = dict(zip(spatial, check_scale(scale, spatial, path)))
    dtype = _tiff_dtype(data, path)
    if dtype != data.dtype:
        data = data.astype(dtype)
    # tifffile's ImageJ writer mistakes a last axis of length 1 for samples: use OME there.
    imagej = dtype in [np.dtype(d) for d in _IMAGEJ_DTYPES] and data.shape[-1] > 1
    res = (1.0 / sz.get("X", 1.0), 1.0 / sz.get("Y", 1.0))
    kwargs: dict[str, Any] = {"compression": compression} if compression else {}
    with atomic_output(path) as tmp:
        if imagej:
            ij_order = "".join(a for a in "TZCYX" if a in axes)
            arr = data.transpose([axes.index(a) for a in ij_order]) if ij_order != axes else data
            meta: dict[str, Any] = {"axes": ij_order, "unit": "um" if unit == "micrometer" else unit}
            if "Z" in sz:
                meta["spacing"] = sz["Z"]
            tifffile.imwrite(tmp, arr, imagej=True, metadata=meta, resolution=res, **kwargs)
        else:
            meta = {"axes": axes}
            for a in "XYZ":
                if a in sz:
                    meta[f"PhysicalSize{a}"] = sz[a]
                    meta[f"PhysicalSize{a}Unit"] = "µm" if unit == "micrometer" else unit
            tifffile.imwrite(
                tmp, data, ome=True, photometric="minisblack", metadata=meta, resolution=res, **kwargs
            )
    return path
