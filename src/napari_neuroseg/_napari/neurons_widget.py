"""The "Neurons (FISBe)" dock widget: segment neurons in a multicolour volume.

The raw is either one 3-channel (C, Z, Y, X) image layer, or three single-channel (Z, Y, X)
layers (a FISBe file opens as three additive red/green/blue layers). The parameters are a magicgui
form (``dock.form``: ``raw``, ``channel_2``, ``channel_3``, ``model``, ``model_path``, ``device``,
``voxel_size``, ``fg_threshold``, ``merge_threshold``, ``min_size``). The model is the shipped one,
a registered one, a ``.pt`` file or a BioImage.IO package exported by this project (folder,
rdf.yaml or .zip; its PyTorch state dict — TorchScript is code and is never loaded). The job is
:func:`napari_neuroseg.models.neurons.predict_iter` in a worker thread (progress, cancel); the
result is added as a Labels layer in the main thread, and Save… writes it with the plugin's
writers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSpinBox,
    LineEdit,
    SpinBox,
)
from qtpy.QtWidgets import QWidget

from napari_neuroseg._napari._display import StagedDisplay, show_labels_layer
from napari_neuroseg._napari._dock import DockLifecycleMixin
from napari_neuroseg._napari._forms import (
    LAYER_EVENTS,
    follow_model_choice,
    follow_registry,
    keep_or_prefer,
    layer_choice,
    model_choices,
    path_edit,
    run_dock_layout,
    typed_model_path,
)
from napari_neuroseg._napari._run_controls import RunControls, RunControlsMixin
from napari_neuroseg._napari._workers import TorchRead, offer_devices, warm_neurons
from napari_neuroseg._napari.nuclei_widget import save_dock_result, voxel_size_text
from napari_neuroseg.errors import NeurosegError

if TYPE_CHECKING:
    import napari

NONE = "(none)"
SHIPPED = "neuroseg_neurons"
FILE = "Model file (.pt, .zip, rdf.yaml)…"
FOLDER = "Package folder…"
MODEL_FILTER = "Neuron model (*.pt *.zip *.yaml)"


def neurons_job(channels: list[Any], model: str | None, device: str, params: dict, voxel_size=None,
                object_size=None):
    """Worker job: stack the channel arrays into (3,Z,Y,X) and run the neuron model (resampled to
    the model's voxel size when ``voxel_size`` (Z, Y, X µm) is given). The result's labels are
    made ready for napari here, off the main thread (``uint16`` when the ids fit:
    :func:`~napari_neuroseg._napari._display.compact_labels`)."""
    import dataclasses

    from napari_neuroseg._napari._display import compact_labels, warm_labels_display
    from napari_neuroseg.models.neurons import predict_iter
    from napari_neuroseg.models.registry import resolve_neuron_model

    arrays = [np.asarray(c) for c in channels]
    if len(arrays) == 1:
        raw = arrays[0]
    else:
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise NeurosegError(f"the three channel layers differ in shape: {sorted(shapes)}",
                                fix="choose three layers of the same (Z, Y, X) shape")
        raw = np.stack(arrays)
    res = yield from predict_iter(raw, resolve_neuron_model(model), device=device, params=params,
                                  voxel_size=voxel_size, object_size=object_size)
    warm_labels_display()
    return dataclasses.replace(res, labels=compact_labels(res.labels))


def neurons_display_job(*args: Any, display: dict) -> Any:
    """Worker job: :func:`neurons_job`, then the result's napari Labels layer built here, off the
    main thread (``display``: ``{"name", "scale", "translate"}``; its painting overlays made when
    their mode is picked). Returns ``(result, layer)``."""
    from napari.layers import Labels

    from napari_neuroseg._napari._display import hide_painting_overlays

    res = yield from neurons_job(*args)
    return res, hide_painting_overlays(Labels(res.labels, metadata=result_metadata(res), **display))


def result_metadata(res: Any) -> dict:
    """The result layer's metadata: the model and post-processing values of the run."""
    return {"neuroseg": {"model": res.info.get("model"), "params": res.params.to_dict()}}


def stored_model_params(path: str | Path | None):
    """The post-processing values stored with a neuron model (a ``.pt`` file or a BioImage.IO
    package of this project; the shipped model for None), read without running any code."""
    from napari_neuroseg.models.bioimageio.package import is_package
    from napari_neuroseg.models.neurons.model import (
        DEFAULT_MODEL,
        read_checkpoint,
        stored_params,
    )

    p = Path(path) if path else DEFAULT_MODEL
    if is_package(p):
        from napari_neuroseg.models.bioimageio.load import package_kind
        from napari_neuroseg.models.bioimageio.package import ModelPackage

        with ModelPackage(p) as pkg:
            if package_kind(pkg) != "neurons":
                raise NeurosegError("the package is not a neuroseg neuron model", path=p,
                                    fix="give a package exported by 'neuroseg export' from a neuron model")
            own = (pkg.rdf.get("config") or {}).get("neuroseg") or {}
            return stored_params({"postprocess": own.get("postprocess") or {}})
    return stored_params(read_checkpoint(p))


def _is_raw_image(layer: Any) -> bool:
    from napari.layers import Image

    return isinstance(layer, Image) and layer.ndim in (3, 4)


def _is_channel_image(layer: Any) -> bool:
    from napari.layers import Image

    return isinstance(layer, Image) and layer.data.ndim == 3


class NeuronsWidget(DockLifecycleMixin, RunControlsMixin, QWidget):
    """Choose the raw layer(s), model, device, voxel size and thresholds; segment; get a Labels
    layer; save it."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        from napari_neuroseg.models.neurons import PostprocessParams

        self.viewer = napari_viewer
        self.result: Any = None
        self.result_layer: Any = None
        self.arrival = StagedDisplay(self)  # the result's layer, then its redraw in the next pass
        self.thresholds_read = TorchRead(self, self._read_model_thresholds)  # the model's stored values
        raw = layer_choice(napari_viewer, name="raw", label="Raw (CZYX) or channel 1", accept=_is_raw_image,
                           tooltip="One 3-channel (C, Z, Y, X) image layer, or the first of three single-channel "
                                   "(Z, Y, X) layers; its scale fills the voxel size")
        ch2, ch3 = (layer_choice(
            napari_viewer, name=f"channel_{i}", label=f"Channel {i}", accept=_is_channel_image, none_text=NONE,
            tooltip=f"Channel {i} as a single-channel (Z, Y, X) layer; (none) when channel 1 holds all three")
            for i in (2, 3))
        model = ComboBox(
            name="model", label="Model", choices=lambda _w: model_choices("neurons", (SHIPPED,), (FILE, FOLDER)),
            tooltip="The shipped neuron model (trained on synthetic data), a registered one, or your own "
                    ".pt file / BioImage.IO package exported by neuroseg (its stored thresholds fill the boxes "
                    "below)")
        model.value = SHIPPED
        model_path = path_edit(
            "model_path", "Path", "r", filter=MODEL_FILTER, placeholder=".pt, .zip, rdf.yaml or package folder",
            tooltip="Path of the neuron model: a .pt file or a BioImage.IO package exported by neuroseg (.zip, "
                    "rdf.yaml or its folder); used when Model is a file or folder. TorchScript weights are never loaded",
            browse_tip="Browse for the model file or package folder")
        device = ComboBox(name="device", label="Device", choices=["auto", "cpu"],
                          tooltip="Where the network runs: auto = the GPU if there is one, else the CPU")
        voxel = LineEdit(name="voxel_size", label="Voxel size (µm)",
                         tooltip="Voxel size Z Y X in µm (filled from the raw layer's scale when it has a length "
                                 "unit); the volume is resampled to the model's voxel size and the labels come "
                                 "back at its shape. Blank = the volume is used as it is")
        voxel.native.setPlaceholderText("unknown: volume used as it is")
        thick = LineEdit(name="object_size", label="Neurite thickness",
                         tooltip="Typical neurite thickness of this volume, e.g. '1.3 um' (needs the voxel size) or "
                                 "'4 vox' (Y/X voxels); the volume is rescaled so its neurites have the model's "
                                 "thickness. Blank = from the voxel size alone")
        thick.native.setPlaceholderText("blank: from the voxel size")
        d = PostprocessParams()
        fg = FloatSpinBox(name="fg_threshold", label="Foreground threshold", value=d.fg_threshold, min=0.01,
                          max=0.99, step=0.05,
                          tooltip="Foreground probability threshold (0-1, no unit): voxels below it are "
                                  "background; higher = thinner, fewer neurons")
        fg.native.setDecimals(2)
        merge = FloatSpinBox(name="merge_threshold", label="Colour merge threshold", value=d.merge_threshold,
                             min=0.0, max=1.5, step=0.01,
                             tooltip="Colour distance (0-1.5, in normalised intensity units) below which "
                                     "fragments are merged; higher = fewer, larger neurons")
        min_size = SpinBox(name="min_size", label="Min. size (voxels)", value=int(d.min_size), min=0,
                           max=10_000_000,
                           tooltip="Minimum neuron size, in voxels: smaller fragments join a touching neuron "
                                   "or are dropped")
        self.form = Container(name="neurons_form", widgets=[
            raw, ch2, ch3, model, model_path, device, voxel, thick, fg, merge, min_size])
        self.form.margins = (0, 0, 0, 0)

        self.controls = RunControls(
            "Segment neurons", on_run=self.run, on_cancel=self.cancel, progress_bar=True,
            running_text="Segmenting…", cancel_text="Cancelled.", cancelled_text=None,
            run_tip="Segment the neurons of the chosen raw layer(s) (adds or updates the '<raw> neurons' Labels layer)",
            cancel_tip="Stop the running segmentation at its next step",
            progress_tip="Progress of the running segmentation (network tiles, post-processing)",
        )
        self.scroll_area = run_dock_layout(self, self.form, self.controls, self.save)

        model.changed.connect(self._model_changed)
        model_path.changed.connect(lambda *_: self.use_model_thresholds())
        raw.changed.connect(lambda layer: setattr(self.form.voxel_size, "value", voxel_size_text(layer)))
        for ev in LAYER_EVENTS:
            self.connect_event(getattr(self.viewer.layers.events, ev), self._refresh_layers)
        follow_registry(self, self._refresh_models)  # models registered by the Fine-tune dock
        self._refresh_layers(initial=True)
        self.form.voxel_size.value = voxel_size_text(raw.value)
        self._model_changed(model.value)
        offer_devices(self, device)  # torch is imported in a background thread
        self._start_warmup()

    @staticmethod
    def _start_warmup() -> None:
        """The post-processing's kernels readied in the background (:func:`~._workers.warm_neurons`)."""
        warm_neurons()

    # ---------------------------------------------------------------- dock lifecycle (_dock.py)
    def on_dock_shown(self) -> None:
        self._refresh_layers()
        self._refresh_models()

    def on_dock_closed(self) -> None:
        self.cancel()  # a closed dock's job stops at its next step
        self.arrival.flush()  # a result's layer still waiting for its pass is added now

    # ---------------------------------------------------------------- model
    def _refresh_models(self, *_: Any) -> None:
        """Take newly registered models into the Model box (the choice is kept)."""
        self.form.model.reset_choices()

    def _model_changed(self, text: str) -> None:
        follow_model_choice(self.form, text, file=FILE, folder=FOLDER)
        self.use_model_thresholds()

    def model_spec(self) -> str | None:
        """The model to run: None (the shipped one), a registered name, or the path typed in."""
        text = self.form.model.value
        if text in (FILE, FOLDER):
            return typed_model_path(self.form, fix="type or browse a neuron model .pt file or "
                                                   "BioImage.IO package")
        return None if text == SHIPPED else text

    def use_model_thresholds(self) -> None:
        """Set the threshold boxes to the post-processing values stored with the chosen model
        (file or package), so a model's own tuned values are used unless the user changes them.
        An unreadable model leaves the boxes and says why.

        A model file is read with torch: while torch is still being imported in the background
        (a dock opened in a session without it), the boxes are set once it is done
        (``_workers.TorchRead``), or at once when a run starts earlier (:meth:`params`)."""
        self.thresholds_read.request()

    def _read_model_thresholds(self) -> None:
        from napari_neuroseg.models.registry import resolve_neuron_model

        try:
            spec = self.model_spec()
        except NeurosegError:
            return  # no path typed yet
        if self.form.model.value in (FILE, FOLDER) and not Path(spec).expanduser().exists():
            return  # a path being typed: nothing to read yet (the run says what is missing)
        try:
            p = stored_model_params(resolve_neuron_model(spec))
        except Exception as err:  # noqa: BLE001 - any unreadable model: keep the values, say why
            self.status.setText(f"Model not read: {err}")
            return
        if self.status.text().startswith("Model not read"):
            self.status.setText("")
        self.form.fg_threshold.value = p.fg_threshold
        self.form.merge_threshold.value = p.merge_threshold
        self.form.min_size.value = int(p.min_size)

    # ---------------------------------------------------------------- layers
    def _refresh_layers(self, *_: Any, initial: bool = False) -> None:
        f = self.form
        four = [ly for ly in self.viewer.layers if _is_raw_image(ly) and ly.data.ndim == 4]
        three = [ly for ly in self.viewer.layers if _is_channel_image(ly)]
        defaults = [four[0], None, None] if four else (three[:3] + [None] * 3)[:3]
        for box, want in zip((f.raw, f.channel_2, f.channel_3), defaults):
            keep_or_prefer(box, lambda _c, w=want: w, initial=initial)

    def selected_channels(self) -> list[Any]:
        """The chosen layers' data: [CZYX] or [Z, Y, X ×3]; NeurosegError if incomplete."""
        f = self.form
        first = f.raw.value
        if first is None or first not in self.viewer.layers:
            raise NeurosegError("no raw layer chosen", fix="open a FISBe volume or a 3-channel CZYX image")
        chosen = [ly for ly in (first, f.channel_2.value, f.channel_3.value) if ly is not None]
        if len(chosen) == 1:
            return [chosen[0].data]
        if len(chosen) != 3 or any(ly.data.ndim != 3 for ly in chosen):
            raise NeurosegError("choose one 3-channel (C, Z, Y, X) layer, or three single-channel 3D layers",
                                fix="set channel 2 and 3 to (none) for a CZYX layer")
        return [ly.data for ly in chosen]

    # ---------------------------------------------------------------- running
    def params(self) -> dict:
        self.thresholds_read.flush()  # a run before torch's background import ended: read now
        f = self.form
        return {"fg_threshold": f.fg_threshold.value, "merge_threshold": f.merge_threshold.value,
                "min_size": int(f.min_size.value)}

    def voxel_size(self) -> tuple[float, float, float] | None:
        """The voxel size typed in (Z, Y, X µm), or None when blank; NeurosegError if malformed."""
        from napari_neuroseg.runtime.scale import parse_voxel_size

        text = self.form.voxel_size.value.strip()
        return parse_voxel_size(text, what="the voxel size") if text else None

    def object_size(self) -> str | None:
        """The neurite thickness typed in (``"1.3 um"``, ``"4 vox"``), or None when blank;
        NeurosegError if malformed or ``auto`` (not available for neurons)."""
        from napari_neuroseg.runtime.scale import parse_object_size

        obj = parse_object_size(self.form.object_size.value)
        if obj is not None and obj.auto:
            raise NeurosegError("an automatic neurite thickness is not available",
                                fix="type the thickness, e.g. '1.3 um' or '4 vox', or leave it blank")
        return None if obj is None else str(obj)

    def run(self) -> None:
        """Start the segmentation in a worker thread."""
        if self.controls.busy:
            return
        try:
            channels = self.selected_channels()
            model = self.model_spec()
            voxel_size = self.voxel_size()
            object_size = self.object_size()
        except NeurosegError as err:
            self.status.setText(f"Error: {err}")
            return
        self.arrival.flush()  # the last result's layer still waiting for its pass
        self.result = None
        source = self.form.raw.value
        self._source_name = source.name
        self._scale = tuple(source.scale[-3:])
        self._translate = tuple(source.translate[-3:])
        display = {"name": f"{self._source_name.split(' [')[0]} neurons", "scale": self._scale,
                   "translate": self._translate}
        self.controls.start(
            neurons_display_job, channels, model, self.form.device.value, self.params(), voxel_size, object_size,
            display=display, on_return=self._on_result, desc="Neurons (FISBe)",
        )

    def _on_result(self, value: tuple[Any, Any]) -> None:
        """Show the result: the Labels layer built in the worker added (or an earlier run's layer
        given the new data) in this pass, its redraw in the next (:class:`StagedDisplay`)."""
        res, layer = value
        self.result = res
        self.save_button.setEnabled(True)
        plan = (res.info.get("scale_plan") or {}).get("text")
        self.status.setText(f"Done: {res.n_instances} neurons." + (f" {plan}" if plan else ""))
        self.arrival.start([lambda: self._show_labels(res.labels, layer)])

    def _show_labels(self, labels: Any, layer: Any) -> None:
        self.result_layer = show_labels_layer(self.viewer, layer, labels)

    # ---------------------------------------------------------------- saving
    def save(self) -> str | None:
        """Save the result's Labels layer (file dialog with the plugin's formats; an input's file
        is overwritten only after asking). Returns the path written, or None."""
        return save_dock_result(self)
