"""Edit records: the compact, undoable description of one proofreading change.

An :class:`Edit` is a list of *parts*; each part is a bounding box (tuple of slices), the voxels
that changed inside it (stored as a bit mask, as flat indices, or "all", whichever is smallest),
their old values and their new value(s). ``undo`` writes the old values back, ``redo`` the new
ones. Memory is proportional to the changed voxels (plus at most one bit per bbox voxel).

Label arrays may be numpy arrays (edited through views, in place), or any array-like with
numpy-style basic slicing for read and write (zarr arrays, :class:`ChunkedLabels`, dask arrays):
those are edited by read-modify-write of the bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from napari_neuroseg.errors import NeurosegError

Bbox = tuple[slice, ...]


def read_block(labels: Any, bbox: Bbox) -> np.ndarray:
    """The bbox region of ``labels`` as a numpy array (a view for numpy inputs)."""
    if isinstance(labels, np.ndarray):
        return labels[bbox]
    return np.asarray(labels[bbox])


def write_block(labels: Any, bbox: Bbox, index: Any, values: Any) -> None:
    """Set ``labels[bbox][index] = values`` in place, for numpy and array-likes alike."""
    if isinstance(labels, np.ndarray):
        view = labels[bbox]
        view[index] = values
        return
    block = np.array(labels[bbox], copy=True)
    block[index] = values
    labels[bbox] = block


def bbox_shape(bbox: Bbox) -> tuple[int, ...]:
    return tuple(int(s.stop - s.start) for s in bbox)


def tight_bbox(mask: np.ndarray, offset: Sequence[int] = ()) -> Bbox | None:
    """Bounding box of the True voxels of ``mask`` (shifted by ``offset``); None if empty."""
    offset = tuple(offset) or (0,) * mask.ndim
    out = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        hit = np.flatnonzero(mask.any(axis=other)) if other else np.flatnonzero(mask)
        if hit.size == 0:
            return None
        out.append(slice(int(hit[0]) + offset[ax], int(hit[-1]) + 1 + offset[ax]))
    return tuple(out)


def _compact(values: Any) -> np.ndarray:
    """A 0-d array when all values are equal, else a contiguous 1-d copy."""
    arr = np.asarray(values)
    if arr.ndim == 0:
        return arr.copy()
    arr = arr.reshape(-1)
    if arr.size and (arr == arr[0]).all():
        return arr[0].copy()
    return np.ascontiguousarray(arr)


@dataclass
class EditPart:
    """One bbox of an edit. ``where`` is None (every voxel), packed bits, or flat indices."""

    bbox: Bbox
    where_kind: str  # "all" | "bits" | "flat"
    where: np.ndarray | None
    old: np.ndarray  # 0-d (one value for all) or 1-d, one per changed voxel
    new: np.ndarray  # 0-d (one value for all) or 1-d like ``old``
    n: int = 0  # number of changed voxels

    @classmethod
    def from_mask(cls, bbox: Bbox, mask: np.ndarray, old: np.ndarray, new: Any) -> "EditPart":
        """Store ``mask`` (bool, bbox-shaped) and the values in their most compact form."""
        size = mask.size
        n = int(old.size)
        if n == size:
            kind, where = "all", None
        elif n * (4 if size < 2**32 else 8) < (size + 7) // 8:
            kind = "flat"
            where = np.flatnonzero(mask).astype(np.uint32 if size < 2**32 else np.int64)
        else:
            kind, where = "bits", np.packbits(mask.reshape(-1))
        return cls(bbox, kind, where, _compact(old), _compact(new), n)

    @property
    def shape(self) -> tuple[int, ...]:
        return bbox_shape(self.bbox)

    @property
    def n_changed(self) -> int:
        return self.n

    def index(self) -> Any:
        """An index into the bbox block that selects the changed voxels (numpy order)."""
        if self.where_kind == "all":
            return (Ellipsis,)
        if self.where_kind == "flat":
            return np.unravel_index(self.where, self.shape)
        size = int(np.prod(self.shape))
        return np.unpackbits(self.where, count=size).view(bool).reshape(self.shape)

    def mask(self) -> np.ndarray:
        """The changed voxels as a bool array of the bbox shape."""
        if self.where_kind == "bits":
            return self.index()
        m = np.zeros(self.shape, bool)
        m[self.index()] = True
        return m

    def coords(self) -> tuple[np.ndarray, ...]:
        """Global coordinates of the changed voxels (a tuple of int arrays, one per axis)."""
        if self.where_kind == "flat":
            local = np.unravel_index(self.where, self.shape)
        else:
            local = np.nonzero(self.mask())
        return tuple(np.asarray(c, np.int64) + s.start for c, s in zip(local, self.bbox))

    def values(self, forward: bool) -> np.ndarray:
        vals = self.new if forward else self.old
        if self.where_kind == "all" and vals.ndim == 1:
            return vals.reshape(self.shape)
        return vals

    def apply(self, labels: Any, forward: bool) -> None:
        write_block(labels, self.bbox, self.index(), self.values(forward))

    @property
    def nbytes(self) -> int:
        return int(self.old.nbytes + self.new.nbytes + (0 if self.where is None else self.where.nbytes))


@dataclass
class Edit:
    """A proofreading change: parts (bbox, changed voxels, old values, new values).

    ``undo(labels)`` restores the array bit for bit; ``redo(labels)`` re-applies the change.
    ``kind`` names the operation and ``info`` holds its parameters (ids, target, new ids).
    """

    kind: str
    parts: list[EditPart] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    applied: bool = False

    def add_mask(self, bbox: Bbox, changed: np.ndarray, old_block: np.ndarray, new: Any) -> None:
        """Add a part: ``changed`` (bool, bbox-shaped) voxels go from ``old_block`` to ``new``
        (a scalar or a block like ``old_block``). The part is cropped to the changed voxels."""
        offset = [s.start for s in bbox]
        tb = tight_bbox(changed, offset)
        if tb is None:
            return
        local = tuple(slice(t.start - o, t.stop - o) for t, o in zip(tb, offset))
        sub = changed[local]
        old = old_block[local][sub]
        new_arr = np.asarray(new)
        new_vals = new_arr[local][sub] if new_arr.ndim else new_arr.astype(old_block.dtype)
        self.parts.append(EditPart.from_mask(tb, sub, old, new_vals))

    # -- applying -----------------------------------------------------------------------
    def check(self, labels: Any) -> None:
        """Raise :class:`NeurosegError` (before any voxel is written) when this edit cannot be
        applied to ``labels``: another number of axes, a box outside the array, values that do
        not fit its dtype."""
        shape = tuple(int(n) for n in labels.shape)
        dt = np.dtype(labels.dtype)
        for part in self.parts:
            if len(part.bbox) != len(shape) or any(
                not 0 <= s.start <= s.stop <= n for s, n in zip(part.bbox, shape)
            ):
                raise NeurosegError(
                    f"this {self.kind} edit (box {[(s.start, s.stop) for s in part.bbox]}) does not fit a label "
                    f"array of shape {shape}", fix="undo/redo edits on the array they were made on",
                )
            if dt.kind in "iu":
                for vals in (part.old, part.new):
                    if vals.size and (int(vals.min()) < np.iinfo(dt).min or int(vals.max()) > np.iinfo(dt).max):
                        raise NeurosegError(
                            f"this {self.kind} edit holds ids that do not fit the labels' dtype {dt}",
                            fix="undo/redo edits on the array they were made on",
                        )

    def redo(self, labels: Any) -> "Edit":
        """Apply the change (again)."""
        self.check(labels)
        for part in self.parts:
            part.apply(labels, forward=True)
        self.applied = True
        return self

    def undo(self, labels: Any) -> "Edit":
        """Revert the change; the array is restored bit for bit."""
        self.check(labels)
        for part in reversed(self.parts):
            part.apply(labels, forward=False)
        self.applied = False
        return self

    # -- inspection ---------------------------------------------------------------------
    @property
    def n_changed(self) -> int:
        return sum(p.n_changed for p in self.parts)

    @property
    def nbytes(self) -> int:
        """Memory held by this record (mask/indices + old + new values)."""
        return sum(p.nbytes for p in self.parts)

    @property
    def empty(self) -> bool:
        return not self.parts

    @property
    def bbox(self) -> Bbox | None:
        """Union of the parts' bounding boxes (None for an empty edit)."""
        if not self.parts:
            return None
        nd = len(self.parts[0].bbox)
        return tuple(
            slice(min(p.bbox[a].start for p in self.parts), max(p.bbox[a].stop for p in self.parts))
            for a in range(nd)
        )

    def coords_values(self) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """Global coordinates of all changed voxels and their new values (for
        ``Labels.data_setitem``)."""
        coords, vals = [], []
        for part in self.parts:
            c = part.coords()
            coords.append(c)
            vals.append(np.broadcast_to(part.new, c[0].shape))
        if not coords:
            return tuple(), np.zeros(0)
        nd = len(coords[0])
        return tuple(np.concatenate([c[a] for c in coords]) for a in range(nd)), np.concatenate(vals)

    def new_ids(self) -> set[int]:
        return {int(v) for p in self.parts for v in np.unique(p.new)}

    def __repr__(self) -> str:
        return f"Edit({self.kind!r}, parts={len(self.parts)}, changed={self.n_changed}, nbytes={self.nbytes}, info={self.info})"


@dataclass(repr=False)
class RemapEdit(Edit):
    """A whole-array relabelling recorded as a mapping (old id → new id), not per voxel.

    The mapping is a bijection on the ids present, so undo applies the inverse mapping.
    """

    src: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    dst: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def _remap(self, labels: Any, a: np.ndarray, b: np.ndarray) -> None:
        import fastremap

        table = {int(x): int(y) for x, y in zip(a, b) if x != y}
        if not table:
            return
        if isinstance(labels, np.ndarray) and labels.flags.c_contiguous:
            fastremap.remap(labels, table, preserve_missing_labels=True, in_place=True)
            return
        # chunk-wise read-modify-write (zarr, ChunkedLabels, non-contiguous numpy)
        for bbox in iter_slabs(labels.shape, getattr(labels, "chunks", None)):
            block = np.array(labels[bbox], copy=True)
            if not np.isin(block, a[a != b]).any():
                continue
            fastremap.remap(block, table, preserve_missing_labels=True, in_place=True)
            labels[bbox] = block

    def check(self, labels: Any) -> None:
        dt = np.dtype(labels.dtype)
        ids = np.concatenate([self.src, self.dst])
        if dt.kind in "iu" and ids.size and (int(ids.min()) < np.iinfo(dt).min or int(ids.max()) > np.iinfo(dt).max):
            raise NeurosegError(
                f"this {self.kind} mapping holds ids that do not fit the labels' dtype {dt}",
                fix="undo/redo edits on the array they were made on",
            )

    def redo(self, labels: Any) -> "Edit":
        self.check(labels)
        self._remap(labels, self.src, self.dst)
        self.applied = True
        return self

    def undo(self, labels: Any) -> "Edit":
        self.check(labels)
        self._remap(labels, self.dst, self.src)
        self.applied = False
        return self

    @property
    def nbytes(self) -> int:
        return int(self.src.nbytes + self.dst.nbytes)

    @property
    def n_changed(self) -> int:  # unknown without a scan; the number of ids remapped instead
        return int(np.count_nonzero(self.src != self.dst))

    @property
    def bbox(self) -> Bbox | None:
        return None

    def as_voxel_edit(self, labels: Any, forward: bool = True) -> Edit:
        """The same change as a per-voxel :class:`Edit` (e.g. for napari's undo history),
        computed slab by slab from the current (not yet remapped) ``labels``."""
        import fastremap

        a, b = (self.src, self.dst) if forward else (self.dst, self.src)
        table = {int(x): int(y) for x, y in zip(a, b) if x != y}
        out = Edit(self.kind, [], dict(self.info))
        if not table:
            return out
        moved = np.array(sorted(table), dtype=a.dtype)
        for bbox in iter_slabs(labels.shape, getattr(labels, "chunks", None)):
            block = read_block(labels, bbox)
            if not np.isin(block, moved).any():
                continue
            mapped = fastremap.remap(np.array(block, copy=True), table, preserve_missing_labels=True, in_place=True)
            out.add_mask(bbox, block != mapped, block, mapped)
        return out

    def __repr__(self) -> str:
        return f"RemapEdit({self.kind!r}, remapped={self.n_changed}, nbytes={self.nbytes})"

    def new_ids(self) -> set[int]:
        return {int(v) for v in self.dst}

def iter_slabs(shape: Sequence[int], chunks: Any = None, target_voxels: int = 1 << 24) -> Iterator[Bbox]:
    """Bounding boxes tiling ``shape``: along the first axis, aligned to ``chunks`` if given."""
    shape = tuple(int(s) for s in shape)
    if not shape:
        yield ()
        return
    plane = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    step = max(1, target_voxels // max(plane, 1))
    if chunks is not None:
        try:
            c0 = int(chunks[0]) if not isinstance(chunks[0], tuple) else int(chunks[0][0])
            step = max(c0, (step // c0) * c0)
        except (TypeError, IndexError, ValueError):
            pass
    for z in range(0, shape[0], step):
        yield (slice(z, min(shape[0], z + step)),) + tuple(slice(0, s) for s in shape[1:])
