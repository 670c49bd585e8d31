"""The "Nuclei (StarDist-3D)" dock widget: run → labels (+ polyhedra, probability), cancel, errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_neuroseg._napari import _notify
from napari_neuroseg._napari.nuclei_widget import (
    FOLDER,
    NucleiWidget,
    polyhedra_surface,
    segment_nuclei_iter,
)
from napari_neuroseg.runtime.progress import Progress, run_to_completion

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny saved StarDist-3D model (untrained, but biased to give candidates of radius ~3)."""
    import torch

    from napari_neuroseg.models.stardist3d.config import Thresholds
    from napari_neuroseg.models.stardist3d.model import StarDist3D
    from napari_neuroseg.models.stardist3d.train import default_config

    torch.manual_seed(0)
    model = StarDist3D(default_config(n_rays=16, n_filter_base=4, net_conv_after=8), Thresholds(0.6, 0.3), device="cpu")
    with torch.no_grad():
        model.net.prob.conv.bias.fill_(0.3)
        model.net.dist.conv.bias.fill_(3.0)
    return str(model.save(tmp_path_factory.mktemp("m") / "tiny"))


@pytest.fixture(scope="module")
def crop():
    from napari_neuroseg.synth import load_sample

    image, labels = load_sample("nuclei")
    return image[:16, :48, :48], labels[:16, :48, :48]


@pytest.fixture
def errors_shown(monkeypatch):
    shown: list = []
    monkeypatch.setattr(_notify, "show_error", shown.append)
    return shown


def test_segment_generator_and_polyhedra_without_gui(crop, tiny_model):
    image, _ = crop
    steps = []
    res = run_to_completion(segment_nuclei_iter(image, tiny_model, device="cpu", return_prob=True), steps.append)
    assert all(isinstance(p, Progress) for p in steps) and steps[0].message == "loading the model"
    assert res["labels"].shape == image.shape and res["prob"].shape == (16, 24, 24)
    assert res["thresholds"] == (0.6, 0.3)
    details = {
        "points": np.array([[5, 10, 10], [8, 30, 30]]),
        "dist": np.full((2, 16), 3.0, np.float32),
        "rays_vertices": res["details"]["rays_vertices"],
        "rays_faces": res["details"]["rays_faces"],
    }
    v, f, vals = polyhedra_surface(details)
    assert v.shape == (32, 3) and f.shape == (2 * len(details["rays_faces"]), 3) and f.max() == 31
    np.testing.assert_allclose(np.linalg.norm((v[:16] - [5, 10, 10]) / 1.0, axis=1),
                               3 * np.linalg.norm(details["rays_vertices"], axis=1), rtol=1e-5)
    assert set(vals) == {1.0, 2.0}
    assert polyhedra_surface({**details, "points": np.zeros((0, 3))}) is None


def test_widget_runs_and_adds_layers(make_napari_viewer, qtbot, crop, tiny_model, errors_shown, tmp_path,
                                     monkeypatch):
    image, _ = crop
    viewer = make_napari_viewer()
    viewer.add_image(image, name="nuclei", scale=(2, 1, 1))
    w = NucleiWidget(viewer)
    viewer.window.add_dock_widget(w)
    f = w.form
    assert f.image.value is viewer.layers["nuclei"]
    f.model.value = FOLDER
    f.model_path.value = tiny_model  # the model's thresholds fill the boxes
    assert (f.prob_thresh.value, f.nms_thresh.value) == (0.6, 0.3)
    f.prob_thresh.value = 0.55
    f.show_surface.value = True
    f.show_prob.value = True
    f.device.value = "cpu"
    assert w.run() is not None
    # the layers arrive one event-loop pass each (w.arrival)
    qtbot.waitUntil(lambda: w.worker is None and not w.arrival.pending, timeout=60000)
    assert errors_shown == [] and w.result is not None
    labels = viewer.layers["nuclei nuclei"]
    assert labels.data.shape == image.shape and tuple(labels.scale) == (2, 1, 1)
    assert labels.data.dtype == np.uint16  # made ready in the worker: no per-slice remap in napari
    assert w.result["surface"] is not None  # the polyhedra were built in the worker too
    assert w.result["thresholds"] == (0.55, 0.3)
    prob = viewer.layers["nuclei probability"]
    assert tuple(prob.scale) == (2, 2, 2)
    n = len(w.result["details"]["points"])
    assert n > 0 and labels.data.max() > 0
    surf = viewer.layers["nuclei polyhedra"]
    assert len(surf.data[0]) == n * 16
    assert f"{n} nuclei" in w.status.text()
    # a second run updates the same labels layer
    f.show_surface.value = False
    w.run()
    qtbot.waitUntil(lambda: w.worker is None and not w.arrival.pending, timeout=60000)
    assert [ly.name for ly in viewer.layers].count("nuclei nuclei") == 1
    # Save labels…: the plugin's TIFF writer, voxel size kept; the dialog offers the plugin's formats
    from napari_neuroseg._napari import _save
    from napari_neuroseg.io import read_labels

    offered: list = []
    out = tmp_path / "nuclei labels"
    monkeypatch.setattr(_save, "ask_save_path",
                        lambda parent, title, start, filters: (offered.append(list(filters)) or (str(out), filters[0])))
    assert w.save_button.isEnabled() and w.save() == str(out) + ".tif"
    assert offered[0][:2] == [_save.TIFF_FILTER, _save.OME_ZARR_FILTER]
    np.testing.assert_array_equal(read_labels(str(out) + ".tif"), labels.data)
    assert "Saved" in w.status.text()


def test_widget_cancel(make_napari_viewer, qtbot, tiny_model, errors_shown):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.random((16, 96, 96)).astype(np.float32), name="noise")
    w = NucleiWidget(viewer)
    w.form.model.value = FOLDER
    w.form.model_path.value = tiny_model
    w.form.auto_tiles.value = False
    assert w.form.tiles.enabled
    w.form.tiles.value = (1, 6, 6)
    seen = []
    w._on_progress = lambda p: (seen.append(p), w.cancel() if len(seen) == 2 else None)
    worker = w.run()
    assert worker is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=60000)
    assert w.result is None and errors_shown == []
    assert "noise nuclei" not in viewer.layers
    assert w.status.text() == "cancelled" and w.run_button.isEnabled()
    assert len(seen) < 12  # stopped long before the 36 tiles were done


def test_widget_errors_are_shown(make_napari_viewer, qtbot, tiny_model, errors_shown):
    viewer = make_napari_viewer()
    w = NucleiWidget(viewer)
    assert w.run() is None and "no image layer" in str(errors_shown[-1])
    viewer.add_image(np.zeros((8, 32, 32), np.float32), name="flat")
    w.form.model.value = FOLDER
    w.form.model_path.line_edit.value = ""
    assert w.run() is None and "no model path" in str(errors_shown[-1])
    w.form.model_path.value = tiny_model
    w.form.percentiles.value = (50, 10)
    assert w.run() is None and "percentiles" in str(errors_shown[-1])
    w.form.percentiles.value = (1, 99.8)
    n = len(errors_shown)
    assert w.run() is not None  # a constant image fails inside the worker
    qtbot.waitUntil(lambda: w.worker is None, timeout=60000)
    assert len(errors_shown) == n + 1 and "constant" in str(errors_shown[-1])
    assert w.status.text().startswith("failed") and w.run_button.isEnabled()


def test_dock_compiles_the_nms_in_the_background(make_napari_viewer):
    """Opening the dock starts the one-time numba compilation in a background thread (not in the
    user's first run, where it stalled the viewer)."""
    import time

    from napari_neuroseg.models.stardist3d import nms

    NucleiWidget(make_napari_viewer())
    t0 = time.time()
    while nms._WARM.get("thread") is None and time.time() - t0 < 30:
        time.sleep(0.05)
    th = nms._WARM.get("thread")
    assert th is not None and th.daemon and th is not __import__("threading").main_thread()


def test_bioimageio_package_as_model(make_napari_viewer, tiny_model, tmp_path):
    """A BioImage.IO package (zip or its folder) is a model of the Model box: its stored
    thresholds fill the boxes; TorchScript is never what is loaded (the state dict is)."""
    import zipfile

    pytest.importorskip("bioimageio.spec")
    from napari_neuroseg._napari.nuclei_widget import FILE
    from napari_neuroseg.models.bioimageio import export_package
    from napari_neuroseg.models.stardist3d import load_model

    pkg = export_package(tiny_model, tmp_path / "tiny.zip")
    w = NucleiWidget(make_napari_viewer())
    f = w.form
    f.model.value = FILE
    assert f.model_path.mode.value == "r"
    f.prob_thresh.value, f.nms_thresh.value = 0.1, 0.1
    f.model_path.value = str(pkg)
    assert (f.prob_thresh.value, f.nms_thresh.value) == (0.6, 0.3)
    assert w.model_spec() == str(pkg)
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(pkg) as z:
        z.extractall(folder)
    f.model.value = FOLDER
    f.prob_thresh.value = 0.1
    f.model_path.value = str(folder)
    assert f.prob_thresh.value == 0.6
    m = load_model(w.model_spec(), device="cpu")
    assert m.thresholds.prob == 0.6


def _synthetic_result(shape=(8, 24, 24)):
    labels = np.zeros(shape, np.uint16)
    labels[2:5, 4:9, 4:9] = 1
    tetra = (np.array([[2, 4, 4], [2, 8, 4], [2, 4, 8], [5, 6, 6]], np.float32),
             np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]), np.ones(4, np.float32))
    return {"labels": labels, "details": {"points": np.zeros((1, 3))}, "thresholds": (0.5, 0.4),
            "model": "synthetic", "grid": (1, 2, 2), "surface": tetra,
            "prob": np.full((shape[0], shape[1] // 2, shape[2] // 2), 0.5, np.float32)}


def _dock_with_result_pending(viewer, name="img"):
    w = NucleiWidget(viewer)
    viewer.window.add_dock_widget(w)  # the dock finds the canvas in its window
    w._layer_name, w._scale, w._translate = name, (2.0, 1.0, 1.0), (0.0, 0.0, 0.0)
    w._on_result(_synthetic_result())
    return w


def test_result_layers_arrive_one_event_loop_pass_each(make_napari_viewer, qtbot):
    """The labels are added at once, the polyhedra and the probability map each in a later
    event-loop pass (a 1 ms timer after the previous insert's redraw), so napari's inserts and
    redraws never add up to one stall; the layers were built off the main thread; the last added
    layer is the active one, as before."""
    from qtpy.QtCore import QCoreApplication
    from qtpy.QtOpenGLWidgets import QOpenGLWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 24, 24), np.float32), name="img", scale=(2, 1, 1))
    w = _dock_with_result_pending(viewer)
    canvases = w.window().findChildren(QOpenGLWidget)
    assert canvases and not any(c.updatesEnabled() for c in canvases)  # no redraw in this pass
    labels = viewer.layers["img nuclei"]
    assert w.result_layer is labels and tuple(labels.scale) == (2, 1, 1) and "1 nuclei" in w.status.text()
    QCoreApplication.sendPostedEvents()  # a posted call would run in the same stall: none
    assert "img polyhedra" not in viewer.layers and w.arrival.pending
    qtbot.waitUntil(lambda: "img polyhedra" in viewer.layers, timeout=3000)
    assert "img probability" not in viewer.layers or not w.arrival.pending
    qtbot.waitUntil(lambda: not w.arrival.pending and all(c.updatesEnabled() for c in canvases), timeout=3000)
    assert [ly.name for ly in viewer.layers] == ["img", "img nuclei", "img polyhedra", "img probability"]
    assert tuple(viewer.layers["img probability"].scale) == (2, 2, 2)
    assert viewer.layers.selection.active is viewer.layers["img probability"]
    # painting overlays: no visual until their mode is picked
    assert not labels._overlays["polygon"].visible
    labels.mode = "polygon"
    assert labels._overlays["polygon"].visible


def test_pending_result_layers_are_added_when_a_run_starts_or_the_dock_closes(
        make_napari_viewer, qtbot, tiny_model, monkeypatch):
    """A new run (here of another image) or closing the dock between the passes adds the waiting
    layers at once, under the earlier run's names; no pass of the old result runs later."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 24, 24), np.float32), name="img")
    viewer.add_image(np.zeros((8, 24, 24), np.float32), name="other")
    w = _dock_with_result_pending(viewer)
    assert "img polyhedra" not in viewer.layers
    w.form.image.value = viewer.layers["other"]
    w.form.model.value = FOLDER
    w.form.model_path.value = tiny_model
    started = []
    monkeypatch.setattr(w.controls, "start", lambda *a, **kw: started.append(kw) or object())
    assert w.run() is not None and started and started[0]["display"]["name"] == "other"
    assert not w.arrival.pending
    names = [ly.name for ly in viewer.layers]
    assert names[2:] == ["img nuclei", "img polyhedra", "img probability"]
    qtbot.wait(100)
    assert [ly.name for ly in viewer.layers] == names  # nothing added twice, nothing under "other"
    # the dock closes between the passes: the layers are added too
    w2 = _dock_with_result_pending(viewer, name="other")
    assert "other polyhedra" not in viewer.layers
    w2.teardown()
    assert not w2.arrival.pending
    assert {"other nuclei", "other polyhedra", "other probability"} <= {ly.name for ly in viewer.layers}


def test_pending_result_layers_after_the_viewer_closed_raise_nothing(make_napari_viewer, qtbot):
    """The viewer closed (with its dock) between the passes: the waiting steps are dropped, no
    timer touches the deleted dock."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 24, 24), np.float32), name="img")
    w = _dock_with_result_pending(viewer)
    assert w.arrival.pending
    viewer.close()
    qtbot.wait(200)  # an exception in a timer fails the test (pytest-qt)
    assert not w.arrival.pending
