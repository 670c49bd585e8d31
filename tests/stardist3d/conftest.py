"""Fixtures for the StarDist-3D tests."""

from __future__ import annotations

import numpy as np
import pytest
from sd3d_helpers import load_inputs


@pytest.fixture(scope="session")
def keras_inputs() -> dict[str, np.ndarray]:
    return load_inputs()


@pytest.fixture(scope="module", autouse=True)
def _few_threads():
    """Keep torch polite on shared CPUs."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)
