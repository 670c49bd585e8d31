"""Held-out accuracy matrix of the nuclei model: F1 @ IoU 0.5 (``stardist.matching``) per data
set for three ways of running it:

- ``default``: the image as it is (``--no-rescale``; the behaviour before physical scale);
- ``voxel``: resampled by the voxel size (from the data's metadata / generator; the model's
  nominal voxel size is in its ``scale.json``);
- ``auto``: voxel size where known plus ``--object-size auto`` (LoG blob size estimate).

Data sets: the project's own synthetic generator (``synth.make_nuclei``, unseen seed; by
definition at the model's voxel size), the independent generator of ``benchmarks/heldout``
(never used for training or tuning) at two voxel sizes, ``stardist``'s 3D test image (no voxel
size: ``voxel`` = ``default``) and, if present, ``/work/shared/real_nuclei`` (GoNuclear,
validation data: voxel size from its ImageJ metadata).

    python benchmarks/bench_heldout_nuclei.py [--threads 2] [--quick] [--tta] [--modes default,voxel,auto]
        [--json out.json]

``--tta``: test-time flip averaging (8 flips of Z/Y/X) in every run; ``--modes`` limits the columns.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

REAL = Path("/work/shared/real_nuclei")


def datasets(quick: bool):
    from heldout.nuclei import render

    from napari_neuroseg.synth import make_nuclei

    img, lab = make_nuclei((32, 96, 96), seed=900000)[:2]
    yield "own synthetic (make_nuclei seed 900000, 32x96x96)", img, lab, (0.5, 0.25, 0.25)
    seeds = (1,) if quick else (1, 2)
    for shape, vs in (((20, 96, 96), (0.4, 0.2, 0.2)), ((27, 192, 192), (0.3, 0.1, 0.1))):
        for sd in seeds:
            img, lab = render(shape, vs, seed=sd)
            yield f"independent, voxel {vs[0]}x{vs[1]}x{vs[2]} um, seed {sd}", img, lab, vs
    from stardist.data import test_image_nuclei_3d

    img, lab = test_image_nuclei_3d(return_mask=True)
    yield "stardist test_image_nuclei_3d (31x61x57)", img, lab, None
    if (REAL / "gonuclear_1135_raw.tif").is_file():
        import tifffile

        from napari_neuroseg.io import read_image
        from napari_neuroseg.runtime.scale import voxel_size_from_volume

        vol = read_image(REAL / "gonuclear_1135_raw.tif")
        lab = tifffile.imread(REAL / "gonuclear_1135_labels.tif")
        yield "real_nuclei GoNuclear 1135 (100^3, validation data)", np.asarray(vol.data), lab, voxel_size_from_volume(vol)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one seed per independent voxel size")
    ap.add_argument("--json", default=None)
    ap.add_argument("--tta", action="store_true", help="test-time flip averaging (8 flips)")
    ap.add_argument("--modes", default="default,voxel,auto", help="comma-separated subset of default,voxel,auto")
    args = ap.parse_args()
    import torch
    from stardist.matching import matching

    from napari_neuroseg.models.stardist3d import load_model

    torch.set_num_threads(args.threads)
    model = load_model(None, device="cpu")
    rows = []
    print(f"model {model.name}, scale {model.scale.to_dict() if model.scale else None}", flush=True)
    print(f"{'data set':62s} {'n':>4s} | {'default':>16s} | {'voxel':>16s} | {'auto':>16s} | auto estimate", flush=True)
    for name, img, lab, vs in datasets(args.quick):
        cells, est = {}, ""
        modes = [m for m in ("default", "voxel", "auto") if m in args.modes.split(",")]
        for mode in modes:
            kw = {"tta": True} if args.tta else {}
            if mode == "voxel":
                if vs is None and "default" in cells:
                    cells[mode] = cells["default"]
                    continue
                kw["voxel_size"] = vs
            elif mode == "auto":
                kw.update(voxel_size=vs, object_size="auto")
            t0 = time.perf_counter()
            pred, det = model.predict_instances(img, **kw)
            m = matching(lab, pred, thresh=0.5)
            cells[mode] = {"f1": float(m.f1), "precision": float(m.precision), "recall": float(m.recall),
                           "n_pred": int(m.n_pred), "seconds": time.perf_counter() - t0,
                           "plan": det.get("scale_plan")}
            if mode == "auto":
                e = det["scale_plan"]["estimate"]
                est = f"{e['diameter_vox']:.1f} vox, factors {np.round(det['scale_plan']['factors'], 2).tolist()}"
        n_true = int(len(np.unique(lab)) - 1)
        rows.append({"data": name, "n_true": n_true, "voxel_size": vs, "tta": bool(args.tta), **cells})
        fmt = lambda c: "-" if c is None else f"{c['f1']:.3f} ({c['n_pred']:>3d} pr)"  # noqa: E731
        sec = sum(c["seconds"] for c in cells.values())
        print(f"{name:62s} {n_true:4d} | {fmt(cells.get('default')):>16s} | {fmt(cells.get('voxel')):>16s} | "
              f"{fmt(cells.get('auto')):>16s} | {est} | {sec:.1f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
