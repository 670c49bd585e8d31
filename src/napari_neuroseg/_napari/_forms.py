"""magicgui form pieces shared by the run docks (Nuclei, Neurons, Evaluate).

The parameter forms of those docks are :class:`magicgui.widgets.Container` objects (``dock.form``,
each field reachable by name: ``dock.form.image.value``), as napari plugins conventionally write
forms; the run/cancel row, tables and lists stay hand-written Qt.

:func:`layer_choice` is a ``ComboBox`` whose choices are the viewer's layers of a kind (value: the
layer itself). The docks refresh it (``reset_choices``) on the layer list's events through
:meth:`~napari_neuroseg._napari._dock.DockLifecycleMixin.connect_event`, so a closed dock lets go
of them (napari's own ``reset_choices`` hookup is not used: it would outlive the dock).
:func:`keep_or_prefer` refreshes such a box and picks a default only where the user has not chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from magicgui.widgets import ComboBox, FileEdit, FloatSpinBox

__all__ = ["LAYER_EVENTS", "decimals", "keep_or_prefer", "layer_choice", "model_choices", "path_edit"]

#: layer-list events after which the layer boxes are refreshed
LAYER_EVENTS = ("inserted", "removed", "reordered", "renamed")


def layer_choice(viewer: Any, *, label: str, tooltip: str, accept: Callable[[Any], bool],
                 none_text: str | None = None, name: str | None = None) -> ComboBox:
    """A layer box following ``viewer.layers``: layers for which ``accept(layer)`` is true, in the
    layer list's order, shown by name (``none_text`` first, value None, when given)."""

    def choices(_widget: Any = None) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = [(none_text, None)] if none_text is not None else []
        return out + [(ly.name, ly) for ly in viewer.layers if accept(ly)]

    return ComboBox(name=name, label=label, tooltip=tooltip, choices=choices)


def path_edit(name: str, label: str, mode: str, *, tooltip: str, browse_tip: str, placeholder: str | None = None,
              browse_text: str | None = None, filter: str | None = None) -> FileEdit:
    """A path box with its Browse button (``mode``: "r" a file, "d" a folder): ``tooltip`` on the
    box and its text field, ``browse_tip`` (and ``browse_text``) on the button, ``placeholder``
    in the empty field."""
    edit = FileEdit(name=name, label=label, mode=mode, filter=filter)
    if placeholder is not None:
        edit.line_edit.native.setPlaceholderText(placeholder)
    edit.tooltip = edit.line_edit.tooltip = tooltip
    if browse_text is not None:
        edit.choose_btn.text = browse_text
    edit.choose_btn.tooltip = browse_tip
    return edit


def keep_or_prefer(box: ComboBox, prefer: Callable[[list[Any]], Any] | None = None, *,
                   initial: bool = False) -> None:
    """Refresh ``box``'s choices; keep the current choice while it still exists (not on the
    ``initial`` fill), else take ``prefer(choices)`` (when it is one of them) or leave the box's
    default (its first choice)."""
    had = bool(box.choices) and not initial
    before = box.value if had else None
    box.reset_choices()
    choices = list(box.choices)
    if had and before is not None and any(c is before for c in choices):
        box.value = before
        return
    if prefer is not None:
        want = prefer(choices)
        if any(c is want for c in choices):
            box.value = want


def model_choices(kind: str, fixed_first: Sequence[str] = (), fixed_last: Sequence[str] = ()) -> list[str]:
    """Shipped/bundled names, the user's registered models of ``kind`` (``models/registry.py``)
    and the fixed entries (``Model folder…``), without duplicates."""
    names: list[str] = list(fixed_first)
    try:
        from napari_neuroseg.models.registry import list_models

        names += [str(m["name"]) for m in list_models() if m.get("kind") == kind]
    except Exception:  # noqa: BLE001, S110 - an unreadable model folder: the fixed entries still work
        pass
    out: list[str] = []
    for n in [*names, *fixed_last]:
        if n not in out:
            out.append(n)
    return out


def decimals(spin: FloatSpinBox, n: int) -> FloatSpinBox:
    """Show ``n`` decimals (magicgui derives them from the step)."""
    spin.native.setDecimals(n)
    return spin


def tooltips_missing(widgets: Iterable[Any]) -> list[str]:
    """Names of the Qt widgets among ``widgets`` without a tooltip (for the tests)."""
    return [f"{type(w).__name__} {w.objectName() or getattr(w, 'text', lambda: '')()}"
            for w in widgets if not w.toolTip().strip()]


def follow_registry(dock: Any, refresh: Callable[[], Any]) -> None:
    """Call ``refresh()`` in the main thread whenever the model registry changes
    (``models.registry.on_change``; a model may be registered from a worker thread), until the
    dock is closed. Without that hook nothing is connected (the docks also refresh when shown)."""
    from qtpy.QtCore import QObject, Signal

    from napari_neuroseg.models import registry

    on_change = getattr(registry, "on_change", None)
    remove = getattr(registry, "remove_listener", None)
    if on_change is None or remove is None:
        return

    class _Relay(QObject):
        changed = Signal()

    relay = _Relay(dock)  # lives in the dock's (main) thread: emits from a worker are queued
    relay.changed.connect(lambda: None if dock.dock_closed else refresh())

    def listener() -> None:
        try:
            relay.changed.emit()
        except RuntimeError:  # the Qt object is gone with its dock
            remove(listener)

    on_change(listener)
    dock.on_teardown(lambda: remove(listener))


def _label_widgets(form: Any) -> list[Any]:
    out = []
    for w in form:
        lw = w._labeled_widget() if hasattr(w, "_labeled_widget") else None
        lab = getattr(lw, "_label_widget", None)
        if lab is not None and lab.native.isVisibleTo(lw.native) and lab.native.text():
            out.append(lab.native)
    return out


def _fit(form: Any, area: Any) -> None:
    labels = _label_widgets(form)
    if labels:
        width = max(max(lab.fontMetrics().horizontalAdvance(lab.text()) + 4, lab.sizeHint().width()) for lab in labels)
        for lab in labels:
            if lab.minimumWidth() != width:
                lab.setMinimumWidth(width)
    if area is not None:
        content = area.widget()
        bar = area.verticalScrollBar().sizeHint().width()
        need = content.minimumSizeHint().width() + bar
        if area.minimumWidth() != need:
            area.setMinimumWidth(need)


def fit_form(form: Any, area: Any = None) -> None:
    """Align the form's labels in the font they are shown with (napari's theme changes it once the
    dock is shown; magicgui measures the default font) and keep the scroll area ``area`` as wide
    as its content needs (no clipped boxes): now and whenever the style or font changes."""
    from qtpy.QtCore import QEvent, QObject

    class _Fitter(QObject):
        def eventFilter(self, obj: Any, ev: Any) -> bool:
            if ev.type() in (QEvent.Type.Show, QEvent.Type.StyleChange, QEvent.Type.FontChange,
                             QEvent.Type.Polish):
                _fit(form, area)
            return False

    fitter = _Fitter(form.native)
    form.native.installEventFilter(fitter)
    _fit(form, area)


SAVE_LABELS_TIP = ("Write the result's Labels layer to a TIFF (with the voxel size) or OME-Zarr file "
                   "with the plugin's writers")


def run_dock_layout(dock: Any, form: Any, controls: Any, on_save: Callable[[], Any]) -> Any:
    """The Nuclei/Neurons dock body: the magicgui ``form``, the run ``controls`` and a disabled
    "Save labels…" button (``dock.save_button``, calling ``on_save``), in a scroll area that is
    as wide as its controls need (the threshold boxes never clip their values). Returns the
    scroll area."""
    from qtpy.QtWidgets import QPushButton, QVBoxLayout, QWidget

    from napari_neuroseg._napari._dock import fit_controls, scrollable

    dock.save_button = QPushButton("Save labels…")
    dock.save_button.setToolTip(SAVE_LABELS_TIP)
    dock.save_button.setEnabled(False)
    dock.save_button.clicked.connect(lambda *_: on_save())
    content = QWidget()
    layout = QVBoxLayout(content)
    layout.setContentsMargins(4, 4, 4, 4)
    layout.addWidget(form.native)
    layout.addWidget(controls)
    layout.addWidget(dock.save_button)
    layout.addStretch(1)
    fit_controls(content)  # never narrower than its value ("0.47(")
    area = scrollable(dock, content)
    fit_form(form, area)
    return area


def follow_model_choice(form: Any, choice: str, *, file: str, folder: str) -> None:
    """The model-path field of a run dock's form follows the Model box: enabled for the file and
    folder entries, browsing files or folders to match."""
    form.model_path.enabled = choice in (file, folder)
    form.model_path.mode = "d" if choice == folder else "r"


def typed_model_path(form: Any, *, fix: str) -> str:
    """The model path typed in the form (as typed: no absolute ``Path``); NeurosegError with ``fix``
    when it is empty."""
    from napari_neuroseg.errors import NeurosegError

    path = form.model_path.line_edit.value.strip()
    if not path:
        raise NeurosegError("no model path given", fix=fix)
    return path
