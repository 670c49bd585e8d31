"""The numba post-processing gives the same labels, bit for bit, as the former numpy/Python code
(``postprocess_reference.py``), on several synthetic volumes and parameter settings."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models.neurons import PostprocessParams, instances_from_outputs
from napari_neuroseg.models.neurons import _postprocess_kernels as K
from napari_neuroseg.models.neurons.preprocess import normalize
from napari_neuroseg.models.neurons.targets import make_targets


def _load_reference():
    spec = importlib.util.spec_from_file_location("postprocess_reference", Path(__file__).with_name("postprocess_reference.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.reference_instances_from_outputs


reference = _load_reference()

DESIGN_A = PostprocessParams()
DESIGN_B = PostprocessParams(use_affinities=True, colour_threshold=0.25, merge_threshold=0.15, colour_sigma=1.0)
SETTINGS = {
    "A": DESIGN_A,
    "B": DESIGN_B,
    "A-no-smoothing-min0": PostprocessParams(colour_sigma=0.0, min_size=0),
    "A-3-steps-loose": PostprocessParams(colour_sigma=1.5, colour_threshold=0.08, merge_threshold=0.35, min_size=100),
    "B-affinities-only": PostprocessParams(use_affinities=True, use_colour=False, aff_threshold=0.3, min_size=5),
}


@functools.cache
def _outputs(seed: int, shape=(20, 48, 48), mirror: bool = False):
    """Network-like outputs of a synthetic volume: uint8 foreground (blurred ground truth + noise,
    low probabilities around the neurites), uint8 affinities (targets + noise), normalised image."""
    from napari_neuroseg.synth import make_neurons

    vol = make_neurons(shape, seed=seed, n_neurons=5, hard=bool(seed % 2))
    rng = np.random.default_rng(seed)
    fg_t, affs_t, _ = make_targets(np.asarray(vol.gt_instances))
    fg = np.clip(ndi.gaussian_filter(fg_t, 1.0) + rng.normal(0, 0.05, fg_t.shape), 0, 1)
    affs = np.clip(affs_t * 0.8 + rng.uniform(0, 0.3, affs_t.shape), 0, 1)
    img = normalize(np.asarray(vol.raw))
    fg, affs = (fg * 255 + 0.5).astype(np.uint8), (affs * 255 + 0.5).astype(np.uint8)
    if mirror:  # mirrored copies: many exactly equal colour distances (ties)
        fg = np.pad(fg, ((0, 0), (0, 0), (0, shape[2])), mode="symmetric")
        affs = np.pad(affs, ((0, 0), (0, 0), (0, 0), (0, shape[2])), mode="symmetric")
        img = np.pad(img, ((0, 0), (0, 0), (0, 0), (0, shape[2])), mode="symmetric")
    return fg, affs, img


def _pure_colour_tubes():
    """Crossing tubes of pure, exactly equal colours, float outputs (ties everywhere)."""
    shape = (12, 40, 40)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    img = np.zeros((3,) + shape, np.float32)
    fg = np.zeros(shape, np.float32)
    for k, (cy, cx) in enumerate([(10, None), (30, None), (None, 12), (None, 28)]):
        m = ((z - 6) ** 2 + ((y - cy) ** 2 if cy is not None else (x - cx) ** 2)) <= 4
        m = np.broadcast_to(m, shape)
        fg[m] = 0.9
        img[k % 3][m] = 1.0  # one pure channel per tube (two tubes share red)
    fg[:, :, 18:20] = 0.0  # a gap
    return fg, np.stack([fg] * 6), img


CASES = {
    "synthetic-standard": lambda: _outputs(1),
    "synthetic-hard": lambda: _outputs(2),
    "synthetic-mirrored": lambda: _outputs(3, shape=(16, 40, 40), mirror=True),
    "pure-colour-tubes": _pure_colour_tubes,
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_labels_identical_to_reference(case, setting):
    fg, affs, img = (a.copy() for a in CASES[case]())
    p = SETTINGS[setting]
    want = reference(fg, affs, img, p)
    got = instances_from_outputs(fg, affs, img, p)
    assert got.dtype == np.uint32 and got.shape == fg.shape
    assert want.max() > 0  # the case segments something
    np.testing.assert_array_equal(got, want)


def test_float_inputs_and_one_thread_identical():
    fg, affs, img = _outputs(4)
    fgf, affsf = fg.astype(np.float32) / 255, affs.astype(np.float32) / 255
    for p in (DESIGN_A, DESIGN_B):
        want = reference(fgf, affsf, img, p)
        np.testing.assert_array_equal(instances_from_outputs(fgf, affsf, img, p, threads=1), want)
        np.testing.assert_array_equal(instances_from_outputs(fgf, affsf, img, p, threads=3), want)


def test_non_contiguous_inputs_and_timings():
    fg, affs, img = _outputs(5)
    big = np.zeros((7,) + fg.shape[:2] + (fg.shape[2] + 5,), np.uint8)
    big[0, ..., :-5], big[1:, ..., :-5] = fg, affs
    fgv, affsv = big[0, ..., :-5], big[1:, ..., :-5]  # views, as predict's crop of the outputs
    timings: dict = {}
    got = instances_from_outputs(fgv, affsv, img, DESIGN_B, timings=timings)
    np.testing.assert_array_equal(got, reference(fg, affs, img, DESIGN_B))
    assert {"foreground", "pairs", "colour", "fragments", "labels"} <= set(timings)


def test_empty_single_voxel_and_bad_shapes():
    z = np.zeros((8, 16, 16), np.float32)
    assert not instances_from_outputs(z, None, np.zeros((3,) + z.shape, np.float32)).any()
    z[4, 4, 4] = 1
    for p in (PostprocessParams(), PostprocessParams(min_size=0)):
        got = instances_from_outputs(z, None, np.ones((3,) + z.shape, np.float32), p)
        np.testing.assert_array_equal(got, reference(z, None, np.ones((3,) + z.shape, np.float32), p))
    with pytest.raises(NeurosegError, match="3,Z,Y,X"):
        instances_from_outputs(z, None, np.ones((1,) + z.shape, np.float32))


def test_set_order_replays_python_set():
    assert K.set_order_variant() is not None  # the replay matches this interpreter
    variant = K.set_order_variant()
    rng = np.random.default_rng(0)
    for nf, n in [(50, 30), (3000, 20_000), (400_000, 150_000)]:
        a = rng.integers(0, nf, n)
        b = np.minimum(a + rng.integers(1, 40, n), nf - 1)
        seq = (a * nf + b)[a < b]
        seq = np.concatenate([seq, seq[rng.integers(0, max(seq.size, 1), seq.size // 2)]])
        remove = seq[rng.integers(0, max(seq.size, 1), seq.size // 3)]
        s = set(seq.tolist())
        s -= set(remove.tolist())
        np.testing.assert_array_equal(K.set_order(seq, remove, variant), np.fromiter(s, np.int64, len(s)))


def test_stable_radix_argsort_matches_numpy():
    rng = np.random.default_rng(1)
    v = rng.choice(rng.uniform(0, 0.3, 50), 5000)  # many ties
    v[:7] = 0.0
    np.testing.assert_array_equal(K.stable_argsort_nonneg(v), np.argsort(v, kind="stable"))
    assert K.stable_argsort_nonneg(np.zeros(0)).size == 0


def test_concurrent_calls_from_threads():
    """Batch runs post-process blocks in several threads at once: same labels as one by one."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(CASES[c](), SETTINGS[s]) for c, s in [("synthetic-standard", "A"), ("synthetic-hard", "B"),
                                                   ("pure-colour-tubes", "A"), ("synthetic-mirrored", "B")]]
    want = [reference(*outs, p) for outs, p in jobs]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda j: instances_from_outputs(*j[0], j[1]), jobs))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
