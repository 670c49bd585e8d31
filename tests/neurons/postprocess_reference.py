"""The neuron post-processing as it was before issue 14 (commit 093fd6b), kept verbatim as the
reference for the equivalence tests (``test_postprocess_fast.py``) and the speed benchmark
(``benchmarks/bench_neuron_postprocess.py``). Not part of the package: the package has one
implementation (``napari_neuroseg.models.neurons.postprocess``)."""

from __future__ import annotations

import math
import time

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from napari_neuroseg.models.neurons.postprocess import PostprocessParams
from napari_neuroseg.models.neurons.targets import N_SHORT, OFFSETS


class _Marks:
    """Seconds per step into ``timings`` (the only addition to the old code: timing marks)."""

    def __init__(self, timings):
        self.t, self.d = time.perf_counter(), timings

    def __call__(self, name):
        if self.d is not None:
            t = time.perf_counter()
            self.d[name] = self.d.get(name, 0.0) + t - self.t
            self.t = t


class _UnionFind:
    def __init__(self, n: int, colour: np.ndarray, size: np.ndarray):
        self.parent = np.arange(n)
        self.colour = colour.astype(np.float64).copy()  # summed colour (not normalised)
        self.size = size.astype(np.int64).copy()

    def roots(self) -> np.ndarray:
        """Root of every element (vectorised path halving)."""
        p = self.parent
        while True:
            q = p[p]
            if np.array_equal(q, p):
                return p
            p = q
            self.parent = p

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


def _smooth_on_graph(col: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]], steps: int) -> np.ndarray:
    """Average each foreground voxel's colour with its foreground 6-neighbours, ``steps`` times
    (colour smoothing restricted to the neurite: background never leaks in)."""
    if steps <= 0:
        return col
    deg = np.ones(len(col))
    for i, j in pairs:
        deg += np.bincount(i, minlength=len(col)) + np.bincount(j, minlength=len(col))
    for _ in range(steps):
        acc = col.copy()
        for i, j in pairs:
            for c in range(col.shape[1]):
                acc[:, c] += np.bincount(i, weights=col[j, c], minlength=len(col))
                acc[:, c] += np.bincount(j, weights=col[i, c], minlength=len(col))
        col = acc / deg[:, None]
    return col


def reference_instances_from_outputs(
    fg_prob: np.ndarray,
    affs: np.ndarray | None,
    image: np.ndarray,
    params: PostprocessParams | None = None,
    timings: dict | None = None,
) -> np.ndarray:
    """Label volume (uint32 ZYX, 0 = background) from the foreground probability (Z,Y,X; float in
    [0, 1] or uint8 = probability × 255), the
    affinity probabilities (K,Z,Y,X, ordered as :data:`OFFSETS`; may be None when
    ``use_affinities`` is False) and the normalised colour image (3,Z,Y,X)."""
    mark = _Marks(timings)
    p = params or PostprocessParams()
    shape = fg_prob.shape
    fg_prob = np.asarray(fg_prob)
    # uint8 maps hold probability × 255 (as returned by the tiled network)
    fg = fg_prob > (p.fg_threshold * 255 if fg_prob.dtype == np.uint8 else p.fg_threshold)
    idx = np.flatnonzero(fg)
    labels = np.zeros(shape, np.uint32)
    n = len(idx)
    if n == 0:
        return labels
    mark("foreground")
    fg_flat = fg.ravel()
    use_aff = p.use_affinities and affs is not None
    pairs = [_pairs(idx, fg_flat, shape, off) for off in OFFSETS]
    mark("pairs")
    col = np.stack([np.clip(image[c].ravel()[idx], 0, None) for c in range(image.shape[0])], 1).astype(np.float64)
    col = _smooth_on_graph(col, pairs[:N_SHORT], int(round(p.colour_sigma * 2)))
    ucol = _unit(col)
    mark("colour")

    # 2. fragments
    keep_i, keep_j, cand = [], [], []
    for k in range(len(OFFSETS)):
        i, j = pairs[k]
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
    mark("fragments")

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
        mark("candidates")
        # two-hop candidates: fragments that touch a common fragment (a neuron cut in two by
        # the overlap region of a crossing neuron); judged by colour only
        nbrs: dict[int, list[int]] = {}
        for x, y in zip(pa.tolist(), pb.tolist()):
            nbrs.setdefault(x, []).append(y)
            nbrs.setdefault(y, []).append(x)
        hop = set()
        for f, lst in nbrs.items():
            if 2 <= len(lst) <= 6 and fsize[f] <= 400:
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
        mark("two_hop")
        ufc = _unit(fcol)
        dist = np.linalg.norm(ufc[pa] - ufc[pb], axis=1)
        ok = dist < p.merge_threshold
        if use_aff:
            ok &= mean_aff > p.aff_threshold
        order = np.argsort(dist[ok], kind="stable")
        cl = uf.colour.tolist()  # running colour sums per root (plain floats: fast scalar maths)
        thr = p.merge_threshold
        for a_, b_ in zip(pa[ok][order].tolist(), pb[ok][order].tolist()):
            ra, rb = uf.find(a_), uf.find(b_)
            if ra == rb:
                continue
            u, w = cl[ra], cl[rb]
            nu = math.sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2]) or 1e-9
            nw = math.sqrt(w[0] * w[0] + w[1] * w[1] + w[2] * w[2]) or 1e-9
            d = math.sqrt((u[0] / nu - w[0] / nw) ** 2 + (u[1] / nu - w[1] / nw) ** 2 + (u[2] / nu - w[2] / nw) ** 2)
            if d < thr:
                root = uf.union(ra, rb)
                cl[root] = [u[0] + w[0], u[1] + w[1], u[2] + w[2]]
        mark("merge")
        # 4. small clusters join the touching cluster of the closest colour
        if p.min_size > 0:
            for _ in range(3):
                r = uf.roots()
                x, y = r[pa], r[pb]
                sel = x != y
                x, y = np.concatenate([x[sel], y[sel]]), np.concatenate([y[sel], x[sel]])
                small = (uf.size[x] < p.min_size) & (uf.size[y] >= uf.size[x])
                x, y = x[small], y[small]
                if not len(x):
                    break
                uc = _unit(uf.colour)
                d = np.linalg.norm(uc[x] - uc[y], axis=1)
                order = np.lexsort((d, x))
                x, y = x[order], y[order]
                first = np.r_[True, x[1:] != x[:-1]]
                changed = False
                for s_, o_ in zip(x[first].tolist(), y[first].tolist()):
                    rs, ro = uf.find(s_), uf.find(o_)
                    if rs != ro and uf.size[rs] < p.min_size:
                        uf.union(ro, rs)
                        changed = True
                if not changed:
                    break
        mark("small_clusters")
    comp = uf.roots()[frag]
    size = np.bincount(comp, minlength=nfrag)
    keep = size >= max(p.min_size, 1)
    new_id = np.zeros(nfrag, np.uint32)
    new_id[keep] = np.arange(1, keep.sum() + 1, dtype=np.uint32)
    labels.ravel()[idx] = new_id[comp]
    mark("labels")
    return labels
