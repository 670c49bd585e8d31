"""Fine-tuning from arrays as one progress generator: what the Fine-tune dock runs (issue 13).

:func:`finetune_nuclei_iter` is the in-memory twin of ``neuroseg train nuclei --init-from``
(same steps, same public pieces: :func:`~napari_neuroseg.models.stardist3d.training.finetune.prepare_finetune_data`
for the base model's scale and the held-out slab,
:func:`~napari_neuroseg.models.stardist3d.train.train_iter`,
:func:`~napari_neuroseg.models.stardist3d.training.finetune.write_model_card`,
:func:`~napari_neuroseg.models.registry.register_model`). It yields :class:`FineTuneProgress`
items that carry the whole curve so far (training loss per step, validation loss and the F1 at
IoU 0.5 on the held-out part at every validation, computed from the checkpoint just written),
an ETA and the phase, and returns a :class:`FineTuneResult` (scores before/after on the held-out
part, the registered entry). Closing the generator (Cancel) stops at the current step; the last
checkpoint in ``out_dir`` stays loadable and :func:`finetune_nuclei_iter` with ``resume=True``
continues from it.

:func:`restrict_to_region` implements "only the reviewed part counts" (a mask) and "partly
labelled: ignore the unlabelled rest" by cropping to the box that holds the reviewed/labelled
part: StarDist's loss has no ignore mask, so inside that box unlabelled voxels still count as
background (say so in the widget).

No Qt and no torch at module level.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.runtime.progress import Progress, relay

__all__ = [
    "FineTuneProgress",
    "FineTuneResult",
    "FineTuneSettings",
    "finetune_neurons_iter",
    "finetune_nuclei_iter",
    "fixed_objects_mask",
    "labels_to_stack",
    "restrict_to_region",
    "warmup",
]

#: margin (voxels) kept around the labelled objects when the unlabelled rest is ignored
IGNORE_MARGIN = 4
#: the neuron job's most training steps when none are given (the time budget ends it first)
NEURON_FINETUNE_STEPS = 2000
#: at most this share of the training time is spent on the live held-out F1
LIVE_F1_SHARE = 0.15


@dataclass(frozen=True)
class FineTuneProgress(Progress):
    """A step of a fine-tuning job with everything a live plot needs (built in the worker).

    ``loss``: ``(step, loss)`` pairs so far; ``val_loss`` and ``val_f1``: ``(step, value)`` at
    each validation (``val_f1``: F1 at IoU 0.5 on the held-out part, the base model's
    thresholds); ``f1_before``: the base model's score there; ``eta_s``: seconds left (None:
    unknown yet); ``phase``: "setup", "train", "thresholds", "saving" or "done"."""

    phase: str = "train"
    loss: tuple = ()
    val_loss: tuple = ()
    val_f1: tuple = ()
    f1_before: float | None = None
    eta_s: float | None = None
    elapsed_s: float = 0.0
    #: set on the steps that start a phase ("setup" messages, "saving", "done"): such steps are
    #: never held back by a GUI's rate limiting (``runtime.progress.carries_data``), so the status
    #: line names the long step that is running, not the one before it
    record: Any = None


@dataclass
class FineTuneResult:
    """What :func:`finetune_nuclei_iter` returns."""

    out_dir: Path
    name: str
    kind: str
    f1_before: float | None
    f1_after: float | None
    steps: int
    minutes: float
    entry: dict | None = None
    info: dict = field(default_factory=dict)
    curve: dict = field(default_factory=dict)

    @property
    def model(self) -> str:
        """What to give a model picker / ``--model``: the registered name, else the folder."""
        return self.entry["name"] if self.entry else str(self.out_dir)


@dataclass(frozen=True)
class FineTuneSettings:
    """What both fine-tune jobs (:func:`finetune_nuclei_iter`, :func:`finetune_neurons_iter`)
    take besides the data; each job also accepts these fields as keywords.

    ``out_dir`` gets the model, its checkpoints, ``MODEL_CARD.md`` and ``finetune.json``;
    ``base``: the model to start from (None: the task's shipped model); ``name``: the name it is
    registered under (``register``; default: the folder's name). ``max_minutes`` covers the whole
    job (set-up, training, scoring, saving; None: ``steps`` only). ``sources`` /
    ``label_sources`` describe the data for the model card (layer names, file paths).
    ``ignore_unlabelled``: train only around the labelled objects. Per task: ``optimize_thresholds``
    and ``live_f1`` (nuclei: search the thresholds on the held-out part; the live held-out F1 of
    the curve), ``nms`` (nuclei: the NMS backend of every prediction the job makes: base and
    fine-tuned scores, the live F1, the trainer's held-out score, the threshold search; None =
    ``train.quick_nms_backend()``, stardist's C++ when installed, as ``neuroseg train nuclei``.
    In a GUI's process pass ``"neuroseg"``: stardist's C++ holds the GIL for its whole call, up to
    minutes on an untrained network's many candidates, and the viewer freezes with it; the numba
    NMS releases it), ``targets_in_worker_process`` (nuclei: the training patches' targets,
    stardist's GIL-holding C++, computed in the persistent worker process; ``TrainSettings``'
    field of that name: for a GUI's process), ``every`` (neurons: validation and checkpoint interval in steps). ``steps``: the
    most training steps; None = the task's recipe (nuclei: ``FINETUNE_RECIPE``'s 250, the length
    of its learning-rate schedule, as ``neuroseg train nuclei --init-from``; neurons: 2000)."""

    out_dir: str | Path
    base: str | Path | None = None
    name: str | None = None
    max_minutes: float | None = 5.0
    steps: int | None = None
    device: str | None = "auto"
    threads: int | None = None
    ignore_unlabelled: bool = False
    resume: bool = False
    register: bool = True
    batch_size: int = 2
    sources: Sequence[str] | None = None
    label_sources: Sequence[str] | None = None
    seed: int = 0
    optimize_thresholds: bool = True
    live_f1: bool = True
    every: int = 25
    nms: str | None = None
    targets_in_worker_process: bool = False

    @classmethod
    def of(cls, settings: FineTuneSettings | None, options: dict[str, Any], *, base: str) -> FineTuneSettings:
        """``settings`` with ``options`` (field names) changed, or the settings made of
        ``options``; ``base`` (the task's shipped model) when none is given."""
        from dataclasses import replace

        s = cls(**options) if settings is None else replace(settings, **options)
        return s if s.base is not None else replace(s, base=base)


class _Job:
    """What both fine-tune jobs share while they run, and their common steps: the settings
    (``st``), one output folder, model name, mask, source and label source per (image,
    annotation) pair (a NeurosegError when they do not pair up), the curve, the base model's
    score, the clock (time budget, ETA) and the :class:`FineTuneProgress` items the jobs yield
    (``val_loss``: whether the job has a validation loss to plot)."""

    def __init__(self, st: FineTuneSettings, images: Sequence[Any], labels: Sequence[Any],
                 masks: Sequence[Any] | None, *, val_loss: bool = True):
        self.st = st
        self.t0 = time.monotonic()
        self.out = out = Path(st.out_dir)
        self.n = n = len(images)
        if n == 0 or n != len(labels):
            raise NeurosegError(f"{n} image(s) but {len(labels)} annotation(s)", fix="give one Labels layer per image")
        self.name = st.name or out.name
        self.masks = list(masks) if masks is not None else [None] * n
        self.sources = list(st.sources) if st.sources is not None else [f"image {i + 1}" for i in range(n)]
        self.label_sources = (list(st.label_sources) if st.label_sources is not None
                              else [f"annotation {i + 1}" for i in range(n)])
        self.curve: dict[str, list] = {"loss": [], "val_loss": [], "val_f1": []}
        self.f1_before: float | None = None
        self.val_loss = val_loss
        self.reserve = 0.0
        self.deadline: float | None = None
        self.t_train: float | None = None
        self.first_step: int | None = None

    def progress(self, step, total, msg, phase, eta=None) -> FineTuneProgress:
        """A :class:`FineTuneProgress` carrying the curve so far."""
        curve = self.curve
        return FineTuneProgress(int(step), int(total), msg, phase=phase, loss=tuple(curve["loss"]),
                                val_loss=tuple(curve["val_loss"]) if self.val_loss else (),
                                val_f1=tuple(curve["val_f1"]), f1_before=self.f1_before, eta_s=eta,
                                elapsed_s=time.monotonic() - self.t0,
                                record=None if phase in ("train", "thresholds") else phase)

    def budget(self, reserve: float) -> float | None:
        """Start the time budget (``max_minutes`` from the job's start, of which the end keeps the
        share ``reserve``): the minutes left for training (at least 0.05), None without a budget."""
        self.reserve = reserve
        if self.st.max_minutes is None:
            return None
        total_s = 60.0 * float(self.st.max_minutes)
        self.deadline = self.t0 + total_s
        return max(0.05, (total_s * (1 - reserve) - (time.monotonic() - self.t0)) / 60.0)

    def time_left(self) -> float | None:
        """Seconds until the deadline (None: no budget)."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def eta(self, step: int, total: int) -> float:
        """Seconds left at training step ``step`` of ``total``: the rate since :attr:`t_train`,
        fitted to the budget."""
        if self.first_step is None:
            self.first_step = step - 1
        now = time.monotonic()
        rate_eta = (now - self.t_train) / max(1, step - self.first_step) * max(0, total - step)
        if self.deadline is None:
            return rate_eta
        return min(rate_eta + self.reserve * 60 * float(self.st.max_minutes), max(0.0, self.deadline - now))

    def finish(self, kind: str, model_path: Path, *, f1_after: float | None, steps: int, minutes: float,
               info: dict, score: str, score_key: str, **register_options: Any,
               ) -> Generator[FineTuneProgress, None, FineTuneResult]:
        """Register the model at ``model_path`` when asked (``register_options``: more of
        ``register_model``'s keywords; the scores under ``score_key``_before/_after), yield the
        "done" step and return the :class:`FineTuneResult`."""
        f1_before = self.f1_before
        entry = None
        if self.st.register:
            from napari_neuroseg.models.registry import register_model

            entry = register_model(model_path, kind=kind, name=self.name, **register_options,
                                   scores={f"{score_key}_before": f1_before, f"{score_key}_after": f1_after},
                                   info={"base": str(self.st.base), "steps": steps, "minutes": round(minutes, 2)})
        res = FineTuneResult(out_dir=self.out, name=self.name, kind=kind, f1_before=f1_before, f1_after=f1_after,
                             steps=int(steps), minutes=minutes, entry=entry, info=info, curve=self.curve)
        yield self.progress(steps, steps, f"done: {score} on the held-out part {_fmt(f1_before)} -> {_fmt(f1_after)}",
                            "done", 0.0)
        return res


#: the label dtypes :func:`warmup` compiles ``stardist.matching``'s overlap table for (against the
#: predictions' int32): those of the usual Labels layers (the annotation keeps its layer's dtype)
WARM_LABEL_DTYPES = ("uint8", "uint16", "int32", "uint32", "int64")


#: the modules a fine-tune job imports in its set-up, imported by :func:`warmup`
WARM_MODULES = ("napari_neuroseg.models.stardist3d.train", "napari_neuroseg.models.stardist3d.training.finetune",
                "napari_neuroseg.models.stardist3d.training.thresholds", "napari_neuroseg.models.neurons.train",
                "napari_neuroseg.metrics")


def warmup() -> None:
    """Compile what a job compiles when it first scores a model, in the calling thread (a GUI's
    background thread, before the run): for nuclei this package's numba NMS (loaded from numba's
    disk cache after the first time) and ``stardist.matching``'s overlap table, which stardist
    compiles with numba in every process (no cache), once per label dtype; for neurons the
    post-processing's kernels and the FISBe metrics' thinning (both cached on disk): numba's compiler is
    Python code that competed with the viewer for the GIL during the run's first scoring, and
    its allocations set off full garbage collections there. Also the imports a job's set-up
    makes: the trainers' modules, and torch's optimiser, whose first instance imports
    ``torch._dynamo`` (with ``torch.onnx`` and ``torch.distributed.tensor``, ~800 modules of
    Python; sampled in the worker during the base model's scoring). The dock runs it with
    ``_workers.run_in_background``, which settles the heap after it (``runtime/collector.py``)."""
    import importlib

    import torch  # waits for the dock's background import of torch when it is running

    from napari_neuroseg.metrics.warmup import label_signature
    from napari_neuroseg.metrics.warmup import warmup as metrics_warmup
    from napari_neuroseg.models.neurons.postprocess import warmup as neurons_warmup
    from napari_neuroseg.models.stardist3d.nms import warmup as nms_warmup

    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    for name in WARM_MODULES:
        importlib.import_module(name)
    nms_warmup()
    # the scoring: stardist's overlap table against int32 predictions (nuclei), the FISBe thinning
    # and the post-processing (neurons)
    pred = np.zeros((2, 3, 3), np.int32)
    metrics_warmup([(label_signature(pred.astype(dt)), label_signature(pred)) for dt in WARM_LABEL_DTYPES])
    neurons_warmup()


def _write_text(path: Path, text: str) -> None:
    """``text`` into ``path``, whole or not at all."""
    from napari_neuroseg.io.atomic import atomic_write_text

    atomic_write_text(path, text, fsync=False)



# ------------------------------------------------------------------------------------------ data
def _bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    idx = np.nonzero(mask)
    if len(idx[0]) == 0:
        return None
    return tuple(slice(max(0, int(i.min()) - margin), min(n, int(i.max()) + 1 + margin))
                 for i, n in zip(idx, mask.shape))


def restrict_to_region(image: Any, labels: Any, *, mask: Any = None, ignore_unlabelled: bool = False,
                       name: str = "annotation") -> tuple[np.ndarray, np.ndarray, str | None]:
    """``(image, labels, note)`` cropped to the part that counts.

    ``mask`` (same Z, Y, X shape as ``labels``; nonzero = reviewed): crop to its bounding box and
    drop the objects that lie mostly outside it. ``ignore_unlabelled``: crop to the bounding box
    of the labelled objects plus :data:`IGNORE_MARGIN` voxels. ``note`` (for the model card) says
    what was done (None: nothing)."""
    x = np.asarray(image)
    y = np.asarray(labels)
    if x.shape[-3:] != y.shape:
        raise NeurosegError(f"the image layer's shape {tuple(x.shape)} and the {name}'s {tuple(y.shape)} differ",
                            fix="choose the Labels layer drawn on this image (same Z, Y, X size)")
    note = None
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != y.shape:
            raise NeurosegError(f"the mask layer's shape {tuple(m.shape)} and the {name}'s {tuple(y.shape)} differ",
                                fix="paint the reviewed part on a layer of the image's size, or choose no mask")
        box = _bbox(m > 0)
        if box is None:
            raise NeurosegError("the mask layer is empty: no part is marked as reviewed",
                                fix="paint the reviewed part (any label > 0) or choose no mask")
        y = y.copy()
        ids, inside = np.unique(y[(m > 0) & (y > 0)], return_counts=True)
        all_ids, total = np.unique(y[y > 0], return_counts=True)
        size = dict(zip(all_ids.tolist(), total.tolist()))
        keep = [int(i) for i, c in zip(ids.tolist(), inside.tolist()) if c * 2 >= size[i]]
        drop = np.setdiff1d(all_ids, np.asarray(keep, all_ids.dtype))
        if len(drop):
            y[np.isin(y, drop)] = 0
        y, x = y[box], x[(slice(None),) * (x.ndim - 3) + box]
        note = (f"only the reviewed part counts: cropped to the mask's box {[(s.start, s.stop) for s in box]} "
                f"({len(keep)} objects mostly inside kept, {len(drop)} dropped)")
    if ignore_unlabelled:
        box = _bbox(y > 0, IGNORE_MARGIN)
        if box is not None:
            y, x = y[box], x[(slice(None),) * (x.ndim - 3) + box]
            part = (f"partly labelled: cropped to the labelled objects' box {[(s.start, s.stop) for s in box]} "
                    f"(+{IGNORE_MARGIN} voxels); unlabelled voxels inside it count as background")
            note = part if note is None else f"{note}; {part}"
    return np.ascontiguousarray(x), np.ascontiguousarray(y), note


def fixed_objects_mask(labels: Any, queue: Any) -> np.ndarray:
    """A mask (uint8, 1 = counts) of the objects of ``labels`` marked *fixed* in a review queue
    (a ``proofread.review.ReviewQueue`` or its ``to_dict()``; items on the proofread labels,
    ``source == "pred"``): "only the reviewed part counts" from the review queue. A NeurosegError
    when no object of ``labels`` is marked fixed."""
    d = queue.to_dict() if hasattr(queue, "to_dict") else queue
    items = (d or {}).get("items") or []
    ids = sorted({int(it["id"]) for it in items
                  if isinstance(it, dict) and it.get("status") == "fixed" and it.get("source", "pred") == "pred"})
    y = np.asarray(labels)
    present = np.intersect1d(np.asarray(ids, dtype=np.int64), np.unique(y).astype(np.int64)) if ids else []
    if len(present) == 0:
        raise NeurosegError("no object of the annotation is marked fixed in its review queue",
                            fix="mark the corrected objects as fixed in the Proofreading dock's review queue "
                                "(Shift+M), or choose another reviewed part")
    return np.isin(y, present).astype(np.uint8)


# ------------------------------------------------------------------------------------------- job
def load_base_nuclei_model(base: str | Path, import_dir: str | Path | None = None):
    """``(model, path to start from)`` for the StarDist-3D ``base`` (name, registered name,
    folder, .pt, or a BioImage.IO package: then saved in this project's format into
    ``import_dir`` first, which ``TrainSettings.init_from`` needs); a neuron model or anything
    else is a NeurosegError naming it."""
    from napari_neuroseg.models.bioimageio.package import is_package
    from napari_neuroseg.models.stardist3d.model import StarDist3D
    from napari_neuroseg.models.stardist3d.pretrained import resolve_model_path
    from napari_neuroseg.models.stardist3d.train import require_stardist_model

    path = resolve_model_path(str(base))
    if is_package(path):
        from napari_neuroseg.models.bioimageio.load import load_stardist3d

        model = load_stardist3d(path, device="cpu")
        if import_dir is None:
            raise NeurosegError("a BioImage.IO package needs a folder to be imported into", path=path,
                                fix="give import_dir")
        folder = model.save(Path(import_dir))
        return StarDist3D.load(folder, device="cpu"), folder
    require_stardist_model(path, str(base))
    return StarDist3D.load(path, device="cpu"), path


def finetune_nuclei_iter(
    images: Sequence[Any],
    labels: Sequence[Any],
    voxel_sizes: Sequence[Any] | None = None,
    settings: FineTuneSettings | None = None,
    *,
    masks: Sequence[Any] | None = None,
    **options: Any,
) -> Generator[FineTuneProgress, None, FineTuneResult]:
    """Fine-tune the StarDist-3D ``base`` model (default ``neuroseg_nuclei``) on (image,
    corrected labels) pairs, as ``settings`` (:class:`FineTuneSettings`, or its fields as
    keywords) say; ``masks``: per pair, the part that was reviewed (or None).

    ``voxel_sizes``: per pair (Z, Y, X) µm or None (used as it is). The schedule is fitted to
    ``max_minutes``; ``out_dir`` gets ``checkpoint.pt`` every 25 steps; ``register`` copies the
    model into the user model folder under ``name``."""
    from dataclasses import replace

    from napari_neuroseg.models.stardist3d import train as st_train
    from napari_neuroseg.models.stardist3d.training.finetune import (
        f1_at,
        write_model_card,
    )

    job = _Job(FineTuneSettings.of(settings, options, base="neuroseg_nuclei"), images, labels, masks)
    st, out = job.st, job.out
    voxel_sizes = list(voxel_sizes) if voxel_sizes is not None else [None] * job.n
    yield job.progress(0, 1, f"loading the base model {st.base}", "setup")
    base_model, base_path = load_base_nuclei_model(st.base, out.parent / f".{out.name}.base")
    data = yield from _nuclei_data(job, images, labels, voxel_sizes, base_model)
    settings = _nuclei_train_settings(st, data, base_model, base_path)
    nms_backend = settings.nms_backend
    yield job.progress(0, 1, "scoring the base model on the held-out part", "setup")
    job.f1_before = f1_at(base_model, data.val_images, data.val_labels, nms=nms_backend)
    # the end (threshold search, scores, saving) gets this share of the budget
    left = job.budget(END_RESERVE_SEARCH if st.optimize_thresholds
                      else getattr(st_train, "FINETUNE_END_RESERVE", 0.06))
    if left is not None:
        settings = replace(settings, max_minutes=left)
    th_base = base_model.thresholds
    gen = st_train.train_iter(data.images, data.labels, base_model.config_dict(), out_dir=out, settings=settings,
                              val_images=data.val_images, val_labels=data.val_labels, resume=st.resume, name=job.name)
    result = yield from _nuclei_training(job, gen, data, th_base, nms_backend)
    model = result.model
    model.thresholds = th_base  # kept unless the search below ends within the budget
    if st.optimize_thresholds:
        th = yield from _search_thresholds(model, data, settings, nms_backend, job, result.step)
        if th is None:
            data.notes.append("the threshold search did not fit in the time budget: the base model's thresholds "
                              "are kept")
        else:
            model.thresholds = th
    _write_thresholds(out, model.thresholds)
    yield job.progress(result.step, result.step, "scoring the fine-tuned model on the held-out part", "saving")
    f1_after = f1_at(model, data.val_images, data.val_labels, nms=nms_backend)
    minutes = (time.monotonic() - job.t0) / 60.0
    info = _nuclei_info(job, data, model, settings, result.step, minutes, f1_after)
    _write_text(out / "finetune.json", json.dumps(info, indent=1, default=str))
    write_model_card(out, info)
    return (yield from job.finish("nuclei", out, f1_after=f1_after, steps=result.step, minutes=minutes, info=info,
                                  score="F1@0.5", score_key="f1_0.5_heldout", voxel_size=info["model_voxel_size"]))


def _nuclei_data(job: _Job, images, labels, voxel_sizes, base_model):
    """The nuclei job's data (``prepare_finetune_data``): the pairs cropped to the part that
    counts, at the base model's scale, with a held-out slab; the crops' notes come first."""
    from napari_neuroseg.models.stardist3d.training.finetune import (
        prepare_finetune_data,
    )

    xs, ys, notes = [], [], []
    for x, y, m, src in zip(images, labels, job.masks, job.label_sources):
        xr, yr, note = restrict_to_region(x, y, mask=m, ignore_unlabelled=job.st.ignore_unlabelled,
                                          name=f"annotation {src!r}")
        xs.append(xr)
        ys.append(yr)
        if note:
            notes.append(f"{src}: {note}")
    yield job.progress(0, 1, "resampling to the model's scale and holding out a validation slab", "setup")
    data = prepare_finetune_data(xs, ys, voxel_sizes, base_model.scale, paths=job.label_sources)
    data.notes[:0] = notes
    return data


def _nuclei_train_settings(st: FineTuneSettings, data, base_model, base_path):
    """The StarDist-3D trainer's settings: the same recipe as ``neuroseg train nuclei
    --init-from`` (``FINETUNE_RECIPE``: learning rate, schedule length, weights kept by the
    held-out score, early stop; a given ``steps`` wins), the NMS backend ``st.nms`` (None: the
    quick one), no threshold search (the job runs its own, timed)."""
    from dataclasses import replace

    from napari_neuroseg.models.stardist3d import train as st_train
    from napari_neuroseg.models.stardist3d.training.finetune import (
        finetune_settings,
        fit_patch_size,
    )

    settings = finetune_settings(st_train.TrainSettings(
        batch_size=int(st.batch_size),
        patch_size=fit_patch_size([yy.shape for yy in data.labels], base_model.config.divisor),
        optimize_thresholds=False,  # searched by the job, timed
        seed=int(st.seed), device=st.device, threads=st.threads, init_from=str(base_path),
        targets_in_worker_process=bool(st.targets_in_worker_process),
        model_scale=None if base_model.scale is None else base_model.scale.to_dict(),
    ), steps=None if st.steps is None else int(st.steps))
    return replace(settings, nms_backend=st.nms or st_train.quick_nms_backend())


def _nuclei_training(job: _Job, gen, data, th_base, nms_backend: str):
    """Relay the trainer ``gen`` as the job's progress and return its result: the curve grows,
    the live held-out F1 is measured within its share of the time (:data:`LIVE_F1_SHARE`), and
    the ETA is fitted to the budget."""
    from napari_neuroseg.models.stardist3d.training.finetune import f1_at

    out, curve = job.out, job.curve
    job.t_train = time.monotonic()
    live_s = 0.0

    def train_step(item) -> FineTuneProgress:
        nonlocal live_s
        loss = getattr(item, "loss", None)
        if loss is None:  # threshold search / done
            return job.progress(item.step, item.total, item.message, "thresholds", job.time_left())
        curve["loss"].append((int(item.step), float(loss)))
        if item.val_loss is not None:
            curve["val_loss"].append((int(item.step), float(item.val_loss)))
            spent = time.monotonic() - job.t_train
            if job.st.live_f1 and live_s <= LIVE_F1_SHARE * max(spent, 1e-6) and (out / "weights.pt").is_file():
                t1 = time.monotonic()
                f1 = _live_f1(out, data, th_base, nms_backend, f1_at)
                live_s += time.monotonic() - t1
                if f1 is not None:
                    curve["val_f1"].append((int(item.step), f1))
        return job.progress(item.step, item.total, item.message, "train", job.eta(item.step, item.total))

    return (yield from relay(gen, train_step))


def _nuclei_info(job: _Job, data, model, settings, steps: int, minutes: float, f1_after: float | None) -> dict:
    """What the nuclei job writes to ``finetune.json`` and the model card."""
    import torch

    from napari_neuroseg.runtime.device import select_device

    th = model.thresholds
    return {
        "name": job.name, "base": str(job.st.base), "images": job.sources, "labels": job.label_sources,
        "voxel_sizes": data.voxel_sizes,
        "model_voxel_size": None if model.scale is None else list(model.scale.voxel_size),
        "factors": data.factors,
        "validation": "; ".join(
            f"slab {sp['axis']} >= {sp['start']} of {sp['shape_at_model_scale']} at the model's scale "
            f"({sp['objects_val']} objects held out, {sp['objects_train']} trained on)" for sp in data.split),
        "steps": steps, "batch_size": settings.batch_size, "patch_size": list(settings.patch_size),
        "minutes": minutes, "device": str(select_device(job.st.device)), "threads": torch.get_num_threads(),
        "prob": th.prob, "nms": th.nms, "f1_before": job.f1_before, "f1_after": f1_after, "notes": data.notes,
        "made_by": "napari Fine-tune dock", "curve": job.curve,
    }


#: share of the time budget kept for the end of a run with a threshold search
END_RESERVE_SEARCH = 0.15


def _search_thresholds(model, data, settings, nms_backend, job: _Job, step):
    """The probability/NMS thresholds chosen on the held-out part (as ``train_iter`` does), or
    None when the search would overrun the job's deadline (it is stopped there)."""
    from napari_neuroseg.models.stardist3d.training.data import normalize_volume
    from napari_neuroseg.models.stardist3d.training.thresholds import (
        optimize_thresholds_iter,
    )

    xs = [normalize_volume(x, settings.percentiles) for x in data.val_images]
    gen = optimize_thresholds_iter(model, xs, [np.asarray(y) for y in data.val_labels], nms_threshs=settings.nms_threshs,
                                   iou_threshs=settings.iou_threshs, borders=settings.borders, nms=nms_backend)
    try:
        while True:
            if job.deadline is not None and time.monotonic() > job.deadline:
                return None
            try:
                p = next(gen)
            except StopIteration as stop:
                return stop.value[0]
            yield job.progress(step, step, f"thresholds: {p.message}", "thresholds", job.time_left())
    finally:
        gen.close()


def _write_thresholds(out: Path, th) -> None:
    _write_text(out / "thresholds.json", json.dumps(th.to_dict(), indent=1))


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _live_f1(out: Path, data, thresholds, nms_backend: str, f1_at) -> float | None:
    """F1@0.5 on the held-out part of the weights just checkpointed in ``out`` (the base model's
    thresholds: the curve shows the network, not a threshold search)."""
    from napari_neuroseg.models.stardist3d.model import StarDist3D

    try:
        m = StarDist3D.load(out, device="cpu")
    except (NeurosegError, OSError):
        return None
    return f1_at(m, data.val_images, data.val_labels, thresholds=thresholds, nms=nms_backend)


# ------------------------------------------------------------------------------------- neurons
def labels_to_stack(labels: np.ndarray) -> np.ndarray:
    """A (Z, Y, X) label volume as a FISBe instance stack (N, Z, Y, X), channel i holding i + 1."""
    y = np.asarray(labels)
    ids = [int(i) for i in np.unique(y) if i]
    stack = np.zeros((len(ids), *y.shape), np.uint16 if len(ids) < 65535 else np.uint32)
    for k, i in enumerate(ids):
        stack[k][y == i] = k + 1
    return stack


def _avf1(model, raw: np.ndarray, labels: np.ndarray) -> float:
    """avF1 (FISBe metrics) of ``model`` on one (3, Z, Y, X) volume against a (Z, Y, X) annotation."""
    from napari_neuroseg.metrics import evaluate
    from napari_neuroseg.models.neurons.predict import predict_iter
    from napari_neuroseg.runtime.progress import run_to_completion

    pred = run_to_completion(predict_iter(raw, model)).labels
    return float(evaluate(labels, pred)["avF1"])


def finetune_neurons_iter(
    images: Sequence[Any],
    labels: Sequence[Any],
    voxel_sizes: Sequence[Any] | None = None,
    settings: FineTuneSettings | None = None,
    *,
    masks: Sequence[Any] | None = None,
    **options: Any,
) -> Generator[FineTuneProgress, None, FineTuneResult]:
    """Fine-tune the neuron model ``base`` (default ``neuroseg_neurons``; ``settings``: a
    :class:`FineTuneSettings` or its fields as keywords, ``optimize_thresholds`` and ``live_f1``
    unused here) on (3-channel raw (3, Z, Y, X), corrected (Z, Y, X)
    labels) pairs: a slab of each pair is held out (as for nuclei), both parts are written as
    FISBe samples into ``out_dir/data`` (train/, val/), and ``train neurons`` runs on them with
    validation (avF1 on the held-out slab, the best weights kept) every ``every`` steps. The
    curve's ``val_f1`` is that avF1; ``f1_before``/``f1_after`` the base and the fine-tuned
    model's avF1 there. ``voxel_sizes`` are recorded only (the neuron trainer does not resample)."""
    from napari_neuroseg.models.neurons.model import load_model
    from napari_neuroseg.models.stardist3d.training.finetune import fit_patch_size

    job = _Job(FineTuneSettings.of(settings, options, base="neuroseg_neurons"), images, labels, masks, val_loss=False)
    st, out = job.st, job.out
    yield job.progress(0, 1, f"loading the base model {st.base}", "setup")
    base_model, base_path = load_base_neuron_model(st.base)
    trains, vals, notes, splits = _neuron_parts(job, images, labels)
    data_dir = out / "data"
    if not st.resume:
        yield job.progress(0, 1, "writing the training and held-out parts", "setup")
        _write_neuron_parts(data_dir, trains, vals)
    div = 2 ** (base_model.config.levels - 1)
    patch = fit_patch_size([yt.shape for _, yt in trains], (div, div, div), largest=(32, 64, 64))
    yield job.progress(0, 1, "scoring the base model on the held-out part", "setup")
    job.f1_before = f1_before = float(np.mean([_avf1(base_model, xv, yv) for xv, yv in vals]))
    left = job.budget(0.06)
    settings = _neuron_train_settings(st, data_dir, patch, vals, base_path, base_model.config, left)
    summary = yield from _neuron_training(job, settings)
    model_file = out / "model.pt"
    steps_done = int(summary["iterations"])
    yield job.progress(steps_done, steps_done, "scoring the fine-tuned model on the held-out part", "saving")
    f1_after = float(np.mean([_avf1(load_model(model_file, device="cpu"), xv, yv) for xv, yv in vals]))
    minutes = (time.monotonic() - job.t0) / 60.0
    info = {"name": job.name, "base": str(st.base), "images": job.sources, "labels": job.label_sources,
            "voxel_sizes": [None if v is None else list(v) for v in (voxel_sizes or [None] * job.n)],
            "validation": "; ".join(f"slab {sp['axis']} >= {sp['start']} ({sp['objects_val']} objects held out, "
                                    f"{sp['objects_train']} trained on)" for sp in splits),
            "steps": steps_done, "patch_size": list(patch), "minutes": minutes, "avF1_before": f1_before,
            "avF1_after": f1_after, "notes": notes, "made_by": "napari Fine-tune dock", "curve": job.curve}
    _write_text(out / "finetune.json", json.dumps(info, indent=1, default=str))
    _write_text(out / "MODEL_CARD.md", _neuron_model_card(info))
    return (yield from job.finish("neurons", model_file, f1_after=f1_after, steps=steps_done, minutes=minutes,
                                  info=info, score="avF1", score_key="avF1_heldout"))


def load_base_neuron_model(base: str | Path):
    """``(model, path)`` of the neuron model ``base`` (name, registered name or file); a
    StarDist-3D nuclei model is a NeurosegError naming it."""
    from napari_neuroseg.models.neurons.model import load_model
    from napari_neuroseg.models.registry import resolve_neuron_model

    base_path = resolve_neuron_model(str(base))
    if base_path is not None and Path(base_path).is_dir() and (Path(base_path) / "config.json").is_file():
        raise NeurosegError(f"{str(base)!r} is a StarDist-3D nuclei model, not a neuron model", path=base_path,
                            fix="choose neuroseg_neurons or one of your neuron models")
    return load_model(base_path, device="cpu"), base_path


def _neuron_parts(job: _Job, images, labels):
    """``(training parts, held-out parts, notes, splits)``: each pair checked (3-channel raw, an
    annotation), cropped to the part that counts and split by a held-out slab."""
    from napari_neuroseg.models.stardist3d.training.finetune import (
        check_annotation,
        holdout_slab,
    )

    trains, vals, notes, splits = [], [], [], []
    for x, y, m, src in zip(images, labels, job.masks, job.label_sources):
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[0] != 3:
            raise NeurosegError(f"the neuron model needs a 3-channel raw (3, Z, Y, X); {src} goes with an image of "
                                f"shape {tuple(x.shape)}", fix="choose the multicolour raw layer (3 channels first)")
        check_annotation(np.asarray(y), src)
        xr, yr, note = restrict_to_region(x, y, mask=m, ignore_unlabelled=job.st.ignore_unlabelled, name=src)
        if note:
            notes.append(f"{src}: {note}")
        (xt, yt), (xv, yv), info = holdout_slab(xr, yr, path=src)
        splits.append(info)
        trains.append((xt, yt))
        vals.append((xv, yv))
    return trains, vals, notes, splits


def _write_neuron_parts(data_dir: Path, trains, vals) -> None:
    """The training and held-out parts as FISBe samples ``data_dir/{train,val}/part<i>.zarr``."""
    from napari_neuroseg.io import write_fisbe

    for i, ((xt, yt), (xv, yv)) in enumerate(zip(trains, vals)):
        for sub, (xx, yy) in (("train", (xt, yt)), ("val", (xv, yv))):
            p = data_dir / sub / f"part{i}.zarr"
            p.parent.mkdir(parents=True, exist_ok=True)
            write_fisbe(p, raw=xx, gt_instances=labels_to_stack(yy))


def _neuron_train_settings(st: FineTuneSettings, data_dir: Path, patch, vals, base_path, config, left):
    """The neuron trainer's settings: from the base model (``config``: its network) unless
    resuming, the fine-tuning learning rate, validation and checkpoints every ``st.every``
    steps on the held-out parts' largest crop, ``left`` minutes, post-processing tuned at the
    end (on both parts)."""
    from napari_neuroseg.models.neurons.train import (
        NEURON_FINETUNE_RECIPE,
        NeuronTrainSettings,
    )

    return NeuronTrainSettings(
        output=str(st.out_dir), data=str(data_dir), steps=int(st.steps or NEURON_FINETUNE_STEPS), patch=tuple(patch),
        batch_size=int(st.batch_size), init_from=None if st.resume else str(base_path), resume=bool(st.resume),
        save_every=int(st.every), val_every=int(st.every), val_crop=tuple(max(s) for s in zip(*[yv.shape for _, yv in vals])),
        device=st.device or "auto", threads=int(st.threads) if st.threads else NeuronTrainSettings().threads,
        seed=int(st.seed), max_minutes=left, levels=config.levels, base=config.base,
        lr=NEURON_FINETUNE_RECIPE["lr"], tune_postprocess=True,  # post-processing chosen on both parts
    )


def _neuron_training(job: _Job, settings):
    """Run the neuron trainer with ``settings`` (a fresh training log unless resuming), relayed
    as the job's progress; its summary. The new lines of the training log extend the curve, and
    the ETA is fitted to the budget."""
    from napari_neuroseg.models.neurons.train import train_iter

    log_path = job.out / "log.jsonl"
    offset = log_path.stat().st_size if (job.st.resume and log_path.is_file()) else 0
    if not job.st.resume and log_path.is_file():
        log_path.unlink()
    gen = train_iter(settings)
    job.t_train = time.monotonic()

    def train_step(item) -> FineTuneProgress:
        nonlocal offset
        if not str(item.message).startswith("loss"):
            return job.progress(0, 1, item.message, "setup")
        offset = _read_log(log_path, offset, job.curve)
        return job.progress(item.step, item.total, f"step {item.step}/{item.total} {item.message}", "train",
                            job.eta(item.step, item.total))

    return (yield from relay(gen, train_step))


def _read_log(log_path: Path, offset: int, curve: dict[str, list]) -> int:
    """Add the complete lines of the training log after byte ``offset`` to the curve (loss;
    avF1 of the validations); the new offset."""
    if log_path.is_file():
        with log_path.open() as f:
            f.seek(offset)
            for line in f:
                if not line.endswith("\n"):
                    break
                offset += len(line.encode())
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                curve["loss"].append((int(rec["iteration"]), float(rec["loss"])))
                if isinstance(rec.get("val"), dict) and rec["val"]:
                    curve["val_f1"].append((int(rec["iteration"]), float(np.mean(list(rec["val"].values())))))
    return offset


def _neuron_model_card(info: dict) -> str:
    """The neuron job's ``MODEL_CARD.md`` from its ``finetune.json`` record."""
    return "\n".join([
        f"# {info['name']}", "", "Fine-tuned neuron model, made by the napari Fine-tune dock.", "",
        f"- base model: `{info['base']}`", f"- data: {', '.join(info['images'])} with {', '.join(info['labels'])}",
        f"- validation: {info['validation']}",
        f"- steps: {info['steps']} (patch {info['patch_size']}), {info['minutes']:.1f} min",
        f"- avF1 on the held-out part: base {_fmt(info['avF1_before'])}, fine-tuned {_fmt(info['avF1_after'])}",
        *(f"- {x}" for x in info["notes"]), ""])
