"""numba kernels of the neuron post-processing (:mod:`.postprocess`).

Every kernel is compiled with ``nogil=True`` and works on a ``[start, stop)`` range, so
:func:`run_chunks` runs independent ranges in a thread pool (no numba threading layer: safe when
several batch threads post-process at once). Each kernel reproduces the floating-point operations
of the former numpy code in the same order (sums start at 0.0 and run in voxel order, norms are
``sqrt((a*a + b*b) + c*c)`` like ``numpy.linalg.norm`` over 3 values, ``x ** 2`` is the C
library's ``pow`` like Python's), so the labels are bit-identical to the former implementation
(kept in ``tests/neurons/postprocess_reference.py``).

The foreground voxels are numbered in raster order (``idx``, flat indices, ascending); ``rowptr``
gives the first voxel number of every (z, y) row. Neighbours are found by merging two sorted rows
(no volume-sized index array).
"""

from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numba as nb
import numpy as np

_JIT = {"nogil": True, "cache": True, "error_model": "numpy"}


def n_threads() -> int:
    """Threads for the chunked kernels: the CPUs this process may use (at most 16)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


def split(bounds_of: np.ndarray | int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges of ``range(n)`` (``bounds_of`` = n), or of rows balanced by
    the voxel counts when ``bounds_of`` is a ``rowptr`` array."""
    if isinstance(bounds_of, (int, np.integer)):
        n = int(bounds_of)
        cuts = np.linspace(0, n, parts + 1).astype(np.int64)
    else:
        rowptr = bounds_of
        cuts = np.searchsorted(rowptr, np.linspace(0, rowptr[-1], parts + 1), side="left").astype(np.int64)
        cuts[0], cuts[-1] = 0, len(rowptr) - 1
        cuts = np.maximum.accumulate(cuts)
    return [(int(a), int(b)) for a, b in itertools.pairwise(cuts) if b > a]


def run_chunks(fn, ranges: list[tuple[int, int]], *args, with_index: bool = False) -> None:
    """``fn(*args, start, stop)`` (``fn(*args, start, stop, i)`` with ``with_index``) for every
    range ``i``, in a thread pool when there are several."""
    calls = [args + ((a, b, i) if with_index else (a, b)) for i, (a, b) in enumerate(ranges)]
    if len(calls) <= 1:
        for c in calls:
            fn(*c)
        return
    with ThreadPoolExecutor(len(calls)) as ex:
        for f in [ex.submit(fn, *c) for c in calls]:
            f.result()


# -- foreground index ------------------------------------------------------------------------
@nb.njit(**_JIT)
def count_rows(fg, counts, z0, z1):
    """``counts[z*Y + y]`` = foreground voxels in row (z, y), for z in [z0, z1)."""
    Y, X = fg.shape[1], fg.shape[2]
    for z in range(z0, z1):
        for y in range(Y):
            c = 0
            for x in range(X):
                if fg[z, y, x]:
                    c += 1
            counts[z * Y + y] = c


@nb.njit(**_JIT)
def fill_index(fg, rowptr, idx, z0, z1):
    """Flat indices of the foreground voxels of slices [z0, z1) (raster order)."""
    Y, X = fg.shape[1], fg.shape[2]
    for z in range(z0, z1):
        for y in range(Y):
            r = z * Y + y
            p = rowptr[r]
            base = r * X
            for x in range(X):
                if fg[z, y, x]:
                    idx[p] = base + x
                    p += 1


# -- neighbours -----------------------------------------------------------------------------
@nb.njit(**_JIT)
def neighbours(idx, rowptr, Z, Y, X, offsets, nbr, r0, r1):
    """``nbr[k, v]`` = number of the foreground voxel at ``voxel v + offsets[k]`` (offsets >= 0),
    or -1; for the voxels of rows [r0, r1). Two sorted rows are merged per offset."""
    for k in range(offsets.shape[0]):
        dz, dy, dx = offsets[k, 0], offsets[k, 1], offsets[k, 2]
        for r in range(r0, r1):
            p0, p1 = rowptr[r], rowptr[r + 1]
            if p0 == p1:
                continue
            z = r // Y
            y = r - z * Y
            tz, ty = z + dz, y + dy
            if tz >= Z or ty >= Y:
                for p in range(p0, p1):
                    nbr[k, p] = -1
                continue
            tr = tz * Y + ty
            q, qe = rowptr[tr], rowptr[tr + 1]
            base, tbase = r * X, tr * X
            for p in range(p0, p1):
                tx = idx[p] - base + dx
                nbr[k, p] = -1
                if tx >= X:
                    continue
                while q < qe and idx[q] - tbase < tx:
                    q += 1
                if q < qe and idx[q] - tbase == tx:
                    nbr[k, p] = q


@nb.njit(**_JIT)
def reverse_neighbours(nbr, n_short, rev, v0, v1):
    """``rev[k, nbr[k, v]] = v`` (the neighbour at ``-offset``) for the short-range offsets."""
    for k in range(n_short):
        for v in range(v0, v1):
            j = nbr[k, v]
            if j >= 0:
                rev[k, j] = v


# -- colour ---------------------------------------------------------------------------------
@nb.njit(**_JIT)
def gather_colour(img, idx, col, v0, v1):
    """``col[v, c]`` = ``img[c, idx[v]]`` clipped below at 0 (in the image dtype), as float64."""
    for v in range(v0, v1):
        i = idx[v]
        for c in range(img.shape[0]):
            a = img[c, i]
            if not (a >= 0 or a != a):  # noqa: PLR0124 - np.clip(a, 0, None): NaN stays NaN
                a = 0
            col[v, c] = a


@nb.njit(**_JIT)
def smooth_step(col, nbr, rev, n_short, out, v0, v1):
    """One neighbour-averaging step restricted to the foreground (the former bincount sums:
    own colour + (+offset, -offset) neighbours per short-range offset, then / degree)."""
    C = col.shape[1]
    for v in range(v0, v1):
        deg = 1.0
        for k in range(n_short):
            if nbr[k, v] >= 0:
                deg += 1.0
            if rev[k, v] >= 0:
                deg += 1.0
        for c in range(C):
            acc = col[v, c]
            for k in range(n_short):
                j = nbr[k, v]
                acc += col[j, c] if j >= 0 else 0.0
                j = rev[k, v]
                acc += col[j, c] if j >= 0 else 0.0
            out[v, c] = acc / deg


@nb.njit(**_JIT)
def _unit3(col, v):
    """Row v scaled to unit length (``numpy.linalg.norm`` order; the norm floored at 1e-9)."""
    a, b, c = col[v, 0], col[v, 1], col[v, 2]
    nrm = math.sqrt(a * a + b * b + c * c)
    if not nrm >= 1e-9 and nrm == nrm:  # noqa: PLR0124 - np.maximum(n, 1e-9): NaN propagates
        nrm = 1e-9
    return a / nrm, b / nrm, c / nrm


@nb.njit(**_JIT)
def aff_value(aff, i, scale):
    """Affinity of flat voxel i as float32 (uint8 maps divided by 255 in float32)."""
    a = np.float32(aff[i])
    if scale:
        a = a / np.float32(255.0)
    return a


@nb.njit(**_JIT)
def keep_edges(col, nbr, n_short, idx, affs, aff_scale, use_aff, aff_thr, use_col, col_thr, keep, v0, v1):
    """Bit k of ``keep[v]``: the short-range edge (v, nbr[k, v]) joins one fragment (affinity >
    ``aff_thr`` (float32) and/or distance of the unit colours < ``col_thr``)."""
    for v in range(v0, v1):
        bits = 0
        u0, u1, u2 = _unit3(col, v)
        for k in range(n_short):
            j = nbr[k, v]
            if j < 0:
                continue
            ok = True
            if use_aff:
                ok = aff_value(affs[k], idx[v], aff_scale) > aff_thr
            if ok and use_col:
                w0, w1, w2 = _unit3(col, j)
                d0, d1, d2 = u0 - w0, u1 - w1, u2 - w2
                ok = math.sqrt(d0 * d0 + d1 * d1 + d2 * d2) < col_thr
            if ok:
                bits |= 1 << k
        keep[v] = bits


@nb.njit(**_JIT)
def _find(parent, a):
    root = a
    while parent[root] != root:
        root = parent[root]
    while parent[a] != root:
        nxt = parent[a]
        parent[a] = root
        a = nxt
    return root


@nb.njit(**_JIT)
def fragments(nbr, n_short, keep):
    """Connected components of the kept edges, numbered by their smallest voxel (the order of
    ``scipy.sparse.csgraph.connected_components``). Returns ``(nfrag, frag)``."""
    n = keep.shape[0]
    parent = np.arange(n)
    for v in range(n):
        b = keep[v]
        if b == 0:
            continue
        for k in range(n_short):
            if b & (1 << k):
                ra, rb = _find(parent, v), _find(parent, nbr[k, v])
                if ra < rb:
                    parent[rb] = ra
                elif rb < ra:
                    parent[ra] = rb
    frag = np.empty(n, np.int64)
    nfrag = 0
    for v in range(n):
        r = _find(parent, v)  # the root is the smallest voxel of the component
        if r == v:
            frag[v] = nfrag
            nfrag += 1
        else:
            frag[v] = frag[r]
    return nfrag, frag


@nb.njit(**_JIT)
def fragment_stats(frag, col, nfrag):
    """Voxel count and summed colour (first 3 channels, voxel order) per fragment."""
    size = np.zeros(nfrag, np.int64)
    fcol = np.zeros((nfrag, 3), np.float64)
    for v in range(frag.shape[0]):
        f = frag[v]
        size[f] += 1
        for c in range(3):
            fcol[f, c] += col[v, c]
    return size, fcol


@nb.njit(**_JIT)
def count_candidates(nbr, frag, counts, v0, v1, chunk):
    """``counts[k, chunk]`` = voxel pairs (v, nbr[k, v]) of different fragments, v in [v0, v1)."""
    for k in range(nbr.shape[0]):
        c = 0
        for v in range(v0, v1):
            j = nbr[k, v]
            if j >= 0 and frag[v] != frag[j]:
                c += 1
        counts[k, chunk] = c


@nb.njit(**_JIT)
def fill_candidates(nbr, frag, nfrag, starts, idx, affs, aff_scale, use_aff, key, val, v0, v1, chunk):
    """Key ``lo * nfrag + hi`` (and float32 affinity, or 1) of every pair counted by
    :func:`count_candidates`, written in the order offset, voxel."""
    for k in range(nbr.shape[0]):
        p = starts[k, chunk]
        for v in range(v0, v1):
            j = nbr[k, v]
            if j < 0:
                continue
            a, b = frag[v], frag[j]
            if a == b:
                continue
            if a > b:
                a, b = b, a
            key[p] = a * nfrag + b
            val[p] = aff_value(affs[k], idx[v], aff_scale) if use_aff else np.float32(1.0)
            p += 1


@nb.njit(**_JIT)
def segment_means(skey, sval):
    """Mean of ``sval`` per run of equal ``skey`` (sorted, stable), summed in order from 0.0."""
    n = skey.shape[0]
    out = np.empty(n, np.float64)
    m = 0
    i = 0
    while i < n:
        s = 0.0
        j = i
        while j < n and skey[j] == skey[i]:
            s += np.float64(sval[j])
            j += 1
        out[m] = s / (j - i)
        m += 1
        i = j
    return out[:m]


# -- agglomeration --------------------------------------------------------------------------
@nb.njit(**_JIT)
def two_hop_sequence(pa, pb, nfrag, fsize, max_deg, max_size):
    """Keys ``x * nfrag + y`` (x < y) of the fragment pairs that touch a common fragment, in the
    order the former dict/set code added them (fragments in order of first appearance in the
    sorted pair list, their neighbours ascending); duplicates kept."""
    P = pa.shape[0]
    deg = np.zeros(nfrag, np.int64)
    first = np.full(nfrag, -1, np.int64)
    for p in range(P):
        x, y = pa[p], pb[p]
        deg[x] += 1
        deg[y] += 1
        if first[x] < 0:
            first[x] = 2 * p
        if first[y] < 0:
            first[y] = 2 * p + 1
    start = np.zeros(nfrag + 1, np.int64)
    for f in range(nfrag):
        start[f + 1] = start[f] + deg[f]
    fill = start[:-1].copy()
    lst = np.empty(start[nfrag], np.int64)
    for p in range(P):
        x, y = pa[p], pb[p]
        lst[fill[x]] = y
        fill[x] += 1
        lst[fill[y]] = x
        fill[y] += 1
    by_first = np.full(2 * P, -1, np.int64)
    for f in range(nfrag):
        if first[f] >= 0:
            by_first[first[f]] = f
    total = 0
    for f in range(nfrag):
        d = deg[f]
        if 2 <= d <= max_deg and fsize[f] <= max_size:
            total += d * (d - 1) // 2
    out = np.empty(total, np.int64)
    m = 0
    for q in range(2 * P):
        f = by_first[q]
        if f < 0:
            continue
        d = deg[f]
        if not (2 <= d <= max_deg and fsize[f] <= max_size):
            continue
        s = start[f]
        for u in range(d):
            for w in range(u + 1, d):
                a, b = lst[s + u], lst[s + w]
                if a > b:
                    a, b = b, a
                out[m] = a * nfrag + b
                m += 1
    return out


@nb.njit(**_JIT)
def _union(parent, size, colour, a, b):
    if size[a] < size[b]:
        a, b = b, a
    parent[b] = a
    size[a] += size[b]
    for c in range(3):
        colour[a, c] += colour[b, c]
    return a


@nb.njit(**_JIT)
def greedy_merge(pa, pb, parent, size, colour, thr, two):
    """Merge the pairs in the given order while the unit colours of the two clusters differ by
    less than ``thr`` (the former Python loop's arithmetic; ``two`` = 2.0 is an argument so that
    ``pow`` stays the C library call, like Python's ``x ** 2``)."""
    for p in range(pa.shape[0]):
        ra, rb = _find(parent, pa[p]), _find(parent, pb[p])
        if ra == rb:
            continue
        u0, u1, u2 = colour[ra, 0], colour[ra, 1], colour[ra, 2]
        w0, w1, w2 = colour[rb, 0], colour[rb, 1], colour[rb, 2]
        nu = math.sqrt(u0 * u0 + u1 * u1 + u2 * u2)
        if nu == 0.0:
            nu = 1e-9
        nw = math.sqrt(w0 * w0 + w1 * w1 + w2 * w2)
        if nw == 0.0:
            nw = 1e-9
        d = math.sqrt(math.pow(u0 / nu - w0 / nw, two) + math.pow(u1 / nu - w1 / nw, two)
                      + math.pow(u2 / nu - w2 / nw, two))
        if d < thr:
            _union(parent, size, colour, ra, rb)


@nb.njit(**_JIT)
def pair_dist(ufc, pa, pb, out, p0, p1):
    """``out[p]`` = distance of rows pa[p], pb[p] of ``ufc`` (``numpy.linalg.norm`` order)."""
    for p in range(p0, p1):
        a, b = pa[p], pb[p]
        d0 = ufc[a, 0] - ufc[b, 0]
        d1 = ufc[a, 1] - ufc[b, 1]
        d2 = ufc[a, 2] - ufc[b, 2]
        out[p] = math.sqrt(d0 * d0 + d1 * d1 + d2 * d2)


@nb.njit(**_JIT)
def stable_argsort_nonneg(vals):
    """``numpy.argsort(vals, kind="stable")`` for float64 values >= 0 without NaN (their bit
    patterns sort like the values): LSD radix sort over 16-bit digits."""
    n = vals.shape[0]
    key = vals.view(np.uint64).copy()
    order = np.arange(n)
    key2 = np.empty_like(key)
    order2 = np.empty_like(order)
    counts = np.empty(65537, np.int64)
    for shift in range(0, 64, 16):
        counts[:] = 0
        for i in range(n):
            counts[((key[i] >> shift) & 0xFFFF) + 1] += 1
        if counts.max() == n:
            continue  # one digit value: this pass keeps the order
        for d in range(65536):
            counts[d + 1] += counts[d]
        for i in range(n):
            d = (key[i] >> shift) & 0xFFFF
            t = counts[d]
            key2[t] = key[i]
            order2[t] = order[i]
            counts[d] = t + 1
        key, key2 = key2, key
        order, order2 = order2, order
    return order


@nb.njit(**_JIT)
def _small_pairs_into(r, pa, pb, size, min_size, xs, ys, fill):
    """The number of :func:`small_pairs`' pairs; with ``fill`` they are also written to
    ``xs``/``ys`` (one loop for counting and filling: as fast as two copies, measured)."""
    m = 0
    for rev in range(2):
        for p in range(pa.shape[0]):
            x, y = r[pa[p]], r[pb[p]]
            if rev:
                x, y = y, x
            if x != y and size[x] < min_size and size[y] >= size[x]:
                if fill:
                    xs[m] = x
                    ys[m] = y
                m += 1
    return m


@nb.njit(**_JIT)
def small_pairs(r, pa, pb, size, min_size):
    """Pairs (x, y) of touching clusters (roots ``r`` of pa/pb) with x smaller than
    ``min_size`` and y at least as large: pairs in order, then the reversed pairs in order.
    Counted first, then filled: the outputs are exactly their size."""
    none = np.empty(0, np.int64)
    m = _small_pairs_into(r, pa, pb, size, min_size, none, none, False)
    xs = np.empty(m, np.int64)
    ys = np.empty(m, np.int64)
    _small_pairs_into(r, pa, pb, size, min_size, xs, ys, True)
    return xs, ys


@nb.njit(**_JIT)
def roots(parent):
    """Root of every element (compresses the paths)."""
    out = np.empty(parent.shape[0], np.int64)
    for i in range(parent.shape[0]):
        out[i] = _find(parent, i)
    return out


@nb.njit(**_JIT)
def attach_small(xs, ys, parent, size, colour, min_size):
    """Small cluster ``xs[i]`` joins ``ys[i]`` (if still small and apart); True if any joined."""
    changed = False
    for i in range(xs.shape[0]):
        rs, ro = _find(parent, xs[i]), _find(parent, ys[i])
        if rs != ro and size[rs] < min_size:
            _union(parent, size, colour, ro, rs)
            changed = True
    return changed


@nb.njit(**_JIT)
def write_labels(idx, frag, new_id, out, v0, v1):
    """``out[idx[v]] = new_id[frag[v]]`` (out: the flat label volume)."""
    for v in range(v0, v1):
        out[idx[v]] = new_id[frag[v]]


# -- CPython set order ------------------------------------------------------------------------
# The former code collected the two-hop pairs in a Python ``set`` of int keys and appended them in
# the set's iteration order; ties of equal colour distance (common: fragments of one pure colour)
# are merged in that order. To stay bit-identical without building a set of millions of Python
# ints, the table of CPython's ``set`` (Objects/setobject.c: linear probing over 9 slots, then
# perturbed probing; resize at 3/5 fill to 4x/2x the used count) is replayed here for int keys.
# :func:`set_order_variant` checks the replay against the running interpreter once; where no
# variant matches, the caller uses a real ``set``.
_LINEAR_PROBES = 9
_PERTURB_SHIFT = 5
_HASH_MOD = (1 << 61) - 1  # hash(int) for 0 <= key: key % (2**61 - 1)


# One int64 per slot: the key (>= 0), _EMPTY or _DUMMY (equal int keys <=> equal hashes here).
_EMPTY = -1
_DUMMY = -2


@nb.njit(**_JIT)
def _set_insert_clean(table, mask, key):
    perturb = key % _HASH_MOD
    i = perturb & mask
    while True:
        if table[i] == _EMPTY:
            break
        done = False
        if i + _LINEAR_PROBES <= mask:
            for j in range(1, _LINEAR_PROBES + 1):
                if table[i + j] == _EMPTY:
                    i = i + j
                    done = True
                    break
        if done:
            break
        perturb >>= _PERTURB_SHIFT
        i = (i * 5 + 1 + perturb) & mask
    table[i] = key


@nb.njit(**_JIT)
def _set_resize(table, fill, used, minused):
    newsize = 8
    while newsize <= minused:
        newsize <<= 1
    if newsize == 8 and table.shape[0] == 8 and fill == used:
        return table
    new = np.full(newsize, _EMPTY, np.int64)
    for s in range(table.shape[0]):
        if table[s] >= 0:
            _set_insert_clean(new, newsize - 1, table[s])
    return new


@nb.njit(**_JIT)
def set_order(seq, remove, resize_after_discard):
    """Iteration order of ``s = set(seq.tolist()); s -= set(remove.tolist())`` for keys >= 0."""
    table = np.full(8, _EMPTY, np.int64)
    fill = 0
    used = 0
    for q in range(seq.shape[0]):
        key = seq[q]
        mask = table.shape[0] - 1
        perturb = key % _HASH_MOD
        i = perturb & mask
        free = -1
        slot = -1
        found = False
        while slot < 0 and not found:
            probes = _LINEAR_PROBES if i + _LINEAR_PROBES <= mask else 0
            for j in range(probes + 1):
                t = table[i + j]
                if t == _EMPTY:
                    slot = i + j
                    break
                if t == key:
                    found = True
                    break
                if t == _DUMMY:
                    free = i + j
            if slot < 0 and not found:
                perturb >>= _PERTURB_SHIFT
                i = (i * 5 + 1 + perturb) & mask
        if found:
            continue
        used += 1
        if free >= 0:
            table[free] = key
            continue
        table[slot] = key
        fill += 1
        if fill * 5 >= mask * 3:
            table = _set_resize(table, fill, used, used * 2 if used > 50000 else used * 4)
            fill = used
    for q in range(remove.shape[0]):
        key = remove[q]
        mask = table.shape[0] - 1
        perturb = key % _HASH_MOD
        i = perturb & mask
        done = False
        while not done:
            probes = _LINEAR_PROBES if i + _LINEAR_PROBES <= mask else 0
            for j in range(probes + 1):
                t = table[i + j]
                if t == _EMPTY:
                    done = True
                    break
                if t == key:
                    table[i + j] = _DUMMY
                    used -= 1
                    done = True
                    break
            if not done:
                perturb >>= _PERTURB_SHIFT
                i = (i * 5 + 1 + perturb) & mask
    if resize_after_discard and (fill - used) > (table.shape[0] - 1) // 4:
        table = _set_resize(table, fill, used, used * 2 if used > 50000 else used * 4)
    out = np.empty(used, np.int64)
    m = 0
    for s in range(table.shape[0]):
        if table[s] >= 0:
            out[m] = table[s]
            m += 1
    return out


_SET_VARIANT: list = []


def set_order_variant() -> bool | None:
    """The :func:`set_order` variant (``resize_after_discard``) that reproduces this interpreter's
    ``set``, checked once on keys shaped like the real ones (clustered, repeated, > 50,000 of them,
    a third removed); None when neither does (then the caller builds a real set)."""
    if not _SET_VARIANT:
        rng = np.random.default_rng(12345)
        nf = 40_000
        a = rng.integers(0, nf, 120_000)
        b = np.minimum(a + rng.integers(1, 50, a.size), nf - 1)
        seq = (a * nf + b)[a < b]
        seq = np.concatenate([seq, seq[rng.integers(0, seq.size, seq.size // 3)]])
        rng.shuffle(seq)
        remove = np.concatenate([seq[rng.integers(0, seq.size, seq.size // 3)], rng.integers(0, nf * nf, 5000)])
        small = seq[:40]
        want = {}
        for name, (s_, r_) in {"big": (seq, remove), "small": (small, small[::3])}.items():
            h = set(s_.tolist())
            h -= set(r_.tolist())
            want[name] = (s_, r_, np.fromiter(h, np.int64, len(h)))
        found = None
        for variant in (True, False):
            if all(np.array_equal(set_order(s_, r_, variant), w) for s_, r_, w in want.values()):
                found = variant
                break
        _SET_VARIANT.append(found)
    return _SET_VARIANT[0]
