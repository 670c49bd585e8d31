"""Result data made ready for napari in the worker thread, so that adding the layer is cheap.

What napari does in the main thread when a Labels layer is added, and what is done here instead
(measured with ``benchmarks/bench_widget_stalls.py``, see ``docs/widgets.md``, Responsiveness):

- labels of 32/64-bit integers are remapped on every slice to a texture dtype
  (``zero_preserving_modulo``, numba ``parallel=True``): the first remap of a session loads the
  kernels and numba's typing context, and each later slice pays the remap. 8/16-bit labels are
  used as they are. :func:`compact_labels` casts a result whose ids fit to ``uint16`` (here, in
  the worker), so napari skips the remap altogether;
- the first Labels layer of a session builds vispy's dash-pattern table (13 patterns of 1024
  steps in a Python loop, ``lru_cache``-d, pure numpy: ~0.2 s) for its polygon overlay.
  :func:`warm_labels_display` fills that cache in the worker;
- adding a Labels layer builds vispy visuals for its polygon and brush overlays (tens of ms each):
  :func:`hide_painting_overlays` (worker) and :func:`show_overlays_on_mode` (main thread) create
  them only when the user picks their mode.

Main thread, when a result arrives (:class:`StagedDisplay`, :func:`repaint_after_next_pass`): each
heavy step (napari's insert of one layer, the canvas redraw after it) runs in an event-loop pass
of its own, so input and timers are handled between them. The layers are built in the worker.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["CanvasCache", "StagedDisplay", "compact_labels", "hide_painting_overlays", "repaint_after_next_pass",
           "show_labels_layer", "show_overlays_on_mode", "warm_labels_display", "window_canvases"]

#: the largest id napari shows without a per-slice remap (16-bit labels)
U16_MAX = int(np.iinfo(np.uint16).max)


def compact_labels(labels: Any) -> Any:
    """``labels`` as ``uint16`` when it is an in-memory integer array wider than 16 bits whose
    ids all lie in 0..65535 (the same values), else ``labels`` itself (a lazy array, floats,
    already 8/16-bit, or more ids than 16 bits hold)."""
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu" or labels.dtype.itemsize <= 2:
        return labels
    if labels.size == 0:
        return labels.astype(np.uint16)
    import fastremap

    lo, hi = fastremap.minmax(labels)
    if int(lo) < 0 or int(hi) > U16_MAX:
        return labels
    return labels.astype(np.uint16)


def warm_labels_display() -> None:
    """Fill, off the main thread, the caches the first Labels layer of a session builds in it
    (vispy's dash patterns for napari's labels polygon overlay). Harmless when already filled;
    does nothing if vispy lays out its module differently."""
    try:
        from vispy.visuals.line.dash_atlas import DashAtlas
    except ImportError:  # pragma: no cover - another vispy: napari builds it as before
        return
    DashAtlas()  # its patterns come from an lru_cache shared by every later atlas


#: a Labels layer's overlays napari builds vispy visuals for when the layer is added (tens of ms
#: each, in the main thread), and the mode that needs each
LAZY_OVERLAYS = {"polygon": "polygon", "brush_stroke": "paint"}


def hide_painting_overlays(layer: Any) -> Any:
    """Off the main thread, before the insert: hide ``layer``'s painting overlays so that napari
    builds no visual for them until :func:`show_overlays_on_mode` shows one. Returns ``layer``."""
    for key in LAZY_OVERLAYS:
        overlay = getattr(layer, "_overlays", {}).get(key)
        if overlay is not None:
            overlay.visible = False
    return layer


def show_overlays_on_mode(layer: Any) -> None:
    """Main thread, once the layer is in the viewer: show a painting overlay hidden by
    :func:`hide_painting_overlays` when the user picks its mode (napari then builds its visual)."""
    def on_mode(*_: Any) -> None:
        mode = str(layer.mode)
        for key, needs in LAZY_OVERLAYS.items():
            overlay = getattr(layer, "_overlays", {}).get(key)
            if overlay is not None and mode == needs and not overlay.visible:
                overlay.visible = True

    layer.events.mode.connect(on_mode)
    on_mode()  # a mode picked before the insert


def show_labels_layer(viewer: Any, layer: Any, labels: Any) -> Any:
    """Main thread: a dock's result Labels layer ``layer`` (built in the worker) shown in
    ``viewer``. An earlier run's Labels layer of the same name gets ``labels`` and ``layer``'s
    transform instead (one data swap); otherwise ``layer`` is added (napari makes it the active
    layer, as ``add_labels`` did) with its painting overlays made when their mode is picked.
    Returns the layer shown."""
    old = next((ly for ly in viewer.layers if ly.name == layer.name), None)
    if old is not None and old.__class__.__name__ == "Labels":
        old.data = labels
        old.scale, old.translate = layer.scale, layer.translate
        return old
    viewer.layers.append(layer)
    show_overlays_on_mode(layer)
    return layer


@contextmanager
def repaint_after_next_pass(widget: Any, then: Callable[[], None] | None = None, *,
                            canvases: Iterable[Any] | None = None) -> Iterator[None]:
    """Main thread: the canvas (the OpenGL widgets of ``widget``'s window) is not repainted inside
    the block but one event-loop pass later (a 1 ms timer: a 0 ms one is a posted call, handled
    ahead of the timers, so the redraw would follow the block in the same stall), so a layer
    change and its redraw (a 3D redraw under software OpenGL takes a few hundred ms) are two
    stalls with input and timers handled between them. ``then`` runs in a later pass still (a
    1 ms timer started after the release). Holds nothing for a widget outside a viewer's window.
    ``canvases``: the OpenGL widgets to hold, found once by the caller (:func:`window_canvases`;
    searching the window's ~700 widgets takes 4-11 ms), instead of searching at every call."""
    from qtpy.QtCore import QTimer

    held = [w for w in (window_canvases(widget) if canvases is None else canvases) if w.updatesEnabled()]
    for w in held:
        w.setUpdatesEnabled(False)
    try:
        yield
    finally:
        def release() -> None:
            for w in held:
                try:
                    w.setUpdatesEnabled(True)  # repaints
                except RuntimeError:  # the viewer was closed meanwhile
                    pass
            if then is not None:
                QTimer.singleShot(1, then)

        if held:
            QTimer.singleShot(1, release)
        elif then is not None:
            QTimer.singleShot(1, then)


def window_canvases(widget: Any) -> list[Any]:
    """The OpenGL widgets (napari's canvas) of ``widget``'s window."""
    from qtpy.QtOpenGLWidgets import QOpenGLWidget

    return widget.window().findChildren(QOpenGLWidget)


class CanvasCache:
    """The OpenGL widgets of ``widget``'s window, found again only when the widget moved to
    another window or a canvas was deleted (a walk of the window's ~700 widgets takes 4-11 ms:
    not at every action). Holds the window and its canvases weakly: a dock kept alive after
    its viewer closed must not keep the viewer's window (napari's leak check)."""

    def __init__(self, widget: Any) -> None:
        self._widget = widget
        self._found: tuple[Any, list[Any]] | None = None  # weak refs: (window, its OpenGL widgets)

    def get(self) -> list[Any]:
        import weakref

        window = self._widget.window()
        found = self._found
        canvases = None
        if found is not None and found[0]() is window:
            canvases = [ref() for ref in found[1]]
            try:
                if any(w is None or w.window() is not window for w in canvases):
                    canvases = None
            except RuntimeError:  # a canvas was deleted
                canvases = None
        if canvases is None:
            canvases = window_canvases(self._widget)
            self._found = (weakref.ref(window), [weakref.ref(w) for w in canvases])
        return canvases

    def redraw_after(self) -> Any:
        """:func:`repaint_after_next_pass` of the widget, with the cached canvases."""
        return repaint_after_next_pass(self._widget, canvases=self.get())


class StagedDisplay:
    """Main thread: a result's display steps (each one napari insert or data swap) run one per
    event-loop pass, each with the canvas held and repainted in the pass after it
    (:func:`repaint_after_next_pass`), so napari's inserts and the redraws never add up to one
    stall. :meth:`flush` runs the steps still waiting at once (a new run starts, the dock
    closes): nothing of a result is lost, and no step of an old result runs after a new one's."""

    def __init__(self, widget: Any) -> None:
        self._widget = widget
        self._steps: deque[Callable[[], None]] = deque()
        self._chain = 0  # the timers of a flushed chain find a newer number and stop

    @property
    def pending(self) -> bool:
        """Whether steps are still waiting for their pass."""
        return bool(self._steps)

    def start(self, steps: Iterable[Callable[[], None]]) -> None:
        """Run the first step now, each next one in a later pass (earlier steps flushed first)."""
        self.flush()
        self._steps.extend(steps)
        self._next(self._chain)

    def start_later(self, steps: Iterable[Callable[[], None]]) -> None:
        """Like :meth:`start`, the first step too in a later event-loop pass (a 1 ms timer): the
        current pass is neither held nor repainted (a hold around nothing still repaints the
        whole canvas when released: in 3D under software OpenGL a redraw of ~0.6 s for no change)."""
        from qtpy.QtCore import QTimer

        self.flush()
        self._steps.extend(steps)
        chain = self._chain
        QTimer.singleShot(1, lambda: self._next(chain))

    def flush(self) -> None:
        """Run every waiting step now, in order."""
        self._chain += 1
        while self._steps:
            self._steps.popleft()()

    def _next(self, chain: int) -> None:
        if chain != self._chain or not self._steps:
            return
        try:
            self._widget.window()
        except RuntimeError:  # the viewer was closed with the dock: no window to show them in
            self._steps.clear()
            return
        step = self._steps.popleft()
        then = (lambda: self._next(chain)) if self._steps else None
        with repaint_after_next_pass(self._widget, then):
            step()
