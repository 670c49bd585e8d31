"""Training of StarDist-3D models (``neuroseg train nuclei`` and a Python API).

Example::

    from napari_neuroseg.models.stardist3d.train import TrainSettings, default_config, train
    result = train(images, labels, default_config(n_rays=64), out_dir="models/my_nuclei",
                   settings=TrainSettings(steps=2000))
    labels, details = result.model.predict_instances(image)

What it does, as ``stardist``'s ``StarDist3D.train`` + ``optimize_thresholds``:

- volumes are percentile-normalised (1, 99.8); a validation split is held out by volume;
- random patches (foreground-biased), augmented (flips, 90° rotations in YX, intensity scale and
  shift, noise) before their targets are computed: ``edt_prob`` on the grid and
  ``star_dist3D(labels, rays, grid)`` (on CUDA by default computed per batch on the GPU with
  ``star_dist3d_torch``, bit-exact: ``TrainSettings.targets_on_device``);
- loss ``1 · BCE(prob) + 0.2 · prob-weighted MAE(dist)`` (+ 1e-4 background regularisation);
  Adam with a warm-up and cosine decay of the learning rate;
- the output folder is always a loadable model in the project's format (``config.json``,
  ``thresholds.json``, ``weights.pt``) plus ``checkpoint.pt`` (optimizer state, step, best weights)
  and ``training.json`` (history), each file replaced atomically every ``checkpoint_every`` steps
  and at the end; ``resume=True`` continues from ``checkpoint.pt``;
- at the end the best weights (lowest validation loss) are kept and the probability and NMS
  thresholds are optimised on the validation volumes (mean F1 over IoU 0.3, 0.5, 0.7).

The command line ``neuroseg train nuclei`` is ``cli/_train_nuclei.py``; this module imports only
the standard library at module level (the CLI reads ``TrainSettings`` defaults when the parser is
built).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from napari_neuroseg.models.stardist3d.config import NORM_PERCENTILES  # standard library only
from napari_neuroseg.runtime.progress import Progress, relay  # standard library only

__all__ = [
    "TrainProgress",
    "TrainResult",
    "TrainSettings",
    "default_config",
    "synthetic_dataset",
    "train",
    "train_iter",
]

CHECKPOINT = "checkpoint.pt"
HISTORY = "training.json"
CHECKPOINT_FORMAT = "neuroseg-stardist3d-checkpoint"


@dataclass
class TrainSettings:
    """Training knobs (the ``train_*`` keys of a StarDist config, and a few more)."""

    steps: int = 2000
    batch_size: int = 2
    patch_size: tuple[int, int, int] = (32, 96, 96)
    learning_rate: float = 1e-3
    min_lr_fraction: float = 0.05  # cosine decay down to learning_rate * this
    warmup_steps: int = 50
    loss_weights: tuple[float, float] = (1.0, 0.2)
    background_reg: float = 1e-4
    foreground_prob: float = 0.9
    augment: bool = True
    val_fraction: float = 0.15
    n_val_patches: int = 8
    val_every: int = 100
    checkpoint_every: int = 100
    optimize_thresholds: bool = True
    nms_threshs: tuple[float, ...] = (0.3, 0.4, 0.5)
    # edge exclusions searched with the thresholds (stardist's 2 first: it wins ties)
    borders: tuple[int, ...] = (2, 0)
    iou_threshs: tuple[float, ...] = (0.3, 0.5, 0.7)
    keep_best: bool = True  # end with the weights of the lowest validation loss
    percentiles: tuple[float, float] = NORM_PERCENTILES
    seed: int = 0
    device: str | None = "auto"
    threads: int | None = None
    workers: int = 0  # background processes computing patches and targets
    max_minutes: float | None = None  # wall-clock budget: the schedule shrinks to end in time
    # distance targets computed per batch on the training device (star_dist3d_torch, bit-exact
    # with stardist's C++ star_dist3D; workers then make only patches and prob targets);
    # None: on when training on CUDA
    targets_on_device: bool | None = None
    # the targets of each patch (stardist's C++ star_dist3D and edt_prob, which hold the GIL for
    # their whole call: 0.2-0.8 s a patch on CPU) computed in the persistent worker process of
    # runtime/subprocess.py instead of this thread: set by a GUI (the Fine-tune dock), whose
    # viewer otherwise freezes while a training thread computes them (not with targets_on_device)
    targets_in_worker_process: bool = False
    # fine-tuning: start from the weights of this model (bundled name or folder) instead of a
    # random initialisation (a new run: step 0, fresh optimizer and schedule)
    init_from: str | None = None
    # the physical scale (``ModelScale.to_dict()``) the model is trained at and saved with
    # (scale.json); None: that of ``init_from`` (if it has one)
    model_scale: dict | None = None
    # NMS backend of the threshold search ("neuroseg": numba, compiled on first use; "stardist": C++)
    nms_backend: str = "neuroseg"
    # what --max-minutes counts: "wall" (wall-clock) or "cpu" (this process's CPU time divided by
    # the torch threads: the wall time the run would take with its cores to itself, for
    # benchmarks on a shared machine)
    budget_clock: str = "wall"
    # parameters kept as they are (names starting with one of these prefixes; "encoder" stands
    # for the U-Net's contracting path: pre_convs, down, middle)
    freeze: tuple[str, ...] = ()
    # what picks the kept weights (keep_best): "loss" (lowest validation loss) or "score" (highest
    # held-out segmentation score, training.finetune.heldout_score, every score_every steps)
    select_by: str = "loss"
    score_every: int = 0  # 0: at every validation
    # probability thresholds the held-out score tries (the best counts)
    score_probs: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
    # stop after this many scored validations without a better score (0: never stop early)
    patience: int = 0
    # how often each training volume is drawn for a patch (one weight per volume given to train();
    # when validation volumes are split off here, the weights of the rest count); None: by size.
    # training.data.mix_weights makes them for annotated volumes mixed with synthetic ones
    sample_weights: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class TrainProgress(Progress):
    """A training step's :class:`~napari_neuroseg.runtime.progress.Progress` with the numbers a
    widget plots live: the step's ``loss``, ``val_loss`` when validated at this step, the learning
    rate and the seconds since the start."""

    loss: float | None = None
    val_loss: float | None = None
    val_score: float | None = None  # held-out segmentation score (select_by="score")
    lr: float | None = None
    seconds: float | None = None


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: Any  # StarDist3D
    history: list[dict[str, float]] = field(default_factory=list)
    thresholds: Any = None  # Thresholds
    val_f1: float | None = None  # mean F1 over iou_threshs at the chosen thresholds
    val_scores: dict | None = None
    out_dir: Path | None = None
    step: int = 0


def default_config(
    *,
    n_rays: int = 64,
    grid: Sequence[int] = (1, 2, 2),
    anisotropy: Sequence[float] | None = (2.0, 1.0, 1.0),
    backbone: str = "unet",
    n_filter_base: int = 16,
    unet_n_depth: int = 2,
    resnet_n_blocks: int = 2,
    net_conv_after: int = 64,
    n_channel_in: int = 1,
):
    """A small StarDist-3D config for CPU training (GoldenSpiral rays with the anisotropy)."""
    from napari_neuroseg.models.stardist3d.config import StarDistConfig

    aniso = None if anisotropy is None else [float(a) for a in anisotropy]
    cfg = StarDistConfig.from_dict(
        {
            "n_rays": int(n_rays),
            "grid": [int(g) for g in grid],
            "anisotropy": aniso,
            "backbone": backbone,
            "n_channel_in": int(n_channel_in),
            "rays_json": {"name": "Rays_GoldenSpiral", "kwargs": {"n": int(n_rays), "anisotropy": aniso}},
            "unet_n_depth": int(unet_n_depth),
            "unet_n_filter_base": int(n_filter_base),
            "net_conv_after_unet": int(net_conv_after),
            "resnet_n_blocks": int(resnet_n_blocks),
            "resnet_n_filter_base": int(n_filter_base),
            "net_conv_after_resnet": int(net_conv_after),
        }
    )
    return cfg


def _check_range(
    name: str, value: Sequence[float] | None, example: str, below: float = math.inf
) -> tuple[float, float] | None:
    """``value`` as a (min, max) pair with 0 <= min <= max < ``below``, or a clear error."""
    from napari_neuroseg.errors import NeurosegError

    if value is None:
        return None
    lo_hi = tuple(float(v) for v in value)
    if len(lo_hi) != 2 or not 0 <= lo_hi[0] <= lo_hi[1] < below:
        bound = "" if below == math.inf else f" < {below:g}"
        raise NeurosegError(f"{name} range {tuple(value)} is not (min, max) with 0 <= min <= max{bound}",
                            fix=f"pass e.g. {example}")
    return lo_hi  # type: ignore[return-value]


def synthetic_dataset(
    n: int,
    shape: Sequence[int] = (48, 128, 128),
    *,
    seed: int = 0,
    anisotropy: Sequence[float] = (2.0, 1.0, 1.0),
    vary: float = 0.25,
    axial_blur: Sequence[float] | None = None,
    dome: Sequence[float] | None = None,
    randomize: float = 0.0,
    **kw,
) -> tuple[list, list]:
    """``n`` synthetic nuclei volumes (:func:`napari_neuroseg.synth.make_nuclei`, seeds
    ``seed .. seed + n − 1``), each with its appearance varied by ``vary`` (see
    ``NucleiSettings.randomized``); ``**kw`` override single ``NucleiSettings`` fields.

    Per-volume ranges, each drawn uniformly with its own seed (adding one leaves the others' draws
    unchanged):

    * ``axial_blur=(lo, hi)``: the Z blur (PSF sigma in Z voxels), so that a model learns the
      elongated axial PSF of real stacks (confocal to widefield) instead of one sharpness; the
      Y/X blur stays as ``settings``/``vary`` make it;
    * ``dome=(lo, hi)``: how much dimmer the rim of a nucleus is than its centre
      (``NucleiSettings.dome``), so that the label boundary is learned for flat-topped and for
      dome-shaped intensity profiles alike;
    * ``randomize=p``: each volume is, with probability ``p``, drawn with the wide domain
      randomisation instead (``NucleiSettings.randomized_wide``: PSF per axis, noise, background,
      illumination, gamma, textured / rim- or centre-bright / dim nuclei, sizes ×0.5–3, another
      acquisition anisotropy resampled back); the other volumes are made as above."""
    import numpy as np

    from napari_neuroseg.synth import NucleiSettings, make_nuclei

    axial = _check_range("axial blur", axial_blur, "(1.0, 4.5) Z voxels")
    domes = _check_range("dome", dome, "(0.0, 0.6)", below=1.0)
    if not 0.0 <= float(randomize) <= 1.0:
        from napari_neuroseg.errors import NeurosegError

        raise NeurosegError(f"synthetic randomize fraction {randomize} is outside [0, 1]", fix="pass e.g. 0.75")
    images, labels = [], []
    base = NucleiSettings().replace(**kw) if kw else NucleiSettings()
    for i in range(int(n)):
        s = seed + i
        settings = base.randomized(np.random.default_rng(s + 7_919), vary) if vary > 0 else base
        if axial is not None:
            z = float(np.random.default_rng(s + 104_729).uniform(*axial))
            settings = settings.replace(psf_sigma=(z, *settings.psf_sigma[1:]))
        if domes is not None:
            settings = settings.replace(dome=float(np.random.default_rng(s + 15_485_863).uniform(*domes)))
        if randomize > 0:
            pick = np.random.default_rng(s + 32_452_843)
            if pick.random() < randomize:
                settings = base.randomized_wide(pick)
        x, y = make_nuclei(tuple(shape), anisotropy=tuple(anisotropy), seed=s, settings=settings)
        images.append(x)
        labels.append(y)
    return images, labels


# ---------------------------------------------------------------------------- training loop
def _split(n: int, fraction: float, rng) -> tuple[list[int], list[int]]:
    if n < 2 or fraction <= 0:
        return list(range(n)), []
    n_val = min(n - 1, max(1, int(round(n * fraction))))
    order = rng.permutation(n)
    return sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val])


def _lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup_steps:
        return s.learning_rate * (step + 1) / s.warmup_steps
    t = min(1.0, (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps))
    lo = s.learning_rate * s.min_lr_fraction
    return lo + 0.5 * (s.learning_rate - lo) * (1 + math.cos(math.pi * t))


def patch_targets(labels, rays, grid, anisotropy, *, device=None, worker_process: bool = False):
    """:func:`~napari_neuroseg.models.stardist3d.training.data.make_targets` of one label patch,
    in the persistent worker process (``runtime/subprocess.py``) when ``worker_process`` and no
    ``device`` is given: stardist's C++ holds the GIL for its whole call, there it holds that
    process's (``TrainSettings.targets_in_worker_process``)."""
    from napari_neuroseg.models.stardist3d.training.data import make_targets

    if worker_process and device is None:
        from napari_neuroseg.runtime.subprocess import get_worker

        return get_worker().call(make_targets, labels, rays, tuple(grid), anisotropy)
    return make_targets(labels, rays, grid, anisotropy, device=device)


class _BatchMaker:
    """Makes the batch of step ``k`` from a seed derived from (seed, k): reproducible and resumable."""

    def __init__(self, sampler, rays, grid, anisotropy, settings: TrainSettings, labels_only: bool = False):
        from napari_neuroseg.models.stardist3d.training.augment import AugmentSettings

        self.sampler, self.rays, self.grid, self.anisotropy = sampler, rays, tuple(grid), anisotropy
        self.settings = settings
        self.augment = AugmentSettings(enabled=settings.augment)
        # labels_only: return the label patches (as stardist sees them: uint16, here in int32)
        # instead of the distance targets, which are then computed on the training device
        self.labels_only = bool(labels_only)

    def __call__(self, k: int):
        import numpy as np

        from napari_neuroseg.models.stardist3d.training.augment import augment_patch
        from napari_neuroseg.models.stardist3d.training.data import prob_target

        rng = np.random.default_rng([self.settings.seed, 1, k])
        xs, ps, ds = [], [], []
        for _ in range(self.settings.batch_size):
            x, y = self.sampler.sample(rng)
            x, y = augment_patch(x, y, rng, self.augment)
            if self.labels_only:
                p = prob_target(y, self.grid, self.anisotropy)
                d = np.asarray(y).astype(np.uint16).astype(np.int32)
            else:
                p, d = patch_targets(y, self.rays, self.grid, self.anisotropy,
                                     worker_process=self.settings.targets_in_worker_process)
            xs.append(x)
            ps.append(p[np.newaxis])
            ds.append(d)
        return np.stack(xs), np.stack(ps), np.stack(ds)


class _BatchStream:
    """Batches for steps ``start, start+1, ...``, computed in ``workers`` background processes
    (a torch DataLoader) or inline."""

    def __init__(self, maker: _BatchMaker, start: int, stop: int, workers: int):
        self.maker, self.start, self.stop, self.workers = maker, start, stop, workers

    def __iter__(self):
        if self.workers <= 0:
            for k in range(self.start, self.stop):
                yield self.maker(k)
            return
        import torch.utils.data as tud

        maker, start, stop = self.maker, self.start, self.stop

        class _DS(tud.Dataset):
            def __len__(self):
                return stop - start

            def __getitem__(self, i):
                return maker(start + i)

        loader = tud.DataLoader(
            _DS(), batch_size=None, shuffle=False, num_workers=self.workers, prefetch_factor=2,
            persistent_workers=False, worker_init_fn=_worker_init,
        )
        for batch in loader:
            yield tuple(b.numpy() if hasattr(b, "numpy") else b for b in batch)


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def _failed_save(err: BaseException) -> OSError | None:
    """The OSError behind a failed save: the error itself, or the cause of io.atomic's
    NeurosegError (it reports a full disk as one); None for anything else."""
    if isinstance(err, OSError):
        return err
    return err.__cause__ if isinstance(err.__cause__, OSError) else None


def _save_model_files(model, out_dir: Path) -> None:
    """Write the model's own-format files into ``out_dir`` (each replaced atomically), leaving
    other files (checkpoint, history) in place."""
    from napari_neuroseg.io.atomic import replace_path

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=out_dir))  # scratch: the model's files are moved out
    try:
        saved = model.save(tmp / "m")
        # weights first, thresholds and config after: a reader never sees new thresholds with old weights
        for name in ("weights.pt", "thresholds.json", "config.json"):
            replace_path(saved / name, out_dir / name)
        if (saved / "scale.json").is_file():  # the scale it was trained at (fine-tuning: the base model's)
            replace_path(saved / "scale.json", out_dir / "scale.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _state_cpu(net) -> dict:
    return {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}


def _training_data(images, labels, val_images, val_labels, s: TrainSettings, config):
    """Checked, split (``val_fraction`` of the volumes, unless validation volumes are given) and
    normalised training data: ``(x_train, y_train, x_val, y_val)``."""
    import numpy as np

    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.models.stardist3d.training.data import check_pairs, normalize_volume

    images = [np.asarray(x) for x in images]
    labels = [np.asarray(y) for y in labels]
    check_pairs(images, labels, config.n_channel_in)
    div = config.divisor
    if any(p % d for p, d in zip(s.patch_size, div)):
        raise NeurosegError(
            f"patch size {tuple(s.patch_size)} is not a multiple of the network's divisor {div}",
            fix=f"use multiples of {div}",
        )
    if s.steps < 1 or s.batch_size < 1:
        raise NeurosegError(f"steps={s.steps}, batch_size={s.batch_size} must be ≥ 1", fix="use positive values")
    check_patch_budget(s.patch_size, s.batch_size, config, [x.shape for x in images])

    rng = np.random.default_rng(s.seed)
    if s.sample_weights is not None and len(s.sample_weights) != len(images):
        raise NeurosegError(f"{len(s.sample_weights)} sampling weights for {len(images)} training volumes",
                            fix="give one weight per training volume (or none: sampling by size)")
    if val_images is None:
        tr_idx, va_idx = _split(len(images), s.val_fraction, rng)
        if s.sample_weights is not None:  # the weights of the volumes left for training
            s.sample_weights = tuple(float(s.sample_weights[i]) for i in tr_idx)
        val_images = [images[i] for i in va_idx]
        val_labels = [labels[i] for i in va_idx]
        images = [images[i] for i in tr_idx]
        labels = [labels[i] for i in tr_idx]
    else:
        val_labels = [np.asarray(y) for y in (val_labels or [])]
        check_pairs(val_images, val_labels, config.n_channel_in)
    x_tr = [normalize_volume(x, s.percentiles) for x in images]
    x_va = [normalize_volume(x, s.percentiles) for x in val_images]
    y_tr = [np.asarray(y) for y in labels]
    y_va = [np.asarray(y) for y in val_labels]
    return x_tr, y_tr, x_va, y_va


def _starting_state(model, opt, s: TrainSettings, config, ckpt_path: Path | None, out: Path | None, resume: bool):
    """Weights, optimiser and bookkeeping to start from: the checkpoint (``resume``), the
    ``init_from`` model's weights, or the fresh ones; the model's scale (``s.model_scale``, else
    the ``init_from`` model's, kept in the settings for a resume). Returns
    ``(start step, history, best_val, best_state, best_score, stale)``."""
    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.models.stardist3d.config import StarDistConfig

    start, history, best_val, best_state = 0, [], math.inf, None
    best_score, stale = -math.inf, 0
    if resume:
        if ckpt_path is None or not ckpt_path.is_file():
            raise NeurosegError("nothing to resume: no checkpoint.pt", path=out, fix="train without --resume first")
        from napari_neuroseg.models.safe_load import load_torch_file

        ck = load_torch_file(ckpt_path, what="checkpoint", fix="train from scratch (without --resume)")
        if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
            raise NeurosegError("not a neuroseg training checkpoint", path=ckpt_path, fix="train from scratch")
        if StarDistConfig.from_dict(ck["config"]).divisor != config.divisor or ck["config"].get("n_rays") != config.n_rays:
            raise NeurosegError(
                "the checkpoint was made with another network config", path=ckpt_path,
                fix="resume with the same architecture options",
            )
        model.load_weights(ck["state_dict"], ckpt_path)
        opt.load_state_dict(ck["optimizer"])
        start = int(ck["step"])
        history = list(ck.get("history", []))
        best_val = float(ck.get("best_val", math.inf))
        best_state = ck.get("best_state")
        best_score = float(ck.get("best_score", -math.inf))
        stale = int(ck.get("stale", 0))
    elif s.init_from:
        _init_weights(model, s.init_from)
    if s.model_scale is not None:
        from napari_neuroseg.runtime.scale import ModelScale

        model.scale = ModelScale.from_dict(s.model_scale)
    elif model.scale is not None:
        s.model_scale = model.scale.to_dict()  # kept in the checkpoint's settings (resume)
    return start, history, best_val, best_state, best_score, stale


def _validation_batches(x_va, y_va, s: TrainSettings, rays, config, target_device) -> list:
    """Fixed validation patches (no augmentation) with their targets (distances computed on
    ``target_device`` when given)."""
    import numpy as np

    from napari_neuroseg.models.stardist3d.training.data import PatchSampler

    val_batches = []
    if x_va:
        vs = PatchSampler(x_va, y_va, s.patch_size, s.foreground_prob)
        vrng = np.random.default_rng([s.seed, 2])
        for _ in range(s.n_val_patches):
            x, y = vs.sample(vrng)
            p, d = patch_targets(y, rays, config.grid, config.anisotropy, device=target_device,
                                 worker_process=s.targets_in_worker_process)
            val_batches.append((x[np.newaxis], p[np.newaxis, np.newaxis], d[np.newaxis]))
    return val_batches


class _TrainRun:
    """One training run: the state the steps share (settings, model, optimiser, best weights,
    loss and score, staleness, history, last save) and the named steps :func:`train_iter` runs:
    set-up (here), :meth:`batches`, :meth:`train_step`, :meth:`validate`, :meth:`checkpoint`,
    :meth:`stop_training` and :meth:`finish`."""

    def __init__(self, images, labels, config, *, out_dir, settings, val_images, val_labels, resume, name):
        import numpy as np
        import torch

        from napari_neuroseg.models.stardist3d.config import StarDistConfig, Thresholds
        from napari_neuroseg.models.stardist3d.model import StarDist3D
        from napari_neuroseg.models.stardist3d.training.data import PatchSampler
        from napari_neuroseg.runtime.budget import TimeBudget
        from napari_neuroseg.runtime.device import select_device

        s = self.s = replace(settings) if settings is not None else TrainSettings()  # a copy: a budget may shorten it
        config = config or default_config()
        if isinstance(config, dict):
            config = StarDistConfig.from_dict(config)
        self.config = config
        if s.threads:
            torch.set_num_threads(int(s.threads))
        self.x_tr, self.y_tr, self.x_va, self.y_va = _training_data(images, labels, val_images, val_labels, s, config)

        self.device = device = select_device(s.device)
        out = self.out = None if out_dir is None else Path(out_dir)
        self.ckpt_path = None if out is None else out / CHECKPOINT
        config.extra.update(
            {
                "train_patch_size": list(s.patch_size),
                "train_loss_weights": list(s.loss_weights),
                "train_background_reg": s.background_reg,
                "train_foreground_only": s.foreground_prob,
                "train_learning_rate": s.learning_rate,
                "train_batch_size": s.batch_size,
            }
        )
        torch.manual_seed(s.seed)  # reproducible initial weights
        self.model = StarDist3D(config, Thresholds(), name=name or (out.name if out else "stardist3d"), path=out,
                                device=str(device))
        net = self.net = self.model.net
        self.frozen = _freeze(net, s.freeze)
        self.opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=s.learning_rate)
        self.start, self.history, self.best_val, self.best_state, self.best_score, self.stale = _starting_state(
            self.model, self.opt, s, config, self.ckpt_path if resume else None, out, resume)

        self.rays = self.model.rays
        self.on_device = device.type == "cuda" if s.targets_on_device is None else bool(s.targets_on_device)
        sampler = PatchSampler(self.x_tr, self.y_tr, s.patch_size, s.foreground_prob, weights=s.sample_weights)
        self.maker = _BatchMaker(sampler, self.rays, config.grid, config.anisotropy, s, labels_only=self.on_device)
        self.val_batches = _validation_batches(self.x_va, self.y_va, s, self.rays, config,
                                               device if self.on_device else None)
        # channels-last 3D on CPU: oneDNN's convolution backward is ~10x faster than with the
        # default layout (measured: 0.15 s vs 1.7 s for an 8-channel 3³ conv on 2×16×64×64)
        self.fmt = torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format
        net.to(memory_format=self.fmt)
        self.val_raw = [np.asarray(x) for x in self.x_va]  # normalised (C, Z, Y, X) held-out volumes
        self.score_every = int(s.score_every) or int(s.val_every)
        self.budget = TimeBudget(s.max_minutes, self.start, s.steps, clock=budget_clock(s.budget_clock))
        self.total = self._total()
        net.train()
        self.t0 = time.perf_counter()
        self.last_saved = self.start

    def _total(self) -> int:
        """Progress steps: the training steps and, with a threshold search, one more."""
        return self.s.steps + (1 if self.s.optimize_thresholds and self.x_va else 0)

    # ------------------------------------------------------------------ data
    def batches(self):
        """The training batches of steps ``start+1 .. steps`` (made ahead by ``workers``)."""
        return _BatchStream(self.maker, self.start, self.s.steps, self.s.workers)

    def to_t(self, a, image: bool = False):
        import numpy as np
        import torch

        t = a.to(self.device) if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
        return t.contiguous(memory_format=self.fmt) if image else t

    def dist_targets(self, db):
        """The batch's (B, n_rays, Z', Y', X') distance targets: given, or (``on_device``)
        computed from its label patches on the training device."""
        if not self.on_device:
            return self.to_t(db)
        from napari_neuroseg.models.stardist3d.training.star_dist_torch import star_dist3d_torch

        return star_dist3d_torch(self.to_t(db), self.rays, self.config.grid,
                                 device=self.device).permute(0, 4, 1, 2, 3).contiguous()

    # ------------------------------------------------------------------ one step
    def train_step(self, k: int, batch) -> tuple[int, dict, dict]:
        """One optimisation step on batch ``k``: ``(step, record, loss parts)``; the time budget
        may shorten the run (``s.steps``) here."""
        from napari_neuroseg.errors import NeurosegError
        from napari_neuroseg.models.stardist3d.training.losses import stardist_loss

        s, opt = self.s, self.opt
        xb, pb, db = batch
        lr = _lr_at(k, s)
        for g in opt.param_groups:
            g["lr"] = lr
        pp, dd = self.net(self.to_t(xb, True))
        loss, parts = stardist_loss(pp, dd, self.to_t(pb), self.dist_targets(db), s.loss_weights, s.background_reg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not math.isfinite(parts["loss"]):
            raise NeurosegError(f"the loss became {parts['loss']} at step {k + 1}", fix="lower the learning rate")
        step = k + 1
        if self.budget.after_step(step) != s.steps:
            s.steps = self.budget.total
            self.total = self._total()
        return step, {"step": step, "lr": lr, **parts, "time": time.perf_counter() - self.t0}, parts

    # ------------------------------------------------------------------ validation
    def validation_loss(self) -> float | None:
        """The mean loss on the fixed validation patches, None without held-out volumes."""
        import torch

        from napari_neuroseg.models.stardist3d.training.losses import stardist_loss

        if not self.val_batches:
            return None
        s, net = self.s, self.net
        net.eval()
        tot = 0.0
        with torch.no_grad():
            for x, p, d in self.val_batches:
                pp, dd = net(self.to_t(x, True))
                tot += stardist_loss(pp, dd, self.to_t(p), self.to_t(d), s.loss_weights, s.background_reg)[1]["loss"]
        net.train()
        return tot / len(self.val_batches)

    def heldout_score(self) -> float | None:
        """The held-out segmentation score (select_by="score"), None without held-out volumes."""
        if not self.val_raw:
            return None
        from napari_neuroseg.models.stardist3d.training.finetune import heldout_score

        self.net.eval()
        try:
            return heldout_score(self.model, self.val_raw, self.y_va, nms=self.s.nms_backend,
                                 probs=self.s.score_probs)[0]
        finally:
            self.net.train()

    def validate(self, step: int, rec: dict) -> bool:
        """The validation loss (every ``val_every`` steps) and the held-out score (``select_by``
        "score", every ``score_every``) into ``rec``, keeping the best weights; True when the
        score has not improved for ``patience`` checks (stop early)."""
        s = self.s
        if step % s.val_every == 0 or step == s.steps:
            v = self.validation_loss()
            if v is not None:
                rec["val_loss"] = v
                if s.select_by != "score" and v < self.best_val:
                    self.best_val, self.best_state = v, _state_cpu(self.net)
        if s.select_by == "score" and (step % self.score_every == 0 or step == s.steps):
            sc = self.heldout_score()
            if sc is not None:
                rec["val_score"] = sc
                v = rec.get("val_loss", math.inf)
                # a better score, or as good with a lower validation loss
                if sc > self.best_score + 1e-9 or (abs(sc - self.best_score) <= 1e-9 and v < self.best_val):
                    self.stale = 0 if sc > self.best_score + 1e-9 else self.stale + 1
                    self.best_score, self.best_val, self.best_state = sc, min(v, self.best_val), _state_cpu(self.net)
                else:
                    self.stale += 1
                if s.patience and self.stale >= s.patience and step < s.steps:
                    return True
        return False

    def end_at(self, step: int) -> None:
        """End the run after ``step`` (early stop)."""
        self.s.steps = step
        self.total = self._total()

    def step_progress(self, step: int, rec: dict, parts: dict, stop_early: bool) -> TrainProgress:
        s = self.s
        msg = f"step {step}/{s.steps} loss {parts['loss']:.4f} (prob {parts['prob_loss']:.4f}, dist {parts['dist_loss']:.3f})"
        if "val_loss" in rec:
            msg += f" val {rec['val_loss']:.4f}"
        if "val_score" in rec:
            msg += f" score {rec['val_score']:.3f}"
        if stop_early:
            msg += f" (no better held-out score in {self.stale} checks: stopping)"
        return TrainProgress(step, self.total, msg, loss=float(parts["loss"]), val_loss=rec.get("val_loss"),
                             val_score=rec.get("val_score"), lr=float(rec["lr"]), seconds=float(rec["time"]))

    # ------------------------------------------------------------------ saving
    def checkpoint(self, step: int) -> None:
        """``checkpoint.pt`` (everything a resume needs), the model files and training.json."""
        import torch

        from napari_neuroseg.errors import NeurosegError
        from napari_neuroseg.io.atomic import atomic_write_file

        out = self.out
        if out is None:
            return
        out.mkdir(parents=True, exist_ok=True)
        blob = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "state_dict": _state_cpu(self.net),
            "optimizer": self.opt.state_dict(),
            "best_val": self.best_val,
            "best_state": self.best_state,
            "best_score": self.best_score,
            "stale": self.stale,
            "history": self.history,
            "config": json.loads(json.dumps(self.model.config_dict())),
            "settings": json.loads(json.dumps(self.s.to_dict())),
        }
        try:
            atomic_write_file(self.ckpt_path, lambda fh: torch.save(blob, fh), fsync=False)
            _save_model_files(self.model, out)
            _write_history(out, self.history, self.s, self.model, None)
        except (OSError, NeurosegError) as err:
            cause = _failed_save(err)
            if cause is None:
                raise
            raise _save_error(cause, out, step, self.last_saved) from cause

    # ------------------------------------------------------------------ the end
    def stop_training(self) -> None:
        """The network back in evaluation mode, default memory layout, nothing frozen."""
        import torch

        self.net.eval()
        self.net.to(memory_format=torch.contiguous_format)
        for p in self.frozen:
            p.requires_grad_(True)

    def finish(self) -> Generator:
        """The best weights (``keep_best``), the threshold search, the last save: yields its
        progress and returns the :class:`TrainResult`."""
        from napari_neuroseg.errors import NeurosegError
        from napari_neuroseg.models.stardist3d.training.thresholds import optimize_thresholds_iter
        from napari_neuroseg.runtime.progress import Progress

        s, model, out, total = self.s, self.model, self.out, self.total
        result = TrainResult(model=model, history=self.history, out_dir=out, step=s.steps)
        if s.keep_best and self.best_state is not None:
            model.load_weights(self.best_state, self.ckpt_path or Path("best weights"))
        if s.optimize_thresholds and self.x_va:
            gen = optimize_thresholds_iter(
                model, self.x_va, self.y_va, nms_threshs=s.nms_threshs, iou_threshs=s.iou_threshs,
                borders=s.borders, nms=s.nms_backend,
            )
            th, f1, th_hist = yield from relay(gen, lambda p: Progress(s.steps, total, f"thresholds: {p.message}"))
            model.thresholds = th
            result.thresholds, result.val_f1 = th, f1
            result.val_scores = {"mean_f1": f1, "search": {k: [list(t) for t in v] for k, v in th_hist.items()}}
        else:
            result.thresholds = model.thresholds
        if out is not None and (self.last_saved != s.steps or s.keep_best or s.optimize_thresholds):
            self.checkpoint(s.steps)
            try:
                _write_history(out, self.history, s, model, result.val_scores)
            except (OSError, NeurosegError) as err:
                cause = _failed_save(err)
                if cause is None:
                    raise
                raise _save_error(cause, out, s.steps, s.steps) from cause
        yield Progress(total, total, "done")
        return result


def train_iter(
    images: Sequence,
    labels: Sequence,
    config=None,
    *,
    out_dir: str | Path | None = None,
    settings: TrainSettings | None = None,
    val_images: Sequence | None = None,
    val_labels: Sequence | None = None,
    resume: bool = False,
    name: str | None = None,
) -> Generator:
    """Generator form of :func:`train`: yields :class:`~napari_neuroseg.runtime.progress.Progress`
    once per step (and during validation / threshold optimisation), returns a :class:`TrainResult`.
    Closing it early (cancel) leaves the last checkpoint in ``out_dir``."""
    run = _TrainRun(images, labels, config, out_dir=out_dir, settings=settings, val_images=val_images,
                    val_labels=val_labels, resume=resume, name=name)
    s = run.s
    try:
        for k, batch in zip(range(run.start, s.steps), run.batches()):
            if k >= s.steps:  # the time budget shortened the run
                break
            step, rec, parts = run.train_step(k, batch)
            stop_early = run.validate(step, rec)
            run.history.append(rec)
            if stop_early:  # the held-out score stopped improving: end here
                run.end_at(step)
                rec["early_stop"] = True
            if step % s.checkpoint_every == 0 or step == s.steps:
                run.checkpoint(step)
                run.last_saved = step
            yield run.step_progress(step, rec, parts, stop_early)
            if stop_early:
                break
    finally:
        run.stop_training()
    return (yield from run.finish())


#: what ``TrainSettings.freeze`` "encoder" means for the U-Net (its contracting path)
ENCODER_PREFIXES = ("pre_convs.", "down.", "middle.")


def _freeze(net, prefixes: Sequence[str]) -> list:
    """Set ``requires_grad=False`` on the parameters whose names start with one of ``prefixes``
    ("encoder": :data:`ENCODER_PREFIXES`); returns them. A NeurosegError if a prefix names none."""
    from napari_neuroseg.errors import NeurosegError

    out = []
    for pre in prefixes:
        group = ENCODER_PREFIXES if pre == "encoder" else (pre,)
        hit = [p for n, p in net.named_parameters() if n.startswith(group)]
        if not hit:
            raise NeurosegError(f"no network parameter to freeze matches {pre!r}",
                                fix="use 'encoder' or a layer name prefix from the model's weights")
        out += hit
    for p in out:
        p.requires_grad_(False)
    return out


def _save_error(err: OSError, out: Path, step: int, last_saved: int):
    """A NeurosegError for a failed save (a full disk, no permission): the files of the last good
    save were replaced atomically, so they are still whole."""
    import errno

    from napari_neuroseg.errors import NeurosegError

    why = "the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else f"{err.strerror or err}"
    kept = (f"the model and checkpoint of step {last_saved} are intact" if last_saved > 0
            else "nothing was saved yet")
    return NeurosegError(f"saving the model at step {step} failed: {why} ({kept})", path=out,
                         fix="free disk space (or choose another -o folder) and continue with --resume")


#: fine-tuning defaults (see docs/finetune.md for the measurements behind them)
FINETUNE_WARMUP = 10
FINETUNE_EVERY = 25
#: share of --max-minutes kept for the end of a fine-tuning run (thresholds, scores, model card)
FINETUNE_END_RESERVE = 0.06

_SAME_FOR_FINE_TUNING = ("n_dim", "n_channel_in", "n_rays", "grid", "anisotropy", "backbone", "rays_json")


def _init_weights(model, source: str) -> None:
    """Copy the weights of ``source`` (bundled model name or folder) into ``model``; a clear
    error if its network differs (rays, grid, anisotropy, backbone or layer shapes)."""
    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.models.stardist3d.model import StarDist3D
    from napari_neuroseg.models.stardist3d.pretrained import resolve_model_path

    path = resolve_model_path(source)
    require_stardist_model(path, source)
    other = StarDist3D.load(path, device="cpu")
    mine, theirs = model.config_dict(), other.config_dict()
    diff = [k for k in _SAME_FOR_FINE_TUNING if mine.get(k) != theirs.get(k)]
    if diff:
        raise NeurosegError(
            f"cannot start from this model: its {', '.join(diff)} differ from the training config",
            path=path, fix="use the same network options as that model (see its config.json)",
        )
    model.load_weights(other.net.state_dict(), path)
    model.scale = other.scale


def require_stardist_model(path: Path, name: str | None = None) -> None:
    """A NeurosegError unless ``path`` is a StarDist-3D model (folder or own ``.pt``): a neuron
    model (or anything else) given to ``train nuclei --init-from`` is named as such."""
    from napari_neuroseg.errors import NeurosegError

    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        return
    if path.is_file() and path.suffix == ".pt":
        from napari_neuroseg.models.safe_load import load_torch_file

        blob = load_torch_file(path, what="model file", fix="give a StarDist-3D model folder or name")
        if isinstance(blob, dict) and blob.get("format") == "neuroseg-stardist3d":
            return
        if isinstance(blob, dict) and str(blob.get("model_type", "")).startswith("napari-neuroseg/neurons"):
            raise NeurosegError(
                f"{name or path.name!r} is a neuron model, not a StarDist-3D nuclei model", path=path,
                fix="fine-tune it with 'neuroseg train neurons --init-from ...', or give a nuclei model "
                    "(e.g. neuroseg_nuclei) to 'train nuclei'")
    raise NeurosegError(f"{name or path.name!r} is not a StarDist-3D model", path=path,
                        fix="give a nuclei model folder (config.json + weights) or a name such as neuroseg_nuclei")


def _write_history(out: Path, history, s: TrainSettings, model, val_scores) -> None:
    doc = {
        "settings": s.to_dict(),
        "thresholds": {"prob": model.thresholds.prob, "nms": model.thresholds.nms},
        "validation": val_scores,
        "history": history,
    }
    from napari_neuroseg.io.atomic import atomic_write_text

    atomic_write_text(out / HISTORY, json.dumps(doc, indent=1), fsync=False)


def train(images: Sequence, labels: Sequence, config=None, *, callback=None, **options: Any) -> TrainResult:
    """Train a StarDist-3D model on (image, labels) volumes (ZYX or CZYX images, integer labels).

    ``config``: a :class:`StarDistConfig` or dict (default :func:`default_config`); ``out_dir``:
    where the model and checkpoints go (``None``: keep in memory); validation volumes are split off
    the training ones (``settings.val_fraction``) unless given (``val_images``/``val_labels``);
    the options are those of :func:`train_iter`, which this runs to completion.
    ``callback(progress)`` sees each step. Returns a :class:`TrainResult` with the trained
    ``model`` (best weights, optimised thresholds)."""
    from napari_neuroseg.runtime.progress import run_to_completion

    return run_to_completion(train_iter(images, labels, config, **options), callback)


# ---------------------------------------------------------------------------- command line
def check_patch_budget(patch_size: Sequence[int], batch_size: int, config, volume_shapes: Sequence = ()) -> int:
    """Refuse patch and batch sizes whose training step cannot fit in the free memory, before
    anything is allocated (a 1000^3 patch otherwise grows until stardist's C++ crashes).

    A rough estimate per patch voxel and batch item: the image and labels, the probability and
    ``n_rays`` distance targets on the grid, and ~64 bytes per base filter for the network's
    activations and their gradients; plus the padded copies of volumes smaller than a patch.
    Returns the estimate in bytes."""
    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.runtime.memory import require_memory

    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or min(patch) < 1 or int(batch_size) < 1:
        raise NeurosegError(f"patch size {patch} and batch size {batch_size} must be positive",
                            fix="give three positive patch sizes (Z Y X) and a batch size >= 1")
    voxels = math.prod(patch)
    grid = math.prod(config.grid)
    base = config.unet_n_filter_base if config.backbone == "unet" else config.resnet_n_filter_base
    per_voxel = 8 + 4 * (1 + config.n_rays) / grid + 64 * base
    need = int(batch_size) * voxels * per_voxel
    for shape in volume_shapes:
        sp = tuple(int(v) for v in tuple(shape)[-3:])
        if any(s < p for s, p in zip(sp, patch)):
            need += math.prod(max(s, p) for s, p in zip(sp, patch)) * 8
    require_memory(need, what=f"training on patches of {patch} voxels (batch size {batch_size})",
                   fix="use a smaller --patch-size (e.g. 32 96 96) or --batch-size")
    return int(need)


def budget_clock(kind: str = "wall"):
    """The clock of a time budget: ``time.monotonic`` ("wall"), or ("cpu") this process's CPU
    seconds divided by torch's thread count."""
    from napari_neuroseg.errors import NeurosegError

    if kind == "wall":
        return time.monotonic
    if kind != "cpu":
        raise NeurosegError(f"unknown budget clock {kind!r}", fix="use 'wall' or 'cpu'")

    def cpu() -> float:
        import torch

        return time.process_time() / max(1, torch.get_num_threads())

    return cpu


def quick_nms_backend() -> str:
    """The NMS backend for the short predictions of a fine-tuning run: stardist's C++ when it is
    installed (no ~30 s numba compilation out of a few minutes' budget), else the numba one.
    Both make the same decisions (``models/stardist3d/nms.py``)."""
    import importlib.util

    return "stardist" if importlib.util.find_spec("stardist") is not None else "neuroseg"
