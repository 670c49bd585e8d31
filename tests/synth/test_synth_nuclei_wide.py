"""Tests of the wide domain randomisation of the synthetic nuclei (``NucleiSettings`` rim,
speckle, foci, dim nuclei, haze, gradient, offset, gamma, acquisition_scale and
``NucleiSettings.randomized_wide``): defaults unchanged, shapes, ranges, determinism per seed."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.synth import NucleiSettings, make_nuclei

SMALL = (16, 48, 48)
SHAPE = (24, 64, 64)
# no blur, no noise, no illumination variation: the rendered brightness as it is
CLEAN = dict(psf_sigma=(0.0, 0.0, 0.0), gain=0.0, read_noise=0.0, illumination_strength=0.0,
             background_variation=0.0, texture=0.0, brightness_sigma=0.0)


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def test_defaults_bit_identical_to_the_generator_before_the_wide_options():
    # values recorded with the generator of commit eb12ee2 (before the wide options existed)
    img, lab = make_nuclei(SMALL, seed=11)
    assert _sha(lab) == "cf38a995a2bf26533ec1af5bdeadf6f5bb86d632d6bcccd2c9df139bcae905b6"
    assert float(img.astype(np.float64).sum()) == pytest.approx(6963230.26146698, rel=1e-9)
    assert img[8, 20, 20:24].tolist() == pytest.approx(
        [216.03382873535156, 201.42115783691406, 194.37107849121094, 211.38198852539062], rel=1e-6)
    s = NucleiSettings().randomized(np.random.default_rng(5))
    img, lab = make_nuclei(SMALL, seed=12, settings=s)
    assert _sha(lab) == "1cddc58195163f18c4adde63ae6755cd73cc153aebfe1209dbc658b3803cc35a"
    assert float(img.astype(np.float64).sum()) == pytest.approx(5942724.345855713, rel=1e-9)


def test_randomized_leaves_the_wide_options_at_their_defaults():
    d = NucleiSettings()
    r = d.randomized(np.random.default_rng(3), 0.5)
    for name in ("rim", "speckle", "foci", "dim_fraction", "haze", "gradient", "offset", "gamma",
                 "acquisition_scale", "speckle_scale", "foci_density", "dim_level"):
        assert getattr(r, name) == getattr(d, name), name


def test_explicit_no_op_values_equal_the_default():
    a = make_nuclei(SMALL, seed=4)
    b = make_nuclei(SMALL, seed=4, rim=0.0, speckle=0.0, foci=0.0, dim_fraction=0.0, haze=0.0, gradient=0.0,
                    offset=0.0, gamma=1.0, acquisition_scale=(1.0, 1.0, 1.0))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("change", [
    dict(rim=2.0), dict(speckle=0.6), dict(foci=2.0), dict(dim_fraction=0.5), dict(haze=0.3),
    dict(gradient=0.5), dict(offset=100.0), dict(gamma=0.7), dict(acquisition_scale=(2.0, 1.0, 1.0)),
    dict(acquisition_scale=(0.5, 1.3, 1.3)),
])
def test_each_option_changes_the_image_not_the_labels(change):
    img0, lab0 = make_nuclei(SMALL, seed=6)
    img, lab = make_nuclei(SMALL, seed=6, **change)
    assert np.array_equal(lab, lab0)
    assert img.shape == SMALL and img.dtype == np.float32 and np.isfinite(img).all()
    assert not np.array_equal(img, img0)
    again, _ = make_nuclei(SMALL, seed=6, **change)
    assert np.array_equal(img, again)  # deterministic per seed


def _profile(img: np.ndarray, lab: np.ndarray) -> tuple[float, float]:
    """Mean intensity of the nuclei's inner cores and of their outer shells."""
    from scipy import ndimage as ndi

    shell = (lab > 0) & ~ndi.binary_erosion(lab > 0, iterations=1)
    core = ndi.binary_erosion(lab > 0, iterations=5)
    assert core.sum() > 50
    return float(img[core].mean()), float(img[shell].mean())


def test_rim_bright_and_centre_bright_profiles():
    kw = dict(CLEAN, background=0.0, anisotropy=(1, 1, 1))
    flat = make_nuclei(SHAPE, seed=2, **kw)
    rim = make_nuclei(SHAPE, seed=2, rim=3.0, **kw)
    dome = make_nuclei(SHAPE, seed=2, dome=0.6, **kw)
    c, s = _profile(*flat)
    assert s == pytest.approx(c, rel=0.02)
    c, s = _profile(*rim)
    assert s > 1.5 * c
    c, s = _profile(*dome)
    assert c > 1.3 * s


def test_dim_fraction_dims_about_that_share_of_nuclei():
    img, lab = make_nuclei(SHAPE, seed=3, dim_fraction=0.4, dim_level=0.25, **CLEAN)
    bg = float(np.median(img[lab == 0]))
    means = np.array([img[lab == k].mean() - bg for k in range(1, lab.max() + 1)])
    top = np.median(means[means > 0.6 * means.max()])
    dim = np.mean(means < 0.5 * top)
    assert lab.max() >= 20 and 0.2 < dim < 0.6


def test_speckle_and_foci_add_texture_inside_nuclei():
    kw = dict(CLEAN, background=0.0)
    base, lab = make_nuclei(SHAPE, seed=5, **kw)
    inside = lab > 0
    cv0 = base[inside].std() / base[inside].mean()
    sp, _ = make_nuclei(SHAPE, seed=5, speckle=0.7, **kw)
    assert sp[inside].std() / sp[inside].mean() > cv0 + 0.2
    fo, _ = make_nuclei(SHAPE, seed=5, foci=3.0, foci_density=0.005, **kw)
    assert fo[inside].max() > 2.0 * base[inside].max()
    assert np.array_equal(fo[~inside], base[~inside])  # foci only inside nuclei (no blur here)


def test_acquisition_scale_coarser_z_correlates_neighbouring_planes():
    kw = dict(CLEAN, contrast=0.0, read_noise=20.0)  # background + read noise only
    fine, _ = make_nuclei(SHAPE, seed=7, **kw)
    coarse, _ = make_nuclei(SHAPE, seed=7, acquisition_scale=(2.0, 1.0, 1.0), **kw)
    assert coarse.shape == SHAPE

    def zcorr(a):
        a = a - a.mean()
        return float((a[1:] * a[:-1]).mean() / a.var())

    assert abs(zcorr(fine)) < 0.1 and zcorr(coarse) > 0.3
    finer, _ = make_nuclei(SHAPE, seed=7, acquisition_scale=(0.5, 1.0, 1.0), **kw)
    assert finer.std() < 0.9 * fine.std()  # averaged down: less noise per voxel


def test_gamma_keeps_the_range_and_bends_the_middle():
    a, _ = make_nuclei(SMALL, seed=8)
    g, _ = make_nuclei(SMALL, seed=8, gamma=0.6)
    lo, hi = np.percentile(a, (0.1, 99.9))
    assert np.percentile(g, 99.9) == pytest.approx(hi, rel=0.02)
    mid = (a > lo) & (a < hi)
    assert np.mean(g[mid] >= a[mid] - 1e-3) > 0.99  # gamma < 1 lifts values between lo and hi


@pytest.mark.parametrize("bad", [
    dict(speckle=1.5), dict(rim=-1.0), dict(gamma=0.0), dict(dim_fraction=2.0), dict(dim_level=0.0),
    dict(gradient=1.0), dict(foci=-1.0), dict(haze=-0.1), dict(acquisition_scale=(8.0, 1.0, 1.0)),
    dict(acquisition_scale=(1.0, 1.0)), dict(offset=float("nan")),
])
def test_out_of_range_values_are_neuroseg_errors(bad):
    with pytest.raises(NeurosegError):
        make_nuclei(SMALL, seed=0, **bad)


def test_randomized_wide_is_deterministic_and_in_range():
    d = NucleiSettings()
    a = d.randomized_wide(np.random.default_rng(42))
    b = d.randomized_wide(np.random.default_rng(42))
    assert a == b
    draws = [d.randomized_wide(np.random.default_rng(k)) for k in range(200)]
    assert len({s.radius for s in draws}) == 200
    mean_r = float(np.mean(d.radius))
    for s in draws:
        assert 0.5 * 0.6 * d.radius[1] - 1e-9 <= s.radius[0] < s.radius[1] <= 3.0 * d.radius[1] + 1e-9
        assert 0 <= s.dome < 1 and s.rim >= 0 and not (s.dome and s.rim)
        assert 0.5 <= s.psf_sigma[0] <= 5.0 and 0.4 <= s.psf_sigma[1] <= 2.5
        assert all(0.5 <= f <= 2.0 for f in s.acquisition_scale)
        assert 0.6 <= s.gamma <= 1.6 and 0 <= s.speckle <= 0.8 and s.contrast >= 0.4 * s.background
    sizes = np.array([np.mean(s.radius) / mean_r for s in draws])
    assert sizes.min() < 0.7 and sizes.max() > 2.2  # object sizes about ×0.5–3 of the trained ones
    # every profile and most options occur
    assert any(s.rim for s in draws) and any(s.dome for s in draws) and any(not s.rim and not s.dome for s in draws)
    for name in ("speckle", "foci", "dim_fraction", "haze", "gradient", "offset"):
        share = np.mean([getattr(s, name) > 0 for s in draws])
        assert 0.2 < share < 0.9, name
    with pytest.raises(NeurosegError):
        d.randomized_wide(np.random.default_rng(0), size=(2.0, 1.0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_volumes_are_valid(seed):
    s = NucleiSettings().randomized_wide(np.random.default_rng(seed), size=(0.5, 1.5))
    img, lab = make_nuclei(SMALL, seed=seed, settings=s)
    assert img.shape == lab.shape == SMALL and img.dtype == np.float32 and lab.dtype == np.int32
    assert np.isfinite(img).all()
    ids = np.unique(lab)
    assert np.array_equal(ids, np.arange(ids[-1] + 1))
    img2, lab2 = make_nuclei(SMALL, seed=seed, settings=s)
    assert np.array_equal(img, img2) and np.array_equal(lab, lab2)


def test_training_data_option_randomize():
    from napari_neuroseg.models.stardist3d.train import synthetic_dataset

    base_x, base_y = synthetic_dataset(3, SMALL, seed=20)
    same_x, same_y = synthetic_dataset(3, SMALL, seed=20, randomize=0.0)
    assert all(np.array_equal(a, b) for a, b in zip(base_x, same_x))
    wide_x, wide_y = synthetic_dataset(3, SMALL, seed=20, randomize=1.0)
    assert all(not np.array_equal(a, b) for a, b in zip(base_y, wide_y))  # other sizes/shapes
    again_x, _ = synthetic_dataset(3, SMALL, seed=20, randomize=1.0)
    assert all(np.array_equal(a, b) for a, b in zip(wide_x, again_x))
    with pytest.raises(NeurosegError):
        synthetic_dataset(1, SMALL, randomize=1.5)


def test_settings_stay_a_frozen_dataclass_with_replace():
    s = NucleiSettings().replace(rim=1.0, acquisition_scale=(2.0, 1.0, 1.0))
    assert s.rim == 1.0 and dataclasses.is_dataclass(s)
    with pytest.raises(NeurosegError):
        NucleiSettings().replace(not_a_field=1)
