"""Optimise the thresholds of a nuclei model trained on synthetic data on its own validation volumes.

Regenerates exactly the volumes that ``neuroseg train nuclei --synthetic N ...`` held out for
validation (same split, seeds, appearance variation and axial blur), runs
``optimize_thresholds`` on them (probability and NMS thresholds, and the edge exclusion: stardist's
2 grid voxels or 0) and writes ``thresholds.json`` and ``threshold_search.json`` into
the model folder. Example (the third-session model)::

    python scripts/nuclei_thresholds.py runs/nuc_axial --synthetic 40 --shape 48 128 128 \\
        --vary 0.25 --axial-blur 1.0 4.5 --dome 0.0 0.6 --val-fraction 0.1

Sparse NMS of tens of thousands of candidates is slow, so the third session searched central
32×96×96 crops, NMS 0.3 and 0.4, one process per border, and then kept the better search::

    python scripts/nuclei_thresholds.py RUN ... --crop 32 96 96 --nms 0.3 0.4 --borders 2 --out b2.json &
    python scripts/nuclei_thresholds.py RUN ... --crop 32 96 96 --nms 0.3 0.4 --borders 0 --out b0.json
    python scripts/nuclei_thresholds.py --combine RUN b2.json b0.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from napari_neuroseg.models.stardist3d.model import StarDist3D
from napari_neuroseg.models.stardist3d.train import _split, synthetic_dataset
from napari_neuroseg.models.stardist3d.training import normalize_volume, optimize_thresholds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="model folder (its thresholds files are replaced)")
    p.add_argument("--synthetic", type=int, required=True, help="N of the training run")
    p.add_argument("--shape", type=int, nargs=3, default=(48, 128, 128))
    p.add_argument("--first-seed", type=int, default=0, help="--synthetic-seed of the training run")
    p.add_argument("--vary", type=float, default=0.25)
    p.add_argument("--axial-blur", type=float, nargs=2, default=None)
    p.add_argument("--dome", type=float, nargs=2, default=None)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="--seed of the training run (it fixes the split)")
    p.add_argument("--crop", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="search on the central crop of this size of each volume (faster NMS)")
    p.add_argument("--borders", type=int, nargs="+", default=(2, 0), help="edge exclusions to try")
    p.add_argument("--nms", type=float, nargs="+", default=(0.3, 0.4, 0.5), help="NMS thresholds to try")
    p.add_argument("--out", type=Path, default=None,
                   help="write the search here instead of into the model folder (to combine parallel runs)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    model = StarDist3D.from_folder(a.model, device="cpu")
    _, val = _split(a.synthetic, a.val_fraction, np.random.default_rng(a.seed))
    seeds = [a.first_seed + i for i in val]
    xs, ys = [], []
    for s in seeds:
        x, y = synthetic_dataset(1, a.shape, seed=s, vary=a.vary, axial_blur=a.axial_blur, dome=a.dome)
        x, y = normalize_volume(x[0]), y[0]
        if a.crop:
            sl = tuple(slice((n - c) // 2, (n - c) // 2 + c) for n, c in zip(y.shape, a.crop))
            x, y = x[(slice(None),) + sl], np.ascontiguousarray(y[sl])
        xs.append(x)
        ys.append(y)
    th, f1, hist = optimize_thresholds(model, xs, ys, nms_threshs=tuple(a.nms), maxiter=3, tol=0.02,
                                       borders=tuple(a.borders))
    doc = {
        "thresholds": th.to_dict(), "val_seeds": seeds, "shape": list(a.shape), "crop": a.crop, "vary": a.vary,
        "axial_blur": a.axial_blur, "dome": a.dome, "mean_f1_iou_0.3_0.5_0.7": f1,
        "search": {k: [list(t) for t in v] for k, v in hist.items()},
    }
    if a.out is not None:
        a.out.write_text(json.dumps(doc, indent=1))
    else:
        write_best(a.model, [doc])
    print(th, f"validation mean F1 {f1:.3f}")


def write_best(model: Path, docs: list[dict]) -> dict:
    """Write the thresholds of the search with the highest validation F1 (first wins ties) into
    the model folder, with all searches in ``threshold_search.json``."""
    best = max(docs, key=lambda d: d["mean_f1_iou_0.3_0.5_0.7"])
    (model / "thresholds.json").write_text(json.dumps(best["thresholds"]))
    search = {}
    for d in docs:  # keys "nms" of one-border searches become "nms/border"
        b = d["thresholds"]["border"]
        search.update({k if "/" in k else f"{k}/{b}": v for k, v in d["search"].items()})
    merged = dict(best, search=search, searched_borders=[d["thresholds"]["border"] for d in docs])
    (model / "threshold_search.json").write_text(json.dumps(merged, indent=1))
    return best


def combine() -> None:
    """``nuclei_thresholds.py --combine MODEL A.json B.json``: keep the best of parallel searches."""
    p = argparse.ArgumentParser()
    p.add_argument("--combine", type=Path, required=True, metavar="MODEL")
    p.add_argument("searches", type=Path, nargs="+")
    a = p.parse_args()
    best = write_best(a.combine, [json.loads(s.read_text()) for s in a.searches])
    print("chosen", best["thresholds"], f"validation mean F1 {best['mean_f1_iou_0.3_0.5_0.7']:.3f}")


if __name__ == "__main__":
    import sys

    combine() if "--combine" in sys.argv else main()
