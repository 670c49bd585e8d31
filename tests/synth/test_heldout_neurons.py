"""The independent held-out neuron generator (benchmarks/heldout/neurons.py): deterministic by
seed, FISBe instance format, the properties its levels promise. Small volumes: fast."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from heldout.neurons import MIN_NEURON_VOXELS, render

SHAPE = (24, 96, 96)


@pytest.fixture(scope="module")
def vols():
    return {lv: render(SHAPE, level=lv, seed=3) for lv in ("standard", "hard")}


def test_deterministic_by_seed(vols):
    again = render(SHAPE, level="standard", seed=3)
    assert np.array_equal(again.raw, vols["standard"].raw)
    assert np.array_equal(again.gt_instances, vols["standard"].gt_instances)
    other = render(SHAPE, level="standard", seed=4)
    assert not np.array_equal(other.raw, vols["standard"].raw)


@pytest.mark.parametrize("level", ["standard", "hard"])
def test_fisbe_instance_format(vols, level):
    v = vols[level]
    assert v.raw.dtype == np.uint16 and v.raw.shape == (3,) + SHAPE
    gt = v.gt_instances
    assert gt.dtype == np.uint8 and gt.ndim == 4 and gt.shape[1:] == SHAPE and gt.shape[0] >= 3
    for i, ch in enumerate(gt):  # channel i holds exactly {0, i+1}, each neuron big enough to be scored
        assert set(np.unique(ch).tolist()) == {0, i + 1}
        assert int((ch > 0).sum()) >= MIN_NEURON_VOXELS
    assert v.partly_labelled == (level == "hard")
    assert v.n_neurons == gt.shape[0] and v.voxel_size == (0.44, 0.44, 0.44)


def test_neurites_are_thin_and_brighter_than_background(vols):
    from scipy import ndimage as ndi

    for level, v in vols.items():
        fg = (v.gt_instances > 0).any(0)
        assert 0.002 < fg.mean() < 0.15  # sparse, like neurites
        # thin: most foreground voxels are within 3 voxels of the background
        dist = ndi.distance_transform_edt(fg)
        assert np.median(dist[fg]) <= 2.5, level
        signal = v.raw.astype(np.float32).sum(0)
        assert np.median(signal[fg]) > 1.5 * np.median(signal[~fg]), level


def test_hard_is_harder(vols):
    s, h = vols["standard"], vols["hard"]

    def contrast(v):
        img = v.raw.astype(np.float32).sum(0)
        fg = (v.gt_instances > 0).any(0)
        return np.median(img[fg]) / np.median(img[~fg])

    assert contrast(h) < contrast(s)
    # hard has unlabelled clutter: bright voxels far from every labelled neuron
    from scipy import ndimage as ndi

    def clutter(v):
        img = ndi.gaussian_filter(v.raw.astype(np.float32).sum(0), 1.0)
        fg = ndi.binary_dilation((v.gt_instances > 0).any(0), iterations=4)
        bright = img > np.percentile(img, 97)
        return (bright & ~fg).sum() / bright.sum()

    assert clutter(h) > clutter(s)
    with pytest.raises(ValueError):
        render(SHAPE, level="extreme")


@pytest.mark.slow
def test_bench_runs_and_reports(tmp_path):
    """bench_heldout_neurons.run on one small independent volume per level with a tiny random
    model: every set gets model and baseline scores in range, and the result is JSON."""
    import argparse
    import json

    import bench_heldout_neurons as bench
    import torch

    from napari_neuroseg.models.neurons import NetConfig, save_model

    torch.manual_seed(0)
    cfg = NetConfig(base=4, levels=2)
    path = tmp_path / "tiny.pt"
    save_model(path, cfg.build().eval(), cfg)
    args = argparse.Namespace(model=str(path), n=1, sets="independent", tta=False, no_voxel_size=True,
                              threads=1, device="cpu", json=None, shape=list(SHAPE))
    res = bench.run(args)
    assert set(res["summary"]) == {"independent standard", "independent hard"}
    for d in res["summary"].values():
        for meth in ("model", "baseline"):
            assert 0.0 <= d[meth]["avF1_mean"] <= 1.0 and len(d[meth]["per_volume"]) == 1
    json.dumps(res, default=str)
    bench.report(res)
