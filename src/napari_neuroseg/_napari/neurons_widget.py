"""The "Neurons (FISBe)" dock widget: segment neurons in a multicolour volume.

The raw is either one 3-channel (C, Z, Y, X) image layer, or three single-channel (Z, Y, X)
layers (a FISBe file opens as three additive red/green/blue layers). The job is
:func:`napari_neuroseg.models.neurons.predict_iter` in a worker thread (progress, cancel); the
result is added as a Labels layer in the main thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
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
from napari_neuroseg._napari._run_controls import RunControls, RunControlsMixin
from napari_neuroseg.errors import NeurosegError

if TYPE_CHECKING:
    import napari

NONE = "(none)"


def neurons_job(channels: list[Any], model: str | None, device: str, params: dict):
    """Worker job: stack the channel arrays into (3,Z,Y,X) and run the neuron model."""
    from napari_neuroseg.models.neurons import predict_iter

    arrays = [np.asarray(c) for c in channels]
    if len(arrays) == 1:
        raw = arrays[0]
    else:
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise NeurosegError(f"the three channel layers differ in shape: {sorted(shapes)}",
                                fix="choose three layers of the same (Z, Y, X) shape")
        raw = np.stack(arrays)
    return (yield from predict_iter(raw, model or None, device=device, params=params))


class NeuronsWidget(DockLifecycleMixin, RunControlsMixin, QWidget):
    """Choose the raw layer(s), model, device and thresholds; segment; get a Labels layer."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.result: Any = None
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.channel_combos = [QComboBox() for _ in range(3)]
        self.channel_combos[0].setToolTip("One 3-channel (C, Z, Y, X) image layer, or the first of three "
                                          "single-channel (Z, Y, X) layers")
        for c in self.channel_combos[1:]:
            c.setToolTip("The next single-channel (Z, Y, X) layer; (none) when channel 1 holds all three")
        form.addRow("Raw (CZYX) or channel 1", self.channel_combos[0])
        form.addRow("Channel 2", self.channel_combos[1])
        form.addRow("Channel 3", self.channel_combos[2])
        row = QHBoxLayout()
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("default (shipped, synthetic-trained)")
        self.model_edit.editingFinished.connect(self.use_model_thresholds)
        self.model_edit.setToolTip("Path of a neuron model (.pt); empty = the shipped model. "
                                   "Its stored thresholds fill the boxes below")
        browse = QPushButton("…")
        browse.setToolTip("Browse for a neuron model file (.pt)")
        browse.clicked.connect(self._browse)
        row.addWidget(self.model_edit)
        row.addWidget(browse)
        form.addRow("Model", row)
        self.device_combo = QComboBox()
        self.device_combo.addItem("auto")
        try:
            from napari_neuroseg.runtime.device import available_devices

            self.device_combo.addItems(available_devices())
        except Exception:  # noqa: BLE001 - torch missing: only "auto"
            pass
        self.device_combo.setToolTip("Where the network runs: auto = the GPU if there is one, else the CPU")
        form.addRow("Device", self.device_combo)
        from napari_neuroseg.models.neurons import PostprocessParams

        d = PostprocessParams()
        self.fg_spin = self._spin(d.fg_threshold, 0.01, 0.99, 0.05,
                                  "Foreground probability threshold (0-1): voxels below it are background; "
                                  "higher = thinner, fewer neurons")
        self.merge_spin = self._spin(d.merge_threshold, 0.0, 1.5, 0.01,
                                     "Colour distance (0-1.5) below which fragments are merged "
                                     "(higher = fewer, larger neurons)")
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(0, 10_000_000)
        self.min_size_spin.setValue(d.min_size)
        self.min_size_spin.setSuffix(" vox")
        self.min_size_spin.setToolTip("Minimum neuron size, in voxels: smaller fragments join a touching "
                                      "neuron or are dropped")
        form.addRow("Foreground threshold", self.fg_spin)
        form.addRow("Colour merge threshold", self.merge_spin)
        form.addRow("Min. size (voxels)", self.min_size_spin)
        layout.addLayout(form)
        self.controls = RunControls(
            "Segment neurons", on_run=self.run, on_cancel=self.cancel, progress_bar=True,
            running_text="Segmenting…", cancel_text="Cancelled.", cancelled_text=None,
        )
        self.controls.run_button.setToolTip("Segment the neurons of the chosen raw layer(s) "
                                            "(adds or updates the '<raw> neurons' Labels layer)")
        self.controls.cancel_button.setToolTip("Stop the running segmentation at its next step")
        layout.addWidget(self.controls)
        layout.addStretch(1)
        fit_controls(self)  # never narrower than its value ("0.47(")
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            self.connect_event(ev, self._refresh_layers)
        self._refresh_layers()
        self.use_model_thresholds()

    # ---------------------------------------------------------------- dock lifecycle (_dock.py)
    def on_dock_shown(self) -> None:
        self._refresh_layers()

    def on_dock_closed(self) -> None:
        self.cancel()  # a closed dock's job stops at its next step

    @staticmethod
    def _spin(value, lo, hi, step, tip) -> QDoubleSpinBox:
        s = QDoubleSpinBox()
        s.setRange(lo, hi)
        s.setSingleStep(step)
        s.setDecimals(2)
        s.setValue(value)
        s.setToolTip(tip)
        return s

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Neuron model", "", "Model (*.pt)")
        if path:
            self.model_edit.setText(path)
            self.use_model_thresholds()

    def use_model_thresholds(self) -> None:
        """Set the threshold boxes to the post-processing values stored in the chosen model file
        (the shipped model when the field is empty), so a model's own tuned values are used
        unless the user changes them. An unreadable file leaves the boxes and says why."""
        from napari_neuroseg.models.neurons.model import DEFAULT_MODEL, read_checkpoint, stored_params

        text = self.model_edit.text().strip()
        try:
            p = stored_params(read_checkpoint(text or DEFAULT_MODEL))
        except Exception as err:  # noqa: BLE001 - any unreadable model: keep the values, say why
            self.status.setText(f"Model not read: {err}")
            return
        self.fg_spin.setValue(p.fg_threshold)
        self.merge_spin.setValue(p.merge_threshold)
        self.min_size_spin.setValue(int(p.min_size))

    # ---------------------------------------------------------------- layers
    def _image_layers(self) -> list[Any]:
        from napari.layers import Image

        return [ly for ly in self.viewer.layers if isinstance(ly, Image) and ly.ndim in (3, 4)]

    def _refresh_layers(self, *_: Any) -> None:
        layers = self._image_layers()
        names = [ly.name for ly in layers]
        four = [ly.name for ly in layers if ly.data.ndim == 4]
        three = [ly.name for ly in layers if ly.data.ndim == 3]
        defaults = [four[0], NONE, NONE] if four else (three[:3] + [NONE] * 3)[:3]
        for i, combo in enumerate(self.channel_combos):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names if i == 0 else [NONE, *names])
            if current and current in names + [NONE] and combo.findText(current) >= 0 and current:
                combo.setCurrentText(current)
            elif defaults[i] and combo.findText(defaults[i]) >= 0:
                combo.setCurrentText(defaults[i])
            combo.blockSignals(False)

    def selected_channels(self) -> list[Any]:
        """The chosen layers' data: [CZYX] or [Z, Y, X ×3]; NeurosegError if incomplete."""
        names = [c.currentText() for c in self.channel_combos]
        if not names[0] or names[0] not in self.viewer.layers:
            raise NeurosegError("no raw layer chosen", fix="open a FISBe volume or a 3-channel CZYX image")
        chosen = [self.viewer.layers[n] for n in names if n and n != NONE]
        if len(chosen) == 1:
            return [chosen[0].data]
        if len(chosen) != 3 or any(ly.data.ndim != 3 for ly in chosen):
            raise NeurosegError("choose one 3-channel (C, Z, Y, X) layer, or three single-channel 3D layers",
                                fix="set channel 2 and 3 to (none) for a CZYX layer")
        return [ly.data for ly in chosen]

    # ---------------------------------------------------------------- running
    def params(self) -> dict:
        return {"fg_threshold": self.fg_spin.value(), "merge_threshold": self.merge_spin.value(),
                "min_size": self.min_size_spin.value()}

    def run(self) -> None:
        """Start the segmentation in a worker thread."""
        if self.controls.busy:
            return
        try:
            channels = self.selected_channels()
        except NeurosegError as err:
            self.status.setText(f"Error: {err}")
            return
        self.result = None
        self._source_name = self.channel_combos[0].currentText()
        self._scale = self.viewer.layers[self._source_name].scale[-3:]
        self.controls.start(
            neurons_job, channels, self.model_edit.text().strip() or None, self.device_combo.currentText(),
            self.params(), on_return=self._on_result, desc="Neurons (FISBe)",
        )

    def _on_result(self, res: Any) -> None:
        self.result = res
        name = f"{self._source_name.split(' [')[0]} neurons"
        if name in self.viewer.layers:
            self.viewer.layers[name].data = res.labels
        else:
            self.viewer.add_labels(res.labels, name=name, scale=self._scale,
                                   metadata={"neuroseg": {"model": res.info.get("model"),
                                                          "params": res.params.to_dict()}})
        self.status.setText(f"Done: {res.n_instances} neurons.")
