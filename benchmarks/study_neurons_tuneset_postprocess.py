"""Session 7 study (docs/neurons.md, "Session 7: post-processing chosen on a wide tuning set"): the
post-processing values of a neuron model chosen by the fine-tune's coordinate search
(``models.neurons.train.tune_postprocess``, its default grid and starts) on a tuning set of the
project's own data, seeds 100-103 per kind:

- ``standard`` / ``hard``: ``synth.make_neurons`` presets;
- ``wide``: ``NeuronSettings.standard().randomized_wide(default_rng(seed))``;
- ``real``: real FISBe ground-truth morphology (``../shared/fisbe/real/gt``, masks only) rendered by
  ``synth.render_neurons`` with a randomised appearance (seed 100 standard ±25 %, 101 hard ±25 %,
  102-103 wide; other seeds by seed % 4 alike), as the robust trainer does.

Never uses the independent generator nor the real crop (test only: ``bench_heldout_neurons.py``).
Writes ``OUT/candidate.pt`` (the model's weights and metadata with the chosen values; its
``.scale.json`` sidecar copied), ``OUT/search.json`` (the search summary and the per-volume
avF1 of the model's own and the chosen values). Score the candidate with
``bench_heldout_neurons.py --model OUT/candidate.pt``.

    nice -n 10 python benchmarks/study_neurons_tuneset_postprocess.py --out runs/s7 \\
        [--model PATH] [--kinds standard,hard,wide,real] [--seeds 100 101 102 103] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

SHAPE = (48, 160, 160)
REAL_GT = Path(__file__).resolve().parents[2] / "shared" / "fisbe" / "real" / "gt"
#: the benchmark's seeds (0-3) and the trainer's validation seeds must never be tuning seeds
FORBIDDEN_SEEDS = {0, 1, 2, 3, 500_000, 500_001}


def tuning_volumes(kinds: list[str], seeds: list[int], shape=SHAPE, real_gt: Path = REAL_GT, cache: Path | None = None):
    """Yields (kind, name, raw, gt, partly) for each kind and seed (docs/neurons.md, session 7)."""
    from napari_neuroseg.synth import NeuronSettings, make_neurons, render_neurons

    bad = FORBIDDEN_SEEDS.intersection(seeds)
    if bad:
        raise SystemExit(f"seeds {sorted(bad)} belong to the benchmark or the validation set")
    morph = None
    for kind in kinds:
        for s in seeds:
            if kind == "standard":
                v = make_neurons(shape, seed=s)
            elif kind == "hard":
                v = make_neurons(shape, hard=True, seed=s)
            elif kind == "wide":
                v = make_neurons(shape, settings=NeuronSettings.standard().randomized_wide(np.random.default_rng(s)),
                                 seed=s)
            elif kind == "real":
                if morph is None:
                    from napari_neuroseg.models.neurons.data import RealMorphology

                    morph = RealMorphology.load(sorted(real_gt.glob("*.zarr")), cache=cache)
                r = np.random.default_rng(s)
                if s % 4 == 0:  # seed 100: standard preset ±25 %, 101: hard ±25 %, 102-103: wide
                    settings = NeuronSettings.standard().randomized(r, 0.25)
                elif s % 4 == 1:
                    settings = NeuronSettings.hard().randomized(r, 0.25)
                else:
                    settings = NeuronSettings.standard().randomized_wide(r)
                masks = np.zeros((0,) + tuple(shape), np.float32)
                for _ in range(5):
                    masks = morph.crop(r, shape)
                    if len(masks):
                        break
                if not len(masks):
                    raise SystemExit(f"real morphology seed {s}: 5 empty crops")
                v = render_neurons(masks, seed=s, settings=settings)
            else:
                raise SystemExit(f"unknown kind {kind!r} (standard, hard, wide, real)")
            yield kind, f"{kind} {s}", v.raw, v.gt_instances, bool(v.partly_labelled)


def per_volume_scores(model, vols, params_list) -> list[list[float]]:
    """avF1 of each volume for each post-processing values in ``params_list`` (network once per volume)."""
    from napari_neuroseg.metrics import evaluate
    from napari_neuroseg.models.neurons.postprocess import instances_from_outputs
    from napari_neuroseg.models.neurons.predict import predict_iter
    from napari_neuroseg.models.neurons.preprocess import check_raw, normalize
    from napari_neuroseg.runtime.progress import run_to_completion

    out = []
    for _kind, _name, raw, gt, partly in vols:
        pr = run_to_completion(predict_iter(raw, model, return_outputs=True))
        img = normalize(check_raw(raw))
        out.append([float(evaluate(gt, instances_from_outputs(pr.foreground, pr.affinities, img, p),
                                   partly=partly)["avF1"]) for p in params_list])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (candidate.pt, search.json)")
    ap.add_argument("--model", default=None, help="model file or registered name (default: the shipped model)")
    ap.add_argument("--kinds", default="standard,hard,wide,real")
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103])
    ap.add_argument("--real-gt", default=str(REAL_GT), help="folder of FISBe .zarr samples (GT masks are read)")
    ap.add_argument("--max-minutes", type=float, default=None, help="end the search after this long (best so far kept)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from napari_neuroseg.models.neurons import load_model
    from napari_neuroseg.models.neurons.model import (
        DEFAULT_MODEL,
        read_checkpoint,
        save_model,
    )
    from napari_neuroseg.models.neurons.train import tune_postprocess
    from napari_neuroseg.models.registry import resolve_neuron_model

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = Path(resolve_neuron_model(args.model) or DEFAULT_MODEL)
    model = load_model(src, "cpu")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    t0 = time.perf_counter()
    vols = list(tuning_volumes(kinds, args.seeds, real_gt=Path(args.real_gt), cache=out / "real_morphology.npz"))
    print(f"{len(vols)} tuning volumes made in {time.perf_counter() - t0:.0f} s "
          f"({sum(v[4] for v in vols)} partly labelled)", flush=True)
    deadline = None if args.max_minutes is None else time.perf_counter() + 60 * args.max_minutes
    stop = None if deadline is None else (lambda: time.perf_counter() >= deadline)
    t1 = time.perf_counter()
    chosen, info = tune_postprocess(model, [(n, raw, gt, partly) for _k, n, raw, gt, partly in vols], stop=stop)
    print(f"search: {info['evaluated']} combinations in {time.perf_counter() - t1:.0f} s; "
          f"avF1 {info['avF1_before']:.3f} -> {info['avF1']:.3f}; chosen {info['chosen']}"
          f"{' (stopped early)' if info['stopped'] else ''}", flush=True)
    scores = per_volume_scores(model, vols, [model.params, chosen])
    by_kind: dict[str, dict[str, float]] = {}
    for (kind, name, *_), (a, b) in zip(vols, scores):
        print(f"  {name:<14} own values {a:.3f}  chosen {b:.3f}", flush=True)
    for kind in kinds:
        rows = [s for v, s in zip(vols, scores) if v[0] == kind]
        by_kind[kind] = {"own_values": float(np.mean([r[0] for r in rows])), "chosen": float(np.mean([r[1] for r in rows]))}
        print(f"{kind:<10} mean avF1 own values {by_kind[kind]['own_values']:.3f} -> chosen "
              f"{by_kind[kind]['chosen']:.3f}", flush=True)
    ck = read_checkpoint(src)
    extra = {k: v for k, v in ck.items() if k not in ("model_type", "format_version", "config", "postprocess", "state_dict")}
    extra["scores"] = {**dict(extra.get("scores") or {}),
                       "postprocess_search": {**info, "tuning_set": {"kinds": kinds, "seeds": args.seeds,
                                                                     "shape": list(SHAPE)}}}
    save_model(out / "candidate.pt", model.net, model.config, chosen, **extra)
    side = src.with_suffix(".scale.json")
    if side.is_file():
        shutil.copyfile(side, out / "candidate.scale.json")
    (out / "search.json").write_text(json.dumps(
        {"model": str(src), "kinds": kinds, "seeds": args.seeds, "info": info, "own_values": model.params.to_dict(),
         "per_volume": [{"volume": v[1], "partly": v[4], "own_values": s[0], "chosen": s[1]} for v, s in zip(vols, scores)],
         "by_kind": by_kind}, indent=1, default=str))
    print(f"wrote {out / 'candidate.pt'}", flush=True)


if __name__ == "__main__":
    main()
