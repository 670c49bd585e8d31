"""Proofreading operations on a label array, each local to the bounding box of its labels.

Every operation edits ``labels`` in place (numpy, zarr, :class:`ChunkedLabels` or any array-like
with basic-slicing read/write) and returns an :class:`~.edit.Edit` that can undo and redo it.
Common keyword arguments:

- ``locked``: ids that must never change. An operation *on* a locked label raises
  :class:`NeurosegError`; side effects that would touch a locked label (dilating, filling,
  painting into it) skip those voxels.
- ``index``: a :class:`~.index.LabelIndex`; bounding boxes come from it (no full-volume scan) and
  it is updated by the edit. Without one, a label's box is found by one streaming scan.
- ``dry_run``: compute the edit without applying it (the napari widget applies it through the
  layer's own undo history).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from napari_neuroseg.errors import NeurosegError

from .edit import Bbox, Edit, RemapEdit, iter_slabs, read_block, tight_bbox
from .index import LabelIndex, find_bbox, max_label

__all__ = [
    "import_libraries",
    "merge",
    "split",
    "split_connected_components",
    "delete",
    "fill_holes",
    "dilate",
    "erode",
    "relabel_sequential",
    "new_label_from_mask",
    "take_over",
]


def import_libraries() -> None:
    """Import the libraries the operations call on first use (scikit-image's watershed, which
    loads ``skimage.morphology``; ``edt``; ``scipy.ndimage``; ``fastremap``). scikit-image loads
    its submodules lazily, so ``import skimage.segmentation`` alone does not: the first split of
    a session imported them (~0.1-0.25 s). For a caller that wants them loaded ahead, e.g. in a
    background thread (the napari dock does)."""
    import edt  # noqa: F401
    import fastremap  # noqa: F401
    from scipy import ndimage  # noqa: F401
    from skimage.segmentation import watershed  # noqa: F401


# -- helpers --------------------------------------------------------------------------------
def _int(value: Any, what: str) -> int:
    """An integral argument as ``int`` (numpy integers and integral floats too), else an error."""
    if isinstance(value, (bool, np.bool_)):
        raise NeurosegError(f"{what} must be an integer, not {value!r}", fix=f"give {what} as an integer")
    try:
        out = int(value)
        ok = out == value
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise NeurosegError(f"{what} must be an integer, not {value!r}", fix=f"give {what} as an integer")
    return out


def _label(value: Any, what: str = "label id") -> int:
    i = _int(value, what)
    if i < 0:
        raise NeurosegError(f"{what} {i} is negative", fix="label ids are >= 0 (0 is background)")
    return i


def _check_labels(labels: Any) -> None:
    dt = np.dtype(labels.dtype)
    if dt.kind not in "iu":
        raise NeurosegError(
            f"the label array has dtype {dt}, proofreading needs integer labels",
            fix="convert the labels to an integer type (uint16/uint32) first",
        )


def _ids(ids: int | Iterable[int]) -> list[int]:
    if np.isscalar(ids):
        ids = [ids]
    out: list[int] = []
    for i in ids:
        i = _label(i)
        if i != 0 and i not in out:
            out.append(i)
    return out


def _check_box(labels: Any, box: Any) -> Bbox:
    """A bounding box (one slice per axis) inside ``labels``, as plain ``slice(int, int)``."""
    shape = tuple(int(n) for n in labels.shape)
    if not isinstance(box, tuple) or len(box) != len(shape) or not all(isinstance(s, slice) for s in box):
        raise NeurosegError(
            f"the box {box!r} is not one slice per axis of the {len(shape)}D labels",
            fix=f"give a tuple of {len(shape)} slices",
        )
    out = []
    for ax, (s, n) in enumerate(zip(box, shape)):
        if s.step not in (None, 1):
            raise NeurosegError(f"the box has a step on axis {ax} ({s.step})", fix="give slices without a step")
        lo = 0 if s.start is None else _int(s.start, "a box start")
        hi = n if s.stop is None else _int(s.stop, "a box stop")
        if not 0 <= lo <= hi <= n:
            raise NeurosegError(
                f"the box {lo}:{hi} on axis {ax} lies outside the label array (0:{n})",
                fix=f"keep the box within the labels' shape {shape}",
            )
        out.append(slice(lo, hi))
    return tuple(out)


def _radius(labels: Any, radius: Any) -> int:
    r = _int(radius, "radius")
    limit = max(int(n) for n in labels.shape)
    if not 0 <= r <= limit:
        raise NeurosegError(
            f"radius {r} is out of range for labels of shape {tuple(int(n) for n in labels.shape)}",
            fix=f"give a radius from 0 to {limit} voxels",
        )
    return r


def _check_locked(ids: Iterable[int], locked: Iterable[int], op: str) -> None:
    locked = {int(i) for i in locked}
    hit = sorted({int(i) for i in ids} & locked)
    if hit:
        raise NeurosegError(
            f"cannot {op}: label {', '.join(map(str, hit))} is locked",
            fix="unlock the label first (it was marked as proofread)",
        )


def _check_fits(labels: Any, value: int) -> None:
    dt = np.dtype(labels.dtype)
    if dt.kind in "iu" and not (np.iinfo(dt).min <= int(value) <= np.iinfo(dt).max):
        raise NeurosegError(
            f"label id {value} does not fit the label array's dtype {dt}",
            fix="convert the labels to uint32 (or relabel sequentially) first",
        )


def _bbox(labels: Any, label_id: int, index: LabelIndex | None) -> Bbox | None:
    if index is not None:
        if label_id in index:
            return index.bbox(label_id)
        box = find_bbox(labels, label_id)
        if box is not None:
            index.grow(label_id, box)
        return box
    return find_bbox(labels, label_id)


def _require_bbox(labels: Any, label_id: int, index: LabelIndex | None) -> Bbox:
    box = _bbox(labels, label_id, index)
    if box is None:
        raise NeurosegError(f"label {label_id} is not in the label array", fix="pick an existing label")
    return box


def _pad(box: Bbox, pad: int, shape: Sequence[int]) -> Bbox:
    return tuple(slice(max(0, s.start - pad), min(int(n), s.stop + pad)) for s, n in zip(box, shape))


def _new_ids(
    labels: Any, index: LabelIndex | None, count: int, new_ids: Sequence[int] | None, locked: Iterable[int] = (),
) -> list[int]:
    """``count`` ids for new labels: given (checked: > 0, distinct, not locked, not in use) or
    max + 1, ... (skipping locked ids); every one must fit the labels' dtype."""
    locked_set = {int(i) for i in locked}
    if new_ids is not None:
        out = [_label(i, "new id") for i in new_ids][:count]
        if len(out) < count:
            raise NeurosegError(f"{count} new ids are needed, {len(new_ids)} given", fix="pass more new_ids")
        if 0 in out or len(set(out)) != len(out):
            raise NeurosegError(f"new ids {out} must be distinct and nonzero", fix="pass distinct ids > 0")
        hit = sorted(set(out) & locked_set)
        if hit:
            raise NeurosegError(f"new id {', '.join(map(str, hit))} is locked", fix="pick ids that are not locked")
        for i in out:
            _check_fits(labels, i)
        used = [i for i in out if (i in index if index is not None else False)]
        if index is None and find_bbox(labels, out) is not None:
            used = [i for i in out if find_bbox(labels, i) is not None]
        if used:
            raise NeurosegError(
                f"new id {', '.join(map(str, used))} is already a label", fix="pick unused ids (or omit new_ids)",
            )
        return out
    start = index.next_id() if index is not None else max_label(labels) + 1
    out = []
    nxt = start
    while len(out) < count:
        if nxt not in locked_set:
            out.append(nxt)
        nxt += 1
    for i in out:
        _check_fits(labels, i)
    return out


def _finish(edit: Edit, labels: Any, index: LabelIndex | None, dry_run: bool) -> Edit:
    if not dry_run:
        edit.redo(labels)
        if index is not None:
            index.update(edit, forward=True)
    return edit


# -- operations -----------------------------------------------------------------------------
def merge(
    labels: Any,
    ids: Iterable[int],
    *,
    target: int | None = None,
    locked: Iterable[int] = (),
    index: LabelIndex | None = None,
    dry_run: bool = False,
) -> Edit:
    """Merge the labels ``ids`` into ``target`` (default: the first of ``ids``).

    Only the voxels of the merged-away labels change, so the work is local to their boxes.
    """
    _check_labels(labels)
    ids = _ids(ids)
    target = ids[0] if target is None and ids else _label(target or 0, "merge target")
    if target == 0:
        raise NeurosegError("merge needs a nonzero target label", fix="select the label to merge into")
    _check_fits(labels, target)
    sources = [i for i in ids if i != target]
    _check_locked(sources + [target], locked, "merge")
    edit = Edit("merge", info={"ids": ids, "target": target})
    for s in sources:
        box = _bbox(labels, s, index)
        if box is None:
            continue
        block = read_block(labels, box)
        edit.add_mask(box, block == s, block, target)
    return _finish(edit, labels, index, dry_run)


def delete(
    labels: Any,
    ids: int | Iterable[int],
    *,
    locked: Iterable[int] = (),
    index: LabelIndex | None = None,
    dry_run: bool = False,
) -> Edit:
    """Set every voxel of the label(s) ``ids`` to 0 (background)."""
    _check_labels(labels)
    ids = _ids(ids)
    _check_locked(ids, locked, "delete")
    edit = Edit("delete", info={"ids": ids})
    for i in ids:
        box = _bbox(labels, i, index)
        if box is None:
            continue
        block = read_block(labels, box)
        edit.add_mask(box, block == i, block, 0)
    return _finish(edit, labels, index, dry_run)


def split(
    labels: Any,
    label_id: int,
    seeds: Sequence[Sequence[int]],
    image: Any = None,
    *,
    method: str = "distance",
    locked: Iterable[int] = (),
    index: LabelIndex | None = None,
    new_ids: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    dry_run: bool = False,
) -> Edit:
    """Split ``label_id`` by a seeded watershed: one region per seed.

    ``seeds`` are voxel coordinates inside the label (2 or more). The region of the first seed
    keeps ``label_id``; the others get new ids (``new_ids`` or max + 1, ...). ``method``:
    ``"distance"`` floods the inverted distance transform of the label (shape-based, no image;
    cuts at necks, and shares a convex blob out between its seeds),
    ``"intensity"`` floods the inverted ``image`` (bright = inside an object, the cut follows dark
    valleys), ``"boundary"`` floods ``image`` itself (bright = membrane/boundary). ``image`` may
    have a leading channel axis (summed). Voxels no seed can reach keep ``label_id``.
    """
    from skimage.segmentation import watershed

    _check_labels(labels)
    label_id = _label(label_id)
    _check_locked([label_id], locked, "split")
    if method not in ("distance", "intensity", "boundary"):
        raise NeurosegError(f"unknown split method {method!r}", fix="use 'distance', 'intensity' or 'boundary'")
    seeds_a = _split_seeds(seeds, labels.ndim)
    box = _require_bbox(labels, label_id, index)
    # make sure every seed is inside the box (a stale/loose box still contains the label)
    block = read_block(labels, box)
    off = np.array([s.start for s in box])
    _check_seeds_on_label(seeds_a, block, off, label_id)
    mask = block == label_id
    markers = np.zeros(block.shape, np.int32)
    for k, s in enumerate(seeds_a, start=1):
        markers[tuple(s - off)] = k
    if method == "distance":
        landscape = _distance_landscape(mask, seeds_a - off, spacing)
    else:
        img = _image_block(image, labels, box, method)
        landscape = -img if method == "intensity" else img
    ws = watershed(landscape, markers, mask=mask)
    ids = [label_id] + _new_ids(labels, index, len(seeds_a) - 1, new_ids, locked)
    lut = np.array([0] + ids, dtype=block.dtype)
    changed = mask & (ws > 1)
    new_block = np.where(changed, lut[ws], block)
    edit = Edit("split", info={"label": label_id, "seeds": seeds_a.tolist(), "new_ids": ids[1:], "method": method})
    edit.add_mask(box, changed, block, new_block)
    return _finish(edit, labels, index, dry_run)


def _split_seeds(seeds: Sequence[Sequence[int]], ndim: int) -> np.ndarray:
    """The split seeds as an (N, ndim) int64 array; a ``NeurosegError`` unless they are 2 or
    more distinct voxel coordinates."""
    try:
        seeds_a = np.asarray(seeds, dtype=np.int64) if len(seeds) else np.zeros((0, ndim), np.int64)
    except (TypeError, ValueError, OverflowError) as err:
        raise NeurosegError(f"split seeds {seeds!r} are not voxel coordinates ({err})", fix="give (z, y, x) integer seeds") from None
    if seeds_a.ndim != 2 or seeds_a.shape[1] != ndim:
        raise NeurosegError(
            f"split seeds must be {ndim} coordinates each, got an array of shape {seeds_a.shape}",
            fix=f"give a list of {ndim}-tuples",
        )
    if len(seeds_a) < 2:
        raise NeurosegError("a split needs at least 2 seeds", fix="add a seed in each part (Ctrl-click)")
    if len({tuple(s) for s in seeds_a.tolist()}) != len(seeds_a):
        raise NeurosegError("two split seeds are on the same voxel", fix="place the seeds on different voxels")
    return seeds_a


def _check_seeds_on_label(seeds_a: np.ndarray, block: np.ndarray, off: np.ndarray, label_id: int) -> None:
    """A ``NeurosegError`` for the first seed that is not on ``label_id`` in ``block`` (the
    label's box, starting at ``off``)."""
    for s in seeds_a:
        loc = s - off
        if np.any(loc < 0) or np.any(loc >= block.shape) or block[tuple(loc)] != label_id:
            raise NeurosegError(
                f"split seed {tuple(int(v) for v in s)} is not on label {label_id}",
                fix="place every seed inside the label being split",
            )


def _distance_landscape(mask: np.ndarray, local_seeds: np.ndarray, spacing: Sequence[float] | None) -> np.ndarray:
    """The landscape of the ``"distance"`` split: the inverted distance transform of ``mask``
    (anisotropic with ``spacing``), flattened below the shallowest seed."""
    import edt

    aniso = tuple(float(x) for x in spacing) if spacing is not None else (1.0,) * mask.ndim
    dist = edt.edt(np.ascontiguousarray(mask), anisotropy=aniso, black_border=False).astype(np.float32)
    # Flatten everything deeper than the shallowest seed: the cut still follows the necks
    # between blobs (shallower than the seeds), while inside one convex blob the plateau is
    # shared out between the seeds by distance instead of the deepest seed taking it all.
    depth = min(float(dist[tuple(s)]) for s in local_seeds)
    return -np.minimum(dist, depth)


def _image_block(image: Any, labels: Any, box: tuple, method: str) -> np.ndarray:
    """``image`` within ``box`` as float32 (a leading channel axis summed) for the image-based
    split methods; a ``NeurosegError`` when it is missing or its shape does not match."""
    if image is None:
        raise NeurosegError(f"split method {method!r} needs an image", fix="pass image= or use method='distance'")
    if image.ndim == labels.ndim + 1:
        return np.asarray(image[(slice(None),) + box], dtype=np.float32).sum(axis=0)
    if tuple(image.shape) == tuple(labels.shape):
        return np.asarray(image[box], dtype=np.float32)
    raise NeurosegError(
        f"image shape {tuple(image.shape)} does not match labels shape {tuple(labels.shape)}",
        fix="use the image the labels were made from",
    )


def split_connected_components(
    labels: Any,
    label_id: int,
    *,
    connectivity: int = 26,
    locked: Iterable[int] = (),
    index: LabelIndex | None = None,
    new_ids: Sequence[int] | None = None,
    dry_run: bool = False,
) -> Edit:
    """Give each connected component of ``label_id`` its own id; the largest keeps the id."""
    from scipy import ndimage

    _check_labels(labels)
    label_id = _label(label_id)
    _check_locked([label_id], locked, "split")
    connectivity = _int(connectivity, "connectivity")
    if labels.ndim == 2 and connectivity not in (4, 8):
        connectivity = 8 if connectivity == 26 else 4
    allowed = (4, 8) if labels.ndim == 2 else (6, 18, 26)
    if connectivity not in allowed:
        raise NeurosegError(f"connectivity {connectivity} is not one of {allowed}", fix=f"use one of {allowed}")
    box = _require_bbox(labels, label_id, index)
    block = read_block(labels, box)
    mask = block == label_id
    # scipy, not cc3d: cc3d's union-find sizing fails on some thin masks (e.g. shape (1, 1, 3))
    rank = {4: 1, 8: 2, 6: 1, 18: 2, 26: 3}[connectivity]
    cc, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(labels.ndim, rank))
    edit = Edit("split_connected_components", info={"label": label_id, "connectivity": connectivity})
    if n <= 1:
        return edit
    sizes = np.bincount(cc.reshape(-1), minlength=n + 1)
    sizes[0] = -1
    keep = int(np.argmax(sizes))
    ids = _new_ids(labels, index, n - 1, new_ids, locked)
    lut = np.zeros(n + 1, dtype=block.dtype)
    others = [c for c in range(1, n + 1) if c != keep]
    lut[others] = ids
    lut[keep] = label_id
    changed = mask & (cc != keep)
    new_block = np.where(changed, lut[cc], block)
    edit.info["new_ids"] = ids
    edit.add_mask(box, changed, block, new_block)
    return _finish(edit, labels, index, dry_run)


def _allowed(block: np.ndarray, locked: Iterable[int], into_labels: bool) -> np.ndarray:
    if not into_labels:
        return block == 0
    locked = [int(i) for i in locked]
    return ~np.isin(block, locked) if locked else np.ones(block.shape, bool)


def fill_holes(
    labels: Any,
    label_id: int,
    *,
    into_labels: bool = False,
    locked: Iterable[int] = (),
    index: LabelIndex | None = None,
    dry_run: bool = False,
) -> Edit:
    """Fill the cavities enclosed by ``label_id`` (in 3D). Only background voxels are filled
    unless ``into_labels`` (then enclosed labels are absorbed too, except locked ones)."""
    from scipy import ndimage

    _check_labels(labels)
    label_id = _label(label_id)
    _check_locked([label_id], locked, "fill holes of")
    box = _require_bbox(labels, label_id, index)
    block = read_block(labels, box)
    mask = block == label_id
    holes = ndimage.binary_fill_holes(mask) & ~mask & _allowed(block, locked, into_labels)
    edit = Edit("fill_holes", info={"label": label_id})
    edit.add_mask(box, holes, block, label_id)
    return _finish(edit, labels, index, dry_run)


def _ball(ndim: int, radius: int) -> np.ndarray:
    grid = np.indices((2 * radius + 1,) * ndim) - radius
    return (grid**2).sum(0) <= radius * radius


def dilate(
    labels: Any,
    label_id: int,
    *,
    radius: int = 1,
    into_labels: bool = False,
    locked: Iterable[int] = (),
    index: LabelIndex | None = None,
    dry_run: bool = False,
) -> Edit:
    """Grow ``label_id`` by ``radius`` voxels (a ball) into the background (or, with
    ``into_labels``, into other unlocked labels too)."""
    import edt

    _check_labels(labels)
    label_id = _label(label_id)
    radius = _radius(labels, radius)
    _check_locked([label_id], locked, "dilate")
    box = _pad(_require_bbox(labels, label_id, index), radius, labels.shape)
    block = read_block(labels, box)
    mask = block == label_id
    # voxels within ``radius`` of the label (the dilation by a ball), in time linear in the box
    # for any radius: squared distances of integer offsets are exact in float32
    d2 = edt.edtsq(np.ascontiguousarray(~mask), black_border=False)
    grown = (d2 <= radius * radius) & ~mask
    grown &= _allowed(block, locked, into_labels)
    edit = Edit("dilate", info={"label": label_id, "radius": radius})
    edit.add_mask(box, grown, block, label_id)
    return _finish(edit, labels, index, dry_run)


def erode(
    labels: Any,
    label_id: int,
    *,
    radius: int = 1,
    locked: Iterable[int] = (),
    index: LabelIndex | None = None,
    dry_run: bool = False,
) -> Edit:
    """Shrink ``label_id`` by ``radius`` voxels (a ball); removed voxels become background."""
    import edt

    _check_labels(labels)
    label_id = _label(label_id)
    radius = _radius(labels, radius)
    _check_locked([label_id], locked, "erode")
    box = _pad(_require_bbox(labels, label_id, index), 1, labels.shape)
    block = read_block(labels, box)
    mask = block == label_id
    # kept: no voxel outside the label (the box's outside counts as outside) within ``radius``
    kept = edt.edtsq(np.ascontiguousarray(mask), black_border=True) > radius * radius
    edit = Edit("erode", info={"label": label_id, "radius": radius})
    edit.add_mask(box, mask & ~kept, block, 0)
    return _finish(edit, labels, index, dry_run)


def _unique(labels: Any) -> np.ndarray:
    import fastremap

    if isinstance(labels, np.ndarray):
        return np.asarray(fastremap.unique(labels))
    out: set[int] = set()
    for slab in iter_slabs(labels.shape, getattr(labels, "chunks", None)):
        out.update(int(v) for v in fastremap.unique(np.asarray(labels[slab])))
    return np.array(sorted(out), np.int64)


def relabel_sequential(
    labels: Any,
    *,
    start: int = 1,
    locked: Iterable[int] = (),
    index: LabelIndex | None = None,
    dry_run: bool = False,
) -> RemapEdit:
    """Renumber the labels 1..n (from ``start``) in order; locked labels keep their ids.

    Recorded compactly as an id mapping (undo applies the inverse), not per voxel.
    """
    _check_labels(labels)
    start = _int(start, "start")
    if start < 1:
        raise NeurosegError(
            f"relabel_sequential start={start} would give labels the background id 0 or negative ids",
            fix="use start >= 1",
        )
    locked_set = {int(i) for i in locked}
    present = [int(v) for v in _unique(labels) if v != 0]
    src, dst = [], []
    nxt = start
    for v in present:
        if v in locked_set:
            src.append(v)
            dst.append(v)
            continue
        while nxt in locked_set:
            nxt += 1
        src.append(v)
        dst.append(nxt)
        nxt += 1
    if dst:
        _check_fits(labels, max(dst))  # checked before any voxel changes
    edit = RemapEdit("relabel_sequential", info={"start": start})
    id_dtype = np.uint64 if np.dtype(labels.dtype) == np.uint64 else np.int64
    edit.src = np.asarray(src, id_dtype)
    edit.dst = np.asarray(dst, id_dtype)
    if not dry_run:
        edit.redo(labels)
        if index is not None:
            index.update(edit, forward=True)
    return edit


def _region(labels: Any, region: Any, bbox: Bbox | None) -> tuple[Bbox, np.ndarray] | None:
    """Normalise a region given as a full-size mask, a (bbox, local mask) or a bbox alone."""
    if region is None and bbox is None:
        raise NeurosegError("no region given", fix="pass a mask, a box, or a local mask with bbox=")
    if region is None and bbox is not None:
        box = _check_box(labels, bbox)
        return box, np.ones(tuple(s.stop - s.start for s in box), bool)
    if isinstance(region, tuple) and region and all(isinstance(s, slice) for s in region):
        return _region(labels, None, region)
    mask = np.asarray(region, dtype=bool)
    if bbox is not None:
        box = _check_box(labels, bbox)
        if mask.shape != tuple(s.stop - s.start for s in box):
            raise NeurosegError("region mask and bbox shapes differ", fix="pass a mask of the bbox's shape")
        return box, mask
    if mask.shape != tuple(labels.shape):
        raise NeurosegError(
            f"region mask shape {mask.shape} does not match labels shape {tuple(labels.shape)}",
            fix="pass a full-size mask or a bbox with a local mask",
        )
    box = tight_bbox(mask)
    if box is None:
        return None
    return box, mask[box]


def new_label_from_mask(
    labels: Any,
    region: Any,
    *,
    bbox: Bbox | None = None,
    new_id: int | None = None,
    overwrite: bool = True,
    locked: Iterable[int] = (),
    index: LabelIndex | None = None,
    dry_run: bool = False,
) -> Edit:
    """Give the voxels of ``region`` (a painted mask) a new label id.

    ``region`` is a bool mask of the labels' shape, or a local mask with ``bbox``. Voxels of
    locked labels are skipped; with ``overwrite=False`` only background voxels are taken.
    """
    _check_labels(labels)
    reg = _region(labels, region, bbox)
    if new_id is not None:
        _check_locked([_label(new_id, "new id")], locked, "paint into")
    new_id = _new_ids(labels, index, 1, None if new_id is None else [new_id], locked)[0]
    edit = Edit("new_label_from_mask", info={"new_id": new_id})
    if reg is None:
        return edit
    box, mask = reg
    block = read_block(labels, box)
    change = mask & _allowed(block, locked, overwrite) & (block != new_id)
    edit.add_mask(box, change, block, new_id)
    return _finish(edit, labels, index, dry_run)


def take_over(
    labels: Any,
    region: Any,
    from_id: int,
    to_id: int,
    *,
    bbox: Bbox | None = None,
    locked: Iterable[int] = (),
    index: LabelIndex | None = None,
    dry_run: bool = False,
) -> Edit:
    """Inside ``region`` (a mask, a bbox, or a local mask with ``bbox``) give the voxels of
    ``from_id`` to ``to_id``."""
    _check_labels(labels)
    from_id, to_id = _label(from_id), _label(to_id)
    _check_locked([from_id, to_id], locked, "take over")
    _check_fits(labels, to_id)
    reg = _region(labels, region, bbox)
    edit = Edit("take_over", info={"from": from_id, "to": to_id})
    if reg is None or from_id == to_id:
        return edit
    box, mask = reg
    block = read_block(labels, box)
    edit.add_mask(box, mask & (block == from_id), block, to_id)
    return _finish(edit, labels, index, dry_run)
