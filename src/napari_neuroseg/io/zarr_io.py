"""Zarr v2/v3 arrays and groups, and OME-Zarr (NGFF v0.4 write; v0.4/v0.5 read)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io.atomic import atomic_output
from napari_neuroseg.io.checks import as_label_array
from napari_neuroseg.io.formats import ZARR_SUFFIXES, file_stem
from napari_neuroseg.io.volume import (
    Volume,
    check_scale,
    guess_axes,
    normalize_axes,
    spatial_scale,
)

__all__ = [
    "is_zarr",
    "is_zarr_array",
    "is_ome_zarr",
    "open_zarr",
    "zarr_keys",
    "read_zarr_image",
    "read_zarr_array",
    "ome_multiscales",
    "ngff_multiscales",
    "create_label_store",
    "write_zarr",
    "write_ome_zarr",
    "default_chunks",
]

_META_FILES = (".zgroup", ".zarray", "zarr.json")
_SCALE_ATTRS = ("scale", "voxel_size", "resolution", "element_size_um", "spacing")


def is_zarr(path: str | Path) -> bool:
    """True for a folder that is a Zarr store (v2 or v3 metadata, or a ``.zarr`` name)."""
    p = Path(path)
    if not p.is_dir():
        return False
    return p.suffix.lower() in ZARR_SUFFIXES or any((p / m).is_file() for m in _META_FILES)


def is_zarr_array(data: Any) -> bool:
    """True for an opened Zarr array (data stored on disk, e.g. a layer opened from a store)."""
    try:
        import zarr
    except ImportError:  # pragma: no cover
        return False
    return isinstance(data, zarr.Array)


def open_zarr(path: str | Path, key: str | None = None, *, mode: str = "r"):
    """Open a Zarr store (v2 or v3) and return the group or array at ``key``."""
    import zarr

    p = Path(path)
    if not p.exists():
        raise NeurosegError("file or folder not found", path=p, fix="check the path")
    if not any((p / m).is_file() for m in _META_FILES):
        raise NeurosegError(
            "not a Zarr store (no .zgroup/.zarray/zarr.json inside)",
            path=p,
            fix="point at the folder of a Zarr store (the one holding .zgroup/.zarray or zarr.json)",
        )
    try:
        node = zarr.open(str(p), mode=mode)
    except Exception as err:  # noqa: BLE001 - zarr raises many types for broken metadata
        raise NeurosegError(
            f"cannot open the Zarr store ({type(err).__name__}: {err})",
            path=p,
            fix="check that the store is complete and its metadata files are valid JSON",
        ) from err
    if key in (None, "", "/"):
        return node
    key = key.strip("/")
    if not hasattr(node, "members"):
        raise NeurosegError(
            f"the Zarr store is a single array, it has no key {key!r}", path=p, fix="leave out the key"
        )
    try:
        return node[key]
    except KeyError:
        raise NeurosegError(
            f"the Zarr group has no key {key!r}; it contains {zarr_keys(p) or 'no arrays'}",
            path=p,
            fix="pass one of the listed keys (--key)",
        ) from None


def zarr_keys(path: str | Path) -> list[str]:
    """All array paths inside a Zarr store (``[""]`` never: a root array gives ``[]``)."""
    node = open_zarr(path)
    if not hasattr(node, "members"):
        return []
    return sorted(k for k, v in node.members(max_depth=None) if not hasattr(v, "members"))


def _attrs(node) -> dict:
    try:
        return dict(node.attrs)
    except Exception:  # noqa: BLE001
        return {}


def ome_multiscales(node) -> list[dict] | None:
    """The NGFF ``multiscales`` list of a group (v0.4 top level, v0.5 under ``ome``), or None."""
    if not hasattr(node, "members"):
        return None
    attrs = _attrs(node)
    ms = attrs.get("multiscales")
    if ms is None and isinstance(attrs.get("ome"), Mapping):
        ms = attrs["ome"].get("multiscales")
    if isinstance(ms, list) and ms and isinstance(ms[0], Mapping) and ms[0].get("datasets"):
        return ms
    return None


def is_ome_zarr(path: str | Path) -> bool:
    """True if ``path`` is a Zarr group with NGFF multiscales metadata."""
    if not is_zarr(path):
        return False
    try:
        return ome_multiscales(open_zarr(path)) is not None
    except NeurosegError:
        return False


def _ome_axes(ms: dict, ndim: int) -> str | None:
    axes = ms.get("axes")
    if not axes:
        return {5: "TCZYX", 4: "CZYX", 3: "ZYX", 2: "YX"}.get(ndim)  # v0.1/0.2 implied order
    names = [(a["name"] if isinstance(a, Mapping) else str(a)).upper() for a in axes]
    return "".join(n[0] for n in names)


def _ome_scale(ms: dict, dataset: dict, ndim: int) -> list[float]:
    scale = [1.0] * ndim
    for transforms in (dataset.get("coordinateTransformations") or [], ms.get("coordinateTransformations") or []):
        for t in transforms:
            if t.get("type") == "scale" and len(t.get("scale", [])) == ndim:
                scale = [a * float(b) for a, b in zip(scale, t["scale"])]
    return scale


def _ome_unit(ms: dict) -> str:
    for a in ms.get("axes") or []:
        if isinstance(a, Mapping) and a.get("type") == "space" and a.get("unit"):
            return str(a["unit"])
    return "micrometer"


def _load(arr, lazy: bool):
    if lazy:
        import dask.array as da

        return da.from_zarr(arr)
    return arr[...]


def _attr_axes(arr) -> str | None:
    attrs = _attrs(arr)
    axes = attrs.get("axes") or attrs.get("_ARRAY_DIMENSIONS")
    if axes is None:
        names = getattr(getattr(arr, "metadata", None), "dimension_names", None)
        if names and all(names):
            axes = list(names)
    if isinstance(axes, str):
        return axes.upper()
    if isinstance(axes, list) and axes:
        letters = "".join((a["name"] if isinstance(a, Mapping) else str(a))[:1].upper() for a in axes)
        return letters if len(letters) == arr.ndim and set(letters) <= set("TCZYXS") else None
    return None


def _attr_scale(arr, axes: str) -> dict[str, float]:
    attrs = _attrs(arr)
    for name in _SCALE_ATTRS:
        val = attrs.get(name)
        if isinstance(val, (list, tuple)) and all(isinstance(v, (int, float)) for v in val):
            spatial = [a for a in axes if a in "ZYX"]
            if len(val) == len(axes):
                return {a: float(v) for a, v in zip(axes, val) if a in "ZYX"}
            if len(val) == len(spatial):
                return dict(zip(spatial, map(float, val)))
    return {}


def _find_multiscale_owner(root, key: str):
    """If ``key`` is a level of a multiscales group, return (multiscales, dataset dict)."""
    parent_key, _, leaf = key.rpartition("/")
    try:
        parent = root[parent_key] if parent_key else root
    except KeyError:
        return None
    ms = ome_multiscales(parent)
    if not ms:
        return None
    for d in ms[0]["datasets"]:
        if str(d.get("path")).strip("/") == leaf:
            return ms[0], d
    return None


def _resolve_image_key(root, path: Path) -> str | None:
    """Choose the array to show from a group with no key given."""
    ms = ome_multiscales(root)
    if ms:
        return str(ms[0]["datasets"][0]["path"]).strip("/")
    keys = sorted(k for k, v in root.members(max_depth=None) if not hasattr(v, "members"))
    if "volumes/raw" in keys:
        return "volumes/raw"
    if len(keys) == 1:
        return keys[0]
    raise NeurosegError(
        f"the Zarr group holds {len(keys)} arrays and no key was given: {keys or 'none'}",
        path=path,
        fix="pass the key of the array to open (--key), e.g. " + (repr(keys[0]) if keys else "'volumes/raw'"),
    )


def read_zarr_array(path: str | Path, key: str | None = None, *, image: bool = True):
    """Resolve ``key`` in a Zarr store to ``(array, axes|None, scale_by_axis, unit, key)``.

    Groups resolve to OME-Zarr level 0, ``volumes/raw`` (FISBe), or their only array.
    """
    p = Path(path)
    root = open_zarr(p)
    if not hasattr(root, "members"):
        if key not in (None, "", "/"):
            open_zarr(p, key)  # raises the "single array" error
        axes = _attr_axes(root)
        return root, axes, _attr_scale(root, axes) if axes else {}, "micrometer", ""
    if key in (None, "", "/"):
        key = _resolve_image_key(root, p)
    key = key.strip("/")
    node = open_zarr(p, key)
    if hasattr(node, "members"):
        ms = ome_multiscales(node)
        if ms:
            key = f"{key}/{str(ms[0]['datasets'][0]['path']).strip('/')}"
            node = open_zarr(p, key)
        else:
            inner = sorted(k for k, v in node.members(max_depth=None) if not hasattr(v, "members"))
            if len(inner) != 1:
                raise NeurosegError(
                    f"{key!r} is a group, not an array; arrays in it: {[f'{key}/{k}' for k in inner] or 'none'}",
                    path=p,
                    fix="pass the key of one array (--key)",
                )
            key = f"{key}/{inner[0]}"
            node = open_zarr(p, key)
    owner = _find_multiscale_owner(root, key)
    if owner:
        ms, dataset = owner
        axes = _ome_axes(ms, node.ndim)
        scale = _ome_scale(ms, dataset, node.ndim)
        return node, axes, {a: s for a, s in zip(axes or "", scale) if a in "ZYX"}, _ome_unit(ms), key
    axes = _attr_axes(node)
    return node, axes, _attr_scale(node, axes) if axes else {}, "micrometer", key


def read_zarr_image(
    path: str | Path, key: str | None = None, *, lazy: bool = False, axes: str | None = None
) -> Volume:
    """Read an image from a Zarr/OME-Zarr store as a :class:`Volume` (see :func:`read_image`)."""
    p = Path(path)
    arr, meta_axes, scale_by_axis, unit, key = read_zarr_array(p, key)
    guessed = False
    if axes:
        use_axes = axes.upper()
    elif meta_axes:
        use_axes = meta_axes
    else:
        use_axes = guess_axes(tuple(arr.shape), p)
        guessed = True
    data = _load(arr, lazy)
    src_axes = use_axes
    data, norm_axes = normalize_axes(data, use_axes, p)
    name = file_stem(p)
    if key and key not in ("0", "volumes/raw"):
        name = f"{name}:{key}"
    return Volume(
        data=data,
        axes=norm_axes,
        scale=spatial_scale(norm_axes, scale_by_axis),
        name=name,
        meta={
            "format": "ome-zarr" if is_ome_zarr(p) else "zarr",
            "key": key,
            "source_axes": src_axes,
            "axes_guessed": guessed,
            "unit": unit,
            "zarr_format": int(arr.metadata.zarr_format),
        },
    )


def default_chunks(shape: tuple[int, ...], axes: str | None = None) -> tuple[int, ...]:
    """Chunks of about 1-4 MiB: one channel, up to 64 Z, up to 256 Y/X."""
    axes = axes or _fallback_axes(len(shape))
    out = []
    for s, a in zip(shape, axes):
        limit = {"T": 1, "C": 1, "Z": 64}.get(a, 256)
        out.append(max(1, min(int(s), limit)))
    return tuple(out)


def _fallback_axes(ndim: int) -> str:
    return ("TCZYX"[-ndim:]) if ndim <= 5 else "Q" * (ndim - 3) + "ZYX"


def _compressor(zarr_format: int):
    if zarr_format == 2:
        import numcodecs

        return numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE)
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


def _check_writable_dtype(data: Any, path: Path) -> np.dtype:
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "biuf":
        raise NeurosegError(f"dtype {dtype} cannot be written to Zarr here", path=path, fix="cast to a numeric type")
    return dtype


def create_zarr_array(
    group, name: str, data: Any, *, chunks: tuple[int, ...] | None, zarr_format: int, attrs: dict | None = None,
    dimension_separator: str | None = None,
):
    """Create ``group[name]`` and copy ``data`` (numpy or dask) into it chunk by chunk."""
    shape = tuple(int(s) for s in data.shape)
    chunks = tuple(chunks) if chunks is not None else default_chunks(shape)
    chunks = tuple(max(1, min(c, s)) for c, s in zip(chunks, shape)) if shape else ()
    kwargs: dict[str, Any] = {}
    if zarr_format == 2 and dimension_separator:
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": dimension_separator}
    arr = group.create_array(
        name,
        shape=shape,
        chunks=chunks,
        dtype=np.dtype(data.dtype),
        compressors=_compressor(zarr_format),
        fill_value=0,
        attributes=attrs or {},
        **kwargs,
    )
    if isinstance(data, np.ndarray):
        arr[...] = data
    else:
        import dask.array as da

        darr = data if isinstance(data, da.Array) else da.from_array(data, chunks=chunks)
        darr = darr.rechunk(chunks)
        da.store(darr, arr, lock=False, compute=True)
    return arr


def write_zarr(
    path: str | Path,
    data: Any,
    *,
    key: str | None = None,
    axes: str | None = None,
    scale: tuple[float, ...] | None = None,
    chunks: tuple[int, ...] | None = None,
    zarr_format: int = 3,
    attrs: dict | None = None,
) -> Path:
    """Write an array to a new Zarr store atomically.

    Without ``key`` the store is a single array; with ``key`` it is a group holding the array
    at ``key``. ``axes`` and ``scale`` (voxel size of the spatial axes, Z,Y,X order) are stored
    as attributes ``axes`` / ``scale`` and read back by :func:`read_image`. ``data`` may be a
    dask array (written chunk by chunk).
    """
    import zarr

    p = Path(path)
    if zarr_format not in (2, 3):
        raise NeurosegError(f"zarr_format must be 2 or 3, not {zarr_format}", path=p, fix="pass 2 or 3")
    if not hasattr(data, "shape") or not hasattr(data, "dtype"):
        data = np.asarray(data)
    _check_writable_dtype(data, p)
    if np.dtype(data.dtype) == np.bool_:
        data = data.astype(np.uint8)
    meta = dict(attrs or {})
    if axes:
        axes = axes.upper()
        if len(axes) != data.ndim:
            raise NeurosegError(f"axes {axes!r} do not fit shape {tuple(data.shape)}", path=p, fix="one letter per axis")
        meta["axes"] = axes
    if scale is not None:
        meta["scale"] = [float(s) for s in scale]
    with atomic_output(p) as tmp:
        if key:
            group = zarr.open_group(str(tmp), mode="w", zarr_format=zarr_format)
            create_zarr_array(group, key.strip("/"), data, chunks=chunks or default_chunks(data.shape, axes),
                              zarr_format=zarr_format, attrs=meta)
        else:
            arr = zarr.create_array(
                str(tmp),
                shape=tuple(data.shape),
                chunks=tuple(max(1, min(c, s)) for c, s in zip(chunks or default_chunks(data.shape, axes), data.shape)),
                dtype=np.dtype(data.dtype),
                compressors=_compressor(zarr_format),
                fill_value=0,
                zarr_format=zarr_format,
                attributes=meta,
            )
            if isinstance(data, np.ndarray):
                arr[...] = data
            else:
                import dask.array as da

                da.store(da.asarray(data).rechunk(arr.chunks), arr, lock=False)
    return p


# ---------------------------------------------------------------------------------- OME-Zarr
def _ome_axes_meta(axes: str, unit: str) -> list[dict]:
    out = []
    for a in axes:
        if a == "C":
            out.append({"name": "c", "type": "channel"})
        elif a == "T":
            out.append({"name": "t", "type": "time"})
        else:
            out.append({"name": a.lower(), "type": "space", "unit": unit})
    return out


def _downsample(data: Any, axes: str, *, labels: bool) -> Any:
    """Halve Y and X (Z is kept: light-sheet/confocal Z is usually coarser already).

    Images: 2×2 mean; labels: every other voxel. An odd last row/column is dropped in both, so
    image and label levels keep the same shape."""
    index = tuple(slice(0, (int(s) // 2) * 2, 2) if a in "YX" else slice(None) for a, s in zip(axes, data.shape))
    if labels or np.dtype(data.dtype).kind == "b":
        return data[index]
    import dask.array as da

    d = da.asarray(data)
    factors = {i: 2 for i, a in enumerate(axes) if a in "YX" and d.shape[i] >= 2}
    if not factors:
        return data
    out = da.coarsen(np.mean, d, factors, trim_excess=True)
    if np.issubdtype(np.dtype(data.dtype), np.integer):
        out = da.round(out)
    out = out.astype(data.dtype)
    return out if not isinstance(data, np.ndarray) else out.compute()


def _write_multiscale(
    group, data: Any, *, axes: str, scale: tuple[float, ...], unit: str, n_levels: int, labels: bool,
    chunks: tuple[int, ...] | None, name: str,
) -> None:
    datasets = []
    level = data
    full_scale = [1.0 if a in "CT" else None for a in axes]
    spatial = iter(scale)
    full_scale = [s if s is not None else float(next(spatial)) for s in full_scale]
    for i in range(max(1, n_levels)):
        if i > 0:
            if any(level.shape[axes.index(a)] < 2 for a in "YX"):
                break
            level = _downsample(level, axes, labels=labels)
            full_scale = [s * 2 if a in "YX" else s for s, a in zip(full_scale, axes)]
        create_zarr_array(group, str(i), level, chunks=chunks or default_chunks(level.shape, axes),
                          zarr_format=2, dimension_separator="/")
        datasets.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": list(full_scale)}]})
    group.attrs["multiscales"] = ngff_multiscales(name, axes, unit, datasets, "nearest" if labels else "mean")


def ngff_multiscales(name: str, axes: str, unit: str, datasets: list[dict], kind: str | None = None) -> list[dict]:
    """The NGFF 0.4 ``multiscales`` attribute written for an image (read by :func:`ome_multiscales`).

    ``datasets``: one ``{"path", "coordinateTransformations"}`` per level; ``kind``: the
    downsampling type (``"mean"``, ``"nearest"``), left out when None.
    """
    ms: dict[str, Any] = {"version": "0.4", "name": name, "axes": _ome_axes_meta(axes, unit), "datasets": datasets}
    if kind is not None:
        ms["type"] = kind
    return [ms]


def create_label_store(
    path: str | Path,
    shape: tuple[int, int, int],
    chunks: tuple[int, int, int],
    fmt: str,
    *,
    dtype: Any = np.uint32,
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0),
    name: str = "labels",
    mode: str = "w",
):
    """Create (or, ``mode="r+"``, reopen) an empty chunked Zarr v2 ZYX label array; returns it.

    For writers that fill a volume larger than memory chunk by chunk (batch's blockwise runs).
    ``fmt="zarr"``: the array at the store root (``axes``/``scale`` attributes, as
    :func:`write_zarr`); ``"ome-zarr"``: an NGFF 0.4 label image with the array at ``"0"`` (as
    :func:`write_ome_zarr` with ``is_label``). The caller makes it atomic (it writes a temporary
    store and moves it into place, see :mod:`~napari_neuroseg.io.atomic`).
    """
    import zarr

    path = str(path)
    if fmt == "zarr":
        if mode == "r+":
            return zarr.open_array(path, mode="r+")
        return zarr.open_array(
            path, mode="w", shape=shape, chunks=chunks, dtype=dtype, fill_value=0, zarr_format=2,
            attributes={"axes": "ZYX", "scale": [float(s) for s in scale]},
        )
    if fmt == "ome-zarr":
        if mode == "r+":
            return zarr.open_group(path, mode="r+")["0"]
        g = zarr.open_group(path, mode="w", zarr_format=2)
        arr = g.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
        level0 = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [float(s) for s in scale]}]}]
        g.attrs["multiscales"] = ngff_multiscales(name, "ZYX", "micrometer", level0)
        g.attrs["image-label"] = {"version": "0.4"}
        return arr
    raise NeurosegError(
        f"format {fmt!r} cannot be written chunk by chunk",
        path=path,
        fix="use --format zarr or --format ome-zarr for blockwise runs",
    )


def _label_items(labels: Any, spatial_shape: tuple[int, ...], path: Path) -> dict[str, Any]:
    """``write_ome_zarr``'s ``labels`` as ``{name: label array}``, each checked (integer ids, the
    image's spatial shape)."""
    items: dict[str, Any] = {}
    if labels is not None:
        items = dict(labels) if isinstance(labels, Mapping) else {"labels": labels}
    for lname, lab in items.items():
        if not hasattr(lab, "shape") or not hasattr(lab, "dtype"):
            lab = np.asarray(lab)
        lab = as_label_array(lab, path, what=f"label volume {lname!r}")
        if tuple(int(s) for s in lab.shape) != spatial_shape:
            raise NeurosegError(
                f"label volume {lname!r} has shape {tuple(lab.shape)}, the image's spatial shape is {spatial_shape}",
                path=path,
                fix="labels must cover the image voxel for voxel (same Z, Y, X size)",
            )
        items[lname] = lab
    return items


def write_ome_zarr(
    path: str | Path,
    data: Any,
    *,
    axes: str | None = "ZYX",
    scale: tuple[float, ...] | None = None,
    labels: Any | Mapping[str, Any] | None = None,
    n_levels: int = 1,
    unit: str = "micrometer",
    chunks: tuple[int, ...] | None = None,
    name: str | None = None,
    is_label: bool = False,
) -> Path:
    """Write an OME-Zarr (NGFF v0.4, Zarr v2) image atomically, with optional ``labels/``.

    ``axes`` names the axes of ``data`` (any order of T/C/Z/Y/X, stored in NGFF order TCZYX;
    the default ``"ZYX"`` on 2D/4D data means ``YX``/``CZYX``);
    ``scale`` is the voxel size of the spatial axes. ``n_levels`` > 1 adds a pyramid halving
    Y and X per level (mean for images, every other voxel for labels). ``labels`` is a label
    volume (spatial axes only, same spatial shape) stored as ``labels/labels``, or a mapping
    ``name -> volume`` for several. With ``is_label`` the main image itself is a label volume
    (nearest-neighbour pyramid, integer dtype checked). ``data`` may be a dask array.
    """
    import zarr

    p = Path(path)
    if not hasattr(data, "shape") or not hasattr(data, "dtype"):
        data = np.asarray(data)
    _check_writable_dtype(data, p)
    if is_label:
        data = as_label_array(data, p)
    elif np.dtype(data.dtype) == np.bool_:
        data = data.astype(np.uint8)
    from napari_neuroseg.io.tiff import _default_axes

    axes = _default_axes(axes, data.ndim)
    if len(axes) != data.ndim or len(set(axes)) != len(axes) or not set(axes) <= set("TCZYX") or not {"Y", "X"} <= set(axes):
        raise NeurosegError(
            f"axes {axes!r} do not fit data of shape {tuple(data.shape)}",
            path=p,
            fix="pass axes with one letter per dimension from T, C, Z, Y, X, e.g. 'CZYX'",
        )
    # NGFF requires the order T, C, then space (Z, Y, X).
    ngff = "".join(a for a in "TCZYX" if a in axes)
    if ngff != axes:
        data = data.transpose([axes.index(a) for a in ngff])
        axes = ngff
    spatial = "".join(a for a in axes if a in "ZYX")
    spatial_shape = tuple(int(data.shape[axes.index(a)]) for a in spatial)
    scale = check_scale(scale, spatial, p)
    label_items = _label_items(labels, spatial_shape, p)
    name = name or (p.name[: -len(".zarr")] if p.name.lower().endswith(".zarr") else p.name)
    with atomic_output(p) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        _write_multiscale(root, data, axes=axes, scale=scale, unit=unit, n_levels=n_levels, labels=is_label,
                          chunks=chunks, name=name)
        if is_label:
            root.attrs["image-label"] = {"version": "0.4"}
        if label_items:
            lgroup = root.create_group("labels")
            lgroup.attrs["labels"] = list(label_items)
            for lname, lab in label_items.items():
                g = lgroup.create_group(lname)
                _write_multiscale(g, lab, axes=spatial, scale=scale, unit=unit, n_levels=n_levels, labels=True,
                                  chunks=None, name=lname)
                g.attrs["image-label"] = {"version": "0.4", "source": {"image": "../../"}}
    return p


def ome_label_names(path: str | Path) -> list[str]:
    """Names listed in the ``labels/`` group of an OME-Zarr image (empty if none)."""
    root = open_zarr(path)
    if not hasattr(root, "members"):
        return []
    try:
        lg = root["labels"]
    except KeyError:
        return []
    names = _attrs(lg).get("labels")
    if isinstance(names, list):
        return [str(n) for n in names]
    return sorted(k for k, v in lg.members() if hasattr(v, "members"))

