"""The post-processing search of neuron fine-tuning (``train.tune_postprocess``): what it returns
is stored in the model file and used by ``predict``; the channel whitening it may choose."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_neuroseg.models.neurons.model import (
    NetConfig,
    NeuronModel,
    load_model,
    save_model,
)
from napari_neuroseg.models.neurons.postprocess import PostprocessParams, whiten_colours
from napari_neuroseg.models.neurons.predict import predict
from napari_neuroseg.models.neurons.train import tune_postprocess


class _Bright(torch.nn.Module):
    """A stand-in network: foreground logit from the summed colour (bright = neurite), constant
    affinities; enough for the thresholds to matter."""

    def forward(self, x):
        fg = 12.0 * (x.sum(1, keepdim=True) - 0.15)
        return torch.cat([fg, torch.full_like(fg, 2.0).repeat(1, 6, 1, 1, 1)], 1)


@pytest.fixture(scope="module")
def volume():
    from napari_neuroseg.synth import make_neurons

    v = make_neurons((16, 48, 48), seed=101, n_neurons=3)
    return v.raw, v.gt_instances


def _model(params=None):
    return NeuronModel(net=_Bright(), config=NetConfig(base=4, levels=2), params=params or PostprocessParams(),
                       device=torch.device("cpu"))


def test_search_returns_values_that_are_stored_and_used_by_predict(volume, tmp_path):
    raw, gt = volume
    base = PostprocessParams(fg_threshold=0.9)  # a poor start: the search must move away from it
    grid = {"fg_threshold": (0.3, 0.6, 0.9), "colour_whiten": (False, True)}
    chosen, info = tune_postprocess(_model(base), [("v", raw, gt)], grid=grid,
                                    starts=({"use_affinities": True, "use_colour": True},))
    assert info["avF1"] >= info["avF1_before"] and info["evaluated"] > 1 and not info["stopped"]
    assert info["chosen"] == {k: getattr(chosen, k) for k in [*grid, "use_affinities", "use_colour"]}
    assert chosen.fg_threshold in grid["fg_threshold"] and chosen != base
    # stored with the weights, read back by load_model, used by predict
    cfg = NetConfig(base=4, levels=2)
    path = tmp_path / "m.pt"
    save_model(path, cfg.build(), cfg, chosen)
    loaded = load_model(path, device="cpu")
    assert loaded.params == chosen
    loaded.net = _Bright()
    pred = predict(raw, loaded)
    assert pred.params == chosen
    from napari_neuroseg.metrics import evaluate

    assert evaluate(gt, pred.labels)["avF1"] == pytest.approx(info["avF1"])


def test_search_stops_when_told(volume):
    raw, gt = volume
    base = PostprocessParams()
    chosen, info = tune_postprocess(_model(base), [("v", raw, gt)], stop=lambda: True)
    assert chosen == base and info["evaluated"] == 1 and info["stopped"]


def test_whitening_undoes_channel_crosstalk():
    rng = np.random.default_rng(0)
    pure = np.zeros((3, 4, 20, 20), np.float32)
    pure[:, :, :, :10] = rng.random((3, 1, 1, 1)).astype(np.float32)  # two objects of other colours
    pure[:, :, :, 10:] = rng.random((3, 1, 1, 1)).astype(np.float32)
    pure += rng.normal(0, 0.02, pure.shape).astype(np.float32)
    mix = np.array([[0.1, 0.85, 0.3], [0.75, 0.1, 0.2], [0.25, 0.25, 0.8]], np.float32)
    mixed = np.tensordot(mix, pure, axes=(1, 0))
    fg = np.ones(pure.shape[1:], bool)
    w = whiten_colours(mixed, fg)
    c = w.reshape(3, -1).astype(np.float64)
    m = c @ c.T / c.shape[1]
    np.testing.assert_allclose(m / m[0, 0], np.eye(3), atol=1e-3)  # uncorrelated, equal power
    assert whiten_colours(mixed, np.zeros_like(fg)) is mixed  # no foreground: unchanged
    # the post-processing applies it only when asked
    from napari_neuroseg.models.neurons.postprocess import instances_from_outputs

    prob = np.full(pure.shape[1:], 0.9, np.float32)
    p = PostprocessParams(min_size=1)
    a = instances_from_outputs(prob, None, mixed, p)
    b = instances_from_outputs(prob, None, mixed, replace(p, colour_whiten=True))
    assert a.max() >= 1 and b.max() >= 1
    assert np.array_equal(instances_from_outputs(prob, None, mixed, replace(p, colour_whiten=False)), a)


def test_partly_labelled_volumes_are_scored_as_partly_labelled(volume):
    """A (name, raw, gt, partly) volume is scored with ``partly=True`` (as the benchmarks score
    volumes with unlabelled clutter); a 3-tuple stays fully labelled."""
    from napari_neuroseg.metrics import evaluate

    raw, gt = volume
    part = gt[:-1]  # one neuron shown in the raw but not labelled
    base = PostprocessParams()
    grid = {"fg_threshold": (base.fg_threshold,)}
    labels = predict(raw, _model(base)).labels
    _, info_p = tune_postprocess(_model(base), [("v", raw, part, True)], grid=grid, starts=())
    _, info_f = tune_postprocess(_model(base), [("v", raw, part)], grid=grid, starts=())
    assert info_p["avF1_before"] == pytest.approx(evaluate(part, labels, partly=True)["avF1"])
    assert info_f["avF1_before"] == pytest.approx(evaluate(part, labels)["avF1"])
    assert info_p["avF1_before"] > info_f["avF1_before"]  # the unlabelled neuron is no false positive
    with pytest.raises(ValueError, match="partly"):
        tune_postprocess(_model(base), [("v", raw, part, True, "extra")], grid=grid, starts=())
