"""Proofreading in a real napari viewer: bound mouse/keys, undo through the layer's history."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from napari_neuroseg.proofread.review import ReviewQueue

pytestmark = pytest.mark.gui


def _labels():
    lab = np.zeros((12, 40, 40), np.uint32)
    lab[2:10, 2:18, 2:18] = 1
    lab[2:10, 2:18, 20:38] = 2
    lab[2:10, 22:38, 2:38] = 3
    lab[5, 30, 30] = 0  # a hole in 3
    lab[1, 0, 0] = 7  # tiny, at the border
    return lab


def _key(layer, key):
    """The function bound to ``key`` on the layer (as napari calls it)."""
    for k, func in layer.keymap.items():
        if str(k) == key:
            return lambda: func(layer)
    raise KeyError(key)


def _click(layer, coord, *mods):
    return SimpleNamespace(
        position=layer.data_to_world(np.asarray(coord, float)), modifiers=tuple(mods), type="mouse_press",
        dims_displayed=(1, 2), view_direction=None,
    )


def _press(ctrl, coord, *mods):
    ctrl.picker.on_click(ctrl.layer, _click(ctrl.layer, coord, *mods))


@pytest.fixture
def setup(make_napari_viewer):
    from napari_neuroseg._napari.proofread_widget import ProofreadWidget

    viewer = make_napari_viewer()
    layer = viewer.add_labels(_labels(), name="seg")
    widget = ProofreadWidget(viewer)
    return viewer, layer, widget


def test_shift_click_merge_and_ctrl_z(setup):
    viewer, layer, widget = setup
    ctrl = widget.controller
    assert ctrl is not None and ctrl.layer is layer
    original = np.array(layer.data)
    layer.selected_label = 1
    _press(ctrl, (5, 5, 25), "Shift")  # label 2 → 1
    assert not (layer.data == 2).any() and (layer.data[2:10, 2:18, 20:38] == 1).all()
    # the history holds only the changed voxels
    (atom,) = layer._undo_history[-1]
    assert atom[0][0].size == (original == 2).sum()
    layer.undo()
    np.testing.assert_array_equal(layer.data, original)
    layer.redo()
    assert not (layer.data == 2).any()
    layer.undo()
    # plain clicks do nothing
    _press(ctrl, (5, 5, 25))
    np.testing.assert_array_equal(layer.data, original)


def test_ctrl_click_seeds_and_split_key(setup):
    viewer, layer, widget = setup
    ctrl = widget.controller
    original = np.array(layer.data)
    _press(ctrl, (5, 25, 4), "Control")
    _press(ctrl, (5, 34, 36), "Control")
    assert ctrl.picker.seeds == [(5, 25, 4), (5, 34, 36)] and layer.selected_label == 3
    seeds_layer = viewer.layers["seg split seeds"]
    assert len(seeds_layer.data) == 2
    _key(layer, "Shift+S")()
    a, b = layer.data[5, 25, 4], layer.data[5, 34, 36]
    assert a == 3 and b != 3 and b > 0
    assert ctrl.picker.seeds == [] and len(seeds_layer.data) == 0
    layer.undo()
    np.testing.assert_array_equal(layer.data, original)


def test_first_ctrl_click_adds_a_point_without_inserting_a_layer(setup, qtbot):
    """The seeds' Points layer is added (empty) in an event-loop pass after the dock binds the
    layer, so a Ctrl+click only sets its points (napari's insert of a layer is not paid by the
    click); it leaves with the dock's hold on the layer and comes back with the seeds placed."""
    viewer, layer, widget = setup
    ctrl = widget.controller
    qtbot.waitUntil(lambda: "seg split seeds" in viewer.layers, timeout=5000)
    seeds = viewer.layers["seg split seeds"]
    assert len(seeds.data) == 0 and seeds.visible and viewer.layers.selection.active is layer
    inserted: list = []
    viewer.layers.events.inserted.connect(inserted.append)
    _press(ctrl, (5, 25, 4), "Control")
    assert not inserted and len(seeds.data) == 1 and viewer.layers["seg split seeds"] is seeds
    widget.on_dock_hidden()
    assert "seg split seeds" not in viewer.layers
    widget.on_dock_shown()
    qtbot.waitUntil(lambda: "seg split seeds" in viewer.layers, timeout=5000)
    np.testing.assert_array_equal(viewer.layers["seg split seeds"].data, [(5, 25, 4)])
    assert viewer.layers.selection.active is layer


def test_keys_for_components_delete_fill_dilate_erode_relabel(setup):
    viewer, layer, widget = setup
    original = np.array(layer.data)
    layer.selected_label = 3
    _key(layer, "Shift+F")()
    assert layer.data[5, 30, 30] == 3
    _key(layer, "Delete")()
    assert not (layer.data == 3).any()
    layer.undo()
    layer.undo()
    np.testing.assert_array_equal(layer.data, original)
    layer.selected_label = 1
    _key(layer, "Shift+D")()
    assert layer.data[5, 18, 5] == 1 and layer.data[5, 5, 18] == 1  # grown into background
    _key(layer, "Shift+E")()
    _key(layer, "Shift+E")()
    assert layer.data[2, 2, 2] == 0 and layer.data[5, 5, 5] == 1
    for _ in range(3):
        layer.undo()
    np.testing.assert_array_equal(layer.data, original)
    # connected components: cut label 1 in two
    cut = np.zeros(layer.data.shape, bool)
    cut[2:10, 2:18, 9] = True
    layer.data_setitem(np.nonzero(cut), 0)
    before = np.array(layer.data)
    _key(layer, "Shift+C")()
    assert len(np.unique(layer.data[2:10, 2:18, 2:9])) == 1
    assert layer.data[5, 5, 3] != layer.data[5, 5, 15]
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)
    # relabel keeps the selected label pointing at the same object
    layer.selected_label = 7
    _key(layer, "Shift+R")()
    assert sorted(np.unique(layer.data)) == [0, 1, 2, 3, 4]
    assert layer.data[1, 0, 0] == layer.selected_label == 4
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)


def test_locked_label_is_never_changed(setup):
    viewer, layer, widget = setup
    ctrl = widget.controller
    layer.selected_label = 2
    _key(layer, "Shift+K")()
    assert ctrl.locked == {2} and layer.metadata["proofread_locked"] == [2]
    before = np.array(layer.data)
    layer.selected_label = 1
    _press(ctrl, (5, 5, 25), "Shift")  # merging locked 2 into 1: refused
    _key(layer, "Shift+D")()  # dilating 1 must not grow into 2
    layer.selected_label = 2
    _key(layer, "Delete")()
    np.testing.assert_array_equal(layer.data == 2, before == 2)
    assert "locked" in widget.status_label.text() or "locked" in str(viewer.status)


def test_painted_region_new_label_and_take_over(setup):
    viewer, layer, widget = setup
    ctrl = widget.controller
    widget.paint_btn.click()
    scratch = viewer.layers["seg painted region"]
    scratch.data[4:6, 4:8, 4:8] = 1
    widget.run_action("new_label")
    new = layer.selected_label
    assert new == 8 and (layer.data[4:6, 4:8, 4:8] == 8).all()
    assert not scratch.data.any()
    layer.selected_label = 2
    scratch.data[3:5, 10:14, 10:25] = 1  # mostly label 1, partly 2
    widget.run_action("take_over")
    assert (layer.data[3:5, 10:14, 10:18] == 2).all()
    layer.undo()
    layer.undo()
    np.testing.assert_array_equal(layer.data, _labels())


def test_rebinding_a_shortcut(setup):
    viewer, layer, widget = setup
    widget.set_shortcut("delete", "Alt+X")
    assert "Delete" not in [str(k) for k in layer.keymap]
    layer.selected_label = 1
    _key(layer, "Alt+X")()
    assert not (layer.data == 1).any()


def test_review_queue_walk_and_resume(setup, tmp_path):
    viewer, layer, widget = setup
    ctrl = widget.controller
    widget.tiny.setValue(5)
    widget.largest.setValue(1)
    widget.build_review_from_checks()
    q = ctrl.review
    kinds = [(it.kind, it.id) for it in q.items]
    assert kinds[0] == ("tiny", 7) and ("largest", 3) in kinds
    path = tmp_path / "seg.tif.review.json"
    ctrl.nav.path = str(path)
    _key(layer, "N")()
    assert layer.selected_label == 7
    assert round(viewer.dims.point[0]) == 1  # the slice of the item; the camera centres y, x
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], (0, 0))
    _key(layer, "Shift+M")()  # fixed → next
    assert q.items[0].status == "fixed" and q.position == 1
    item = q.current
    assert layer.selected_label == item.id
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    np.testing.assert_allclose(camera.center[-2:], item.centroid[1:], atol=0.6)
    _key(layer, "Shift+I")()
    saved = json.loads(path.read_text())
    assert [it["status"] for it in saved["items"]][:2] == ["fixed", "ignored"]
    # resume in a fresh widget
    widget.load_review(str(path))
    assert ctrl.review.position == saved["position"]
    assert ctrl.review.position == 1  # the last item: "next" found nothing left to do
    _key(layer, "Shift+N")()
    assert ctrl.review.position == 0 and ctrl.review.current.status == "fixed"


def test_zarr_backed_layer_edit_undo_save(make_napari_viewer, tmp_path, monkeypatch):
    import zarr

    from napari_neuroseg._napari import _save
    from napari_neuroseg._napari.proofread_widget import ProofreadWidget
    from napari_neuroseg.proofread.chunked import ChunkedLabels

    data = _labels()
    z = zarr.open_array(str(tmp_path / "seg.zarr"), mode="w", shape=data.shape, chunks=(4, 16, 16), dtype="uint32")
    z[:] = data
    viewer = make_napari_viewer()
    layer = viewer.add_labels(z, name="seg")
    widget = ProofreadWidget(viewer)
    ctrl = widget.controller
    assert isinstance(layer.data, ChunkedLabels)
    layer.selected_label = 1
    _press(ctrl, (5, 5, 25), "Shift")
    assert layer.data[5, 5, 25] == 1
    layer.undo()
    assert layer.data[5, 5, 25] == 2
    layer.redo()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "seg.zarr"))[:], data)  # not saved yet
    asked: list = []
    monkeypatch.setattr(_save, "confirm", lambda parent, title, text: (asked.append(text), False)[1])
    assert widget.save() is None  # writing into the opened store asks first: declined, unchanged
    assert len(asked) == 1 and "1 edited chunk" in asked[0] or "edited chunk" in asked[0]
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "seg.zarr"))[:], data)
    monkeypatch.setattr(_save, "confirm", lambda *a: True)
    assert "edited chunk" in widget.save()
    ref = data.copy()
    ref[ref == 2] = 1
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "seg.zarr"))[:], ref)


def test_fisbe_layer_save_after_edits(make_napari_viewer, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QMessageBox

    from napari_neuroseg._napari.proofread_widget import ProofreadWidget
    from napari_neuroseg.io import instances_to_labels, read_fisbe, write_fisbe

    stack = np.zeros((3, 8, 20, 20), np.uint8)
    stack[0, 2:6, 2:8, 2:18] = 1
    stack[1, 2:6, 10:16, 2:18] = 2
    stack[2, 3:5, 4:14, 9:11] = 3  # crosses 1 and 2
    path = tmp_path / "s.zarr"
    write_fisbe(path, gt_instances=stack)
    labels, _ = instances_to_labels(stack)
    viewer = make_napari_viewer()
    layer = viewer.add_labels(labels, name="gt", metadata={"fisbe_instances": stack, "fisbe_dim_neurons": []})
    widget = ProofreadWidget(viewer)
    asked = []  # "gt" is ground truth: the first edit asks, once
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: (asked.append(a), QMessageBox.StandardButton.Yes)[1])
    layer.selected_label = 2
    widget.run_action("delete")
    assert len(asked) == 1
    widget.controller.save(str(path))
    out = np.asarray(read_fisbe(path).gt_instances)
    assert not out[1].any()
    np.testing.assert_array_equal(out[0], stack[0])
    np.testing.assert_array_equal(out[2], stack[2])
    layer.undo()
    widget.controller.save(str(path))
    np.testing.assert_array_equal(np.asarray(read_fisbe(path).gt_instances), stack)


def test_review_queue_from_metric_errors_in_viewer(setup):
    viewer, layer, widget = setup
    errors = {"false_merge": [{"pred": 3, "gts": [4, 5]}], "false_split": [{"gt": 1, "preds": [1, 2]}],
              "false_positive": [7], "missed_gt": []}
    q = ReviewQueue.from_errors(errors, layer.data)
    widget._install_queue(q, None)
    widget.run_action("review_next")
    assert layer.selected_label == 3 and "false merge" in widget.review_label.text()
    widget.run_action("review_next")
    assert layer.selected_label == 1  # a false split selects its first prediction


def test_click_in_3d_picks_the_first_label_along_the_ray(setup):
    viewer, layer, widget = setup
    ctrl = widget.controller
    viewer.dims.ndisplay = 3
    event = SimpleNamespace(
        position=(0.0, 5.0, 25.0), view_direction=(1.0, 0.0, 0.0), dims_displayed=(0, 1, 2),
        modifiers=("Shift",), type="mouse_press",
    )
    assert ctrl.picker.event_voxel(event) == (2, 5, 25)  # the first voxel of label 2 along z
    layer.selected_label = 1
    ctrl.picker.on_click(layer, event)
    assert not (layer.data == 2).any()


def test_review_from_metrics_runs_in_a_worker(setup, qtbot):
    viewer, layer, widget = setup
    from napari_neuroseg.synth import make_neurons

    vol = make_neurons((16, 64, 64), n_neurons=2, seed=1)
    pred = np.zeros(vol.gt_instances.shape[1:], np.uint32)
    pred[vol.gt_instances[0] > 0] = 4  # neuron 2 is missed
    viewer.layers.remove(layer)
    layer = viewer.add_labels(pred, name="pred")
    viewer.add_labels(vol.labels, name="gt", metadata={"fisbe_instances": vol.gt_instances})
    widget.layer_combo.setCurrentText("pred")
    widget.gt_combo.setCurrentText("gt")
    widget.build_review_from_metrics()
    qtbot.waitUntil(lambda: widget.controller.review is not None, timeout=60000)
    kinds = {(it.kind, it.id) for it in widget.controller.review.items}
    assert ("missed_gt", 2) in kinds


@pytest.mark.timeout(240)
def test_from_metrics_kernels_are_readied_for_the_chosen_ground_truth(setup, background_done):
    """Choosing a ground truth readies stardist's overlap table for its dtype and the edited
    layer's in a background thread (the thinning too), not in From metrics' first run."""
    from stardist.matching import _label_overlap

    from napari_neuroseg._napari import _workers

    viewer, layer, widget = setup
    viewer.add_labels(np.zeros(layer.data.shape, np.int8), name="gt")
    widget.gt_combo.setCurrentText("gt")
    for name in (_workers.METRICS_WARMUP, f"{_workers.METRICS_WARMUP}-|i1-<u4-3d"):
        background_done(name)
    assert ("int8", "uint32", 3) in {(str(a.dtype), str(b.dtype), a.ndim) for a, b in _label_overlap.signatures}


# ------------------------------------------------------------------ jump to an item, wording, saving
def _ring_labels():
    """A thin ring (label 5): its centroid lies in the hole, off the object."""
    lab = np.zeros((9, 200, 200), np.uint32)
    yy, xx = np.mgrid[:200, :200]
    r = np.hypot(yy - 40, xx - 30)
    lab[3:6][:, (r >= 12) & (r < 14)] = 5
    lab[4, 5:8, 50:53] = 2  # a small object elsewhere
    return lab


def test_jump_to_an_item_zooms_to_its_box_on_the_object_and_outlines_it(make_napari_viewer, qtbot):
    from napari_neuroseg._napari.proofread_widget import ProofreadWidget
    from napari_neuroseg._napari.proofreading import HIGHLIGHT_LAYER
    from napari_neuroseg._napari.proofreading.navigation import HIGHLIGHT_COLOR

    viewer = make_napari_viewer()
    layer = viewer.add_labels(_ring_labels(), name="seg", scale=(2.0, 0.5, 0.5))
    widget = ProofreadWidget(viewer)
    q = ReviewQueue.from_checks(layer.data, tiny=0, border=False, largest=1)
    (item,) = q.items
    assert item.id == 5 and layer.data[tuple(int(round(c)) for c in item.centroid)] == 0  # centroid off the ring
    widget._install_queue(q, None)
    viewer.layers.selection.active = layer
    zoom_before = viewer.scene.camera.zoom
    widget.run_action("review_next")
    _wait_outline(qtbot, widget)  # drawn in the pass after the jump
    # the slice (the point of the axis not displayed) and the camera centre lie on a voxel of the object
    z = int(round(layer.world_to_data(viewer.dims.point)[0]))
    centre = np.asarray(viewer.scene.camera.center[-2:]) / 0.5
    assert layer.data[(z, *np.round(centre).astype(int))] == 5
    # zoomed in to the box (26 x 26 voxels of 0.5 um, in a 200 x 200 slice), all of it in view
    cam = viewer.scene.camera
    assert cam.zoom > 2 * zoom_before
    box = np.array(item.bbox)
    half_view = 0.5 * min(viewer.canvas.size) / cam.zoom  # world units from the centre to the edge
    for ax in (1, 2):
        lo, hi = box[ax] * 0.5
        assert cam.center[ax] - half_view <= lo and hi <= cam.center[ax] + half_view
    # outlined in a fixed colour that no label colour uses, in a small layer at the box
    hl = viewer.layers[HIGHLIGHT_LAYER]
    assert hl.contour >= 1 and hl.data.shape == tuple(box[:, 1] - box[:, 0])
    np.testing.assert_array_equal(hl.data > 0, layer.data[tuple(slice(a, b) for a, b in box)] == 5)
    np.testing.assert_allclose(hl.translate, box[:, 0] * np.array([2.0, 0.5, 0.5]))
    np.testing.assert_allclose(hl.colormap.map(np.array([1]))[0], HIGHLIGHT_COLOR)
    label_colours = layer.colormap.map(np.arange(1, 200))
    assert not np.any(np.all(np.isclose(label_colours, HIGHLIGHT_COLOR, atol=0.05), axis=1))
    assert widget.layer_combo.findText(HIGHLIGHT_LAYER) < 0  # never a proofreading target
    assert layer.selected_label == 5 and viewer.layers.selection.active is layer
    # the end of the queue removes the outline; closing the dock too
    widget.run_action("review_next")
    assert HIGHLIGHT_LAYER not in viewer.layers


@pytest.mark.parametrize("ndisplay", [2, 3])
def test_a_jump_moves_the_slice_only_along_the_axes_not_displayed(make_napari_viewer, ndisplay):
    """A jump sets the point of the axes not displayed (the slice) and centres the camera on the
    others; it leaves the displayed axes' point alone (each point change re-slices every layer:
    in 3D every volume was sliced and uploaded again for nothing)."""
    from napari_neuroseg._napari.proofread_widget import ProofreadWidget

    viewer = make_napari_viewer()
    layer = viewer.add_labels(_labels(), name="seg", scale=(2.0, 0.5, 0.5))
    widget = ProofreadWidget(viewer)
    viewer.dims.ndisplay = ndisplay
    q = ReviewQueue.from_checks(layer.data, tiny=0, border=False, largest=3)
    widget._install_queue(q, None)
    before = np.array(viewer.dims.point)
    points: list = []
    viewer.dims.events.point.connect(lambda e: points.append(tuple(viewer.dims.point)))
    voxel = widget.controller.nav.goto(q.next())
    world = np.asarray(layer.data_to_world(np.asarray(voxel, float)))
    shown = list(viewer.dims.displayed)
    after = np.array(viewer.dims.point)
    np.testing.assert_allclose(after[shown], before[shown])  # displayed axes: untouched
    np.testing.assert_allclose(np.asarray(viewer.scene.camera.center)[-len(shown):], world[shown])
    if ndisplay == 3:
        assert points == []  # nothing re-sliced
    else:
        assert after[0] == world[0] and len(points) <= 1  # one slice change at most


def test_missed_objects_are_outlined_from_the_ground_truth_and_named_after_the_task(setup, qtbot):
    viewer, layer, widget = setup
    gt = _labels()
    gt[2:10, 22:38, 2:38] = 0
    gt[3:6, 25:30, 5:9] = 9  # a nucleus the prediction misses
    pred = np.array(gt)
    pred[pred == 9] = 0
    viewer.layers.remove(layer)
    viewer.add_labels(pred, name="pred")
    viewer.add_labels(gt, name="truth")
    widget.layer_combo.setCurrentText("pred")
    widget.gt_combo.setCurrentText("truth")
    assert widget.task_combo.findData("nuclei") >= 0 and widget.task_combo.toolTip()
    widget.task_combo.setCurrentIndex(widget.task_combo.findData("nuclei"))
    assert not widget.partly.isEnabled()  # a FISBe option
    widget.build_review_from_metrics()
    qtbot.waitUntil(lambda: widget.controller.review is not None, timeout=60000)
    q = widget.controller.review
    assert q.task == "nuclei" and [(it.kind, it.id) for it in q.items] == [("missed_gt", 9)]
    widget.run_action("review_next")
    _wait_outline(qtbot, widget)  # drawn in the pass after the jump
    text = widget.review_label.text()
    assert "missed nucleus: GT nucleus 9" in text and "neuron" not in text
    hl = viewer.layers["review: current item"]
    np.testing.assert_array_equal(hl.data > 0, gt[3:6, 25:30, 5:9] == 9)
    z = int(round(viewer.dims.point[0]))  # the slice; the camera centres y, x
    y, x = (int(round(v)) for v in viewer.scene.camera.center[-2:])
    assert gt[z, y, x] == 9


def test_a_jumps_outline_is_drawn_in_the_next_pass_and_only_the_last_of_rapid_jumps(make_napari_viewer, qtbot):
    """Next changes the slice and the camera in its own event-loop pass; the outline's data
    swap comes after that pass's repaint: three stalls (jump, repaint, outline and its repaint),
    not one or two of ~100 ms (benchmarks/bench_stalls_proofread.py). Jumps faster than the passes (a held key) draw
    only the last item's outline; the end of the queue or the dock letting go drops a waiting one."""
    from napari_neuroseg._napari.proofread_widget import ProofreadWidget
    from napari_neuroseg._napari.proofreading import HIGHLIGHT_LAYER

    viewer = make_napari_viewer(show=True)
    layer = viewer.add_labels(_labels(), name="seg")
    widget = ProofreadWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Proofreading")
    widget._install_queue(ReviewQueue.from_checks(layer.data, tiny=0, border=False, largest=3), None)
    qtbot.waitUntil(lambda: HIGHLIGHT_LAYER in viewer.layers, timeout=3000)
    hl = viewer.layers[HIGHLIGHT_LAYER]
    swaps: list = []
    hl.events.data.connect(lambda e: swaps.append(np.array(hl.data)))
    nav = widget.controller.nav
    widget.run_action("review_next")
    first = widget.controller.review.current
    assert nav.outline.pending and swaps == []  # the jump's pass: slice and camera only
    assert round(viewer.dims.point[0]) in range(*map(int, first.bbox[0]))
    _wait_outline(qtbot, widget)
    assert len(swaps) == 1
    np.testing.assert_array_equal(swaps[0] > 0, layer.data[tuple(slice(a, b) for a, b in first.bbox)] == first.id)
    swaps.clear()
    widget.run_action("review_next")
    widget.run_action("review_next")  # before the outline's pass
    last = widget.controller.review.current
    _wait_outline(qtbot, widget)
    qtbot.wait(50)
    assert len(swaps) == 1  # the skipped item's outline is never drawn
    np.testing.assert_array_equal(hl.data > 0, layer.data[tuple(slice(a, b) for a, b in last.bbox)] == last.id)
    widget.run_action("review_previous")
    widget.controller.nav.clear_highlight()  # the queue ended meanwhile
    assert not nav.outline.pending
    qtbot.wait(50)
    assert HIGHLIGHT_LAYER not in viewer.layers  # not drawn (and so not added) again


def _wait_outline(qtbot, widget) -> None:
    """The jump's outline, drawn one event-loop pass after the jump, is drawn."""
    qtbot.waitUntil(lambda: not widget.controller.nav.outline.pending, timeout=3000)


def _wait_saved(qtbot, widget) -> None:
    """The save's worker has written the file (the status line says so)."""
    qtbot.waitUntil(lambda: widget.status_label.text().startswith(("saved", "not saved")), timeout=20000)


def test_save_an_in_memory_layer_through_the_plugin_writers(setup, tmp_path, monkeypatch, qtbot):
    from napari_neuroseg._napari import _save
    from napari_neuroseg.io import read_image

    viewer, layer, widget = setup
    layer.scale = (2.0, 0.5, 0.5)
    layer.selected_label = 2
    widget.run_action("delete")
    asked = {}

    def fake_dialog(parent, title, start, filters):
        asked.update(start=start, filters=list(filters))
        return str(tmp_path / "edited"), _save.TIFF_FILTER  # no extension typed: the format's is added

    monkeypatch.setattr(_save, "ask_save_path", fake_dialog)
    assert widget.save() == str(tmp_path / "edited.tif")
    assert asked["start"].endswith("seg_edited.tif") and _save.TIFF_FILTER in asked["filters"]
    assert _save.FISBE_FILTER not in asked["filters"]  # offered only for a FISBe layer
    _wait_saved(qtbot, widget)
    back = read_image(tmp_path / "edited.tif")
    np.testing.assert_array_equal(np.asarray(back.data).squeeze(), layer.data)
    np.testing.assert_allclose(back.scale[-3:], (2.0, 0.5, 0.5))
    # cancelled: nothing written, nothing said
    monkeypatch.setattr(_save, "ask_save_path", lambda *a: ("", ""))
    assert widget.save() is None


def test_save_never_overwrites_an_input_without_asking(make_napari_viewer, tmp_path, monkeypatch, qtbot):
    from napari_neuroseg._napari import _save
    from napari_neuroseg._napari.proofread_widget import ProofreadWidget
    from napari_neuroseg.io import write_tiff

    path = tmp_path / "seg_labels.tif"
    write_tiff(path, _labels(), axes="ZYX")
    original = path.read_bytes()
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-neuroseg")
    layer = viewer.layers[-1]
    widget = ProofreadWidget(viewer)
    assert widget.controller.layer is layer
    layer.selected_label = 1
    widget.run_action("delete")
    monkeypatch.setattr(_save, "ask_save_path", lambda *a: (str(path), _save.TIFF_FILTER))
    answers: list = []
    monkeypatch.setattr(_save, "confirm", lambda parent, title, text: (answers.append(text), False)[1])
    assert widget.save() is None
    assert len(answers) == 1 and "opened from" in answers[0]
    assert path.read_bytes() == original
    monkeypatch.setattr(_save, "confirm", lambda *a: True)
    assert widget.save() == str(path)
    _wait_saved(qtbot, widget)
    assert path.read_bytes() != original


def test_save_writes_in_a_worker_the_labels_as_they_were_when_asked(setup, tmp_path, monkeypatch, qtbot):
    """Save…: the labels are copied in the main thread and encoded and written in a worker
    thread; an edit made while it writes is not in the file (never a mix), the file is complete
    once the status line says saved, and no temporary file is left beside it."""
    import threading

    from napari_neuroseg._napari import _save, writers
    from napari_neuroseg.io import read_image

    _viewer, layer, widget = setup
    before = np.array(layer.data)
    threads: list = []
    release = threading.Event()
    real = writers.write_labels_tiff

    def slow_write(*a, **k):
        threads.append(threading.current_thread())
        assert release.wait(10)  # the main thread edits meanwhile
        return real(*a, **k)

    monkeypatch.setattr(writers, "write_labels_tiff", slow_write)
    out = tmp_path / "edited.tif"
    monkeypatch.setattr(_save, "ask_save_path", lambda *a: (str(out), _save.TIFF_FILTER))
    assert widget.save() == str(out)
    assert "saving" in widget.status_label.text()
    qtbot.waitUntil(lambda: bool(threads), timeout=10000)
    assert threads[0] is not threading.main_thread()
    layer.selected_label = 1
    widget.run_action("delete")  # while the worker writes
    assert not (layer.data == 1).any()
    release.set()
    _wait_saved(qtbot, widget)
    assert widget.status_label.text().startswith("saved")
    np.testing.assert_array_equal(np.asarray(read_image(out).data).squeeze(), before)
    assert [p.name for p in tmp_path.iterdir()] == ["edited.tif"]


def test_in_memory_save_without_a_path_says_how(setup):
    _, _, widget = setup
    assert widget.controller.run(widget.controller.save) is None
    assert "Save…" in widget.status_label.text() or "in memory" in widget.status_label.text()


# ------------------------------------------------------------------ responsiveness mechanisms (issue 17)
def test_an_action_and_undo_redo_keys_redraw_the_canvas_one_pass_later(make_napari_viewer, qtbot):
    """Every action (and Ctrl+Z / Ctrl+Shift+Z, napari's own history steps, bound again by the
    dock) runs with the canvas held; it is repainted in a later event-loop pass. Closing the dock
    leaves napari's own undo on the layer."""
    from qtpy.QtOpenGLWidgets import QOpenGLWidget

    from napari_neuroseg._napari.proofread_widget import ProofreadWidget
    from napari_neuroseg._napari.proofreading import KEY_HANDLER_PREFIX

    viewer = make_napari_viewer(show=True)
    layer = viewer.add_labels(_labels(), name="seg")
    widget = ProofreadWidget(viewer)
    dw = viewer.window.add_dock_widget(widget, name="Proofreading")
    qtbot.wait(20)
    ctrl = widget.controller
    (canvas,) = [w for w in widget.window().findChildren(QOpenGLWidget) if w.isVisible()]
    seen: list[bool] = []
    ctrl.run(lambda: seen.append(canvas.updatesEnabled()))
    assert seen == [False] and not canvas.updatesEnabled()  # held during the action
    qtbot.waitUntil(canvas.updatesEnabled, timeout=2000)  # released in a later pass
    from napari_neuroseg._napari import _display

    searched: list = []
    real_search = _display.window_canvases
    _display.window_canvases = lambda w: searched.append(w) or real_search(w)
    try:  # the window's canvases are found once, not at every action
        ctrl.run(lambda: seen.append(canvas.updatesEnabled()))
        qtbot.waitUntil(canvas.updatesEnabled, timeout=2000)
        ctrl.run(lambda: seen.append(canvas.updatesEnabled()))
    finally:
        _display.window_canvases = real_search
    assert seen == [False, False, False] and searched == []
    qtbot.waitUntil(canvas.updatesEnabled, timeout=2000)
    original = np.array(layer.data)
    layer.selected_label = 2
    _key(layer, "Delete")()
    assert not (layer.data == 2).any()
    handlers = {str(k): getattr(f, "__name__", "") for k, f in layer.keymap.items()}
    assert handlers["Ctrl+Z"] == f"{KEY_HANDLER_PREFIX}undo" and handlers["Ctrl+Shift+Z"] == f"{KEY_HANDLER_PREFIX}redo"
    qtbot.waitUntil(canvas.updatesEnabled, timeout=2000)
    _key(layer, "Ctrl+Z")()
    assert not canvas.updatesEnabled()  # napari's undo ran, its redraw waits for the next pass
    np.testing.assert_array_equal(layer.data, original)
    qtbot.waitUntil(canvas.updatesEnabled, timeout=2000)
    _key(layer, "Ctrl+Shift+Z")()
    assert not (layer.data == 2).any()
    qtbot.waitUntil(canvas.updatesEnabled, timeout=2000)
    dw.title.close_button.click()
    qtbot.wait(20)
    assert not any(getattr(f, "__name__", "").startswith(KEY_HANDLER_PREFIX) for f in layer.keymap.values())
    layer.undo()  # napari's own history, as before
    np.testing.assert_array_equal(layer.data, original)


def test_outline_layer_is_added_hidden_when_the_queue_arrives(make_napari_viewer, qtbot):
    """The review outline layer is inserted (hidden, not active) in a pass after the queue is
    installed, so the first Next only swaps its data; its colormap maps every id > 0 to the
    highlight colour without napari's numba typed-dict path (DirectLabelColormap)."""
    from napari.utils.colormaps import DirectLabelColormap

    from napari_neuroseg._napari.proofread_widget import ProofreadWidget
    from napari_neuroseg._napari.proofreading import HIGHLIGHT_LAYER
    from napari_neuroseg._napari.proofreading.navigation import HIGHLIGHT_COLOR

    viewer = make_napari_viewer(show=True)
    layer = viewer.add_labels(_labels(), name="seg")
    widget = ProofreadWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Proofreading")
    widget._install_queue(ReviewQueue.from_checks(layer.data, tiny=0, border=False, largest=2), None)
    assert HIGHLIGHT_LAYER not in viewer.layers  # not in the queue's own pass
    qtbot.waitUntil(lambda: HIGHLIGHT_LAYER in viewer.layers, timeout=3000)
    hl = viewer.layers[HIGHLIGHT_LAYER]
    assert not hl.visible and viewer.layers.selection.active is layer and not hl.editable
    assert not isinstance(hl.colormap, DirectLabelColormap)
    np.testing.assert_allclose(hl.colormap.map(np.array([0, 1], np.uint8)), [(0, 0, 0, 0), HIGHLIGHT_COLOR])
    inserted: list = []
    viewer.layers.events.inserted.connect(lambda e: inserted.append(e.value))
    points: list = []  # each change of the slice point re-slices every layer
    viewer.dims.events.point.connect(lambda e: points.append(e.value))
    widget.run_action("review_next")
    _wait_outline(qtbot, widget)  # drawn in the pass after the jump
    item = widget.controller.review.current
    assert viewer.layers[HIGHLIGHT_LAYER] is hl and hl.visible and inserted == []  # data swapped, no insert
    assert len(points) <= 1  # the slice moved to the item in one step (none when it was there)
    box = tuple(slice(int(a), int(b)) for a, b in item.bbox)
    assert box[0].start <= round(viewer.dims.point[0]) < box[0].stop
    np.testing.assert_array_equal(hl.data > 0, layer.data[box] == item.id)


def test_queue_arrival_redraws_the_canvas_once(make_napari_viewer, qtbot):
    """The queue's arrival changes nothing on the canvas: only the outline layer's (hidden)
    insert, a pass later, is followed by a redraw (holding the arrival's own pass repainted the
    whole canvas for nothing: one more 3D redraw, ~0.6 s under software OpenGL)."""
    from napari_neuroseg._napari.proofread_widget import ProofreadWidget
    from napari_neuroseg._napari.proofreading import HIGHLIGHT_LAYER

    viewer = make_napari_viewer(show=True)
    layer = viewer.add_labels(_labels(), name="seg")
    widget = ProofreadWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Proofreading")
    qtbot.waitUntil(lambda: "seg split seeds" in viewer.layers, timeout=3000)
    qtbot.wait(300)
    draws: list = []
    viewer.window._qt_viewer.canvas._scene_canvas.events.draw.connect(draws.append)
    widget._install_queue(ReviewQueue.from_checks(layer.data, tiny=0, border=False, largest=2), None)
    qtbot.waitUntil(lambda: HIGHLIGHT_LAYER in viewer.layers, timeout=3000)
    qtbot.wait(300)
    assert len(draws) == 1


def test_run_in_background_runs_once_per_name_off_the_main_thread(qtbot):
    import threading

    from napari_neuroseg._napari._workers import run_in_background
    from napari_neuroseg.proofread.ops import import_libraries

    ran: list[str] = []
    name = f"test-background-{id(ran)}"
    th = run_in_background(lambda: ran.append(threading.current_thread().name), name)
    assert th is not None and run_in_background(lambda: ran.append("again"), name) is None
    qtbot.waitUntil(lambda: bool(ran) and not th.is_alive(), timeout=5000)
    assert ran == [name]
    failing = run_in_background(lambda: 1 / 0, name + "-error")  # an error stays in its thread
    qtbot.waitUntil(lambda: failing.ident is not None and not failing.is_alive(), timeout=5000)
    import_libraries()  # the proofreading operations' libraries, as the dock preloads them
    import sys

    assert "skimage.segmentation._watershed" in sys.modules and "edt" in sys.modules


def test_dock_uses_no_private_napari_attribute(make_napari_viewer):
    """napari hands a plugin dock a viewer that warns on private attributes (FutureWarning: they
    go in napari 0.10). Adding layers (the dock refreshes its layer boxes) touches none."""
    import warnings

    from napari.utils._proxies import PublicOnlyProxy

    from napari_neuroseg._napari.proofread_widget import ProofreadWidget

    viewer = make_napari_viewer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        widget = ProofreadWidget(PublicOnlyProxy(viewer))
        viewer.add_image(np.zeros((12, 40, 40), np.float32), name="raw")
        layer = viewer.add_labels(_labels(), name="seg")
        viewer.add_labels(_labels(), name="other")
        viewer.layers.selection.active = layer
    private = [str(c.message) for c in caught if "Private attribute" in str(c.message)]
    assert private == []
    assert [widget.layer_combo.itemText(i) for i in range(widget.layer_combo.count())] == ["seg", "other"]
    assert widget.image_combo.findText("raw") >= 0


# ------------------------------------------------------------------ the queue's rule, the review controls in view
def test_review_queue_states_its_rule(setup):
    """G2: next to the count, the dock shows the rule that chose the queue's items."""
    _viewer, layer, widget = setup
    rule = ("FISBe preset: predictions with <= 800 voxels removed before matching (2 removed); partly "
            "labelled: predictions mostly in unlabelled background are not false positives; matched by clDice >= 0.5")
    q = ReviewQueue.from_errors({"false_positive": [7], "missed_gt": []}, layer.data, task="neurons", rule=rule,
                                partly=True)
    widget._install_queue(q, None)
    text = widget.review_label.text()
    assert text.startswith("review queue: 1 items") and f"rule: {rule}" in text
    widget.run_action("review_next")
    assert f"rule: {rule}" in widget.review_label.text() and "current: false positive" in widget.review_label.text()
    nuclei = ReviewQueue.from_errors({"false_positive": [7]}, layer.data, task="nuclei",
                                     rule="unmatched at IoU 0.5 (one-to-one, stardist matching); no size filter")
    widget._install_queue(nuclei, None)
    assert "rule: unmatched at IoU 0.5" in widget.review_label.text()
    widget._install_queue(ReviewQueue.from_checks(layer.data, tiny=50, border=False, largest=2), None)
    assert "rule: checks: tiny <= 50 voxels, 2 largest" in widget.review_label.text()


def test_review_controls_are_in_view_at_1280x800(make_napari_viewer, qtbot):
    """N1: with the review section open in a 1280x800 window, the count/rule/current line and
    Prev/Next/Fixed/Ignore are inside the dock's visible area without scrolling."""
    from qtpy.QtCore import QRect
    from qtpy.QtWidgets import QPushButton

    from napari_neuroseg._napari.proofread_widget import ProofreadWidget

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    layer = viewer.add_labels(_labels(), name="seg")
    widget = ProofreadWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Proofreading")
    widget.review_section.set_expanded(True)
    q = ReviewQueue.from_errors({"false_merge": [{"pred": 3, "gts": [4, 5]}], "false_positive": [7]}, layer.data,
                                task="neurons", rule="FISBe preset: predictions with <= 800 voxels removed "
                                "before matching (0 removed); fully labelled; matched by clDice >= 0.5")
    widget._install_queue(q, None)
    widget.run_action("review_next")
    qtbot.wait(50)
    assert widget.scroll.verticalScrollBar().value() == 0
    view = widget.scroll.viewport()
    seen = QRect(0, 0, view.width(), view.height())
    nav = [b for b in widget.findChildren(QPushButton) if b.text() in ("◀ Prev", "Next ▶", "Fixed", "Ignore")]
    assert len(nav) == 4
    for w in [widget.review_label, *nav]:
        top_left = w.mapTo(view, w.rect().topLeft())
        rect = QRect(top_left, w.size())
        assert seen.contains(rect), (w.objectName() or getattr(w, "text", lambda: "")(), rect, seen)
    assert "current: false merge" in widget.review_label.text()
