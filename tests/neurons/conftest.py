"""Fixtures for the neuron model tests: tiny synthetic volumes and a tiny random-weight model."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A 2-level, 4-filter neuron model file with random weights (fast on CPU)."""
    import torch

    from napari_neuroseg.models.neurons import NetConfig, save_model

    torch.manual_seed(0)
    cfg = NetConfig(base=4, levels=2)
    net = cfg.build()
    # non-trivial BatchNorm running statistics, as after training
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(1, 3, 8, 16, 16))
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(path, net, cfg)
    return path


@pytest.fixture(scope="session")
def small_volume():
    """A synthetic FISBe-like sample (3, 24, 48, 48)."""
    from napari_neuroseg.synth import make_neurons

    return make_neurons((24, 48, 48), seed=7, n_neurons=3)


@pytest.fixture
def tube_stack():
    """Function making two crossing tubes (see :func:`make_tube_stack`)."""
    return make_tube_stack


def make_tube_stack(shape=(16, 40, 40)) -> np.ndarray:
    """Two straight tubes crossing in the middle (an overlap), as an (2,Z,Y,X) instance stack."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    a = ((z - shape[0] // 2) ** 2 + (y - shape[1] // 2) ** 2) <= 4  # along X
    b = ((z - shape[0] // 2) ** 2 + (x - shape[2] // 2) ** 2) <= 4  # along Y
    a, b = np.broadcast_to(a, shape), np.broadcast_to(b, shape)
    return np.stack([a * 1, b * 2]).astype(np.uint8)
