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
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    LineEdit,
    PushButton,
    TupleEdit,
)
from qtpy.QtWidgets import QWidget

from napari_neuroseg._napari._display import StagedDisplay, show_labels_layer
from napari_neuroseg._napari._dock import DockLifecycleMixin
from napari_neuroseg._napari._forms import (
    LAYER_EVENTS,
    decimals,
    follow_model_choice,
    follow_registry,
    keep_or_prefer,
    layer_choice,
    model_choices,
    path_edit,
    run_dock_layout,
    typed_model_path,
)
from napari_neuroseg._napari._notify import notify_error
from napari_neuroseg._napari._run_controls import RunControls, RunControlsMixin
from napari_neuroseg._napari._workers import TorchRead, offer_devices
from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.runtime.progress import Progress

if TYPE_CHECKING:
    import napari

__all__ = ["NucleiWidget", "polyhedra_surface", "result_layers", "save_result_layer", "segment_nuclei_iter",
           "voxel_size_text"]

FOLDER = "Model folder…"
FILE = "Model file (.pt, .zip, rdf.yaml)…"
#: the file dialog's filter of model files
MODEL_FILTER = "Model (*.pt *.zip *.yaml)"


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
    with_surface: bool = False,
    display: dict | None = None,
) -> Generator[Progress, None, dict]:
    """Load ``model`` (bundled name, folder or ``.pt``; cached) and segment ``image``.

    Yields :class:`Progress`; returns ``{"labels", "details", "prob" (or None), "grid",
    "thresholds": (prob, nms), "model": name}`` and, with ``with_surface``, ``"surface"``:
    :func:`polyhedra_surface` (or None).
    The result is made ready for napari here, off the main thread: ``labels`` is ``uint16``
    when the ids fit (:func:`~napari_neuroseg._napari._display.compact_labels`), and the
    polyhedra (``with_surface``) are built; with ``display`` (``{"name", "scale", "translate"}`` of
    the image layer), ``"layers"`` holds the napari layers to add, built here
    (:func:`result_layers`)."""
    from napari_neuroseg._napari._display import compact_labels, warm_labels_display
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
    labels = compact_labels(labels)
    warm_labels_display()
    res = {
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
    if with_surface:
        res["surface"] = polyhedra_surface(details)  # None when there is no object
    if display is not None:
        res["layers"] = result_layers(res, **display)
    return res


def result_layers(res: dict, name: str, scale: tuple, translate: tuple) -> dict[str, Any]:
    """The napari layers of a result, made off the main thread (a layer is a model without Qt
    until it is added to a viewer), so that adding each is one step: ``"labels"`` (its painting
    overlays made when their mode is picked: :func:`~napari_neuroseg._napari._display.hide_painting_overlays`),
    ``"surface"`` (the polyhedra, when built and not empty) and ``"prob"`` (the probability map at
    the model's grid), each None when the result has none."""
    from napari.layers import Image, Labels, Surface

    from napari_neuroseg._napari._display import hide_painting_overlays

    out: dict[str, Any] = {"labels": hide_painting_overlays(Labels(
        res["labels"], name=f"{name} nuclei", scale=scale, translate=translate)), "surface": None, "prob": None}
    if res.get("surface") is not None:
        out["surface"] = Surface(res["surface"], name=f"{name} polyhedra", scale=scale, translate=translate,
                                 colormap="turbo", opacity=0.6, shading="smooth")
    if res.get("prob") is not None:
        g = res["grid"]
        f = res["details"].get("resample_factors") or (1.0, 1.0, 1.0)  # at the model's scale
        out["prob"] = Image(res["prob"], name=f"{name} probability", colormap="magma", blending="additive",
                            scale=tuple(s * gi / fi for s, gi, fi in zip(scale, g, f)), translate=translate,
                            contrast_limits=(0.0, 1.0), visible=True)
    return out


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


def _reads_with_torch(spec: str) -> bool:
    """Whether :func:`_model_thresholds` needs torch for ``spec`` (a single model file)."""
    from napari_neuroseg.models.bioimageio.package import is_package
    from napari_neuroseg.models.stardist3d import resolve_model_path

    try:
        path = resolve_model_path(spec)
        return path.is_file() and not is_package(path)
    except Exception:  # noqa: BLE001 - unresolvable: _model_thresholds finds nothing either
        return False


def _model_thresholds(spec: str) -> tuple[float, float] | None:
    """The thresholds stored with a model (bundled name, folder, .pt or BioImage.IO package), or
    None."""
    from napari_neuroseg.models.bioimageio.package import is_package
    from napari_neuroseg.models.stardist3d import load_thresholds, resolve_model_path
    from napari_neuroseg.models.stardist3d.config import Thresholds

    try:
        path = resolve_model_path(spec)
    except NeurosegError:
        return None
    try:
        if is_package(path):
            from napari_neuroseg.models.bioimageio.package import ModelPackage

            with ModelPackage(path) as pkg:
                sd = (pkg.rdf.get("config") or {}).get("stardist") or {}
                th = Thresholds.from_dict(sd.get("thresholds"), path=pkg.path)
            return th.prob, th.nms
        if path.is_dir():
            if not (path / "config.json").is_file():
                return None  # not a model folder (yet: a path being typed)
            th = load_thresholds(path / "thresholds.json")
            return th.prob, th.nms
        from napari_neuroseg.models.safe_load import load_torch_file

        blob = load_torch_file(path, fix="choose another model")
        th = Thresholds.from_dict(blob.get("thresholds") if isinstance(blob, dict) else None, path=path)
        return th.prob, th.nms
    except Exception:  # noqa: BLE001 - unreadable model: the run will report it properly
        return None


def _is_volume_image(layer: Any) -> bool:
    from napari.layers import Image

    return isinstance(layer, Image)


class NucleiWidget(DockLifecycleMixin, RunControlsMixin, QWidget):
    """Segment nuclei of an image layer with a StarDist-3D model.

    The parameters are the magicgui form ``self.form`` (fields by name: ``image``, ``model``,
    ``model_path``, ``prob_thresh``, ``nms_thresh``, ``model_thresholds``, ``percentiles``,
    ``auto_tiles``, ``tiles``, ``device``, ``voxel_size``, ``object_size``, ``show_surface``,
    ``show_prob``); Run/Cancel, status and Save… below it."""

    # long function: a dock's flat list of form fields and buttons, read top to bottom like the dock
    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        from napari_neuroseg.models.stardist3d import DEFAULT_MODEL, bundled_models

        self.viewer = napari_viewer
        self.result: dict | None = None
        self.result_layer: Any = None
        self.arrival = StagedDisplay(self)  # a result's layers, one event-loop pass each
        self.thresholds_read = TorchRead(self, self._read_thresholds)  # the model's stored thresholds
        self._bundled = bundled_models()

        image = layer_choice(
            napari_viewer, name="image", label="Image", accept=_is_volume_image,
            tooltip="The 3D image layer (Z, Y, X) to segment; the labels come out at its shape and scale")
        model = ComboBox(
            name="model", label="Model", choices=lambda _w: model_choices("nuclei", self._bundled, (FOLDER, FILE)),
            tooltip="A bundled or registered StarDist-3D model, or your own model folder / .pt file / "
                    "BioImage.IO package (its stored thresholds fill the boxes below)")
        if DEFAULT_MODEL in model.choices:
            model.value = DEFAULT_MODEL
        model_path = path_edit(
            "model_path", "Path", "d", filter=MODEL_FILTER, placeholder="model folder, .pt, .zip or rdf.yaml",
            tooltip="Path of the model folder, .pt file or BioImage.IO package (.zip, rdf.yaml or its folder); "
                    "used when Model is a folder or file",
            browse_tip="Browse for the model folder or file")
        prob = decimals(FloatSpinBox(
            name="prob_thresh", label="Probability", value=0.5, min=0.0, max=1.0, step=0.05,
            tooltip="Object probability threshold (0-1, no unit): candidates below it are dropped; "
                    "higher = fewer, surer nuclei"), 3)
        nms = decimals(FloatSpinBox(
            name="nms_thresh", label="Overlap (NMS)", value=0.4, min=0.0, max=1.0, step=0.05,
            tooltip="Non-maximum suppression overlap threshold (0-1, fraction of the smaller nucleus): "
                    "candidates overlapping a kept nucleus more than this are dropped; higher = more "
                    "touching nuclei kept"), 3)
        reset = PushButton(name="model_thresholds", text="Use the model's thresholds",
                           tooltip="Reset both thresholds to the model's (optimised on its validation data)")
        percentiles = TupleEdit(
            name="percentiles", label="Normalise (%)", value=(1.0, 99.8),
            options={"min": 0.0, "max": 100.0, "step": 0.1},
            tooltip="Lower and upper intensity percentiles (%) mapped to 0 and 1 before the network")
        for sub, tip in zip(percentiles, ("Lower intensity percentile (%) mapped to 0 before the network",
                                          "Upper intensity percentile (%) mapped to 1 before the network")):
            sub.tooltip = tip
        auto_tiles = CheckBox(name="auto_tiles", text="Tiles: automatic", value=True,
                              tooltip="Choose the number of tiles from the free memory (untick to set them)")
        tiles = TupleEdit(name="tiles", label="Z, Y, X", value=(1, 1, 1), options={"min": 1, "max": 64},
                          enabled=False,
                          tooltip="Number of tiles along Z, Y, X (1-64 each): more tiles = less memory, "
                                  "a little slower")
        for sub, axis in zip(tiles, "ZYX"):
            sub.tooltip = f"Number of tiles along {axis} (1-64): more tiles = less memory, a little slower"
        device = ComboBox(name="device", label="Device", choices=["auto", "cpu"],
                          tooltip="Where the network runs: auto = the GPU if there is one, else the CPU")
        voxel = LineEdit(name="voxel_size", label="Voxel size (µm)",
                         tooltip="Voxel size Z Y X in µm (filled from the image layer's scale when it has a "
                                 "length unit); the image is resampled to the model's scale and the labels "
                                 "come back at the image's shape. Blank = the image is used as it is")
        voxel.native.setPlaceholderText("unknown: image used as it is")
        obj = LineEdit(name="object_size", label="Object size",
                       tooltip="Nucleus diameter: 3.2um (µm), 25vox (Y/X voxels) or auto (estimated from the "
                               "image; shown in the status line). Overrides the voxel-size rule")
        obj.native.setPlaceholderText("model's (e.g. 3.2um, 25vox, auto)")
        surface = CheckBox(name="show_surface", text="Also show the polyhedra (Surface layer)",
                           tooltip="Also add the predicted star-convex polyhedra as a Surface layer")
        show_prob = CheckBox(name="show_prob", text="Also show the probability map",
                             tooltip="Also add the object probability map (0-1, at the model's grid) as an image")
        self.form = Container(name="nuclei_form", widgets=[
            image, model, model_path, prob, nms, reset, percentiles, auto_tiles, tiles, device, voxel, obj,
            surface, show_prob])
        self.form.margins = (0, 0, 0, 0)

        self.controls = RunControls(
            "Segment nuclei", on_run=self.run, on_cancel=self.cancel,
            progress_text=lambda p: f"[{p.step}/{p.total}] {p.message}", error_prefix="failed: ",
            run_tip="Segment the image with the model and thresholds above (adds or updates the '<image> nuclei' "
                    "Labels layer)",
            cancel_tip="Stop the running segmentation at its next step",
        )
        self.scroll_area = run_dock_layout(self, self.form, self.controls, self.save)

        auto_tiles.changed.connect(lambda on: setattr(tiles, "enabled", not on))
        model.changed.connect(self._model_changed)
        model_path.changed.connect(lambda *_: self.reset_thresholds())
        reset.changed.connect(lambda *_: self.reset_thresholds())
        image.changed.connect(self._fill_voxel_size)
        self._model_changed(model.value)
        for ev in LAYER_EVENTS:
            self.connect_event(getattr(self.viewer.layers.events, ev), self._refresh_layers)
        follow_registry(self, self._refresh_models)  # models registered by the Fine-tune dock
        self._refresh_layers(initial=True)
        self._fill_voxel_size(image.value)
        offer_devices(self, device)  # torch is imported in a background thread
        self._start_warmup()

    # ------------------------------------------------------------------ dock lifecycle (_dock.py)
    def on_dock_shown(self) -> None:
        self._refresh_layers()
        self._refresh_models()

    def on_dock_closed(self) -> None:
        self.cancel()  # a closed dock's job stops at its next step
        self.arrival.flush()  # a result's layers still waiting for their pass are added now

    @staticmethod
    def _start_warmup() -> None:
        """The NMS compiled or loaded in the background (:func:`~._workers.warm_nuclei`)."""
        from napari_neuroseg._napari._workers import warm_nuclei

        warm_nuclei()

    # ------------------------------------------------------------------ form helpers
    def _refresh_layers(self, *_: Any, initial: bool = False) -> None:
        keep_or_prefer(self.form.image, initial=initial)

    def _refresh_models(self, *_: Any) -> None:
        """Take newly registered models into the Model box (the choice is kept)."""
        self.form.model.reset_choices()

    def _model_changed(self, text: str) -> None:
        follow_model_choice(self.form, text, file=FILE, folder=FOLDER)
        self.reset_thresholds()

    def model_spec(self) -> str:
        """The model to load: a bundled or registered name or the path typed in."""
        text = self.form.model.value
        if text in (FOLDER, FILE):
            return typed_model_path(self.form, fix="type or browse a model folder, .pt file or "
                                                   "BioImage.IO package")
        return text

    def reset_thresholds(self) -> None:
        """Set the threshold boxes to the selected model's thresholds. A single model file is
        read with torch: while torch is still being imported in the background, the boxes are
        set once it is done (``_workers.TorchRead``), or at once when a run starts earlier."""
        try:
            spec = self.model_spec()
        except NeurosegError:
            return
        if _reads_with_torch(spec):
            self.thresholds_read.request()
        else:
            self.thresholds_read.cancel()
            self._read_thresholds()

    def _read_thresholds(self) -> None:
        try:
            th = _model_thresholds(self.model_spec())
        except NeurosegError:
            th = None
        if th is not None:
            self.form.prob_thresh.value = th[0]
            self.form.nms_thresh.value = th[1]

    def _fill_voxel_size(self, layer: Any) -> None:
        """The voxel size box follows the chosen layer's ``scale`` when it is a physical size
        (a length unit in the layer's ``units`` or the file's unit); blank otherwise."""
        self.form.voxel_size.value = voxel_size_text(layer)

    def image_layer(self):
        layer = self.form.image.value
        if layer is None or layer not in self.viewer.layers:
            raise NeurosegError("no image layer selected", fix="open an image (e.g. File ▸ Open Sample ▸ napari-neuroseg)")
        return layer

    def parameters(self) -> dict:
        """The run's keyword arguments for :func:`segment_nuclei_iter` (raises NeurosegError)."""
        self.thresholds_read.flush()  # a run before torch's background import ended: read now
        f = self.form
        lo, hi = (float(v) for v in f.percentiles.value)
        if not lo < hi:
            raise NeurosegError(f"normalisation percentiles {lo} and {hi}: low must be below high", fix="e.g. 1 and 99.8")
        return {
            "model": self.model_spec(),
            "device": f.device.value,
            "prob_thresh": f.prob_thresh.value,
            "nms_thresh": f.nms_thresh.value,
            "n_tiles": None if f.auto_tiles.value else tuple(int(v) for v in f.tiles.value),
            "percentiles": (lo, hi),
            "return_prob": bool(f.show_prob.value),
            "with_surface": bool(f.show_surface.value),
            **self._scale_parameters(),
        }

    def _scale_parameters(self) -> dict:
        from napari_neuroseg.runtime.scale import parse_object_size, parse_voxel_size

        vs = self.form.voxel_size.value.strip()
        obj = parse_object_size(self.form.object_size.value)
        return {"voxel_size": parse_voxel_size(vs, what="the voxel size") if vs else None,
                "object_size": None if obj is None else str(obj)}

    # ------------------------------------------------------------------ running
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
        self.arrival.flush()  # the last result's layers still waiting for their pass
        self.result = None
        self._layer_name = layer.name
        self._scale = tuple(layer.scale[-3:])
        self._translate = tuple(layer.translate[-3:])
        display = {"name": self._layer_name, "scale": self._scale, "translate": self._translate}
        return self.controls.start(
            segment_nuclei_iter, layer.data, desc="Nuclei (StarDist-3D)",
            on_yield=self._on_progress, on_return=self._on_result, display=display, **params,
        )

    def _on_progress(self, p: Any) -> None:
        """Per-step hook (the status line and bar are kept by ``self.controls``)."""

    def _on_result(self, result: dict) -> None:
        """Show the result: its labels now, the polyhedra and the probability map each in a later
        event-loop pass, each insert's redraw in the pass after it (:class:`StagedDisplay`); the
        layers were built in the worker. The names and transform are this run's (taken now)."""
        self.result = result
        self.save_button.setEnabled(True)
        self.status.setText(self._summary(result))
        name, scale, translate = self._layer_name, self._scale, self._translate
        built = result.get("layers") or result_layers(result, name, scale, translate)
        steps = [lambda: self._show_labels(result["labels"], built["labels"])]
        if "surface" in result:  # built in the worker (the box was ticked at Run)
            steps.append(lambda: _replace_layer(self.viewer, f"{name} polyhedra", built["surface"]))
        if result.get("prob") is not None:
            steps.append(lambda: _replace_layer(self.viewer, f"{name} probability", built["prob"]))
        self.arrival.start(steps)

    def _show_labels(self, labels: Any, layer: Any) -> None:
        self.result_layer = show_labels_layer(self.viewer, layer, labels)

    # ------------------------------------------------------------------ saving
    def save(self) -> str | None:
        """Save the result's Labels layer (file dialog with the plugin's formats; an input's file
        is overwritten only after asking). Returns the path written, or None."""
        return save_dock_result(self)

    @staticmethod
    def _summary(result: dict) -> str:
        n = len(result["details"]["points"])
        p, q = result["thresholds"]
        scale = f"; {result['scale']}" if result.get("scale") else ""
        return f"{n} nuclei (model {result['model']}, prob {p:.3f}, nms {q:.3f}){scale}"


def _replace_layer(viewer: Any, name: str, layer: Any) -> None:
    """Remove the layer called ``name`` (an earlier run's) and add ``layer`` (if not None)."""
    if name in viewer.layers:
        viewer.layers.remove(name)
    if layer is not None:
        viewer.layers.append(layer)


def voxel_size_text(layer: Any) -> str:
    """The voxel size box's text for a layer: its ``scale`` as ``"Z Y X"`` when it is a physical
    size (a length unit in the layer's ``units`` or the file's unit), else ``""``."""
    from napari_neuroseg.runtime.scale import voxel_size_from_layer_scale

    if layer is None:
        return ""
    vs = voxel_size_from_layer_scale(layer.scale, getattr(layer, "units", None),
                                     (layer.metadata or {}).get("unit"))
    return "" if vs is None else " ".join(f"{v:.4g}" for v in vs)


def save_dock_result(dock: Any) -> str | None:
    """The Save labels… button of a run dock (Nuclei, Neurons): save ``dock.result_layer`` if it is
    still in the viewer, else say there is nothing to save."""
    layer = dock.result_layer
    if layer is None or layer not in dock.viewer.layers:
        dock.save_button.setEnabled(False)
        dock.status.setText("Nothing to save: run the segmentation first.")
        return None
    return save_result_layer(dock, layer)


def save_result_layer(dock: Any, layer: Any) -> str | None:
    """Save ``layer`` through the plugin's writers from ``dock``'s Save… button; the status line
    says what happened (errors also as a notification)."""
    from napari_neuroseg._napari._save import (
        LABELS_FILTERS,
        save_with_dialog,
        write_layer,
    )

    filters = LABELS_FILTERS if (layer.metadata or {}).get("fisbe_instances") is not None else LABELS_FILTERS[:2]
    try:
        path = save_with_dialog(dock, title=f"Save '{layer.name}'", start=f"{layer.name}.tif", filters=filters,
                                viewer=dock.viewer, write=lambda p: write_layer(layer, p))
    except NeurosegError as err:
        notify_error(err)
        dock.status.setText(f"Not saved: {err}")
        return None
    except OSError as err:
        err = NeurosegError(f"could not write the file ({err})", path=getattr(err, "filename", None),
                            fix="choose a folder you can write to, with free space")
        notify_error(err)
        dock.status.setText(f"Not saved: {err}")
        return None
    if path is None:
        dock.status.setText("Not saved.")
        return None
    dock.status.setText(f"Saved '{layer.name}' to {path}")
    return path
