"""The proofreading controller: one Labels layer, its state, and the one way an action runs.

:class:`ProofreadController` holds no Qt widgets (the dock in ``proofread_widget.py`` only calls
it), so tests drive it in a real viewer. It owns what every part shares — the layer, the locked
ids, the label index, :meth:`~ProofreadController.apply` (one undo step per edit) and
:meth:`~ProofreadController.run` (every key, click and button goes through it: a
:class:`~napari_neuroseg.errors.NeurosegError` becomes a notification and a status line) — and
delegates the rest:

- :mod:`.bindings` — the keys (:class:`~.bindings.KeyBindings`);
- :mod:`.picking` — the mouse: Shift+click merge, Ctrl+click split seeds (:class:`~.picking.Picker`);
- :mod:`.edits` — the label operations on the selected label (delete, fill, dilate, …);
- :mod:`.painting` — the scratch layer for painted regions (:class:`~.painting.Painter`);
- :mod:`.navigation` — walking a review queue: zoom to the item, highlight it
  (:class:`~.navigation.ReviewNavigator`);
- :mod:`.saving` — writing the edited labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_neuroseg import proofread as pr
from napari_neuroseg.errors import NeurosegError

from . import edits
from .bindings import DEFAULT_SHORTCUTS, KeyBindings
from .navigation import ReviewNavigator
from .painting import Painter
from .picking import Picker

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["INDEX_SYNC_VOXELS", "LOCKED_KEY", "GroundTruthDeclined", "ProofreadController"]

LOCKED_KEY = "proofread_locked"
INDEX_SYNC_VOXELS = 64 * 2**20  # larger layers are indexed in a worker thread


class GroundTruthDeclined(NeurosegError):
    """An edit of a ground-truth layer that the user (or a missing confirmation) declined."""


class ProofreadController:
    """Proofreading actions for one Labels layer (see :data:`~.bindings.DEFAULT_SHORTCUTS`)."""

    def __init__(
        self,
        viewer: napari.Viewer,
        layer: napari.layers.Labels,
        *,
        shortcuts: dict[str, str] | None = None,
        status: Callable[[str], None] | None = None,
        confirm_ground_truth: Callable[[Any], bool] | None = None,
        display_widget: Any = None,
    ):
        self.viewer = viewer
        #: a Qt widget in the viewer's window (the dock): each action's canvas redraw comes one
        #: event-loop pass after the action (``_display.repaint_after_next_pass``); None: at once
        self.display_widget = display_widget
        self._canvases: Any = None  # _display.CanvasCache of the display widget's window
        if display_widget is not None:
            from napari_neuroseg._napari._display import CanvasCache

            self._canvases = CanvasCache(display_widget)
        self.layer = layer
        self.locked: set[int] = {int(i) for i in layer.metadata.get(LOCKED_KEY, [])}
        self.split_method = "distance"
        self.image_layer: Any = None  # an Image layer for method "intensity"/"boundary"
        self.radius = 1
        self.index: pr.LabelIndex | None = None
        self.last_edit: pr.Edit | None = None
        self._status = status
        #: asked before an edit of a ground-truth layer (True = go ahead); None refuses such edits
        self.confirm_ground_truth = confirm_ground_truth
        self.connected = False
        self._index_worker: Any = None
        self.keys = KeyBindings(self, shortcuts)
        self.picker = Picker(self)
        self.painter = Painter(self)
        self.nav = ReviewNavigator(self)
        self._wrap_zarr()
        self.connect()
        from napari_neuroseg._napari._workers import run_in_background
        from napari_neuroseg.proofread.ops import import_libraries

        # the operations' libraries, loaded off the main thread (not by the first split or fill)
        run_in_background(import_libraries, "neuroseg-preload-proofread")

    # -- set-up ------------------------------------------------------------------------------
    def _wrap_zarr(self) -> None:
        """A zarr-backed layer is edited through ChunkedLabels (per chunk, saved atomically)."""
        from napari_neuroseg.io.zarr_io import is_zarr_array

        if is_zarr_array(self.layer.data):
            from napari_neuroseg.proofread.chunked import ChunkedLabels

            self.layer.data = ChunkedLabels(self.layer.data)

    @property
    def shortcuts(self) -> dict[str, str]:
        return self.keys.shortcuts

    @property
    def chunked(self) -> bool:
        """Whether the layer is a zarr store edited chunk by chunk (saved in place)."""
        data = self.layer.data
        return hasattr(data, "save") and hasattr(data, "dirty_chunks")

    @property
    def editable(self) -> bool:
        return isinstance(self.layer.data, np.ndarray) or self.chunked

    def connect(self) -> None:
        """Bind the mouse actions and keys to the layer and follow its edits."""
        if self.connected:
            return
        self.connected = True
        self.picker.attach()
        self.layer.events.paint.connect(self._on_paint)
        self.layer.events.data.connect(self._on_data)
        self.keys.bind_all()
        self.rebuild_index()
        if self.display_widget is not None:
            # the split seeds' layer is added in an event-loop pass of its own, its first draw in
            # the pass after (not by the first Ctrl+click)
            from napari_neuroseg._napari._display import StagedDisplay

            def prepare() -> None:
                self.picker.prepare()
                self._canvases.get()  # found now, not in the first action (a walk of the window)

            StagedDisplay(self.display_widget).start_later([prepare])

    def disconnect(self) -> None:
        """Undo :meth:`connect` (the dock was hidden or closed); ``connect`` binds again."""
        if not self.connected:
            return
        self.connected = False
        self.picker.detach()
        self.layer.events.paint.disconnect(self._on_paint)
        self.layer.events.data.disconnect(self._on_data)
        self.keys.unbind_all()
        self.nav.clear_highlight()
        self.picker.remove_layer()
        if self._index_worker is not None:
            self._index_worker.quit()
            self._index_worker = None

    def bind(self, action: str, key: str | None) -> None:
        """(Re)bind ``action`` to ``key`` on the layer (None/"" unbinds)."""
        self.keys.bind(action, key)

    # -- the one way an action runs ----------------------------------------------------------
    def action(self, name: str) -> Callable[[], Any]:
        """The function of an action (what its key and button run)."""
        table: dict[str, Callable[[], Any]] = {
            "split": self.picker.run_split,
            "clear_seeds": self.picker.clear_seeds,
            "relabel": lambda: edits.relabel(self),
            "new_label": self.painter.new_label_from_painted,
            "take_over": self.painter.take_over_painted,
            "lock": lambda: edits.toggle_lock(self),
            "review_next": self.nav.next,
            "review_previous": self.nav.previous,
            "review_fixed": lambda: self.nav.mark("fixed"),
            "review_ignore": lambda: self.nav.mark("ignored"),
        }
        if name in edits.SELECTED_OPS:
            return lambda: edits.edit_selected(self, name)
        if name not in table:
            raise NeurosegError(f"unknown proofreading action {name!r}", fix=f"use one of {sorted(DEFAULT_SHORTCUTS)}")
        return table[name]

    def run(self, action: str | Callable[[], Any]) -> Any:
        """Run an action (its name, or any callable) as a user action: a declined ground-truth
        edit is a status line, any other :class:`NeurosegError` a notification and a status
        line; returns the action's result, or None when it failed. With a ``display_widget``
        the canvas is redrawn one event-loop pass after the action, not inside it (a key or
        click's work and the redraw it causes are two stalls, not one)."""
        try:
            func = self.action(action) if isinstance(action, str) else action
            with self.redraw_after():
                return func()
        except GroundTruthDeclined as err:  # the user said no: not an error
            self.status(str(err))
            return None
        except NeurosegError as err:
            from napari_neuroseg._napari._notify import notify_error

            notify_error(err)
            self.status(str(err))
            return None

    def redraw_after(self) -> Any:
        """The canvas held during an action and redrawn in the next pass (with a display widget);
        the canvas widgets are found once per window the dock is in (not at every action)."""
        if self._canvases is None:
            from contextlib import nullcontext

            return nullcontext()
        return self._canvases.redraw_after()

    def status(self, msg: str) -> None:
        if self._status is not None:
            self._status(msg)
        try:
            self.viewer.status = msg
        except Exception:  # noqa: BLE001 - status is cosmetic
            pass

    # -- index --------------------------------------------------------------------------------
    def rebuild_index(self) -> None:
        data = self.layer.data
        self.index = None
        if not hasattr(data, "shape") or int(np.prod(data.shape)) <= INDEX_SYNC_VOXELS:
            self.index = pr.LabelIndex.build(data)
            return
        from napari_neuroseg._napari._workers import start_worker

        def _done(index: pr.LabelIndex) -> None:
            if self.layer.data is data:
                self.index = index
                self.status(f"proofreading index ready: {len(index)} labels")

        self._index_worker = start_worker(pr.LabelIndex.build_iter, data, on_return=_done, desc="indexing labels")

    def _on_data(self, event: Any = None) -> None:
        self.rebuild_index()

    def _on_paint(self, event: Any) -> None:
        """Keep the index a superset after napari's own painting/filling."""
        if self.index is not None:
            edits.grow_index_from_paint(self.index, event)

    # -- applying edits -----------------------------------------------------------------------
    def apply(self, edit: pr.Edit) -> pr.Edit:
        """Write a dry-run edit through the layer's history (one undo step)."""
        if edit.empty:
            self.status(f"{edit.kind}: nothing to change")
            return edit
        coords, values = edit.coords_values()
        values = values.astype(self.layer.data.dtype, copy=False)
        value: Any = values[0] if values.size and (values == values[0]).all() else values
        with self.layer.block_history():
            self.layer.data_setitem(coords, value)
        if self.index is not None:
            self.index.update(edit, forward=True)
        self.last_edit = edit
        self.status(f"{edit.kind}: {edit.n_changed} voxels changed (Ctrl+Z undoes)")
        return edit

    def check_editable(self) -> None:
        """Refuse an edit of a ground-truth layer the user did not confirm, or of a lazy layer."""
        self._check_ground_truth()
        if not self.editable:
            raise NeurosegError(
                f"layer {self.layer.name!r} is lazy ({type(self.layer.data).__name__}) and cannot be edited",
                fix="load it into memory (widget: 'Load into memory') or open its .zarr for chunked editing",
            )

    def _check_ground_truth(self) -> None:
        """A ground-truth layer is edited only after ``confirm_ground_truth`` said yes."""
        from napari_neuroseg._napari._layers import is_ground_truth

        if not is_ground_truth(self.layer):
            return
        ask = self.confirm_ground_truth
        if ask is None or not ask(self.layer):
            raise GroundTruthDeclined(
                f"layer {self.layer.name!r} is ground truth: not edited",
                fix="select the result layer to edit, or confirm the edit of the ground truth",
            )

    def selected(self) -> int:
        """The selected label (refused when it is background)."""
        sel = int(self.layer.selected_label)
        if sel == 0:
            raise NeurosegError("no label selected", fix="pick a label (L, then click) or click a review item")
        return sel

    def value_at(self, coord: Any) -> int:
        coord = tuple(int(c) for c in coord)
        return int(np.asarray(self.layer.data[coord]))

    # -- review queue and saving (see navigation.py, saving.py) ------------------------------
    @property
    def review(self) -> Any:
        """The review queue being walked (``proofread.review.ReviewQueue``), or None."""
        return self.nav.queue

    def set_review(self, queue: Any, path: str | None = None, *, gt: Any = None) -> None:
        self.nav.set_queue(queue, path, gt=gt)

    def save(self, path: str | None = None) -> str:
        """Save the edits in place (a zarr store's chunks, a FISBe file's layout), or to ``path``
        through the plugin's writers; see :func:`.saving.save_layer`."""
        from .saving import save_layer

        msg = save_layer(self, path)
        self.status(msg)
        return msg
