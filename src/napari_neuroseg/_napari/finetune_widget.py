"""The "Fine-tune" dock widget: correct, fine-tune, re-segment — inside napari (issue 13).

The form is magicgui widgets (task, image, corrected Labels layer, optional reviewed-part mask,
"partly labelled", base model, minutes, steps, thresholds, device, output name); the live plot is
a small QPainter widget (:class:`~napari_neuroseg._napari._curve_plot.CurvePlot`). Training runs
:func:`~napari_neuroseg.models.finetune_job.finetune_nuclei_iter` in a cancellable worker
(:class:`~napari_neuroseg._napari._run_controls.RunControls`): the worker builds the curve and an
ETA and sends them at most five times a second; the viewer never waits for a training step.

On finish the scores before/after on the held-out part are shown, the model is registered (the
Nuclei and Neurons docks' pickers offer it at once: ``_forms.follow_registry`` on
``models.registry.on_change``), and
"Re-segment with this model" / "Export BioImage.IO…" use it.

Sessions (``models/finetune_session.py``): the image, the Labels layer being corrected (autosaved every
20 edits or 60 s after the first unsaved edit, and when the dock closes), the mask, the
proofreading review queue and the training checkpoints live in a session folder under the user
data dir. When the dock opens and an earlier session exists, it offers to restore it: the layers
come back and fine-tuning resumes from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    LineEdit,
    SpinBox,
)
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_neuroseg._napari._curve_plot import CurvePlot
from napari_neuroseg._napari._dock import DockLifecycleMixin, fit_controls, scrollable
from napari_neuroseg._napari._forms import follow_registry, model_choices
from napari_neuroseg._napari._notify import error_message, notify_error
from napari_neuroseg._napari._run_controls import RunControls, RunControlsMixin
from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models.finetune_session import Autosaver, Session, latest_session

if TYPE_CHECKING:
    import napari

__all__ = ["FineTuneWidget", "format_eta"]

NONE = "(none)"
FIXED = "(objects marked fixed in the review queue)"
PATH_CHOICE = "Folder / BioImage.IO package…"
TASKS = ("nuclei", "neurons")
DEVICES = ("auto", "cuda", "mps", "cpu")
#: autosave the annotation after this many edits, or this many seconds after the first unsaved one
AUTOSAVE_EDITS = 20
AUTOSAVE_SECONDS = 60.0
#: how often (ms) the dock checks whether an autosave is due
AUTOSAVE_TICK_MS = 5000
#: seconds between two plot/progress updates sent by the worker (<= 5 Hz)
PLOT_INTERVAL = 0.2
#: how the job runs in the viewer's process (issue 17, ``benchmarks/bench_stalls_finetune.py``):
#: ``nms``: the NMS of its predictions (scores, live F1, held-out score, threshold search) with
#: the numba backend, which releases the GIL; stardist's C++ (the CLI's quick backend) holds it
#: for its whole call, and the viewer froze with it, 5-72 s a call on the sample's held-out slab.
#: ``targets_in_worker_process``: the training patches' targets (stardist's C++, holding the GIL
#: 0.2-0.8 s a patch) computed in the persistent worker process. Its full garbage collections
#: skip the heap settled after the dock's warm-up (``runtime/collector.py``)
JOB_OPTIONS = {"nms": "neuroseg", "targets_in_worker_process": True}


def format_eta(seconds: float | None) -> str:
    """``"ETA 2:05"`` (``"ETA –"`` while unknown)."""
    if seconds is None:
        return "ETA –"
    s = round(max(0.0, seconds))
    return f"ETA {s // 60}:{s % 60:02d}" if s < 3600 else f"ETA {s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _progress_text(p: Any) -> str:
    eta = getattr(p, "eta_s", None)
    phase = getattr(p, "phase", "")
    tail = f" — {format_eta(eta)}" if phase in ("train", "thresholds", "saving") else ""
    return f"[{p.step}/{p.total}] {p.message}{tail}"


class FineTuneWidget(DockLifecycleMixin, RunControlsMixin, QWidget):
    """Fine-tune a segmentation model on a corrected Labels layer, then segment again with it."""

    # long function: a dock's flat list of form fields, sections and buttons, read top to bottom like the dock
    def __init__(self, napari_viewer: napari.Viewer, *, offer_restore: bool = True):
        super().__init__()
        self.viewer = napari_viewer
        self.result: Any = None  # FineTuneResult of the last run
        self.session: Session | None = None
        self.autosaver = Autosaver(AUTOSAVE_EDITS, AUTOSAVE_SECONDS)
        self._tracked: tuple[Any, list] | None = None  # (layer, [(emitter, callback)])
        self._save_lock = threading.Lock()
        self._save_thread: threading.Thread | None = None
        self._resume = False
        self.offered_session: Session | None = None

        content = QWidget()
        layout = QVBoxLayout(content)

        # ---------------------------------------------------------------- restore row
        self.restore_box = QFrame()
        self.restore_box.setFrameShape(QFrame.Shape.StyledPanel)
        rl = QVBoxLayout(self.restore_box)
        self.restore_label = QLabel("")
        self.restore_label.setWordWrap(True)
        row = QHBoxLayout()
        self.restore_button = QPushButton("Restore")
        self.restore_button.setToolTip("Bring back the image, the annotation (and mask) of that session; "
                                       "fine-tuning resumes from its last checkpoint")
        self.discard_button = QPushButton("Discard")
        self.discard_button.setToolTip("Do not offer this session again (its folder stays on disk)")
        self.restore_button.clicked.connect(lambda *_: self.restore_session())
        self.discard_button.clicked.connect(lambda *_: self.discard_offered_session())
        row.addWidget(self.restore_button)
        row.addWidget(self.discard_button)
        rl.addWidget(self.restore_label)
        rl.addLayout(row)
        self.restore_box.setVisible(False)
        layout.addWidget(self.restore_box)

        # ---------------------------------------------------------------- the form (magicgui)
        self.task = ComboBox(label="Task", choices=list(TASKS), value="nuclei",
                             tooltip="nuclei: StarDist-3D; neurons: the FISBe neuron model")
        self.image = ComboBox(label="Image", choices=self._image_names, nullable=False,
                              tooltip="The image layer the annotation is drawn on")
        self.labels = ComboBox(label="Corrected labels", choices=self._labels_names,
                               tooltip="The corrected Labels layer (same Z, Y, X size as the image); "
                                       "its edits are autosaved into the session")
        self.mask = ComboBox(label="Reviewed part", choices=self._mask_names, value=NONE,
                             tooltip="Optional: a Labels layer marking the reviewed part (> 0): only the objects "
                                     "mostly inside it count, the volume is cropped to its box")
        self.ignore_unlabelled = CheckBox(text="partly labelled: ignore the unlabelled rest", value=False,
                                          tooltip="Crop to the labelled objects (+4 voxels): the unannotated rest "
                                                  "of the volume is not taught as background")
        self.base = ComboBox(label="Base model", choices=self._base_choices,
                             tooltip="The shipped model, one of your registered models, or a model folder / "
                                     "BioImage.IO package (path below)")
        self.base_path = LineEdit(label="Model path", value="",
                                  tooltip="Path of a StarDist-3D model folder or BioImage.IO package (.zip or folder)")
        self.minutes = FloatSpinBox(label="Time budget (min)", value=5.0, min=0.05, max=600.0, step=1.0,
                                    tooltip="Minutes for the whole run (setup, training, thresholds, saving)")
        self.steps = SpinBox(label="Max steps (0: recipe)", value=0, min=0, max=1_000_000,
                             tooltip="Upper limit of training steps; 0 = the task's fine-tuning recipe "
                                     "(nuclei: 250 steps, the length of its learning-rate schedule, as "
                                     "`neuroseg train nuclei --init-from`; neurons: 2000). The time budget may end "
                                     "the run first")
        self.thresholds = CheckBox(text="choose thresholds on the held-out part", value=True,
                                   tooltip="Search the probability/NMS thresholds on the held-out slab at the end")
        self.device = ComboBox(label="Device", choices=list(DEVICES), value="auto",
                               tooltip="auto: the GPU if there is one, else the CPU")
        self.output = LineEdit(label="Output name", value="",
                               tooltip="Name of the new model (registered in your model folder; letters, digits, . _ -)")
        self.form = Container(widgets=[self.task, self.image, self.labels, self.mask, self.ignore_unlabelled,
                                       self.base, self.base_path, self.minutes, self.steps, self.thresholds,
                                       self.device, self.output], labels=True)
        self.form.native.layout().setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.form.native)
        self.task.changed.connect(self._task_changed)
        self.base.changed.connect(self._base_changed)
        self.labels.changed.connect(self._labels_changed)
        self.image.changed.connect(self._image_changed)

        # ---------------------------------------------------------------- run, plot, result
        self.controls = RunControls("Fine-tune", on_run=self.run, on_cancel=self.cancel, progress_bar=True,
                                    progress_text=_progress_text, error_prefix="failed: ",
                                    running_text="preparing…",
                                    cancelled_text="cancelled: the last checkpoint is kept (Fine-tune resumes from it)",
                                    run_tip="Fine-tune the base model on the corrected labels",
                                    cancel_tip="Stop at the next training step (the last checkpoint stays)",
                                    progress_tip="Progress of the current phase (loading, training steps, threshold "
                                                 "search, saving); the time left (ETA) is in the status line below")
        layout.addWidget(self.controls)
        self.plot = CurvePlot()
        layout.addWidget(self.plot)
        self.scores_label = QLabel("")
        self.scores_label.setWordWrap(True)
        layout.addWidget(self.scores_label)
        row = QHBoxLayout()
        self.resegment_button = QPushButton("Re-segment with this model")
        self.resegment_button.setToolTip("Segment the image with the fine-tuned model (adds a Labels layer)")
        self.resegment_button.clicked.connect(lambda *_: self.resegment())
        self.export_button = QPushButton("Export BioImage.IO…")
        self.export_button.setToolTip("Save the fine-tuned model as a BioImage.IO package (.zip)")
        self.export_button.clicked.connect(lambda *_: self.export_bioimageio())
        for b in (self.resegment_button, self.export_button):
            b.setEnabled(False)
            row.addWidget(b)
        layout.addLayout(row)
        self.session_label = QLabel("")
        self.session_label.setWordWrap(True)
        self.session_label.setToolTip("Where the annotation and the checkpoints are kept (restored if napari closes)")
        layout.addWidget(self.session_label)
        layout.addStretch(1)
        scrollable(self, content)
        fit_controls(self)

        # ---------------------------------------------------------------- events
        self.connect_event(self.viewer.layers.events.inserted, self._refresh_layers)
        self.connect_event(self.viewer.layers.events.removed, self._refresh_layers)
        follow_registry(self, self.refresh_models)
        self._timer = QTimer(self)
        self._timer.setInterval(AUTOSAVE_TICK_MS)
        self._timer.timeout.connect(self._autosave_tick)
        self._timer.start()
        self.on_teardown(self._release)  # also when Qt deletes the dock with the viewer
        self._refresh_layers()
        self._base_changed()
        if offer_restore:
            self.offer_restore()
        self._start_warmup()

    @staticmethod
    def _start_warmup() -> None:
        """Compile, in a background thread once per process, what a nuclei job's first scoring
        compiles (``finetune_job.warmup``: stardist's matching table, the numba NMS), while the
        user fills in the form: during a run the compiler competed with the viewer for the GIL
        (a 752 ms stall measured at the base model's scoring). torch itself comes from the
        shared background import (``_workers.preload_torch``, started first), which loads its
        libraries without holding the GIL."""
        from napari_neuroseg._napari._workers import preload_torch, run_in_background

        preload_torch()
        run_in_background(_warm_quietly, WARMUP_THREAD)

    # ------------------------------------------------------------------ dock lifecycle (_dock.py)
    def on_dock_shown(self) -> None:
        self._refresh_layers()
        self.refresh_models()

    def on_dock_closed(self) -> None:
        self.cancel()
        self._timer.stop()
        self.save_session(wait=True, only_if_pending=True)

    def _release(self) -> None:
        """Last words (no Qt calls: the widget may be deleted): stop the job, write pending
        edits into the session, let go of the Labels layer."""
        worker = getattr(self.controls, "worker", None)
        if worker is not None:
            try:
                worker.quit()
            except RuntimeError:
                pass
        t = self._save_thread
        if t is not None:
            t.join(timeout=30)
        self._untrack()  # writes the pending edits

    # ------------------------------------------------------------------ choices
    def _layers(self, kind: str) -> list[Any]:
        from napari.layers import Image, Labels

        cls = Image if kind == "image" else Labels
        return [ly for ly in self.viewer.layers if isinstance(ly, cls)]

    def _image_names(self, *_: Any) -> list[str]:
        return [ly.name for ly in self._layers("image")]

    def _labels_names(self, *_: Any) -> list[str]:
        return [ly.name for ly in self._layers("labels")]

    def _mask_names(self, *_: Any) -> list[str]:
        return [NONE, FIXED, *self._labels_names()]

    def _base_choices(self, *_: Any) -> list[str]:
        return model_choices(self.task.value if hasattr(self, "task") else "nuclei", (), (PATH_CHOICE,))

    def _refresh_layers(self, *_: Any) -> None:
        for w in (self.image, self.labels, self.mask):
            w.reset_choices()
        self._labels_changed()
        if not self.output.value and self.image.value:
            self.output.value = _safe_name(f"{self.image.value}_{self.task.value}")

    def refresh_models(self, *_: Any) -> None:
        """Re-read the model list (a model was registered, or the dock is shown again)."""
        self.base.reset_choices()

    def _task_changed(self, *_: Any) -> None:
        self.refresh_models()
        if self.image.value:
            self.output.value = _safe_name(f"{self.image.value}_{self.task.value}")

    def _base_changed(self, *_: Any) -> None:
        self.base_path.enabled = self.base.value == PATH_CHOICE

    def _image_changed(self, *_: Any) -> None:
        if self.image.value:
            self.output.value = _safe_name(f"{self.image.value}_{self.task.value}")

    # ------------------------------------------------------------------ reading the form
    def image_layer(self):
        name = self.image.value
        if not name or name not in self.viewer.layers:
            raise NeurosegError("no image layer selected", fix="open the image the annotation is drawn on")
        return self.viewer.layers[name]

    def labels_layer(self):
        name = self.labels.value
        if not name or name not in self.viewer.layers:
            raise NeurosegError("no corrected Labels layer selected",
                                fix="segment the image (Nuclei dock), correct the labels, and choose that layer")
        return self.viewer.layers[name]

    def mask_layer(self):
        name = self.mask.value
        if not name or name in (NONE, FIXED) or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def base_spec(self) -> str:
        if self.base.value == PATH_CHOICE:
            path = (self.base_path.value or "").strip()
            if not path:
                raise NeurosegError("no base model path given",
                                    fix="type the path of a model folder or BioImage.IO package, or pick a model")
            return path
        return str(self.base.value)

    def voxel_size(self, layer: Any):
        from napari_neuroseg.runtime.scale import voxel_size_from_layer_scale

        return voxel_size_from_layer_scale(layer.scale, getattr(layer, "units", None),
                                           (layer.metadata or {}).get("unit"))

    def job_arguments(self) -> dict:
        """The checked inputs of a run (raises NeurosegError with a clear message)."""
        from napari_neuroseg.models.finetune_job import restrict_to_region
        from napari_neuroseg.models.stardist3d.training.finetune import check_annotation

        img, lab, mask = self.image_layer(), self.labels_layer(), self.mask_layer()
        if img is lab:
            raise NeurosegError("the image and the labels are the same layer", fix="choose the corrected Labels layer")
        x = np.asarray(img.data)
        y = np.array(lab.data, copy=True)  # the user may go on editing while the worker trains
        if self.task.value == "nuclei" and x.ndim != 3:
            raise NeurosegError(f"the image layer '{img.name}' has {x.ndim} dimensions {tuple(x.shape)}; the nuclei "
                                "model needs a single-channel 3D (Z, Y, X) image", fix="choose a 3D image layer")
        if self.task.value == "neurons" and (x.ndim != 4 or x.shape[0] != 3):
            raise NeurosegError(f"the image layer '{img.name}' has shape {tuple(x.shape)}; the neuron model needs the "
                                "3-channel raw as one (3, Z, Y, X) layer",
                                fix="open the raw without splitting its channels (one layer of 3 x Z x Y x X)")
        if x.shape[-3:] != y.shape:
            raise NeurosegError(f"the image layer '{img.name}' {tuple(x.shape)} and the Labels layer "
                                f"'{lab.name}' {tuple(y.shape)} have different shapes",
                                fix="choose the Labels layer drawn on this image (same Z, Y, X size)")
        check_annotation(y, f"Labels layer '{lab.name}'")
        m = None if mask is None else np.asarray(mask.data)
        if self.mask.value == FIXED:
            from napari_neuroseg.models.finetune_job import fixed_objects_mask

            m = fixed_objects_mask(y, self.review_queue_of(lab))
        if mask is not None and mask is lab:
            raise NeurosegError("the mask is the annotation itself", fix="choose another layer as the reviewed part, or none")
        restrict_to_region(x, y, mask=m, ignore_unlabelled=bool(self.ignore_unlabelled.value),
                           name=f"Labels layer '{lab.name}'")  # shapes and an empty mask, before any work
        name = _safe_name(self.output.value or f"{img.name}_{self.task.value}")
        from napari_neuroseg.models import registry

        if name in registry.SHIPPED:
            raise NeurosegError(f"{name!r} is a shipped model's name", fix="choose another output name")
        base = self.base_spec()
        return {"image": x, "labels": y, "mask": m, "voxel_size": self.voxel_size(img), "base": base,
                "name": name, "max_minutes": float(self.minutes.value), "steps": int(self.steps.value) or None,
                "device": str(self.device.value), "ignore_unlabelled": bool(self.ignore_unlabelled.value),
                "optimize_thresholds": bool(self.thresholds.value), "image_layer": img, "labels_layer": lab,
                "mask_layer": mask}

    # ------------------------------------------------------------------ running
    def run(self):
        """Start fine-tuning (or resume the restored session's run); returns the worker or None."""
        if self.controls.busy:
            return None
        try:
            a = self.job_arguments()
        except NeurosegError as err:
            notify_error(err)
            self.status.setText(f"failed: {error_message(err)}")
            return None
        resume = self._resume and self.session is not None and self.session.can_resume
        try:
            session = self._session_for(a["image_layer"], a["labels_layer"], a["mask_layer"])
            session.save_state(status="training", base=a["base"], output=a["name"], max_minutes=a["max_minutes"],
                               steps=a["steps"], device=a["device"], ignore_unlabelled=a["ignore_unlabelled"],
                               optimize_thresholds=a["optimize_thresholds"])
            self._show_session()
        except NeurosegError as err:
            notify_error(err)
            self.status.setText(f"failed: {error_message(err)}")
            return None
        from napari_neuroseg.models.finetune_job import (
            finetune_neurons_iter,
            finetune_nuclei_iter,
        )

        job = finetune_nuclei_iter if self.task.value == "nuclei" else finetune_neurons_iter
        self.result = None
        self._job = {"image": a["image_layer"].name, "scale": tuple(a["image_layer"].scale[-3:]),
                     "translate": tuple(a["image_layer"].translate[-3:]), "voxel_size": a["voxel_size"]}
        self.plot.clear()
        self.scores_label.setText("")
        self.resegment_button.setEnabled(False)
        self.export_button.setEnabled(False)
        self.controls.run_button.setText("Fine-tune")
        self.autosaver.saved()  # the worker writes the annotation into the session first
        return self.controls.start(
            _with_session, functools.partial(_after_warmup, job), self._write, session, a["image"], a["labels"], a["mask"],
            self._review_queue(a["labels_layer"]), a["voxel_size"], desc="Fine-tune",
            out_dir=session.model_dir, base=a["base"], name=a["name"], max_minutes=a["max_minutes"],
            steps=a["steps"], device=a["device"], ignore_unlabelled=a["ignore_unlabelled"],
            resume=resume, optimize_thresholds=a["optimize_thresholds"], **JOB_OPTIONS,
            sources=[f"layer '{a['image_layer'].name}'"],
            label_sources=[f"layer '{a['labels_layer'].name}'"],
            on_yield=self._on_progress, on_return=self._on_result, on_error=self._on_error,
            on_finished=self._on_finished, progress_interval=PLOT_INTERVAL,
        )

    def _on_progress(self, p: Any) -> None:
        if hasattr(p, "loss"):
            self.plot.set_curves(p.loss, p.val_loss, p.val_f1, p.f1_before, p.total if p.phase == "train" else 0)
        if self.session is not None and getattr(p, "phase", "") == "train" and p.val_loss:
            self.session.state["checkpoint_step"] = int(p.val_loss[-1][0])

    def _on_result(self, result: Any) -> None:
        self.result = result
        self._resume = False
        c = result.curve
        self.plot.set_curves(c["loss"], c["val_loss"], c["val_f1"], result.f1_before, result.steps)
        score, dock = ("F1@0.5", "Nuclei") if result.kind == "nuclei" else ("avF1", "Neurons")
        self.scores_label.setText(
            f"{score} on the held-out part: base {_fmt(result.f1_before)} → fine-tuned {_fmt(result.f1_after)} "
            f"({result.steps} steps, {result.minutes:.1f} min). Registered as '{result.model}' — the {dock} dock "
            "offers it now.")
        self.status.setText(f"done: model '{result.model}' ({result.out_dir})")
        self.resegment_button.setEnabled(True)
        self.export_button.setEnabled(True)
        if self.session is not None:
            self._safe_state(status="done", model=result.model, f1_before=result.f1_before, f1_after=result.f1_after,
                             steps=result.steps)

    def _on_error(self, exc: BaseException) -> None:
        if self.session is not None:
            self._safe_state(status="failed", error=error_message(exc))

    def _on_finished(self) -> None:
        if self.session is not None and self.result is None and self.session.status == "training":
            self._safe_state(status="stopped")
            if self.session.can_resume:
                self._resume = True
                self.controls.run_button.setText(f"Resume fine-tuning (step {self.session.checkpoint_step()})")
        self._show_session()

    def _safe_state(self, **kw: Any) -> None:
        try:
            self.session.save_state(**kw)
        except (NeurosegError, OSError) as err:
            self.session_label.setText(f"session not saved: {error_message(err)}")

    # ------------------------------------------------------------------ after training
    def resegment(self):
        """Segment the trained-on image with the fine-tuned model (adds '<image> <task> (<model>)')."""
        if self.result is None or self.controls.busy:
            return None
        name = self._job["image"]
        if name not in self.viewer.layers:
            self.status.setText(f"failed: the image layer '{name}' is gone")
            return None
        layer = self.viewer.layers[name]
        kind = self.result.kind
        out_name = f"{name} {kind} ({self.result.name})"

        def done(res: Any) -> None:
            labels = res["labels"] if isinstance(res, dict) else res.labels
            if out_name in self.viewer.layers:
                self.viewer.layers[out_name].data = labels
            else:
                self.viewer.add_labels(labels, name=out_name, scale=self._job["scale"],
                                       translate=self._job["translate"])
            n = len(np.unique(labels)) - int((np.asarray(labels) == 0).any())
            self.status.setText(f"re-segmented: {n} {'nuclei' if kind == 'nuclei' else 'neurons'} in '{out_name}'")

        if kind == "nuclei":
            from napari_neuroseg._napari.nuclei_widget import segment_nuclei_iter

            return self.controls.start(segment_nuclei_iter, np.asarray(layer.data), desc="Re-segment",
                                       model=self.result.model, device=str(self.device.value),
                                       voxel_size=self._job["voxel_size"], on_return=done)
        from napari_neuroseg.models.neurons.predict import predict_iter

        model = self.result.entry["path"] if self.result.entry else str(self.result.out_dir / "model.pt")
        return self.controls.start(predict_iter, np.asarray(layer.data), desc="Re-segment", model=model,
                                   device=str(self.device.value), on_return=done)

    def export_bioimageio(self, path: str | None = None):
        """Write the fine-tuned model as a BioImage.IO package (``path``: a .zip; asks when None)."""
        if self.result is None or self.controls.busy:
            return None
        if path is None:  # pragma: no cover - file dialogs are not tested
            path, _ = QFileDialog.getSaveFileName(self, "BioImage.IO package", f"{self.result.name}.zip",
                                                  "BioImage.IO package (*.zip)")
            if not path:
                return None
        from napari_neuroseg.runtime.progress import Progress

        def job(model: str, out: str):
            from napari_neuroseg.models.bioimageio.export import export_package

            yield Progress(0, 1, "exporting (tracing the network, test tensors)")
            res = export_package(model, out, name=self.result.name)
            yield Progress(1, 1, "exported")
            return res

        return self.controls.start(job, str(self.result.out_dir), str(path), desc="Export BioImage.IO",
                                   on_return=lambda p: self.status.setText(f"exported {p}"))

    # ------------------------------------------------------------------ sessions
    def _session_for(self, img: Any, lab: Any, mask: Any) -> Session:
        """This dock's session for (image, labels) (a new one for other layers), its state
        updated; the arrays are written by :meth:`_write` (off the main thread)."""
        s = self.session
        if s is None or s.state.get("labels_layer") != lab.name or s.state.get("image_layer") != img.name:
            s = Session.create(lab.name, task=str(self.task.value), image_layer=img.name, labels_layer=lab.name)
            self.session = s
            self._resume = False
        state = {"task": str(self.task.value), "image_layer": img.name, "labels_layer": lab.name,
                 "mask_layer": None if mask is None else mask.name, "scale": [float(v) for v in img.scale[-3:]],
                 "translate": [float(v) for v in img.translate[-3:]], "voxel_size": self.voxel_size(img),
                 "units": [str(u) for u in getattr(img, "units", ())][-3:]}
        s.save_state(**state)
        self._show_session()
        return s

    def _show_session(self) -> None:
        s = self.session
        self.session_label.setText("" if s is None else f"Session: {s.path} ({s.status})")

    def _labels_changed(self, *_: Any) -> None:
        name = self.labels.value
        layer = self.viewer.layers[name] if name and name in self.viewer.layers else None
        if self._tracked is not None and self._tracked[0] is layer:
            return
        self._untrack()
        if layer is None:
            return
        cbs = []
        for ev in ("paint", "data"):
            emitter = getattr(layer.events, ev, None)
            if emitter is not None:
                emitter.connect(self._on_edit)
                cbs.append((emitter, self._on_edit))
        self._tracked = (layer, cbs)

    def _untrack(self) -> None:
        """Let go of the tracked Labels layer; its edits not saved yet are written first (the layer
        may be leaving with the viewer). No Qt calls here (also runs after Qt deleted the dock)."""
        if self._tracked is None:
            return
        layer = self._tracked[0]
        s = self.session
        if self.autosaver.pending and s is not None and s.state.get("labels_layer") == layer.name:
            self._write(s, np.array(layer.data, copy=True), None)
            self.autosaver.saved()
        for emitter, cb in self._tracked[1]:
            with contextlib.suppress(Exception):  # the layer may be gone
                emitter.disconnect(cb)
        self._tracked = None

    def _on_edit(self, *_: Any) -> None:
        if self.autosaver.note_edit():
            self.save_session()

    def _autosave_tick(self) -> None:
        if self.autosaver.due():
            self.save_session()

    def save_session(self, wait: bool = False, only_if_pending: bool = False) -> Session | None:
        """Save the tracked annotation (and the review queue) into the session now: a copy is
        taken here, written in a background thread (``wait``: in this call). Creates the session
        on the first save."""
        if only_if_pending and self.autosaver.pending == 0:
            return self.session
        if self._tracked is None:
            return self.session
        lab = self._tracked[0]
        if self.session is None or self.session.state.get("labels_layer") != lab.name:
            try:
                img = self.image_layer()
            except NeurosegError:
                return self.session
            if np.asarray(img.data).shape[-3:] != np.asarray(lab.data).shape:
                return self.session  # not an annotation of this image: nothing to keep yet
            try:
                self._session_for(img, lab, self.mask_layer())
            except NeurosegError as err:
                self.session_label.setText(f"session not saved: {error_message(err)}")
                return None
        data = np.array(lab.data, copy=True)
        review = self._review_queue(lab)
        session = self.session
        image = None
        if not session.has("image"):
            with contextlib.suppress(NeurosegError):  # the image layer is gone: keep the annotation anyway
                image = np.asarray(self.image_layer().data)
        mask_layer = self.mask_layer()
        mask = None if mask_layer is None else np.array(mask_layer.data, copy=True)
        self.autosaver.saved()
        args = (session, data, review, image, mask)
        if wait:
            self._write(*args)
        else:
            t = threading.Thread(target=self._write, args=args, name="neuroseg-session-autosave", daemon=True)
            t.start()
            self._save_thread = t
        return session

    def _write(self, session: Session, data: np.ndarray, review: dict | None, image: Any = None,
               mask: Any = None) -> None:
        """Write the annotation (and the image once, the mask, the review queue) into ``session``;
        any thread (no Qt). A failed save is recorded in the session's state, never raised."""
        with self._save_lock:
            try:
                if image is not None and not session.has("image"):
                    session.save_array("image", image)
                if mask is not None:
                    session.save_array("mask", mask)
                session.save_array("annotation", data)
                n_obj = len(np.unique(data)) - int((data == 0).any())
                session.save_state(annotation_objects=n_obj)
                if review is not None:
                    session.save_review(review)
            except (NeurosegError, OSError) as err:
                session.state["last_save_error"] = error_message(err)

    def _review_queue(self, layer: Any):
        """The proofreading dock's review queue (as a dict) when it works on ``layer``, else None.
        Any dock with a ``controller`` whose ``layer`` is ``layer`` and whose ``review`` is set."""
        try:
            docks = list(self.viewer.window.dock_widgets.values())
        except Exception:  # noqa: BLE001 - napari without dock_widgets
            return None
        for w in docks:
            inner = w.widget() if hasattr(w, "widget") else w
            for cand in (w, inner):
                c = getattr(cand, "controller", None)
                review = getattr(c, "review", None)
                if c is not None and getattr(c, "layer", None) is layer and review is not None:
                    try:
                        return review.to_dict()
                    except Exception:  # noqa: BLE001 - not a ReviewQueue
                        return None
        return None

    def review_queue_of(self, layer: Any):
        """The review queue of ``layer``: the Proofreading dock's, else the one saved in this
        dock's session for that layer (None: none)."""
        q = self._review_queue(layer)
        if q is None and self.session is not None and self.session.state.get("labels_layer") == layer.name:
            try:
                rq = self.session.load_review()
            except NeurosegError:
                rq = None
            q = None if rq is None else rq.to_dict()
        return q

    def offer_restore(self) -> Session | None:
        """Show the "restore?" row for the latest session that holds an annotation."""
        try:
            s = latest_session()
        except Exception:  # noqa: BLE001 - an unreadable data dir must not break the dock
            s = None
        self.offered_session = s
        self.restore_box.setVisible(s is not None)
        if s is not None:
            self.restore_label.setText(f"Restore the {s.describe()}?")
        return s

    def discard_offered_session(self) -> None:
        if self.offered_session is not None:
            try:
                self.offered_session.discard()
            except NeurosegError as err:
                notify_error(err)
        self.offered_session = None
        self.restore_box.setVisible(False)

    def restore_session(self, session: Session | None = None) -> Session | None:
        """Add the session's image and annotation (and mask) as layers, select them, and make the
        next run resume from its checkpoint."""
        s = session or self.offered_session
        if s is None:
            return None
        st = s.state
        scale = st.get("scale") or [1.0, 1.0, 1.0]
        translate = st.get("translate") or [0.0, 0.0, 0.0]
        try:
            lab = s.load_array("annotation")
            img = s.load_array("image") if s.has("image") else None
            mask = s.load_array("mask") if s.has("mask") else None
        except NeurosegError as err:
            notify_error(err)
            self.restore_label.setText(f"cannot restore: {error_message(err)}")
            return None
        img_name = _free_name(self.viewer, st.get("image_layer") or "image", img is None)
        lab_name = _free_name(self.viewer, f"{st.get('labels_layer') or 'annotation'} (restored)")
        if img is not None:
            self.viewer.add_image(img, name=img_name, scale=scale, translate=translate)
        self.viewer.add_labels(lab, name=lab_name, scale=scale, translate=translate)
        if mask is not None:
            mname = _free_name(self.viewer, f"{st.get('mask_layer') or 'reviewed part'} (restored)")
            self.viewer.add_labels(mask, name=mname, scale=scale, translate=translate, opacity=0.3)
            self.mask.reset_choices()
            self.mask.value = mname
        self._refresh_layers()
        if st.get("task") in TASKS:
            self.task.value = st["task"]
        if img_name in self._image_names():
            self.image.value = img_name
        self.labels.value = lab_name
        # the restored layers continue this session
        s.save_state(image_layer=img_name, labels_layer=lab_name, status=s.status if s.can_resume else "editing",
                     mask_layer=self.mask.value if mask is not None else None)
        self.session = s
        if st.get("output"):
            self.output.value = st["output"]
        if st.get("base"):
            if st["base"] in self.base.choices:
                self.base.value = st["base"]
            else:
                self.base.value = PATH_CHOICE
                self.base_path.value = st["base"]
        for key, w in (("max_minutes", self.minutes), ("steps", self.steps), ("device", self.device)):
            if st.get(key) is not None:
                try:
                    w.value = st[key]
                except (ValueError, TypeError):
                    pass
        self._resume = s.can_resume
        if self._resume:
            self.controls.run_button.setText(f"Resume fine-tuning (step {s.checkpoint_step()})")
        self.restore_box.setVisible(False)
        self.offered_session = None
        review = None
        try:
            review = s.load_review()
        except NeurosegError:
            review = None
        msg = f"restored '{lab_name}'"
        if review is not None:
            msg += f"; the review queue is in {s.path / 'review.json'} (Proofreading ▸ Load…)"
        self.status.setText(msg)
        self._show_session()
        return s


#: The name of the dock's background warm-up thread (``_workers.run_in_background``).
WARMUP_THREAD = "neuroseg-finetune-warmup"


def _warm_quietly() -> None:
    try:
        from napari_neuroseg.models.finetune_job import warmup

        warmup()
    except Exception:  # noqa: BLE001, S110 - the run compiles (and reports) instead
        pass


#: the longest a run waits for the dock's warm-up (s; then it starts anyway), and how often it
#: reports that it waits (s; each report is a point where Cancel takes effect)
WARMUP_WAIT_S = 300.0
WARMUP_POLL_S = 0.2


def _warmup_thread() -> threading.Thread | None:
    """The dock's warm-up thread while it runs (``_workers.run_in_background``), else None."""
    return next((t for t in threading.enumerate() if t.name == WARMUP_THREAD and t.is_alive()), None)


def _after_warmup(work, *args: Any, **kw: Any):
    """The job, after the session's arrays are written: ``work(*args, **kw)`` once the dock's
    warm-up has ended. A Run pressed while it still runs (~10-20 s after the dock opens) waits
    for it, saying so: run side by side, the job's set-up and the warm-up's imports and numba
    compilations were two threads running Python against the viewer's main thread for the GIL
    and the CPUs, and each waited for the other's compilations (numba's compiler lock) and
    imports anyway (the neurons sample: a 0.3 min job took 65 s instead of the warm-up's 13 s
    plus 28 s)."""
    from napari_neuroseg.models.finetune_job import FineTuneProgress

    warm = _warmup_thread()
    if warm is not None:
        msg = "waiting for the dock's warm-up (compiling what a run needs)"
        yield FineTuneProgress(0, 1, msg, phase="setup", record="setup")
        deadline = time.monotonic() + WARMUP_WAIT_S
        while warm.is_alive() and time.monotonic() < deadline:
            warm.join(WARMUP_POLL_S)
            yield FineTuneProgress(0, 1, msg, phase="setup")  # Cancel takes effect here
    return (yield from work(*args, **kw))


def _with_session(job, write, session: Session, image, annotation, mask, review, voxel_size, **kw):
    """The worker's job: write the session's arrays (off the main thread), then ``job``."""
    from napari_neuroseg.models.finetune_job import FineTuneProgress

    yield FineTuneProgress(0, 1, "saving the session", phase="setup", record="setup")
    write(session, annotation, review, image, mask)
    return (yield from job([image], [annotation], [voxel_size], masks=[mask], **kw))


def _safe_name(text: str) -> str:
    import re

    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._-")
    return (s or "my_model")[:100]


def _free_name(viewer: Any, name: str, reuse: bool = False) -> str:
    if reuse or name not in viewer.layers:
        return name
    k = 2
    while f"{name} {k}" in viewer.layers:
        k += 1
    return f"{name} {k}"


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"
