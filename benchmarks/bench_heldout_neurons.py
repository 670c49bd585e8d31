"""Held-out accuracy matrix of a neuron model: FISBe avF1, C, FS, FM (``napari_neuroseg.metrics.evaluate``)
of the model through the public predict API (``models.neurons.predict``, the ``neuroseg neurons``
path, default post-processing) against the colour k-means baseline of ``bench_neurons.py``
(k = the true number of neurons, a generous oracle), on:

- **own**: the project's generator (``synth.make_neurons``, 48×160×160, seeds 0..n-1, standard and
  hard, as ``bench_neurons.py``; training uses seeds ≥ 1,000,000);
- **independent**: ``benchmarks/heldout/neurons.py`` (a separately written FISBe-like generator:
  own shape, colour, PSF and noise models; never used for training or tuning), standard and hard,
  seeds 0..n-1;
- **real crop**: ``/work/shared/fisbe/real_raw_crop`` (3×50×50×50, 3 neurons, test only).

Hard volumes hold unlabelled clutter and are scored as partly labelled. The model gets the true
voxel size where one is known (FISBe's 0.44 µm isotropic for the independent family and the real
crop; ``--no-voxel-size`` runs without, as ``neuroseg neurons`` does on a FISBe file); the own
generator has no unit and runs at the model's scale. Per set: mean per-volume avF1, the pooled
(leaderboard) avF1, mean C, summed FS/FM, seconds per volume; then the issue-12 targets.

    nice -n 10 python benchmarks/bench_heldout_neurons.py [--model PATH] [--n 4] [--tta]
        [--sets own,independent,real] [--threads 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

REAL_CROP = Path("/work/shared/fisbe/real_raw_crop/JRC_SS05008-20160318_24_B2_crop.zarr")
SHAPE = (48, 160, 160)
FISBE_VOXEL = (0.44, 0.44, 0.44)
#: issue 12 targets: (set, minimum model avF1, minimum margin over the baseline)
TARGETS = [("independent standard", 0.80, 0.25), ("independent hard", 0.45, 0.25), ("real crop", 0.65, None),
           ("own standard", 0.90, None), ("own hard", 0.65, None)]


def volumes(sets: list[str], n: int, shape=SHAPE):
    """Yields (set name, volume name, raw (3,Z,Y,X), gt (N,Z,Y,X), partly, voxel size or None)."""
    if "own" in sets:
        from napari_neuroseg.synth import make_neurons

        for hard in (False, True):
            for seed in range(n):
                v = make_neurons(shape, hard=hard, seed=seed)
                yield (f"own {'hard' if hard else 'standard'}", f"seed {seed}", v.raw, v.gt_instances,
                       bool(v.partly_labelled), None)
    if "independent" in sets:
        from heldout.neurons import render

        for level in ("standard", "hard"):
            for seed in range(n):
                v = render(shape, level=level, seed=seed)
                yield f"independent {level}", f"seed {seed}", v.raw, v.gt_instances, v.partly_labelled, v.voxel_size
    if "real" in sets and REAL_CROP.exists():
        from napari_neuroseg.io import read_fisbe

        s = read_fisbe(REAL_CROP)
        yield "real crop", REAL_CROP.name, np.asarray(s.raw), np.asarray(s.gt_instances), False, FISBE_VOXEL


def _score(gt, pred, partly) -> dict:
    from napari_neuroseg.metrics import evaluate

    r = evaluate(gt, pred, partly=partly)
    return {"avF1": float(r["avF1"]), "C": float(r["C"]), "FS": int(r["FS"]), "FM": int(r["FM"]),
            "n_gt": int(r["n_gt"]), "n_pred": int(r["n_pred"]), "_full": r}


def run(args) -> dict:
    import torch
    from bench_neurons import kmeans_baseline

    from napari_neuroseg.metrics import aggregate
    from napari_neuroseg.models.neurons import load_model, predict
    from napari_neuroseg.models.registry import resolve_neuron_model

    torch.set_num_threads(args.threads)
    model = load_model(resolve_neuron_model(args.model), args.device)
    shape = tuple(getattr(args, "shape", None) or SHAPE)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    per: dict[str, dict[str, list]] = {}
    times: dict[str, list] = {}
    rows = []
    print(f"model {model.path} (tta={args.tta}, voxel size {'off' if args.no_voxel_size else 'true'})", flush=True)
    print(f"{'set':<22} {'volume':<36} {'model avF1':>10} {'C':>6} {'FS':>3} {'FM':>3} {'pred/gt':>8} "
          f"{'base avF1':>9} {'s':>6}", flush=True)
    for sname, vname, raw, gt, partly, vs in volumes(sets, args.n, shape):
        kw = {}
        if vs is not None and not args.no_voxel_size:
            kw["voxel_size"] = vs
        if args.tta:
            kw["tta"] = True
        t0 = time.perf_counter()
        res = predict(raw, model, **kw)
        dt = time.perf_counter() - t0
        m = _score(gt, res.labels, partly)
        k = int(gt.shape[0])
        b = _score(gt, kmeans_baseline(raw, k) if k else np.zeros(raw.shape[1:], np.uint32), partly)
        per.setdefault(sname, {"model": [], "baseline": []})
        per[sname]["model"].append(m)
        per[sname]["baseline"].append(b)
        times.setdefault(sname, []).append(dt)
        rows.append({"set": sname, "volume": vname, "seconds": dt,
                     "model": {k: v for k, v in m.items() if not k.startswith("_")},
                     "baseline": {k: v for k, v in b.items() if not k.startswith("_")}})
        print(f"{sname:<22} {vname:<36} {m['avF1']:10.3f} {m['C']:6.3f} {m['FS']:3d} {m['FM']:3d} "
              f"{m['n_pred']:>3d}/{m['n_gt']:<4d} {b['avF1']:9.3f} {dt:6.1f}", flush=True)
    summary = {}
    for sname, d in per.items():
        summary[sname] = {}
        for meth, rs in d.items():
            summary[sname][meth] = {
                "avF1_mean": float(np.mean([r["avF1"] for r in rs])),
                "avF1_pooled": float(aggregate([r["_full"] for r in rs])["combined"]["avF1"]),
                "C_mean": float(np.mean([r["C"] for r in rs])),
                "FS": int(sum(r["FS"] for r in rs)),
                "FM": int(sum(r["FM"] for r in rs)),
                "per_volume": [round(r["avF1"], 3) for r in rs],
            }
        summary[sname]["seconds_per_volume"] = float(np.mean(times[sname]))
    return {"model": str(model.path), "tta": bool(args.tta), "voxel_size": not args.no_voxel_size,
            "n": args.n, "shape": list(shape), "threads": args.threads, "summary": summary, "volumes": rows}


def report(res: dict) -> None:
    print(f"\nmodel: {res['model']}  tta={res['tta']}")
    print("| set | model avF1 (mean / pooled) | C | FS | FM | baseline avF1 | margin | s/volume |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for sname, d in res["summary"].items():
        m, b = d["model"], d["baseline"]
        print(f"| {sname} | {m['avF1_mean']:.3f} / {m['avF1_pooled']:.3f} | {m['C_mean']:.3f} | {m['FS']} | "
              f"{m['FM']} | {b['avF1_mean']:.3f} | {m['avF1_mean'] - b['avF1_mean']:+.3f} | "
              f"{d['seconds_per_volume']:.1f} |")
    print("\ntargets (issue 12):")
    for sname, lo, margin in TARGETS:
        if sname not in res["summary"]:
            continue
        d = res["summary"][sname]
        a, b = d["model"]["avF1_mean"], d["baseline"]["avF1_mean"]
        ok = a >= lo and (margin is None or a - b >= margin)
        extra = "" if margin is None else f", margin {a - b:+.3f} (>= +{margin})"
        print(f"  {sname:<22} avF1 {a:.3f} (>= {lo}){extra}: {'met' if ok else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model file or registered name (default: the shipped model)")
    ap.add_argument("--n", type=int, default=4, help="volumes per generator and level")
    ap.add_argument("--sets", default="own,independent,real", help="comma-separated: own, independent, real")
    ap.add_argument("--tta", action="store_true", help="flip averaging (8 flips) at test time")
    ap.add_argument("--no-voxel-size", action="store_true", help="do not pass the true voxel size")
    ap.add_argument("--shape", type=int, nargs=3, default=list(SHAPE), metavar=("Z", "Y", "X"),
                    help="volume shape of the generated sets (default 48 160 160; the matrix uses the default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write the results as JSON")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    res = run(args)
    report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
