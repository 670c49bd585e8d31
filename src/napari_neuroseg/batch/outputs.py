"""Batch outputs: names, atomic writes (files and directory stores) and chunked label stores.

Every output is written under a temporary name in the output folder and renamed onto its target
only when complete, so the target path never holds a partial file — after a crash, a cancel or a
write error (full disk) only a ``.*.tmp-*`` leftover can exist, which :func:`clean_temporaries`
removes on the next run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg.errors import NeurosegError

FORMATS = ("tif", "zarr", "ome-zarr")
_EXT = {"tif": ".tif", "zarr": ".zarr", "ome-zarr": ".ome.zarr", "json": ".json"}
TMP_MARK = ".tmp-"


def output_path(outdir: str | Path, name: str, task: str, fmt: str) -> Path:
    """``OUTDIR/<name>_<task><ext>`` (``.tif``, ``.zarr``, ``.ome.zarr`` or ``.json``)."""
    if fmt not in _EXT:
        raise NeurosegError(f"unknown output format {fmt!r}", fix=f"use one of {', '.join(FORMATS)}")
    return Path(outdir) / f"{name}_{task}{_EXT[fmt]}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_path(tmp: Path, target: Path) -> None:
    """Move ``tmp`` onto ``target`` (file: atomic ``os.replace``; folder: swap via a trash name)."""
    if tmp.is_dir():
        if target.exists():
            trash = target.with_name(f".{target.name}{TMP_MARK}old-{uuid.uuid4().hex[:8]}")
            os.replace(target, trash)
            os.replace(tmp, target)
            _remove(trash)
        else:
            os.replace(tmp, target)
    else:
        os.replace(tmp, target)


@contextlib.contextmanager
def atomic_target(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    On any error (including a cancel raised as ``GeneratorExit``) the temporary is removed and
    ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp}")
        replace_path(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def clean_temporaries(outdir: str | Path) -> int:
    """Remove leftover ``.*.tmp-*`` files/folders of interrupted runs; returns how many."""
    n = 0
    outdir = Path(outdir)
    if not outdir.is_dir():
        return 0
    for p in outdir.iterdir():
        if p.name.startswith(".") and TMP_MARK in p.name:
            _remove(p)
            n += 1
    return n


def write_json_atomic(path: str | Path, obj: Any, *, fsync: bool = True) -> None:
    """Write JSON through a temporary file + rename (``fsync``: also safe against power loss)."""
    path = Path(path)
    with atomic_target(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1, default=_json_default)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def ome_multiscales(name: str, scale: tuple[float, ...]) -> list[dict]:
    """NGFF 0.4 ``multiscales`` metadata for one ZYX level stored at path ``"0"``."""
    return [
        {
            "version": "0.4",
            "name": name,
            "axes": [
                {"name": "z", "type": "space", "unit": "micrometer"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [float(s) for s in scale]}]}
            ],
        }
    ]


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
) -> Any:
    """Create (or, ``mode="r+"``, reopen) a chunked Zarr v2 label array; returns the array.

    ``fmt="zarr"``: the array at the store root; ``"ome-zarr"``: an NGFF 0.4 image group with the
    array at ``"0"`` and ``image-label`` metadata.
    """
    import zarr

    path = str(path)
    if fmt == "zarr":
        if mode == "r+":
            return zarr.open_array(path, mode="r+")
        return zarr.open_array(
            path, mode="w", shape=shape, chunks=chunks, dtype=dtype, fill_value=0, zarr_format=2
        )
    if fmt == "ome-zarr":
        if mode == "r+":
            return zarr.open_group(path, mode="r+")["0"]
        g = zarr.open_group(path, mode="w", zarr_format=2)
        arr = g.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
        g.attrs["multiscales"] = ome_multiscales(name, scale)
        g.attrs["image-label"] = {"version": "0.4"}
        return arr
    raise NeurosegError(
        f"format {fmt!r} cannot be written block by block",
        fix="use --format zarr or --format ome-zarr for blockwise runs",
    )


def write_labels(
    target: str | Path,
    labels: np.ndarray,
    fmt: str,
    *,
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0),
    chunks: tuple[int, int, int] | None = None,
) -> Path:
    """Write a ZYX label volume atomically as TIFF, Zarr or OME-Zarr; returns the target."""
    target = Path(target)
    with atomic_target(target) as tmp:
        if fmt == "tif":
            import tifffile

            tifffile.imwrite(
                tmp,
                labels,
                compression="zlib",
                metadata={"axes": "ZYX", "spacing": float(scale[0]), "unit": "um"},
                resolution=(1.0 / scale[2], 1.0 / scale[1]),
            )
        else:
            ch = chunks or tuple(min(s, c) for s, c in zip(labels.shape, (64, 256, 256)))
            arr = create_label_store(tmp, labels.shape, ch, fmt, dtype=labels.dtype, scale=scale, name=target.name)
            arr[...] = labels
    return target


def read_output(path: str | Path) -> np.ndarray:
    """Read a batch label output (TIFF, Zarr or OME-Zarr) as numpy — for tests and the widget."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Group):
        node = node["0"]
    return np.asarray(node[...])
