"""Where should a fine-tuned neuron model's post-processing be chosen? (issue 13, docs/finetune.md)

For fine-tuned model files (``OUT/best.pt``, ``OUT/last.pt`` of ``train neurons --init-from`` on
the family of ``bench_finetune_neurons.py``), the post-processing values are searched with the
library's :func:`~napari_neuroseg.models.neurons.train.tune_postprocess` on one of:

* ``slab``  — the held-out slab of the training volume (what the trainer used before),
* ``whole`` — the whole training volume (what the trainer does now),
* ``val``   — six separate validation volumes of the family (seeds 7010–7015),

and every choice is scored on the validation volumes (the criterion) and on the benchmark's
test volumes 7001–7003 (reported, never used to choose). ``--otsu`` adds a per-volume
foreground threshold (Otsu of the probability map, issue 13's hypothesis 3) on top of each choice.
``--oracle`` adds the search on the test volumes themselves (an upper bound, information only).

    python benchmarks/study_finetune_neurons_postprocess.py --work /tmp/ft_neurons \\
        --models /tmp/ft_neurons/ft_10min/best.pt /tmp/ft_neurons/ft_10min/last.pt --otsu
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
VAL_SEEDS = (7010, 7011, 7012, 7013, 7014, 7015)


def _read(path: Path):
    import zarr

    g = zarr.open_group(str(path), mode="r")
    return np.asarray(g["volumes/raw"]), np.asarray(g["volumes/gt_instances"])


def family(work: Path) -> dict[str, list]:
    """name -> [(name, raw, gt)] for the sets slab, whole, val, test (written by
    ``bench_finetune_neurons.make_family`` and here for the validation seeds)."""
    import bench_finetune_neurons as bench
    import zarr

    from napari_neuroseg.models.neurons.train import split_holdout
    from napari_neuroseg.synth import make_neurons

    files = bench.make_family(work)
    for seed in VAL_SEEDS:
        path = work / f"val_{seed}.zarr"
        if not (path / ".done").is_file():
            vol = make_neurons(bench.SHAPE, seed=seed, hard=False)
            g = zarr.open_group(str(path), mode="w")
            g.create_array("volumes/raw", data=bench.rerender(vol, seed), chunks=(1, 16, 64, 64))
            g.create_array("volumes/gt_instances", data=vol.gt_instances, chunks=(1, 16, 64, 64))
            (path / ".done").write_text("")
    raw, gt = _read(files["train_dir"] / f"unfamiliar_{bench.TRAIN_SEED}.zarr")
    _, (rv, gv) = split_holdout(raw, gt, 0.25)
    return {"slab": [("slab", rv, gv)], "whole": [("whole", raw, gt)],
            "val": [(f"val{s}", *_read(work / f"val_{s}.zarr")) for s in VAL_SEEDS],
            "test": [(p.stem, *_read(p)) for p in files["test"]]}


class Scorer:
    """Network outputs of one model per volume (computed once) and avF1 for any post-processing."""

    def __init__(self, model):
        self.model, self.outs = model, {}

    def __call__(self, name, raw, gt, p) -> float:
        from napari_neuroseg.metrics import evaluate
        from napari_neuroseg.models.neurons.postprocess import instances_from_outputs
        from napari_neuroseg.models.neurons.predict import predict_iter
        from napari_neuroseg.models.neurons.preprocess import check_raw, normalize
        from napari_neuroseg.runtime.progress import run_to_completion

        if name not in self.outs:
            pr = run_to_completion(predict_iter(raw, self.model, return_outputs=True))
            self.outs[name] = (pr.foreground, pr.affinities, normalize(check_raw(raw)))
        fg, affs, img = self.outs[name]
        return float(evaluate(gt, instances_from_outputs(fg, affs, img, p))["avF1"])

    def otsu(self, name, raw, gt, p) -> float:
        from skimage.filters import threshold_otsu

        self(name, raw, gt, p)
        fg = self.outs[name][0]
        v = fg[fg > 5].astype(np.float32) / 255
        return self(name, raw, gt, replace(p, fg_threshold=float(threshold_otsu(v)) if v.size else 0.5))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="the work folder of bench_finetune_neurons.py")
    ap.add_argument("--models", type=Path, nargs="+", required=True)
    ap.add_argument("--choose-on", nargs="+", default=["slab", "whole", "val"])
    ap.add_argument("--otsu", action="store_true")
    ap.add_argument("--oracle", action="store_true")
    a = ap.parse_args(argv)
    import torch

    from napari_neuroseg.models.neurons.model import load_model
    from napari_neuroseg.models.neurons.train import tune_postprocess

    torch.set_num_threads(1)
    sets = family(a.work.resolve())

    def row(label, sc, p, otsu=False):
        f = sc.otsu if otsu else sc
        v = [f(*x, p) for x in sets["val"]]
        t = [f(*x, p) for x in sets["test"]]
        print(f"  {label:<34} val mean {np.mean(v):.3f} {np.round(v, 3).tolist()} | test mean {np.mean(t):.3f} "
              f"{np.round(t, 3).tolist()}", flush=True)

    for path in a.models:
        model = load_model(path, device="cpu")
        sc = Scorer(model)
        print(f"{path}: stored values {model.params}", flush=True)
        row("stored values", sc, model.params)
        for where in a.choose_on + (["test"] if a.oracle else []):
            p, info = tune_postprocess(model, sets[where])
            print(f"  chosen on {where}: avF1 there {info['avF1']:.3f} ({info['evaluated']} tried) {info['chosen']}")
            row(f"chosen on {where}" + (" (ORACLE, info only)" if where == "test" else ""), sc, p)
            if a.otsu:
                row(f"chosen on {where} + per-volume Otsu", sc, p, otsu=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
