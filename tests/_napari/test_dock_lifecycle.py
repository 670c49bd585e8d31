"""Docks the way napari runs them: added with ``viewer.window.add_dock_widget``, closed the way a
user closes them (title-bar close button, hide button / Window menu toggle, the viewer closing),
then driven with REAL key and mouse events on the canvas.

A closed dock must let go: no key binding, mouse callback or layer-event connection of it stays
(issue 17). Proofreading edits the selected Labels layer, never silently a ground-truth layer, and
each dock fits a 1280x800 screen without growing the main window.
"""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QComboBox,
    QMessageBox,
)

pytestmark = pytest.mark.gui

SCREEN = (1280, 800)
SHIFT = Qt.KeyboardModifier.ShiftModifier
CTRL = Qt.KeyboardModifier.ControlModifier
LEFT = Qt.MouseButton.LeftButton


def _labels():
    lab = np.zeros((12, 40, 40), np.uint32)
    lab[2:10, 2:18, 2:18] = 1
    lab[2:10, 2:18, 20:38] = 2
    lab[2:10, 22:38, 2:38] = 3
    return lab


@pytest.fixture
def shown_viewer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*SCREEN)
    qtbot.wait(20)
    return viewer


def _canvas(viewer):
    return viewer.window._qt_viewer.canvas.native


def _pos(viewer, zyx) -> QPoint:
    """The canvas pixel of data voxel ``zyx`` (2D view, scale 1), after moving to its slice."""
    viewer.dims.set_point(0, zyx[0])
    tr = viewer.window._qt_viewer.canvas.view.scene.transform
    x, y = tr.map([zyx[2], zyx[1], 0, 1])[:2]
    return QPoint(round(x), round(y))


def _click(qtbot, viewer, zyx, mods):
    qtbot.mouseClick(_canvas(viewer), LEFT, mods, _pos(viewer, zyx))
    qtbot.wait(5)


def _key(qtbot, viewer, key, mods=Qt.KeyboardModifier.NoModifier):
    qtbot.keyClick(_canvas(viewer), key, mods)
    qtbot.wait(5)


def _user_edits(qtbot, viewer, layer):
    """What a user did after closing: Shift+click merge, Ctrl+click x2 + Shift+S split, Delete."""
    viewer.layers.selection.active = layer
    layer.selected_label = 1
    _click(qtbot, viewer, (5, 5, 25), SHIFT)  # merge 2 into 1
    _click(qtbot, viewer, (5, 25, 4), CTRL)  # two seeds in 3
    _click(qtbot, viewer, (5, 34, 36), CTRL)
    _key(qtbot, viewer, Qt.Key.Key_S, SHIFT)  # split
    layer.selected_label = 1
    _key(qtbot, viewer, Qt.Key.Key_Delete)  # delete 1


def _proofreading_callbacks(layer):
    """Mouse callbacks of the proofreading package still on ``layer``."""
    return [cb for cb in layer.mouse_drag_callbacks
            if type(getattr(cb, "__self__", None)).__module__.startswith("napari_neuroseg._napari.proofreading")]


def _dock(viewer, widget, name):
    dw = viewer.window.add_dock_widget(widget, name=name)
    return dw


def _close(viewer, dw, how, qtbot):
    if how == "close_button":
        dw.title.close_button.click()
    elif how == "hide_button":
        dw.title.hide_button.click()
    elif how == "window_menu":  # the Window menu's entry is the dock's toggle-view action
        dw.toggleViewAction().trigger()
    elif how == "plugins_menu":  # napari's Plugins menu entry toggles dock.setVisible
        dw.setVisible(False)
    elif how == "remove_dock_widget":
        viewer.window.remove_dock_widget(dw.widget())
    qtbot.wait(20)


# ------------------------------------------------------------------------ proofreading lets go
def test_real_events_edit_while_the_dock_is_open(shown_viewer, qtbot):
    """The event helpers really reach the proofreading bindings (else the tests below prove nothing)."""
    from napari_neuroseg._napari.proofread_widget import ProofreadWidget

    viewer = shown_viewer
    seg = viewer.add_labels(_labels(), name="seg")
    widget = ProofreadWidget(viewer)
    _dock(viewer, widget, "Proofreading")
    qtbot.wait(20)
    original = np.array(seg.data)
    seg.selected_label = 1
    _click(qtbot, viewer, (5, 5, 25), SHIFT)
    assert not (seg.data == 2).any()
    _click(qtbot, viewer, (5, 25, 4), CTRL)
    _click(qtbot, viewer, (5, 34, 36), CTRL)
    assert widget.controller.picker.seeds == [(5, 25, 4), (5, 34, 36)]
    assert _proofreading_callbacks(seg)  # (so the "let go" tests below can see a leftover)
    _key(qtbot, viewer, Qt.Key.Key_S, SHIFT)
    assert seg.data[5, 34, 36] not in (0, 3)
    seg.selected_label = 1
    _key(qtbot, viewer, Qt.Key.Key_Delete)
    assert not (seg.data == 1).any()
    for _ in range(3):
        seg.undo()
    np.testing.assert_array_equal(seg.data, original)


@pytest.mark.parametrize("how", ["close_button", "hide_button", "window_menu", "plugins_menu", "remove_dock_widget"])
def test_closed_proofreading_dock_lets_go(shown_viewer, qtbot, how, monkeypatch):
    from napari_neuroseg._napari.proofread_widget import ProofreadWidget
    from napari_neuroseg._napari.proofreading import ProofreadController, picking

    viewer = shown_viewer
    seg = viewer.add_labels(_labels(), name="seg")
    widget = ProofreadWidget(viewer)
    dw = _dock(viewer, widget, "Proofreading")
    qtbot.wait(20)
    assert any(str(k) == "Delete" for k in seg.keymap)
    _close(viewer, dw, how, qtbot)

    fired: list = []
    # every key, click and button runs through ProofreadController.run; the mouse through Picker
    for cls, name in ((ProofreadController, "run"), (ProofreadController, "apply"), (ProofreadController, "_on_paint"),
                      (ProofreadController, "_on_data"), (picking.Picker, "on_click"), (picking.Picker, "add_seed"),
                      (picking.Picker, "run_split")):
        orig = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda *a, _n=name, _o=orig, **k: (fired.append(_n), _o(*a, **k))[1])
    original = np.array(seg.data)
    _user_edits(qtbot, viewer, seg)
    seg.data = seg.data.copy()  # a data event: nothing of the closed dock may listen
    np.testing.assert_array_equal(seg.data, original)
    assert not [str(k) for k, f in seg.keymap.items() if getattr(f, "__name__", "").startswith("proofread_")]
    assert not _proofreading_callbacks(seg)
    assert fired == []
    # closed for good: new layers do not reach the widget
    viewer.add_labels(np.zeros((4, 4, 4), np.uint8), name="later")
    assert widget.layer_combo.findText("later") < 0

    if how in ("hide_button", "window_menu", "plugins_menu"):  # shown again (Window menu): bound again
        dw.toggleViewAction().trigger()
        qtbot.wait(20)
        later = viewer.layers["later"]  # the selected Labels layer while it was hidden
        assert widget.controller is not None and widget.controller.layer is later
        assert widget.layer_combo.findText("later") >= 0
        viewer.layers.selection.active = seg
        assert widget.controller.layer is seg
        seg.selected_label = 1
        _key(qtbot, viewer, Qt.Key.Key_Delete)
        assert not (seg.data == 1).any()


def test_review_keys_and_outline_let_go_with_the_dock(shown_viewer, qtbot):
    """N walks the review queue with a real key press while the dock is open (outline shown);
    after the close button, N does nothing and the outline layer is gone."""
    from napari_neuroseg._napari.proofread_widget import ProofreadWidget
    from napari_neuroseg._napari.proofreading import HIGHLIGHT_LAYER
    from napari_neuroseg.proofread.review import ReviewQueue

    viewer = shown_viewer
    seg = viewer.add_labels(_labels(), name="seg")
    widget = ProofreadWidget(viewer)
    dw = _dock(viewer, widget, "Proofreading")
    qtbot.wait(20)
    widget._install_queue(ReviewQueue.from_checks(seg.data, tiny=0, border=False, largest=3), None)
    viewer.layers.selection.active = seg
    _key(qtbot, viewer, Qt.Key.Key_N)
    q = widget.controller.review
    assert q.position == 0 and HIGHLIGHT_LAYER in viewer.layers
    assert seg.selected_label == q.current.id
    _close(viewer, dw, "close_button", qtbot)
    assert HIGHLIGHT_LAYER not in viewer.layers
    viewer.layers.selection.active = seg
    _key(qtbot, viewer, Qt.Key.Key_N)
    assert q.position == 0 and HIGHLIGHT_LAYER not in viewer.layers


def test_closing_the_viewer_releases_the_layer(make_napari_viewer, qtbot):
    from napari_neuroseg._napari.proofread_widget import ProofreadWidget

    viewer = make_napari_viewer(show=True)
    seg = viewer.add_labels(_labels(), name="seg")
    widget = ProofreadWidget(viewer)
    _dock(viewer, widget, "Proofreading")
    qtbot.wait(20)
    assert widget.controller.layer is seg
    viewer.close()
    qtbot.wait(20)
    assert not [k for k, f in seg.keymap.items() if getattr(f, "__name__", "").startswith("proofread_")]
    assert not _proofreading_callbacks(seg)


@pytest.mark.parametrize("how", ["close_button", "hide_button"])
@pytest.mark.parametrize("kind", ["nuclei", "neurons", "evaluate", "batch", "finetune"])
def test_closed_run_docks_disconnect_from_layer_events(shown_viewer, make_dock, qtbot, kind, how, tmp_path,
                                                      monkeypatch):
    monkeypatch.setenv("NEUROSEG_SESSIONS_DIR", str(tmp_path / "sessions"))
    viewer = shown_viewer
    widget = make_dock(kind, viewer)
    dw = _dock(viewer, widget, kind)
    qtbot.wait(20)
    combos_before = {id(c): [c.itemText(i) for i in range(c.count())] for c in widget.findChildren(QComboBox)}
    if kind != "batch":  # (the dock does follow the layer list while open; Batch has no layer box)
        viewer.add_image(np.zeros((4, 8, 8), np.float32), name="image while open")
        viewer.add_labels(np.zeros((4, 8, 8), np.uint8), name="labels while open")
        texts = [c.itemText(i) for c in widget.findChildren(QComboBox) for i in range(c.count())]
        assert "image while open" in texts or "labels while open" in texts, texts
        viewer.layers.remove("image while open")
        viewer.layers.remove("labels while open")
    assert {id(c): [c.itemText(i) for i in range(c.count())] for c in widget.findChildren(QComboBox)} == combos_before
    _close(viewer, dw, how, qtbot)
    calls: list = []
    if hasattr(widget, "_refresh_layers"):
        widget._refresh_layers = lambda *a: calls.append(a)  # a bound-method connection would bypass this
    viewer.add_image(np.zeros((4, 8, 8), np.float32), name="later image")
    viewer.add_labels(np.zeros((4, 8, 8), np.uint8), name="later labels")
    viewer.layers.remove("later image")
    after = {id(c): [c.itemText(i) for i in range(c.count())] for c in widget.findChildren(QComboBox)}
    assert after == combos_before
    assert calls == []


# ------------------------------------------------------------------------ which layer is edited
def test_proofreading_targets_the_selected_layer_not_the_ground_truth(shown_viewer, qtbot, fisbe_small, monkeypatch):
    from napari_neuroseg._napari._layers import ROLE_KEY, is_ground_truth
    from napari_neuroseg._napari.proofread_widget import ProofreadWidget

    viewer = shown_viewer
    viewer.open(str(fisbe_small["path"]), plugin="napari-neuroseg")
    gt = next(ly for ly in viewer.layers if ly.name.endswith("instances"))
    assert gt.metadata[ROLE_KEY] == "ground_truth" and is_ground_truth(gt)
    seg = viewer.add_labels(_labels()[:, :, :40], name="result")
    other = viewer.add_labels(_labels(), name="other result")
    viewer.layers.selection.active = seg  # the user selected the result
    widget = ProofreadWidget(viewer)
    _dock(viewer, widget, "Proofreading")
    qtbot.wait(20)
    assert widget.controller.layer is seg and "result" in widget.target_label.text()
    assert not any(str(k) == "Delete" for k in gt.keymap)

    viewer.layers.selection.active = other  # the target follows the selection
    assert widget.controller.layer is other and widget.layer_combo.currentText() == "other result"
    viewer.layers.selection.active = gt  # ... but not silently onto the ground truth
    assert widget.controller.layer is other
    assert "ground truth" in widget.target_label.text().lower()

    # chosen explicitly: every edit asks first
    asked: list = []
    answer = {"value": QMessageBox.StandardButton.No}
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: (asked.append(a), answer["value"])[1])
    widget.layer_combo.setCurrentText(gt.name)
    assert widget.controller.layer is gt and viewer.layers.selection.active is gt
    assert "ground truth" in widget.target_label.text().lower()
    before = np.array(gt.data)
    gt.selected_label = int(before.max())
    _key(qtbot, viewer, Qt.Key.Key_Delete)
    assert len(asked) == 1
    np.testing.assert_array_equal(gt.data, before)
    answer["value"] = QMessageBox.StandardButton.Yes
    _key(qtbot, viewer, Qt.Key.Key_Delete)
    assert len(asked) == 2 and not (gt.data == before.max()).any()
    _key(qtbot, viewer, Qt.Key.Key_Delete)  # confirmed once for this layer: no more questions
    assert len(asked) == 2


def test_ground_truth_names_and_roles():
    from types import SimpleNamespace

    from napari_neuroseg._napari._layers import is_ground_truth, labels_layer, looks_like_ground_truth

    assert all(looks_like_ground_truth(n) for n in ("sample_gt", "gt_instances", "ground truth", "GT", "groundtruth"))
    assert not any(looks_like_ground_truth(n) for n in ("segment", "nuclei result", "sample gtx", "prediction"))
    assert labels_layer(np.zeros((2, 2), np.uint8), name="a_gt")[1]["metadata"]["neuroseg_role"] == "ground_truth"
    assert "neuroseg_role" not in labels_layer(np.zeros((2, 2), np.uint8), name="seg")[1]["metadata"]
    # an explicit role wins over the name
    assert not is_ground_truth(SimpleNamespace(name="gt", metadata={"neuroseg_role": "result"}))


def test_new_proofreading_dock_prefers_a_result_over_the_ground_truth(make_napari_viewer):
    from napari_neuroseg._napari._layers import labels_layer
    from napari_neuroseg._napari.proofread_widget import ProofreadWidget

    viewer = make_napari_viewer()
    data, kw, _ = labels_layer(_labels(), name="sample_gt")
    gt = viewer.add_labels(data, **kw)
    seg = viewer.add_labels(_labels(), name="seg")
    viewer.layers.selection.active = gt
    widget = ProofreadWidget(viewer)
    assert widget.controller.layer is seg


# ------------------------------------------------------------------------ sizes, tooltips
@pytest.mark.parametrize("kind", ["proofreading", "nuclei", "neurons", "batch", "evaluate", "finetune"])
def test_docks_fit_a_1280x800_screen(shown_viewer, make_dock, qtbot, kind, tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROSEG_SESSIONS_DIR", str(tmp_path / "sessions"))
    viewer = shown_viewer
    viewer.add_image(np.zeros((6, 20, 20), np.float32), name="raw")
    viewer.add_labels(_labels(), name="seg")
    win = viewer.window._qt_window
    size = win.size()
    assert (size.width(), size.height()) == SCREEN
    widget = make_dock(kind, viewer)
    assert widget.minimumSizeHint().height() <= 600, widget.minimumSizeHint()  # 800 px less menu, title, status bar
    assert widget.minimumSizeHint().width() <= 420 and widget.sizeHint().width() <= 420, widget.sizeHint()
    dw = _dock(viewer, widget, kind)
    qtbot.wait(50)
    assert win.size() == size
    # every number box shows its whole value
    for spin in widget.findChildren(QAbstractSpinBox):
        if spin.isVisibleTo(widget) and hasattr(spin, "textFromValue"):
            edit = spin.lineEdit()  # the text field between napari's -/+ buttons
            longest = max((spin.prefix() + spin.textFromValue(v) + spin.suffix() for v in (spin.minimum(), spin.maximum())),
                          key=edit.fontMetrics().horizontalAdvance)
            assert edit.width() >= edit.fontMetrics().horizontalAdvance(longest), (longest, edit.width())
    _close(viewer, dw, "close_button", qtbot)
    qtbot.wait(20)
    assert win.size() == size


def test_shortcuts_box_does_not_look_disabled(make_napari_viewer):
    from napari_neuroseg._napari.proofread_widget import ProofreadWidget

    widget = ProofreadWidget(make_napari_viewer())
    widget.shortcut_section.set_expanded(True)
    assert all(e.isEnabled() for e in widget.shortcut_edits.values())
    assert widget.shortcut_box.isEnabled()


@pytest.mark.parametrize("kind", ["proofreading", "nuclei", "neurons", "batch", "evaluate", "finetune"])
def test_first_progress_bar_leaves_the_status_bar_as_the_open_dock_set_it(shown_viewer, make_dock, qtbot, kind,
                                                                          tmp_path, monkeypatch):
    """The indicator rule (``_dock.reserve_activity_indicator``, from every dock's ``Show``): once a
    dock is open, napari's first progress bar of the session no longer grows its status bar (the
    "in progress" animation's first frame is loaded and laid out already), so it resizes no canvas."""
    from qtpy.QtCore import QEvent, QObject
    from qtpy.QtWidgets import QStatusBar

    from napari_neuroseg._napari._workers import start_worker
    from napari_neuroseg.runtime.progress import Progress

    monkeypatch.setenv("NEUROSEG_SESSIONS_DIR", str(tmp_path / "sessions"))
    viewer = shown_viewer
    widget = make_dock(kind, viewer)
    _dock(viewer, widget, kind)
    qtbot.wait(50)
    bar = widget.window().findChild(QStatusBar)
    height = bar.height()
    resized: list = []

    class Log(QObject):
        def eventFilter(self, obj, ev):
            if ev.type() == QEvent.Type.Resize:
                resized.append((ev.oldSize().height(), ev.size().height()))
            return False

    log = Log()
    bar.installEventFilter(log)

    def job():
        yield Progress(0, 1, "first step")
        return 1

    steps: list = []
    done: list = []
    start_worker(job, on_yield=steps.append, on_finished=lambda: done.append(1))
    qtbot.waitUntil(lambda: bool(done), timeout=20000)
    bar.removeEventFilter(log)
    assert steps  # the job ran after napari built its bar (the start rule)
    assert resized == [] and bar.height() == height, (resized, height)
