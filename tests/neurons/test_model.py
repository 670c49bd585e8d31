import numpy as np
import pytest

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models.neurons import MODEL_TYPE, load_model, read_checkpoint


def test_roundtrip_and_metadata(tiny_model_path):
    ck = read_checkpoint(tiny_model_path)
    assert ck["model_type"] == MODEL_TYPE and ck["config"]["base"] == 4
    m = load_model(tiny_model_path, "cpu")
    assert m.divisor == 2 and not m.net.training
    from napari_neuroseg.models.neurons import PostprocessParams

    assert m.params == PostprocessParams()


def test_wrong_model_type_and_missing_file(tmp_path):
    import torch

    bad = tmp_path / "stardist.pt"
    torch.save({"model_type": "napari-neuroseg/stardist3d", "state_dict": {}}, bad)
    with pytest.raises(NeurosegError, match="not a neuron model"):
        load_model(bad, "cpu")
    plain = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1)}, plain)
    with pytest.raises(NeurosegError, match="not a neuron model"):
        load_model(plain, "cpu")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(NeurosegError, match="cannot read"):
        load_model(junk, "cpu")
    with pytest.raises(NeurosegError, match="not found"):
        load_model(tmp_path / "missing.pt", "cpu")


def test_shipped_model_segments_the_bundled_sample():
    """The default model (synthetic-trained, docs/neurons.md) on the committed neuron sample."""
    from napari_neuroseg.metrics import evaluate
    from napari_neuroseg.models.neurons import DEFAULT_MODEL, predict
    from napari_neuroseg.synth.samples import load_sample

    assert DEFAULT_MODEL.is_file() and DEFAULT_MODEL.stat().st_size < 20e6
    m = load_model(None, "cpu")
    assert m.config.base == 12 and m.config.levels == 4
    v = load_sample("neurons")
    res = predict(v.raw, m)
    assert res.labels.shape == v.raw.shape[1:]
    r = evaluate(v.gt_instances, res.labels, partly=v.partly_labelled)
    assert r["avF1"] > 0.6 and r["FM"] <= 1, r["avF1"]
