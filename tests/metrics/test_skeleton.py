"""Per-instance skeletons equal full-volume ``skimage.morphology.skeletonize``."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from napari_neuroseg.metrics._skeleton import skeleton_keys
from napari_neuroseg.metrics._thin import HAVE_NUMBA, thin_mask

BACKENDS = ["skimage"] + (["sparse"] if HAVE_NUMBA else [])


def _blobs(seed, shape=(30, 40, 50)):
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.random(shape), rng.uniform(1.0, 2.5))
    mask = field > np.quantile(field, rng.uniform(0.85, 0.97))
    lab, n = ndi.label(mask, structure=np.ones((3, 3, 3)))
    return lab, n


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(4))
def test_bbox_skeleton_equals_full_volume_skeleton(seed, backend):
    lab, n = _blobs(seed)
    shape = lab.shape
    for i in range(1, min(n, 6) + 1):
        full = skeletonize(lab == i)  # full-volume reference, as the official evaluator does
        keys = np.flatnonzero(lab == i)
        got = skeleton_keys(keys, shape, backend=backend)
        np.testing.assert_array_equal(got, np.flatnonzero(full))


@pytest.mark.skipif(not HAVE_NUMBA, reason="sparse thinning needs numba")
@pytest.mark.parametrize("seed", range(30))
def test_sparse_thinning_equals_skimage_on_random_shapes(seed):
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(s) for s in rng.integers(4, 22, 3))
    mask = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.7, 2.0)) > rng.uniform(0.45, 0.55)
    np.testing.assert_array_equal(thin_mask(mask), skeletonize(mask))


@pytest.mark.skipif(not HAVE_NUMBA, reason="sparse thinning needs numba")
@pytest.mark.realdata
def test_sparse_thinning_equals_skimage_on_a_real_neuron(fisbe_real_dir):
    import zarr

    gt = zarr.open(str(fisbe_real_dir / "gt" / "R14A02-20180905_65_A6.zarr"),
                   mode="r")["volumes/gt_instances"]
    ch = np.asarray(gt[4]) > 0  # the smallest neuron of the sample (3888 voxels)
    zz, yy, xx = np.nonzero(ch)
    box = ch[zz.min() - 2 : zz.max() + 3, yy.min() - 2 : yy.max() + 3, xx.min() - 2 : xx.max() + 3]
    np.testing.assert_array_equal(thin_mask(box), skeletonize(box))
