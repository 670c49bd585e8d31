"""``neuroseg train neurons``: train the FISBe neuron model on FISBe Zarr data or synthetic data.

Writes into ``--out``: ``last.pt`` (every ``--save-every`` iterations, atomically; ``--resume``
continues from it), ``best.pt`` (best validation avF1), ``model.pt`` (weights of the best model
without optimiser state: pass it to ``neuroseg neurons --model``), ``log.jsonl`` (loss and
validation scores).

Module import stays cheap (no torch); everything heavy is imported inside the functions.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Training options (see ``neuroseg train neurons --help``)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="DIR", help="folder of FISBe .zarr samples (volumes/raw, volumes/gt_instances; "
                     "DIR/train + DIR/val, or a split file), or DIR/raw + DIR/labels pairs")
    src.add_argument("--synthetic", action="store_true", help="train on on-the-fly synthetic FISBe-like volumes")
    p.add_argument("--split", metavar="FILE", help='split file: JSON {"train": [...], "val": [...]} or "NAME,SPLIT" lines')
    p.add_argument("-o", "--output", "--out", dest="out", default="neuron_model",
                   help="output folder for checkpoints (default: %(default)s)")
    p.add_argument("--steps", "--iterations", dest="iterations", type=int, default=4000,
                   help="total training steps (iterations; default: %(default)s)")
    p.add_argument("--patch", type=int, nargs=3, default=(32, 64, 64), metavar=("Z", "Y", "X"),
                   help="patch size, multiples of 2**(levels-1) (default: 32 64 64)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay)")
    p.add_argument("--base", type=int, default=12, help="filters at full resolution")
    p.add_argument("--levels", type=int, default=4, help="U-Net resolution levels")
    p.add_argument("--init-from", "--init", dest="init", metavar="MODEL",
                   help="start from these weights (fine-tuning): neuroseg_neurons, a registered name or a .pt file")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--save-every", type=int, default=100, help="checkpoint interval (iterations)")
    p.add_argument("--val-every", type=int, default=500, help="validation interval (iterations; 0 = never)")
    p.add_argument("--val-crop", type=int, nargs=3, default=(128, 384, 384), metavar=("Z", "Y", "X"),
                   help="centre crop of real validation volumes (default: 128 384 384)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool-size", type=int, default=24, help="synthetic: volumes kept in memory")
    p.add_argument("--synth-shape", type=int, nargs=3, default=(48, 128, 128), metavar=("Z", "Y", "X"))
    p.add_argument("--hard-fraction", type=float, default=0.5, help="synthetic: fraction of hard volumes")
    p.add_argument("--elastic", action="store_true", help="add elastic deformation to the augmentation")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock budget: the learning-rate schedule is shortened to end in time, "
                        "then the run stops with a checkpoint")
    p.add_argument("--workers", type=int, default=0,
                   help="background processes making training batches (use on a GPU; 0 = inline)")
    p.add_argument("--quiet", action="store_true")


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


def _batches_in_workers(source, args, patch, start_it: int):
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
                src = SyntheticSource(pool, tuple(args.synth_shape), args.hard_fraction, seed=args.seed)
                src.rng = np.random.default_rng([args.seed, start_it, w])
                src.next_seed = TRAIN_SEED_BASE + 100_000 * (w + 1) + 1000 * args.seed + 10 * start_it
            while True:
                yield _batch(src, args.batch_size, patch, rng, args.elastic)

    loader = tud.DataLoader(_Stream(), batch_size=None, num_workers=args.workers, prefetch_factor=4)
    for batch in loader:
        yield [b.numpy() for b in batch]


def _evaluate(gt, pred) -> dict:
    try:
        from napari_neuroseg.metrics import evaluate
    except ImportError:
        evaluate = None
    if evaluate is not None:
        return evaluate(gt, pred)
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


def _validation_set(args, rng):
    """List of (name, raw (3,Z,Y,X), gt stack) for validation."""
    import numpy as np

    from .data import VAL_SEED_BASE, find_samples

    out = []
    if args.synthetic:
        from napari_neuroseg.synth import make_neurons

        shape = tuple(args.synth_shape)
        for i in range(2):
            v = make_neurons(shape, hard=bool(i % 2), seed=VAL_SEED_BASE + i)
            out.append((f"synth-val-{'hard' if i % 2 else 'standard'}", v.raw, v.gt_instances))
        return out
    from .data import _open_fisbe

    for path in find_samples(args.data, args.split)["val"]:
        if path.suffix != ".zarr":
            continue
        raw, gt = _open_fisbe(path)
        if gt is None:
            continue
        sl = []
        for n, c in zip(raw.shape[1:], args.val_crop):
            c = min(n, c)
            sl.append(slice((n - c) // 2, (n - c) // 2 + c))
        sl = tuple(sl)
        out.append((path.name, np.asarray(raw[(slice(None),) + sl]), np.asarray(gt[(slice(None),) + sl])))
    return out


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


def train_iter(args):
    """The training loop as a progress generator; returns a dict summary."""
    import numpy as np
    import torch

    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.runtime.device import select_device
    from napari_neuroseg.runtime.progress import Progress

    from .data import SyntheticSource, VolumeSource, find_samples, load_sample
    from .model import NetConfig, NeuronModel, read_checkpoint, save_model
    from .postprocess import PostprocessParams
    from .predict import predict_iter

    if int(args.iterations) < 1:
        raise NeurosegError(f"--iterations {args.iterations}: at least one training iteration is needed",
                            fix="give --iterations 1 or more (nothing was written)")
    if int(args.base) < 1 or int(args.levels) < 1 or int(args.batch_size) < 1:
        raise NeurosegError(f"--base {args.base}, --levels {args.levels}, --batch-size {args.batch_size} must be >= 1",
                            fix="use positive values")
    torch.set_num_threads(max(1, args.threads))
    dev = select_device(args.device)
    out_dir = Path(args.out)
    cfg = NetConfig(base=args.base, levels=args.levels)
    div = 2 ** (cfg.levels - 1)
    patch = tuple(int(p) for p in args.patch)
    if min(patch) < 1 or any(p % div for p in patch):
        raise NeurosegError(f"patch {patch} is not a positive multiple of {div}",
                            fix=f"use multiples of {div} (2**(levels-1))")
    check_train_budget(cfg, patch, int(args.batch_size))
    out_dir.mkdir(parents=True, exist_ok=True)
    start_it, best, next_seed, rng_state = 0, -1.0, None, None
    params = PostprocessParams()
    state = None
    last = out_dir / "last.pt"
    if args.resume:
        if not last.is_file():
            raise NeurosegError("nothing to resume", path=last, fix="start without --resume")
        state = read_checkpoint(last)
        cfg = NetConfig(**state["config"])
        start_it = int(state.get("iteration", 0))
        best = float(state.get("best_score", -1.0))
        next_seed = state.get("next_seed")
        rng_state = state.get("rng_state")
    elif args.init:
        from napari_neuroseg.models.registry import resolve_neuron_model

        state = read_checkpoint(resolve_neuron_model(args.init))
        cfg = NetConfig(**state["config"])
    net = cfg.build().to(dev)
    if state is not None:
        net.load_state_dict(state["state_dict"])
    cl = dev.type == "cpu"  # channels-last 3D convolutions are ~2x faster on CPU
    if cl:
        net = net.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    if args.resume and state.get("optimizer"):
        opt.load_state_dict(state["optimizer"])
    amp = dev.type == "cuda" and not args.no_amp
    scaler = torch.amp.GradScaler("cuda") if amp else None
    rng = np.random.default_rng(args.seed + start_it)
    if rng_state is not None:
        rng.bit_generator.state = rng_state

    workers = max(0, int(getattr(args, "workers", 0) or 0))
    if args.synthetic:
        source = SyntheticSource(args.pool_size, tuple(args.synth_shape), args.hard_fraction, seed=args.seed)
        if next_seed is not None:
            source.next_seed = int(next_seed)
        if not workers:  # with workers, each worker fills its own pool
            for done, total in source.fill():
                yield Progress(done, total, f"generating synthetic volume {done}/{total}")
    else:
        paths = find_samples(args.data, args.split)["train"]
        samples = []
        for i, pth in enumerate(paths):
            samples.append(load_sample(pth, rng))
            yield Progress(i + 1, len(paths), f"indexed {pth.name}")
        source = VolumeSource(samples)
    val = _validation_set(args, rng) if args.val_every else []

    log = (out_dir / "log.jsonl").open("a")
    train_info = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                  if k not in ("func",) and not callable(v)}

    def checkpoint(path, it, extra_scores=None):
        save_model(path, net, cfg, params, optimizer=opt.state_dict(), iteration=it, best_score=best,
                   next_seed=getattr(source, "next_seed", None), rng_state=rng.bit_generator.state,
                   train_info=train_info, scores=extra_scores or {})

    def validate(it):
        net.eval()
        m = NeuronModel(net=net, config=cfg, params=params, device=dev)
        scores = {}
        for name, raw, gt in val:
            gen = predict_iter(raw, m)
            try:
                while True:
                    next(gen)
            except StopIteration as stop:
                pred = stop.value.labels
            scores[name] = float(_evaluate(gt, pred)["avF1"])
        net.train()
        return scores

    from napari_neuroseg.runtime.budget import TimeBudget

    t0 = time.time()
    net.train()
    it = start_it
    total = int(args.iterations)
    budget = TimeBudget(args.max_minutes, start_it, total)
    stream = _batches_in_workers(source, args, patch, start_it) if workers else None
    try:
        for it in range(start_it, args.iterations):
            if it >= total:  # the time budget shortened the run
                it -= 1
                break
            if stream is not None:
                x, fg, affs, amask = next(stream)
            else:
                x, fg, affs, amask = _batch(source, args.batch_size, patch, rng, args.elastic)
            for g in opt.param_groups:
                g["lr"] = _lr(it, total, args.lr)
            xt = torch.from_numpy(x).to(dev)
            if cl:
                xt = xt.contiguous(memory_format=torch.channels_last_3d)
            fgt, aft, amt = (torch.from_numpy(a).to(dev) for a in (fg, affs, amask))
            opt.zero_grad(set_to_none=True)
            if amp:
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
            done = it + 1
            total = budget.after_step(done)
            rec = {"iteration": done, "loss": float(loss.detach()), **parts, "lr": opt.param_groups[0]["lr"],
                   "time": round(time.time() - t0, 1)}
            if args.val_every and val and (done % args.val_every == 0 or done == total):
                scores = validate(done)
                rec["val"] = scores
                score = float(np.mean(list(scores.values())))
                if score > best:
                    best = score
                    checkpoint(out_dir / "best.pt", done, scores)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            if done % args.save_every == 0 or done == total:
                checkpoint(last, done)
            yield Progress(done, total, f"loss {float(loss.detach()):.4f}" + (f" val {rec['val']}" if "val" in rec else ""))
    finally:
        log.close()
        if stream is not None:
            stream.close()
    # export the weights-only model
    src = out_dir / "best.pt" if (out_dir / "best.pt").is_file() else last
    if src.is_file():
        ck = read_checkpoint(src)
        net_e = NetConfig(**ck["config"]).build()
        net_e.load_state_dict(ck["state_dict"])
        save_model(out_dir / "model.pt", net_e, NetConfig(**ck["config"]), params,
                   train_info=train_info, scores=ck.get("scores", {}), iteration=ck.get("iteration"))
    return {"iterations": it + 1, "best_score": best, "out": str(out_dir)}


def main(args: argparse.Namespace) -> int:
    """Run training, printing one line per 10 iterations (and every validation)."""
    gen = train_iter(args)
    try:
        while True:
            pr = next(gen)
            if not args.quiet and (pr.step % 10 == 0 or "val" in pr.message or pr.step == pr.total
                                   or "generating" in pr.message or "indexed" in pr.message):
                print(f"[{pr.step}/{pr.total}] {pr.message}", flush=True)
    except StopIteration as stop:
        res = stop.value
    print(f"done: {res['iterations']} iterations, best validation avF1 {res['best_score']:.3f}, "
          f"model written to {Path(res['out']) / 'model.pt'}", file=sys.stdout)
    return 0
