"""Batch inputs: find them (folder / glob / list) and open them lazily for block reads.

Supported: every format :mod:`napari_neuroseg.io` reads — TIFF (memory-mapped or decoded tile by
tile), Zarr arrays and groups, OME-Zarr (level 0), the FISBe layout (``volumes/raw``, or
``volumes/gt_instances`` for metric tasks) and HDF5 — opened by
:func:`napari_neuroseg.io.readers.open_array`; this module only adapts them to batch (ZYX or
CZYX, leading length-1 axes dropped, in-memory layers). Opening never reads the whole volume:
the returned array is sliced block by block. Problems are reported as
:class:`~napari_neuroseg.errors.NeurosegError` naming the file and the fix.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io.formats import file_stem
from napari_neuroseg.io.readers import detect_format, open_array
from napari_neuroseg.io.volume import spatial_scale

_MAGIC_GLOB = set("*?[")
#: io's format names -> batch's (``InputSpec.format``); ``.npy`` files are not batch inputs
_BATCH_FORMAT = {"tiff": "tif", "zarr": "zarr", "ome-zarr": "ome-zarr", "fisbe": "fisbe", "hdf5": "hdf5"}


@dataclass(frozen=True)
class InputSpec:
    """One batch input: a file path (or an in-memory array) and how to open it."""

    path: str
    format: str  # "tif" | "zarr" | "ome-zarr" | "fisbe" | "hdf5" | "array"
    name: str
    key: str | None = None
    array: Any = field(default=None, compare=False, repr=False)


@dataclass
class OpenedInput:
    """A lazily sliceable volume: ``data[..., z0:z1, y0:y1, x0:x1]`` reads only that block.

    ``scale`` is the voxel size (Z, Y, X) the file gives (1.0 where it says nothing), in
    ``meta["unit"]`` — the shape :func:`~napari_neuroseg.runtime.scale.voxel_size_from_volume` reads.
    """

    data: Any
    axes: str
    scale: tuple[float, float, float]
    spec: InputSpec
    _closers: list = field(default_factory=list, repr=False)
    meta: dict = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape[-3:])  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.data.shape)) * np.dtype(self.data.dtype).itemsize

    def read(
        self, spatial: tuple[slice, slice, slice] | None = None, *, run_id: str | None = None, cache_bytes: int = 0
    ) -> np.ndarray:
        """Read a block (all channels) as a numpy array; ``None`` reads everything.

        With ``run_id`` and ``cache_bytes > 0`` the block is assembled from decoded chunks kept in
        a per-process LRU cache (:mod:`~napari_neuroseg.batch.chunkcache`), so neighbouring
        blocks' halos reuse chunks instead of decoding them again.
        """
        sl: tuple = spatial if spatial is not None else (slice(None),) * 3
        if self.axes == "CZYX":
            sl = (slice(None),) + tuple(sl)
        if run_id is not None and cache_bytes > 0:
            from napari_neuroseg.batch import chunkcache

            source = f"{self.spec.path}::{self.spec.key}"
            return chunkcache.read_region(self.data, sl, run_id=run_id, source=source, capacity=cache_bytes)
        return np.asarray(self.data[sl])

    def chunk_bytes_touched(self, spatial: tuple[slice, slice, slice]) -> int:
        """Bytes of the input chunks a block read touches (0 for unchunked inputs)."""
        from napari_neuroseg.batch import chunkcache

        sl: tuple = tuple(spatial)
        if self.axes == "CZYX":
            sl = (slice(None),) + sl
        return chunkcache.touched_bytes(self.data, sl)

    def close(self) -> None:
        for c in self._closers:
            try:
                c()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self._closers.clear()

    def __enter__(self) -> OpenedInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def classify(path: str | Path) -> str | None:
    """The batch input format of ``path`` (from :func:`napari_neuroseg.io.readers.detect_format`);
    None for anything batch cannot read."""
    try:
        return _BATCH_FORMAT.get(detect_format(path))
    except NeurosegError:
        return None


def discover_inputs(
    inputs: Iterable[str | Path | tuple[str, np.ndarray]], key: str | None = None
) -> list[InputSpec]:
    """Expand folders, globs and file names into :class:`InputSpec` s (sorted within a folder).

    A folder that is itself a Zarr store counts as one input; any other folder contributes its
    direct children with a supported extension. ``(name, array)`` tuples are in-memory inputs.
    Unknown files named explicitly are kept (they fail, reported, when opened).
    """
    specs: list[InputSpec] = []
    seen: set[str] = set()

    def add(path: Path, explicit: bool) -> None:
        fmt = classify(path)
        if fmt is None and not explicit:
            return
        real = str(path.resolve())
        if real in seen:
            return
        seen.add(real)
        specs.append(InputSpec(str(path), fmt or "unknown", file_stem(path), key))

    for item in inputs:
        if isinstance(item, tuple):
            name, arr = item
            specs.append(InputSpec(f"<layer {name}>", "array", str(name), None, arr))
            continue
        text = os.fspath(item)
        if _MAGIC_GLOB & set(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise NeurosegError(f"the pattern {text!r} matches no file", fix="check the glob pattern")
            for m in matches:
                add(Path(m), explicit=False)
            continue
        p = Path(text)
        if not p.exists():
            raise NeurosegError("input not found", path=p, fix="check the path")
        if p.is_dir() and classify(p) is None:
            children = sorted(p.iterdir())
            before = len(specs)
            for c in children:
                if not c.name.startswith("."):
                    add(c, explicit=False)
            if len(specs) == before:
                raise NeurosegError(
                    "the folder holds no TIFF, Zarr, OME-Zarr or HDF5 volume",
                    path=p,
                    fix="point to a folder of volumes or list the files",
                )
        else:
            add(p, explicit=True)
    # Output names must be unique: suffix duplicates with a counter.
    counts: dict[str, int] = {}
    out = []
    for s in specs:
        n = counts.get(s.name, 0)
        counts[s.name] = n + 1
        out.append(s if n == 0 else InputSpec(s.path, s.format, f"{s.name}-{n}", s.key, s.array))
    return out


def _axes_for(ndim: int, spec: InputSpec) -> str:
    if ndim == 3:
        return "ZYX"
    if ndim == 4:
        return "CZYX"
    raise NeurosegError(
        f"expected a 3D (Z,Y,X) or 4D (C,Z,Y,X) volume, found {ndim} dimensions",
        path=spec.path,
        fix="give 3D volumes (2D images are not supported by batch)",
    )


def open_input(spec: InputSpec, *, role: str = "image") -> OpenedInput:
    """Open ``spec`` lazily. ``role="labels"`` picks the label array of FISBe groups.

    Raises :class:`NeurosegError` for unreadable/corrupt files, missing keys or bad shapes.
    """
    if spec.format == "array":
        data = np.asarray(spec.array)
        return OpenedInput(data, _axes_for(data.ndim, spec), (1.0, 1.0, 1.0), spec)
    if spec.format not in _BATCH_FORMAT.values():
        raise NeurosegError(
            "unsupported input format",
            path=spec.path,
            fix="give TIFF (.tif), Zarr/OME-Zarr (.zarr), FISBe Zarr or HDF5 (.h5/.hdf) volumes",
        )
    try:
        arr = open_array(spec.path, spec.key, labels=role == "labels")
    except NeurosegError:
        raise
    except Exception as err:  # noqa: BLE001 - corrupt files raise all sorts of errors
        raise NeurosegError(
            f"cannot read the volume ({type(err).__name__}: {err})",
            path=spec.path,
            fix="check that the file is complete and not corrupt, or remove it from the inputs",
        ) from err
    try:
        data = _squeeze_to_3d4d(arr.data, spec)
        axes = _axes_for(data.ndim, spec)
    except BaseException:
        arr.close()
        raise
    scale = spatial_scale("ZYX", arr.scale)
    return OpenedInput(data, axes, scale, spec, [arr.close], {"unit": arr.unit, "format": arr.format})  # type: ignore[arg-type]


class _Squeezed:
    """A lazy view of ``base`` without its leading length-1 axes (slicing stays lazy)."""

    def __init__(self, base: Any, n: int):
        self.base, self.n = base, n
        self.shape = tuple(base.shape[n:])
        self.dtype = base.dtype
        self.ndim = len(self.shape)
        ch = getattr(base, "chunks", None)
        self.chunks = tuple(ch[n:]) if isinstance(ch, tuple) else None

    def __getitem__(self, sl: Any) -> np.ndarray:
        sl = sl if isinstance(sl, tuple) else (sl,)
        return np.asarray(self.base[(0,) * self.n + sl])


def _squeeze_to_3d4d(data: Any, spec: InputSpec) -> Any:
    """Drop leading length-1 axes (e.g. TCZYX with T=C=1) without reading the data."""
    n = 0
    while data.ndim - n > 3 and data.shape[n] == 1:
        n += 1
    return data if n == 0 else _Squeezed(data, n)
