import numpy as np
import pytest

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models.neurons import MODEL_TYPE, load_model, read_checkpoint


def test_roundtrip_and_metadata(tiny_model_path):
    ck = read_checkpoint(tiny_model_path)
    assert ck["model_type"] == MODEL_TYPE and ck["config"]["base"] == 4
    m = load_model(tiny_model_path, "cpu")
    assert m.divisor == 2 and not m.net.training
    assert m.params.fg_threshold == pytest.approx(0.5)


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
