"""``neuroseg train nuclei|neurons``: the training command lines.

Each model's arguments are turned into its trainer's settings (``TrainSettings`` for StarDist-3D,
``NeuronTrainSettings`` for neurons); the trainers themselves live in ``models/*/train.py`` and
are imported only when a subcommand runs, so ``neuroseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from napari_neuroseg.cli._flags import add_flag
from napari_neuroseg.cli._progress import ProgressPrinter

#: path flags of each model's training command (inputs, outputs), checked by ``cli.main``
_IO_FLAGS = {
    "nuclei": ({"--images": "images", "--labels": "labels", "--init-from": "init_from"}, {"--output": "output"}),
    "neurons": ({"--data": "data", "--split": "split", "--init-from": "init_from"}, {"--output": "output"}),
}


def register(sub: argparse._SubParsersAction) -> None:
    from napari_neuroseg.cli._train_nuclei import add_nuclei_arguments, run_nuclei

    p = sub.add_parser("train", help="train a model (nuclei or neurons)")
    models = p.add_subparsers(dest="model", metavar="MODEL", required=True)
    mp = models.add_parser("nuclei", help="train the StarDist-3D nuclei model")
    add_nuclei_arguments(mp)
    mp.set_defaults(func=run_nuclei, io_flags=_IO_FLAGS["nuclei"])
    mp = models.add_parser("neurons", help="train the FISBe neuron segmenter")
    add_neuron_arguments(mp)
    mp.set_defaults(func=run_neurons, io_flags=_IO_FLAGS["neurons"])


# ---------------------------------------------------------------------------------------- neurons
def add_neuron_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``neuroseg train neurons`` (defaults: ``NeuronTrainSettings``)."""
    from napari_neuroseg.models.neurons.train import NeuronTrainSettings

    from napari_neuroseg.models.neurons.train import NEURON_FINETUNE_RECIPE

    d = NeuronTrainSettings()
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="DIR", help="folder of FISBe .zarr samples (volumes/raw, volumes/gt_instances; "
                     "DIR/train + DIR/val, or a split file), or DIR/raw + DIR/labels pairs")
    src.add_argument("--synthetic", action="store_true", help="train on on-the-fly synthetic FISBe-like volumes")
    p.add_argument("--split", metavar="FILE", help='split file: JSON {"train": [...], "val": [...]} or "NAME,SPLIT" lines')
    add_flag(p, "-o", "--output", default=d.output, help="output folder for checkpoints (default: %(default)s)")
    add_flag(p, "--steps", type=int, default=d.steps, help="total training steps (default: %(default)s)")
    p.add_argument("--patch", type=int, nargs=3, default=d.patch, metavar=("Z", "Y", "X"),
                   help="patch size, multiples of 2**(levels-1) (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate (cosine decay; default {d.lr:g}, fine-tuning "
                        f"{NEURON_FINETUNE_RECIPE['lr']:g})")
    p.add_argument("--base", type=int, default=d.base, help="filters at full resolution")
    p.add_argument("--levels", type=int, default=d.levels, help="U-Net resolution levels")
    add_flag(p, "--init-from", metavar="MODEL",
             help="start from these weights (fine-tuning): neuroseg_neurons, a registered name or a .pt file")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt")
    p.add_argument("--save-every", type=int, default=None,
                   help=f"checkpoint interval (steps; default {d.save_every}, fine-tuning "
                        f"{NEURON_FINETUNE_RECIPE['save_every']})")
    p.add_argument("--val-every", type=int, default=None,
                   help=f"validation interval (steps; 0 = never; default {d.val_every}, fine-tuning "
                        f"{NEURON_FINETUNE_RECIPE['val_every']})")
    p.add_argument("--holdout", type=float, default=d.holdout_fraction, metavar="FRACTION",
                   help="fine-tuning on --data without validation samples: hold out this fraction of each "
                        "volume (a slab of its longest axis) for validation (default: %(default)s; 0 = none)")
    p.add_argument("--no-tune-postprocess", action="store_true",
                   help="fine-tuning: keep the base model's post-processing values instead of choosing "
                        "them (and best.pt or last.pt) on the annotated volumes")
    p.add_argument("--val-crop", type=int, nargs=3, default=d.val_crop, metavar=("Z", "Y", "X"),
                   help="centre crop of real validation volumes (default: %(default)s)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads for torch (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--pool-size", type=int, default=d.pool_size, help="synthetic: volumes kept in memory")
    p.add_argument("--synth-shape", type=int, nargs=3, default=d.synth_shape, metavar=("Z", "Y", "X"))
    p.add_argument("--hard-fraction", type=float, default=d.hard_fraction, help="synthetic: fraction of hard volumes")
    p.add_argument("--synth-wide", type=float, default=d.synth_wide,
                   help="synthetic: fraction of volumes with the wide domain randomisation (default: %(default)s)")
    p.add_argument("--real-morphology", metavar="DIR", default=None,
                   help="synthetic: folder of FISBe .zarr samples whose ground-truth masks are rendered with "
                        "synthetic appearance (their raw is never read)")
    p.add_argument("--real-fraction", type=float, default=d.real_fraction,
                   help="synthetic: fraction of volumes rendered from --real-morphology (default: %(default)s)")
    p.add_argument("--elastic", action="store_true", help="add elastic deformation to the augmentation")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock budget: the learning-rate schedule is shortened to end in time, "
                        "then the run stops with a checkpoint")
    p.add_argument("--budget-clock", choices=("wall", "cpu"), default="wall",
                   help="what --max-minutes counts: wall-clock time (default) or this process's CPU time "
                        "divided by --threads (benchmarks on a shared machine)")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="background processes making training batches (use on a GPU; 0 = inline)")
    p.add_argument("--voxel-size", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="voxel size of the training data in µm, saved as the model's scale (default: the "
                        "--init-from model's, else FISBe's 0.44 µm)")
    p.add_argument("--quiet", action="store_true")


def neuron_settings(args: argparse.Namespace):
    """The ``NeuronTrainSettings`` of parsed ``neuroseg train neurons`` arguments."""
    from napari_neuroseg.models.neurons.train import NEURON_FINETUNE_RECIPE, NeuronTrainSettings

    d = NeuronTrainSettings()
    # fine-tuning (--init-from) on annotated volumes (--data) has its own defaults for what the
    # user did not give; continued training on synthetic data keeps the training defaults
    rec = NEURON_FINETUNE_RECIPE if (args.init_from and args.data) else {}

    def pick(given, key):
        return given if given is not None else rec.get(key, getattr(d, key))

    return NeuronTrainSettings(
        output=args.output, data=args.data, synthetic=bool(args.synthetic), split=args.split, steps=args.steps,
        patch=tuple(args.patch), batch_size=args.batch_size, lr=pick(args.lr, "lr"), base=args.base,
        levels=args.levels, init_from=args.init_from, resume=args.resume, save_every=pick(args.save_every, "save_every"),
        val_every=pick(args.val_every, "val_every"), holdout_fraction=getattr(args, "holdout", d.holdout_fraction),
        tune_postprocess=bool(rec.get("tune_postprocess")) and not getattr(args, "no_tune_postprocess", False),
        budget_clock=getattr(args, "budget_clock", "wall"),
        val_crop=tuple(args.val_crop), device=args.device, threads=args.threads, seed=args.seed,
        pool_size=args.pool_size, synth_shape=tuple(args.synth_shape), hard_fraction=args.hard_fraction,
        synth_wide=args.synth_wide, real_morphology=args.real_morphology, real_fraction=args.real_fraction,
        elastic=args.elastic, amp=not args.no_amp, max_minutes=args.max_minutes, workers=args.workers,
        voxel_size=None if args.voxel_size is None else tuple(args.voxel_size),
    )


def run_neurons(args: argparse.Namespace) -> int:
    """Run ``neuroseg train neurons``, printing one line per 10 steps (and every validation)."""
    from pathlib import Path

    from napari_neuroseg.models.neurons.train import train

    def when(pr) -> bool:
        return (pr.step % 10 == 0 or "val" in pr.message or pr.step == pr.total
                or "generating" in pr.message or "indexed" in pr.message)

    show = ProgressPrinter(quiet=args.quiet, stream=sys.stdout, in_place=False, when=when, one_per_step=False)
    res = train(neuron_settings(args), show)
    if res.get("postprocess"):
        pp = res["postprocess"]
        print(f"post-processing chosen on the annotated volumes ({pp['weights']} weights): {pp['chosen']} (avF1 "
              f"{pp['avF1_before']:.3f} with the base values -> {pp['avF1']:.3f})")
    print(f"done: {res['iterations']} iterations, best validation avF1 {res['best_score']:.3f}, "
          f"model written to {Path(res['out']) / 'model.pt'}")
    return 0
