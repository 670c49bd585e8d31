"""``neuroseg train nuclei``: the StarDist-3D training command line (from scratch or fine-tuning).

Named steps: :func:`run_nuclei` reads the data (:func:`_read_training_pairs`,
:func:`_synthetic_data`), builds the :class:`~napari_neuroseg.models.stardist3d.train.TrainSettings`
(:func:`_settings`) and trains from scratch (:func:`_train_from_scratch`, which saves the scale
the model was trained at) or fine-tunes (:func:`_finetune`). The trainer is
``models/stardist3d/train.py``; this module imports it only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from napari_neuroseg.cli._flags import add_flag
from napari_neuroseg.cli._progress import ProgressPrinter


# long function: argparse declaration list, one add_argument per flag
def add_nuclei_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuroseg train nuclei`` (defaults: ``TrainSettings``; cheap: no heavy imports).
    One flat list of ``add_argument`` calls (over 80 lines by nature: one line per flag)."""
    from napari_neuroseg.models.stardist3d.train import FINETUNE_EVERY, FINETUNE_WARMUP, TrainSettings
    from napari_neuroseg.models.stardist3d.training.finetune import FINETUNE_RECIPE

    d = TrainSettings()
    data = parser.add_argument_group("data")
    data.add_argument("--images", nargs="+", default=[], metavar="PATH",
                      help="training images (files, or folders whose files are read in sorted order)")
    data.add_argument("--labels", nargs="+", default=[], metavar="PATH",
                      help="instance label volumes matching --images one to one")
    data.add_argument("--synthetic", type=int, default=0, metavar="N",
                      help="also generate N synthetic nuclei volumes (napari_neuroseg.synth.make_nuclei)")
    data.add_argument("--synthetic-shape", type=int, nargs=3, default=(48, 128, 128), metavar=("Z", "Y", "X"))
    data.add_argument("--synthetic-seed", type=int, default=0, help="seed of the first synthetic volume")
    data.add_argument("--synthetic-vary", type=float, default=0.25,
                      help="random variation of the synthetic appearance (0 = default settings)")
    data.add_argument("--synthetic-radius", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                      help="nucleus radius range of the synthetic data (physical units)")
    data.add_argument("--synthetic-axial-blur", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                      help="draw each synthetic volume's Z blur (PSF sigma, Z voxels) from this range")
    data.add_argument("--synthetic-dome", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                      help="draw each synthetic volume's rim dimming (0 = flat-topped nuclei, < 1) from this range")
    data.add_argument("--synthetic-randomize", type=float, default=0.0, metavar="FRACTION",
                      help="this fraction (0-1) of the synthetic volumes gets the wide domain randomisation "
                           "(NucleiSettings.randomized_wide; docs/synth.md)")
    data.add_argument("--synthetic-share", type=float, default=0.5, metavar="FRACTION",
                      help="fine-tuning (--init-from) with --images and --synthetic N: this fraction of the "
                           "training patches comes from the synthetic volumes, the rest from the annotated ones, "
                           "so the model keeps what it knows while it learns your data (default %(default)s); "
                           "the synthetic volumes are used at the base model's scale as generated and only for "
                           "training (validation stays on the annotated data)")
    data.add_argument("--val-fraction", type=float, default=d.val_fraction,
                      help="fraction of volumes held out (training from scratch on several volumes)")
    data.add_argument("--voxel-size", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                      help="voxel size of the training images in µm (default: from their metadata); fine-tuning: "
                           "they are resampled to the base model's scale; from scratch: saved as the model's scale")
    data.add_argument("--val-images", nargs="+", default=None, metavar="PATH",
                      help="fine-tuning: validation images (default: a 25%% slab of each training volume is held out)")
    data.add_argument("--val-labels", nargs="+", default=None, metavar="PATH", help="labels of --val-images")
    add_flag(parser, "-o", "--output", required=True, metavar="MODEL_DIR", help="output model folder")
    parser.add_argument("--resume", action="store_true", help="continue from MODEL_DIR/checkpoint.pt")
    add_flag(parser, "--init-from", default=None, metavar="MODEL",
                        help="fine-tune: start from this model (neuroseg_nuclei, a registered name or a folder); "
                             "its network, scale and thresholds are the starting point")
    parser.add_argument("--name", default=None,
                        help="fine-tuning: name in the user model folder (default: the output folder's name)")
    parser.add_argument("--no-register", action="store_true",
                        help="fine-tuning: do not register the model in the user model folder")
    net = parser.add_argument_group("network")
    net.add_argument("--backbone", choices=("unet", "resnet"), default="unet")
    net.add_argument("--n-rays", type=int, default=64)
    net.add_argument("--grid", type=int, nargs=3, default=(1, 2, 2), metavar=("Z", "Y", "X"))
    net.add_argument("--anisotropy", type=float, nargs=3, default=(2.0, 1.0, 1.0), metavar=("Z", "Y", "X"))
    net.add_argument("--n-filter-base", type=int, default=16)
    net.add_argument("--unet-depth", type=int, default=2)
    net.add_argument("--conv-after", type=int, default=64, help="filters of the 'features' conv")
    tr = parser.add_argument_group("training")
    add_flag(tr, "--steps", type=int, default=None,
                    help=f"training steps (with --max-minutes: at most this many; default {d.steps}, fine-tuning "
                         f"{FINETUNE_RECIPE['steps']}: the learning-rate schedule ends there however long the budget)")
    tr.add_argument("--batch-size", type=int, default=d.batch_size)
    tr.add_argument("--patch-size", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                    help=f"default {' '.join(map(str, d.patch_size))}; fine-tuning: the largest up to "
                         "32 48 48 (at the model's scale) that the data holds")
    tr.add_argument("--lr", type=float, default=None,
                    help=f"peak learning rate (Adam; default {d.learning_rate:g}, fine-tuning "
                         f"{FINETUNE_RECIPE['learning_rate']:g})")
    tr.add_argument("--warmup", type=int, default=None,
                    help=f"learning-rate warm-up steps (default {d.warmup_steps}; fine-tuning {FINETUNE_WARMUP})")
    tr.add_argument("--no-augment", action="store_true")
    tr.add_argument("--val-every", type=int, default=None,
                    help=f"validation loss every N steps (default {d.val_every}; fine-tuning {FINETUNE_EVERY})")
    tr.add_argument("--checkpoint-every", type=int, default=None,
                    help=f"save every N steps (default {d.checkpoint_every}; fine-tuning {FINETUNE_EVERY})")
    tr.add_argument("--no-optimize-thresholds", action="store_true")
    tr.add_argument("--last-weights", action="store_true",
                    help="end with the last weights instead of the best ones (lowest validation loss; "
                         "fine-tuning: highest held-out score)")
    tr.add_argument("--select-by", choices=("score", "loss"), default=None,
                    help="fine-tuning: keep the weights of the best held-out segmentation score (default) "
                         "or of the lowest validation loss")
    tr.add_argument("--patience", type=int, default=None,
                    help=f"fine-tuning: stop when the held-out score has not improved in N checks "
                         f"(default {FINETUNE_RECIPE['patience']}; 0 = run to the budget)")
    tr.add_argument("--freeze", choices=("none", "encoder"), default=None,
                    help="fine-tuning: keep these layers as they are (default none; encoder = the "
                         "U-Net's contracting path)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    tr.add_argument("--workers", type=int, default=0, help="background processes making patches")
    tr.add_argument("--log-every", type=int, default=10)
    tr.add_argument("--budget-clock", choices=("wall", "cpu"), default="wall",
                    help="what --max-minutes counts: wall-clock time (default) or this process's CPU time "
                         "divided by --threads (benchmarks on a shared machine)")
    tr.add_argument("--max-minutes", type=float, default=None,
                    help="wall-clock budget: the learning-rate schedule is shortened so the run ends in time")




def _expand(paths: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir() and path.suffix != ".zarr":
            out.extend(sorted(q for q in path.iterdir() if not q.name.startswith(".")))
        else:
            out.append(path)
    return out


def run_nuclei(args: argparse.Namespace) -> int:
    """Run ``neuroseg train nuclei``."""
    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.models.stardist3d.train import budget_clock, check_patch_budget, default_config

    image_paths, label_paths = _expand(args.images), _expand(args.labels)
    if len(image_paths) != len(label_paths):
        raise NeurosegError(
            f"{len(image_paths)} image files but {len(label_paths)} label files",
            fix="give one label file per image (same order)",
        )
    if not image_paths and args.synthetic <= 0:
        raise NeurosegError("no training data", fix="give --images/--labels or --synthetic N")
    if not 0.0 <= getattr(args, "synthetic_share", 0.5) <= 1.0:
        raise NeurosegError(f"--synthetic-share {args.synthetic_share} is outside [0, 1]", fix="pass e.g. 0.5")
    # the network and the patches are checked against the free memory before any data is read
    config = default_config(
        n_rays=args.n_rays, grid=args.grid, anisotropy=args.anisotropy, backbone=args.backbone,
        n_filter_base=args.n_filter_base, unet_n_depth=args.unet_depth, net_conv_after=args.conv_after,
    )
    config.check_size(training=True)
    settings = _settings(args, fine_tuning=bool(args.init_from))
    check_patch_budget(settings.patch_size, args.batch_size, config,
                       [tuple(args.synthetic_shape)] * max(0, args.synthetic))
    clock = budget_clock(getattr(args, "budget_clock", "wall"))
    t_start = clock()
    base = _finetune_base(args.init_from) if args.init_from else None
    if base is not None and args.synthetic > 0 and not image_paths:
        raise NeurosegError("fine-tuning needs annotated volumes: --synthetic only mixes synthetic volumes in",
                            fix="give --images/--labels with --init-from, or train from scratch without --init-from")
    images, labels, voxel_sizes = _read_training_pairs(image_paths, label_paths, args)
    synthetic = _synthetic_data(args) if args.synthetic > 0 else ([], [])
    if base is None and args.synthetic > 0:
        images, labels, voxel_sizes = images + synthetic[0], labels + synthetic[1], voxel_sizes + [None] * args.synthetic
    log_every = max(1, int(args.log_every))
    show = ProgressPrinter(stream=sys.stdout, in_place=False, one_per_step=False, fmt=lambda p: p.message,
                           when=lambda p: p.step % log_every == 0 or "val" in p.message
                           or not p.message.startswith("step"))

    if base is not None:
        return _finetune(args, base, images, labels, voxel_sizes, image_paths, label_paths, settings, show,
                         t_start, clock, synthetic=synthetic)
    return _train_from_scratch(args, config, images, labels, voxel_sizes, settings, show)


def _settings(args: argparse.Namespace, *, fine_tuning: bool):
    """The trainer's settings from the flags (fine-tuning has its own defaults for the intervals)."""
    from napari_neuroseg.models.stardist3d.train import TrainSettings
    from napari_neuroseg.models.stardist3d.training.finetune import finetune_settings

    d = TrainSettings()
    s = TrainSettings(
        steps=args.steps if args.steps is not None else d.steps, batch_size=args.batch_size,
        patch_size=tuple(args.patch_size) if args.patch_size else d.patch_size,
        learning_rate=args.lr if args.lr is not None else d.learning_rate,
        augment=not args.no_augment, val_fraction=args.val_fraction,
        val_every=args.val_every or d.val_every, checkpoint_every=args.checkpoint_every or d.checkpoint_every,
        warmup_steps=args.warmup if args.warmup is not None else d.warmup_steps,
        optimize_thresholds=not args.no_optimize_thresholds, keep_best=not args.last_weights,
        seed=args.seed, device=args.device, threads=args.threads, workers=args.workers,
        max_minutes=args.max_minutes, init_from=args.init_from, budget_clock=args.budget_clock,
    )
    if not fine_tuning:
        return s
    # the fine-tuning recipe for everything not given on the command line
    freeze = getattr(args, "freeze", None)
    return finetune_settings(
        s, steps=args.steps, learning_rate=args.lr, warmup_steps=args.warmup, val_every=args.val_every,
        checkpoint_every=args.checkpoint_every, select_by=getattr(args, "select_by", None),
        patience=getattr(args, "patience", None),
        freeze=None if freeze is None else (() if freeze == "none" else (freeze,)),
        score_every=args.val_every)


def _read_training_pairs(image_paths, label_paths, args):
    """The (image, labels) volumes and their voxel sizes (None: unknown), each file checked
    (real, 3D, fits in memory) before it is read."""
    import numpy as np

    from napari_neuroseg.io import read_image, read_labels
    from napari_neuroseg.io.checks import require_3d, require_real_image
    from napari_neuroseg.runtime.memory import require_volume_fits

    images, labels, voxel_sizes = [], [], []
    for ip, lp in zip(image_paths, label_paths):
        vol = read_image(ip, lazy=True)
        lab = read_labels(lp, lazy=True)
        require_real_image(vol.data, ip, what="training image")
        require_3d(vol, ip, what="training image", allow_channels=True)
        require_3d(lab, lp, what="training label volume")
        for path, arr, extra in ((ip, vol.data, 4), (lp, lab, 0)):  # images become float32 too
            require_volume_fits(arr.shape, np.dtype(arr.dtype).itemsize + extra, what="reading the training volume",
                                path=path, fix="train on crops of the volume")
        images.append(np.asarray(vol.data))
        labels.append(np.asarray(lab))
        voxel_sizes.append(_voxel_size(args, vol))
    return images, labels, voxel_sizes


def _synthetic_data(args):
    """``--synthetic N`` volumes (``synthetic_dataset``), with one line saying what was made."""
    from napari_neuroseg.models.stardist3d.train import synthetic_dataset

    kw = {}
    if args.synthetic_radius:
        kw["radius"] = tuple(float(r) for r in args.synthetic_radius)
    t = time.perf_counter()
    xs, ys = synthetic_dataset(
        args.synthetic, args.synthetic_shape, seed=args.synthetic_seed, anisotropy=args.anisotropy,
        vary=args.synthetic_vary, axial_blur=args.synthetic_axial_blur,
        dome=args.synthetic_dome, randomize=args.synthetic_randomize, **kw,
    )
    print(f"generated {len(xs)} synthetic volumes of {tuple(args.synthetic_shape)} "
          f"(seeds {args.synthetic_seed}..{args.synthetic_seed + len(xs) - 1}) in {time.perf_counter() - t:.0f} s",
          flush=True)
    return xs, ys


def _train_from_scratch(args, config, images, labels, voxel_sizes, settings, show) -> int:
    """Train a new model; it is saved with the scale of its training data (``scale.json``)."""
    from napari_neuroseg.models.stardist3d.train import train
    from napari_neuroseg.runtime.scale import training_data_scale

    if not args.resume:
        scale = training_data_scale(labels, voxel_sizes, args.anisotropy, object_name="nucleus")
        settings.model_scale = scale.to_dict()
    result = train(images, labels, config, out_dir=args.output, settings=settings, resume=args.resume, callback=show)
    th = result.thresholds
    print(f"saved {args.output} (thresholds prob {th.prob:.3f}, nms {th.nms:g}"
          + (f", validation mean F1 {result.val_f1:.3f}" if result.val_f1 is not None else "") + ")")
    return 0


def _voxel_size(args: argparse.Namespace, vol) -> tuple[float, float, float] | None:
    """The training image's voxel size: ``--voxel-size``, else the file's metadata (None: unknown)."""
    from napari_neuroseg.runtime.scale import parse_voxel_size, voxel_size_from_volume

    if getattr(args, "voxel_size", None) is not None:
        return parse_voxel_size(args.voxel_size, what="--voxel-size")
    return voxel_size_from_volume(vol)


def _finetune_base(source: str):
    """The base model of a fine-tuning run (a StarDist-3D model; a neuron model is refused)."""
    from napari_neuroseg.models.stardist3d.model import StarDist3D
    from napari_neuroseg.models.stardist3d.pretrained import resolve_model_path
    from napari_neuroseg.models.stardist3d.train import require_stardist_model

    path = resolve_model_path(source)
    require_stardist_model(path, source)
    return StarDist3D.load(path, device="cpu")


def _read_pairs(image_paths, label_paths, args):
    import numpy as np

    from napari_neuroseg.io import read_image, read_labels

    xs, ys, vss = [], [], []
    for ip, lp in zip(image_paths, label_paths):
        vol = read_image(ip)
        xs.append(np.asarray(vol.data))
        ys.append(np.asarray(read_labels(lp)))
        vss.append(_voxel_size(args, vol))
    return xs, ys, vss


def _finetune(args, base, images, labels, voxel_sizes, image_paths, label_paths, settings, show,
              t_start: float, clock=time.monotonic, synthetic=([], [])) -> int:
    """``neuroseg train nuclei --init-from MODEL``: train at the base model's scale, hold out a
    slab for validation, choose thresholds there, write a model card and register the model.
    ``synthetic`` (``--synthetic N``): volumes mixed in (:func:`_mix_synthetic`)."""
    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.models.stardist3d.train import FINETUNE_END_RESERVE, quick_nms_backend, train
    from napari_neuroseg.models.stardist3d.training.finetune import f1_at, fit_patch_size, prepare_finetune_data

    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))
    val_x = val_y = val_vs = None
    if args.val_images or args.val_labels:
        if len(args.val_images or []) != len(args.val_labels or []):
            raise NeurosegError("--val-images and --val-labels differ in number", fix="give one label file per image")
        val_x, val_y, val_vs = _read_pairs(_expand(args.val_images), _expand(args.val_labels), args)
    data = prepare_finetune_data(images, labels, voxel_sizes, base.scale, paths=image_paths,
                                 val_images=val_x, val_labels=val_y, val_voxel_sizes=val_vs)
    if not args.patch_size:
        settings.patch_size = fit_patch_size([y.shape for y in data.labels], base.config.divisor)
    settings.model_scale = None if base.scale is None else base.scale.to_dict()
    settings.nms_backend = nms_backend = quick_nms_backend()
    real_val = (list(data.val_images), list(data.val_labels))  # the scores before/after: the annotated part
    if synthetic[0]:
        _mix_synthetic(args, data, synthetic, settings)
    f1_before = f1_at(base, *real_val, nms=nms_backend)
    if settings.max_minutes is not None:
        total = float(settings.max_minutes)
        used = (clock() - t_start) / 60.0
        settings.max_minutes = max(0.05, total * (1 - FINETUNE_END_RESERVE) - used)
    print(f"fine-tuning {base.name} at its scale: training part(s) {[tuple(y.shape) for y in data.labels]}, "
          f"held-out {[tuple(y.shape) for y in data.val_labels]}, patch {tuple(settings.patch_size)}; "
          f"F1@0.5 of the base model on the held-out part {f1_before:.3f}", flush=True)
    for note in data.notes:
        print(note, flush=True)
    out = Path(args.output)
    result = train(data.images, data.labels, base.config_dict(), out_dir=out, settings=settings,
                   val_images=data.val_images, val_labels=data.val_labels, resume=args.resume, callback=show)
    f1_after = f1_at(result.model, *real_val, nms=nms_backend)
    info = _finetune_info(args, out, image_paths, label_paths, data, result, settings,
                          separate_val=val_x is not None, f1=(f1_before, f1_after),
                          minutes=(clock() - t_start) / 60.0)
    _write_finetune_record(out, info)
    print(f"F1@0.5 on the held-out part: base {f1_before:.3f} -> fine-tuned {f1_after:.3f} "
          f"({result.step} steps, {info['minutes']:.1f} min)", flush=True)
    if not args.no_register:
        _register(args, out, info)
    th = result.model.thresholds
    print(f"saved {out} (thresholds prob {th.prob:.3f}, nms {th.nms:g})")
    return 0


def _mix_synthetic(args, data, synthetic, settings) -> None:
    """Add the ``--synthetic`` volumes to a fine-tuning run's training volumes, with
    ``--synthetic-share`` of the patches drawn from them (``TrainSettings.sample_weights``,
    ``training.data.mix_weights``). The validation (kept weights, thresholds, scores) stays on the
    annotated data: the synthetic volumes hold far more nuclei and would decide it otherwise
    (measured in scripts/train_nuclei_real.sh, recipe A)."""
    from napari_neuroseg.models.stardist3d.training.data import mix_weights

    xs, ys = synthetic
    share = float(args.synthetic_share)
    n_real = len(data.labels)
    data.images += list(xs)
    data.labels += list(ys)
    settings.sample_weights = tuple(mix_weights(data.labels[:n_real], data.labels[n_real:], 1.0 - share))
    data.notes.append(f"{len(xs)} synthetic volumes mixed in (seeds {args.synthetic_seed}.."
                      f"{args.synthetic_seed + len(xs) - 1}, {share:.0%} of the training patches); "
                      "validation on the annotated data only")


def _finetune_info(args, out: Path, image_paths, label_paths, data, result, settings, *, separate_val: bool,
                   f1: tuple[float, float], minutes: float) -> dict:
    """What ``finetune.json`` and the model card record about a fine-tuning run."""
    import torch

    from napari_neuroseg.runtime.device import select_device

    model = result.model
    th = model.thresholds
    validation = ("separate volumes" if separate_val else
                  "; ".join(f"slab {sp['axis']} >= {sp['start']} of {sp['shape_at_model_scale']} at the model's scale "
                            f"({sp['objects_val']} objects held out, {sp['objects_train']} trained on)"
                            for sp in data.split))
    return {
        "name": args.name or out.name, "base": str(args.init_from),
        "images": [str(p) for p in image_paths], "labels": [str(p) for p in label_paths],
        "voxel_sizes": data.voxel_sizes,
        "model_voxel_size": None if model.scale is None else list(model.scale.voxel_size),
        "factors": data.factors, "validation": validation,
        "steps": result.step, "batch_size": settings.batch_size, "patch_size": list(settings.patch_size),
        "minutes": minutes, "device": str(select_device(settings.device)), "threads": torch.get_num_threads(),
        "prob": th.prob, "nms": th.nms, "f1_before": f1[0], "f1_after": f1[1], "notes": data.notes,
    }


def _write_finetune_record(out: Path, info: dict) -> None:
    """``finetune.json`` (atomically) and ``MODEL_CARD.md``."""
    from napari_neuroseg.io.atomic import atomic_output
    from napari_neuroseg.models.stardist3d.training.finetune import write_model_card

    with atomic_output(out / "finetune.json") as tmp:
        tmp.write_text(json.dumps(info, indent=1, default=str))
    write_model_card(out, info)


def _register(args, out: Path, info: dict) -> None:
    """Register the fine-tuned model in the user model folder (``--model NAME`` then finds it)."""
    from napari_neuroseg.models.registry import register_model

    entry = register_model(out, kind="nuclei", name=args.name or out.name, voxel_size=info["model_voxel_size"],
                           scores={"f1_0.5_heldout_before": info["f1_before"], "f1_0.5_heldout_after": info["f1_after"]},
                           info={"base": str(args.init_from), "steps": info["steps"],
                                 "minutes": round(info["minutes"], 2)})
    print(f"registered as {entry['name']!r} ({entry['path']}): use --model {entry['name']}", flush=True)
