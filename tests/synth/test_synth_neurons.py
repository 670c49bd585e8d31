"""Tests of the FISBe-like neuron generator."""

from __future__ import annotations

import dataclasses

import edt
import numpy as np
import pytest
from skimage.morphology import skeletonize

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.synth import NeuronSettings, make_neurons

SHAPE = (40, 128, 128)


@pytest.fixture(scope="module")
def standard():
    return make_neurons(SHAPE, seed=3)


@pytest.fixture(scope="module")
def hard():
    return make_neurons(SHAPE, hard=True, seed=3)


def test_dtypes_and_shapes(standard):
    v = standard
    n = v.n_neurons
    assert v.raw.dtype == np.uint16 and v.raw.shape == (3,) + SHAPE
    assert v.gt_instances.dtype == np.uint8 and v.gt_instances.shape == (n,) + SHAPE
    assert v.labels.dtype == np.uint32 and v.labels.shape == SHAPE
    assert v.colours.shape == (n, 3)
    assert 4 <= n <= 7  # the standard preset's range


def test_default_shape_and_explicit_count():
    v = make_neurons(n_neurons=3, seed=1)
    assert v.raw.shape == (3, 48, 160, 160)
    assert v.gt_instances.shape[0] == 3


def test_determinism_by_seed():
    a = make_neurons((24, 64, 64), seed=11)
    b = make_neurons((24, 64, 64), seed=11)
    c = make_neurons((24, 64, 64), seed=12)
    assert np.array_equal(a.raw, b.raw)
    assert np.array_equal(a.gt_instances, b.gt_instances)
    assert a.dim_neurons == b.dim_neurons
    assert not np.array_equal(a.raw, c.raw)


def test_fisbe_layout_semantics(standard):
    gt = standard.gt_instances
    for i in range(gt.shape[0]):
        vals = set(np.unique(gt[i]).tolist())
        assert vals == {0, i + 1}, f"channel {i} holds {vals}"
    assert all(1 <= d <= gt.shape[0] for d in standard.dim_neurons)
    # labels: every foreground voxel labelled, lower id wins in overlaps
    fg = (gt > 0).any(0)
    assert np.array_equal(standard.labels > 0, fg)
    first = np.argmax(gt > 0, axis=0) + 1
    assert np.array_equal(standard.labels[fg], first[fg])


def test_overlaps_present(standard, hard):
    assert (standard.overlap > 1).sum() > 0
    assert (hard.overlap > 1).sum() > 0


def test_neurons_are_thin_and_long(standard):
    gt = standard.gt_instances
    for i in range(gt.shape[0]):
        m = gt[i] > 0
        sk = skeletonize(m) > 0
        dt = edt.edt(m)
        assert np.median(dt[sk]) <= 3.0
        # long: the skeleton spans a good part of the volume's extent
        assert sk.sum() >= 0.8 * SHAPE[1], f"neuron {i + 1} skeleton only {sk.sum()} voxels"
        zz, yy, xx = np.nonzero(m)
        assert max(np.ptp(yy), np.ptp(xx)) >= 0.3 * SHAPE[1]


def test_neurons_are_bright_in_their_colour(standard):
    raw = standard.raw.astype(float)
    fg = (standard.gt_instances > 0).any(0)
    bg_level = np.median(raw[:, ~fg], axis=1)
    for i in range(standard.n_neurons):
        if i + 1 in standard.dim_neurons:
            continue
        m = (standard.gt_instances[i] > 0) & (standard.overlap == 1)
        c = int(np.argmax(standard.colours[i]))
        assert np.median(raw[c][m]) > 10 * bg_level[c] + 50


def test_dim_neurons_are_dimmer():
    v = make_neurons((32, 96, 96), seed=5, n_neurons=6, dim_prob=0.5)
    assert v.dim_neurons, "dim_prob=0.5 with 6 neurons should give a dim neuron for this seed"
    raw = v.raw.astype(float)
    med = []
    for i in range(v.n_neurons):
        m = (v.gt_instances[i] > 0) & (v.overlap == 1)
        med.append(np.median(raw[:, m].max(0)))
    dim = [med[i - 1] for i in v.dim_neurons]
    bright = [med[i] for i in range(v.n_neurons) if i + 1 not in v.dim_neurons]
    assert max(dim) < np.median(bright)


def test_hard_has_clutter_not_in_gt(hard, standard):
    assert hard.clutter.sum() > 100
    assert not standard.clutter.any()
    fg = (hard.gt_instances > 0).any(0)
    only_clutter = hard.clutter & ~fg
    assert only_clutter.sum() > 100
    # the clutter is visible in the raw
    raw_max = hard.raw.max(0).astype(float)
    assert np.median(raw_max[only_clutter]) > 5 * np.median(raw_max[~fg & ~hard.clutter])
    assert hard.partly_labelled and not standard.partly_labelled


def test_hard_has_close_same_colour_pairs(hard):
    assert len(hard.same_colour_pairs) >= 1
    for a, b in hard.same_colour_pairs:
        ca, cb = hard.colours[a - 1], hard.colours[b - 1]
        cos = ca @ cb / np.linalg.norm(ca) / np.linalg.norm(cb)
        assert np.degrees(np.arccos(min(1.0, cos))) <= hard.settings.same_colour_angle + 1e-6
        # close: the distance between the two neurons is small somewhere
        d = edt.edt(hard.gt_instances[a - 1] == 0)
        assert d[hard.gt_instances[b - 1] > 0].min() <= 6


def test_settings_overrides_and_errors():
    s = NeuronSettings.hard()
    assert s.same_colour_pairs > 0 and s.n_clutter_neurites[1] > 0
    v = make_neurons((24, 64, 64), seed=0, n_neurons=2, gap_rate=0.0)
    assert v.settings.gap_rate == 0.0
    with pytest.raises(NeurosegError, match="unknown neuron setting"):
        make_neurons((24, 64, 64), not_a_setting=1)
    with pytest.raises(NeurosegError):
        make_neurons((64, 64))
    with pytest.raises(NeurosegError):
        make_neurons((24, 64, 64), n_neurons=0)


def test_randomized_settings_stay_valid():
    rng = np.random.default_rng(0)
    for _ in range(5):
        s = NeuronSettings.standard().randomized(rng, 0.3)
        assert 1.0 <= s.radius_trunk[0] <= s.radius_max <= 3.0
        assert 0.0 <= s.dim_prob <= 1.0
        v = make_neurons((24, 64, 64), seed=1, settings=s)
        assert v.raw.dtype == np.uint16
    assert dataclasses.is_dataclass(s)


from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402


@hsettings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(st.integers(16, 24), st.integers(16, 48), st.integers(16, 48)),
    seed=st.integers(0, 10_000),
    hard=st.booleans(),
)
def test_invariants_for_any_shape_and_seed(shape, seed, hard):
    v = make_neurons(shape, seed=seed, hard=hard)
    n = v.n_neurons
    assert v.raw.shape == (3, *shape) and v.gt_instances.shape == (n, *shape)
    for i in range(n):
        assert set(np.unique(v.gt_instances[i]).tolist()) <= {0, i + 1}
        assert (v.gt_instances[i] > 0).any()
    fg = (v.gt_instances > 0).any(0)
    assert np.array_equal(v.labels > 0, fg)
    assert not (v.clutter.any() and not hard)
