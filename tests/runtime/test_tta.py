"""Flip averaging (runtime.tta): grid alignment, affinity shifts, StarDist ray mapping, and the
equivariance of both predict paths. Small inputs: fast."""

from __future__ import annotations

import numpy as np
import pytest

from napari_neuroseg.runtime.tta import (
    FLIPS,
    affinity_unflip,
    flip_average,
    flip_tile,
    ray_flip_weights,
    unflip_dist,
)


def _rng_tile(shape=(1, 8, 16, 16), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_flips_are_the_8_subsets():
    assert len(FLIPS) == 8 and len(set(FLIPS)) == 8 and () in FLIPS and (0, 1, 2) in FLIPS


@pytest.mark.parametrize("grid", [(1, 1, 1), (1, 2, 2), (2, 2, 2), (1, 4, 2)])
def test_grid_networks_stay_on_their_lattice(grid):
    """A grid-g 'network' that samples voxels 0, g, 2g, ... is flip-equivariant only if the flipped
    tile is shifted by g-1: then TTA returns exactly the plain output."""
    x = _rng_tile((2, 8, 16, 16))

    def sample(t):
        return t[:, :: grid[0], :: grid[1], :: grid[2]] * 2.0

    avg = flip_average(sample, grid=grid)(x)
    np.testing.assert_allclose(avg, sample(x), rtol=1e-6, atol=1e-6)
    # without the shift a grid > 1 network would be misaligned
    if max(grid) > 1:
        plain = np.flip(sample(np.flip(x, axis=(1, 2, 3)).copy()), axis=(1, 2, 3))
        assert not np.allclose(plain, sample(x))
    assert flip_tile(x, (1,), grid).shape == x.shape


def test_affinities_are_shifted_back_along_flipped_axes():
    offsets = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (4, 0, 0), (0, 4, 0), (0, 0, 4)]
    x = np.abs(_rng_tile((1, 12, 16, 16), seed=1))

    def net(t):  # foreground = the voxel, affinity = min over the pair (v, v + o); 0 leaving the tile
        v = t[0]
        out = np.zeros((1 + len(offsets),) + v.shape, np.float32)
        out[0] = v
        for k, o in enumerate(offsets):
            sl_src = tuple(slice(0, n - d) for n, d in zip(v.shape, o))
            sl_dst = tuple(slice(d, n) for n, d in zip(v.shape, o))
            out[1 + k][sl_src] = np.minimum(v[sl_src], v[sl_dst])
        return out

    ref = net(x)
    avg = flip_average(net, unflip=affinity_unflip(offsets))(x)
    np.testing.assert_allclose(avg[0], ref[0], rtol=1e-6)
    for k, o in enumerate(offsets):
        inner = tuple(slice(0, n - d) for n, d in zip(ref.shape[1:], o))  # pairs inside the tile
        np.testing.assert_allclose(avg[1 + k][inner], ref[1 + k][inner], rtol=1e-6, atol=1e-7)
    # an un-shifted average would be wrong
    wrong = flip_average(net)(x)
    assert not np.allclose(wrong[1][:-1], ref[1][:-1], atol=1e-3)


def _rays(name, **kw):
    import stardist.rays3d as r3

    return getattr(r3, name)(**kw)


@pytest.mark.parametrize("axes", [a for a in FLIPS if a])
def test_ray_weights_permute_a_symmetric_ray_set(axes):
    rays = _rays("Rays_Octo", n_level=2)
    W = ray_flip_weights(rays.vertices, rays.faces, axes)
    assert set(np.unique(W).tolist()) == {0.0, 1.0} and (W.sum(0) == 1).all() and (W.sum(1) == 1).all()
    target = rays.vertices.copy()
    target[:, list(axes)] *= -1
    np.testing.assert_allclose(W @ rays.vertices, target, atol=1e-6)


@pytest.mark.parametrize("aniso", [None, (2.0, 1.0, 1.0)])
def test_ray_weights_interpolate_on_the_triangulation(aniso):
    rays = _rays("Rays_GoldenSpiral", n=64, anisotropy=aniso)
    v = rays.vertices
    for axes in FLIPS[1:]:
        W = ray_flip_weights(v, rays.faces, axes)
        assert (W >= 0).all() and np.allclose(W.sum(1), 1)
        assert ((W > 0).sum(1) <= 3).all()
        t = v.copy()
        t[:, list(axes)] *= -1
        approx = W @ v  # a point of the face's triangle in the flipped ray's direction
        cos = (approx * t).sum(1) / np.linalg.norm(approx, axis=1) / np.linalg.norm(t, axis=1)
        assert cos.min() > 1 - 1e-5


@pytest.mark.parametrize("name,kw,tol", [("Rays_Octo", {"n_level": 2}, 1e-5), ("Rays_GoldenSpiral", {"n": 64}, 0.05)])
def test_equivariant_stardist_like_network_is_unchanged(name, kw, tol):
    """dist_k(v) = 3 + grad(image)(v) · r_k transforms correctly under flips (the gradient is a
    vector field): TTA must return the plain output, exactly for a symmetric ray set and up to the
    interpolation error for the golden spiral."""
    from scipy.ndimage import gaussian_filter

    rays = _rays(name, **kw)
    v = rays.vertices.astype(np.float32)
    x = gaussian_filter(_rng_tile((1, 12, 20, 20), seed=2), (0, 2, 2, 2)) * 20

    def net(t):
        g = np.stack(np.gradient(t[0]))  # central differences: exactly antisymmetric under flips
        d = 3.0 + np.einsum("rc,c...->r...", v, g)
        return 1 / (1 + np.exp(-t)), d.astype(np.float32)

    W = {a: ray_flip_weights(rays.vertices, rays.faces, a) for a in FLIPS if a}
    p, d = flip_average(net, unflip=lambda o, a: (o[0], unflip_dist(o[1], W[a])))(x)
    p0, d0 = net(x)
    np.testing.assert_allclose(p, p0, rtol=1e-5)
    inner = (slice(None), slice(1, -1), slice(1, -1), slice(1, -1))  # np.gradient is one-sided at edges
    err = np.abs(d[inner] - d0[inner]).max() / np.abs(d0[inner] - 3).max()
    assert err < tol
    # without the ray mapping the distances would be wrong
    _, d1 = flip_average(net)(x)
    assert np.abs(d1[inner] - d0[inner]).max() / np.abs(d0[inner] - 3).max() > 0.3


def test_neuron_predict_tta_is_flip_equivariant():
    """Neuron path: TTA on a flipped volume gives the flipped outputs (maps within 1/255), and
    the option runs end to end through predict()."""
    import torch

    from napari_neuroseg.models.neurons import (
        NetConfig,
        NeuronModel,
        PostprocessParams,
        predict,
    )
    from napari_neuroseg.models.neurons.predict import network_outputs
    from napari_neuroseg.runtime.progress import run_to_completion

    torch.manual_seed(0)
    cfg = NetConfig(base=4, levels=2)
    net = cfg.build().eval()
    model = NeuronModel(net=net, config=cfg, params=PostprocessParams(), device=torch.device("cpu"))
    img = np.abs(_rng_tile((3, 16, 16, 16), seed=3))
    a = run_to_completion(network_outputs(model, img, tta=True)).astype(int)
    for axes in [(0,), (1, 2), (0, 1, 2)]:
        ax = tuple(1 + i for i in axes)
        b = run_to_completion(network_outputs(model, np.flip(img, ax).copy(), tta=True)).astype(int)
        back = np.flip(b, ax)
        assert np.abs(back[0] - a[0]).max() <= 1  # foreground: equivariant
        # affinities: equivariant up to the pair shift (compare away from the shifted borders)
        core = (slice(None),) + tuple(slice(4, -4) for _ in range(3))
        for k, off in enumerate(cfg.offsets):
            sh = [0, 0, 0]
            for i in axes:
                sh[i] = off[i]
            shifted = np.roll(back[1 + k], shift=tuple(-s for s in sh), axis=(0, 1, 2))
            assert np.abs(shifted[core[1:]] - a[1 + k][core[1:]]).max() <= 1
    res = predict(img * 100, model, tta=True)
    assert res.info["tta"] is True and res.labels.shape == img.shape[1:]
