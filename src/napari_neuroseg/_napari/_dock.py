"""What every dock widget of the plugin shares: letting go when closed, and fitting the screen.

:class:`DockLifecycleMixin` records a dock's connections to napari (layer-list and layer events,
through :meth:`~DockLifecycleMixin.connect_event`) and its other bindings (key bindings, mouse
callbacks: :meth:`~DockLifecycleMixin.on_teardown`) and undoes them, whichever way the user
closes the dock:

- the title bar's close button and ``viewer.window.remove_dock_widget`` take the widget out of its
  ``QDockWidget`` (``setParent(None)``) and delete the dock: the widget's ``ParentChange`` event
  ends it for good (:meth:`~DockLifecycleMixin.teardown`);
- the title bar's hide button and the Window menu's entry (the dock's toggle-view action) hide
  the ``QDockWidget``: the dock is *suspended* (connections removed,
  :meth:`~DockLifecycleMixin.on_dock_hidden`) and comes back when shown again
  (:meth:`~DockLifecycleMixin.on_dock_shown`); a dock merely behind another tab stays active;
- closing the viewer deletes the ``QDockWidget`` and the widget with it: their ``destroyed``
  signals end it (the callbacks then touch no Qt object).

:class:`CollapsibleSection` is a titled section whose content folds away (long docks fit a
1280x800 screen), and :func:`scrollable` puts a dock's content in a vertical ``QScrollArea``.

Indicator rule (why a session's first job stalled the viewer 100-160 ms while napari built its
progress bar): napari's status bar holds a hidden "in progress" label whose animation
(a ``QMovie``) has no frame loaded until the first job of the session starts it. Its size hint
then grows from the text height to the frame's (18 px), the status bar grows by one pixel, and
Qt resizes the central canvas and every dock by that pixel: a ``QOpenGLWidget`` repaints at once
when resized, then again for the update vispy asks, and the docks repaint, all inside napari's
building of the bar (its ``processEvents()`` calls), in the job's first event-loop pass. Every
dock therefore loads that frame and lays the label out when the dock is shown
(:func:`reserve_activity_indicator`): the status bar takes its final height while the dock opens,
whose layout resizes the canvas anyway, and the first bar changes no geometry (as every later one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QComboBox,
    QDockWidget,
    QFrame,
    QLabel,
    QMainWindow,
    QScrollArea,
    QSizePolicy,
    QStatusBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

__all__ = ["CollapsibleSection", "DockLifecycleMixin", "fit_controls", "reserve_activity_indicator", "scrollable"]


class _Bindings:
    """The connections and undo functions of one dock (plain Python: safe after Qt deleted it)."""

    def __init__(self) -> None:
        self.connections: list[tuple[Any, Callable]] = []
        self.teardowns: list[Callable[[], Any]] = []
        #: Qt connections to ``destroyed`` signals, cut when the dock closes: a Python slot left
        #: connected ran when Qt deleted the widget at interpreter exit (a segmentation fault)
        self.qt_connections: list[Any] = []
        self.connected = True
        self.closed = False

    def disconnect_all(self) -> None:
        if not self.connected:
            return
        self.connected = False
        for emitter, callback in self.connections:
            try:
                emitter.disconnect(callback)
            except Exception:  # noqa: BLE001 - the emitter may be gone with its layer
                pass

    def reconnect_all(self) -> None:
        if self.connected or self.closed:
            return
        self.connected = True
        for emitter, callback in self.connections:
            emitter.connect(callback)

    def close(self) -> None:
        if self.closed:
            return
        self.disconnect_all()
        self.closed = True
        for fn in reversed(self.teardowns):
            try:
                fn()
            except Exception:  # noqa: BLE001 - best effort: the layer or viewer may be gone
                pass
        self.teardowns.clear()
        self.connections.clear()
        from qtpy.QtCore import QObject

        for conn in self.qt_connections:
            try:
                QObject.disconnect(conn)
            except (RuntimeError, TypeError):  # the sender is gone
                pass
        self.qt_connections.clear()


def reserve_activity_indicator(widget: QWidget) -> bool:
    """Give the status bar of the main window holding ``widget`` the height napari's activity
    indicator gives it when the session's first progress bar appears (the indicator rule, module
    docstring): each hidden status-bar label showing an animation that has no frame yet gets its
    first frame (``QMovie.jumpToFrame(0)``: the animation stays stopped) and is shown and hidden
    again at once, which lays out its holders up to the window as napari's first ``show()`` would
    (no paint in between: the label is never seen; napari shows and starts it with its first
    job). Qt API only (no napari attribute); nothing happens without a main window, a status bar
    or such a label, or once the frame is loaded. Returns whether a frame was loaded now."""
    win = widget.parentWidget()  # a floating dock's parent is still the main window
    while win is not None and not isinstance(win, QMainWindow):
        win = win.parentWidget()
    if win is None:
        return False
    loaded = False
    for bar in win.findChildren(QStatusBar, "", Qt.FindChildOption.FindDirectChildrenOnly):
        for label in bar.findChildren(QLabel):
            movie = label.movie()
            if (label.isHidden() and movie is not None and movie.isValid()
                    and movie.currentPixmap().isNull() and movie.jumpToFrame(0)):
                label.show()
                label.hide()
                loaded = True
    return loaded


class DockLifecycleMixin:
    """For a plugin dock widget (put it before ``QWidget`` in the bases).

    Connect to napari events with :meth:`connect_event` (not ``emitter.connect``) and register the
    undoing of anything else (key bindings, mouse callbacks, running jobs) with
    :meth:`on_teardown`. Override :meth:`on_dock_hidden` / :meth:`on_dock_shown` for what a
    hidden dock must release and take back (the proofreading keys), and :meth:`on_dock_closed`
    for the last words of a closed one (still alive, before its connections are removed).
    """

    def _bindings(self) -> _Bindings:
        b = self.__dict__.get("_dock_bindings")
        if b is None:
            b = self.__dict__["_dock_bindings"] = _Bindings()
            self.__dict__["_dock_suspended"] = False
            self.__dict__["_dock_docked"] = False
            # Qt deletes the widget (the viewer closed): let go without touching Qt objects
            b.qt_connections.append(self.destroyed.connect(lambda *_: b.close()))  # type: ignore[attr-defined]
            self._watch_heap(b)
        return b

    def _watch_heap(self, b: _Bindings) -> None:
        """The settled heap is handed back when this dock closes, and when a layer that predates
        the settling leaves its viewer (``_heap.py``); registered once, when the viewer is known."""
        if self.__dict__.get("_dock_heap_watched") or b.closed:
            return
        viewer = getattr(self, "viewer", None)
        if viewer is None:
            return
        from napari_neuroseg._napari import _heap

        self.__dict__["_dock_heap_watched"] = True
        b.teardowns.insert(0, _heap.watch(viewer, self))  # runs last: after the dock's own

    # -------------------------------------------------------------- recording
    def connect_event(self, emitter: Any, callback: Callable) -> None:
        """``emitter.connect(callback)``, undone when the dock is hidden or closed."""
        b = self._bindings()
        b.connections.append((emitter, callback))
        if b.connected:
            emitter.connect(callback)

    def on_teardown(self, fn: Callable[[], Any]) -> None:
        """Call ``fn`` once when the dock is closed (also when Qt deletes it: no Qt calls in it)."""
        self._bindings().teardowns.append(fn)

    @property
    def dock_closed(self) -> bool:
        """Whether the dock was closed for good."""
        return self._bindings().closed

    @property
    def dock_suspended(self) -> bool:
        """Whether the dock is hidden (its connections and bindings released)."""
        self._bindings()
        return bool(self.__dict__["_dock_suspended"])

    # -------------------------------------------------------------- hooks
    def on_dock_hidden(self) -> None:
        """The dock was hidden (hide button, Window menu): release what acts on layers."""

    def on_dock_shown(self) -> None:
        """A hidden dock is shown again (its event connections are back): take things back."""

    def on_dock_closed(self) -> None:
        """The dock is being closed for good (the widget is still alive)."""

    # -------------------------------------------------------------- lifecycle
    def teardown(self) -> None:
        """Close for good: :meth:`on_dock_closed`, then undo every recorded connection/binding."""
        b = self._bindings()
        if b.closed:
            return
        try:
            self.on_dock_closed()
        finally:
            b.close()

    def suspend(self) -> None:
        """Release the connections and bindings until :meth:`resume` (the dock is hidden)."""
        b = self._bindings()
        if b.closed or self.__dict__["_dock_suspended"]:
            return
        self.__dict__["_dock_suspended"] = True
        b.disconnect_all()
        self.on_dock_hidden()

    def resume(self) -> None:
        b = self._bindings()
        if b.closed or not self.__dict__["_dock_suspended"]:
            return
        self.__dict__["_dock_suspended"] = False
        b.reconnect_all()
        self.on_dock_shown()

    def dock_widget(self) -> QDockWidget | None:
        """The ``QDockWidget`` holding this widget (None when not docked)."""
        w = self.parentWidget()  # type: ignore[attr-defined]
        while w is not None and not isinstance(w, QDockWidget):
            w = w.parentWidget()
        return w

    def event(self, ev: QEvent) -> bool:
        t = ev.type()
        if t == QEvent.Type.ParentChange:
            self._bindings()
            dock = self.dock_widget()
            if dock is not None:
                if not self.__dict__["_dock_docked"]:
                    b = self._bindings()
                    self._watch_heap(b)
                    b.qt_connections.append(dock.destroyed.connect(lambda *_: b.close()))
                self.__dict__["_dock_docked"] = True
            elif self.parentWidget() is None and self.__dict__["_dock_docked"]:  # type: ignore[attr-defined]
                self.teardown()  # taken out of its dock: close button, remove_dock_widget
        elif t == QEvent.Type.Hide:
            dock = self.dock_widget()
            if dock is not None and dock.isHidden():
                self.suspend()
        elif t == QEvent.Type.Show:
            reserve_activity_indicator(self)  # type: ignore[arg-type]  # the indicator rule
            if self.__dict__.get("_dock_suspended"):
                self.resume()
        return super().event(ev)  # type: ignore[misc]


class CollapsibleSection(QWidget):
    """A title button (arrow) over a content widget that folds away; ``content`` holds the rows."""

    def __init__(self, title: str, content: QWidget, *, expanded: bool = False, tooltip: str = "",
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setAutoRaise(True)
        self.toggle.setStyleSheet("QToolButton { font-weight: bold; }")
        self.toggle.setToolTip(tooltip or f"show or hide the {title.lower()} section")
        self.content = content
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.toggle)
        layout.addWidget(content)
        self.toggle.toggled.connect(self.set_expanded)
        self.set_expanded(expanded)

    @property
    def expanded(self) -> bool:
        return self.toggle.isChecked()

    def set_expanded(self, on: bool) -> None:
        if self.toggle.isChecked() != bool(on):
            self.toggle.setChecked(bool(on))  # comes back here through `toggled`
            return
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.content.setVisible(bool(on))


def scrollable(owner: QWidget, content: QWidget) -> QScrollArea:
    """Put ``content`` in a vertical scroll area filling ``owner`` (its only child): the dock needs
    no minimum height, and never scrolls sideways (the area is as wide as the content needs)."""
    area = QScrollArea(owner)
    area.setWidget(content)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    bar = area.verticalScrollBar().sizeHint().width()
    area.setMinimumWidth(content.minimumSizeHint().width() + bar)
    area.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
    layout = QVBoxLayout(owner)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(area)
    return area


#: Room a spin box needs beside its text under napari's theme: a 20 px button on each side,
#: 10 px padding on each side, and a few pixels for the frame and the cursor.
SPIN_CHROME_PX = 2 * 20 + 2 * 10 + 8


class _SpinFitter(QObject):
    """Sets a spin box's minimum width from its font whenever the style or font changes (napari's
    theme changes both once the dock is shown)."""

    def eventFilter(self, obj: Any, ev: QEvent) -> bool:
        if ev.type() in (QEvent.Type.Polish, QEvent.Type.FontChange, QEvent.Type.StyleChange, QEvent.Type.Show):
            _fit_spin(obj)
        return False


def _fit_spin(spin: Any) -> None:
    fm = spin.fontMetrics()
    texts = [spin.prefix() + spin.textFromValue(v) + spin.suffix() for v in (spin.minimum(), spin.maximum())]
    width = max(fm.horizontalAdvance(t) for t in texts) + SPIN_CHROME_PX
    if spin.minimumWidth() != width:
        spin.setMinimumWidth(width)


def fit_controls(widget: QWidget, *, combo_chars: int = 12) -> None:
    """Size the controls of a dock to fit a narrow dock area.

    Every spin box gets the width of its longest value (prefix and suffix included, in the font
    it is shown with), so no layout squeezes it into a clipped "0.47(", and no more. Every combo
    box asks for ``combo_chars`` characters instead of its longest entry (long layer or model
    names no longer widen the dock; the open list shows them whole)."""
    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(combo_chars)
    fitter = widget.findChild(_SpinFitter)
    if fitter is None:
        fitter = _SpinFitter(widget)
    for spin in widget.findChildren(QAbstractSpinBox):
        if hasattr(spin, "textFromValue"):
            _fit_spin(spin)
            spin.installEventFilter(fitter)
