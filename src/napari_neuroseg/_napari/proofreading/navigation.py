"""Walking a review queue: each item is shown zoomed to its bounding box, centred on a voxel
that lies on the object (a centroid can lie off a thin or curved neuron), with its outline
drawn in a temporary "review: current item" layer in one fixed colour that no label colour
uses (white), and its label selected.

The queue is saved after every step (``<labels>.review.json``) when it has a path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_neuroseg.errors import NeurosegError

if TYPE_CHECKING:  # pragma: no cover
    from .controller import ProofreadController

__all__ = ["HIGHLIGHT_COLOR", "HIGHLIGHT_LAYER", "OutlineLayer", "ReviewNavigator", "frame_box", "item_mask",
           "jump_to_object",
           "on_object_voxel"]

HIGHLIGHT_LAYER = "review: current item"
#: outline colour of the current item: white is not among napari's label colours (saturated hues)
HIGHLIGHT_COLOR = (1.0, 1.0, 1.0, 1.0)
#: the item's bounding box fills at most this fraction of the canvas (the rest shows its neighbours)
ZOOM_FILL = 0.6
#: never zoom closer than this many voxels across the canvas (a 1-voxel object)
MIN_VIEW_VOXELS = 40


def item_mask(item: Any, pred: Any, gt: Any = None) -> np.ndarray | None:
    """The item's voxels inside its bounding box: the prediction's label for a "pred" item; for a
    "gt" item the ground-truth object (``gt`` ZYX labels or an (N, Z, Y, X) FISBe stack), else
    its predictions (``related``); None when neither is at hand."""
    box = tuple(slice(int(lo), int(hi)) for lo, hi in item.bbox)
    if item.source == "pred":
        return np.asarray(pred[box]) == int(item.id)
    if gt is not None:
        if len(gt.shape) == len(box) + 1:
            if not 1 <= int(item.id) <= gt.shape[0]:
                return None
            return np.asarray(gt[(int(item.id) - 1,) + box]) > 0
        return np.asarray(gt[box]) == int(item.id)
    if item.related:
        return np.isin(np.asarray(pred[box]), [int(r) for r in item.related])
    return None


def on_object_voxel(item: Any, mask: np.ndarray | None, scale: Any = None) -> tuple[int, ...]:
    """The voxel of the object nearest to its centroid (physical distance with ``scale``); the
    rounded centroid when the object has no voxel in ``mask``."""
    lo = np.array([int(b[0]) for b in item.bbox])
    centroid = np.asarray(item.centroid, float)
    if mask is None or not mask.any():
        return tuple(int(v) for v in np.round(centroid))
    pts = np.argwhere(mask) + lo
    w = np.ones(len(lo)) if scale is None else np.asarray(scale, float)[-len(lo):]
    d = (((pts - centroid) * w) ** 2).sum(1)
    return tuple(int(v) for v in pts[int(np.argmin(d))])


def frame_box(viewer: Any, layer: Any, bbox: Any, voxel: Any) -> None:
    """Slice through ``voxel`` (data coordinates of ``layer``), centre the camera on it and zoom so
    the box ``bbox`` ([[lo, hi], ...] in voxels) is in view with room around it. For any dock that
    jumps to an object (the review queue here; an error list)."""
    world = np.asarray(layer.data_to_world(np.asarray(voxel, float)))
    dims = viewer.dims
    offset = dims.ndim - len(world)
    shown = [d - offset for d in dims.displayed if d - offset >= 0]
    # the slice: only the axes not displayed (the camera centres the displayed ones). A layer's
    # slice key holds the point of every axis, so setting a displayed axis's point re-sliced
    # every layer (in 3D: every volume uploaded again) without changing what is shown; one call
    # (each set_point re-slices every layer), none when every axis is displayed
    hidden = [ax for ax in range(len(world)) if ax not in shown]
    if hidden:
        dims.set_point([offset + ax for ax in hidden], [float(world[ax]) for ax in hidden])
    camera = viewer.scene.camera
    camera.center = tuple(float(world[a]) for a in shown)
    scale = np.abs(np.asarray(layer.scale, float)[-len(world):])
    lo = np.array([b[0] for b in bbox], float)
    hi = np.array([b[1] for b in bbox], float)
    v = np.asarray(voxel, float)
    half = np.maximum(v - lo + 0.5, hi - 0.5 - v + 0.5)  # the box around the voxel, in voxels
    span = max(float(np.max(2 * half[shown] * scale[shown])), MIN_VIEW_VOXELS * float(scale[shown].min()))
    size = [s for s in viewer.canvas.size if s > 0]
    if size:
        camera.zoom = ZOOM_FILL * float(min(size)) / span


class OutlineLayer:
    """A temporary Labels layer that outlines one object in :data:`HIGHLIGHT_COLOR` (white) in
    2D and veils it in 3D (napari draws no contours there): a small array placed at the object's
    box, its data swapped in place at each :meth:`show` (no new layer per object). Used by the
    review queue and by the Evaluate dock's jump to an error."""

    def __init__(self, viewer: Any, name: str = HIGHLIGHT_LAYER, kind: str = "review"):
        self.viewer = viewer
        self.name = name
        self.kind = kind  # metadata["neuroseg_error_kind"]: no dock offers the layer as a target
        self.layer: Any = None
        self._pending: tuple[Any, ...] | None = None  # show()'s arguments, drawn after a repaint
        self._wanted: Callable[[], bool] = lambda: True
        self._redraw: Callable[[], Any] | None = None

    def show_after_repaint(self, bbox: Any, mask: np.ndarray | None, scale: Any, translate: Any, *,
                           redraw: Callable[[], Any], wanted: Callable[[], bool] = lambda: True) -> None:
        """:meth:`show` after the repaint that the current pass's changes cause (a jump's slice
        change: napari re-slices every layer and uploads their new slices at the repaint), in a
        pass of its own with ``redraw()`` (a context manager: the canvas held and repainted a pass
        later) around it: the jump, its repaint and the outline (two layer changes, each
        re-slicing the outline and recomputing the viewer's extent: 15-35 ms) are three stalls,
        not one. Two 1 ms timers, the second started by the first: it fires after a release of
        the canvas started at the end of the current pass (a 1 ms timer) and after the repaint
        that release posts (posted events come before timers in an event-loop pass). Rapid calls
        (a held key) draw only the last; ``wanted()`` False then (the dock let go) draws none."""
        from qtpy.QtCore import QTimer

        waiting = self._pending is not None
        self._pending = (bbox, mask, scale, translate)
        self._redraw, self._wanted = redraw, wanted
        if not waiting:
            QTimer.singleShot(1, lambda: QTimer.singleShot(1, self.draw_pending))

    @property
    def pending(self) -> bool:
        """Whether an outline still waits for its pass (:meth:`show_after_repaint`)."""
        return self._pending is not None

    def draw_pending(self) -> None:
        """Draw the outline still waiting for its pass, now."""
        pending, self._pending = self._pending, None
        if pending is None or not self._wanted():
            return
        with self._redraw():
            self.show(*pending)

    def show(self, bbox: Any, mask: np.ndarray | None, scale: Any, translate: Any) -> Any:
        """Outline ``mask`` (the object's voxels inside ``bbox``, [[lo, hi], ...]; its whole box
        where they are unknown) of a layer with ``scale`` and ``translate``, now (an outline
        waiting for a later pass is dropped). Returns the layer."""
        self._pending = None
        box = np.array([[int(lo), int(hi)] for lo, hi in bbox])
        shape = tuple(int(v) for v in np.maximum(box[:, 1] - box[:, 0], 1))
        data = np.ones(shape, np.uint8) if mask is None or not mask.any() else mask.astype(np.uint8)
        scale = np.asarray(scale, float)
        translate = np.asarray(translate, float) + box[:, 0] * scale[-len(box):]
        hl = self.layer
        if hl is None or hl not in self.viewer.layers or hl.ndim != data.ndim:
            hl = self.add(data, scale, translate)
        else:  # changed in place: no paint comes between these sets (one event-loop pass). Hiding
            # it meanwhile cost more than it saved: each visibility change makes napari recompute
            # the viewer's extent and reorder the canvas's scene graph (~15 ms a jump, profiled)
            hl.data = data
            if not np.allclose(hl.scale, scale):
                hl.scale = scale
            hl.translate = translate
        # 2D: the outline; 3D (napari draws no contours there): the object veiled in white
        three_d = self.viewer.dims.ndisplay == 3
        if hl.contour != (0 if three_d else 1):  # napari refreshes the layer on every set
            hl.contour = 0 if three_d else 1
        if hl.opacity != (0.5 if three_d else 1.0):
            hl.opacity = 0.5 if three_d else 1.0
        if not hl.visible:
            hl.visible = True
        if hl.editable:  # napari makes a Labels layer editable again when it is shown
            hl.editable = False
        return hl

    def add(self, data: np.ndarray, scale: Any, translate: Any, visible: bool = True) -> Any:
        """Add the outline layer (the active layer stays the active one). Its colormap maps
        every id > 0 to :data:`HIGHLIGHT_COLOR` with 8-bit data shown as it is: a
        ``DirectLabelColormap`` made napari compile numba typed-dict code in the main thread at
        the first jump of a session (3-12 s measured). Its painting overlays never get visuals
        (it is not editable)."""
        from napari.layers import Labels
        from napari.utils.colormaps import CyclicLabelColormap

        from napari_neuroseg._napari._display import hide_painting_overlays
        from napari_neuroseg._napari._layers import ROLE_KEY

        cmap = CyclicLabelColormap(colors=[(0.0, 0.0, 0.0, 0.0), HIGHLIGHT_COLOR], background_value=0)
        hl = Labels(data, name=self.name, colormap=cmap, opacity=1.0, scale=scale, translate=translate,
                    metadata={ROLE_KEY: "scratch", "neuroseg_error_kind": self.kind},
                    blending="translucent_no_depth", visible=visible)
        # the 2D outline (set before the insert: no refresh in the viewer); napari warns of contours in 3D
        hl.contour = 0 if self.viewer.dims.ndisplay == 3 else 1
        hl.editable = False
        hide_painting_overlays(hl)
        active = self.viewer.layers.selection.active
        self.viewer.layers.append(hl)
        if active is not None:
            self.viewer.layers.selection.active = active
        self.layer = hl
        return hl

    def prepare(self, like: Any) -> None:
        """Add the layer hidden (1 voxel, placed like the layer ``like``) unless it exists: the
        insert (0.2-0.4 s) is then not paid by the first jump."""
        if self.layer is not None and self.layer in self.viewer.layers:
            return
        self.add(np.zeros((1,) * like.ndim, np.uint8), like.scale, like.translate, visible=False)

    def hide(self) -> None:
        """Hide the layer (kept for the next :meth:`show`); an outline waiting is dropped."""
        self._pending = None
        if self.layer is not None and self.layer in self.viewer.layers and self.layer.visible:
            self.layer.visible = False

    def clear(self) -> None:
        """Remove the layer (if it is still in the viewer); an outline waiting is dropped."""
        self._pending = None
        hl, self.layer = self.layer, None
        try:
            if hl is not None and hl in self.viewer.layers:
                self.viewer.layers.remove(hl)
        except Exception:  # noqa: BLE001 - the viewer may be closing
            pass


def jump_to_object(viewer: Any, layer: Any, outline: OutlineLayer, bbox: Any, voxel: Any,
                   mask: np.ndarray | None, *, redraw: Callable[[], Any] | None = None,
                   wanted: Callable[[], bool] = lambda: True) -> None:
    """Frame the object (:func:`frame_box`) and outline it with ``outline``. With ``redraw`` (a
    dock: the canvas held, repainted a pass later) in a 2D view, the outline is drawn after the
    jump's repaint (:meth:`OutlineLayer.show_after_repaint`): the jump's slice change, its
    repaint and the outline are three stalls, not one (for that one repaint the previous
    outline is still drawn where it was). In 3D a jump changes no slice (the camera moves) and a
    repaint under software OpenGL takes 0.3-0.7 s, so the outline is drawn with the jump, in
    one repaint. For the review queue's jumps and the Evaluate dock's."""
    later = redraw is not None and viewer.dims.ndisplay == 2
    if not later:
        outline.show(bbox, mask, layer.scale, layer.translate)
    frame_box(viewer, layer, bbox, voxel)
    if later:
        outline.show_after_repaint(bbox, mask, layer.scale, layer.translate, redraw=redraw, wanted=wanted)


class ReviewNavigator:
    """The review queue of one controller and the view of its current item."""

    def __init__(self, controller: ProofreadController):
        self._c = controller
        self.queue: Any = None  # proofread.review.ReviewQueue
        self.path: str | None = None
        self.gt: Any = None  # ground truth the queue was built against (places "gt" items)
        self.outline = OutlineLayer(controller.viewer)

    def set_queue(self, queue: Any, path: str | None = None, *, gt: Any = None) -> None:
        from .controller import LOCKED_KEY

        self.queue, self.path, self.gt = queue, path, gt
        c = self._c
        if queue is not None and getattr(queue, "locked", None):
            c.locked |= {int(i) for i in queue.locked}
            c.layer.metadata[LOCKED_KEY] = sorted(c.locked)

    def locks_changed(self) -> None:
        if self.queue is not None:
            self.queue.locked = sorted(self._c.locked)
            self.autosave()

    def autosave(self) -> None:
        if self.queue is not None and self.path:
            self.queue.save(self.path)

    def _need_queue(self) -> Any:
        if self.queue is None:
            raise NeurosegError("no review queue", fix="build one from the metrics or the checks in the widget")
        return self.queue

    # -- walking ------------------------------------------------------------------------------
    def next(self) -> Any:
        item = self._need_queue().next()
        self.goto(item)
        self.autosave()
        return item

    def previous(self) -> Any:
        item = self._need_queue().previous()
        self.goto(item)
        self.autosave()
        return item

    def mark(self, status: str) -> Any:
        self._need_queue().mark(status)
        self.autosave()
        return self.next()

    # -- showing an item ----------------------------------------------------------------------
    def goto(self, item: Any) -> tuple[int, ...] | None:
        """Show ``item``: the slice and camera centre on a voxel of the object, the zoom fits its
        bounding box, its outline is drawn (with a display widget in 2D, after the jump's
        repaint: :func:`jump_to_object`) and its label selected. Returns that voxel."""
        c = self._c
        if item is None:
            self.clear_highlight()
            c.status("review: no more items")
            return None
        layer = c.layer
        mask = item_mask(item, layer.data, self.gt)
        voxel = on_object_voxel(item, mask, layer.scale)
        jump_to_object(c.viewer, layer, self.outline, item.bbox, voxel, mask,
                       redraw=c.redraw_after if c.display_widget is not None else None,
                       wanted=lambda: c.connected)
        if item.select_id:
            layer.selected_label = int(item.select_id)
        q = self.queue
        c.status(f"review {q.position + 1}/{len(q)}: {q.describe(item)}")
        return voxel

    def prepare_highlight(self) -> None:
        """Add the outline layer hidden, before the first jump: napari's insert of a layer
        (its visual, its controls: 0.2-0.4 s here) is then paid when the queue arrives, not by
        the first Next. Does nothing without a queue, once the dock let go, or when it exists."""
        if self.queue is None or not self._c.connected:
            return
        self.outline.prepare(self._c.layer)

    def clear_highlight(self) -> None:
        """Remove the outline layer (the queue ended, or the dock let go of the layer)."""
        self.outline.clear()
