"""Input checks and the sparse instance representation used by the FISBe metrics.

The official evaluator works on dense int64 copies of the whole (N, Z, Y, X) stack. Here every
label array is read in Z slabs (numpy, Zarr, HDF5 or dask alike) and kept only as the list of its
foreground voxels: flat voxel indices (sorted) and the instance id at each. Neurons fill ~0.2% of
a FISBe volume, so this is a few MB instead of GB, and all later steps are per instance.

Preprocessing follows the FlyLight preset of the official evaluator exactly:

1. squeeze; a 3D array gets a channel axis; if the spatial shapes differ the larger one is
   centre-cropped (offset ``(a - b) // 2`` per axis); mixed larger/smaller is an error;
2. prediction only: ids whose voxel count over the whole array is ``<= min_size`` are removed;
3. empty channels are dropped (when there are several); if the whole array is binary, channel
   ``i`` becomes id ``i + 1``; each channel is relabelled sequentially with a running offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import NeurosegError

#: bytes per slab read from a (possibly lazy / compressed) input array
_SLAB_BYTES = 256 * 2**20


@dataclass
class SparseLabels:
    """Foreground voxels of a (possibly overlapping) instance segmentation.

    ``keys`` are flat voxel indices into ``shape`` (sorted, repeated where instances overlap),
    ``ids`` the relabelled instance id (1..n) at each; ``original[i]`` is the user's id for
    relabelled id ``i`` (``original[0] == 0``).
    """

    shape: tuple[int, int, int]
    keys: np.ndarray
    ids: np.ndarray
    n: int
    original: np.ndarray
    n_channels: int
    _order: np.ndarray = field(init=False, repr=False)
    _starts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        order = np.argsort(self.ids, kind="stable")  # keys stay sorted within an id
        self._order = order
        counts = np.bincount(self.ids, minlength=self.n + 1)
        self._starts = np.concatenate([[0], np.cumsum(counts)])

    def coords(self, i: int) -> np.ndarray:
        """Sorted flat voxel indices of relabelled instance ``i`` (1-based)."""
        return self.keys[self._order[self._starts[i] : self._starts[i + 1]]]

    def relabelled(self, original_id: int) -> list[int]:
        """Relabelled ids whose original id is ``original_id``."""
        return [int(i) for i in np.nonzero(self.original == int(original_id))[0] if i > 0]

    def coords_of_original(self, original_id: int) -> np.ndarray:
        """Sorted flat voxel indices of the instance(s) with original id ``original_id``."""
        parts = [self.coords(i) for i in self.relabelled(original_id)]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def size(self, i: int) -> int:
        return int(self._starts[i + 1] - self._starts[i])

    @property
    def has_overlaps(self) -> bool:
        """True if some voxel carries two or more instances."""
        return bool(self.keys.size > 1 and np.any(self.keys[1:] == self.keys[:-1]))

    def overlap_keys(self) -> np.ndarray:
        """Flat indices of voxels that carry two or more instances (sorted, unique)."""
        if self.keys.size < 2:
            return np.zeros(0, np.int64)
        dup = self.keys[1:] == self.keys[:-1]
        return np.unique(self.keys[1:][dup])

    def query(self, voxels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Instances present at ``voxels`` (flat indices).

        Returns ``(voxel_pos, ids, n_per_voxel)``: one row per (voxel, instance) hit, with the
        position of the voxel in ``voxels``; ``n_per_voxel[k]`` is 0 for background voxels.
        """
        lo = np.searchsorted(self.keys, voxels, "left")
        hi = np.searchsorted(self.keys, voxels, "right")
        n = hi - lo
        total = int(n.sum())
        pos = np.repeat(np.arange(voxels.size), n)
        first = np.cumsum(n) - n
        idx = np.repeat(lo - first, n) + np.arange(total)
        return pos, self.ids[idx], n

    def counts_at(self, voxels: np.ndarray, subset: np.ndarray | None = None) -> np.ndarray:
        """Per-id hit counts at ``voxels``; entry 0 counts voxels without any instance.

        With ``subset`` (relabelled ids, in order), count only those instances; the result then
        has ``len(subset) + 1`` entries and entry 0 counts voxels outside all of them.
        """
        pos, ids, n = self.query(voxels)
        if subset is None:
            counts = np.bincount(ids, minlength=self.n + 1).astype(np.int64)
            counts[0] = int(np.count_nonzero(n == 0))
            return counts
        lut = np.zeros(self.n + 1, np.int64)
        lut[np.asarray(subset, np.int64)] = np.arange(1, len(subset) + 1)
        sub = lut[ids]
        keep = sub > 0
        counts = np.bincount(sub[keep], minlength=len(subset) + 1).astype(np.int64)
        hit = np.zeros(voxels.size, bool)
        hit[pos[keep]] = True
        counts[0] = int(np.count_nonzero(~hit))
        return counts

    def covered(self, voxels: np.ndarray, ids: np.ndarray | list[int]) -> np.ndarray:
        """Boolean per voxel: is any instance of ``ids`` present there."""
        pos, hit_ids, _ = self.query(voxels)
        out = np.zeros(voxels.size, bool)
        out[pos[np.isin(hit_ids, np.asarray(ids))]] = True
        return out


# --------------------------------------------------------------------------------------------
# reading


def flatnonzero(flat: np.ndarray) -> np.ndarray:
    """``np.flatnonzero`` for a contiguous 1D array, several times faster on sparse data: the
    bytes are first scanned as 64-bit words and only nonzero words are expanded."""
    isz = flat.dtype.itemsize
    per = 8 // isz if isz in (1, 2, 4) else 0
    if per == 0 or flat.size < 64 or not flat.flags.c_contiguous:
        return np.flatnonzero(flat)
    m = flat.size // per * per
    words = np.flatnonzero(flat[:m].view(np.uint64))
    cand = (words[:, None] * per + np.arange(per)).ravel()
    idx = cand[flat[cand] != 0]
    if m < flat.size:
        idx = np.concatenate([idx, np.flatnonzero(flat[m:]) + m])
    return idx


def _squeezed_index(shape: tuple[int, ...]) -> tuple[tuple, tuple[int, ...]]:
    idx = tuple(0 if s == 1 else slice(None) for s in shape)
    return idx, tuple(s for s in shape if s != 1)


class _View:
    """A squeezed, cropped, channel-first view of an array-like, read in slabs."""

    def __init__(self, data: Any, what: str):
        if not hasattr(data, "shape") or not hasattr(data, "dtype"):
            data = np.asarray(data)
        self.data = data
        self.what = what
        dtype = np.dtype(data.dtype)
        if dtype.kind not in "biu":
            kind = "floating point" if dtype.kind == "f" else str(dtype)
            raise NeurosegError(
                f"{what} labels are {kind} ({dtype}); instance labels must be integers",
                fix="convert the labels to an integer type (e.g. np.uint32) or pass the right key",
            )
        self.dtype = dtype
        self._idx, sq = _squeezed_index(tuple(int(s) for s in data.shape))
        if len(sq) not in (3, 4):
            raise NeurosegError(
                f"{what} has shape {tuple(data.shape)}: {len(sq)}D after squeezing, but the FISBe "
                "metrics need a 3D (Z,Y,X) label volume or a 4D (N,Z,Y,X) instance stack",
                fix="pass a 3D volume (2D images are not supported)",
            )
        self.has_channels = len(sq) == 4
        self.full_shape = sq if self.has_channels else (1,) + sq
        self.crop = tuple(slice(0, s) for s in self.full_shape[1:])

    @property
    def spatial(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.crop)  # type: ignore[return-value]

    def crop_to(self, target: tuple[int, ...]) -> None:
        sp = self.full_shape[1:]
        off = [(a - b) // 2 for a, b in zip(sp, target)]
        self.crop = tuple(slice(o, o + t) for o, t in zip(off, target))

    def _read(self, z0: int, z1: int) -> np.ndarray:
        """Channel-first slab ``[:, z0:z1]`` of the cropped view as a numpy array."""
        zc, yc, xc = self.crop
        sl = [slice(zc.start + z0, zc.start + z1), yc, xc]
        if self.has_channels:
            sl = [slice(None)] + sl
        key = []
        it = iter(sl)
        for part in self._idx:
            key.append(part if isinstance(part, int) else next(it))
        arr = np.asarray(self.data[tuple(key)])
        if not self.has_channels:
            arr = arr[None]
        return arr

    def _z_step(self) -> int:
        n_ch, (_, ny, nx) = self.full_shape[0], self.spatial
        per_z = max(1, n_ch * ny * nx * self.dtype.itemsize)
        step = max(1, _SLAB_BYTES // per_z)
        chunks = getattr(self.data, "chunksize", None) or getattr(self.data, "chunks", None)
        if isinstance(chunks, tuple) and len(chunks) == len(self.data.shape):
            # align to the storage chunks along Z so that each chunk is decoded once
            zaxis = [i for i, p in enumerate(self._idx) if not isinstance(p, int)][-3]
            cz = chunks[zaxis]
            if isinstance(cz, int) and cz > 0:
                step = max(cz, (step // cz) * cz)
        return step

    def extract(self, progress=None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per channel: ``(flat voxel indices, values)`` of all nonzero voxels (sorted)."""
        from ..io.chunks import chunk_source

        src = chunk_source(self.data)
        if src is not None and src.shape == tuple(self.data.shape):
            try:
                return self._extract_chunks(src)
            finally:
                if src.close is not None:
                    src.close()
        return self._extract_slabs(progress)

    def _check_values(self, v: np.ndarray) -> None:
        if self.dtype.kind == "i" and v.size and v.min() < 0:
            raise NeurosegError(
                f"{self.what} contains negative label ids (min {int(v.min())})",
                fix="use 0 for background and positive integers for instances",
            )

    def _extract_chunks(self, src) -> list[tuple[np.ndarray, np.ndarray]]:
        nz, ny, nx = self.spatial
        crop0 = [s.start for s in self.crop]
        kept = [i for i, p in enumerate(self._idx) if not isinstance(p, int)]
        sp_axes = kept[-3:]
        ch_axis = kept[0] if self.has_channels else None
        squeeze = tuple(0 if isinstance(p, int) else slice(None) for p in self._idx)
        spatial = (nz, ny, nx)

        def fn(origin, chunk):
            c = chunk[squeeze]
            if ch_axis is None:
                c, ch0 = c[None], 0
            else:
                ch0 = origin[ch_axis]
            o = [origin[a] for a in sp_axes]
            lo = [max(0, crop0[k] - o[k]) for k in range(3)]
            hi = [min(c.shape[1 + k], crop0[k] + spatial[k] - o[k]) for k in range(3)]
            if any(h <= l for l, h in zip(lo, hi)):
                return None
            c = c[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
            base = [o[k] + lo[k] - crop0[k] for k in range(3)]
            out = []
            for ci in range(c.shape[0]):
                cc = np.ascontiguousarray(c[ci]).reshape(-1)
                idx = flatnonzero(cc)
                if idx.size == 0:
                    continue
                v = cc[idx].astype(np.int64)
                zz, yy, xx = np.unravel_index(idx, c.shape[1:])
                keys = ((zz + base[0]) * ny + (yy + base[1])) * nx + (xx + base[2])
                out.append((ch0 + ci, keys.astype(np.int64), v))
            return out

        n_ch = self.full_shape[0]
        keys: list[list[np.ndarray]] = [[] for _ in range(n_ch)]
        vals: list[list[np.ndarray]] = [[] for _ in range(n_ch)]
        for res in src.iter_decoded(fn):
            for ch, k, v in res or ():
                self._check_values(v)
                keys[ch].append(k)
                vals[ch].append(v)
        out = []
        for c in range(n_ch):
            if keys[c]:
                k, v = np.concatenate(keys[c]), np.concatenate(vals[c])
                order = np.argsort(k, kind="stable")
                out.append((k[order], v[order]))
            else:
                out.append((np.zeros(0, np.int64), np.zeros(0, np.int64)))
        return out

    def _extract_slabs(self, progress=None) -> list[tuple[np.ndarray, np.ndarray]]:
        nz, ny, nx = self.spatial
        plane = ny * nx
        n_ch = self.full_shape[0]
        keys: list[list[np.ndarray]] = [[] for _ in range(n_ch)]
        vals: list[list[np.ndarray]] = [[] for _ in range(n_ch)]
        step = self._z_step()
        for z0 in range(0, nz, step):
            z1 = min(nz, z0 + step)
            slab = self._read(z0, z1)
            for c in range(n_ch):
                flat = slab[c].reshape(-1)
                idx = flatnonzero(flat)
                if idx.size == 0:
                    continue
                v = flat[idx]
                self._check_values(v)
                keys[c].append(idx.astype(np.int64) + z0 * plane)
                vals[c].append(v.astype(np.int64))
            del slab
            if progress is not None:
                progress(z1, nz)
        out = []
        for c in range(n_ch):
            if keys[c]:
                out.append((np.concatenate(keys[c]), np.concatenate(vals[c])))
            else:
                out.append((np.zeros(0, np.int64), np.zeros(0, np.int64)))
        return out


def match_shapes(gt: _View, pred: _View) -> str | None:
    """Centre-crop the larger of the two (spatially), as the official evaluator does."""
    g, p = gt.full_shape[1:], pred.full_shape[1:]
    if g == p:
        return None
    if all(a <= b for a, b in zip(g, p)):
        pred.crop_to(g)
        return f"prediction {p} centre-cropped to the ground-truth shape {g}"
    if all(b <= a for a, b in zip(g, p)):
        gt.crop_to(p)
        return f"ground truth {g} centre-cropped to the prediction shape {p}"
    raise NeurosegError(
        f"spatial shapes differ: ground truth {g}, prediction {p}; the ground truth is larger in "
        "some axes and the prediction in others, so neither can be centre-cropped to the other",
        fix="pass volumes of the same (Z,Y,X) shape",
    )


def build(
    channels: list[tuple[np.ndarray, np.ndarray]],
    shape: tuple[int, int, int],
    *,
    min_size: int | None = None,
) -> tuple[SparseLabels, list[int]]:
    """Apply steps 2–3 of the preprocessing; returns the labels and the removed small ids."""
    removed: list[int] = []
    if min_size is not None and min_size > 0 and channels:
        all_vals = np.concatenate([v for _, v in channels])
        if all_vals.size:
            u, c = np.unique(all_vals, return_counts=True)
            small = u[c <= min_size]
            if small.size:
                removed = [int(x) for x in small]
                channels = [(k[~np.isin(v, small)], v[~np.isin(v, small)]) for k, v in channels]
    chan_index = list(range(len(channels)))
    if len(channels) > 1:
        keep = [i for i, (k, _) in enumerate(channels) if k.size > 0]
        channels = [channels[i] for i in keep]
        chan_index = keep
    gmax = max((int(v.max()) for _, v in channels if v.size), default=0)
    binary = gmax == 1
    keys_all, ids_all, original = [], [], [0]
    offset = 1
    for ci, (k, v) in zip(chan_index, channels):
        if k.size == 0:
            continue
        if binary:
            u = np.array([1])
            new = np.full(v.size, offset, np.int64)
            original.append(ci + 1)
        else:
            u, inv = np.unique(v, return_inverse=True)
            new = inv.astype(np.int64) + offset
            original.extend(int(x) for x in u)
        offset += len(u)
        keys_all.append(k)
        ids_all.append(new)
    if keys_all:
        keys = np.concatenate(keys_all)
        ids = np.concatenate(ids_all)
        order = np.argsort(keys, kind="stable")
        keys, ids = keys[order], ids[order].astype(np.int32)
    else:
        keys, ids = np.zeros(0, np.int64), np.zeros(0, np.int32)
    n = offset - 1
    lab = SparseLabels(
        shape=shape,
        keys=keys,
        ids=ids,
        n=n,
        original=np.asarray(original, np.int64),
        n_channels=max(1, len(channels)),
    )
    return lab, removed
