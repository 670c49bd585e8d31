"""GPU throughput of the shipped models (issue 4: StarDist-3D on 256×512×512; issue 5: neurons on
a full FISBe-size 400×700×700 volume, target < 60 s).

The volumes are the bundled samples mirrored out to the requested size (``np.pad`` symmetric), so
their content (object density, intensities) is that of the samples. Every timing is wall clock
around the public API with the device synchronised; the first call on a small crop warms up
CUDA (kernels, cuDNN autotuning) and is not counted. Run::

    python benchmarks/bench_gpu.py --device cuda [--json out.json] [--only nuclei|neurons]

On a machine without CUDA it runs on the CPU with ``--device cpu`` (use small ``--*-shape``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from napari_neuroseg.runtime.progress import run_to_completion


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _grow(a: np.ndarray, shape, spatial_from: int = 0) -> np.ndarray:
    """Mirror ``a`` out to ``shape`` on its last 3 axes (and crop)."""
    pads = [(0, 0)] * spatial_from + [(0, max(0, t - s)) for s, t in zip(a.shape[spatial_from:], shape)]
    b = np.pad(a, pads, mode="symmetric")
    return np.ascontiguousarray(b[(slice(None),) * spatial_from + tuple(slice(0, t) for t in shape)])


def _timed_run(gen, device: str):
    """Run a progress generator; return (value, seconds, [(t, message)])."""
    marks = []
    _sync(device)
    t0 = time.perf_counter()
    value = run_to_completion(
        gen, lambda p: marks.append((round(time.perf_counter() - t0, 2), getattr(p, "message", str(p)))))
    _sync(device)
    return value, time.perf_counter() - t0, marks


def bench_nuclei(device: str, shape, precision: str, e2e_shape) -> dict:
    from napari_neuroseg.models.stardist3d import load_model
    from napari_neuroseg.models.stardist3d.model import normalize_image
    from napari_neuroseg.synth.samples import load_sample

    image, _ = load_sample("nuclei")
    big = _grow(image, shape)
    model = load_model(None, device=device)
    model.precision = precision
    x = normalize_image(big[np.newaxis])[0]
    model.predict(x[:32, :128, :128])  # warm-up
    (prob, dist), t_net, _ = _timed_run(model.predict_iter(x), device)
    # end to end on a smaller volume: NMS (CPU, stardist's C++) dominates and grows with the
    # number of candidates (~10 % of the grid voxels for this model)
    (labels, details), t_e2e, marks = _timed_run(model.predict_instances_iter(_grow(image, e2e_shape)), device)
    n, n_e2e = int(np.prod(shape)), int(np.prod(e2e_shape))
    return {
        "shape": list(shape), "precision": precision, "model": model.name,
        "network_s": round(t_net, 2), "network_voxels_per_s": round(n / t_net),
        "e2e_shape": list(e2e_shape), "predict_instances_s": round(t_e2e, 2),
        "predict_instances_voxels_per_s": round(n_e2e / t_e2e),
        "objects": int(labels.max()), "progress": marks[-3:],
    }


def bench_neurons(device: str, shape) -> dict:
    from napari_neuroseg.models.neurons import load_model, predict_iter
    from napari_neuroseg.synth.samples import load_sample

    vol = load_sample("neurons")
    raw = _grow(np.asarray(vol.raw), shape, spatial_from=1)
    model = load_model(None, device)
    _timed_run(predict_iter(raw[:, :48, :160, :160], model), device)  # warm-up
    res, t, marks = _timed_run(predict_iter(raw, model), device)
    net_end = next((t_ for t_, m in marks if m == "post-processing"), None)
    n = int(np.prod(shape))
    return {
        "shape": list(shape), "total_s": round(t, 2), "voxels_per_s": round(n / t),
        "network_s": net_end, "postprocess_s": None if net_end is None else round(t - net_end, 2),
        "neurons": int(res.n_instances), "target_s": 60, "progress": marks[-6:],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--nuclei-shape", type=int, nargs=3, default=[256, 512, 512])
    ap.add_argument("--nuclei-e2e-shape", type=int, nargs=3, default=[64, 256, 256],
                    help="volume for the end-to-end predict_instances timing")
    ap.add_argument("--neurons-shape", type=int, nargs=3, default=[400, 700, 700])
    ap.add_argument("--only", choices=("nuclei", "neurons"), default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count(), "device": a.device}
    if a.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    print(json.dumps(info), flush=True)
    out = {"info": info}
    jobs = []
    if a.only in (None, "nuclei"):
        jobs += [("nuclei_auto", lambda: bench_nuclei(a.device, a.nuclei_shape, "auto", a.nuclei_e2e_shape)),
                 ("nuclei_float32", lambda: bench_nuclei(a.device, a.nuclei_shape, "float32", a.nuclei_e2e_shape))]
    if a.only in (None, "neurons"):
        jobs += [("neurons", lambda: bench_neurons(a.device, a.neurons_shape))]
    for name, job in jobs:
        try:
            out[name] = job()
        except Exception as err:  # noqa: BLE001 - report and go on with the other measurements
            import traceback

            out[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
        print(name, json.dumps(out[name]), flush=True)
        if a.json:
            with open(a.json, "w") as fh:
                json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
