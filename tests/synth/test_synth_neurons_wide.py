"""Tests of the wide domain randomisation of the synthetic neurons (``NeuronSettings`` radius_min,
channel_mixing, gradient, haze, gamma, acquisition_scale, ``NeuronSettings.randomized_wide``),
the renderer for given masks (``render_neurons``, used with real FISBe morphology) and the
training mix (``SyntheticSource(wide=..., morphology=...)``, ``RealMorphology``)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models.neurons.data import RealMorphology, SyntheticSource
from napari_neuroseg.synth import NeuronSettings, make_neurons, render_neurons

SMALL = (32, 64, 64)
OPT = (16, 32, 32)
_BASE: list = []


def _base():
    if not _BASE:
        _BASE.append(make_neurons(OPT, seed=4, n_neurons=2))
    return _BASE[0]


def _sha1(v) -> str:
    return hashlib.sha1(v.raw.tobytes() + v.gt_instances.tobytes()).hexdigest()


def test_defaults_bit_identical_to_the_generator_before_the_wide_options():
    # hashes recorded with the generator of commit 4f41a7d (before the wide options existed)
    assert _sha1(make_neurons(SMALL, seed=0)) == "4b4207b4a2a10fb278737399c0c6f432b14a7e6b"
    assert _sha1(make_neurons(SMALL, hard=True, seed=1)) == "250cf81cd1861e0774945a0ea34629559cd91102"
    s = NeuronSettings.hard().randomized(np.random.default_rng(3))
    assert _sha1(make_neurons(SMALL, settings=s, seed=7)) == "acb37128e4ba946742dc3d61a520bdd47fde712a"


def test_randomized_leaves_the_wide_options_neutral():
    d = NeuronSettings()
    r = d.randomized(np.random.default_rng(3), 0.5)
    for name in ("radius_min", "channel_mixing", "gradient", "haze", "haze_sigma", "gamma", "acquisition_scale"):
        assert getattr(r, name) == getattr(d, name), name


@pytest.mark.parametrize("change", [
    {"channel_mixing": 0.3}, {"gradient": 0.6}, {"haze": 0.3}, {"gamma": 0.7},
    {"acquisition_scale": (3.0, 1.0, 1.0)}, {"acquisition_scale": (1.0, 1.5, 1.5)},
])
def test_each_option_changes_the_raw_not_the_ground_truth(change):
    a = _base()
    b = make_neurons(OPT, seed=4, n_neurons=2, **change)
    assert b.raw.shape == a.raw.shape and b.raw.dtype == np.uint16
    assert np.array_equal(a.gt_instances, b.gt_instances)
    assert not np.array_equal(a.raw, b.raw)


def test_anisotropic_acquisition_blurs_along_z_only():
    s = {"psf_sigma": (0.5, 0.5, 0.5), "gain": 0.0, "read_noise": 0.0, "texture": 0.0,
         "illumination_strength": 0.0, "background_texture": 0.0}
    a = make_neurons((32, 48, 48), seed=2, n_neurons=3, **s).raw.astype(float)
    b = make_neurons((32, 48, 48), seed=2, n_neurons=3, acquisition_scale=(4.0, 1.0, 1.0), **s).raw.astype(float)

    def dz(r):
        return np.abs(np.diff(r, axis=1)).mean()

    def dx(r):
        return np.abs(np.diff(r, axis=3)).mean()

    assert dz(b) < 0.6 * dz(a)  # coarse Z sampling: smoother along Z
    assert dx(b) == pytest.approx(dx(a), rel=0.35)


def test_radius_min_allows_one_voxel_thin_neurites():
    thick = make_neurons(OPT, seed=5, n_neurons=2)
    thin = make_neurons(OPT, seed=5, n_neurons=2, radius_min=0.5, radius_trunk=(0.55, 0.6),
                        radius_branch=(0.5, 0.55), radius_max=0.6, bouton_rate=0.0)
    assert 0 < (thin.gt_instances > 0).sum() < 0.5 * (thick.gt_instances > 0).sum()


def test_randomized_wide_is_valid_deterministic_and_wide():
    draws = [NeuronSettings().randomized_wide(np.random.default_rng(i)) for i in range(40)]
    assert NeuronSettings().randomized_wide(np.random.default_rng(3)) == draws[3]
    for s in draws:
        assert 1 <= s.n_neurons[0] <= s.n_neurons[1]
        assert s.radius_min <= s.radius_trunk[0] <= s.radius_trunk[1] <= s.radius_max
        assert s.radius_min <= s.radius_branch[0] <= s.radius_branch[1] <= s.radius_max
        assert all(x > 0 for x in s.psf_sigma) and s.gain > 0 and s.read_noise > 0
        assert all(a >= 0.79 for a in s.acquisition_scale)
    thick = [s.radius_trunk[1] for s in draws]
    assert min(thick) < 1.6 and max(thick) > 3.5  # neurite thickness x0.5..x3 of the preset's 2.2
    aniso = [s.acquisition_scale[0] / s.acquisition_scale[1] for s in draws]
    assert max(aniso) > 2.5 and min(aniso) == 1.0
    assert min(s.brightness for s in draws) < 400
    assert max(s.brightness for s in draws) > 2000
    assert any(s.gamma != 1.0 for s in draws) and any(s.n_clutter_neurites[1] > 0 for s in draws)
    assert min(s.min_colour_angle for s in draws) < 10
    with pytest.raises(NeurosegError):
        NeuronSettings().randomized_wide(np.random.default_rng(0), size=(2.0, 1.0))
    v = make_neurons((24, 48, 48), settings=draws[1], seed=1)
    assert v.raw.shape == (3, 24, 48, 48) and v.gt_instances.shape[1:] == (24, 48, 48)
    assert v.n_neurons >= 1 and (v.gt_instances > 0).any()


def _tube_masks(shape=(16, 40, 40)) -> np.ndarray:
    m = np.zeros((2,) + shape, np.float32)
    m[0, 6:9, 18:21, 2:38] = 1.0
    m[1, 2:14, 28:31, 10:13] = 1.0
    m[1, 7, 27, 11] = 0.3  # a soft edge: signal, not ground truth
    return m


def test_render_neurons_keeps_the_masks_and_colours_them():
    m = _tube_masks()
    v = render_neurons(m, seed=3, settings=NeuronSettings(gain=0.0, read_noise=0.0, texture=0.0, dim_prob=0.0,
                                                          gap_rate=0.0, illumination_strength=0.0))
    assert v.raw.shape == (3,) + m.shape[1:] and v.raw.dtype == np.uint16
    assert v.gt_instances.shape == m.shape and v.gt_instances.dtype == np.uint8
    assert np.array_equal(v.gt_instances[0] > 0, m[0] >= 0.5) and np.array_equal(v.gt_instances[1] > 0, m[1] >= 0.5)
    assert set(np.unique(v.gt_instances[1])) == {0, 2}
    # each neuron is brighter on its mask than the background, in its colour's strongest channel
    for i in range(2):
        c = int(np.argmax(v.colours[i]))
        assert v.raw[c][m[i] >= 0.5].mean() > 3 * np.median(v.raw[c])
    # same seed, same volume; bool masks give the same ground truth
    assert np.array_equal(render_neurons(m, seed=3).raw, render_neurons(m, seed=3).raw)
    assert np.array_equal(render_neurons(m > 0.5, seed=3).gt_instances, v.gt_instances)
    with pytest.raises(NeurosegError):
        render_neurons(m[0])


def test_real_morphology_crops_and_training_mix(tmp_path):
    m = _tube_masks((20, 60, 60)) > 0.5
    coords = [[np.argwhere(x).astype(np.int16) for x in m]]
    rm = RealMorphology(coords, [m.shape[1:]], ["toy"])
    rng = np.random.default_rng(0)
    crops = [rm.crop(rng, (16, 32, 32), zoom=(0.8, 1.5), min_voxels=5) for _ in range(6)]
    assert all(c.shape[1:] == (16, 32, 32) and c.dtype == np.float32 for c in crops)
    assert sum(len(c) for c in crops) >= 3 and all(0 <= c.min() and c.max() <= 1.0 + 1e-6 for c in crops if len(c))
    # the npz cache gives the same crops
    cache = tmp_path / "morph.npz"
    import zarr

    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    g.create_array("volumes/gt_instances", data=(m * np.arange(1, 3)[:, None, None, None]).astype(np.uint8))
    a = RealMorphology.load([tmp_path / "s.zarr"], cache=cache)
    b = RealMorphology.load([], cache=cache)
    assert cache.is_file() and a.n_neurons == b.n_neurons == 2
    assert np.array_equal(a.crop(np.random.default_rng(1), (16, 32, 32), min_voxels=5),
                          b.crop(np.random.default_rng(1), (16, 32, 32), min_voxels=5))
    src = SyntheticSource(pool_size=3, shape=(16, 32, 32), hard_fraction=0.0, wide=1.0, morphology=a,
                          morphology_fraction=1.0)
    for _ in src.fill():
        pass
    assert all("wide" in s.name for s in src.samples) and any("real" in s.name for s in src.samples)
    with pytest.raises(NeurosegError):
        RealMorphology([], [], [])
