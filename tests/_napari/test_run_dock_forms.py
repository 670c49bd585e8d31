"""The Nuclei, Neurons, Evaluate (and Batch) docks: magicgui forms, the model pickers follow the model
registry. (Every control's tooltip: ``test_tooltips.py``.)"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

KINDS = ("nuclei", "neurons", "evaluate")


def test_tooltips_say_the_unit(make_napari_viewer, make_dock):
    viewer = make_napari_viewer()
    nuc, neu = make_dock("nuclei", viewer), make_dock("neurons", viewer)
    assert "µm" in nuc.form.voxel_size.tooltip and "µm" in neu.form.voxel_size.tooltip
    assert "0-1" in nuc.form.prob_thresh.tooltip and "voxels" in neu.form.min_size.tooltip
    assert "%" in nuc.form.percentiles.tooltip


@pytest.mark.parametrize("kind", ("nuclei", "neurons"))
def test_model_picker_follows_the_registry(make_napari_viewer, make_dock, qtbot, tmp_path, monkeypatch, kind):
    """A model registered while the dock is open (the Fine-tune dock does so from a worker thread)
    appears in the Model box; a closed dock stops listening."""
    from napari_neuroseg.models import registry

    if not hasattr(registry, "on_change"):
        pytest.skip("models.registry has no change hook in this checkout")
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path / "models"))
    viewer = make_napari_viewer()
    w = make_dock(kind, viewer)
    dw = viewer.window.add_dock_widget(w, name=kind)
    before = list(w.form.model.choices)
    entry_dir = tmp_path / "models" / "my_model"
    entry_dir.mkdir(parents=True)
    import json

    (entry_dir / registry.ENTRY_FILE).write_text(json.dumps(
        {"name": "my_model", "kind": "nuclei" if kind == "nuclei" else "neurons",
         "file": "" if kind == "nuclei" else "model.pt"}))
    if kind == "neurons":
        (entry_dir / "model.pt").write_bytes(b"")
    import threading

    th = threading.Thread(target=registry.notify_changed)
    th.start()
    th.join()
    qtbot.waitUntil(lambda: "my_model" in w.form.model.choices, timeout=5000)
    assert [c for c in w.form.model.choices if c != "my_model"] == before
    viewer.window.remove_dock_widget(dw)
    qtbot.wait(20)  # the dock is deleted later (closing the viewer first segfaults, also before this change)
    assert w.dock_closed
    registry.notify_changed()  # no error, nothing touched


@pytest.mark.parametrize("kind", KINDS)
def test_docks_fit_a_1280x800_screen(make_napari_viewer, make_dock, qtbot, kind):
    """Docked in a 1280x800 window, with napari's theme applied: no taller than the dock area,
    not wider than a side dock, and every field as wide as its content (no clipped box)."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    viewer.add_image(np.zeros((6, 20, 20), np.float32), name="raw", scale=(2, 1, 1))
    viewer.add_labels(np.zeros((6, 20, 20), np.uint8), name="seg")
    w = make_dock(kind, viewer)
    viewer.window.add_dock_widget(w, name=kind)
    qtbot.wait(50)
    hint = w.minimumSizeHint()
    assert hint.height() <= 600 and hint.width() <= 420, hint
    for field in w.form:
        assert field.native.width() >= field.native.minimumSizeHint().width(), field.name
    area = getattr(w, "scroll_area", None)
    if area is not None:  # the content is never cut off at the right (no sideways scrolling)
        assert area.viewport().width() >= area.widget().minimumSizeHint().width()


def test_path_edit_puts_its_texts_on_the_box_the_field_and_the_button(qtbot):
    """The docks' path boxes (model path, batch inputs/output) are made by _forms.path_edit."""
    from napari_neuroseg._napari._forms import path_edit

    e = path_edit("p", "Path", "d", tooltip="where", browse_tip="pick", placeholder="a folder", browse_text="Folder…")
    qtbot.addWidget(e.native)
    assert (e.name, e.label, e.mode.value) == ("p", "Path", "d")
    assert e.tooltip == e.line_edit.tooltip == "where" and e.line_edit.native.placeholderText() == "a folder"
    assert (e.choose_btn.text, e.choose_btn.tooltip) == ("Folder…", "pick")
