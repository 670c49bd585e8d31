"""Tests of the synthetic nuclei generator."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import regionprops

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.synth import NucleiSettings, make_nuclei

SHAPE = (32, 96, 96)


@pytest.fixture(scope="module")
def nuclei():
    return make_nuclei(SHAPE, seed=2)


def _touching_pairs(lab: np.ndarray) -> set[tuple[int, int]]:
    pairs: set[tuple[int, int]] = set()
    for ax in range(3):
        a = np.moveaxis(lab, ax, 0)
        x, y = a[1:], a[:-1]
        s = (x > 0) & (y > 0) & (x != y)
        pairs |= set(zip(np.minimum(x[s], y[s]).tolist(), np.maximum(x[s], y[s]).tolist()))
    return pairs


def test_dtypes_shapes_and_sequential_labels(nuclei):
    img, lab = nuclei
    assert img.dtype == np.float32 and img.shape == SHAPE
    assert lab.dtype == np.int32 and lab.shape == SHAPE
    ids = np.unique(lab)
    assert ids[0] == 0 and np.array_equal(ids, np.arange(ids[-1] + 1))
    assert ids[-1] >= 30


def test_default_shape():
    img, lab = make_nuclei(seed=0)
    assert img.shape == lab.shape == (64, 128, 128)


def test_determinism(nuclei):
    img, lab = make_nuclei(SHAPE, seed=2)
    assert np.array_equal(img, nuclei[0]) and np.array_equal(lab, nuclei[1])
    img2, _ = make_nuclei(SHAPE, seed=3)
    assert not np.array_equal(img, img2)


def test_touching_and_dense(nuclei):
    _, lab = nuclei
    n = int(lab.max())
    pairs = _touching_pairs(lab)
    assert len(pairs) >= n // 2, f"only {len(pairs)} touching pairs among {n} nuclei"
    assert 0.25 < (lab > 0).mean() < 0.6


def test_each_label_is_one_connected_piece(nuclei):
    _, lab = nuclei
    for r in regionprops(lab):
        _, k = ndi.label(r.image)
        assert k == 1


def test_anisotropy_squashes_z():
    _, lab = make_nuclei(SHAPE, seed=4, anisotropy=(2, 1, 1))
    ext = np.array([[r.bbox[3] - r.bbox[0], r.bbox[4] - r.bbox[1], r.bbox[5] - r.bbox[2]] for r in regionprops(lab)])
    inner = ext[(ext > 2).all(1)]
    ratio = np.median(inner[:, 0]) / np.median(inner[:, 1:])
    assert 0.35 < ratio < 0.7
    _, lab_iso = make_nuclei(SHAPE, seed=4, anisotropy=(1, 1, 1))
    ext = np.array([[r.bbox[3] - r.bbox[0], r.bbox[4] - r.bbox[1]] for r in regionprops(lab_iso)])
    assert 0.8 < np.median(ext[:, 0]) / np.median(ext[:, 1]) < 1.25


def test_requested_count():
    _, lab = make_nuclei(SHAPE, seed=5, n_nuclei=12)
    assert 8 <= lab.max() <= 12  # a few may be cut away at the border
    _, empty = make_nuclei((16, 32, 32), n_nuclei=0)
    assert empty.max() == 0


def test_image_shows_the_nuclei(nuclei):
    img, lab = nuclei
    inner = ndi.binary_erosion(lab > 0, iterations=1)
    outer = ndi.binary_erosion(lab == 0, iterations=2)
    fg, bg = np.median(img[inner]), np.median(img[outer])
    assert fg > bg + 25
    # intensity statistics in the range of stardist's 3D nuclei test image
    assert 120 < bg < 200 and 180 < fg < 280


def test_settings_and_errors():
    s = NucleiSettings().randomized(np.random.default_rng(0), 0.3)
    assert s.packing <= 0.95
    img, _ = make_nuclei((16, 48, 48), seed=0, settings=s)
    assert img.shape == (16, 48, 48)
    with pytest.raises(NeurosegError, match="unknown nuclei setting"):
        make_nuclei((16, 48, 48), nope=1)
    with pytest.raises(NeurosegError):
        make_nuclei((16, 48, 48), anisotropy=(0, 1, 1))
    with pytest.raises(NeurosegError):
        make_nuclei((48, 48))


def test_dome_dims_the_rims_and_keeps_the_labels(nuclei):
    """``dome``: the same nuclei (labels identical), brightness falling from centre to rim;
    ``dome=0`` is the default image exactly; values outside [0, 1) are refused."""
    img, lab = nuclei
    flat, lab0 = make_nuclei(SHAPE, seed=2, dome=0.0)
    np.testing.assert_array_equal(flat, img)
    domed, lab2 = make_nuclei(SHAPE, seed=2, dome=0.6)
    np.testing.assert_array_equal(lab2, lab)
    fg = lab > 0
    core = ndi.binary_erosion(fg, iterations=3)
    rim = fg & ~ndi.binary_erosion(fg, iterations=1)

    def rim_to_core(x):
        return float(np.median(x[rim]) - np.median(x[~fg])) / float(np.median(x[core]) - np.median(x[~fg]))

    assert rim_to_core(domed) < rim_to_core(img) - 0.1
    for bad in (-0.1, 1.0):
        with pytest.raises(NeurosegError, match="dome"):
            make_nuclei((16, 48, 48), dome=bad)
