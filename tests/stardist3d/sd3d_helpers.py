"""Helpers for the StarDist-3D tests: paths and loaders of the Keras reference fixtures built by
``make_keras_fixtures.py`` (committed under ``fixtures/``), and the small fine-tuning scene
(:func:`balls`, :func:`make_tiny_base`) shared by the fine-tune tests of the trainer, the job and
the dock."""

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


#: the tiny base model's training scale (voxel size 1 x 0.5 x 0.5 um: no resampling on the scenes)
BASE_SCALE = {"voxel_size": [1.0, 0.5, 0.5], "object_diameter_vox": 12.0, "object_name": "nucleus"}


def balls(shape=(16, 48, 48), n_side=3, radius=(3, 6, 6)):
    """A grid of ``n_side`` x ``n_side`` ellipsoids in the central Z plane (ids 1..n²) and a noisy
    uint8 image of them."""
    zz, yy, xx = np.indices(shape)
    lbl = np.zeros(shape, np.uint16)
    k = 0
    for cy in np.linspace(radius[1] + 2, shape[1] - radius[1] - 3, n_side):
        for cx in np.linspace(radius[2] + 2, shape[2] - radius[2] - 3, n_side):
            k += 1
            inside = (((zz - shape[0] // 2) / radius[0]) ** 2 + ((yy - cy) / radius[1]) ** 2
                      + ((xx - cx) / radius[2]) ** 2) <= 1
            lbl[inside] = k
    rng = np.random.default_rng(0)
    img = (20 + 150 * (lbl > 0) + rng.normal(0, 5, shape)).clip(0, 255).astype(np.uint8)
    return img, lbl


def make_tiny_base(folder):
    """A tiny StarDist-3D model folder ``folder/tiny_base`` (scale :data:`BASE_SCALE`, prob
    threshold 0.95), seeded: the same weights every time."""
    import torch

    from napari_neuroseg.models.stardist3d.config import Thresholds
    from napari_neuroseg.models.stardist3d.model import StarDist3D
    from napari_neuroseg.models.stardist3d.train import default_config
    from napari_neuroseg.runtime.scale import ModelScale

    torch.manual_seed(0)
    cfg = default_config(n_rays=16, n_filter_base=4, net_conv_after=8, unet_n_depth=1)
    model = StarDist3D(cfg, Thresholds(prob=0.95, nms=0.4, border=0), name="tiny_base", device="cpu")
    model.scale = ModelScale.from_dict(BASE_SCALE)
    return model.save(Path(folder) / "tiny_base")
