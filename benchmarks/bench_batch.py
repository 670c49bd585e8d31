"""Batch benchmarks: Dask scaling, blockwise peak memory, blockwise overhead.

Run: ``nice -n 10 python benchmarks/bench_batch.py [--quick]``. Prints three results, each as a
ratio against a baseline measured in the same run:

1. throughput of a file batch with 1 vs 2 Dask worker processes (LocalCluster) — the ratio;
2. peak traced memory (tracemalloc) of a blockwise run on a volume 8x larger than the block
   budget — must stay within the budget; the whole-volume run's peak is shown for comparison;
3. time of a blockwise run vs a whole-volume run on a volume that fits in memory — target < 20%
   overhead (same task, same output format).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def _volume(shape, seed=0) -> np.ndarray:
    """Bright blobs and a few long tubes on a noisy background (uint16)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 20, size=shape).clip(0, None).astype(np.uint16)
    zz, yy, xx = np.ogrid[-4:5, -4:5, -4:5]
    ball = zz**2 + yy**2 + xx**2 <= 16
    for _ in range(int(np.prod(shape) / 20000)):
        c = rng.integers(5, np.array(shape) - 5)
        img[c[0] - 4 : c[0] + 5, c[1] - 4 : c[1] + 5, c[2] - 4 : c[2] + 5][ball] = 1000
    for k in range(3):
        for x in range(shape[2]):
            z = int(shape[0] / 2 + shape[0] / 3 * np.sin(x / 13 + k))
            y = int(shape[1] / 2 + shape[1] / 3 * np.cos(x / 19 + 2 * k))
            img[max(0, z - 1) : z + 2, max(0, y - 1) : y + 2, x] = 900
    return img


def _zarr(path: Path, data: np.ndarray, chunks) -> Path:
    import zarr

    z = zarr.open_array(str(path), mode="w", shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=2)
    z[...] = data
    return path


def _warm_worker() -> None:
    import cc3d  # noqa: F401
    import scipy.ndimage  # noqa: F401
    import skimage.filters  # noqa: F401

    import napari_neuroseg.batch.jobs  # noqa: F401


def bench_workers(tmp: Path, n_files: int, shape) -> dict:
    import logging

    from distributed import Client, LocalCluster

    from napari_neuroseg.batch import run_batch
    from napari_neuroseg.runtime.progress import run_to_completion

    d = tmp / "files"
    d.mkdir()
    for i in range(n_files):
        _zarr(d / f"v{i}.zarr", _volume(shape, seed=i), (32, 128, 128))
    out = {}
    for n in (1, 2):
        with LocalCluster(n_workers=n, processes=True, threads_per_worker=1, host="127.0.0.1",
                          dashboard_address=None, worker_dashboard_address=None,
                          silence_logs=logging.ERROR) as lc, Client(lc) as client:
            params = {"threshold": 500, "sigma": 1.5}
            client.run(_warm_worker)  # imports on every worker, outside the timing
            t0 = time.perf_counter()
            res = run_to_completion(run_batch("threshold", [d], tmp / f"out{n}", params=params, fmt="zarr",
                                              scheduler=lc.scheduler_address))
            dt = time.perf_counter() - t0
            assert res.counts == {"done": n_files}, res.counts
            out[n] = {"seconds": round(dt, 2), "files_per_s": round(n_files / dt, 2)}
    return {"shape": list(shape), "files": n_files, "1_worker": out[1], "2_workers": out[2],
            "speedup_2_vs_1": round(out[1]["seconds"] / out[2]["seconds"], 2)}


def bench_memory(tmp: Path, shape, block) -> dict:
    from napari_neuroseg.batch import discover_inputs, get_task, segment_blockwise
    from napari_neuroseg.batch.sources import open_input
    from napari_neuroseg.runtime.progress import run_to_completion

    src = _zarr(tmp / "mem.zarr", _volume(shape, seed=1), block)
    spec = discover_inputs([src])[0]
    task = get_task("threshold")
    params = task.resolve({"threshold": 500})
    small = discover_inputs([_zarr(tmp / "small.zarr", _volume((16, 32, 32)), (8, 16, 16))])[0]
    run_to_completion(segment_blockwise(small, task, params, tmp / "w.zarr", "zarr", block_shape=(8, 16, 16)))
    budget = int(np.prod(block)) * 24 + 1_000_000  # as in tests/batch/test_batch_blockwise.py
    tracemalloc.start()
    t0 = time.perf_counter()
    run_to_completion(segment_blockwise(spec, task, params, tmp / "mem_out.zarr", "zarr", block_shape=block))
    dt_block = time.perf_counter() - t0
    _, peak_block = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    tracemalloc.start()
    with open_input(spec) as inp:
        img = inp.read()
        lab = task.segment(img, "ZYX", params)
    _, peak_whole = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del img, lab
    return {
        "volume": list(shape), "block": list(block), "blocks": int(np.prod([-(-s // b) for s, b in zip(shape, block)])),
        "block_budget_MB": round(budget / 1e6, 2),
        "volume_over_budget": round(int(np.prod(shape)) * 7 / budget, 1),
        "peak_blockwise_MB": round(peak_block / 1e6, 2),
        "peak_whole_volume_MB": round(peak_whole / 1e6, 2),
        "within_budget": bool(peak_block < budget),
        "seconds_traced": round(dt_block, 1),
    }


def bench_overhead(tmp: Path, shape, block, sigma: float, repeats: int) -> dict:
    from napari_neuroseg.batch import discover_inputs, get_task, segment_blockwise
    from napari_neuroseg.batch.jobs import run_file_job
    from napari_neuroseg.runtime.progress import run_to_completion

    src = _zarr(tmp / "ovh.zarr", _volume(shape, seed=2), block)
    spec = discover_inputs([src])[0]
    task = get_task("threshold")
    params = task.resolve({"threshold": 500, "sigma": sigma})
    t_whole, t_block = [], []
    run_file_job(spec, task, params, str(tmp / "warm.zarr"), "zarr")  # imports and caches, untimed
    shutil.rmtree(tmp / "warm.zarr", ignore_errors=True)
    for r in range(repeats):  # interleaved, so load changes on a shared machine hit both alike
        for target in ("whole.zarr", "block.zarr"):
            shutil.rmtree(tmp / target, ignore_errors=True)
        t0 = time.perf_counter()
        run_file_job(spec, task, params, str(tmp / "whole.zarr"), "zarr")
        t_whole.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        run_to_completion(segment_blockwise(spec, task, params, tmp / "block.zarr", "zarr", block_shape=block))
        t_block.append(time.perf_counter() - t0)
    w, b = float(np.median(t_whole)), float(np.median(t_block))
    return {"volume": list(shape), "block": list(block), "sigma": sigma, "halo": list(task.halo_for(params)),
            "repeats": repeats, "whole_s": [round(t, 2) for t in t_whole], "blockwise_s": [round(t, 2) for t in t_block],
            "whole_median_s": round(w, 2), "blockwise_median_s": round(b, 2), "overhead_pct": round(100 * (b / w - 1), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller volumes")
    ap.add_argument("--only", choices=("workers", "memory", "overhead"), help="run one benchmark")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats of the overhead runs (medians)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        results = {}
        big = (64, 256, 256) if args.quick else (128, 512, 512)
        half = (big[0], big[1] // 2, big[2] // 2)
        if args.only in (None, "workers"):
            results["workers"] = bench_workers(tmp, 4, (64, 128, 128)) if args.quick else bench_workers(tmp, 8, (96, 192, 192))
        if args.only in (None, "memory"):
            results["memory"] = bench_memory(tmp, (128, 256, 256), (32, 64, 64))
        if args.only in (None, "overhead"):
            results["overhead"] = bench_overhead(tmp, big, half, 1.0, args.repeats)
            results["overhead_cc"] = bench_overhead(tmp, big, half, 0.0, args.repeats)
        for k, v in results.items():
            print(k, json.dumps(v))
        if "workers" in results:
            print(f"1 vs 2 workers: {results['workers']['speedup_2_vs_1']}x")
        if "memory" in results:
            m = results["memory"]
            print(f"blockwise peak {m['peak_blockwise_MB']} MB within budget {m['block_budget_MB']} MB: "
                  f"{m['within_budget']} (whole volume {m['peak_whole_volume_MB']} MB)")
        if "overhead" in results:
            print(f"blockwise overhead (medians of {args.repeats}): {results['overhead']['overhead_pct']}% with "
                  f"smoothing (halo 3), {results['overhead_cc']['overhead_pct']}% without (target < 20%)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
