"""Build the Keras StarDist-3D reference fixtures used by ``tests/stardist3d``.

Run it with a separate TensorFlow venv, never with the project's environment::

    python -m venv /work/tfvenv
    /work/tfvenv/bin/pip install tensorflow-cpu==2.15.1 "numpy<2" stardist
    nice -n 10 /work/tfvenv/bin/python tests/stardist3d/make_keras_fixtures.py

It trains a few tiny ``stardist.models.StarDist3D`` models (both backbones; grids (1,1,1),
(1,2,2), (2,2,2); anisotropy; 32/48/96 rays; 1 and 2 input channels) for a few hundred steps on
``stardist.data.test_image_nuclei_3d`` so the weights are not trivial, and writes into
``tests/stardist3d/fixtures/``:

* ``models/<name>/``: the Keras model folder as StarDist saves it (``config.json``,
  ``thresholds.json``, ``weights_best.h5`` or ``weights_last.h5``);
* ``inputs.npz``: an odd-sized crop of the test image (1 channel) and a 2-channel version, raw
  and normalised by csbdeep's percentile normalisation (1, 99.8);
* ``outputs/<name>.npz``: Keras ``predict`` (all of ``prob``; ``dist`` for 2 of the rays
  everywhere and for all rays on 400 random voxels, to keep the files small) and
  ``predict_instances`` (labels, points, probabilities, distances).

Deterministic up to TensorFlow's CPU kernels; the whole run takes a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures"

# name: (config kwargs, n_channel_in, training steps, weights file kept, extra config keys)
MODELS = {
    "unet_d2_g111_r32": dict(
        config=dict(backbone="unet", n_rays=32, grid=(1, 1, 1), anisotropy=None, unet_n_depth=2,
                    unet_n_filter_base=8, net_conv_after_unet=32),
        n_channel_in=1,
    ),
    "unet_d2_g122_r48_aniso_c2": dict(
        config=dict(backbone="unet", n_rays=48, grid=(1, 2, 2), anisotropy=(2, 1, 1), unet_n_depth=2,
                    unet_n_filter_base=8, net_conv_after_unet=32),
        n_channel_in=2,
    ),
    "unet_d2_g222_r32": dict(
        config=dict(backbone="unet", n_rays=32, grid=(2, 2, 2), anisotropy=None, unet_n_depth=2,
                    unet_n_filter_base=8, net_conv_after_unet=0),
        n_channel_in=1,
        extra_config={"a_key_from_a_newer_stardist": [1, 2, 3]},
    ),
    "resnet_b3_g122_r96_aniso": dict(
        config=dict(backbone="resnet", n_rays=96, grid=(1, 2, 2), anisotropy=(2, 1, 1), resnet_n_blocks=3,
                    resnet_n_filter_base=8, net_conv_after_resnet=128),
        n_channel_in=1,
    ),
    "resnet_b3_g222_r48_c2": dict(
        config=dict(backbone="resnet", n_rays=48, grid=(2, 2, 2), anisotropy=None, resnet_n_blocks=3,
                    resnet_n_filter_base=8, resnet_n_conv_per_block=2, net_conv_after_resnet=32),
        n_channel_in=2,
        weights="weights_last.h5",
    ),
    "resnet_b2_g111_r32": dict(
        config=dict(backbone="resnet", n_rays=32, grid=(1, 1, 1), anisotropy=None, resnet_n_blocks=2,
                    resnet_n_filter_base=8, net_conv_after_resnet=0),
        n_channel_in=1,
    ),
}

CROP = (slice(0, 23), slice(5, 50), slice(3, 53))  # 23 x 45 x 50: not a multiple of any divisor
N_DIST_RAYS = 2
N_POINTS = 400
MAX_CANDIDATES = 800


def two_channels(img: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return np.stack([img.astype(np.float32), gaussian_filter(img.astype(np.float32), 1.5)], axis=-1)


def train_model(name: str, spec: dict, x_train: np.ndarray, lbl: np.ndarray, x_eval: np.ndarray) -> None:
    """Train a tiny model for a few hundred steps; pick thresholds that leave at most
    ~MAX_CANDIDATES candidates on the fixture input (so NMS stays fast in the tests)."""
    from stardist import Rays_GoldenSpiral
    from stardist.models import Config3D, StarDist3D

    cfg_kw = dict(spec["config"])
    n_rays = cfg_kw.pop("n_rays")
    conf = Config3D(
        rays=Rays_GoldenSpiral(n_rays, anisotropy=cfg_kw.get("anisotropy")),
        n_channel_in=spec["n_channel_in"],
        train_patch_size=(16, 32, 32),
        train_batch_size=2,
        train_learning_rate=1e-3,
        train_tensorboard=False,
        train_reduce_lr=None,
        **cfg_kw,
    )
    model = StarDist3D(conf, name=name, basedir=str(OUT / "models"))
    model.train([x_train, x_train[:, ::-1].copy()], [lbl, lbl[:, ::-1].copy()],
                validation_data=([x_train], [lbl]), epochs=3, steps_per_epoch=40, seed=0)
    prob, _ = model.predict(x_eval)
    p_sorted = np.sort(prob.ravel())[::-1]
    p_thresh = float(max(0.5 if p_sorted[200] > 0.5 else 0.0, p_sorted[min(MAX_CANDIDATES, p_sorted.size - 1)]))
    nms = 0.3 if "aniso" in name else 0.4
    folder = OUT / "models" / name
    (folder / "thresholds.json").write_text(json.dumps({"prob": p_thresh, "nms": nms}))
    keep = spec.get("weights", "weights_best.h5")
    for h5 in folder.glob("*.h5"):
        if h5.name != keep:
            h5.unlink()
    for extra in folder.iterdir():
        if extra.is_dir():
            shutil.rmtree(extra)


def main() -> int:
    import tensorflow as tf
    from csbdeep.utils import normalize
    from stardist.data import test_image_nuclei_3d
    from stardist.models import StarDist3D

    tf.random.set_seed(0)
    np.random.seed(0)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    img, lbl = test_image_nuclei_3d(return_mask=True)
    lbl = lbl.astype(np.uint16)
    raw1 = img[CROP]
    raw2 = two_channels(img)[CROP]
    inputs = {
        1: normalize(raw1, 1, 99.8, axis=(0, 1, 2)).astype(np.float32),
        2: normalize(raw2, 1, 99.8, axis=(0, 1, 2)).astype(np.float32),
    }
    train = {
        1: normalize(img, 1, 99.8, axis=(0, 1, 2)).astype(np.float32),
        2: normalize(two_channels(img), 1, 99.8, axis=(0, 1, 2)).astype(np.float32),
    }

    force = "--force" in sys.argv
    if force and OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "models").mkdir(parents=True, exist_ok=True)
    (OUT / "outputs").mkdir(exist_ok=True)
    np.savez_compressed(OUT / "inputs.npz", raw1=raw1, raw2=raw2, img1=inputs[1], img2=inputs[2],
                        crop=np.array([[s.start, s.stop] for s in CROP]))

    rng = np.random.default_rng(0)
    for name, spec in MODELS.items():
        folder = OUT / "models" / name
        keep = spec.get("weights", "weights_best.h5")
        n_rays = spec["config"]["n_rays"]
        x = inputs[spec["n_channel_in"]]
        if (folder / "thresholds.json").is_file() and (folder / keep).is_file():
            print(f"== {name}: trained already (--force retrains all)", flush=True)
        else:
            print(f"== {name}", flush=True)
            if folder.exists():
                shutil.rmtree(folder)
            train_model(name, spec, train[spec["n_channel_in"]], lbl, x)
        # a key only a newer version knows: stardist itself rejects it, so it is added at the end
        cpath = folder / "config.json"
        c = json.loads(cpath.read_text())
        for k in spec.get("extra_config", {}):
            c.pop(k, None)
        cpath.write_text(json.dumps(c, indent=1))
        # load exactly as a user would, then produce the reference outputs
        model = StarDist3D(None, name=name, basedir=str(OUT / "models"))
        model.load_weights(keep)
        prob, dist = model.predict(x)
        labels, details = model.predict_instances(x)
        rays_idx = np.linspace(0, n_rays - 1, N_DIST_RAYS).round().astype(int)
        pts = np.stack([rng.integers(0, s, N_POINTS) for s in prob.shape], axis=1)
        np.savez_compressed(
            OUT / "outputs" / f"{name}.npz",
            prob=prob.astype(np.float32),
            dist_rays=rays_idx,
            dist_sub=dist[..., rays_idx].astype(np.float32),
            sample_points=pts,
            dist_at_points=dist[tuple(pts.T)].astype(np.float32),
            labels=labels.astype(np.uint16),
            points=np.asarray(details["points"]),
            obj_prob=np.asarray(details["prob"], np.float32),
            obj_dist=np.asarray(details["dist"], np.float32),
            thresholds=np.array([model.thresholds.prob, model.thresholds.nms]),
        )
        if spec.get("extra_config"):
            c.update(spec["extra_config"])
            cpath.write_text(json.dumps(c, indent=1))
        print(f"   prob max {prob.max():.3f}, {model.thresholds}, objects {labels.max()}", flush=True)
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"fixtures: {total / 1e6:.2f} MB in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
