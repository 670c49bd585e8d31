"""From network outputs (foreground + affinities) and raw colour to neuron instances.

Global on the whole volume (after tiled network inference), so a neuron that crosses tile borders
keeps one id. Works on the foreground voxels only (a sparse graph), so its cost scales with the
amount of neurite, not with the volume.

1. Foreground = ``fg_prob > fg_threshold``.
2. Fragments: connected components of the graph of 6-neighbour foreground voxel pairs whose
   edge is kept: the learned short-range affinity is ``> aff_threshold`` (design "affinity") and/or
   the normalised colour of the two voxels (masked-smoothed raw, unit length) differs by less than
   ``colour_threshold`` (design "colour").
3. Agglomeration: adjacent fragments (short-range pairs), fragments linked by long-range
   affinities (gap bridging) and fragments touching a common fragment (a neuron cut in two by a
   crossing; colour only) are merged greedily, most similar colour first, while the colour of
   the two growing clusters differs by less than ``merge_threshold`` (and, with affinities, their
   mean affinity is ``> aff_threshold``).
4. Clusters smaller than ``min_size`` voxels join the touching cluster of the closest colour, or
   are dropped when isolated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .targets import N_SHORT, OFFSETS


@dataclass
class PostprocessParams:
    """Thresholds of the post-processing (defaults tuned on synthetic validation volumes)."""

    fg_threshold: float = 0.5
    aff_threshold: float = 0.5
    colour_threshold: float = 0.25
    merge_threshold: float = 0.15
    min_size: int = 40
    use_affinities: bool = True
    use_colour: bool = True
    colour_sigma: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


class _UnionFind:
    def __init__(self, n: int, colour: np.ndarray, size: np.ndarray):
        self.parent = np.arange(n)
        self.colour = colour.astype(np.float64).copy()  # summed colour (not normalised)
        self.size = size.astype(np.int64).copy()

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return root

    def union(self, a: int, b: int) -> int:
        if self.size[a] < self.size[b]:
            a, b = b, a
        self.parent[b] = a
        self.size[a] += self.size[b]
        self.colour[a] += self.colour[b]
        return a


def _unit(c: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(c, axis=-1, keepdims=True)
    return c / np.maximum(n, 1e-9)


def _pairs(idx: np.ndarray, fg_flat: np.ndarray, shape, off) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) node pairs where voxel idx[i] + off is the foreground voxel idx[j]."""
    zyx = np.unravel_index(idx, shape)
    ok = np.ones(len(idx), bool)
    for ax, o in enumerate(off):
        if o:
            c = zyx[ax] + o
            ok &= (c >= 0) & (c < shape[ax])
    stride = int(np.dot(off, [shape[1] * shape[2], shape[2], 1]))
    src = np.flatnonzero(ok)
    nbr = idx[src] + stride
    isfg = fg_flat[nbr]
    src = src[isfg]
    dst = np.searchsorted(idx, nbr[isfg])
    return src, dst


def voxel_colour(image: np.ndarray, fg: np.ndarray, sigma: float) -> np.ndarray:
    """(3,Z,Y,X) normalised image → (3,Z,Y,X) colour smoothed within the foreground only."""
    fgf = fg.astype(np.float32)
    den = ndimage.gaussian_filter(fgf, sigma) if sigma > 0 else fgf
    out = np.empty(image.shape, np.float32)
    for c in range(image.shape[0]):
        v = np.clip(image[c], 0, None) * fgf
        out[c] = ndimage.gaussian_filter(v, sigma) if sigma > 0 else v
    out /= np.maximum(den, 1e-6)
    return out


def instances_from_outputs(
    fg_prob: np.ndarray,
    affs: np.ndarray | None,
    image: np.ndarray,
    params: PostprocessParams | None = None,
) -> np.ndarray:
    """Label volume (uint32 ZYX, 0 = background) from the foreground probability (Z,Y,X), the
    affinity probabilities (K,Z,Y,X, ordered as :data:`OFFSETS`; may be None when
    ``use_affinities`` is False) and the normalised colour image (3,Z,Y,X)."""
    p = params or PostprocessParams()
    shape = fg_prob.shape
    fg = fg_prob > p.fg_threshold
    idx = np.flatnonzero(fg)
    labels = np.zeros(shape, np.uint32)
    n = len(idx)
    if n == 0:
        return labels
    fg_flat = fg.ravel()
    use_aff = p.use_affinities and affs is not None
    col = voxel_colour(image, fg, p.colour_sigma).reshape(3, -1)[:, idx].T  # (n, 3)
    col = np.clip(col, 0, None)
    ucol = _unit(col)

    # 2. fragments
    keep_i, keep_j, cand = [], [], []
    for k in range(len(OFFSETS)):
        i, j = _pairs(idx, fg_flat, shape, OFFSETS[k])
        a = affs[k].ravel()[idx[i]].astype(np.float32) if use_aff else None
        if a is not None and affs.dtype == np.uint8:
            a = a / 255.0
        if k < N_SHORT:
            ok = np.ones(len(i), bool)
            if use_aff:
                ok &= a > p.aff_threshold
            if p.use_colour or not use_aff:
                d = np.linalg.norm(ucol[i] - ucol[j], axis=1)
                ok &= d < p.colour_threshold
            keep_i.append(i[ok])
            keep_j.append(j[ok])
        cand.append((i, j, a if a is not None else np.ones(len(i), np.float32)))
    ki = np.concatenate(keep_i)
    kj = np.concatenate(keep_j)
    g = coo_matrix((np.ones(len(ki), np.int8), (ki, kj)), shape=(n, n))
    nfrag, frag = connected_components(g, directed=False)

    # 3. agglomeration over fragment pairs
    fsize = np.bincount(frag, minlength=nfrag)
    fcol = np.stack([np.bincount(frag, weights=col[:, c], minlength=nfrag) for c in range(3)], 1)
    ci = np.concatenate([frag[i] for i, _, _ in cand])
    cj = np.concatenate([frag[j] for _, j, _ in cand])
    ca = np.concatenate([a for _, _, a in cand])
    sel = ci != cj
    ci, cj, ca = ci[sel], cj[sel], ca[sel]
    uf = _UnionFind(nfrag, fcol, fsize)
    if len(ci):
        lo, hi = np.minimum(ci, cj), np.maximum(ci, cj)
        key = lo.astype(np.int64) * nfrag + hi
        ukey, inv = np.unique(key, return_inverse=True)
        mean_aff = np.bincount(inv, weights=ca) / np.bincount(inv)
        pa, pb = ukey // nfrag, ukey % nfrag
        # two-hop candidates: fragments that touch a common fragment (a neuron cut in two by
        # the overlap region of a crossing neuron); judged by colour only
        nbrs: dict[int, list[int]] = {}
        for x, y in zip(pa.tolist(), pb.tolist()):
            nbrs.setdefault(x, []).append(y)
            nbrs.setdefault(y, []).append(x)
        hop = set()
        for lst in nbrs.values():
            if 2 <= len(lst) <= 12:
                for u in range(len(lst)):
                    for w in range(u + 1, len(lst)):
                        x, y = sorted((lst[u], lst[w]))
                        hop.add(x * nfrag + y)
        hop -= set(ukey.tolist())
        if hop:
            hk = np.fromiter(hop, np.int64, len(hop))
            pa = np.concatenate([pa, hk // nfrag])
            pb = np.concatenate([pb, hk % nfrag])
            mean_aff = np.concatenate([mean_aff, np.ones(len(hk))])
        ufc = _unit(fcol)
        dist = np.linalg.norm(ufc[pa] - ufc[pb], axis=1)
        ok = dist < p.merge_threshold
        if use_aff:
            ok &= mean_aff > p.aff_threshold
        order = np.argsort(dist[ok], kind="stable")
        for a_, b_ in zip(pa[ok][order], pb[ok][order]):
            ra, rb = uf.find(int(a_)), uf.find(int(b_))
            if ra == rb:
                continue
            ca_, cb_ = uf.colour[ra], uf.colour[rb]
            d = np.linalg.norm(ca_ / max(np.linalg.norm(ca_), 1e-9) - cb_ / max(np.linalg.norm(cb_), 1e-9))
            if d < p.merge_threshold:
                uf.union(ra, rb)
        # 4. small clusters join the touching cluster of the closest colour
        roots = np.array([uf.find(i) for i in range(nfrag)])
        small = uf.size < p.min_size
        ra_, rb_ = roots[pa], roots[pb]
        adj = ra_ != rb_
        ra_, rb_ = ra_[adj], rb_[adj]
        if p.min_size > 0 and len(ra_):
            for _ in range(3):
                roots_now = np.array([uf.find(int(r)) for r in range(nfrag)])
                x, y = roots_now[ra_], roots_now[rb_]
                cand_pairs = [(a, b) for a, b in zip(x, y) if a != b]
                changed = False
                best: dict[int, tuple[float, int]] = {}
                for a, b in cand_pairs:
                    for s, o in ((a, b), (b, a)):
                        if uf.size[s] < p.min_size and uf.size[o] >= uf.size[s]:
                            cs, co = uf.colour[s], uf.colour[o]
                            d = float(np.linalg.norm(cs / max(np.linalg.norm(cs), 1e-9) - co / max(np.linalg.norm(co), 1e-9)))
                            if s not in best or d < best[s][0]:
                                best[s] = (d, o)
                for s, (_, o) in best.items():
                    rs, ro = uf.find(s), uf.find(o)
                    if rs != ro and uf.size[rs] < p.min_size:
                        uf.union(ro, rs)
                        changed = True
                if not changed:
                    break
        del small
    roots = np.array([uf.find(i) for i in range(nfrag)])
    comp = roots[frag]
    size = np.bincount(comp, minlength=nfrag)
    keep = size >= max(p.min_size, 1)
    new_id = np.zeros(nfrag, np.uint32)
    new_id[keep] = np.arange(1, keep.sum() + 1, dtype=np.uint32)
    labels.ravel()[idx] = new_id[comp]
    return labels
