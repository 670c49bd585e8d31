"""Every control of every dock has a tooltip that says what it does, and a number control says its
unit (issue 17: "Tooltips on every control, saying the unit and the effect").

The walk covers all six docks (Nuclei, Neurons, Evaluate, Proofreading, Batch with each task's
parameter fields, Fine-tune), folded sections included: a control hidden in a collapsed section or
built later (Batch's task parameters) still needs its tooltip when the user gets to it.
"""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QAbstractSlider,
    QAbstractSpinBox,
    QComboBox,
    QLineEdit,
    QProgressBar,
    QScrollBar,
    QWidget,
)

pytestmark = pytest.mark.gui

DOCKS = ("nuclei", "neurons", "evaluate", "proofreading", "batch", "finetune")  # conftest.DOCK_KINDS
CONTROLS = (QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit, QAbstractItemView, QProgressBar, QAbstractSlider)
#: how a number control may say its unit (in its tooltip, prefix or suffix)
UNITS = ("voxel", "vox", "µm", "um", "%", "0-1", "no unit", "px", "minute", "second", "step", "tile", "count",
         "intensity", "number of", "many")
#: shortest tooltip that can say what a control does (shorter ones only repeat the control's name)
MIN_CHARS = 20


def _is_control(w) -> bool:
    """A control the user works with (not the line edit inside a spin box, a combo box's popup or a
    table's header and corner button: parts of a control that has the tooltip)."""
    if not isinstance(w, CONTROLS) or isinstance(w, QScrollBar):  # a scroll area's bar: no setting
        return False
    p = w.parent()
    while p is not None:
        if isinstance(p, (QAbstractSpinBox, QComboBox, QAbstractItemView)):
            return False
        p = p.parent()
    return True


def _name(c) -> str:
    text = getattr(c, "text", None)
    return f"{type(c).__name__} {text() if callable(text) else ''!r}"


def _problems(widget) -> list[str]:
    out = []
    for c in widget.findChildren(QWidget):
        if not _is_control(c):
            continue
        tip = c.toolTip().strip()
        text = c.text().strip() if isinstance(c, (QAbstractButton, QLineEdit)) else ""
        if len(tip) < MIN_CHARS or tip.lower() == text.lower():
            out.append(f"{_name(c)}: tooltip {tip!r} does not say what it does")
        if isinstance(c, QAbstractSpinBox) and hasattr(c, "suffix"):
            said = f"{tip} {c.prefix()} {c.suffix()}".lower()
            if not any(u in said for u in UNITS):
                out.append(f"{_name(c)}: tooltip {tip!r} does not say the unit")
    return out


@pytest.fixture
def viewer(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROSEG_SESSIONS_DIR", str(tmp_path / "sessions"))
    monkeypatch.setenv("NEUROSEG_MODELS_DIR", str(tmp_path / "models"))
    v = make_napari_viewer()
    v.add_image(np.zeros((6, 20, 20), np.float32), name="raw", scale=(2, 1, 1))
    v.add_labels(np.zeros((6, 20, 20), np.uint8), name="seg")
    return v


@pytest.mark.parametrize("kind", DOCKS)
def test_every_control_of_every_dock_says_what_it_does(viewer, make_dock, kind):
    widget = make_dock(kind, viewer)
    controls = [c for c in widget.findChildren(QWidget) if _is_control(c)]
    assert len(controls) >= 5, [_name(c) for c in controls]  # the walk sees the dock's controls
    assert _problems(widget) == []


def test_every_batch_task_parameter_says_its_unit_and_effect(viewer, make_dock):
    """Batch builds a text field per parameter of the chosen task: every task's fields, and a number
    parameter says its unit or range."""
    from napari_neuroseg.batch.tasks import get_task

    widget = make_dock("batch", viewer)
    tasks = list(widget.form.task.choices)
    assert len(tasks) >= 3
    bad = []
    for name in tasks:
        widget.form.task.value = name
        assert [e.name for e in widget.params] == [p.name for p in get_task(name).params]
        bad += [f"{name}: {p}" for p in _problems(widget)]
        for p, edit in zip(get_task(name).params, widget.params):
            tip = edit.native.toolTip()
            if len(tip) < MIN_CHARS:
                bad.append(f"{name}.{p.name}: {tip!r} is too short to say what it does")
            if p.type in (int, float) and not any(u in tip.lower() for u in (*UNITS, "index", "threshold (0")):
                bad.append(f"{name}.{p.name}: {tip!r} does not say the unit")
    assert bad == []


@pytest.mark.parametrize("kind", ("nuclei", "neurons", "evaluate", "batch"))
def test_every_form_field_says_what_it_does(viewer, make_dock, kind):
    """The run docks gather their parameters in one magicgui form; each field's tooltip (the
    one the walk above reads on its control) is set on the field itself."""
    from magicgui.widgets import Container

    w = make_dock(kind, viewer)
    assert isinstance(w.form, Container)
    short = [field.name for field in w.form if not (field.tooltip and len(field.tooltip) >= MIN_CHARS)]
    assert short == []

