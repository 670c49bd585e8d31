"""Fixtures for the StarDist-3D tests."""

from __future__ import annotations

import numpy as np
import pytest
from sd3d_helpers import load_inputs


@pytest.fixture(scope="session")
def keras_inputs() -> dict[str, np.ndarray]:
    return load_inputs()


# torch threads: the suite-wide ``_few_threads`` fixture (tests/conftest.py) covers this folder
