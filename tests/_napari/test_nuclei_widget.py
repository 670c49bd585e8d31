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
    qtbot.waitUntil(lambda: w.worker is None, timeout=60000)
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
    qtbot.waitUntil(lambda: w.worker is None, timeout=60000)
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
