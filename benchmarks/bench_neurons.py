"""Neuron segmentation benchmark: quality (FISBe metrics) and speed, against a colour baseline.

Run: ``nice -n 10 python benchmarks/bench_neurons.py [--model M] [--n 4] [--quick] [--json OUT]``

On unseen synthetic FISBe-like volumes (48×160×160, seeds 0..n-1 of ``synth.make_neurons``,
standard and hard; training uses seeds ≥ 1,000,000 and validation seeds 500,000+) it compares,
with :func:`napari_neuroseg.metrics.evaluate` (hard volumes hold unlabelled clutter, so they are
scored as partly labelled):

* **baseline** — k-means on the normalised colour (chromaticity) of the foreground (smoothed
  intensity above a threshold), k = the true number of neurons (a generous oracle k), then
  connected components of each colour cluster;
* **design A, colour graph** (the shipped default) — the network's foreground, fragments = connected components of
  neighbouring voxels with similar colour, colour agglomeration (no learned affinities);
* **design B, affinities + colour** — the network's foreground and learned
  affinities, cut by colour, colour agglomeration with long-range (gap) links.

It prints avF1 (mean of the per-volume values, and the pooled leaderboard value), C, FS, FM per
set and method, the margin over the baseline, the end-to-end throughput (normalise + network +
post-processing, torch threads = --threads) against the baseline's, and the scores on the real
crop ``../shared/fisbe/real_raw_crop`` when present (never used for training).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"


def kmeans_baseline(raw: np.ndarray, k: int, fg_threshold: float = 0.15, seed: int = 0) -> np.ndarray:
    """k-means on the normalised colour of the foreground, then connected components per cluster."""
    import cc3d
    from scipy import ndimage
    from scipy.cluster.vq import kmeans2

    from napari_neuroseg.models.neurons import normalize

    img = normalize(raw)
    sm = np.stack([ndimage.gaussian_filter(np.clip(c, 0, None), 1.0) for c in img])
    fg = sm.max(0) > fg_threshold
    labels = np.zeros(fg.shape, np.uint32)
    if fg.sum() < k:
        return labels
    col = sm[:, fg].T
    col = col / np.maximum(np.linalg.norm(col, axis=1, keepdims=True), 1e-9)
    _, cl = kmeans2(col.astype(np.float64), k, seed=seed, minit="++")
    clusters = np.zeros(fg.shape, np.int32)
    clusters[fg] = cl + 1
    nxt = 0
    for c in range(1, k + 1):
        cc = cc3d.connected_components(clusters == c, connectivity=26)
        m = cc > 0
        labels[m] = cc[m] + nxt
        nxt += int(cc.max())
    return labels


DESIGNS = {
    "A colour graph": {},  # the model's stored defaults (colour graph on the learned foreground)
    "B affinities + colour": dict(use_affinities=True, colour_threshold=0.25, merge_threshold=0.15,
                                  colour_sigma=1.0),
}


def _scores(gt, pred, partly):
    from napari_neuroseg.metrics import evaluate

    r = evaluate(gt, pred, partly=partly)
    r["partly"] = partly
    return r


def run(args) -> dict:
    import torch

    from napari_neuroseg.metrics import aggregate
    from napari_neuroseg.models.neurons import PostprocessParams, instances_from_outputs, load_model, normalize
    from napari_neuroseg.models.neurons.predict import network_outputs
    from napari_neuroseg.runtime.progress import run_to_completion
    from napari_neuroseg.synth import make_neurons

    torch.set_num_threads(args.threads)
    model = load_model(args.model, "cpu")
    shape = (48, 160, 160)
    results: dict = {"sets": {}, "speed": {}, "real_crop": None, "model": model.path}
    t_model, t_base, n_vox = 0.0, 0.0, 0
    for hard in (False, True):
        name = "hard" if hard else "standard"
        per: dict[str, list] = {k: [] for k in ["baseline", *DESIGNS]}
        for seed in range(args.n):
            v = make_neurons(shape, hard=hard, seed=seed)
            partly = v.partly_labelled
            t0 = time.perf_counter()
            img = normalize(v.raw)
            outs = run_to_completion(network_outputs(model, img))
            t_net = time.perf_counter() - t0
            for dname, over in DESIGNS.items():
                p = PostprocessParams(**{**model.params.to_dict(), **over})
                t1 = time.perf_counter()
                lab = instances_from_outputs(outs[0], outs[1:], img, p)
                t_pp = time.perf_counter() - t1
                if dname.startswith("B"):
                    t_model += t_net + t_pp
                    n_vox += int(np.prod(shape))
                per[dname].append(_scores(v.gt_instances, lab, partly))
            t1 = time.perf_counter()
            base = kmeans_baseline(v.raw, v.n_neurons)
            t_base += time.perf_counter() - t1
            per["baseline"].append(_scores(v.gt_instances, base, partly))
            print(f"  {name} seed {seed}: " + "  ".join(f"{k}={per[k][-1]['avF1']:.3f}" for k in per), flush=True)
        results["sets"][name] = {
            k: {
                "avF1_mean": float(np.mean([r["avF1"] for r in rs])),
                "avF1_pooled": float(aggregate(rs)["combined"]["avF1"]),
                "C_mean": float(np.mean([r["C"] for r in rs])),
                "FS": int(sum(r["FS"] for r in rs)),
                "FM": int(sum(r["FM"] for r in rs)),
                "per_volume": [round(float(r["avF1"]), 3) for r in rs],
            }
            for k, rs in per.items()
        }
    results["speed"] = {
        "model_Mvox_per_s": n_vox / t_model / 1e6,
        "baseline_Mvox_per_s": n_vox / t_base / 1e6,
        "threads": args.threads,
    }
    crop = SHARED / "fisbe" / "real_raw_crop" / "JRC_SS05008-20160318_24_B2_crop.zarr"
    if crop.exists():
        from napari_neuroseg.io import read_fisbe

        s = read_fisbe(crop)
        raw, gt = np.asarray(s.raw), np.asarray(s.gt_instances)
        img = normalize(raw)
        outs = run_to_completion(network_outputs(model, img))
        rc = {}
        for dname, over in DESIGNS.items():
            p = PostprocessParams(**{**model.params.to_dict(), **over})
            lab = instances_from_outputs(outs[0], outs[1:], img, p)
            rc[dname] = _scores(gt, lab, False)
        rc["baseline"] = _scores(gt, kmeans_baseline(raw, gt.shape[0]), False)
        results["real_crop"] = {k: {m: (float(r[m]) if isinstance(r[m], float) else r[m])
                                    for m in ("avF1", "C", "FS", "FM", "n_gt", "n_pred")} for k, r in rc.items()}
    return results


def report(res: dict) -> None:
    print(f"\nmodel: {res['model']}")
    print(f"{'set':<9} {'method':<24} {'avF1 mean':>9} {'pooled':>7} {'C':>6} {'FS':>4} {'FM':>4}  per volume")
    for sname, methods in res["sets"].items():
        for m, r in methods.items():
            print(f"{sname:<9} {m:<24} {r['avF1_mean']:9.3f} {r['avF1_pooled']:7.3f} {r['C_mean']:6.3f} "
                  f"{r['FS']:4d} {r['FM']:4d}  {r['per_volume']}")
        b = methods["baseline"]["avF1_mean"]
        for m in DESIGNS:
            print(f"{sname:<9} margin {m} over baseline: {methods[m]['avF1_mean'] - b:+.3f}")
    sp = res["speed"]
    print(f"speed ({sp['threads']} threads): model end to end {sp['model_Mvox_per_s']:.3f} Mvox/s, baseline "
          f"{sp['baseline_Mvox_per_s']:.3f} Mvox/s, ratio {sp['model_Mvox_per_s'] / sp['baseline_Mvox_per_s']:.2f}")
    if res["real_crop"]:
        for m, r in res["real_crop"].items():
            print(f"real crop {m:<24} avF1={r['avF1']:.3f} C={r['C']:.3f} n_gt={r['n_gt']} n_pred={r['n_pred']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--n", type=int, default=4, help="volumes per set (standard, hard)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 volume per set")
    ap.add_argument("--json", default=None, help="write the results as JSON")
    args = ap.parse_args()
    if args.quick:
        args.n = 1
    res = run(args)
    report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
