"""The "Nuclei (StarDist-3D)" dock widget.

Collects the parameters (image layer, model, thresholds, normalisation, tiles, device, outputs)
and runs :func:`segment_nuclei_iter` — the model's ``predict_instances_iter`` behind a model
load — as a cancellable generator worker (:class:`~napari_neuroseg._napari._run_controls.RunControls`:
error notifications, no stuck spinner). Layers are added only in the main thread,
from the worker's result: the labels, optionally the polyhedra as a Surface layer and the
probability map.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_neuroseg._napari._dock import DockLifecycleMixin, fit_controls
from napari_neuroseg._napari._notify import notify_error
from napari_neuroseg._napari._run_controls import RunControls, RunControlsMixin
from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.runtime.progress import Progress

if TYPE_CHECKING:
    import napari

__all__ = ["NucleiWidget", "polyhedra_surface", "segment_nuclei_iter"]

FOLDER = "Model folder…"
FILE = "Model file (.pt)…"


def segment_nuclei_iter(
    image: Any,
    model: str | Path | None = None,
    *,
    device: str | None = "auto",
    prob_thresh: float | None = None,
    nms_thresh: float | None = None,
    n_tiles: tuple[int, int, int] | None = None,
    percentiles: tuple[float, float] = (1.0, 99.8),
    return_prob: bool = False,
    voxel_size: tuple[float, float, float] | None = None,
    object_size: str | None = None,
) -> Generator[Progress, None, dict]:
    """Load ``model`` (bundled name, folder or ``.pt``; cached) and segment ``image``.

    Yields :class:`Progress`; returns ``{"labels", "details", "prob" (or None), "grid",
    "thresholds": (prob, nms), "model": name}``."""
    from napari_neuroseg.models.stardist3d import load_model

    yield Progress(0, 1, "loading the model")
    m = load_model(model, device=device)
    x = np.asarray(image)
    channel_axis = None
    out = yield from m.predict_instances_iter(
        x, prob_thresh=prob_thresh, nms_thresh=nms_thresh, n_tiles=n_tiles, percentiles=tuple(percentiles),
        channel_axis=channel_axis, return_predict=return_prob, voxel_size=voxel_size, object_size=object_size,
    )
    labels, details = out[0], out[1]
    prob = out[2][0] if return_prob else None
    return {
        "labels": labels,
        "details": details,
        "prob": prob,
        "grid": m.grid,
        "thresholds": (
            m.thresholds.prob if prob_thresh is None else float(prob_thresh),
            m.thresholds.nms if nms_thresh is None else float(nms_thresh),
        ),
        "model": m.name,
        "scale": (details.get("scale_plan") or {}).get("text"),
    }


def polyhedra_surface(details: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(vertices (n·R, 3), faces (n·F, 3), values (n·R,))`` of the predicted star-convex
    polyhedra (voxel coordinates; values = object index 1..n), or None if there is none."""
    points = np.asarray(details["points"], dtype=np.float32)
    if len(points) == 0:
        return None
    dist = np.asarray(details["dist"], dtype=np.float32)
    rays = np.asarray(details["rays_vertices"], dtype=np.float32)
    faces = np.asarray(details["rays_faces"], dtype=np.int64)
    n, r = dist.shape
    f = np.asarray(details.get("resample_factors") or (1.0, 1.0, 1.0), np.float32)  # predicted at another scale
    vertices = (points[:, None, :] + dist[:, :, None] * rays[None] / f).reshape(-1, 3)
    all_faces = (faces[None] + (np.arange(n) * r)[:, None, None]).reshape(-1, 3)
    values = np.repeat(np.arange(1, n + 1, dtype=np.float32), r)
    return vertices, all_faces, values


def _model_thresholds(spec: str) -> tuple[float, float] | None:
    """The thresholds stored with a model (bundled name, folder or .pt), or None."""
    from napari_neuroseg.models.stardist3d import load_thresholds, resolve_model_path

    try:
        path = resolve_model_path(spec)
    except NeurosegError:
        return None
    if path.is_dir():
        th = load_thresholds(path / "thresholds.json")
        return th.prob, th.nms
    from napari_neuroseg.models.safe_load import load_torch_file

    try:
        blob = load_torch_file(path, fix="choose another model")
        th = blob.get("thresholds") or {}
        return float(th.get("prob", 0.5)), float(th.get("nms", 0.4))
    except Exception:  # noqa: BLE001 - unreadable file: the run will report it properly
        return None


class NucleiWidget(DockLifecycleMixin, RunControlsMixin, QWidget):
    """Segment nuclei of an image layer with a StarDist-3D model."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        from napari_neuroseg.models.stardist3d import DEFAULT_MODEL, bundled_models

        self.viewer = napari_viewer
        self.result: dict | None = None

        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The 3D image layer (Z, Y, X) to segment; labels come out at its scale")
        form.addRow("Image", self.image_combo)

        self.model_combo = QComboBox()
        bundled = bundled_models()
        self.model_combo.addItems([*bundled, FOLDER, FILE])
        if DEFAULT_MODEL in bundled:
            self.model_combo.setCurrentText(DEFAULT_MODEL)
        self.model_combo.setToolTip("A bundled StarDist-3D model, or your own model folder / .pt file "
                                    "(its stored thresholds fill the boxes below)")
        self.model_path = QLineEdit()
        self.model_path.setPlaceholderText("path of a model folder or .pt file")
        self.model_path.setToolTip("Path of the model folder or .pt file (used when Model is a folder or file)")
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.setToolTip("Browse for a model folder or .pt file")
        browse.clicked.connect(self._browse_model)
        row = QHBoxLayout()
        row.addWidget(self.model_path)
        row.addWidget(browse)
        form.addRow("Model", self.model_combo)
        form.addRow("", row)

        self.prob_spin = QDoubleSpinBox()
        self.nms_spin = QDoubleSpinBox()
        for spin in (self.prob_spin, self.nms_spin):
            spin.setRange(0.0, 1.0)
            spin.setDecimals(3)
            spin.setSingleStep(0.05)
        self.prob_spin.setValue(0.5)  # StarDist's defaults until a model's thresholds are read
        self.nms_spin.setValue(0.4)
        self.prob_spin.setToolTip("Object probability threshold (0-1): candidates below it are dropped; "
                                  "higher = fewer, surer nuclei")
        self.nms_spin.setToolTip("Non-maximum suppression overlap threshold (0-1): candidates overlapping a "
                                 "kept nucleus more than this are dropped; higher = more touching nuclei kept")
        reset = QPushButton("model's")
        reset.setToolTip("Reset both thresholds to the model's (optimised on its validation data)")
        reset.clicked.connect(self.reset_thresholds)
        row = QHBoxLayout()
        row.addWidget(self.prob_spin)
        row.addWidget(reset)
        row.addStretch(1)
        form.addRow("Probability", row)
        form.addRow("Overlap (NMS)", self.nms_spin)

        self.p_low = QDoubleSpinBox()
        self.p_high = QDoubleSpinBox()
        for spin, v in ((self.p_low, 1.0), (self.p_high, 99.8)):
            spin.setRange(0.0, 100.0)
            spin.setDecimals(2)
            spin.setValue(v)
        self.p_low.setToolTip("Lower intensity percentile (%) mapped to 0 before the network")
        self.p_high.setToolTip("Upper intensity percentile (%) mapped to 1 before the network")
        row = QHBoxLayout()
        row.addWidget(self.p_low)
        row.addWidget(self.p_high)
        row.addStretch(1)
        form.addRow("Normalise (%)", row)

        self.auto_tiles = QCheckBox("auto")
        self.auto_tiles.setChecked(True)
        self.auto_tiles.setToolTip("Choose the number of tiles from the free memory (untick to set them)")
        self.tile_spins = []
        row = QHBoxLayout()
        for _ in range(3):
            spin = QSpinBox()
            spin.setRange(1, 64)
            spin.setValue(1)
            spin.setEnabled(False)
            spin.setToolTip("Number of tiles along this axis (1-64): more tiles = less memory, a little slower")
            self.tile_spins.append(spin)
            row.addWidget(spin)
        self.auto_tiles.toggled.connect(lambda on: [s.setEnabled(not on) for s in self.tile_spins])
        row.addStretch(1)
        form.addRow("Tiles", self.auto_tiles)
        form.addRow("Z, Y, X", row)

        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", *self._devices()])
        self.device_combo.setToolTip("Where the network runs: auto = the GPU if there is one, else the CPU")
        form.addRow("Device", self.device_combo)

        self.voxel_edit = QLineEdit()
        self.voxel_edit.setPlaceholderText("unknown: image used as it is")
        self.voxel_edit.setToolTip("Voxel size Z Y X in µm (filled from the image layer's scale); the image is "
                                   "resampled to the model's scale and the labels come back at the image's shape")
        self.object_edit = QLineEdit()
        self.object_edit.setPlaceholderText("model's (e.g. 3.2um, 25vox, auto)")
        self.object_edit.setToolTip("Nucleus diameter: 3.2um, 25vox (Y/X voxels) or auto (estimated from the "
                                    "image; shown in the status line). Overrides the voxel-size rule")
        form.addRow("Voxel size (µm)", self.voxel_edit)
        form.addRow("Object size", self.object_edit)
        self.image_combo.currentTextChanged.connect(self._fill_voxel_size)

        self.surface_check = QCheckBox("polyhedra (Surface layer)")
        self.prob_check = QCheckBox("probability map")
        self.surface_check.setToolTip("Also add the predicted star-convex polyhedra as a Surface layer")
        self.prob_check.setToolTip("Also add the object probability map (0-1, at the model's grid) as an image")
        form.addRow("Also show", self.surface_check)
        form.addRow("", self.prob_check)
        layout.addLayout(form)

        self.controls = RunControls(
            "Segment nuclei", on_run=self.run, on_cancel=self.cancel,
            progress_text=lambda p: f"[{p.step}/{p.total}] {p.message}", error_prefix="failed: ",
        )
        self.controls.run_button.setToolTip("Segment the image with the model and thresholds above "
                                            "(adds or updates the '<image> nuclei' Labels layer)")
        self.controls.cancel_button.setToolTip("Stop the running segmentation at its next step")
        layout.addWidget(self.controls)
        layout.addStretch(1)
        fit_controls(self)  # never narrower than its value ("0.47(")

        self.model_combo.currentTextChanged.connect(self._model_changed)
        self.model_path.editingFinished.connect(self.reset_thresholds)
        self._model_changed(self.model_combo.currentText())
        self.connect_event(self.viewer.layers.events.inserted, self._refresh_layers)
        self.connect_event(self.viewer.layers.events.removed, self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ dock lifecycle (_dock.py)
    def on_dock_shown(self) -> None:
        self._refresh_layers()

    def on_dock_closed(self) -> None:
        self.cancel()  # a closed dock's job stops at its next step

    # ------------------------------------------------------------------ form helpers
    @staticmethod
    def _devices() -> list[str]:
        try:
            from napari_neuroseg.runtime.device import available_devices

            return available_devices()
        except Exception:  # noqa: BLE001 - torch problems are reported when running
            return ["cpu"]

    def _refresh_layers(self, *_: Any) -> None:
        from napari.layers import Image

        current = self.image_combo.currentText()
        names = [ly.name for ly in self.viewer.layers if isinstance(ly, Image)]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)

    def _browse_model(self) -> None:  # pragma: no cover - file dialogs are not tested
        if self.model_combo.currentText() == FILE:
            path, _ = QFileDialog.getOpenFileName(self, "StarDist-3D model file", "", "PyTorch (*.pt)")
        else:
            path = QFileDialog.getExistingDirectory(self, "StarDist-3D model folder")
            if self.model_combo.currentText() not in (FOLDER, FILE):
                self.model_combo.setCurrentText(FOLDER)
        if path:
            self.model_path.setText(path)
            self.reset_thresholds()

    def _model_changed(self, text: str) -> None:
        self.model_path.setEnabled(text in (FOLDER, FILE))
        self.reset_thresholds()

    def model_spec(self) -> str:
        """The model to load: a bundled name or the path typed in."""
        text = self.model_combo.currentText()
        if text in (FOLDER, FILE):
            path = self.model_path.text().strip()
            if not path:
                raise NeurosegError("no model path given", fix="type or browse a model folder / .pt file")
            return path
        return text

    def reset_thresholds(self) -> None:
        """Set the threshold boxes to the selected model's thresholds."""
        try:
            th = _model_thresholds(self.model_spec())
        except NeurosegError:
            th = None
        if th is not None:
            self.prob_spin.setValue(th[0])
            self.nms_spin.setValue(th[1])

    def _fill_voxel_size(self, name: str) -> None:
        """The voxel size box follows the chosen layer's ``scale`` when it is a physical size
        (a length unit in the layer's ``units`` or the file's unit); blank otherwise."""
        from napari_neuroseg.runtime.scale import voxel_size_from_layer_scale

        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            vs = voxel_size_from_layer_scale(layer.scale, getattr(layer, "units", None),
                                             (layer.metadata or {}).get("unit"))
            self.voxel_edit.setText("" if vs is None else " ".join(f"{v:.4g}" for v in vs))

    def image_layer(self):
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise NeurosegError("no image layer selected", fix="open an image (e.g. File ▸ Open Sample ▸ napari-neuroseg)")
        return self.viewer.layers[name]

    def parameters(self) -> dict:
        """The run's keyword arguments for :func:`segment_nuclei_iter` (raises NeurosegError)."""
        lo, hi = self.p_low.value(), self.p_high.value()
        if not lo < hi:
            raise NeurosegError(f"normalisation percentiles {lo} and {hi}: low must be below high", fix="e.g. 1 and 99.8")
        return {
            "model": self.model_spec(),
            "device": self.device_combo.currentText(),
            "prob_thresh": self.prob_spin.value(),
            "nms_thresh": self.nms_spin.value(),
            "n_tiles": None if self.auto_tiles.isChecked() else tuple(s.value() for s in self.tile_spins),
            "percentiles": (lo, hi),
            "return_prob": self.prob_check.isChecked(),
            **self._scale_parameters(),
        }

    def _scale_parameters(self) -> dict:
        from napari_neuroseg.runtime.scale import parse_object_size, parse_voxel_size

        vs = self.voxel_edit.text().strip()
        obj = parse_object_size(self.object_edit.text())
        return {"voxel_size": parse_voxel_size(vs, what="the voxel size") if vs else None,
                "object_size": None if obj is None else str(obj)}

    # ------------------------------------------------------------------ running
    @property
    def last_error(self) -> BaseException | None:
        """The exception of the last run, if it failed."""
        return self.controls.last_error

    def run(self):
        """Start the segmentation worker; returns it (or None if the form is invalid)."""
        if self.controls.busy:
            return None
        try:
            layer = self.image_layer()
            params = self.parameters()
        except NeurosegError as err:
            notify_error(err)
            self.status.setText(str(err))
            return None
        self.result = None
        self._layer_name = layer.name
        self._scale = tuple(layer.scale[-3:])
        self._translate = tuple(layer.translate[-3:])
        return self.controls.start(
            segment_nuclei_iter, layer.data, desc="Nuclei (StarDist-3D)",
            on_yield=self._on_progress, on_return=self._on_result, **params,
        )

    def _on_progress(self, p: Any) -> None:
        """Per-step hook (the status line and bar are kept by ``self.controls``)."""

    def _on_result(self, result: dict) -> None:
        self.result = result
        name = f"{self._layer_name} nuclei"
        labels = result["labels"]
        if name in self.viewer.layers and self.viewer.layers[name].__class__.__name__ == "Labels":
            layer = self.viewer.layers[name]
            layer.data = labels
            layer.scale, layer.translate = self._scale, self._translate
        else:
            self.viewer.add_labels(labels, name=name, scale=self._scale, translate=self._translate)
        if self.surface_check.isChecked():
            surf = polyhedra_surface(result["details"])
            sname = f"{self._layer_name} polyhedra"
            if sname in self.viewer.layers:
                self.viewer.layers.remove(sname)
            if surf is not None:
                self.viewer.add_surface(surf, name=sname, scale=self._scale, translate=self._translate,
                                        colormap="turbo", opacity=0.6, shading="smooth")
        if result.get("prob") is not None:
            pname = f"{self._layer_name} probability"
            if pname in self.viewer.layers:
                self.viewer.layers.remove(pname)
            g = result["grid"]
            f = result["details"].get("resample_factors") or (1.0, 1.0, 1.0)  # at the model's scale
            self.viewer.add_image(result["prob"], name=pname, colormap="magma", blending="additive",
                                  scale=tuple(s * gi / fi for s, gi, fi in zip(self._scale, g, f)), translate=self._translate,
                                  contrast_limits=(0.0, 1.0), visible=True)
        self.status.setText(self._summary(result))

    @staticmethod
    def _summary(result: dict) -> str:
        n = int(len(result["details"]["points"]))
        p, q = result["thresholds"]
        scale = f"; {result['scale']}" if result.get("scale") else ""
        return f"{n} nuclei (model {result['model']}, prob {p:.3f}, nms {q:.3f}){scale}"
