"""StarDist-3D speed: PyTorch port vs the Keras/TensorFlow reference, in one run.

1. Forward pass of the *same weights* on the *same volume* (default 32×128×128): the default
   U-Net (96 rays, grid (1,2,2)) and the demo-like ResNet (96 rays, grid (1,2,2), anisotropy
   (2,1,1)), randomly initialised by Keras, saved as ``.h5`` and converted by our importer.
   Target: PyTorch ≥ 1.5× faster on CPU.
2. End-to-end ``predict_instances`` (normalisation, prediction, NMS, rendering) of a trained tiny
   Keras fixture model on a nuclei volume, vs ``stardist``'s ``predict_instances``.
   Target: not slower.

Keras runs in a separate TensorFlow venv (``--tfvenv``, default ``/work/tfvenv``; see
``tests/stardist3d/make_keras_fixtures.py``) through a subprocess; without it the baseline is
reported as missing. Both sides use ``--threads`` CPU threads.

    nice -n 10 python benchmarks/bench_stardist_forward.py [--shape 32 128 128] [--device cpu]

With ``--device cuda`` the PyTorch side also reports throughput (voxels/s) for ``--gpu-shape``
(default 256×512×512).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "stardist3d" / "fixtures"

CONFIGS = {
    "unet_default": dict(backbone="unet", n_rays=96, grid=[1, 2, 2], anisotropy=None),
    "resnet_demo": dict(backbone="resnet", n_rays=96, grid=[1, 2, 2], anisotropy=[2, 1, 1]),
}

KERAS_SCRIPT = textwrap.dedent(
    r'''
    import json, os, sys, time
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"; os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import numpy as np
    import tensorflow as tf
    args = json.loads(sys.argv[1])
    tf.config.threading.set_intra_op_parallelism_threads(args["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from stardist import Rays_GoldenSpiral
    from stardist.models import Config3D, StarDist3D
    out = {}
    if args["mode"] == "forward":
        tf.random.set_seed(0)
        c = dict(args["config"]); n_rays = c.pop("n_rays")
        conf = Config3D(rays=Rays_GoldenSpiral(n_rays, anisotropy=c.get("anisotropy")), **c)
        model = StarDist3D(conf, name=args["name"], basedir=args["basedir"])
        model.keras_model.save_weights(os.path.join(args["basedir"], args["name"], "weights_best.h5"))
        x = np.load(args["input"])
        xb = x[np.newaxis, ..., np.newaxis]
        model.keras_model.predict(xb, verbose=0)  # warm-up (graph build)
        times = []
        for _ in range(args["repeats"]):
            t0 = time.perf_counter(); prob, dist = model.keras_model.predict(xb, verbose=0); times.append(time.perf_counter() - t0)
        np.save(args["output"], prob[0, ..., 0])
        out["times"] = times
    else:
        model = StarDist3D(None, name=args["name"], basedir=args["basedir"])
        from csbdeep.utils import normalize
        img = np.load(args["input"])
        model.predict_instances(normalize(img[:16, :32, :32], 1, 99.8), verbose=False)  # warm-up
        times = []
        for _ in range(args["repeats"]):
            t0 = time.perf_counter()
            labels, details = model.predict_instances(normalize(img, 1, 99.8, axis=(0, 1, 2)), verbose=False)
            times.append(time.perf_counter() - t0)
        np.save(args["output"], labels)
        out["times"] = times; out["n_objects"] = int(labels.max())
    print("RESULT " + json.dumps(out))
    '''
)


def run_keras(tfvenv: Path, args: dict, script: Path) -> dict | None:
    py = tfvenv / "bin" / "python"
    if not py.is_file():
        return None
    proc = subprocess.run([str(py), str(script), json.dumps(args)], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
    raise RuntimeError("the Keras baseline failed")


def nuclei_volume(shape) -> np.ndarray:
    """The stardist 3D test image mirrored/tiled up to ``shape`` (uint16)."""
    from stardist.data import test_image_nuclei_3d

    img = test_image_nuclei_3d()
    reps = [int(np.ceil(s / n)) for s, n in zip(shape, img.shape)]
    tiles = img
    for ax, r in enumerate(reps):
        parts = [tiles if i % 2 == 0 else np.flip(tiles, ax) for i in range(r)]
        tiles = np.concatenate(parts, axis=ax)
    return np.ascontiguousarray(tiles[tuple(slice(0, s) for s in shape)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[32, 128, 128])
    ap.add_argument("--e2e-shape", type=int, nargs=3, default=[31, 122, 114])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpu-shape", type=int, nargs=3, default=[256, 512, 512])
    ap.add_argument("--tfvenv", type=Path, default=Path(os.environ.get("NEUROSEG_TFVENV", "/work/tfvenv")))
    ap.add_argument("--skip-e2e", action="store_true")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from napari_neuroseg.models.stardist3d import StarDist3D, StarDistConfig
    from napari_neuroseg.runtime import run_to_completion

    have_keras = (a.tfvenv / "bin" / "python").is_file()
    print(f"# StarDist-3D forward benchmark: volume {tuple(a.shape)}, {a.threads} CPU threads, "
          f"PyTorch {torch.__version__} on {a.device}")
    if not have_keras:
        print(f"# Keras baseline missing: no TensorFlow venv at {a.tfvenv} (see make_keras_fixtures.py)")
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 0.25, size=a.shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        script = tmp / "keras_bench.py"
        script.write_text(KERAS_SCRIPT)
        np.save(tmp / "x.npy", x)
        for name, cfg in CONFIGS.items():
            keras = None
            if have_keras:
                keras = run_keras(a.tfvenv, dict(mode="forward", config=cfg, name=name, basedir=str(tmp),
                                                 input=str(tmp / "x.npy"), output=str(tmp / f"{name}_prob.npy"),
                                                 threads=a.threads, repeats=a.repeats), script)
                model = StarDist3D.from_folder(tmp / name, device=a.device)
            else:
                model = StarDist3D(StarDistConfig.from_dict(cfg), device=a.device)
            fwd = model.make_forward()
            xp = x[np.newaxis]
            from napari_neuroseg.runtime.tiling import pad_to_divisor

            xp = pad_to_divisor(xp, model.divisor)
            fwd(xp)  # warm-up
            times = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                prob, _ = fwd(xp)
                if a.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            t_ours = min(times)
            line = f"{name:14s} forward: pytorch {t_ours:7.2f} s"
            if keras is not None:
                t_k = min(keras["times"])
                ref = np.load(tmp / f"{name}_prob.npy")
                diff = float(np.abs(prob[0][tuple(slice(0, s) for s in ref.shape)] - ref).max())
                line += f" | keras {t_k:7.2f} s | speed-up {t_k / t_ours:5.2f}x (target >= 1.5x) | max |dprob| {diff:.1e}"
            print(line, flush=True)

        if a.device.startswith("cuda"):
            model = StarDist3D.from_folder(tmp / "resnet_demo", device=a.device) if have_keras else model
            big = rng.normal(0.5, 0.25, size=a.gpu_shape).astype(np.float32)
            t0 = time.perf_counter()
            run_to_completion(model.predict_iter(big))
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            print(f"GPU predict {tuple(a.gpu_shape)}: {dt:.2f} s = {np.prod(a.gpu_shape) / dt / 1e6:.1f} Mvoxel/s")

        if not a.skip_e2e:
            name = "resnet_b2_g111_r32"
            folder = FIXTURES / "models" / name
            if not folder.is_dir():
                print("# end-to-end: Keras fixture model missing (run make_keras_fixtures.py)")
                return 0
            img = nuclei_volume(a.e2e_shape)
            np.save(tmp / "img.npy", img)
            model = StarDist3D.from_folder(folder, device=a.device)
            model.predict_instances(img[:16, :32, :32])  # warm-up (and worker process start)
            times = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                labels, _ = model.predict_instances(img, use_subprocess=True)
                times.append(time.perf_counter() - t0)
            t_ours = min(times)
            line = (f"end-to-end predict_instances {tuple(a.e2e_shape)} ({name}): pytorch {t_ours:6.2f} s, "
                    f"{labels.max()} objects")
            if have_keras:
                shutil_copy = tmp / "e2e"
                import shutil

                shutil.copytree(folder, shutil_copy / name)
                cfg = json.loads((shutil_copy / name / "config.json").read_text())
                cfg.pop("a_key_from_a_newer_stardist", None)
                (shutil_copy / name / "config.json").write_text(json.dumps(cfg))
                keras = run_keras(a.tfvenv, dict(mode="e2e", name=name, basedir=str(shutil_copy),
                                                 input=str(tmp / "img.npy"), output=str(tmp / "klabels.npy"),
                                                 threads=a.threads, repeats=a.repeats), script)
                from stardist.matching import matching

                f1 = matching(np.load(tmp / "klabels.npy"), labels, thresh=0.5).f1
                t_k = min(keras["times"])
                line += (f" | stardist {t_k:6.2f} s, {keras['n_objects']} objects | speed-up {t_k / t_ours:4.2f}x "
                         f"(target >= 1.0x) | F1@0.5 vs stardist {f1:.3f}")
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
