"""Finding the bounding boxes of labels: a one-off scan, or an incrementally updated index.

:class:`LabelIndex` keeps a bounding box per label id that is always a *superset* of where the
label is (boxes only grow: an edit, its undo or its redo can only put a label back where it has
been before), so it stays valid across undo/redo without rescanning. Operations only read the
box, so a loose box costs a little time, never correctness.
"""

from __future__ import annotations

from typing import Any, Generator, Iterable, Sequence

import numpy as np

from napari_neuroseg.runtime.progress import Progress, run_to_completion

from .edit import Bbox, Edit, RemapEdit, iter_slabs, read_block, tight_bbox


def _union(a: Bbox | None, b: Bbox | None) -> Bbox | None:
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def find_bbox(labels: Any, ids: int | Iterable[int]) -> Bbox | None:
    """Bounding box of the voxels whose value is in ``ids``, by one streaming scan of
    ``labels`` (slab by slab, so zarr/dask arrays are never loaded whole). None if absent."""
    ids = [int(ids)] if np.isscalar(ids) else [int(i) for i in ids]
    out: Bbox | None = None
    for slab in iter_slabs(labels.shape, getattr(labels, "chunks", None)):
        block = read_block(labels, slab)
        hit = block == ids[0]
        for i in ids[1:]:
            hit |= block == i
        if not hit.any():
            continue
        out = _union(out, tight_bbox(hit, [s.start for s in slab]))
    return out


def max_label(labels: Any) -> int:
    """The largest value in ``labels`` (streaming, slab by slab)."""
    m = 0
    for slab in iter_slabs(labels.shape, getattr(labels, "chunks", None)):
        block = read_block(labels, slab)
        if block.size:
            m = max(m, int(block.max()))
    return m


def _slab_stats(block: np.ndarray, z0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ids, lo (n, ndim), hi (n, ndim) of the nonzero labels of one block."""
    import fastremap
    from scipy import ndimage

    ren, mapping = fastremap.renumber(np.ascontiguousarray(block), preserve_zero=True, in_place=False)
    inv = {v: k for k, v in mapping.items() if k != 0}
    objs = ndimage.find_objects(ren)
    ids, lo, hi = [], [], []
    for j, sl in enumerate(objs, start=1):
        if sl is None or j not in inv:
            continue
        ids.append(inv[j])
        lo.append([s.start for s in sl])
        hi.append([s.stop for s in sl])
    nd = block.ndim
    lo_a = np.asarray(lo, np.int64).reshape(-1, nd)
    hi_a = np.asarray(hi, np.int64).reshape(-1, nd)
    lo_a[:, 0] += z0
    hi_a[:, 0] += z0
    # uint64 ids above 2**63 do not fit int64
    return np.asarray(ids, np.uint64 if block.dtype == np.uint64 else np.int64), lo_a, hi_a


class LabelIndex:
    """Per-label bounding boxes (supersets), kept up to date by :meth:`update`.

    Build once with :meth:`build` (one streaming pass over the array), then pass it to the
    operations (``index=``) so they never scan the whole volume.
    """

    def __init__(self, shape: Sequence[int], boxes: dict[int, np.ndarray] | None = None, max_id: int = 0):
        self.shape = tuple(int(s) for s in shape)
        self._boxes: dict[int, np.ndarray] = dict(boxes or {})
        self.max_id = int(max(max_id, max(self._boxes, default=0)))

    # -- construction -------------------------------------------------------------------
    @classmethod
    def build(cls, labels: Any) -> "LabelIndex":
        """Scan ``labels`` once (slab by slab) and index every nonzero label."""
        return run_to_completion(cls.build_iter(labels))

    @classmethod
    def build_iter(cls, labels: Any) -> Generator[Progress, None, "LabelIndex"]:
        """:meth:`build` as a progress generator (for a napari worker)."""
        slabs = list(iter_slabs(labels.shape, getattr(labels, "chunks", None), target_voxels=1 << 23))
        all_ids, all_lo, all_hi = [], [], []
        for i, slab in enumerate(slabs):
            ids, lo, hi = _slab_stats(read_block(labels, slab), slab[0].start)
            all_ids.append(ids)
            all_lo.append(lo)
            all_hi.append(hi)
            yield Progress(i + 1, len(slabs), "indexing labels")
        nd = len(labels.shape)
        ids = np.concatenate(all_ids) if all_ids else np.zeros(0, np.int64)
        lo = np.concatenate(all_lo) if all_lo else np.zeros((0, nd), np.int64)
        hi = np.concatenate(all_hi) if all_hi else np.zeros((0, nd), np.int64)
        uniq, inv = np.unique(ids, return_inverse=True)
        glo = np.full((uniq.size, nd), np.iinfo(np.int64).max, np.int64)
        ghi = np.zeros((uniq.size, nd), np.int64)
        np.minimum.at(glo, inv, lo)
        np.maximum.at(ghi, inv, hi)
        boxes = {int(u): np.concatenate([glo[k], ghi[k]]) for k, u in enumerate(uniq)}
        return cls(labels.shape, boxes)

    # -- queries ------------------------------------------------------------------------
    def __contains__(self, label_id: int) -> bool:
        return int(label_id) in self._boxes

    def __len__(self) -> int:
        return len(self._boxes)

    @property
    def ids(self) -> list[int]:
        return sorted(self._boxes)

    def bbox(self, label_id: int) -> Bbox | None:
        """A box containing every voxel of ``label_id`` (None if the label was never seen)."""
        b = self._boxes.get(int(label_id))
        if b is None:
            return None
        nd = len(self.shape)
        return tuple(slice(int(b[a]), int(b[nd + a])) for a in range(nd))

    def next_id(self) -> int:
        """An id never seen in this array (max + 1)."""
        return self.max_id + 1

    # -- updates ------------------------------------------------------------------------
    def grow(self, label_id: int, bbox: Bbox) -> None:
        """Record that ``label_id`` may now also occupy ``bbox``."""
        label_id = int(label_id)
        if label_id == 0:
            return
        nd = len(self.shape)
        new = np.array([s.start for s in bbox] + [s.stop for s in bbox], np.int64)
        old = self._boxes.get(label_id)
        if old is not None:
            new[:nd] = np.minimum(new[:nd], old[:nd])
            new[nd:] = np.maximum(new[nd:], old[nd:])
        self._boxes[label_id] = new
        self.max_id = max(self.max_id, label_id)

    def update(self, edit: Edit, forward: bool = True) -> None:
        """Account for an edit just applied (``forward``) or undone (``not forward``)."""
        if isinstance(edit, RemapEdit):
            src, dst = (edit.src, edit.dst) if forward else (edit.dst, edit.src)
            moved = {int(a): self._boxes.pop(int(a)) for a, b in zip(src, dst) if a != b and int(a) in self._boxes}
            for a, b in zip(src, dst):
                if int(a) in moved:
                    box = moved[int(a)]
                    nd = len(self.shape)
                    self.grow(int(b), tuple(slice(int(box[k]), int(box[nd + k])) for k in range(nd)))
            return
        for part in edit.parts:
            written = part.new if forward else part.old
            for v in np.unique(written):
                self.grow(int(v), part.bbox)

