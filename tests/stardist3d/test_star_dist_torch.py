"""star_dist3d_torch equals stardist's C++ star_dist3D bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stardist import Rays_GoldenSpiral
from stardist.geometry import star_dist3D

from napari_neuroseg.models.stardist3d.training import make_targets
from napari_neuroseg.models.stardist3d.training.star_dist_torch import ray_steps, star_dist3d_torch


def _ellipsoids(shape, n, seed, rmin=3.0, rmax=10.0):
    """Random (anisotropic) ellipsoids, later ones overwriting earlier ones: touching objects,
    objects cut by the border (centres up to 3 voxels outside)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    lbl = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        c = rng.uniform(-3, np.array(shape) + 3)
        r = rng.uniform(rmin, rmax, 3) * np.array([0.5, 1.0, 1.0])
        lbl[((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1] = k
    return lbl


CASES = [  # shape, n_rays, anisotropy, grid
    ((11, 27, 31), 32, None, (1, 1, 1)),
    ((14, 32, 32), 96, None, (1, 2, 2)),
    ((17, 33, 29), 64, (2, 1, 1), (1, 2, 2)),
    ((21, 35, 38), 64, (2, 1, 1), (2, 2, 2)),
    ((9, 23, 25), 96, (2, 1, 1), (1, 1, 1)),
    ((19, 42, 37), 32, (2, 1, 1), (2, 2, 2)),
]


@pytest.mark.parametrize("shape,n_rays,anisotropy,grid", CASES)
def test_equals_stardist_exactly(shape, n_rays, anisotropy, grid):
    lbl = _ellipsoids(shape, 16, seed=sum(shape) + n_rays, rmax=8.0)
    assert len(np.unique(lbl)) > 5 and lbl[0].any()  # several objects, some cut by the border
    rays = Rays_GoldenSpiral(n_rays, anisotropy=anisotropy)
    expected = star_dist3D(lbl, rays, grid)
    got = star_dist3d_torch(lbl, rays, grid)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert tuple(got.shape) == expected.shape == tuple((s - 1) // g + 1 for s, g in zip(shape, grid)) + (n_rays,)
    np.testing.assert_array_equal(got.numpy(), expected)
    assert (expected > 0).any()


def test_batch_tensor_input_and_uint16_cast():
    rays = Rays_GoldenSpiral(32, anisotropy=(2, 1, 1))
    vols = [_ellipsoids((12, 30, 26), 12, seed=s) for s in (1, 2, 3)]
    # stardist casts labels to uint16: 65536 + k is label k, -1 is 65535
    vols[1] = np.where(vols[1] > 0, vols[1] + 65536, 0).astype(np.int64)
    vols[2] = np.where(vols[2] == 3, -1, vols[2]).astype(np.int64)
    batch = np.stack(vols)
    got = star_dist3d_torch(torch.from_numpy(batch), rays.vertices, (1, 2, 2))
    assert tuple(got.shape) == (3, 12, 15, 13, 32)
    chunked = star_dist3d_torch(torch.from_numpy(batch), rays.vertices, (1, 2, 2), max_pairs=1000)
    np.testing.assert_array_equal(chunked.numpy(), got.numpy())
    for b, v in enumerate(vols):
        np.testing.assert_array_equal(got[b].numpy(), star_dist3D(v, rays, (1, 2, 2)))


def test_empty_and_single_voxel():
    rays = Rays_GoldenSpiral(16)
    z = star_dist3d_torch(np.zeros((5, 7, 9), np.uint16), rays, (1, 2, 2))
    assert tuple(z.shape) == (5, 4, 5, 16) and not z.any()
    lbl = np.zeros((5, 7, 9), np.uint16)
    lbl[2, 4, 4] = 7
    d = star_dist3d_torch(lbl, rays, (1, 2, 2)).numpy()
    np.testing.assert_array_equal(d, star_dist3D(lbl, rays, (1, 2, 2)))
    assert np.all(d[2, 2, 2] >= 1) and np.count_nonzero(d.any(-1)) == 1


def test_ray_steps_accumulate_in_float32():
    rays = Rays_GoldenSpiral(8, anisotropy=(2, 1, 1))
    pos, dist = ray_steps(rays, 50)
    v = rays.vertices.astype(np.float32)
    acc = np.zeros(3, np.float32)
    for t in range(50):  # one ray, scalar float32 loop as in C
        acc = (acc + v[5]).astype(np.float32)
        np.testing.assert_array_equal(pos[t, :, 5], acc)
    r = np.rint(pos[-1, :, 5]).astype(int)
    assert dist[-1, 5] == np.float32(np.sqrt(float((r * r).sum())))


def test_make_targets_on_device_equals_default():
    rays = Rays_GoldenSpiral(32, anisotropy=(2, 1, 1))
    lbl = _ellipsoids((16, 32, 32), 10, seed=4)
    p0, d0 = make_targets(lbl, rays, (1, 2, 2), (2, 1, 1))
    p1, d1 = make_targets(lbl, rays, (1, 2, 2), (2, 1, 1), device="cpu")
    np.testing.assert_array_equal(p0, p1)
    np.testing.assert_array_equal(d0, d1)
    assert d1.dtype == np.float32 and d1.shape == (32, 16, 16, 16)


def test_bad_rays():
    with pytest.raises(ValueError, match="n_rays, 3"):
        star_dist3d_torch(np.ones((4, 4, 4), np.uint16), np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match="non-zero"):
        star_dist3d_torch(np.ones((4, 4, 4), np.uint16), np.zeros((5, 3), np.float32))
