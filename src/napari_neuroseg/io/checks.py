"""Validation helpers shared by readers, writers and other areas (models, metrics, napari)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg.errors import NeurosegError

__all__ = [
    "require_3d",
    "require_same_shape",
    "check_label_dtype",
    "check_label_values",
    "as_label_array",
    "is_lazy",
    "require_real_image",
    "require_finite",
    "require_outputs_apart",
]


def is_lazy(data: Any) -> bool:
    """True for dask arrays and other chunked arrays that are not numpy."""
    return not isinstance(data, np.ndarray)


def require_3d(
    volume: Any,
    path: str | Path | None = None,
    *,
    what: str = "volume",
    allow_channels: bool = False,
) -> None:
    """Raise a :class:`NeurosegError` unless ``volume`` is 3D (ZYX).

    ``volume`` is an array or a :class:`~napari_neuroseg.io.Volume`. With ``allow_channels`` a
    4D (C,Z,Y,X) array is accepted too. Singleton axes are not squeezed: the message says so.
    """
    data = getattr(volume, "data", volume)
    axes = getattr(volume, "axes", None)
    shape = tuple(int(s) for s in (data.shape if hasattr(data, "shape") else np.shape(data)))
    ok = len(shape) == 3 or (allow_channels and len(shape) == 4)
    if axes is not None:
        spatial = [a for a in axes if a in "ZYX"]
        ok = ok and len(spatial) == 3
    if ok:
        return
    expected = "3D (Z, Y, X)" + (" or 4D (C, Z, Y, X)" if allow_channels else "")
    if len(shape) == 2 or (axes is not None and "Z" not in axes):
        fix = "open a 3D stack (one TIFF with all Z slices, or a Zarr/HDF5 volume); a single 2D plane cannot be used here"
    elif len(shape) > 3 and any(s == 1 for s in shape):
        fix = "remove the singleton axes (e.g. numpy.squeeze) or pick one channel/time point"
    else:
        fix = "pick a single channel/time point (or pass --axes / --key to say which axis is which)"
    desc = f"shape {shape}" + (f", axes {axes}" if axes else "")
    raise NeurosegError(f"the {what} is not {expected} ({desc})", path=path, fix=fix)


def require_same_shape(
    a: Any, b: Any, *, path: str | Path | None = None, what: tuple[str, str] = ("image", "labels")
) -> None:
    """Raise a :class:`NeurosegError` unless ``a`` and ``b`` have the same shape."""
    sa, sb = tuple(np.shape(a)), tuple(np.shape(b))
    if sa != sb:
        raise NeurosegError(
            f"the {what[0]} has shape {sa} but the {what[1]} has shape {sb}",
            path=path,
            fix=f"use a {what[1]} volume with the same shape as the {what[0]} (crop or resample one of them)",
        )


def check_label_dtype(data: Any, path: str | Path | None = None, *, what: str = "label volume") -> None:
    """Labels must be integers (or bool); floats, complex and strings are refused."""
    dtype = np.dtype(data.dtype)
    if dtype == np.bool_ or np.issubdtype(dtype, np.integer):
        return
    if np.issubdtype(dtype, np.floating):
        fix = "save the labels with an integer type (uint16/uint32); if this is a probability map, threshold and label it first"
    else:
        fix = "save the labels as an integer array (uint8/uint16/uint32)"
    raise NeurosegError(f"the {what} has dtype {dtype}, labels must be integers", path=path, fix=fix)


def check_label_values(data: np.ndarray, path: str | Path | None = None, *, what: str = "label volume") -> None:
    """Label ids must be >= 0 (0 is background). Only checked for signed in-memory arrays."""
    if is_lazy(data) or data.dtype == np.bool_ or not np.issubdtype(data.dtype, np.signedinteger):
        return
    if data.size and int(data.min()) < 0:
        raise NeurosegError(
            f"the {what} contains negative ids (min {int(data.min())})",
            path=path,
            fix="use 0 for background and positive ids for objects (e.g. relabel with skimage.segmentation.relabel_sequential)",
        )


def as_label_array(data: Any, path: str | Path | None = None, *, what: str = "label volume") -> Any:
    """Validate a label array (integer/bool dtype, no negative ids); bool becomes uint8."""
    check_label_dtype(data, path, what=what)
    if np.dtype(data.dtype) == np.bool_:
        data = data.astype(np.uint8)
    check_label_values(data, path, what=what)
    return data


def require_real_image(data: Any, path: str | Path | None = None, *, what: str = "image") -> None:
    """Images for the models must hold real numbers (bool, integers or floats).

    Complex, string, object and structured arrays are refused with a NeurosegError (numpy would
    fail deep inside normalisation with a ``TypeError``)."""
    dtype = np.dtype(getattr(data, "dtype", None) or np.asarray(data).dtype)
    if dtype.kind in "biuf":
        return
    if dtype.kind == "c":
        fix = "save the magnitude (numpy.abs) or the real part (numpy.real) as a float32 image"
    else:
        fix = "save the image as a numeric array (uint8/uint16/float32)"
    raise NeurosegError(f"the {what} has dtype {dtype}, which is not a real-valued image", path=path, fix=fix)


def require_finite(data: np.ndarray, path: str | Path | None = None, *, what: str = "image") -> None:
    """Refuse float images holding NaN or infinite values (decided: refused, not repaired, since
    any replacement value would silently change the segmentation), naming the file and count."""
    if data.dtype.kind not in "fc":
        return
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise NeurosegError(
            f"the {what} contains {bad} NaN or infinite values", path=path,
            fix="replace them (e.g. numpy.nan_to_num, or mask and fill the region) and save the image again",
        )


def _container(p: Path) -> bool:
    """A folder that is one dataset (Zarr/N5 store, FISBe sample), not a plain folder of files."""
    return p.is_dir() and (p.suffix.lower() in (".zarr", ".n5") or any(
        (p / m).exists() for m in (".zgroup", ".zarray", "zarr.json")))


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _inside(child: Path, parent: Path) -> bool:
    c, p = child.resolve(), parent.resolve()
    return c != p and p in c.parents


def require_outputs_apart(inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
    """Refuse any output that would overwrite or remove an input.

    ``inputs`` and ``outputs`` map a flag (``"GT"``, ``"--json"``...) to a path or a list of
    paths (``None`` entries are skipped). An output is refused when it is the same file as an
    input (resolved paths or ``samefile``: symlinks and hard links count), when it lies inside an
    input container (a Zarr store or FISBe sample), or when an input lies inside an output store
    (writing a Zarr store replaces the whole folder). Plain output folders (``--toml DIR``, a
    model folder) may hold inputs: files are only added to them.
    """
    def items(d: dict[str, Any]):
        for flag, v in d.items():
            for p in (v if isinstance(v, (list, tuple)) else [v]):
                if p not in (None, ""):
                    yield flag, Path(p)

    ins = list(items(inputs))
    for oflag, out in items(outputs):
        for iflag, inp in ins:
            if _same(out, inp):
                problem = f"the output {oflag} is the same path as the input {iflag}: writing it would overwrite the input"
            elif _container(inp) and _inside(out, inp):
                problem = f"the output {oflag} lies inside the input {iflag}: writing it would change the input"
            elif (_container(out) or out.suffix.lower() in (".zarr", ".n5")) and _inside(inp, out):
                problem = f"the input {iflag} ({inp}) lies inside the output {oflag}, which would replace it"
            else:
                continue
            raise NeurosegError(problem, path=out, fix=f"choose another path for {oflag}")
