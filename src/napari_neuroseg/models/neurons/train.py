"""Training of the FISBe neuron model on FISBe Zarr data or synthetic data (:func:`train_iter`,
:func:`train`; the command line ``neuroseg train neurons`` is in ``cli/train.py``).

Writes into ``settings.output``: ``last.pt`` (every ``save_every`` steps, atomically; ``resume``
continues from it), ``best.pt`` (best validation avF1), ``model.pt`` (weights of the best model
without optimiser state: pass it to ``neuroseg neurons --model``), ``log.jsonl`` (loss and
validation scores).

Module import stays cheap (no torch); everything heavy is imported inside the functions.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class NeuronTrainSettings:
    """Training knobs of the neuron model (``neuroseg train neurons`` maps its flags onto these).

    Exactly one data source: ``data`` (a folder of FISBe ``.zarr`` samples, with ``split``) or
    ``synthetic`` (on-the-fly synthetic FISBe-like volumes)."""

    output: str = "neuron_model"
    data: str | None = None
    synthetic: bool = False
    split: str | None = None
    steps: int = 4000
    patch: tuple[int, int, int] = (32, 64, 64)
    batch_size: int = 2
    lr: float = 2e-3  # peak learning rate (cosine decay)
    base: int = 12  # filters at full resolution
    levels: int = 4  # U-Net resolution levels
    init_from: str | None = None  # start from these weights (fine-tuning)
    resume: bool = False  # continue from OUTPUT/last.pt
    save_every: int = 100
    val_every: int = 500  # 0 = never
    val_crop: tuple[int, int, int] = (128, 384, 384)  # centre crop of real validation volumes
    device: str = "auto"
    threads: int = 2
    seed: int = 0
    pool_size: int = 24  # synthetic: volumes kept in memory
    synth_shape: tuple[int, int, int] = (48, 128, 128)
    hard_fraction: float = 0.5  # synthetic: fraction of hard volumes
    synth_wide: float = 0.0  # synthetic: fraction drawn with NeuronSettings.randomized_wide
    real_morphology: str | None = None  # synthetic: folder of FISBe .zarr whose GT masks are rendered
    real_fraction: float = 0.0  # synthetic: fraction of volumes rendered from real_morphology
    elastic: bool = False
    amp: bool = True  # mixed precision on CUDA
    max_minutes: float | None = None  # the schedule is shortened to end in time
    workers: int = 0  # background processes making training batches (0 = inline)
    # voxel size (Z, Y, X) in µm of the training data, stored as the model's scale; None: that of
    # ``init_from``, else the shipped model's (FISBe's 0.44 µm; synthetic data is made to match it)
    voxel_size: tuple[float, float, float] | None = None
    # what max_minutes counts: "wall" (wall-clock) or "cpu" (this process's CPU time divided by
    # the torch threads: the wall time with its cores to itself, for benchmarks on a shared machine)
    budget_clock: str = "wall"
    # fine-tuning (init_from) on --data without validation samples: hold out this fraction of
    # each training volume (a slab at the end of its longest axis) for validation (0 = none)
    holdout_fraction: float = 0.25
    # after training, choose the post-processing thresholds (POSTPROCESS_GRID) on the validation
    # volumes with the kept weights and store them in model.pt
    tune_postprocess: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


#: fine-tuning recipe of ``train neurons --init-from`` (the CLI's defaults; docs/finetune.md):
#: peak learning rate, validation/checkpoint interval (steps), post-processing thresholds chosen on
#: the held-out part, and the share of the time budget kept for that search at the end
NEURON_FINETUNE_RECIPE: dict[str, Any] = {"lr": 1e-3, "val_every": 25, "save_every": 25, "tune_postprocess": True}
FINETUNE_END_RESERVE = 0.08
#: ... but at least this many seconds (the search below on a 48 x 128 x 128 volume: ~25 CPU s), and
#: at most this share of the budget
FINETUNE_END_RESERVE_S = 30.0
FINETUNE_END_RESERVE_MAX = 0.3
#: post-processing values tried by ``tune_postprocess``: a coordinate search (one value changed at a
#: time, in this order, two passes) from the model's own values and from each of
#: :data:`POSTPROCESS_STARTS` (designs with learned affinities); docs/finetune.md
POSTPROCESS_GRID: dict[str, tuple] = {"fg_threshold": (0.02, 0.1, 0.3, 0.5, 0.7),
                                      "colour_threshold": (0.02, 0.03, 0.05, 0.08),
                                      "merge_threshold": (0.1, 0.15, 0.25, 0.45),
                                      "colour_sigma": (0.5, 1.5, 2.5, 3.5),
                                      "min_size": (40, 400),
                                      "aff_threshold": (0.3, 0.5, 0.7),
                                      "colour_whiten": (False, True)}
#: training volumes larger than this (Z, Y, X) are searched on a centre crop
TUNE_CROP = (128, 384, 384)
POSTPROCESS_STARTS: tuple[dict, ...] = ({"use_affinities": True, "use_colour": True},
                                        {"use_affinities": True, "use_colour": False, "merge_threshold": 0.45})


def end_reserve(minutes: float) -> float:
    """Share of a fine-tuning budget of ``minutes`` kept for the post-processing search."""
    return min(FINETUNE_END_RESERVE_MAX, max(FINETUNE_END_RESERVE, FINETUNE_END_RESERVE_S / max(1e-9, 60.0 * minutes)))


def _lr(it: int, total: int, peak: float) -> float:
    warm = min(100, max(1, total // 20))
    if it < warm:
        return peak * (it + 1) / warm
    t = (it - warm) / max(1, total - warm)
    return 1e-2 * peak + 0.5 * (peak - 1e-2 * peak) * (1 + math.cos(math.pi * min(1.0, t)))


def loss_fn(out, fg, affs, amask):
    """Foreground: BCE + soft Dice; affinities: BCE where at least one end is foreground (+5%
    weight elsewhere)."""
    import torch
    import torch.nn.functional as F

    fg_logit = out[:, 0]
    bce = F.binary_cross_entropy_with_logits(fg_logit, fg, pos_weight=torch.tensor(2.0, device=out.device))
    p = torch.sigmoid(fg_logit)
    dice = 1 - (2 * (p * fg).sum() + 1) / (p.sum() + fg.sum() + 1)
    a = F.binary_cross_entropy_with_logits(out[:, 1:], affs, reduction="none")
    w = amask + 0.05
    aff = (a * w).sum() / w.sum()
    return bce + dice + 2 * aff, {"fg_bce": float(bce.detach()), "dice": float(dice.detach()),
                                  "aff": float(aff.detach())}


def _batch(source, n, patch, rng, elastic):
    import numpy as np

    from .data import augment, sample_patch
    from .targets import make_targets

    xs, fgs, afs, ams = [], [], [], []
    for _ in range(n):
        raw, stack = sample_patch(source.pick(rng), patch, rng)
        raw, stack = augment(raw, stack, rng, elastic=elastic)
        fg, affs, amask = make_targets(stack)
        xs.append(raw)
        fgs.append(fg)
        afs.append(affs)
        ams.append(amask)
    return [np.stack(a) for a in (xs, fgs, afs, ams)]


def _synthetic_mix(args: NeuronTrainSettings) -> dict:
    """SyntheticSource options of the wide randomisation and the real-morphology mix (the real
    masks are read once and cached in OUTPUT/real_morphology.npz)."""
    out = {"wide": float(getattr(args, "synth_wide", 0.0) or 0.0)}
    folder = getattr(args, "real_morphology", None)
    if folder and float(getattr(args, "real_fraction", 0.0) or 0.0) > 0:
        from .data import RealMorphology, find_samples

        found = find_samples(folder)
        paths = [p for p in found["train"] + found["val"] if str(p).endswith(".zarr")]
        out["morphology"] = RealMorphology.load(paths, cache=Path(args.output) / "real_morphology.npz")
        out["morphology_fraction"] = float(args.real_fraction)
    return out


def _batches_in_workers(source, args: NeuronTrainSettings, patch, start_it: int):
    """Endless training batches made in ``args.workers`` background processes (a torch
    DataLoader). Synthetic data: every worker keeps its own pool, drawn from its own range of
    training seeds; files: the workers share the (lazily read) volumes, each with its own
    random stream."""
    import numpy as np
    import torch.utils.data as tud

    from .data import TRAIN_SEED_BASE, SyntheticSource

    class _Stream(tud.IterableDataset):
        def __iter__(self):
            import torch

            info = tud.get_worker_info()
            w = info.id if info is not None else 0
            torch.set_num_threads(1)
            rng = np.random.default_rng([args.seed, start_it, w, 7])
            src = source
            if args.synthetic:
                pool = max(4, -(-args.pool_size // args.workers))
                src = SyntheticSource(pool, tuple(args.synth_shape), args.hard_fraction, seed=args.seed,
                                      **_synthetic_mix(args))
                src.rng = np.random.default_rng([args.seed, start_it, w])
                src.next_seed = TRAIN_SEED_BASE + 100_000 * (w + 1) + 1000 * args.seed + 10 * start_it
            while True:
                yield _batch(src, args.batch_size, patch, rng, args.elastic)

    loader = tud.DataLoader(_Stream(), batch_size=None, num_workers=args.workers, prefetch_factor=4)
    for batch in loader:
        yield [b.numpy() for b in batch]


def _evaluate(gt, pred, partly: bool = False) -> dict:
    """FISBe scores of ``pred`` (``partly``: the volume is partly labelled, unmatched predictions
    are not counted as false positives)."""
    try:
        from napari_neuroseg.metrics import evaluate
    except ImportError:
        evaluate = None
    if evaluate is not None:
        return evaluate(gt, pred, partly=partly)
    return _proxy_scores(gt, pred)


def _proxy_scores(gt, pred) -> dict:
    """Fallback when the metrics package is missing: avF1 from voxel IoU matching."""
    import numpy as np

    g = np.asarray(gt)
    ids = [i for i in np.unique(pred) if i]
    ids = [i for i in ids if (pred == i).sum() > 800]
    f1s = []
    for th in np.arange(0.1, 1.0, 0.1):
        tp = 0
        for k in range(g.shape[0]):
            m = g[k] > 0
            best = max([((pred == i) & m).sum() / ((pred == i) | m).sum() for i in ids] or [0])
            tp += best > th
        fp, fn = len(ids) - tp, g.shape[0] - tp
        f1s.append(2 * tp / max(1, 2 * tp + fp + fn))
    return {"avF1": float(np.mean(f1s)), "proxy": True}


def split_holdout(raw, gt, fraction: float, name: str = ""):
    """Split a (raw (3,Z,Y,X), gt (N,Z,Y,X)) sample along its longest spatial axis: the last
    ``fraction`` is held out. Returns ``(raw_train, gt_train), (raw_val, gt_val)`` (empty GT
    channels dropped) or None when either part would be thinner than 8 voxels or hold no neuron."""
    import numpy as np

    raw, gt = np.asarray(raw), np.asarray(gt)
    axis = int(np.argmax(raw.shape[1:]))
    n = raw.shape[1 + axis]
    n_val = int(round(n * float(fraction)))
    if n_val < 8 or n - n_val < 8:
        return None
    parts = []
    for sl in (slice(0, n - n_val), slice(n - n_val, n)):
        idx = [slice(None)] * 4
        idx[1 + axis] = sl
        r, g = raw[tuple(idx)], gt[tuple(idx)]
        g = g[g.reshape(len(g), -1).any(1)] if len(g) else g
        if len(g) == 0:
            return None
        parts.append((np.ascontiguousarray(r), np.ascontiguousarray(g)))
    return parts[0], parts[1]


def _validation_set(args: NeuronTrainSettings, rng):
    """List of (name, raw (3,Z,Y,X), gt stack) for validation."""
    from .data import VAL_SEED_BASE

    out = []
    if args.synthetic:
        from napari_neuroseg.synth import make_neurons

        shape = tuple(args.synth_shape)
        for i in range(2):
            v = make_neurons(shape, hard=bool(i % 2), seed=VAL_SEED_BASE + i)
            out.append((f"synth-val-{'hard' if i % 2 else 'standard'}", v.raw, v.gt_instances))
        return out
    out.extend(_annotated_centre_crops(args, "val", args.val_crop))
    return out


def _annotated_centre_crops(args: NeuronTrainSettings, which: str, crop) -> list:
    """(name, raw, gt) of the annotated FISBe Zarr samples of the ``which`` part ("train"/"val")
    of ``args.data``, each cut to its central ``crop`` (Z, Y, X; the whole axis where smaller)."""
    import numpy as np

    from .data import _open_fisbe, find_samples

    out = []
    for path in find_samples(args.data, args.split)[which]:
        if path.suffix != ".zarr":
            continue
        raw, gt = _open_fisbe(path)
        if gt is None:
            continue
        sl = tuple(slice((n - min(n, c)) // 2, (n - min(n, c)) // 2 + min(n, c)) for n, c in zip(raw.shape[1:], crop))
        out.append((path.name, np.asarray(raw[(slice(None),) + sl]), np.asarray(gt[(slice(None),) + sl])))
    return out


def training_scale(settings: NeuronTrainSettings):
    """The :class:`~napari_neuroseg.runtime.scale.ModelScale` a run trains at, saved with every
    checkpoint (``scale``) and next to ``model.pt`` as ``model.scale.json`` so that
    ``neuroseg neurons --model OUT/model.pt`` resamples inputs to it: the base model's when
    fine-tuning (``init_from``), else the shipped model's (the same synthetic FISBe-like data, at
    FISBe's voxel size); ``voxel_size`` replaces the voxel size (the data's own)."""
    from dataclasses import replace

    from napari_neuroseg.runtime.scale import parse_voxel_size

    from .model import DEFAULT_MODEL
    from .predict import scale_of_model_file

    scale = None
    if settings.init_from:
        from napari_neuroseg.models.registry import resolve_neuron_model

        scale = scale_of_model_file(resolve_neuron_model(settings.init_from))
    if scale is None:
        scale = scale_of_model_file(DEFAULT_MODEL)
    if settings.voxel_size is not None:
        vs = parse_voxel_size(settings.voxel_size, what="the training voxel size")
        scale = replace(scale, voxel_size=vs, nominal=False,
                        note=f"voxel size of the training data: {list(vs)} µm (given); object sizes as "
                             "the base model's")
    return scale


def _write_scale_sidecar(model_file: Path, scale) -> None:
    """``<model>.scale.json`` next to a model file, atomically."""
    from napari_neuroseg.io.atomic import atomic_output

    with atomic_output(model_file.with_name(model_file.stem + ".scale.json")) as tmp:
        tmp.write_text(json.dumps(scale.to_dict(), indent=1))


def check_train_budget(cfg, patch: tuple[int, ...], batch_size: int) -> None:
    """Refuse, before anything is built, a network (``--base``/``--levels``) or patch/batch size
    whose training step cannot fit in the free memory. The weights are counted on torch's meta
    device (four copies: weights, gradients, AdamW's moments); per patch voxel and batch item a
    rough estimate: raw, targets and outputs, and ~64 bytes per base filter for activations and
    their gradients."""
    import math

    from napari_neuroseg.runtime.memory import require_memory, require_network_fits

    require_network_fits(cfg.build, what="the neuron network", training=True,
                         fix="use a smaller --base (filters at full resolution) or fewer --levels")
    per_voxel = 4 * (cfg.in_channels + 2 * cfg.out_channels) + 64 * cfg.base
    require_memory(batch_size * math.prod(patch) * per_voxel,
                   what=f"training on patches of {patch} voxels (batch size {batch_size})",
                   fix="use a smaller --patch or --batch-size")


def _checked_network(args: NeuronTrainSettings):
    """The network config and patch size of a run, checked (steps, one data source, positive
    sizes, patch a multiple of the network's divisor, fits in memory) before anything is written."""
    from napari_neuroseg.errors import NeurosegError

    from .model import NetConfig

    if int(args.steps) < 1:
        raise NeurosegError(f"--steps {args.steps}: at least one training step is needed",
                            fix="give --steps 1 or more (nothing was written)")
    if bool(args.data) == bool(args.synthetic):
        raise NeurosegError("give one data source", fix="train on --data DIR or --synthetic (one of them)")
    if int(args.base) < 1 or int(args.levels) < 1 or int(args.batch_size) < 1:
        raise NeurosegError(f"--base {args.base}, --levels {args.levels}, --batch-size {args.batch_size} must be >= 1",
                            fix="use positive values")
    cfg = NetConfig(base=args.base, levels=args.levels)
    div = 2 ** (cfg.levels - 1)
    patch = tuple(int(p) for p in args.patch)
    if min(patch) < 1 or any(p % div for p in patch):
        raise NeurosegError(f"patch {patch} is not a positive multiple of {div}",
                            fix=f"use multiples of {div} (2**(levels-1))")
    check_train_budget(cfg, patch, int(args.batch_size))
    return cfg, patch


def _train_step(net, opt, scaler, batch, dev, *, channels_last: bool):
    """One optimisation step on a batch ``(x, fg, affs, amask)`` (float16 autocast when ``scaler``
    is given); returns ``(loss, parts)``."""
    import torch

    x, fg, affs, amask = batch
    xt = torch.from_numpy(x).to(dev)
    if channels_last:
        xt = xt.contiguous(memory_format=torch.channels_last_3d)
    fgt, aft, amt = (torch.from_numpy(a).to(dev) for a in (fg, affs, amask))
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        with torch.autocast("cuda", dtype=torch.float16):
            out = net(xt)
        loss, parts = loss_fn(out.float(), fgt, aft, amt)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        out = net(xt)
        loss, parts = loss_fn(out, fgt, aft, amt)
        loss.backward()
        opt.step()
    return loss, parts


def _tuning_set(args: NeuronTrainSettings, whole: list, val: list) -> list:
    """The annotated volumes (name, raw, gt) the post-processing search runs on: every annotated
    volume of the run, whole. With held-out slabs (one annotated volume, fine-tuning) that is
    each volume before the split (the slab alone holds a few neuron pieces, mostly below the
    metric's minimum size: measured a poor guide, docs/finetune.md); else the validation volumes
    and the training volumes (centre crops of at least :data:`TUNE_CROP`, or ``val_crop`` when larger)."""
    if whole:
        return list(whole)
    if args.synthetic or not args.data:
        return list(val)
    crop = [max(int(a), int(b)) for a, b in zip(args.val_crop, TUNE_CROP)]
    return list(val) + _annotated_centre_crops(args, "train", crop)


def _export_model(args: NeuronTrainSettings, out_dir: Path, params, tune_on: list, dev, train_info, scale,
                  stop: Callable[[], bool] | None = None):
    """``model.pt`` (weights only) with its scale sidecar. Without ``tune_on``: the weights of
    ``best.pt`` (else ``last.pt``). With annotated volumes ``tune_on`` (:func:`_tuning_set`): the
    post-processing values are searched there for ``best.pt`` and for ``last.pt``, and the pair
    (weights, values) with the higher avF1 is kept (ties: ``best.pt``); ``stop()`` true ends the
    search early (the time budget). Returns the search's summary (None without a search)."""
    from napari_neuroseg.runtime.progress import Progress

    from .model import NetConfig, NeuronModel, read_checkpoint, save_model

    cands = [out_dir / n for n in ("best.pt", "last.pt") if (out_dir / n).is_file()]
    if not cands:
        return None
    if not tune_on:
        cands = cands[:1]
    results = []  # (checkpoint, network, post-processing values, search summary)
    for i, src in enumerate(cands):
        ck = read_checkpoint(src)
        net_e = NetConfig(**ck["config"]).build()
        net_e.load_state_dict(ck["state_dict"])
        p, info = params, None
        if tune_on:
            yield Progress(i, len(cands), f"choosing the post-processing values on the annotated volumes ({src.name})")
            m = NeuronModel(net=net_e.to(dev), config=NetConfig(**ck["config"]), params=params, device=dev)
            p, info = tune_postprocess(m, tune_on, stop=stop)
            info = {**info, "weights": src.name, "iteration": ck.get("iteration")}
            yield Progress(i + 1, len(cands), f"{src.name}: post-processing {info['chosen']} -> avF1 "
                                              f"{info['avF1']:.3f} (base values {info['avF1_before']:.3f})")
        results.append((ck, net_e, p, info))
    pick = results[0]
    for r in results[1:]:
        if r[3]["avF1"] > pick[3]["avF1"] + 1e-9:
            pick = r
    ck, net_e, params, tuned = pick
    if tuned is not None:
        tuned = {**tuned, "candidates": [{k: r[3][k] for k in ("weights", "iteration", "avF1")} for r in results]}
    scores = dict(ck.get("scores", {}))
    if tuned is not None:
        scores["postprocess_search"] = tuned
    save_model(out_dir / "model.pt", net_e.cpu(), NetConfig(**ck["config"]), params,
               train_info=train_info, scores=scores, iteration=ck.get("iteration"), scale=scale)
    _write_scale_sidecar(out_dir / "model.pt", training_scale(args))
    return tuned


def _training_source(args: NeuronTrainSettings, rng, state, next_seed, workers: int):
    """The training data source (yields a step per synthetic volume made or file indexed), the
    held-out slabs and the whole volumes they were cut from: ``(source, held, whole)``, the last
    two lists of (name, raw, gt). Synthetic: a pool of volumes (filled here unless ``workers``
    fill their own). Files: every training sample; fine-tuning (also resumed) without
    validation samples holds out a slab of each volume (``holdout_fraction``)."""
    import numpy as np

    from napari_neuroseg.runtime.progress import Progress

    from .data import SyntheticSource, VolumeSource, find_samples, load_sample

    held: list = []
    whole: list = []
    if args.synthetic:
        source = SyntheticSource(args.pool_size, tuple(args.synth_shape), args.hard_fraction, seed=args.seed,
                                 **_synthetic_mix(args))
        if next_seed is not None:
            source.next_seed = int(next_seed)
        if not workers:  # with workers, each worker fills its own pool
            for done, total in source.fill():
                yield Progress(done, total, f"generating synthetic volume {done}/{total}")
        return source, held, whole
    found = find_samples(args.data, args.split)
    paths = found["train"]
    # fine-tuning on volumes without validation samples: hold out a slab of each
    resumed_ft = bool(args.resume and state is not None and (state.get("train_info") or {}).get("init_from"))
    holdout = bool(args.init_from or resumed_ft) and not found["val"] and float(args.holdout_fraction) > 0
    samples = []
    for i, pth in enumerate(paths):
        if holdout:
            from .data import _open_fisbe, make_sample

            raw, gt = _open_fisbe(pth) if pth.suffix == ".zarr" else (None, None)
            parts = None if gt is None else split_holdout(raw, gt, args.holdout_fraction)
            if parts is not None:
                (rt, gtt), (rv, gv) = parts
                samples.append(make_sample(rt, gt=gtt, name=pth.name, rng=rng))
                held.append((f"{pth.name} (held-out slab)", rv, gv))
                whole.append((pth.name, np.asarray(raw), np.asarray(gt)))
                yield Progress(i + 1, len(paths), f"indexed {pth.name} (a {args.holdout_fraction:.0%} slab held out)")
                continue
        samples.append(load_sample(pth, rng))
        yield Progress(i + 1, len(paths), f"indexed {pth.name}")
    return VolumeSource(samples), held, whole


class _NeuronRun:
    """One neuron training run: the state the steps share (settings, network, optimiser, random
    state, data source, validation volumes, best score, log, time budget) and the named steps
    :func:`train_iter` runs: set-up (here: network, resume or initial weights, optimiser),
    :meth:`prepare_data`, :meth:`start_loop`, :meth:`batch`, :meth:`train_step`,
    :meth:`validate`, :meth:`checkpoint`, :meth:`close` and :meth:`export`."""

    def __init__(self, args: NeuronTrainSettings):
        import numpy as np
        import torch

        from napari_neuroseg.errors import NeurosegError
        from napari_neuroseg.runtime.device import select_device

        from .model import NetConfig, read_checkpoint
        from .postprocess import PostprocessParams

        self.args = args
        cfg, self.patch = _checked_network(args)
        torch.set_num_threads(max(1, args.threads))
        self.dev = dev = select_device(args.device)
        self.out_dir = Path(args.output)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.start_it, self.best, self.next_seed, rng_state = 0, -1.0, None, None
        self.params = PostprocessParams()
        state = None
        self.last = self.out_dir / "last.pt"
        if args.resume:
            if not self.last.is_file():
                raise NeurosegError("nothing to resume", path=self.last, fix="start without --resume")
            state = read_checkpoint(self.last)
            cfg = NetConfig(**state["config"])
            self.start_it = int(state.get("iteration", 0))
            self.best = float(state.get("best_score", -1.0))
            self.next_seed = state.get("next_seed")
            rng_state = state.get("rng_state")
        elif args.init_from:
            from napari_neuroseg.models.registry import resolve_neuron_model

            state = read_checkpoint(resolve_neuron_model(args.init_from))
            cfg = NetConfig(**state["config"])
        self.state, self.cfg = state, cfg
        net = cfg.build().to(dev)
        if state is not None:
            net.load_state_dict(state["state_dict"])
            if isinstance(state.get("postprocess"), dict):  # the base model's post-processing values
                import dataclasses

                known = {f.name for f in dataclasses.fields(PostprocessParams)}
                self.params = PostprocessParams(**{k: v for k, v in state["postprocess"].items() if k in known})
        self.cl = dev.type == "cpu"  # channels-last 3D convolutions are ~2x faster on CPU
        if self.cl:
            net = net.to(memory_format=torch.channels_last_3d)
        self.net = net
        self.opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
        if args.resume and state.get("optimizer"):
            self.opt.load_state_dict(state["optimizer"])
        amp = dev.type == "cuda" and args.amp
        self.scaler = torch.amp.GradScaler("cuda") if amp else None
        self.rng = np.random.default_rng(args.seed + self.start_it)
        if rng_state is not None:
            self.rng.bit_generator.state = rng_state

    def prepare_data(self):
        """The training source and the validation volumes (the held-out slabs when fine-tuning
        without validation samples); yields a step per volume made or indexed."""
        args = self.args
        self.workers = max(0, int(getattr(args, "workers", 0) or 0))
        self.source, held, whole = yield from _training_source(args, self.rng, self.state, self.next_seed,
                                                               self.workers)
        self.val = _validation_set(args, self.rng) if args.val_every else []
        if not args.synthetic and args.val_every and held:
            self.val = held
        self.tune_vols = _tuning_set(args, whole, self.val) if args.tune_postprocess else []

    def start_loop(self) -> None:
        """Open the log, start the clock and the time budget (a share kept for the
        post-processing search at the end) and the batch workers."""
        from napari_neuroseg.models.stardist3d.train import budget_clock
        from napari_neuroseg.runtime.budget import TimeBudget

        args = self.args
        self.log = (self.out_dir / "log.jsonl").open("a")
        self.train_info = args.to_dict()
        self.scale = training_scale(args).to_dict()
        self.t0 = time.time()
        self.net.train()
        self.total = int(args.steps)
        clock = budget_clock(args.budget_clock)
        minutes = args.max_minutes
        self.clock, self.deadline = clock, None
        if minutes is not None:
            self.deadline = clock() + 60.0 * float(minutes)
            if args.tune_postprocess and self.tune_vols:
                minutes = float(minutes) * (1 - end_reserve(float(minutes)))  # time for the search at the end
        self.budget = TimeBudget(minutes, self.start_it, self.total, clock=clock)
        self.stream = _batches_in_workers(self.source, args, self.patch, self.start_it) if self.workers else None

    def batch(self):
        """The next training batch ``(x, fg, affs, amask)`` (from the workers, or made here)."""
        if self.stream is not None:
            return next(self.stream)
        return _batch(self.source, self.args.batch_size, self.patch, self.rng, self.args.elastic)

    def train_step(self, it: int) -> tuple[dict, float]:
        """Optimisation step ``it`` (0-based): its log record and loss; the time budget may
        shorten the run (:attr:`total`) here."""
        x, fg, affs, amask = self.batch()
        for g in self.opt.param_groups:
            g["lr"] = _lr(it, self.total, self.args.lr)
        loss, parts = _train_step(self.net, self.opt, self.scaler, (x, fg, affs, amask), self.dev, channels_last=self.cl)
        done = it + 1
        self.total = self.budget.after_step(done)
        rec = {"iteration": done, "loss": float(loss.detach()), **parts, "lr": self.opt.param_groups[0]["lr"],
               "time": round(time.time() - self.t0, 1)}
        return rec, float(loss.detach())

    def validate(self, rec: dict) -> None:
        """avF1 on each validation volume into ``rec`` (every ``val_every`` steps and at the
        end); a better mean saves ``best.pt``."""
        import numpy as np

        from napari_neuroseg.runtime.progress import run_to_completion

        from .model import NeuronModel
        from .predict import predict_iter

        args, done = self.args, rec["iteration"]
        if not (args.val_every and self.val and (done % args.val_every == 0 or done == self.total)):
            return
        self.net.eval()
        m = NeuronModel(net=self.net, config=self.cfg, params=self.params, device=self.dev)
        scores = {}
        for name, raw, gt in self.val:
            pred = run_to_completion(predict_iter(raw, m)).labels
            scores[name] = float(_evaluate(gt, pred)["avF1"])
        self.net.train()
        rec["val"] = scores
        score = float(np.mean(list(scores.values())))
        if score > self.best:
            self.best = score
            self.checkpoint(self.out_dir / "best.pt", done, scores)

    def write_log(self, rec: dict) -> None:
        self.log.write(json.dumps(rec) + "\n")
        self.log.flush()

    def checkpoint(self, path, it, extra_scores=None) -> None:
        from .model import save_model

        save_model(path, self.net, self.cfg, self.params, optimizer=self.opt.state_dict(), iteration=it,
                   best_score=self.best, next_seed=getattr(self.source, "next_seed", None),
                   rng_state=self.rng.bit_generator.state, train_info=self.train_info, scores=extra_scores or {},
                   scale=self.scale)

    def close(self) -> None:
        """Close the log and stop the batch workers."""
        self.log.close()
        if self.stream is not None:
            self.stream.close()

    def export(self):
        """``model.pt`` (and the optional post-processing search): yields its steps, returns the
        search's summary."""
        args = self.args
        stop = None if self.deadline is None else (lambda: self.clock() >= self.deadline)
        return (yield from _export_model(args, self.out_dir, self.params, self.tune_vols, self.dev, self.train_info,
                                         self.scale, stop=stop))


def train_iter(args: NeuronTrainSettings):
    """The training loop as a progress generator; returns a dict summary
    (``iterations``, ``best_score``, ``out``)."""
    from napari_neuroseg.runtime.progress import Progress

    run = _NeuronRun(args)
    yield from run.prepare_data()
    run.start_loop()
    it = run.start_it
    try:
        for it in range(run.start_it, int(args.steps)):
            if it >= run.total:  # the time budget shortened the run
                it -= 1
                break
            rec, loss = run.train_step(it)
            run.validate(rec)
            run.write_log(rec)
            done = rec["iteration"]
            if done % args.save_every == 0 or done == run.total:
                run.checkpoint(run.last, done)
            yield Progress(done, run.total, f"loss {loss:.4f}" + (f" val {rec['val']}" if "val" in rec else ""))
    finally:
        run.close()
    tuned = yield from run.export()
    return {"iterations": it + 1, "best_score": run.best, "out": str(run.out_dir),
            "postprocess": None if tuned is None else tuned}


def tune_postprocess(model, val, grid: dict[str, tuple] | None = None, starts: tuple[dict, ...] | None = None,
                     stop: Callable[[], bool] | None = None):
    """The post-processing values with the best mean avF1 on the annotated volumes ``val`` (name,
    raw, gt) or (name, raw, gt, partly), ``partly`` true for a partly labelled volume (scored as
    the benchmarks do: unlabelled structures are no false positives): a coordinate search over ``grid`` (default :data:`POSTPROCESS_GRID`: each key in
    turn is set to the value that scores best with the others fixed, two passes) from
    ``model.params`` and from each of ``starts`` (default :data:`POSTPROCESS_STARTS`, applied to
    ``model.params``). The network runs once per volume. Ties keep the earlier values (the
    model's own first). ``stop()`` true ends the search (the best so far is kept). Returns
    ``(params, info)``: ``info["chosen"]`` the searched fields and the design
    (``use_affinities``, ``use_colour``), ``avF1``, ``avF1_before`` (the model's own values),
    ``evaluated`` (combinations scored) and ``stopped`` (ended by ``stop``)."""
    from dataclasses import replace

    import numpy as np

    from napari_neuroseg.runtime.progress import run_to_completion

    from .postprocess import instances_from_outputs
    from .predict import predict_iter
    from .preprocess import check_raw, normalize

    grid = POSTPROCESS_GRID if grid is None else grid
    starts = POSTPROCESS_STARTS if starts is None else starts
    model.net.eval()
    outs = []
    for name, raw, gt, *rest in val:
        if len(rest) > 1:
            raise ValueError(f"tuning volume {name!r}: expected (name, raw, gt) or (name, raw, gt, partly)")
        raw = np.asarray(raw)
        pr = run_to_completion(predict_iter(raw, model, return_outputs=True))
        outs.append((pr.foreground, pr.affinities, normalize(check_raw(raw)), np.asarray(gt), bool(rest and rest[0])))
    cache: dict = {}
    state = {"stopped": False}

    def score(p) -> float | None:
        key = tuple(sorted(p.to_dict().items()))
        if key not in cache:
            if cache and stop is not None and stop():
                state["stopped"] = True
                return None
            cache[key] = float(np.mean([_evaluate(gt, instances_from_outputs(fg, affs, img, p), partly)["avF1"]
                                        for fg, affs, img, gt, partly in outs]))
        return cache[key]

    base = model.params
    before = score(base)
    best_p, best_s = base, before
    for start in ({}, *starts):
        p0 = replace(base, **start)
        cur, cur_s = p0, score(p0)
        if cur_s is None:
            break
        for _ in range(2):
            moved = False
            for key, values in grid.items():
                for v in values:
                    sc = score(replace(cur, **{key: v}))
                    if sc is None:
                        break
                    if sc > cur_s + 1e-9:
                        cur, cur_s, moved = replace(cur, **{key: v}), sc, True
                if state["stopped"]:
                    break
            if not moved or state["stopped"]:
                break
        if cur_s > best_s + 1e-9:
            best_p, best_s = cur, cur_s
        if state["stopped"]:
            break
    keys = [*grid, "use_affinities", "use_colour"]
    return best_p, {"chosen": {k: getattr(best_p, k) for k in keys}, "avF1": best_s, "avF1_before": before,
                    "evaluated": len(cache), "stopped": state["stopped"]}


def train(settings: NeuronTrainSettings, callback: Callable | None = None) -> dict:
    """Run :func:`train_iter` to its end (``callback(progress)`` sees each step); its summary."""
    from napari_neuroseg.runtime.progress import run_to_completion

    return run_to_completion(train_iter(settings), callback)
