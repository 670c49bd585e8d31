"""napari reader contributions: TIFF, Zarr / OME-Zarr / FISBe, HDF5.

Thin wrappers over :mod:`napari_neuroseg.io`. Each ``get_reader_*`` returns ``None`` for a path
it cannot handle (napari then tries other readers) and a reader function otherwise; a broken
file of the right format raises :class:`~napari_neuroseg.errors.NeurosegError`, which napari
shows as a notification.

Which arrays become Labels layers: see :func:`napari_neuroseg._napari._layers.looks_like_labels`
(label-ish names or 32/64-bit integers) — documented in ``docs/getting-started.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg._napari._layers import (
    EAGER_BYTES,
    EAGER_LABEL_BYTES,
    LayerData,
    fisbe_instance_layers,
    fisbe_raw_layer,
    image_layer,
    labels_layer,
    looks_like_labels,
    maybe_load,
)
from napari_neuroseg.io.formats import HDF5_SUFFIXES, TIFF_SUFFIXES, file_stem
from napari_neuroseg.io.zarr_io import is_zarr

__all__ = ["get_reader_tiff", "get_reader_zarr", "get_reader_hdf5", "read_tiff", "read_zarr", "read_hdf5"]

ReaderFunction = Callable[[Any], list[LayerData]]



def _single_path(path: str | Sequence[str]) -> str | None:
    if isinstance(path, (list, tuple)):
        return str(path[0]) if len(path) == 1 else None
    return str(path)


def _all_paths(path: str | Sequence[str]) -> list[Path]:
    return [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]


def _volume_layers(vol: Any, *, name: str | None = None, labels: bool | None = None) -> LayerData:
    """A layer from an io ``Volume``: Labels if ``labels`` (or guessed from name/dtype)."""
    name = name or vol.name
    if labels is None:
        labels = "C" not in vol.axes and looks_like_labels(name, vol.data.dtype)
    meta = {"source_format": vol.meta.get("format"), "unit": vol.meta.get("unit")}
    if vol.meta.get("axes_guessed"):
        meta["axes_guessed"] = True
    data = maybe_load(vol.data, EAGER_LABEL_BYTES if labels else EAGER_BYTES)
    if labels:
        from napari_neuroseg.io.checks import as_label_array

        data = as_label_array(data, name)
        return labels_layer(data, name=name, scale=vol.scale, metadata={**meta, "neuroseg_axes": vol.axes})
    return image_layer(data, name=name, axes=vol.axes, scale=vol.scale, metadata=meta)


# --------------------------------------------------------------------------------------- TIFF
def get_reader_tiff(path: str | Sequence[str]) -> ReaderFunction | None:
    """Reader for ``.tif``/``.tiff`` files (one or several; each becomes its own layer(s))."""
    paths = _all_paths(path)
    if not paths or not all(p.suffix.lower() in TIFF_SUFFIXES and p.is_file() for p in paths):
        return None
    return read_tiff


def read_tiff(path: str | Sequence[str]) -> list[LayerData]:
    """Open TIFF volume(s): axes from ImageJ/OME metadata (else guessed), voxel size → scale."""
    from napari_neuroseg.io import read_image

    out = []
    for p in _all_paths(path):
        vol = read_image(p, lazy=True)
        out.append(_volume_layers(vol, name=file_stem(p)))
    return out


# --------------------------------------------------------------------------------------- Zarr
def get_reader_zarr(path: str | Sequence[str]) -> ReaderFunction | None:
    """Reader for Zarr folders (v2/v3): FISBe layout, OME-Zarr (with ``labels/``) or plain."""
    single = _single_path(path)
    if single is None or not is_zarr(Path(single)):
        return None
    return read_zarr


def _ome_layers(p: Path, root: Any, ms: list[dict], name: str) -> list[LayerData]:
    from napari_neuroseg.io import read_image, read_labels
    from napari_neuroseg.io.zarr_io import ome_label_names

    levels = [str(d["path"]).strip("/") for d in ms[0]["datasets"]]
    is_label = "image-label" in dict(root.attrs) or "image-label" in dict(root.attrs).get("ome", {})
    vols = [read_image(p, key=lv, lazy=True) for lv in levels]
    meta = {"source_format": "ome-zarr", "unit": vols[0].meta.get("unit")}
    data: Any = [v.data for v in vols] if len(vols) > 1 else maybe_load(vols[0].data, EAGER_BYTES)
    out: list[LayerData] = []
    if is_label:
        if len(vols) == 1:
            data = maybe_load(read_labels(p, key=levels[0], lazy=True), EAGER_LABEL_BYTES)
        out.append(labels_layer(data, name=name, scale=vols[0].scale, metadata=meta))
    else:
        out.append(image_layer(data, name=name, axes=vols[0].axes, scale=vols[0].scale, metadata=meta))
    for lname in ome_label_names(p):
        lab = read_labels(p, key=f"labels/{lname}", lazy=True)
        out.append(labels_layer(maybe_load(lab, EAGER_LABEL_BYTES), name=f"{name} {lname}", scale=vols[0].scale,
                                metadata={"source_format": "ome-zarr", "ome_label": lname}))
    return out


def _fisbe_layers(p: Path, name: str) -> list[LayerData]:
    from napari_neuroseg.io import read_fisbe

    sample = read_fisbe(p, lazy=True)  # raw stays lazy if large; the stack is loaded below
    scale = getattr(sample, "scale", None)
    out: list[LayerData] = []
    if sample.raw is not None:
        out.append(fisbe_raw_layer(maybe_load(sample.raw, EAGER_BYTES), name=name, scale=scale))
    if sample.gt_instances is not None:
        out.extend(
            fisbe_instance_layers(
                np.asarray(sample.gt_instances), name=name, dim_neurons=list(sample.dim_neurons),
                scale=scale, source=str(p),
            )
        )
    return out


def _container_layers(p: Path, keys: list[str], name: str, kind: str) -> list[LayerData]:
    """One layer per array/dataset of a Zarr group or HDF5 file (images vs labels guessed)."""
    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.io import read_image, read_labels

    out: list[LayerData] = []
    skipped = []
    for key in keys:
        try:
            vol = read_image(p, key=key, lazy=True)
        except NeurosegError:
            skipped.append(key)  # e.g. 1D metadata arrays: not an image
            continue
        lname = f"{name}:{key}" if len(keys) > 1 else name
        if "C" in vol.axes and vol.ndim == 4 and "instances" in key.lower() and looks_like_labels(key, vol.dtype):
            # a FISBe-style (N, Z, Y, X) instance stack: one channel per neuron
            out.extend(fisbe_instance_layers(np.asarray(vol.data), name=lname, scale=vol.scale, source=str(p)))
            continue
        labels = "C" not in vol.axes and looks_like_labels(key, vol.data.dtype)
        if labels:
            data = maybe_load(read_labels(p, key=key, lazy=True), EAGER_LABEL_BYTES)
            out.append(labels_layer(data, name=lname, scale=vol.scale,
                                    metadata={"source_format": kind, "key": key}))
        else:
            out.append(_volume_layers(vol, name=lname, labels=False))
            out[-1][1]["metadata"]["key"] = key
    if not out:
        raise NeurosegError(
            f"no image or label volume found (arrays: {keys or 'none'}; unreadable: {skipped or 'none'})",
            path=p,
            fix="open a file holding at least one 2D-5D array",
        )
    return out


def read_zarr(path: str | Sequence[str]) -> list[LayerData]:
    """Open a Zarr store: FISBe → raw channels + instances (+ overlaps); OME-Zarr → image
    (multiscale if it has several levels) + its ``labels/``; other groups → one layer per array.
    """
    from napari_neuroseg.io import is_fisbe, list_keys, read_image
    from napari_neuroseg.io.zarr_io import ome_multiscales, open_zarr

    p = Path(_single_path(path) or "")
    name = file_stem(p)
    if is_fisbe(p):
        return _fisbe_layers(p, name)
    root = open_zarr(p)
    if not hasattr(root, "members"):  # a bare array
        return [_volume_layers(read_image(p, lazy=True), name=name)]
    ms = ome_multiscales(root)
    if ms:
        return _ome_layers(p, root, ms, name)
    return _container_layers(p, list_keys(p), name, "zarr")


# --------------------------------------------------------------------------------------- HDF5
def get_reader_hdf5(path: str | Sequence[str]) -> ReaderFunction | None:
    """Reader for ``.h5``/``.hdf``/``.hdf5`` files."""
    single = _single_path(path)
    if single is None:
        return None
    p = Path(single)
    if p.suffix.lower() not in HDF5_SUFFIXES or not p.is_file():
        return None
    return read_hdf5


def read_hdf5(path: str | Sequence[str]) -> list[LayerData]:
    """Open every dataset of an HDF5 file as a layer (FISBe ``volumes/gmm_label_cleaned`` and
    other label-named or 32/64-bit integer datasets as Labels)."""
    from napari_neuroseg.io import list_keys

    p = Path(_single_path(path) or "")
    return _container_layers(p, list_keys(p), file_stem(p), "hdf5")
