"""Tiling on the divisor grid: plans, tiled == untiled, auto tiles, out-of-memory retry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.runtime import Progress, run_to_completion
from napari_neuroseg.runtime.tiling import (
    auto_tiles,
    more_tiles,
    normalize_n_tiles,
    plan_tiles,
    predict_tiled,
    predict_tiled_auto,
    tile_input_shape,
)


def _block_mean(x: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    c, z, y, xx = x.shape
    return x.reshape(c, z // f[0], f[0], y // f[1], f[1], xx // f[2], f[2]).mean(axis=(2, 4, 6))


def make_forward(radius: int, divisor, grid):
    """A toy 'network': zero-padded box sums (receptive field ``radius``), a pooling by
    ``divisor`` broadcast back to the grid (depends on divisor alignment), and a pooling by
    ``grid``. Integer-valued inputs keep every sum exact, so tiled == untiled bit for bit."""
    up = tuple(d // g for d, g in zip(divisor, grid))

    def forward(x: np.ndarray):
        assert all(s % d == 0 for s, d in zip(x.shape[1:], divisor)), x.shape
        w = np.ones((1,) + (2 * radius + 1,) * 3)
        y = ndi.correlate(x.astype(np.float64), w, mode="constant", cval=0.0)
        coarse = _block_mean(y, divisor)
        for ax, f in enumerate(up):
            coarse = np.repeat(coarse, f, axis=ax + 1)
        fine = _block_mean(y, grid)
        a = (fine + coarse).astype(np.float32)
        b = np.concatenate([fine, fine * 2]).astype(np.float32)
        return a, b

    return forward


@pytest.mark.parametrize("shape", [(13, 37, 30), (16, 32, 32), (9, 50, 21)])
@pytest.mark.parametrize("grid,divisor", [((1, 1, 1), (1, 1, 1)), ((1, 2, 2), (2, 4, 4)), ((2, 2, 2), (4, 8, 8))])
def test_plan_cores_partition_padded_output(shape, grid, divisor):
    overlap = (3, 5, 6)
    for n_tiles in [(1, 1, 1), (2, 3, 2), (3, 4, 5)]:
        plan = plan_tiles(shape, n_tiles, divisor, overlap, grid)
        padded = [math.ceil(s / d) * d for s, d in zip(shape, divisor)]
        out = [p // g for p, g in zip(padded, grid)]
        cover = np.zeros(out, int)
        for t in plan:
            cover[t.dst] += 1
            for ax in range(3):
                s, d, c = t.src[ax], t.dst[ax], t.crop[ax]
                assert s.start % divisor[ax] == 0 and s.stop % divisor[ax] == 0
                assert 0 <= s.start < s.stop <= padded[ax]
                assert c.stop - c.start == d.stop - d.start
                # core position in input coordinates, and the context around it
                core0, core1 = d.start * grid[ax], d.stop * grid[ax]
                # context covers the overlap, or reaches the volume's edge
                assert core0 - s.start >= min(overlap[ax], core0)
                assert s.stop - core1 >= min(overlap[ax], padded[ax] - core1)
                assert t.first[ax] == (core0 == 0) and t.last[ax] == (core1 == padded[ax])
                assert (s.start + c.start * grid[ax]) == core0
            assert t.shape == tile_input_shape(shape, n_tiles, divisor, overlap) or all(
                a <= b for a, b in zip(t.shape, tile_input_shape(shape, n_tiles, divisor, overlap))
            )
        assert np.all(cover == 1)


@pytest.mark.parametrize(
    "shape,grid,divisor,n_tiles",
    [
        ((13, 37, 30), (1, 1, 1), (1, 1, 1), (2, 3, 2)),
        ((13, 37, 30), (1, 2, 2), (2, 4, 4), (2, 2, 3)),
        ((20, 41, 35), (2, 2, 2), (4, 8, 8), (2, 3, 2)),
        ((9, 50, 21), (1, 2, 2), (1, 8, 4), 5),
    ],
)
def test_tiled_equals_untiled_exactly(shape, grid, divisor, n_tiles):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 10, size=(2,) + shape).astype(np.float32)
    radius = 3
    overlap = radius + max(divisor)  # receptive field of the toy network
    fwd = make_forward(radius, divisor, grid)
    full = run_to_completion(predict_tiled(fwd, img, n_tiles=None, divisor=divisor, overlap=overlap, grid=grid))
    steps: list[Progress] = []
    tiled = run_to_completion(
        predict_tiled(fwd, img, n_tiles=n_tiles, divisor=divisor, overlap=overlap, grid=grid), steps.append
    )
    out_shape = tuple(math.ceil(s / g) for s, g in zip(shape, grid))
    assert full[0].shape == (2,) + out_shape and full[1].shape == (4,) + out_shape
    assert len(steps) > 1 and steps[-1].step == steps[-1].total == len(steps)
    for a, b in zip(full, tiled):
        np.testing.assert_array_equal(a, b)
    # and the untiled result is the forward on the reflect-padded image, cropped
    pad = [(0, 0)] + [(0, math.ceil(s / d) * d - s) for s, d in zip(shape, divisor)]
    direct = fwd(np.pad(img, pad, mode="reflect"))[0][(slice(None),) + tuple(slice(0, n) for n in out_shape)]
    np.testing.assert_array_equal(direct, full[0])


def test_too_small_overlap_differs():
    """Sanity check of the test above: without enough overlap tiles do not match."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 10, size=(1, 16, 32, 32)).astype(np.float32)
    fwd = make_forward(3, (1, 1, 1), (1, 1, 1))
    full = run_to_completion(predict_tiled(fwd, img, n_tiles=1, divisor=1, overlap=3))
    bad = run_to_completion(predict_tiled(fwd, img, n_tiles=(1, 2, 2), divisor=1, overlap=1))
    good = run_to_completion(predict_tiled(fwd, img, n_tiles=(1, 2, 2), divisor=1, overlap=3))
    assert not np.array_equal(full[0], bad[0])
    np.testing.assert_array_equal(full[0], good[0])


def test_accepts_3d_image_and_int_tiles():
    img = np.arange(8 * 16 * 16, dtype=np.float32).reshape(8, 16, 16) % 7
    fwd = make_forward(1, (1, 1, 1), (1, 1, 1))
    a = run_to_completion(predict_tiled(fwd, img, n_tiles=4, divisor=1, overlap=1))
    b = run_to_completion(predict_tiled(fwd, img[None], n_tiles=None, divisor=1, overlap=1))
    np.testing.assert_array_equal(a[0], b[0])
    assert normalize_n_tiles(4, (8, 16, 16)) == (1, 2, 2)


def test_bad_tiles_rejected():
    with pytest.raises(NeurosegError, match="n_tiles"):
        normalize_n_tiles((1, 0, 1), (8, 8, 8))
    with pytest.raises(NeurosegError, match="n_tiles"):
        plan_tiles((8, 8, 8), (1, 2), 1, 0)
    with pytest.raises(NeurosegError, match="divisor"):
        plan_tiles((8, 8, 8), 1, (1, 3, 3), 0, grid=(1, 2, 2))


def test_tiles_capped_at_block_count():
    plan = plan_tiles((4, 16, 16), (10, 1, 1), divisor=(2, 4, 4), overlap=0)
    assert len(plan) == 2


def test_auto_tiles_follows_memory():
    shape, div, ovl = (64, 512, 512), (1, 4, 4), (16, 32, 32)
    bpv = 1000.0
    big = auto_tiles(shape, divisor=div, overlap=ovl, bytes_per_voxel=bpv, memory=10**12)
    assert big == (1, 1, 1)
    counts = []
    for mem in [10**11, 10**10, 10**9, 10**8]:
        t = auto_tiles(shape, divisor=div, overlap=ovl, bytes_per_voxel=bpv, memory=mem)
        need = math.prod(tile_input_shape(shape, t, div, ovl)) * bpv
        # fits the budget, or no axis can be split any further
        assert need <= 0.5 * mem or more_tiles(t, shape, div, ovl) is None
        counts.append(math.prod(t))
    assert counts == sorted(counts) and counts[-1] > counts[0]
    # the measured free memory is used when none is given
    t = auto_tiles(shape, divisor=div, overlap=ovl, bytes_per_voxel=bpv)
    assert math.prod(t) >= 1


def test_more_tiles_splits_largest_axis_until_exhausted():
    t = (1, 1, 1)
    seen = [t]
    while (t := more_tiles(t, (4, 16, 8), (2, 4, 4))) is not None:
        seen.append(t)
    assert seen[1] == (1, 2, 1)
    assert seen[-1] == (2, 4, 2)


def test_oom_retry_gives_same_result():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    img = rng.integers(0, 10, size=(1, 16, 48, 48)).astype(np.float32)
    fwd = make_forward(2, (1, 2, 2), (1, 2, 2))
    calls = []

    def flaky(x):
        calls.append(x.shape)
        if math.prod(x.shape) > 16 * 30 * 30:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return fwd(x)

    full = run_to_completion(predict_tiled(fwd, img, n_tiles=None, divisor=(1, 2, 2), overlap=4, grid=(1, 2, 2)))
    msgs: list[str] = []
    res = run_to_completion(
        predict_tiled_auto(flaky, img, divisor=(1, 2, 2), overlap=4, grid=(1, 2, 2), n_tiles=(1, 1, 1)),
        lambda p: msgs.append(p.message),
    )
    assert any("retrying" in m for m in msgs)
    for a, b in zip(full, res):
        np.testing.assert_array_equal(a, b)

    def always_oom(x):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(NeurosegError, match="out of memory"):
        run_to_completion(predict_tiled_auto(always_oom, img, divisor=1, overlap=0, n_tiles=1, max_retries=2))

    def other_error(x):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_to_completion(predict_tiled_auto(other_error, img, divisor=1, overlap=0, n_tiles=1))


def test_auto_tiles_used_when_n_tiles_none():
    img = np.ones((1, 8, 64, 64), np.float32)
    seen = []

    def fwd(x):
        seen.append(x.shape)
        return x

    from napari_neuroseg.runtime import available_memory

    bpv = available_memory() / (8 * 20 * 20)  # a budget of ~half a 8x20x20 tile
    out = run_to_completion(predict_tiled_auto(fwd, img, divisor=1, overlap=2, bytes_per_voxel=bpv))
    assert len(seen) > 1
    np.testing.assert_array_equal(out[0], img)
