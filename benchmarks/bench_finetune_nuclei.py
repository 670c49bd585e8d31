"""Fine-tuning benchmark (issue 13): the shipped StarDist-3D ``neuroseg_nuclei`` fine-tuned on half
of the real annotated volume, scored on the other half.

The real volume ``/work/shared/real_nuclei/`` (100³ confocal, 0.2837 × 0.1268 × 0.1268 µm, 49
nuclei) is split at X = 50: X < 50 is given to ``neuroseg train nuclei --init-from
neuroseg_nuclei`` (which itself holds out a slab of it for validation and thresholds), X >= 50 is
never used for training or threshold tuning and is segmented with ``neuroseg nuclei TEST --model
DIR``. Reported: F1 at IoU 0.5 (``stardist.matching``) of the shipped model before (with the
file's voxel size, and with ``--no-rescale``) and after fine-tuning for each ``--minutes`` budget,
with the steps each run made and the machine's load (the CPU may be shared).

Everything goes through the command line, as a user runs it. Resumable: a finished run (its
``result.json``) is not repeated.

    python benchmarks/bench_finetune_nuclei.py --minutes 2 5 10 --work /tmp/bench_ft

On a machine shared with other jobs, count CPU time instead of wall time (each run's budget is
then the wall time it would take with its cores to itself) and run the three at once::

    python benchmarks/bench_finetune_nuclei.py --parallel --extra --threads 1 --budget-clock cpu
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _finetune_runs import TrainingRun, load_results, neuroseg, start_training  # noqa: E402

DATA = Path("/work/shared/real_nuclei")


def split_volume(work: Path, cut: int, axis: str = "X", train_side: str = "low") -> dict:
    """Write the training and test parts of the real volume: split along ``axis`` at ``cut``;
    ``train_side`` "low" trains on indices < cut and tests on >= cut, "high" the reverse."""
    import numpy as np

    from napari_neuroseg.io import read_image, read_labels
    from napari_neuroseg.io.tiff import write_tiff

    vol = read_image(DATA / "gonuclear_1135_raw.tif")
    x, y = np.asarray(vol.data), np.asarray(read_labels(DATA / "gonuclear_1135_labels.tif"))
    ax = "ZYX".index(axis)
    low, high = [slice(None)] * 3, [slice(None)] * 3
    low[ax], high[ax] = slice(0, cut), slice(cut, None)
    parts = {"train": low, "test": high} if train_side == "low" else {"train": high, "test": low}
    out = {"axis": ax, "test_plane": 0 if train_side == "low" else -1}
    for part, sl in parts.items():
        for kind, arr in (("raw", x), ("labels", y)):
            p = work / f"{part}_{kind}.tif"
            if not p.exists():
                write_tiff(p, np.ascontiguousarray(arr[tuple(sl)]), axes="ZYX", scale=vol.scale)
            out[f"{part}_{kind}"] = p
    return out


def f1(pred_path: Path, gt_path: Path, cut_rule: bool = False, axis: int = 2, plane: int = 0) -> tuple[float, int, int]:
    """F1 at IoU 0.5 of a prediction file against the test labels; ``cut_rule``: first apply the
    rule the data set's README states for its crop border to the split plane too (objects cut by
    it and smaller than 200 voxels set to 0: the split leaves 1- and 7-voxel fragments).
    ``axis``/``plane``: where the split plane lies in the test part."""
    import numpy as np
    from stardist.matching import matching

    from napari_neuroseg.io import read_labels

    gt, pred = np.array(read_labels(gt_path)), np.asarray(read_labels(pred_path))
    if cut_rule:
        ids, counts = np.unique(gt, return_counts=True)
        cut = set(np.unique(np.take(gt, plane, axis=axis)).tolist()) - {0}  # the split plane
        small = [int(i) for i, c in zip(ids, counts) if int(i) in cut and c < 200]
        gt[np.isin(gt, small)] = 0
    m = matching(gt, pred, thresh=0.5)
    return float(m.f1), int(m.n_true), int(m.n_pred)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[2, 5, 10])
    ap.add_argument("--work", type=Path, default=Path("bench_finetune_nuclei"))
    ap.add_argument("--cut", type=int, default=50, help="split index along --axis")
    ap.add_argument("--axis", choices=("Z", "Y", "X"), default="X", help="split axis (default X)")
    ap.add_argument("--train-side", choices=("low", "high"), default="low",
                    help="low: train on indices < cut, test on >= cut (default); high: the reverse")
    ap.add_argument("--parallel", action="store_true", help="run the fine-tuning runs at the same time")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more flags for 'train nuclei'")
    a = ap.parse_args(argv)
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NEUROSEG_MODELS_DIR", str(work / "registry"))
    files = split_volume(work, a.cut, a.axis, a.train_side)
    results, save = load_results(work)

    for name, flags in (("shipped, voxel size from metadata", []), ("shipped, --no-rescale", ["--no-rescale"])):
        if name not in results:
            pred = work / f"pred_shipped{'_norescale' if flags else ''}.tif"
            neuroseg("nuclei", str(files["test_raw"]), "-o", str(pred), "--model", "neuroseg_nuclei", *flags)
            s, nt, npred = f1(pred, files["test_labels"])
            results[name] = {"f1": s, "n_true": nt, "n_pred": npred}
            save()
        print(f"{name}: F1@0.5 {results[name]['f1']:.3f}", flush=True)

    todo = [m for m in a.minutes if f"fine-tuned {m:g} min" not in results]
    runs: dict[float, TrainingRun | None] = {}
    for minutes in todo:  # all runs at once (--parallel) or one after the other
        out = work / f"ft_{minutes:g}min"
        if (out / "finetune.json").is_file():  # trained before, not scored yet
            runs[minutes] = None
            continue
        runs[minutes] = start_training(
            ["nuclei", "--init-from", "neuroseg_nuclei", "--images", str(files["train_raw"]), "--labels",
             str(files["train_labels"]), "--max-minutes", f"{minutes:g}", "-o", str(out), "--name",
             f"bench_ft_{minutes:g}min", *a.extra], work / f"ft_{minutes:g}min.log", parallel=a.parallel)
    walls = {minutes: None if run is None else run.wait() for minutes, run in runs.items()}
    for minutes, run in runs.items():
        out, wall = work / f"ft_{minutes:g}min", walls[minutes]
        load0 = float("nan") if run is None else run.load_avg_start
        key = f"fine-tuned {minutes:g} min"
        info = json.loads((out / "finetune.json").read_text())
        pred = work / f"pred_ft_{minutes:g}min.tif"
        neuroseg("nuclei", str(files["test_raw"]), "-o", str(pred), "--model", str(out))
        s, nt, npred = f1(pred, files["test_labels"])
        if wall is None:
            wall = float((out / "wall_s").read_text()) if (out / "wall_s").is_file() else float("nan")
        else:
            (out / "wall_s").write_text(str(wall))
        results[key] = {"f1": s, "n_true": nt, "n_pred": npred, "steps": info["steps"], "wall_s": wall,
                        "budget_minutes": info["minutes"], "extra_flags": a.extra,
                        "heldout_f1_before": info["f1_before"], "heldout_f1_after": info["f1_after"],
                        "load_avg_start": load0, "load_avg_end": os.getloadavg()[0], "cpus": os.cpu_count()}
        save()
    preds = {"shipped, voxel size from metadata": work / "pred_shipped.tif",
             "shipped, --no-rescale": work / "pred_shipped_norescale.tif",
             **{f"fine-tuned {m:g} min": work / f"pred_ft_{m:g}min.tif" for m in a.minutes}}
    for key, pred in preds.items():
        if key in results and "f1_cut_rule" not in results[key]:
            results[key]["f1_cut_rule"] = f1(pred, files["test_labels"], cut_rule=True, axis=files["axis"],
                                             plane=files["test_plane"])[0]
            save()
        if key in results:
            print(f"{key}: F1@0.5 on the test half {results[key]['f1']:.3f} "
                  f"(split-plane fragments < 200 voxels removed: {results[key]['f1_cut_rule']:.3f})")
    for minutes in a.minutes:
        r = results[f"fine-tuned {minutes:g} min"]
        print(f"fine-tuned {minutes:g} min: F1@0.5 {r['f1']:.3f} ({r['steps']} steps, {r['budget_minutes']:.1f} budget "
              f"min, {r['wall_s'] / 60:.1f} min wall, load {r['load_avg_start']:.1f}->{r['load_avg_end']:.1f} "
              f"on {r['cpus']} CPUs; held-out slab F1 {r['heldout_f1_before']:.3f} -> {r['heldout_f1_after']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
