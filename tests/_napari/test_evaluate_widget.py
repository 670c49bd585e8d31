"""The "Evaluate segmentation" widget: run in a worker, tables, error layers, jump, export."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "metrics"))
from helpers import SHAPE, labels_from, stack_from, three_tubes, tube  # noqa: E402

from napari_neuroseg._napari.evaluate_widget import ERROR_CONTOUR_PX, EvaluateWidget  # noqa: E402


def _scene(viewer):
    masks = three_tubes()
    stack = stack_from(masks)
    gt_labels = labels_from(masks).astype(np.uint32)
    left, right = tube(y=8, x1=70, r=2), tube(y=8, x0=70, r=2)  # > 800 voxels each
    extra = tube(z=20, y=44, x0=0, x1=130)
    pred = labels_from([left, right, masks[1], extra], ids=[11, 12, 13, 50]).astype(np.int32)
    viewer.add_labels(gt_labels, name="gt_instances",
                      metadata={"fisbe_instances": stack, "fisbe_dim_neurons": [3]})
    viewer.add_labels(pred, name="prediction")
    return stack, pred


def _run(widget, qtbot):
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert widget.result is not None, widget.status.text()
    return widget.result


def test_widget_evaluates_and_adds_error_layers(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    stack, pred = _scene(viewer)
    w = EvaluateWidget(viewer)
    assert w.form.gt.value is viewer.layers["gt_instances"]
    assert w.form.pred.value is viewer.layers["prediction"]
    # auto task: a FISBe stack means neurons, and the widget says so with the preset's filter
    assert w.task == "auto" and "FISBe" in w.task_note.text()
    assert "800 voxels" in w.task_note.text()
    res = _run(w, qtbot)
    # tube 3 missed, tube 1 split (11 + 12), extra tube 50 false positive; dim neuron 3 read
    assert res["errors"]["missed_gt"] == [3]
    assert res["errors"]["false_split"] == [{"gt": 1, "preds": [11, 12]}]
    assert 50 in res["errors"]["false_positive"]
    assert res["dim"]["n"] == 1 and res["FS"] == 1
    assert w.summary.item(1, 0).text() == "avF1"
    assert float(w.summary.item(1, 1).text()) == pytest.approx(res["avF1"], abs=1e-4)
    assert w.thresholds.rowCount() == 14
    assert res["task"] == "neurons" and res["preset"]["min_size"] == 800
    # one error layer: only the erroneous objects, each kind in its colour, the user's ids in
    # its features; the list states the FISBe rule first
    layer = viewer.layers["evaluation errors"]
    feats = layer.features.set_index("index")
    kinds = {v: (feats.loc[v, "error"], int(feats.loc[v, "id"])) for v in feats.index}
    assert sorted(kinds.values()) == sorted(
        [("missed GT", 3), ("false splits", 1)]
        + [("false positives", p) for p in res["errors"]["false_positive"]])
    missed_v = next(v for v, k in kinds.items() if k == ("missed GT", 3))
    assert np.array_equal(layer.data == missed_v, stack[2] > 0)
    fp_v = next(v for v, k in kinds.items() if k == ("false positives", 50))
    assert np.array_equal(layer.data == fp_v, pred == 50)
    cmap = layer.colormap
    assert np.allclose(cmap.map(np.array([missed_v]))[0][:3], [1, 0, 1])  # magenta
    assert np.allclose(cmap.map(np.array([fp_v]))[0][:3], [1, 1, 0])  # yellow
    # errors are outlines (never read as one more label colour), fully opaque; the legend says
    # which colour is which kind, with counts; each list entry carries its kind's colour
    assert layer.contour == ERROR_CONTOUR_PX and layer.opacity == 1.0
    n_fp = len(res["errors"]["false_positive"])
    assert w.legend_labels["missed_gt"].text().endswith("missed GT (1)")
    assert w.legend_labels["false_positive"].text().endswith(f"false positives ({n_fp})")
    assert w.legend_labels["false_merge"].text().endswith("false merges (0)")
    assert all(not w.errors_list.item(i).icon().isNull() for i in range(1, w.errors_list.count()))
    assert w.sizeHint().width() <= 420  # the filled tables do not widen the dock
    assert viewer.layers["prediction"].colormap is not cmap  # the result's colours are left alone
    assert "FISBe preset" in w.errors_list.item(0).text()
    assert "800 voxels" in w.errors_list.item(0).text()
    assert w.errors_list.count() == 1 + len(res["errors"]["missed_gt"]) + len(
        res["errors"]["false_positive"]) + 1
    assert layer not in w.form.gt.choices and layer not in w.form.pred.choices
    # jump to the missed neuron (named for the task): the view slices through a voxel of it,
    # centres there, zooms to its box, and its value is selected
    item = next(w.errors_list.item(i) for i in range(w.errors_list.count())
                if w.errors_list.item(i).text().startswith("missed neuron: GT 3"))
    zoom_before = viewer.scene.camera.zoom
    w._jump(item)
    on = np.argwhere(stack[2] > 0)
    z = int(round(viewer.dims.point[0]))
    y, x = (float(c) for c in tuple(viewer.scene.camera.center)[-2:])
    assert stack[2][z, int(round(y)), int(round(x))] > 0  # on the object, not just near it
    assert np.linalg.norm(on.mean(axis=0) - [z, y, x]) <= np.linalg.norm(
        on - on.mean(axis=0), axis=1).min() + 1e-6  # the object's voxel nearest its centroid
    assert viewer.scene.camera.zoom != zoom_before
    assert layer.selected_label == missed_v
    # export
    w.export_csv(str(tmp_path / "m.csv"))
    rows = list(csv.reader(open(tmp_path / "m.csv")))
    assert rows[0][:3] == ["sample", "S", "avF1"] and rows[3][0] == "threshold"
    w.export_json(str(tmp_path / "m.json"))
    assert json.loads((tmp_path / "m.json").read_text())["errors"]["missed_gt"] == [3]
    # running again updates the error layer instead of stacking copies
    _run(w, qtbot)
    assert sum(ly.name == "evaluation errors" for ly in viewer.layers) == 1


def test_widget_partly_and_bad_input(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _scene(viewer)
    w = EvaluateWidget(viewer)
    assert "fully labelled" in w.task_note.text()
    w.form.partly.value = True
    assert "partly labelled" in w.task_note.text()  # the mode is stated in the dock ...
    res = _run(w, qtbot)
    assert res["partly"] and 50 not in res["errors"]["false_positive"]
    rule = w.errors_list.item(0).text()  # ... and at the head of the error list, with the size filter
    assert "partly labelled" in rule and "800 voxels" in rule, rule
    # a 2D prediction layer: a clear error in the status line, no result, buttons usable again
    viewer.add_labels(np.zeros((10, 10), np.int32), name="flat pred")
    w.form.pred.value = viewer.layers["flat pred"]
    w.run()
    qtbot.waitUntil(lambda: w.worker is None, timeout=30000)
    assert w.result is None and "2D" in w.status.text()
    assert w.run_button.isEnabled()


def test_lazy_fisbe_stack_is_read_through_its_file(make_napari_viewer, fisbe_small):
    """A FISBe GT layer whose stack is lazy (dask) is evaluated from its Zarr file directly
    (the chunk reader), with its dim neurons."""
    import dask.array as da

    viewer = make_napari_viewer()
    stack = fisbe_small["stack"]
    layer = viewer.add_labels(
        np.zeros(stack.shape[1:], np.uint32), name="gt",
        metadata={"fisbe_instances": da.from_array(stack), "fisbe_dim_neurons": [2],
                  "fisbe_source": str(fisbe_small["path"])})
    src, dim = EvaluateWidget._source(layer)
    assert dim == [2]
    assert hasattr(src, "store_path") and tuple(src.shape) == stack.shape  # the zarr array
    np.testing.assert_array_equal(np.asarray(src[:]), stack)


def test_nuclei_task_matches_stardist_and_feeds_the_list(make_napari_viewer, qtbot, tmp_path):
    """Compact objects: auto picks nuclei; stardist's numbers; unmatched at IoU 0.5 listed."""
    from stardist.matching import matching

    viewer = make_napari_viewer()
    gt = np.zeros((12, 40, 40), np.uint16)
    gt[2:6, 2:8, 2:8] = 1
    gt[2:6, 20:26, 20:26] = 2
    gt[6:10, 30:36, 5:11] = 3  # missed
    pred = np.zeros_like(gt, np.uint32)
    pred[2:6, 2:8, 3:8] = 7  # IoU 5/6
    pred[2:6, 20:26, 20:26] = 8
    pred[8:11, 10:14, 30:34] = 9  # false positive (small: the FISBe filter would drop all three)
    viewer.add_labels(gt, name="nuclei gt")
    viewer.add_labels(pred, name="nuclei pred")
    w = EvaluateWidget(viewer)
    w.form.gt.value = viewer.layers["nuclei gt"]
    w.form.pred.value = viewer.layers["nuclei pred"]
    assert w.task == "auto" and w.task_note.text().startswith("auto: nuclei")
    assert not w.form.partly.enabled
    res = _run(w, qtbot)
    ref = matching(gt, pred, 0.5)
    assert res["task"] == "nuclei" and res["task_reason"].startswith("guessed")
    assert (res["TP_05"], res["precision"], res["recall"], res["f1"]) == (
        ref.tp, ref.precision, ref.recall, ref.f1)
    assert res["errors"]["missed_gt"] == [3] and res["errors"]["false_positive"] == [9]
    assert "IoU 0.5" in w.errors_list.item(0).text()
    assert w.errors_list.count() == 3
    assert w.summary.item(0, 0).text().startswith("F1")
    assert float(w.summary.item(0, 1).text()) == pytest.approx(ref.f1, abs=1e-4)
    assert w.thresholds.rowCount() == 9
    w.export_csv(str(tmp_path / "n.csv"))
    rows = list(csv.reader(open(tmp_path / "n.csv")))
    assert rows[0][:3] == ["sample", "f1", "precision"]
    # the neurons task on the same layers states its size filter with the result
    w.set_task("neurons")
    assert "800 voxels" in w.task_note.text()
    res = _run(w, qtbot)
    assert res["task"] == "neurons" and res["preset"]["n_removed_small_pred"] == 3
    assert "3 removed" in w.errors_list.item(0).text()


def test_save_metrics_and_error_layer(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """Save…: JSON (everything), CSV (the tables) or the error layer through the plugin's writers;
    the dialog offers those formats; an input's file is overwritten only when the user agrees."""
    from napari_neuroseg._napari import _save
    from napari_neuroseg.io import read_labels

    viewer = make_napari_viewer()
    _scene(viewer)
    w = EvaluateWidget(viewer)
    assert not w.save_button.isEnabled()
    _run(w, qtbot)
    assert w.save_button.isEnabled()
    answers: list = []
    offered: list = []
    monkeypatch.setattr(_save, "ask_save_path",
                        lambda parent, title, start, filters: offered.append(list(filters)) or answers.pop(0))
    agree: list = []
    monkeypatch.setattr(_save, "confirm", lambda parent, title, text: agree.pop(0))
    answers.append((str(tmp_path / "m"), "Metrics, everything (*.json)"))
    assert w.save() == str(tmp_path / "m.json")
    assert [f.split(" (")[0] for f in offered[0]] == ["Metrics, everything", "Metrics tables",
                                                      "Error layer, TIFF with voxel size", "Error layer, OME-Zarr"]
    assert json.loads((tmp_path / "m.json").read_text())["errors"]["missed_gt"] == [3]
    answers.append((str(tmp_path / "m.csv"), ""))
    assert w.save() == str(tmp_path / "m.csv")
    assert (tmp_path / "m.csv").read_text().splitlines()[0].startswith("sample,S,")
    answers.append((str(tmp_path / "errors.tif"), ""))
    assert w.save() == str(tmp_path / "errors.tif")
    np.testing.assert_array_equal(read_labels(tmp_path / "errors.tif"), viewer.layers["evaluation errors"].data)
    # a file an open layer was read from: asked first; "no" keeps it, "yes" overwrites
    src = tmp_path / "gt.tif"
    src.write_bytes(b"original")
    viewer.layers["gt_instances"]._source = type(viewer.layers["gt_instances"].source)(path=str(src))
    answers.append((str(src), ""))
    agree.append(False)
    assert w.save() is None and src.read_bytes() == b"original" and "Not saved" in w.status.text()
    answers.append((str(src), ""))
    agree.append(True)
    assert w.save() == str(src) and src.read_bytes() != b"original"


def test_controls_follow_the_viewers_layers(make_napari_viewer):
    """The layer boxes list the Labels layers (not the error layer), follow additions, removals
    and renames, and keep the user's choice."""
    viewer = make_napari_viewer()
    a = viewer.add_labels(np.zeros((4, 8, 8), np.uint8), name="a gt")
    w = EvaluateWidget(viewer)
    viewer.add_image(np.zeros((4, 8, 8), np.float32), name="image")
    b = viewer.add_labels(np.zeros((4, 8, 8), np.uint8), name="b pred")
    assert list(w.form.gt.choices) == [a, b] and w.form.pred.value is b
    w.form.gt.value = b
    w.form.pred.value = a
    viewer.add_labels(np.zeros((4, 8, 8), np.uint8), name="evaluation errors",
                      metadata={"neuroseg_error_kind": "all"})
    assert w.form.gt.value is b and w.form.pred.value is a and len(w.form.gt.choices) == 2
    b.name = "renamed"
    assert "renamed" in [w.form.gt.native.itemText(i) for i in range(w.form.gt.native.count())]
    viewer.layers.remove(b)
    assert list(w.form.gt.choices) == [a]


def test_error_place_lies_on_the_object_even_when_its_centroid_does_not():
    """A ring's centroid is in its hole: the jump target is the ring voxel nearest it, and the
    box is the ring's."""
    from napari_neuroseg._napari.evaluate_widget import _place

    lab = np.zeros((3, 21, 21), np.uint16)
    zz, yy, xx = np.mgrid[:3, :21, :21]
    r = np.hypot(yy - 10, xx - 10)
    lab[(r >= 6) & (r <= 8) & (zz == 1)] = 5
    voxel, bbox = _place(np.flatnonzero(lab == 5), lab.shape)
    assert lab[voxel] == 5
    assert bbox == [[1, 2], [2, 19], [2, 19]]
    assert _place(np.zeros(0, np.int64), lab.shape) is None


def test_error_layer_added_in_a_3d_view_without_an_error(make_napari_viewer, qtbot, monkeypatch):
    """A 3D view the mouse has not moved in: adding a Labels layer with features made napari's
    status update fail ("len() of unsized object"); the dock adds the features after the layer,
    and the outline setting (2D only) does not warn."""
    import warnings

    from napari.utils.events import event as napari_event

    caught: list = []
    monkeypatch.setattr(napari_event, "_handle_exception", lambda *a, **k: caught.append(a))
    viewer = make_napari_viewer(show=True)
    gt = np.zeros((12, 40, 40), np.uint16)
    gt[2:6, 2:8, 2:8], gt[2:6, 20:26, 20:26], gt[6:10, 30:36, 5:11] = 1, 2, 3  # 3 is missed
    pred = np.where(gt == 3, 0, gt).astype(np.uint32)
    pred[8:11, 10:14, 30:34] = 9  # a false positive
    viewer.add_labels(gt, name="gt")
    viewer.add_labels(pred, name="pred")
    viewer.dims.ndisplay = 3
    w = EvaluateWidget(viewer)
    w.form.gt.value, w.form.pred.value = viewer.layers["gt"], viewer.layers["pred"]
    w.set_task("nuclei")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        res = _run(w, qtbot)
    layer = viewer.layers["evaluation errors"]
    assert caught == [] and w.last_error is None
    assert layer.features.shape[0] == len(res["errors"]["missed_gt"]) + len(res["errors"]["false_positive"])
    assert layer.contour == ERROR_CONTOUR_PX


def test_error_layer_arrives_in_one_step_built_in_the_worker(make_napari_viewer, qtbot):
    """The error layer is made in the worker (its data, colours, outlines and transform set
    there) and inserted once; the painting overlays get their visuals only when their mode is
    picked, and a re-run swaps the data of the same layer with one refresh."""
    import threading

    from napari_neuroseg._napari import evaluate_widget as ew

    viewer = make_napari_viewer(show=True)
    gt = np.zeros((12, 40, 40), np.uint16)
    gt[2:6, 2:8, 2:8], gt[2:6, 20:26, 20:26], gt[6:10, 30:36, 5:11] = 1, 2, 3  # 3 is missed
    pred = np.where(gt == 3, 0, gt).astype(np.uint32)
    viewer.add_labels(gt, name="gt", scale=(2, 1, 1))
    viewer.add_labels(pred, name="pred", scale=(2, 1, 1))
    made_in: list[str] = []
    make = ew.make_error_layer

    def spy(*a, **k):
        made_in.append(threading.current_thread().name)
        return make(*a, **k)

    ew.make_error_layer = spy
    try:
        w = EvaluateWidget(viewer)
        w.form.gt.value, w.form.pred.value = viewer.layers["gt"], viewer.layers["pred"]
        w.set_task("nuclei")
        _run(w, qtbot)
    finally:
        ew.make_error_layer = make
    assert len(made_in) == 1 and made_in[0] != threading.main_thread().name
    layer = viewer.layers["evaluation errors"]
    assert viewer.layers.selection.active is layer
    assert layer.contour == ERROR_CONTOUR_PX and tuple(layer.scale) == (2, 1, 1)
    assert list(layer.features["id"]) == [3]
    visuals = viewer.window._qt_viewer.canvas._layer_overlay_to_visual.get(layer, {})
    polygon = layer._overlays["polygon"]
    assert polygon not in visuals and not polygon.visible
    layer.mode = "polygon"  # the user picks the polygon tool: its overlay is built and shown
    assert polygon.visible and polygon in viewer.window._qt_viewer.canvas._layer_overlay_to_visual[layer]
    layer.mode = "paint"
    assert layer._overlays["brush_stroke"].visible
    # a re-run swaps the data of the same layer: one refresh (the transform did not change)
    refreshes: list = []
    layer.events.set_data.connect(lambda *_: refreshes.append(1))
    pred2 = pred.copy()
    pred2[pred2 == 2] = 0  # now 2 is missed too
    viewer.layers["pred"].data = pred2
    _run(w, qtbot)
    assert viewer.layers["evaluation errors"] is layer and sorted(layer.features["id"]) == [2, 3]
    assert len(refreshes) == 1


def test_result_and_its_redraw_are_two_event_loop_passes(make_napari_viewer, qtbot):
    """The error layer is added (or its data swapped) in one pass and the canvas redrawn in the
    next (a 1 ms timer, after the ticks due), so the two stalls (a 3D redraw alone takes ~0.3 s
    under software OpenGL) never add up; the canvas is repainted afterwards."""
    from napari_neuroseg._napari.evaluate_widget import evaluate_layers_iter
    from napari_neuroseg.runtime.progress import run_to_completion

    viewer = make_napari_viewer(show=True)
    gt = np.zeros((12, 40, 40), np.uint16)
    gt[2:6, 2:8, 2:8], gt[6:10, 30:36, 5:11] = 1, 3
    pred = np.where(gt == 3, 0, gt).astype(np.uint32)
    viewer.add_labels(gt, name="gt")
    viewer.add_labels(pred, name="pred")
    w = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(w)  # the dock finds the canvas in its window
    from qtpy.QtCore import QCoreApplication

    native = viewer.window._qt_viewer.canvas.native
    draws: list[int] = []
    viewer.window._qt_viewer.canvas._scene_canvas.events.draw.connect(lambda *_: draws.append(1))
    qtbot.wait(200)
    for _ in range(2):  # the first result adds the layer, the second swaps its data
        value = run_to_completion(evaluate_layers_iter(gt, pred, False, task="nuclei"))
        draws.clear()
        w._on_result(value)
        assert viewer.layers["evaluation errors"].data.max() > 0
        assert not native.updatesEnabled()  # no redraw inside this pass
        # nor among the events posted meanwhile (a 0 ms single shot is one of them: it let the
        # redraw run before the timers, i.e. in the same stall)
        QCoreApplication.sendPostedEvents()
        assert not native.updatesEnabled() and draws == []
        qtbot.waitUntil(lambda: native.updatesEnabled() and bool(draws), timeout=3000)  # a timer redraws


def test_dock_uses_no_private_napari_attribute(make_napari_viewer, qtbot):
    """napari hands a plugin dock a viewer that warns on private attributes (FutureWarning: they
    go in napari 0.10): a run, its error layer and a re-run touch none."""
    import warnings

    from napari.utils._proxies import PublicOnlyProxy

    viewer = make_napari_viewer(show=True)
    gt = np.zeros((12, 40, 40), np.uint16)
    gt[2:6, 2:8, 2:8], gt[6:10, 30:36, 5:11] = 1, 3
    viewer.add_labels(gt, name="gt")
    viewer.add_labels(np.where(gt == 3, 0, gt).astype(np.uint32), name="pred")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w = EvaluateWidget(PublicOnlyProxy(viewer))
        viewer.window.add_dock_widget(w)
        w.set_task("nuclei")
        for _ in range(2):
            _run(w, qtbot)
            qtbot.wait(50)
    private = [str(c.message) for c in caught if "Private attribute" in str(c.message)]
    assert private == []
    assert "evaluation errors" in viewer.layers


# ------------------------------------------------------------------ errors to the review queue, jump outline
def _docked_evaluate(viewer):
    _dw, w = viewer.window.add_plugin_dock_widget("napari-neuroseg", "Evaluate segmentation")
    return w


def _proofreading(viewer):
    _dw, p = viewer.window.add_plugin_dock_widget("napari-neuroseg", "Proofreading")
    return p


def test_review_these_errors_feeds_the_proofreading_queue_without_recomputing(make_napari_viewer, qtbot,
                                                                                monkeypatch):
    """G1: the Evaluate result's errors become the Proofreading dock's review queue on the
    evaluated prediction (never the GT), with the task, rule and partly-labelled mode; the
    metrics are not run again."""
    import napari_neuroseg.metrics.nuclei as nuclei_metrics

    viewer = make_napari_viewer(show=True)
    _scene(viewer)
    w = _docked_evaluate(viewer)
    assert not w.review_button.isEnabled()
    w.form.partly.value = True
    res = _run(w, qtbot)
    assert w.review_button.isEnabled()

    def no_metrics(*a, **k):
        raise AssertionError("the metrics ran again")

    monkeypatch.setattr(nuclei_metrics, "evaluate_task_iter", no_metrics)
    viewer.layers.selection.active = viewer.layers["gt_instances"]  # the GT selected: still not the target
    w.review_button.click()
    p = _proofreading(viewer)
    qtbot.waitUntil(lambda: w._review_worker is None, timeout=60000)
    assert p.controller is not None and p.controller.review is not None, (w.status.text(), p.status_label.text())
    q = p.controller.review
    # the prediction is the edited layer (napari hands plugin docks proxies: compare name and data)
    assert p.controller.layer.name == "prediction"
    assert p.controller.layer.data is viewer.layers["prediction"].data
    kinds = sorted((it.kind, it.id) for it in q.items)
    assert kinds == sorted([("missed_gt", 3), ("false_split", 1)]
                           + [("false_positive", i) for i in res["errors"]["false_positive"]])
    assert q.meta["task"] == "neurons" and q.meta["partly"] is True and q.meta["rule"] == res["error_rule"]
    assert p.task_combo.currentData() == "neurons" and p.partly.isChecked()
    assert p.gt_combo.currentText() == "gt_instances"
    text = p.review_label.text()
    assert "800 voxels" in text and "partly labelled" in text  # G2: the queue states its rule
    assert "queued for review" in w.status.text()
    # walking it outlines the missed neuron from the FISBe stack
    while q.current is None or q.current.kind != "missed_gt":
        p.run_action("review_next")
    assert "missed neuron" in p.review_label.text()


def test_review_is_refused_when_the_layers_changed(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    _scene(viewer)
    w = _docked_evaluate(viewer)
    _run(w, qtbot)
    pred = viewer.layers["prediction"]
    before = pred.data.copy()
    pred.data[0, 0, 0] = 77  # an edit in place (as painting does)
    worker = w.review_errors()
    assert worker is not None
    qtbot.waitUntil(lambda: w._review_worker is None, timeout=60000)
    assert "changed since the evaluation" in w.status.text() and "Evaluate again" in w.status.text()
    assert not w.review_button.isEnabled()
    names = [ly.name for ly in viewer.layers]
    assert np.array_equal(pred.data[1:], before[1:])  # nothing else touched
    # evaluated again: allowed; then the ground truth removed: refused at once
    _run(w, qtbot)
    assert w.review_button.isEnabled()
    viewer.layers.remove("gt_instances")
    assert w.review_errors() is None
    assert "removed since the evaluation" in w.status.text()
    assert [ly.name for ly in viewer.layers] == [n for n in names if n != "gt_instances"]


def test_jump_outlines_the_error_in_white_with_the_review_outline_layer(make_napari_viewer, qtbot):
    """G3: the jumped-to error is outlined in white (the review queue's outline layer, its data
    swapped at each jump), and the outline is hidden by a new run. The layer is added (hidden)
    a pass after the result in a 2D view, so no jump inserts a layer; a 2D jump draws the
    outline after its own repaint (a pass of its own: benchmarks/bench_widget_stalls.py)."""
    from napari_neuroseg._napari.evaluate_widget import JUMP_OUTLINE_LAYER
    from napari_neuroseg._napari.proofreading.navigation import HIGHLIGHT_COLOR

    viewer = make_napari_viewer(show=True)
    gt = np.zeros((12, 40, 40), np.uint16)
    gt[2:6, 2:8, 2:8], gt[6:10, 30:36, 5:11] = 1, 3
    viewer.add_labels(gt, name="gt")
    pred = np.where(gt == 3, 0, gt).astype(np.uint32)
    pred[1:4, 20:26, 20:30] = 9  # a false positive
    viewer.add_labels(pred, name="pred")
    w = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.set_task("nuclei")
    _run(w, qtbot)
    errors = viewer.layers["evaluation errors"]
    qtbot.waitUntil(lambda: JUMP_OUTLINE_LAYER in viewer.layers, timeout=3000)
    hl = viewer.layers[JUMP_OUTLINE_LAYER]
    assert not hl.visible and viewer.layers.selection.active is errors
    inserted: list = []
    viewer.layers.events.inserted.connect(lambda e: inserted.append(e.value))
    w.jump_to("missed_gt", 3)
    assert w._outline.pending and not hl.visible  # the jump's pass: slice and camera only
    assert 6 <= round(viewer.dims.point[0]) < 10
    qtbot.waitUntil(lambda: not w._outline.pending, timeout=3000)
    assert hl.visible and hl.contour == 1 and not hl.editable
    np.testing.assert_allclose(hl.colormap.map(np.array([1], np.uint8))[0], HIGHLIGHT_COLOR)
    np.testing.assert_array_equal(hl.data > 0, gt[6:10, 30:36, 5:11] == 3)
    np.testing.assert_allclose(hl.translate, [6, 30, 5])
    assert viewer.layers.selection.active is errors and hl not in w.form.pred.choices
    w.jump_to("false_positive", 9)
    qtbot.waitUntil(lambda: not w._outline.pending, timeout=3000)
    assert viewer.layers[JUMP_OUTLINE_LAYER] is hl  # data swapped, no new layer
    np.testing.assert_array_equal(hl.data > 0, pred[1:4, 20:26, 20:30] == 9)
    _run(w, qtbot)
    assert not hl.visible and viewer.layers[JUMP_OUTLINE_LAYER] is hl
    w.jump_to("missed_gt", 3)
    qtbot.waitUntil(lambda: not w._outline.pending, timeout=3000)
    assert hl.visible and inserted == []
    viewer.window.remove_dock_widget(w)  # closing the dock takes its outline with it
    qtbot.waitUntil(lambda: w.dock_closed, timeout=3000)
    assert JUMP_OUTLINE_LAYER not in viewer.layers and "evaluation errors" in viewer.layers


def test_review_shows_a_hidden_proofreading_dock_and_uses_it(make_napari_viewer, qtbot):
    """The Proofreading dock already open but hidden: the same dock is shown again (its keys
    back) and takes the queue; nuclei task: the IoU rule is stated."""
    viewer = make_napari_viewer(show=True)
    gt = np.zeros((12, 40, 40), np.uint16)
    gt[2:6, 2:8, 2:8], gt[6:10, 30:36, 5:11] = 1, 3
    viewer.add_labels(gt, name="gt")
    viewer.add_labels(np.where(gt == 3, 0, gt).astype(np.uint32), name="pred")
    w = _docked_evaluate(viewer)
    w.set_task("nuclei")
    _run(w, qtbot)
    dock, p = viewer.window.add_plugin_dock_widget("napari-neuroseg", "Proofreading")
    qtbot.wait(50)  # shown and laid out first
    dock.title.hide_button.click()
    qtbot.wait(50)
    assert p.dock_suspended and not p.controller.connected
    w.review_button.click()
    qtbot.waitUntil(lambda: w._review_worker is None, timeout=30000)
    assert dock.isVisible() and not p.dock_suspended
    q = p.controller.review
    assert q is not None and [(it.kind, it.id) for it in q.items] == [("missed_gt", 3)]
    assert p.controller.layer.name == "pred" and p.task_combo.currentData() == "nuclei"
    assert "rule: unmatched at IoU 0.5" in p.review_label.text()
    assert p.controller.connected  # keys and clicks bound again


@pytest.mark.timeout(240)
def test_the_dock_readies_the_metrics_kernels_for_the_chosen_layers(make_napari_viewer, background_done):
    """Opening the dock readies the thinning (once per process) and stardist's overlap table for
    the chosen layers' dtypes (again when another pair is chosen), in background threads: the
    first run after an install no longer compiles them (tests/metrics/test_metrics_warmup.py
    checks that an evaluation after the warm-up compiles nothing)."""
    from stardist.matching import _label_overlap

    from napari_neuroseg._napari import _workers

    def overlap_pairs():
        return {(str(a.dtype), str(b.dtype), a.ndim) for a, b in _label_overlap.signatures}

    viewer = make_napari_viewer()
    gt = viewer.add_labels(np.zeros((4, 8, 8), np.uint16), name="gt")
    viewer.add_labels(np.zeros((4, 8, 8), np.int16), name="pred")
    w = EvaluateWidget(viewer)
    assert w.form.gt.value is gt and w.form.pred.value.name == "pred"
    background_done(_workers.METRICS_WARMUP)
    background_done(f"{_workers.METRICS_WARMUP}-<u2-<i2-3d")
    assert ("uint16", "int16", 3) in overlap_pairs()
    other = viewer.add_labels(np.zeros((4, 8, 8), np.int8), name="other")
    w.form.pred.value = other
    background_done(f"{_workers.METRICS_WARMUP}-<u2-|i1-3d")
    assert ("uint16", "int8", 3) in overlap_pairs()
