"""Optimise the thresholds of a nuclei model trained on synthetic data on its own validation volumes.

Regenerates exactly the volumes that ``neuroseg train nuclei --synthetic N ...`` held out for
validation (same split, seeds, appearance variation and axial blur), runs
``optimize_thresholds`` on them (probability and NMS thresholds, and the edge exclusion: stardist's
2 grid voxels or 0) and writes ``thresholds.json`` and ``threshold_search.json`` into
the model folder. Example (the third-session model)::

    python scripts/nuclei_thresholds.py runs/nuc_axial --synthetic 40 --shape 48 128 128 \\
        --vary 0.25 --axial-blur 1.0 4.5 --dome 0.0 0.6 --val-fraction 0.1
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
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    model = StarDist3D.from_folder(a.model, device="cpu")
    _, val = _split(a.synthetic, a.val_fraction, np.random.default_rng(a.seed))
    seeds = [a.first_seed + i for i in val]
    xs, ys = [], []
    for s in seeds:
        x, y = synthetic_dataset(1, a.shape, seed=s, vary=a.vary, axial_blur=a.axial_blur, dome=a.dome)
        xs.append(normalize_volume(x[0]))
        ys.append(y[0])
    th, f1, hist = optimize_thresholds(model, xs, ys, nms_threshs=(0.3, 0.4, 0.5), maxiter=3, tol=0.02,
                                       borders=(2, 0))
    (a.model / "thresholds.json").write_text(json.dumps(th.to_dict()))
    (a.model / "threshold_search.json").write_text(json.dumps({
        "val_seeds": seeds, "shape": list(a.shape), "vary": a.vary, "axial_blur": a.axial_blur, "dome": a.dome,
        "mean_f1_iou_0.3_0.5_0.7": f1, "search": {k: [list(t) for t in v] for k, v in hist.items()},
    }, indent=1))
    print(th, f"validation mean F1 {f1:.3f}")


if __name__ == "__main__":
    main()
