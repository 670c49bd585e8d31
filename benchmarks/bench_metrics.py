"""Benchmark: FISBe metrics on the two real samples — time and peak memory per sample.

Baselines (stated, not hidden):
  * official evaluator: its documented 600-950 s and 12-18 GB per real sample on 2 cores
    (``../shared/fisbe/README.md``); it cannot be run here, so the ratio uses those figures;
  * naive reimplementation, measured in this run: the official evaluator skeletonises full
    volumes; we time ONE full-volume ``skimage.morphology.skeletonize`` of a real neuron and
    multiply by the number of full-volume skeletonisations the official code performs for the
    sample (P + G for clDice, P for each of the dim / overlap subsets, G again without overlaps
    in partly mode, and the GT skeletons of the many-to-many matching) — an extrapolated LOWER
    bound, labelled as such.

Each sample runs in a fresh subprocess (so ``ru_maxrss`` is per sample), reading the files
lazily, exactly as ``neuroseg evaluate`` does. Usage::

    python benchmarks/bench_metrics.py [--shared ../shared] [--skip-naive] [--skimage]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SAMPLES = {"R14A02-20180905_65_A6": False, "VT011145-20171222_63_I2": True}
OFFICIAL_S = (600.0, 950.0)
OFFICIAL_GB = (12.0, 18.0)


def _one(shared: Path, name: str, partly: bool) -> dict:
    import resource
    import tracemalloc

    from napari_neuroseg.metrics._thin import thin_mask  # numba JIT load, not timed
    import numpy as np

    thin_mask(np.ones((3, 3, 3), bool))
    # steady state: modules imported before timing (imports are not part of the evaluation)
    import h5py  # noqa: F401
    import zarr  # noqa: F401

    import napari_neuroseg.io  # noqa: F401
    from napari_neuroseg.metrics.files import evaluate_files

    real = shared / "fisbe" / "real"
    tracemalloc.start()
    t0 = time.perf_counter()
    c0 = time.process_time()
    res = evaluate_files(real / "gt" / f"{name}.zarr", real / "pred" / f"{name}.hdf",
                         pred_key="volumes/gmm_label_cleaned", partly=partly)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # MiB on Linux
    ov = res["official"]["general"]
    n_full = (res["n_pred"] + res["n_gt"] + (res["n_pred"] if ov["GT_dim"] else 0)
              + (res["n_pred"] if ov["GT_overlap"] else 0)
              + (res["n_gt"] if partly and ov["GT_overlap"] else 0))
    return {"name": name, "wall_s": wall, "cpu_s": cpu, "tracemalloc_peak_mib": peak / 2**20,
            "maxrss_mib": rss, "n_full_skeletons_official": n_full,
            "avF1": res["avF1"], "C": res["C"]}


def _naive_full_skeleton(shared: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one full-volume skeletonisation of a real neuron (official-style)."""
    import numpy as np
    import zarr
    from skimage.morphology import skeletonize

    gt = zarr.open(str(shared / "fisbe" / "real" / "gt" / "R14A02-20180905_65_A6.zarr"),
                   mode="r")["volumes/gt_instances"]
    mask = np.asarray(gt[0]) > 0
    t0, c0 = time.perf_counter(), time.process_time()
    skeletonize(mask.astype(np.uint8))
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--skip-naive", action="store_true", help="skip the full-volume baseline")
    ap.add_argument("--skimage", action="store_true",
                    help="use the skimage bounding-box skeleton backend instead of numba")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shared = Path(args.shared)
    if args.one:
        print(json.dumps(_one(shared, args.one, SAMPLES[args.one])))
        return 0
    if not (shared / "fisbe" / "real").is_dir():
        print(f"no real FISBe data under {shared}; nothing to benchmark")
        return 0
    env = dict(os.environ)
    if args.skimage:
        env["NEUROSEG_SKELETON"] = "skimage"
    rows = []
    for name in SAMPLES:
        out = subprocess.run([sys.executable, __file__, "--shared", str(shared), "--one", name],
                             check=True, capture_output=True, text=True, env=env)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    t_full = None if args.skip_naive else _naive_full_skeleton(shared)
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          f"(timings are wall-clock; CPU time shown too)")
    print(f"backend: {'skimage bbox' if args.skimage else 'sparse (numba)'}")
    if t_full is not None:
        print(f"naive baseline (measured here): one full-volume skeletonize = "
              f"{t_full[0]:.1f} s wall, {t_full[1]:.1f} s CPU")
    print("ratios: official = documented 600-950 s / ours; naive = n_full x one full-volume "
          "skeletonize / ours (extrapolated lower bound); each on wall and on CPU time")
    hdr = (f"{'sample':<26}{'wall s':>8}{'cpu s':>7}{'tracemalloc MiB':>16}{'maxrss MiB':>11}"
           f"{'official/wall':>15}{'official/cpu':>14}{'naive/wall':>12}{'naive/cpu':>11}")
    print(hdr)
    for r in rows:
        w, c = r["wall_s"], r["cpu_s"]
        ow = f"{OFFICIAL_S[0] / w:.0f}-{OFFICIAL_S[1] / w:.0f}x"
        oc = f"{OFFICIAL_S[0] / c:.0f}-{OFFICIAL_S[1] / c:.0f}x"
        nw = nc = "-"
        if t_full is not None:
            n = r["n_full_skeletons_official"]
            nw, nc = f"{n * t_full[0] / w:.0f}x", f"{n * t_full[1] / c:.0f}x"
        print(f"{r['name']:<26}{w:>8.1f}{c:>7.1f}{r['tracemalloc_peak_mib']:>16.0f}"
              f"{r['maxrss_mib']:>11.0f}{ow:>15}{oc:>14}{nw:>12}{nc:>11}")
    if t_full is not None:
        print("naive full-volume skeletonisations per sample (official code path): "
              + ", ".join(f"{r['name']}: {r['n_full_skeletons_official']}" for r in rows))
    print(f"memory: official documented {OFFICIAL_GB[0]:.0f}-{OFFICIAL_GB[1]:.0f} GB; target < 2 GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
