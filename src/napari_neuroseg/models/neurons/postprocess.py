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

Implementation: numba kernels (``_postprocess_kernels.py``, no GIL) over the foreground voxels in
raster order; the per-voxel steps run in a thread pool over independent voxel ranges. The labels
are bit-identical to the former numpy/Python implementation (kept as the reference in
``tests/neurons/postprocess_reference.py``; ``benchmarks/bench_neuron_postprocess.py`` compares
both).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.runtime.progress import Progress, run_to_completion

from . import _postprocess_kernels as K
from .targets import N_SHORT, OFFSETS


@dataclass
class PostprocessParams:
    """Thresholds of the post-processing (defaults tuned on synthetic tuning volumes, seeds 100-101
    standard and hard, never used for training or for the benchmark)."""

    #: low on purpose: a generous foreground keeps thin/dim neurites connected across gaps, and
    #: the colour graph separates the neurons (tuned on synthetic seeds 100-101, docs/neurons.md)
    fg_threshold: float = 0.02
    aff_threshold: float = 0.5
    colour_threshold: float = 0.03
    merge_threshold: float = 0.25
    min_size: int = 40
    #: design B (learned affinities + colour) when True; the default is design A (colour graph
    #: on the learned foreground), which scored higher on the synthetic validation volumes
    #: with the shipped model (docs/neurons.md)
    use_affinities: bool = False
    use_colour: bool = True
    colour_sigma: float = 0.5  # colour smoothing along the neurite (2*sigma neighbour-averaging steps)
    #: decorrelate the three channels before the colour steps (:func:`whiten_colours`): undoes a
    #: microscope's channel cross-talk; off for the shipped model, chosen per fine-tuned model
    colour_whiten: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def whiten_colours(image: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """The (3,Z,Y,X) colour image mapped by ``M**-1/2``, ``M`` the second-moment matrix of the
    colours of the foreground voxels ``fg`` (Z,Y,X bool): the channels of the foreground become
    uncorrelated with equal power, which spreads colours that channel cross-talk (bleed-through)
    has pulled together. Scaled so the 99th percentile of the foreground magnitudes is 1; the
    image is returned unchanged when fewer than 10 voxels are foreground."""
    c = np.asarray(image)[:, fg].astype(np.float64)
    if c.shape[1] < 10:
        return image
    w, v = np.linalg.eigh(c @ c.T / c.shape[1])
    if not w.max() > 0:
        return image
    m = (v / np.sqrt(np.maximum(w, 1e-6 * w.max()))) @ v.T
    out = np.tensordot(m.astype(np.float32), np.asarray(image, np.float32), axes=(1, 0))
    scale = float(np.percentile(np.abs(np.tensordot(m, c, axes=(1, 0))), 99))
    return out / np.float32(scale if scale > 0 else 1.0)


def _unit(c: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(c, axis=-1, keepdims=True)
    return c / np.maximum(n, 1e-9)


class _Steps:
    """Seconds per step, added to a caller's dict (``timings``)."""

    def __init__(self, timings: dict | None):
        self.d, self.t = timings, time.perf_counter()

    def __call__(self, name: str) -> None:
        if self.d is not None:
            t = time.perf_counter()
            self.d[name] = self.d.get(name, 0.0) + t - self.t
            self.t = t


def _flat(a: np.ndarray, lead: int) -> np.ndarray:
    """(lead, N) contiguous view (a copy only when needed); dtypes numba lacks go to float32."""
    a = np.asarray(a)
    if a.dtype == np.float16 or a.dtype == np.bool_:
        a = a.astype(np.float32)
    return np.ascontiguousarray(a).reshape(lead, -1)


class _Affs(NamedTuple):
    """Affinities as the kernels take them: (K, N) flat, uint8 scale flag, whether they are used."""

    flat: np.ndarray
    scale: bool
    used: bool


#: the post-processing's steps as progress reports them: (name in ``timings``, what the user
#: reads, % of the post-processing's time before the step starts: measured per step on a
#: 400×700×700 volume, docs/neurons.md, "Post-processing speed")
STEPS = (("foreground", "foreground", 0), ("pairs", "neighbour pairs", 4), ("colour", "colour smoothing", 9),
         ("fragments", "fragments", 19), ("candidates", "fragment pairs", 27), ("two_hop", "two-hop pairs", 33),
         ("merge", "merging", 57), ("small_clusters", "small clusters", 77), ("labels", "label volume", 93))


def instances_from_outputs(fg_prob: np.ndarray, affs: np.ndarray | None, image: np.ndarray,
                           params: PostprocessParams | None = None, **options) -> np.ndarray:
    """:func:`instances_from_outputs_iter` run to completion: the label volume."""
    return run_to_completion(instances_from_outputs_iter(fg_prob, affs, image, params, **options))


def instances_from_outputs_iter(
    fg_prob: np.ndarray,
    affs: np.ndarray | None,
    image: np.ndarray,
    params: PostprocessParams | None = None,
    *,
    timings: dict | None = None,
    threads: int | None = None,
):
    """Label volume (uint32 ZYX, 0 = background) from the foreground probability (Z,Y,X; float in
    [0, 1] or uint8 = probability × 255), the affinity probabilities (K,Z,Y,X, ordered as
    :data:`OFFSETS`; may be None when ``use_affinities`` is False) and the normalised colour
    image (3,Z,Y,X), as a progress generator: before each of its :data:`STEPS` it yields
    ``Progress(percent of the post-processing's time done, 100, what runs next)``; returns the
    labels.

    ``timings``: a dict that receives the seconds of every step (profiling, benchmarks);
    ``threads``: threads for the per-voxel steps (default: the CPUs of this process)."""
    p = params or PostprocessParams()
    step = _Steps(timings)
    fg_prob, image = _checked(fg_prob, image)
    nt = max(1, int(threads or K.n_threads()))
    says = {name: Progress(pct, 100, text) for name, text, pct in STEPS}
    # 1. foreground
    yield says["foreground"]
    image, rowptr, idx = _foreground_voxels(fg_prob, image, p, nt)
    if idx is None:
        return np.zeros(fg_prob.shape, np.uint32)
    step("foreground")
    yield says["pairs"]
    vr = K.split(len(idx), nt)
    nbr, rev = _neighbours(idx, rowptr, fg_prob.shape, nt, vr)
    step("pairs")
    yield says["colour"]
    col = _smoothed_colours(image, idx, nbr, rev, vr, p.colour_sigma)
    del rev
    step("colour")
    # 2. fragments
    yield says["fragments"]
    aff = _affinities(affs, p)
    nfrag, frag = _fragments(col, nbr, idx, aff, p, vr)
    step("fragments")
    # 3. agglomeration over fragment pairs
    yield says["candidates"]
    fsize, fcol = K.fragment_stats(frag, col, nfrag)
    del col
    key, val = _candidate_keys(nbr, frag, nfrag, idx, aff, vr)
    del nbr
    parent = np.arange(nfrag)
    size = fsize.copy()
    colour = fcol.copy()
    if len(key):
        ukey, mean_aff = _unique_pairs(key, val, aff.used)
        del key, val
        pa, pb = ukey // nfrag, ukey % nfrag
        step("candidates")
        yield says["two_hop"]
        pa, pb, mean_aff = _with_two_hop(pa, pb, ukey, nfrag, fsize, mean_aff)
        step("two_hop")
        yield says["merge"]
        _merge(pa, pb, mean_aff, fcol, parent, size, colour, p, nt)
        step("merge")
        # 4. small clusters join the touching cluster of the closest colour
        yield says["small_clusters"]
        _attach_small_clusters(pa, pb, parent, size, colour, p.min_size)
        step("small_clusters")
    yield says["labels"]
    labels = _write_labels(fg_prob.shape, idx, frag, parent, size, p.min_size, vr)
    step("labels")
    return labels


def _checked(fg_prob, image) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as arrays, or a :class:`NeurosegError` when their shapes do not fit."""
    fg_prob = np.asarray(fg_prob)
    image = np.asarray(image)
    if fg_prob.ndim != 3 or image.ndim != 4 or image.shape[0] != 3 or tuple(image.shape[1:]) != fg_prob.shape:
        raise NeurosegError(
            f"post-processing needs a (Z,Y,X) foreground map and a (3,Z,Y,X) colour image of the same "
            f"size; got {fg_prob.shape} and {image.shape}",
            fix="pass the network's foreground output and the normalised 3-channel image")
    return fg_prob, image


def _foreground_voxels(fg_prob, image, p, nt):
    """(image, rowptr, idx): the colour image (whitened on the foreground when ``colour_whiten``),
    the start of every (z, y) row in the foreground voxel list and the raster indices of the
    foreground voxels (``idx`` None when there are none)."""
    # uint8 maps hold probability × 255 (as returned by the tiled network)
    fg = fg_prob > (p.fg_threshold * 255 if fg_prob.dtype == np.uint8 else p.fg_threshold)
    if p.colour_whiten:
        image = whiten_colours(image, fg)
    Z, Y, _ = fg.shape
    counts = np.zeros(Z * Y, np.int64)
    zr = K.split(Z, nt)
    K.run_chunks(K.count_rows, zr, fg, counts)
    rowptr = np.zeros(Z * Y + 1, np.int64)
    np.cumsum(counts, out=rowptr[1:])
    n = int(rowptr[-1])
    if n == 0:
        return image, rowptr, None
    idx = np.empty(n, np.int64)
    K.run_chunks(K.fill_index, zr, fg, rowptr, idx)
    return image, rowptr, idx


def _neighbours(idx, rowptr, shape, nt, vr):
    """(nbr, rev): the foreground neighbour of every foreground voxel at +offset, one row per
    :data:`OFFSETS` entry, and at -offset for the short range (-1: none)."""
    offsets = np.asarray(OFFSETS, np.int64)
    if (offsets < 0).any():  # pragma: no cover - the offsets are fixed
        raise AssertionError("neighbour search needs non-negative offsets")
    n = len(idx)
    itype = np.int32 if n < 2**31 - 1 else np.int64
    nbr = np.empty((len(offsets), n), itype)
    K.run_chunks(K.neighbours, K.split(rowptr, nt), idx, rowptr, *shape, offsets, nbr)
    rev = np.full((N_SHORT, n), -1, itype)
    K.run_chunks(K.reverse_neighbours, vr, nbr, N_SHORT, rev)
    return nbr, rev


def _smoothed_colours(image, idx, nbr, rev, vr, sigma: float) -> np.ndarray:
    """(N, 3) colour of the foreground voxels: clipped raw, averaged ``2*sigma`` times with the
    foreground neighbours."""
    col = np.empty((len(idx), 3), np.float64)
    K.run_chunks(K.gather_colour, vr, _flat(image, 3), idx, col)
    for _ in range(round(sigma * 2)):
        out = np.empty_like(col)
        K.run_chunks(K.smooth_step, vr, col, nbr, rev, N_SHORT, out)
        col = out
    return col


def _affinities(affs, p) -> _Affs:
    use_aff = bool(p.use_affinities and affs is not None)
    if use_aff:
        aff2 = _flat(affs, len(OFFSETS))
        return _Affs(aff2, aff2.dtype == np.uint8, True)
    return _Affs(np.zeros((len(OFFSETS), 1), np.uint8), False, False)


def _fragments(col, nbr, idx, aff: _Affs, p, vr) -> tuple[int, np.ndarray]:
    """(nfrag, frag): connected components of the kept short-range edges (affinity and/or colour)."""
    keep = np.empty(len(idx), np.uint8)
    K.run_chunks(K.keep_edges, vr, col, nbr, N_SHORT, idx, aff.flat, aff.scale, aff.used, np.float32(p.aff_threshold),
                 bool(p.use_colour or not aff.used), float(p.colour_threshold), keep)
    return K.fragments(nbr, N_SHORT, keep)


def _candidate_keys(nbr, frag, nfrag, idx, aff: _Affs, vr) -> tuple[np.ndarray, np.ndarray]:
    """(key, val): every pair of different fragments linked by an offset (``a * nfrag + b``) and
    its affinity."""
    cnt = np.zeros((len(OFFSETS), len(vr)), np.int64)
    K.run_chunks(K.count_candidates, vr, nbr, frag, cnt, with_index=True)
    starts = np.concatenate([[0], np.cumsum(cnt.ravel())[:-1]]).reshape(cnt.shape)
    m = int(cnt.sum())
    key = np.empty(m, np.int64)
    val = np.empty(m, np.float32)
    K.run_chunks(K.fill_candidates, vr, nbr, frag, nfrag, starts, idx, aff.flat, aff.scale, aff.used, key, val,
                 with_index=True)
    return key, val


def _unique_pairs(key, val, use_aff: bool):
    """(ukey, mean_aff): the distinct keys, sorted, and their mean affinity (None without
    affinities; ``key`` is then sorted in place)."""
    if use_aff:
        order = np.argsort(key, kind="stable")
        skey = key[order]
        mean_aff = K.segment_means(skey, val[order])
        del order
        return skey[np.r_[True, skey[1:] != skey[:-1]]], mean_aff
    key.sort()  # (np.unique is far slower than a sort on millions of int64 keys, numpy 2.4)
    return key[np.r_[True, key[1:] != key[:-1]]], None


def _with_two_hop(pa, pb, ukey, nfrag, fsize, mean_aff):
    """The pairs extended by the two-hop candidates: fragments that touch a common fragment (a
    neuron cut in two by the overlap region of a crossing neuron); judged by colour only (mean
    affinity 1). They follow in the iteration order of the Python set the former code collected
    them in (it breaks ties of equal colour distance), replayed by K.set_order where it matches
    this interpreter."""
    seq = K.two_hop_sequence(pa, pb, nfrag, fsize, 6, 400)
    variant = K.set_order_variant()
    if variant is None:  # pragma: no cover - an interpreter whose set the replay does not match
        hop = set(seq.tolist())
        hop -= set(ukey.tolist())
        hk = np.fromiter(hop, np.int64, len(hop))
        del hop
    else:
        hk = K.set_order(seq, ukey, variant)
    del seq
    if len(hk):
        pa = np.concatenate([pa, hk // nfrag])
        pb = np.concatenate([pb, hk % nfrag])
        if mean_aff is not None:
            mean_aff = np.concatenate([mean_aff, np.ones(len(hk))])
    return pa, pb, mean_aff


def _merge(pa, pb, mean_aff, fcol, parent, size, colour, p, nt) -> None:
    """Greedy merge of the candidate pairs (``parent``, ``size``, ``colour`` updated in place),
    most similar fragment colour first, below ``merge_threshold`` (and above ``aff_threshold``)."""
    ufc = _unit(fcol)
    dist = np.empty(len(pa))
    K.run_chunks(K.pair_dist, K.split(len(pa), nt), ufc, pa, pb, dist)
    ok = dist < p.merge_threshold
    if mean_aff is not None:
        ok &= mean_aff > p.aff_threshold
    order = K.stable_argsort_nonneg(dist[ok])  # = np.argsort(dist[ok], kind="stable")
    K.greedy_merge(pa[ok][order], pb[ok][order], parent, size, colour, float(p.merge_threshold), 2.0)


def _attach_small_clusters(pa, pb, parent, size, colour, min_size: int) -> None:
    """Clusters under ``min_size`` voxels join the touching cluster of the closest colour (at most
    three rounds; in place)."""
    if min_size <= 0:
        return
    for _ in range(3):
        x, y = K.small_pairs(K.roots(parent), pa, pb, size, int(min_size))
        if not len(x):
            break
        uc = _unit(colour)
        d = np.linalg.norm(uc[x] - uc[y], axis=1)
        order = np.lexsort((d, x))
        x, y = x[order], y[order]
        first = np.r_[True, x[1:] != x[:-1]]
        if not K.attach_small(x[first], y[first], parent, size, colour, int(min_size)):
            break


def _write_labels(shape, idx, frag, parent, size, min_size: int, vr) -> np.ndarray:
    """The label volume: clusters of at least ``min_size`` voxels, numbered by their root fragment."""
    r = K.roots(parent)
    nfrag = len(parent)
    keep_root = (r == np.arange(nfrag)) & (size >= max(min_size, 1))
    new_id = np.zeros(nfrag, np.uint32)
    new_id[keep_root] = np.arange(1, keep_root.sum() + 1, dtype=np.uint32)
    labels = np.zeros(shape, np.uint32)
    K.run_chunks(K.write_labels, vr, idx, frag, new_id[r], labels.reshape(-1))
    return labels


def warmup() -> None:
    """Compile (the first time after an install, ~12 s) or load from numba's on-disk cache
    (later processes) every kernel a prediction's post-processing calls, with the argument
    types a prediction passes, on a tiny random volume: with and without affinities and colour
    whitening, with a uint8 map as the tiled network returns it. For a GUI's background thread
    before the first run (numba's compiler is Python code: run during a job, it competes with
    the viewer for the GIL, and its allocations set off full garbage collections)."""
    from .preprocess import normalize

    rng = np.random.default_rng(0)
    shape = (6, 12, 12)
    image = normalize(rng.random((3, *shape), np.float32))
    outs = rng.integers(0, 256, (1 + len(OFFSETS), *shape), dtype=np.uint8)
    for params in (PostprocessParams(min_size=8),
                   PostprocessParams(min_size=8, use_affinities=True, colour_whiten=True)):
        instances_from_outputs(outs[0], outs[1:], image, params)
