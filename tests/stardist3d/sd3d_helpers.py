"""Helpers for the StarDist-3D tests: paths and loaders of the Keras reference fixtures built by
``make_keras_fixtures.py`` (committed under ``fixtures/``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures"
KERAS_MODELS = sorted(p.name for p in (FIXTURES / "models").iterdir()) if (FIXTURES / "models").is_dir() else []


def load_inputs() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "inputs.npz") as f:
        return {k: f[k] for k in f.files}


def keras_outputs(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "outputs" / f"{name}.npz") as f:
        return {k: f[k] for k in f.files}


def model_input(inputs: dict[str, np.ndarray], n_channel_in: int, raw: bool = False) -> np.ndarray:
    """The fixture image for a model: (Z, Y, X) for one channel, (Z, Y, X, 2) for two."""
    key = ("raw" if raw else "img") + ("1" if n_channel_in == 1 else "2")
    return inputs[key]


def slow_nms(*args, **kwargs):
    """Stands in for a long NMS in the worker process (cancel tests)."""
    import time

    time.sleep(60)
