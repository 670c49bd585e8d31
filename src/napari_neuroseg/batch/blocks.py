"""Block plans and the stitching algebra of blockwise runs (pure numpy, no I/O).

Two ways to make objects whole across blocks:

* ``centre`` (nuclei/blobs, as StarDist's big-image mode): each block is segmented with a halo
  and keeps only the objects whose bounding-box centre lies in its core; objects must be smaller
  than the halo (objects cut by the outer edge of a block's halo are counted as ``truncated``).
* ``faces`` (connected components, objects of any length): each block is labelled on its own;
  labels that touch across a block face (with the run's voxel connectivity, edges and corners
  included) are joined by a global union-find; a second pass relabels every block chunk by chunk.
  Exact for connected components; it would merge two different objects that merely touch.
* ``overlap`` (neurons, objects of any length that may touch each other): each block is labelled
  on its core plus a halo; in the region where two neighbouring blocks' halo'd regions overlap,
  a label of one and a label of the other that share at least ``min_fraction`` of the smaller
  one's voxels there are the same object (global union-find). Two objects that touch at a face
  but were told apart by the segmenter stay apart.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Block:
    """One block: ``core`` is the part it owns; ``outer`` adds the halo (clamped to the volume)."""

    index: int
    grid: tuple[int, int, int]
    core: tuple[slice, slice, slice]
    outer: tuple[slice, slice, slice]

    @property
    def core_in_outer(self) -> tuple[slice, slice, slice]:
        """``core`` relative to ``outer`` (to crop a block result)."""
        return tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(self.core, self.outer))  # type: ignore[return-value]

    @property
    def core_shape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.core)  # type: ignore[return-value]

    @property
    def outer_shape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.outer)  # type: ignore[return-value]


def grid_shape(shape: tuple[int, ...], block_shape: tuple[int, ...]) -> tuple[int, int, int]:
    return tuple(-(-int(s) // int(b)) for s, b in zip(shape, block_shape))  # type: ignore[return-value]


#: most blocks one blockwise plan may have: every block costs bookkeeping in this process (its
#: :class:`Block`, job arguments, a Dask future, pass-1/pass-2 markers and id counts)
MAX_BLOCKS = 1_000_000
#: a generous estimate of that bookkeeping per block, in bytes
BLOCK_STATE_BYTES = 16 * 1024


def count_blocks(shape: tuple[int, ...], block_shape: tuple[int, ...]) -> int:
    """How many blocks :func:`plan_blocks` makes, without making them."""
    shape = tuple(int(s) for s in shape)
    bs = tuple(max(1, min(int(b), s)) for b, s in zip(block_shape, shape))
    n = 1
    for g in grid_shape(shape, bs):
        n *= int(g)
    return n


def check_block_plan(
    shape: tuple[int, ...], block_shape: tuple[int, ...], *, path: str | None = None,
    dtype: object = None, limit: int | None = None, available: int | None = None,
) -> int:
    """The number of blocks of a plan, counted without making them. Raises
    :class:`NeurosegError` before anything is enumerated or allocated when it exceeds ``limit``
    (default :data:`MAX_BLOCKS`) or when the blocks' bookkeeping would not fit in a quarter of the
    free memory (:func:`napari_neuroseg.runtime.memory.require_memory`)."""
    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.runtime.memory import require_memory

    shape = tuple(int(s) for s in shape)
    n = count_blocks(shape, block_shape)
    limit = MAX_BLOCKS if limit is None else int(limit)
    voxels = 1
    for s in shape:
        voxels *= s
    size = f", {voxels * np.dtype(dtype).itemsize / 1e12:.3g} TB as {np.dtype(dtype)}" if dtype is not None else ""
    # the smallest isotropic scale-up of the block shape that brings the count under the limit
    k = max(1.0, (n / limit) ** (1 / 3))
    bigger = " ".join(str(min(s, int(np.ceil(int(b) * k)))) for b, s in zip(block_shape, shape))
    fix = (f"check that the volume's declared shape is right (a small store can declare a huge array), or "
           f"use a larger --block-shape (about {bigger} or more)")
    if n > limit:
        raise NeurosegError(
            f"the volume declares shape {list(shape)} ({voxels:.3g} voxels{size}), which makes {n:,} blocks of "
            f"{list(block_shape)}; plans of more than {limit:,} blocks are refused (each block needs bookkeeping "
            "in memory)",
            path=path, fix=fix,
        )
    require_memory(
        n * BLOCK_STATE_BYTES, what=f"the bookkeeping of {n:,} blocks of {list(block_shape)} (volume {list(shape)})",
        fix=fix, path=path, available=available, fraction=0.25,
    )
    return n


def plan_blocks(
    shape: tuple[int, int, int], block_shape: tuple[int, int, int], halo: tuple[int, int, int] = (0, 0, 0)
) -> list[Block]:
    """Tile a ZYX ``shape`` into blocks of ``block_shape`` (edge blocks smaller), C order.

    Refuses (:class:`NeurosegError`) plans larger than :func:`block_budget`."""
    check_block_plan(shape, block_shape)
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    block_shape = tuple(max(1, min(int(b), s)) for b, s in zip(block_shape, shape))  # type: ignore[assignment]
    blocks = []
    for i, g in enumerate(itertools.product(*(range(n) for n in grid_shape(shape, block_shape)))):
        core = tuple(slice(gi * b, min((gi + 1) * b, s)) for gi, b, s in zip(g, block_shape, shape))
        outer = tuple(slice(max(0, c.start - h), min(s, c.stop + h)) for c, h, s in zip(core, halo, shape))
        blocks.append(Block(i, g, core, outer))  # type: ignore[arg-type]
    return blocks


# -- centre ownership ----------------------------------------------------------------------------
def centre_owned(labels: np.ndarray, block: Block, shape: tuple[int, int, int]) -> tuple[np.ndarray, int]:
    """Ids of ``labels`` (computed on ``block.outer``) whose bbox centre lies in ``block.core``.

    Returns ``(ids, truncated)`` where ``truncated`` counts kept objects that touch an outer
    face of the block that is not a volume border (the halo was too small for them).
    """
    from scipy import ndimage as ndi

    objs = ndi.find_objects(labels)
    keep = []
    truncated = 0
    for lab, sl in enumerate(objs, start=1):
        if sl is None:
            continue
        owned = True
        cut = False
        for ax, s in enumerate(sl):
            g0 = block.outer[ax].start
            centre = g0 + (s.start + s.stop - 1) // 2
            if not (block.core[ax].start <= centre < block.core[ax].stop):
                owned = False
                break
            if (s.start == 0 and g0 > 0) or (s.stop == labels.shape[ax] and g0 + s.stop < shape[ax]):
                cut = True
        if owned:
            keep.append(lab)
            truncated += int(cut)
    return np.asarray(keep, dtype=np.uint32), truncated


# -- face matching -------------------------------------------------------------------------------
def _plane_offsets(connectivity: int) -> list[tuple[int, int]]:
    """In-plane shifts that connect a voxel to the next plane for 6/18/26 connectivity."""
    if connectivity == 6:
        return [(0, 0)]
    if connectivity == 18:
        return [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
    if connectivity == 26:
        return [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    raise ValueError(f"connectivity must be 6, 18 or 26, not {connectivity}")


def face_regions(block: Block, shape: tuple[int, int, int]) -> list[tuple[int, tuple[slice, slice, slice]]]:
    """For each axis with a next block, the 2-voxel slab across the block's high face.

    The slab spans the block's core in the other axes extended by one voxel each side (clamped),
    so adjacencies through edges and corners are seen too. Returns ``(axis, region)`` pairs.
    """
    out = []
    for ax in range(3):
        hi = block.core[ax].stop
        if hi >= shape[ax]:
            continue
        region = []
        for a in range(3):
            if a == ax:
                region.append(slice(hi - 1, hi + 1))
            else:
                c = block.core[a]
                region.append(slice(max(0, c.start - 1), min(shape[a], c.stop + 1)))
        out.append((ax, tuple(region)))  # type: ignore[arg-type]
    return out


def face_pairs(slab: np.ndarray, axis: int, connectivity: int, block: Block, region: tuple[slice, ...]) -> np.ndarray:
    """Pairs ``(a, b)`` of global ids touching across the face in a 2-voxel ``slab``.

    ``a`` is taken only from the block's own core columns (the block's side of the face), ``b``
    from the other side at every in-plane shift allowed by ``connectivity``.
    """
    lo = np.moveaxis(slab, axis, 0)[0]
    hi = np.moveaxis(slab, axis, 0)[1]
    others = [a for a in range(3) if a != axis]
    # rows/cols of the block's core within the extended slab
    r0 = block.core[others[0]].start - region[others[0]].start
    r1 = r0 + (block.core[others[0]].stop - block.core[others[0]].start)
    c0 = block.core[others[1]].start - region[others[1]].start
    c1 = c0 + (block.core[others[1]].stop - block.core[others[1]].start)
    a = lo[r0:r1, c0:c1]
    pairs = []
    for dr, dc in _plane_offsets(connectivity):
        rr0, rr1, cc0, cc1 = r0 + dr, r1 + dr, c0 + dc, c1 + dc
        # clip to the slab
        ar0, ar1 = max(0, -rr0), (r1 - r0) - max(0, rr1 - hi.shape[0])
        ac0, ac1 = max(0, -cc0), (c1 - c0) - max(0, cc1 - hi.shape[1])
        if ar1 <= ar0 or ac1 <= ac0:
            continue
        av = a[ar0:ar1, ac0:ac1]
        bv = hi[rr0 + ar0 : rr0 + ar1, cc0 + ac0 : cc0 + ac1]
        m = (av > 0) & (bv > 0)
        if m.any():
            pairs.append(np.stack([av[m], bv[m]], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(pairs).astype(np.int64), axis=0)


def union_find_mapping(n_total: int, pairs: np.ndarray, sizes: np.ndarray | None = None, min_size: int = 0) -> np.ndarray:
    """Final ids for global ids ``0..n_total`` after joining ``pairs`` (connected components).

    Components are numbered 1..K in the order of their smallest global id (deterministic);
    with ``min_size`` components whose total size (``sizes`` per global id) is smaller map to 0.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = n_total + 1
    if pairs.size:
        g = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    else:
        g = coo_matrix((n, n), dtype=np.int8)
    _, comp = connected_components(g, directed=False)
    comp_ids = comp[1:]
    first = np.full(comp.max() + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, comp_ids, np.arange(1, n, dtype=np.int64))
    keep = first[first < np.iinfo(np.int64).max]
    order = np.argsort(first)
    rank = np.zeros(comp.max() + 1, np.int64)
    rank[order[: len(keep)]] = np.arange(1, len(keep) + 1)
    if min_size > 0 and sizes is not None:
        csize = np.bincount(comp_ids, weights=sizes[1:], minlength=comp.max() + 1)
        small = csize < min_size
        # renumber survivors densely, preserving order
        alive = np.zeros(comp.max() + 1, bool)
        alive[order[: len(keep)]] = True
        alive &= ~small
        new_rank = np.zeros_like(rank)
        sel = order[: len(keep)]
        sel = sel[alive[sel]]
        new_rank[sel] = np.arange(1, len(sel) + 1)
        rank = new_rank
    mapping = np.zeros(n, np.uint32)
    mapping[1:] = rank[comp_ids]
    return mapping


# -- overlap matching ----------------------------------------------------------------------------
def forward_neighbours(block: Block, blocks_by_grid: dict[tuple[int, int, int], Block]) -> list[Block]:
    """The neighbours after ``block`` in the 26-neighbourhood of the block grid whose halo'd
    regions overlap ``block``'s (each pair of blocks is visited once)."""
    out = []
    for d in itertools.product((-1, 0, 1), repeat=3):
        if d <= (0, 0, 0):
            continue
        nb = blocks_by_grid.get(tuple(g + o for g, o in zip(block.grid, d)))  # type: ignore[arg-type]
        if nb is not None and all(max(a.start, b.start) < min(a.stop, b.stop) for a, b in zip(block.outer, nb.outer)):
            out.append(nb)
    return out


def overlap_region(a: Block, b: Block) -> tuple[slice, slice, slice]:
    """The intersection of two blocks' halo'd regions (global coordinates)."""
    return tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a.outer, b.outer))  # type: ignore[return-value]


def overlap_pairs(a: np.ndarray, b: np.ndarray, min_fraction: float = 0.5) -> np.ndarray:
    """Pairs ``(i, j)`` of labels of two segmentations ``a``, ``b`` of the same region that share
    at least ``min_fraction`` of the voxels of the smaller of the two (within this region)."""
    m = (a > 0) & (b > 0)
    if not m.any():
        return np.zeros((0, 2), np.int64)
    av, bv = a[m].astype(np.int64), b[m].astype(np.int64)
    nb = int(bv.max()) + 1
    keys, n_ab = np.unique(av * nb + bv, return_counts=True)
    ai, bi = keys // nb, keys % nb
    size_a = np.bincount(a.ravel())
    size_b = np.bincount(b.ravel())
    frac = n_ab / np.minimum(size_a[ai], size_b[bi])
    keep = frac >= min_fraction
    return np.stack([ai[keep], bi[keep]], axis=1)
