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
(default 256×512×512). ``--profile`` adds, per backbone, the share of the PyTorch forward spent in
convolutions (torch.profiler), and the top operators. The last line sums up the float32 ratios
of both backbones (Keras time / PyTorch time, measured in this run): best-of-N times, and the
median of the ratios of back-to-back pairs (steadier on a loaded CPU).

``--thp`` sets PyTorch's opt-in ``THP_MEM_ALLOC_ENABLE=1`` (transparent huge pages for CPU tensors
of 2 MB and more; read once, before torch is imported) to measure how much the page faults of
freshly allocated activations cost; the application itself does not set it.
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

KERAS_SERVER = textwrap.dedent(
    r'''
    import json, os, sys, time
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"; os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import numpy as np
    import tensorflow as tf
    threads = int(sys.argv[1])
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from csbdeep.utils import normalize
    from stardist import Rays_GoldenSpiral
    from stardist.models import Config3D, StarDist3D
    models, inputs = {}, {}
    def reply(d):
        sys.stdout.write("RESULT " + json.dumps(d) + "\n"); sys.stdout.flush()
    for line in sys.stdin:
        if not line.strip():
            break
        cmd = json.loads(line)
        if cmd["cmd"] == "build":  # random Keras init, saved as a model folder
            tf.random.set_seed(0)
            c = dict(cmd["config"]); n_rays = c.pop("n_rays")
            conf = Config3D(rays=Rays_GoldenSpiral(n_rays, anisotropy=c.get("anisotropy")), **c)
            m = StarDist3D(conf, name=cmd["name"], basedir=cmd["basedir"])
            m.keras_model.save_weights(os.path.join(cmd["basedir"], cmd["name"], "weights_best.h5"))
            models[cmd["name"]] = m
            reply({})
        elif cmd["cmd"] == "load":
            models[cmd["name"]] = StarDist3D(None, name=cmd["name"], basedir=cmd["basedir"])
            reply({})
        elif cmd["cmd"] == "forward":
            x = np.load(cmd["input"])[np.newaxis, ..., np.newaxis]
            t0 = time.perf_counter(); prob, dist = models[cmd["name"]].keras_model.predict(x, verbose=0)
            dt = time.perf_counter() - t0
            if cmd.get("output"):
                np.save(cmd["output"], prob[0, ..., 0])
            reply({"time": dt})
        elif cmd["cmd"] == "e2e":
            img = np.load(cmd["input"])
            t0 = time.perf_counter()
            labels, _ = models[cmd["name"]].predict_instances(normalize(img, 1, 99.8, axis=(0, 1, 2)), verbose=False)
            dt = time.perf_counter() - t0
            if cmd.get("output"):
                np.save(cmd["output"], labels)
            reply({"time": dt, "n_objects": int(labels.max())})
    '''
)


class KerasServer:
    """The Keras reference in a persistent TensorFlow-venv process, driven command by command so
    Keras and PyTorch runs can alternate (fair under a fluctuating CPU load)."""

    def __init__(self, tfvenv: Path, threads: int, script: Path):
        script.write_text(KERAS_SERVER)
        self.proc = subprocess.Popen([str(tfvenv / "bin" / "python"), str(script), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("RESULT "):
                return json.loads(line[7:])
        raise RuntimeError(f"the Keras baseline process died (exit code {self.proc.wait()})")

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # TensorFlow's threads can keep it alive
            self.proc.kill()
            self.proc.wait(10)


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


def profile_forward(model, xp: np.ndarray, name: str, top: int = 6) -> None:
    """Print the share of one PyTorch forward spent in convolutions and the top operators."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    x = torch.from_numpy(xp[np.newaxis]).to(model.device)
    with torch.inference_mode():
        model.net(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.net(x)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    tops = ", ".join(f"{e.key} {100 * e.self_cpu_time_total / total:.0f}%" for e in events[:top])
    print(f"{name:14s} profile: convolutions {100 * conv / total:.0f}% of {total / 1e6:.2f} s | top: {tops}",
          flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[32, 128, 128])
    ap.add_argument("--e2e-shape", type=int, nargs=3, default=[31, 122, 114])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpu-shape", type=int, nargs=3, default=[256, 512, 512])
    ap.add_argument("--tfvenv", type=Path, default=Path(os.environ.get("NEUROSEG_TFVENV", "/work/tfvenv")))
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false", help="skip the opt-in CPU bfloat16 timing")
    ap.add_argument("--profile", action="store_true", help="per-operator profile of the PyTorch forward")
    ap.add_argument("--thp", action="store_true", help="set THP_MEM_ALLOC_ENABLE=1 for PyTorch (opt-in)")
    a = ap.parse_args()
    if a.thp:
        if "torch" in sys.modules:
            raise SystemExit("--thp must be set before torch is imported")
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"

    import torch

    torch.set_num_threads(a.threads)
    from napari_neuroseg.models.stardist3d import StarDist3D, StarDistConfig
    from napari_neuroseg.runtime import run_to_completion
    from napari_neuroseg.runtime.tiling import pad_to_divisor

    have_keras = (a.tfvenv / "bin" / "python").is_file()
    print(f"# StarDist-3D forward benchmark: volume {tuple(a.shape)}, {a.threads} CPU threads, "
          f"PyTorch {torch.__version__} on {a.device}" + (", THP_MEM_ALLOC_ENABLE=1" if a.thp else ""))
    if not have_keras:
        print(f"# Keras baseline missing: no TensorFlow venv at {a.tfvenv} (see make_keras_fixtures.py)")
    ratios: dict[str, tuple[float, float]] = {}
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 0.25, size=a.shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "x.npy", x)
        keras = KerasServer(a.tfvenv, a.threads, tmp / "keras_server.py") if have_keras else None
        try:
            for name, cfg in CONFIGS.items():
                if keras is not None:
                    keras(cmd="build", config=cfg, name=name, basedir=str(tmp))
                    model = StarDist3D.from_folder(tmp / name, device=a.device)
                    keras(cmd="forward", name=name, input=str(tmp / "x.npy"), output=str(tmp / f"{name}_prob.npy"))
                else:
                    model = StarDist3D(StarDistConfig.from_dict(cfg), device=a.device)
                fwd = model.make_forward()
                xp = pad_to_divisor(x[np.newaxis], model.divisor)
                prob, _ = fwd(xp)  # warm-up
                fwd_bf16 = None
                if a.device == "cpu" and a.bf16:
                    model.precision = "bfloat16"
                    fwd_bf16 = model.make_forward()
                    prob_bf16, _ = fwd_bf16(xp)
                    model.precision = "auto"
                t_ours, t_keras, t_bf16 = [], [], []
                for _ in range(a.repeats):  # alternate: all see the same CPU load
                    t0 = time.perf_counter()
                    fwd(xp)
                    if a.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    t_ours.append(time.perf_counter() - t0)
                    if fwd_bf16 is not None:
                        t0 = time.perf_counter()
                        fwd_bf16(xp)
                        t_bf16.append(time.perf_counter() - t0)
                    if keras is not None:
                        t_keras.append(keras(cmd="forward", name=name, input=str(tmp / "x.npy"))["time"])
                line = f"{name:14s} forward: pytorch {min(t_ours):7.2f} s (median {np.median(t_ours):.2f})"
                if keras is not None:
                    ref = np.load(tmp / f"{name}_prob.npy")
                    diff = float(np.abs(prob[0][tuple(slice(0, s) for s in ref.shape)] - ref).max())
                    paired = float(np.median(np.array(t_keras) / np.array(t_ours)))
                    ratios[name] = (min(t_keras) / min(t_ours), paired)
                    line += (f" | keras {min(t_keras):7.2f} s (median {np.median(t_keras):.2f})"
                             f" | speed-up {min(t_keras) / min(t_ours):5.2f}x (paired median {paired:.2f}x;"
                             f" target >= 1.5x) | max |dprob| {diff:.1e}")
                print(line, flush=True)
                if t_bf16:
                    line = f"{name:14s} forward bf16 (opt-in): pytorch {min(t_bf16):7.2f} s"
                    if t_keras:
                        line += f" | speed-up vs keras fp32 {min(t_keras) / min(t_bf16):5.2f}x"
                    line += f" | max |dprob| vs fp32 {float(np.abs(prob_bf16 - prob).max()):.1e}"
                    print(line, flush=True)
                if a.profile:
                    profile_forward(model, xp, name)
            if ratios:
                print("summary float32 speed-up (keras / pytorch, same run; best-of / paired median): "
                      + ", ".join(f"{k} {v[0]:.2f}x / {v[1]:.2f}x" for k, v in ratios.items())
                      + " (target >= 1.5x)", flush=True)

            if a.device.startswith("cuda"):
                big = rng.normal(0.5, 0.25, size=a.gpu_shape).astype(np.float32)
                for name in CONFIGS:
                    model = (StarDist3D.from_folder(tmp / name, device=a.device) if keras is not None
                             else StarDist3D(StarDistConfig.from_dict(CONFIGS[name]), device=a.device))
                    run_to_completion(model.predict_iter(big[:64, :128, :128]))  # warm-up
                    t0 = time.perf_counter()
                    run_to_completion(model.predict_iter(big))
                    torch.cuda.synchronize()
                    dt = time.perf_counter() - t0
                    print(f"GPU predict {name} {tuple(a.gpu_shape)}: {dt:.2f} s = "
                          f"{np.prod(a.gpu_shape) / dt / 1e6:.1f} Mvoxel/s (precision {model.precision})")

            if not a.skip_e2e:
                name = "resnet_b2_g111_r32"
                folder = FIXTURES / "models" / name
                if not folder.is_dir():
                    print("# end-to-end: Keras fixture model missing (run make_keras_fixtures.py)")
                    return 0
                img = nuclei_volume(a.e2e_shape)
                np.save(tmp / "img.npy", img)
                model = StarDist3D.from_folder(folder, device=a.device)
                labels, _ = model.predict_instances(img, use_subprocess=True)  # warm-up (+ worker start)
                if keras is not None:
                    import shutil

                    shutil.copytree(folder, tmp / "e2e" / name)
                    keras(cmd="load", name=name, basedir=str(tmp / "e2e"))
                    keras(cmd="e2e", name=name, input=str(tmp / "img.npy"), output=str(tmp / "klabels.npy"))
                t_ours, t_keras = [], []
                for _ in range(a.repeats):
                    t0 = time.perf_counter()
                    labels, _ = model.predict_instances(img, use_subprocess=True)
                    t_ours.append(time.perf_counter() - t0)
                    if keras is not None:
                        r = keras(cmd="e2e", name=name, input=str(tmp / "img.npy"))
                        t_keras.append(r["time"])
                line = (f"end-to-end predict_instances {tuple(a.e2e_shape)} ({name}): pytorch {min(t_ours):6.2f} s, "
                        f"{labels.max()} objects")
                if keras is not None:
                    from stardist.matching import matching

                    f1 = matching(np.load(tmp / "klabels.npy"), labels, thresh=0.5).f1
                    line += (f" | stardist {min(t_keras):6.2f} s, {r['n_objects']} objects | speed-up "
                             f"{min(t_keras) / min(t_ours):4.2f}x (target >= 1.0x) | F1@0.5 vs stardist {f1:.3f}")
                print(line, flush=True)
        finally:
            if keras is not None:
                keras.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
