"""The FISBe layout: ``volumes/raw`` (C,Z,Y,X) and ``volumes/gt_instances`` (N,Z,Y,X).

Channel ``i`` of ``gt_instances`` holds one neuron with values {0, i+1}; neurons may overlap.
:func:`instances_to_labels` flattens the stack to one id per voxel for display/editing and
:func:`labels_to_instances` rebuilds it; given the original stack, every voxel whose label was
not edited keeps its original (overlapping) values bit for bit.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io.atomic import atomic_output
from napari_neuroseg.io.checks import as_label_array, check_label_dtype, is_lazy
from napari_neuroseg.io.zarr_io import create_zarr_array, open_zarr, zarr_keys

__all__ = [
    "FisbeSample",
    "RAW_KEY",
    "GT_KEY",
    "is_fisbe",
    "read_fisbe",
    "write_fisbe",
    "instances_to_labels",
    "labels_to_instances",
    "open_fisbe_arrays",
]

RAW_KEY = "volumes/raw"
GT_KEY = "volumes/gt_instances"
_META = (".zarray", "zarr.json")


@dataclass
class FisbeSample:
    """One FISBe sample: ``raw`` (3,Z,Y,X) uint16 and ``gt_instances`` (N,Z,Y,X) uint8 (either
    may be None), ``dim_neurons`` (1-based ids of dim neurons) and the source ``path``.
    Arrays are numpy, or dask with ``lazy=True``."""

    raw: Any | None
    gt_instances: Any | None
    dim_neurons: list[int] = field(default_factory=list)
    path: Path | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...] | None:
        arr = self.raw if self.raw is not None else self.gt_instances
        return None if arr is None else tuple(int(s) for s in arr.shape[1:])

    @property
    def n_instances(self) -> int:
        return 0 if self.gt_instances is None else int(self.gt_instances.shape[0])


def _has_array(path: Path, key: str) -> bool:
    return any((path / key / m).is_file() for m in _META)


def is_fisbe(path: str | Path) -> bool:
    """True if ``path`` is a Zarr group with ``volumes/raw`` and/or ``volumes/gt_instances``."""
    p = Path(path)
    return p.is_dir() and (_has_array(p, RAW_KEY) or _has_array(p, GT_KEY))


def _dim_neurons(attrs: Any) -> list[int]:
    try:
        val = dict(attrs).get("dim_neurons", [])
        return [int(v) for v in (val or [])]
    except (TypeError, ValueError):
        return []


def _array_4d(root: Any, p: Path, key: str, layout: str, *, fix: str) -> Any:
    """The stored array ``key``; a NeurosegError (FISBe's ``layout``, ``fix``) unless it is 4D."""
    arr = root[key]
    if arr.ndim != 4:
        raise NeurosegError(f"'{key}' has shape {tuple(arr.shape)}, FISBe {layout}", path=p, fix=fix)
    return arr


def read_fisbe(path: str | Path, *, lazy: bool = False) -> FisbeSample:
    """Read a FISBe sample folder. With ``lazy`` the arrays are dask arrays (nothing loaded).

    Raises a :class:`NeurosegError` listing the keys present when neither ``volumes/raw`` nor
    ``volumes/gt_instances`` exists, and for arrays of the wrong rank or mismatched shapes.
    """
    import dask.array as da

    p = Path(path)
    root = open_zarr(p)
    if not hasattr(root, "members") or not (_has_array(p, RAW_KEY) or _has_array(p, GT_KEY)):
        keys = zarr_keys(p) if hasattr(root, "members") else ["(a single array)"]
        raise NeurosegError(
            f"not a FISBe sample: no '{RAW_KEY}' or '{GT_KEY}' array; the store contains {keys or 'nothing'}",
            path=p,
            fix="open a FISBe .zarr folder (with volumes/raw and/or volumes/gt_instances), or open the array by key",
        )
    raw = gt = None
    dim: list[int] = []
    if _has_array(p, RAW_KEY):
        arr = _array_4d(root, p, RAW_KEY, "raw is (channels, Z, Y, X)",
                        fix="store the raw volume channels-first as a 4D array")
        raw = da.from_zarr(arr) if lazy else arr[...]
    if _has_array(p, GT_KEY):
        arr = _array_4d(root, p, GT_KEY, "instances are (N, Z, Y, X)",
                        fix="store one channel per neuron as a 4D array (instances_to_labels/labels_to_instances convert)")
        check_label_dtype(arr, p, what=f"'{GT_KEY}' array")
        gt = da.from_zarr(arr) if lazy else arr[...]
        dim = _dim_neurons(arr.attrs)
    if raw is not None and gt is not None and tuple(raw.shape[1:]) != tuple(gt.shape[1:]):
        raise NeurosegError(
            f"'{RAW_KEY}' spatial shape {tuple(raw.shape[1:])} differs from '{GT_KEY}' {tuple(gt.shape[1:])}",
            path=p,
            fix="raw and instances must cover the same Z, Y, X grid",
        )
    return FisbeSample(raw=raw, gt_instances=gt, dim_neurons=dim, path=p)


def open_fisbe_arrays(path: str | Path) -> tuple[Any | None, Any | None]:
    """The stored ``(volumes/raw, volumes/gt_instances)`` Zarr arrays of a FISBe sample, opened
    for block reads (nothing is read yet, no checks); ``None`` for one the group lacks. For
    training data, which reads patches; :func:`read_fisbe` is the checked reader."""
    root = open_zarr(path)
    if not hasattr(root, "members"):
        raise NeurosegError("a single Zarr array, not a FISBe group", path=Path(path),
                            fix="open a FISBe .zarr folder (with volumes/raw and/or volumes/gt_instances)")
    raw = root[RAW_KEY] if RAW_KEY in root else None
    gt = root[GT_KEY] if GT_KEY in root else None
    return raw, gt


# ------------------------------------------------------------------------- label conversion
#: Z planes processed at once by the conversions (bounds memory for lazy/zarr stacks).
SLAB_BYTES = 256 * 2**20


def _z_slabs(stack: Any) -> list[tuple[int, int]]:
    """Z ranges of about SLAB_BYTES of the stack, aligned to its Z chunks when it has any."""
    nz = int(stack.shape[1])
    plane = max(1, int(np.prod(stack.shape)) // max(1, nz)) * np.dtype(stack.dtype).itemsize
    step = max(1, SLAB_BYTES // plane)
    chunks = getattr(stack, "chunks", None)
    cz = None
    if isinstance(chunks, tuple) and len(chunks) > 1:
        cz = chunks[1][0] if isinstance(chunks[1], tuple) else chunks[1]  # dask / zarr
    if cz and not isinstance(stack, np.ndarray):
        step = max(int(cz), (step // int(cz)) * int(cz))
    return [(z, min(nz, z + step)) for z in range(0, nz, step)] or [(0, 0)]


def _flat_nonzero(a: np.ndarray) -> np.ndarray:
    """``np.flatnonzero`` that is several times faster on sparse 1-/2-/4-byte arrays: it scans
    8-byte words first and only looks inside the non-zero ones (FISBe is ~0.2% foreground)."""
    flat = np.ascontiguousarray(a).reshape(-1)
    k = 8 // flat.dtype.itemsize if flat.dtype.itemsize in (1, 2, 4) else 1
    if k <= 1 or flat.size < 1 << 16:
        return np.flatnonzero(flat)
    n = (flat.size // k) * k
    words = np.flatnonzero(flat[:n].view(np.uint64))
    cand = (words[:, None] * k + np.arange(k)).reshape(-1)
    cand = cand[flat[cand] != 0]
    return np.concatenate([cand, n + np.flatnonzero(flat[n:])])


def _flatten_block(block: np.ndarray, labels: np.ndarray, count: np.ndarray,
                   visible: np.ndarray | None = None) -> None:
    """Fill ``labels``/``count`` (contiguous ZYX slabs) from an in-memory (N, ...) block;
    mark in ``visible[i + 1]`` the channels that own at least one voxel of ``labels``."""
    lab_flat = labels.reshape(-1)
    cnt_flat = count.reshape(-1)
    for i in range(block.shape[0]):
        idx = _flat_nonzero(block[i])
        if idx.size == 0:
            continue
        free = idx[lab_flat[idx] == 0]
        lab_flat[free] = i + 1
        if visible is not None and free.size:
            visible[i + 1] = True
        cur = cnt_flat[idx]
        cnt_flat[idx] = np.where(cur < 255, cur + 1, cur)


def instances_to_labels(stack: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flatten an (N,Z,Y,X) instance stack to ``(labels uint32 ZYX, overlap_count uint8 ZYX)``.

    Channel ``i`` (any non-zero voxel) becomes id ``i + 1``; where neurons overlap the LOWER id
    is kept in ``labels``. ``overlap_count`` is how many instances cover each voxel (>1 marks an
    overlap). ``stack`` may be numpy, a zarr or a dask array: it is read in Z slabs.
    """
    if len(stack.shape) != 4:
        raise NeurosegError(
            f"an instance stack is (N, Z, Y, X), got shape {tuple(stack.shape)}",
            fix="pass the 4D gt_instances array (one channel per neuron)",
        )
    check_label_dtype(stack, what="instance stack")
    spatial = tuple(int(s) for s in stack.shape[1:])
    labels = np.zeros(spatial, dtype=np.uint32)
    count = np.zeros(spatial, dtype=np.uint8)
    if stack.shape[0] == 0:
        return labels, count
    for z0, z1 in _z_slabs(stack):
        block = np.asarray(stack[:, z0:z1])
        _flatten_block(block, labels[z0:z1], count[z0:z1])
    return labels, count


def _stack_dtype(n: int, base: np.dtype | None = None) -> np.dtype:
    base = np.dtype(base) if base is not None else np.dtype(np.uint8)
    if np.issubdtype(base, np.integer) and np.iinfo(base).max >= n:
        return base
    for d in (np.uint8, np.uint16, np.uint32):
        if np.iinfo(d).max >= n:
            return np.dtype(d)
    return np.dtype(np.uint64)


def _present(ids: np.ndarray, n: int) -> np.ndarray:
    """Boolean (n+1,) array: which ids 1..n occur in ``ids`` (fast for sparse volumes)."""
    out = np.zeros(n + 1, bool)
    flat = ids.reshape(-1)
    vals = np.unique(flat[_flat_nonzero(flat)])
    out[vals[vals <= n].astype(np.intp)] = True
    return out


def labels_to_instances(labels: Any, original_stack: Any | None = None) -> np.ndarray:
    """Rebuild an (N,Z,Y,X) instance stack (channel ``i`` = id ``i + 1``) from a label volume.

    Without ``original_stack``, N is the largest id and each channel holds one id. With it
    (the stack the labels came from via :func:`instances_to_labels`):

    - every voxel whose label is unchanged keeps the original values of ALL channels, so hidden
      overlaps survive and an unedited volume is returned bit-identical;
    - an edited voxel belongs only to its new id (0 clears every channel there);
    - an id that was visible in the original labels but no longer appears anywhere (deleted or
      merged away) is cleared in full, including voxels where it was hidden under a lower id;
    - new ids above N add channels. dtype: the original's (uint8) unless the ids need more.
    """
    labels = np.asarray(as_label_array(labels, what="label volume"))
    if labels.ndim != 3:
        raise NeurosegError(
            f"a label volume is (Z, Y, X), got shape {labels.shape}",
            fix="pass a 3D label volume (one id per voxel)",
        )
    max_id = int(labels.max()) if labels.size else 0
    if max_id > 65535:
        raise NeurosegError(
            f"label id {max_id} would need {max_id} instance channels",
            fix="relabel the ids sequentially (skimage.segmentation.relabel_sequential) first",
        )
    flat = labels.reshape(-1)
    if original_stack is None:
        out = np.zeros((max_id,) + labels.shape, dtype=_stack_dtype(max_id))
        out_flat = out.reshape(max_id, labels.size)
        idx = np.flatnonzero(flat)
        vals = flat[idx].astype(np.int64)
        out_flat[vals - 1, idx] = vals
        return out
    if len(original_stack.shape) != 4 or tuple(original_stack.shape[1:]) != labels.shape:
        raise NeurosegError(
            f"the labels have shape {labels.shape} but the original instance stack has shape "
            f"{tuple(original_stack.shape)}",
            fix="pass the (N, Z, Y, X) stack with the same Z, Y, X size as the labels",
        )
    check_label_dtype(original_stack, what="original instance stack")
    n0 = int(original_stack.shape[0])
    n = max(n0, max_id)
    out = np.zeros((n,) + labels.shape, dtype=_stack_dtype(n, original_stack.dtype))
    visible_before = np.zeros(n + 1, bool)
    visible_now = np.zeros(n + 1, bool)
    for z0, z1 in _z_slabs(original_stack) if n0 else [(0, labels.shape[0])]:
        lab = labels[z0:z1]
        before = np.zeros(lab.shape, np.uint32)
        if n0:
            block = np.asarray(original_stack[:, z0:z1])
            out[:n0, z0:z1] = block
            _flatten_block(block, before, np.zeros(lab.shape, np.uint8), visible_before)
        visible_now |= _present(lab, n)
        changed = _flat_nonzero(before != lab)
        if changed.size:
            sub = out[:, z0:z1].reshape(n, -1)  # a view: out is C-contiguous along Z
            new_vals = lab.reshape(-1)[changed].astype(np.int64)
            sub[:, changed] = 0
            fg = new_vals > 0
            sub[new_vals[fg] - 1, changed[fg]] = new_vals[fg]
    for gone in np.flatnonzero(visible_before & ~visible_now):
        if gone:
            out[gone - 1] = 0
    return out


# ------------------------------------------------------------------------------- writing
def _check_gt(gt: Any, p: Path) -> Any:
    if not hasattr(gt, "shape") or not hasattr(gt, "dtype"):
        gt = np.asarray(gt)
    if gt.ndim != 4:
        hint = "convert a 3D label volume with labels_to_instances(labels) first" if gt.ndim == 3 else \
            "pass one channel per neuron as an (N, Z, Y, X) array"
        raise NeurosegError(f"gt_instances must be (N, Z, Y, X), got shape {tuple(gt.shape)}", path=p, fix=hint)
    check_label_dtype(gt, p, what="gt_instances stack")
    n = int(gt.shape[0])
    if np.dtype(gt.dtype) == np.bool_:
        # A boolean mask per channel: channel i gets value i + 1.
        ids = np.arange(1, n + 1, dtype=_stack_dtype(n)).reshape((n, 1, 1, 1))
        return gt.astype(ids.dtype) * ids
    if not is_lazy(gt):
        for i in range(n):
            ch = gt[i]
            bad = (ch != 0) & (ch != i + 1)
            if bad.any():
                vals = np.unique(ch[bad])[:5].tolist()
                raise NeurosegError(
                    f"gt_instances channel {i} holds values {vals}; FISBe channel i holds only 0 and i+1",
                    path=p,
                    fix="build the stack with labels_to_instances(labels) (channel i = id i+1)",
                )
    target = _stack_dtype(n)
    if np.dtype(gt.dtype) != target and (np.dtype(gt.dtype).itemsize > target.itemsize or np.dtype(gt.dtype).kind == "i"):
        gt = gt.astype(target)  # values are 0..n, so narrowing is exact
    return gt


def _check_raw(raw: Any, path: Path) -> Any:
    """A FISBe raw volume: (channels, Z, Y, X), numeric."""
    if not hasattr(raw, "shape") or not hasattr(raw, "dtype"):
        raw = np.asarray(raw)
    if raw.ndim != 4:
        raise NeurosegError(
            f"raw must be (channels, Z, Y, X), got shape {tuple(raw.shape)}",
            path=path,
            fix="add a channel axis (e.g. raw[None]) or move the channel axis first",
        )
    if np.dtype(raw.dtype).kind not in "uif":
        raise NeurosegError(f"raw has unsupported dtype {raw.dtype}", path=path, fix="use uint16 (like FISBe) or float32")
    return raw


def write_fisbe(
    path: str | Path,
    *,
    raw: Any | None = None,
    gt_instances: Any | None = None,
    dim_neurons: list[int] | None = None,
    chunks: tuple[int, int, int] = (64, 128, 128),
) -> Path:
    """Write a FISBe sample (Zarr v2, blosc/zstd like the originals) atomically.

    ``raw`` is (C,Z,Y,X), ``gt_instances`` (N,Z,Y,X) with channel i in {0, i+1} (bool masks are
    converted to that); numpy or dask. If ``path`` already is a FISBe sample, arrays not given
    are kept (copied unchanged) and ``dim_neurons`` defaults to the stored list; the whole
    folder is replaced in one rename, so a failure leaves the old sample intact.
    """
    import zarr

    p = Path(path)
    if raw is None and gt_instances is None:
        raise NeurosegError("nothing to write: give raw and/or gt_instances", path=p, fix="pass raw= or gt_instances=")
    if raw is not None:
        raw = _check_raw(raw, p)
    if gt_instances is not None:
        gt_instances = _check_gt(gt_instances, p)
    existing = p if is_fisbe(p) else None
    if p.exists() and existing is None and any(p.iterdir() if p.is_dir() else [True]):
        raise NeurosegError(
            "the target exists and is not a FISBe sample; refusing to replace it",
            path=p,
            fix="choose a new path (…/name.zarr) or delete the existing file/folder",
        )
    keep_raw = existing is not None and raw is None and _has_array(existing, RAW_KEY)
    keep_gt = existing is not None and gt_instances is None and _has_array(existing, GT_KEY)
    if existing is not None:
        old = read_fisbe(existing, lazy=True)
        if dim_neurons is None and gt_instances is not None and old.gt_instances is not None:
            dim_neurons = [d for d in old.dim_neurons if d <= gt_instances.shape[0]]
        if dim_neurons is None and keep_gt:
            dim_neurons = old.dim_neurons
        shapes = [tuple(a.shape[1:]) for a in (raw, gt_instances) if a is not None]
        if keep_raw:
            shapes.append(tuple(old.raw.shape[1:]))
        if keep_gt:
            shapes.append(tuple(old.gt_instances.shape[1:]))
    else:
        shapes = [tuple(a.shape[1:]) for a in (raw, gt_instances) if a is not None]
    if len(set(shapes)) > 1:
        raise NeurosegError(
            f"raw and gt_instances cover different Z, Y, X shapes: {sorted(set(shapes))}",
            path=p,
            fix="give raw and instances with the same spatial shape",
        )
    dim = [int(d) for d in (dim_neurons or [])]
    n_inst = gt_instances.shape[0] if gt_instances is not None else (old.n_instances if keep_gt else None)
    if n_inst is not None and any(d < 1 or d > n_inst for d in dim):
        raise NeurosegError(
            f"dim_neurons {dim} must be 1-based ids of the {n_inst} instances",
            path=p,
            fix=f"use ids between 1 and {n_inst}",
        )
    with atomic_output(p) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        vol = root.create_group("volumes")
        if raw is not None:
            create_zarr_array(vol, "raw", raw, chunks=(1, *chunks), zarr_format=2)
        elif keep_raw:
            shutil.copytree(existing / RAW_KEY, tmp / RAW_KEY)
        if gt_instances is not None:
            arr = create_zarr_array(vol, "gt_instances", gt_instances, chunks=(1, *chunks), zarr_format=2)
            arr.attrs["dim_neurons"] = dim
        elif keep_gt:
            shutil.copytree(existing / GT_KEY, tmp / GT_KEY)
            if dim_neurons is not None:
                zarr.open_array(str(tmp / GT_KEY), mode="r+").attrs["dim_neurons"] = dim
    return p
