"""StarDist-3D NMS and rendering: the own numba code (``nms="neuroseg"``) against stardist's C++.

For each volume: the shipped ``neuroseg_nuclei`` model's network outputs once, then per backend
NMS (same candidates) and rendering (same kept set), interleaved in one process (the machine is
shared: compare the ratios), and ``predict_instances`` end to end (network + NMS + rendering).
CPU, 2 threads (``OMP_NUM_THREADS=2`` for stardist's OpenMP, torch 2 threads; the numba code is
single-threaded). stardist's NMS runs in the worker process so that it can be cut off after
``--stardist-timeout`` seconds (then the ratio is a lower bound, printed with ">").

Volumes: the bundled sample (32x96x96), the napari sample (64x128x128, ``make_nuclei(seed=0)``)
and a 64x256x256 synthetic volume (>= 1000 nuclei).

    python benchmarks/bench_nms.py [--volumes bundled napari big] [--stardist-timeout 900]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse
import time

import numpy as np


def volume(name: str) -> np.ndarray:
    from napari_neuroseg.synth import load_sample, make_nuclei

    if name == "bundled":
        return load_sample("nuclei")[0]
    if name == "napari":
        return make_nuclei((64, 128, 128), seed=0)[0]
    if name == "big":
        return make_nuclei((64, 256, 256), seed=0)[0]
    raise SystemExit(f"unknown volume {name}")


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def stardist_nms_in_worker(worker, d, p, pts, rays_spec, n_rays, thr, timeout):
    """stardist's NMS in the worker process; ``(seconds, result or None if cut off)``."""
    from napari_neuroseg.models.stardist3d import postprocess
    from napari_neuroseg.runtime.progress import Cancelled, run_to_completion

    t0 = time.perf_counter()
    gen = worker.call_iter(postprocess.nms_and_render, p, d, pts, rays_spec, n_rays, thr, (1, 1, 1),
                           render=False, nms="stardist")
    try:  # closing the generator on timeout terminates the worker process
        value = run_to_completion(gen, should_stop=lambda: time.perf_counter() - t0 > timeout)
    except Cancelled:
        return time.perf_counter() - t0, None
    return time.perf_counter() - t0, value[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volumes", nargs="+", default=["bundled", "napari", "big"])
    ap.add_argument("--stardist-timeout", type=float, default=900.0)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    from napari_neuroseg.models.stardist3d import StarDist3D
    from napari_neuroseg.models.stardist3d.nms import nms_3d, polyhedra_to_label, warmup
    from napari_neuroseg.models.stardist3d.postprocess import (
        render_labels,
        select_candidates,
    )
    from napari_neuroseg.models.stardist3d.rays import rays_spec
    from napari_neuroseg.runtime.subprocess import ProcessWorker

    t_compile, _ = timed(warmup)
    print(f"numba compilation (once per process): {t_compile:.1f} s")
    model = StarDist3D.load("neuroseg_nuclei", device="cpu")
    rays, spec, n_rays = model.rays, rays_spec(model.config), model.config.n_rays
    thr = model.thresholds.nms
    worker = ProcessWorker()
    try:
        for name in args.volumes:
            img = volume(name)
            x = model.prepare_image(img)
            t_net, (prob, dist) = timed(model.predict, x)
            p, d, pts = select_candidates(prob, np.moveaxis(dist, -1, 0), offset=(0, 0, 0), grid=model.grid,
                                          prob_thresh=model.thresholds.prob, border=((0, 0),) * 3, shape=x.shape[1:])
            shape = tuple(x.shape[1:])
            print(f"\n== {name} {shape}: {len(p)} candidates, network {t_net:.1f} s")
            # NMS, interleaved: own, stardist, own
            t_own1, own = timed(nms_3d, d, p, pts, rays, thr)
            t_sd, ref = stardist_nms_in_worker(worker, d, p, pts, spec, n_rays, thr, args.stardist_timeout)
            t_own2, _ = timed(nms_3d, d, p, pts, rays, thr)
            t_own = min(t_own1, t_own2)
            cut = ref is None
            n_ref = "" if cut else f" ({len(ref['points'])} kept)"
            gt = ">" if cut else ""
            print(f"NMS      neuroseg {t_own:8.2f} s ({len(own[0])} kept)   stardist {gt}{t_sd:8.1f} s{n_ref}"
                  f"   ratio {gt}{t_sd / t_own:.0f}x")
            if not cut:
                kept_ref = {tuple(v) for v in np.asarray(ref["points"]).tolist()}
                kept_own = {tuple(v) for v in np.asarray(own[0]).tolist()}
                print(f"         kept sets differ in {len(kept_ref ^ kept_own)} of {len(p)} candidates")
            # rendering of the same kept set, interleaved
            kd, kp, kpts = own[2], own[1], own[0]
            t_r1, lab_own = timed(polyhedra_to_label, kd, kpts, rays, shape, kp, sequential=True)
            t_rsd, lab_sd = timed(render_labels, kd, kpts, kp, rays, shape, nms="stardist")
            t_r2, _ = timed(polyhedra_to_label, kd, kpts, rays, shape, kp, sequential=True)
            t_r = min(t_r1, t_r2)
            print(f"render   neuroseg {t_r:8.2f} s   stardist  {t_rsd:8.2f} s   ratio {t_rsd / t_r:.0f}x   "
                  f"voxels differing {int((lab_own != lab_sd).sum())} of {lab_own.size}")
            e_own = t_net + t_own + t_r
            e_sd = t_net + t_sd + t_rsd
            print(f"end to end (network + NMS + rendering): neuroseg {e_own:.1f} s, stardist {gt}{e_sd:.1f} s,"
                  f" ratio {gt}{e_sd / e_own:.1f}x")
            t_pi, (labels, _) = timed(model.predict_instances, img, use_subprocess=False)
            print(f"predict_instances(nms='neuroseg') measured: {t_pi:.1f} s, {int(labels.max())} objects")
    finally:
        worker.shutdown()


if __name__ == "__main__":
    main()
