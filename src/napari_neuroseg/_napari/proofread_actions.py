"""Proofreading bound to a napari Labels layer: mouse + keyboard actions, through napari's undo.

:class:`ProofreadController` holds no Qt widgets (the dock widget in ``proofread_widget.py``
only calls it), so tests drive it directly in a real viewer. Every edit is computed by
:mod:`napari_neuroseg.proofread` (``dry_run=True``) and written with
``layer.data_setitem(changed voxels, values)`` inside ``layer.block_history()``: one Ctrl+Z /
Ctrl+Shift+Z step per action, holding only the changed voxels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_neuroseg import proofread as pr
from napari_neuroseg.errors import NeurosegError

if TYPE_CHECKING:  # pragma: no cover
    import napari

#: Action → default key (napari key syntax). Mouse: Shift+click merges the clicked label into the
#: selected one, Ctrl+click (Cmd on macOS) adds a split seed.
DEFAULT_SHORTCUTS: dict[str, str] = {
    "split": "Shift+S",
    "clear_seeds": "Shift+X",
    "components": "Shift+C",
    "delete": "Delete",
    "fill_holes": "Shift+F",
    "dilate": "Shift+D",
    "erode": "Shift+E",
    "relabel": "Shift+R",
    "new_label": "Shift+G",
    "take_over": "Shift+T",
    "lock": "Shift+K",
    "review_next": "N",
    "review_previous": "Shift+N",
    "review_fixed": "Shift+M",
    "review_ignore": "Shift+I",
}

ACTION_TITLES: dict[str, str] = {
    "merge": "Merge clicked label into selected",
    "seed": "Add split seed",
    "split": "Split at seeds",
    "clear_seeds": "Clear split seeds",
    "components": "Split into connected components",
    "delete": "Delete selected label",
    "fill_holes": "Fill holes",
    "dilate": "Dilate selected label",
    "erode": "Erode selected label",
    "relabel": "Relabel sequentially",
    "new_label": "Painted region → new label",
    "take_over": "Painted region → selected label",
    "lock": "Lock / unlock selected label",
    "review_next": "Review: next item",
    "review_previous": "Review: previous item",
    "review_fixed": "Review: mark fixed (and go next)",
    "review_ignore": "Review: mark ignored (and go next)",
}

LOCKED_KEY = "proofread_locked"


class GroundTruthDeclined(NeurosegError):
    """An edit of a ground-truth layer that the user (or a missing confirmation) declined."""
INDEX_SYNC_VOXELS = 64 * 2**20  # larger layers are indexed in a worker thread


class ProofreadController:
    """Proofreading actions for one Labels layer (see :data:`DEFAULT_SHORTCUTS`)."""

    def __init__(
        self,
        viewer: "napari.Viewer",
        layer: "napari.layers.Labels",
        *,
        shortcuts: dict[str, str] | None = None,
        status: Callable[[str], None] | None = None,
        confirm_ground_truth: Callable[[Any], bool] | None = None,
    ):
        self.viewer = viewer
        self.layer = layer
        self.shortcuts = {**DEFAULT_SHORTCUTS, **(shortcuts or {})}
        self.locked: set[int] = {int(i) for i in layer.metadata.get(LOCKED_KEY, [])}
        self.seeds: list[tuple[int, ...]] = []
        self.seed_label = 0
        self.split_method = "distance"
        self.image_layer: Any = None  # an Image layer for method "intensity"/"boundary"
        self.radius = 1
        self.index: pr.LabelIndex | None = None
        self.review: Any = None  # proofread.review.ReviewQueue
        self.review_path: str | None = None
        self.last_edit: pr.Edit | None = None
        self._status = status
        #: asked before an edit of a ground-truth layer (True = go ahead); None refuses such edits
        self.confirm_ground_truth = confirm_ground_truth
        self.connected = False
        self._bound: dict[str, str] = {}
        self._seed_layer: Any = None
        self._scratch: Any = None
        self._index_worker: Any = None
        self._wrap_zarr()
        self.connect()
        import skimage.segmentation  # noqa: F401  (imported now, not on the first split)

    # -- set-up ------------------------------------------------------------------------------
    def _wrap_zarr(self) -> None:
        """A zarr-backed layer is edited through ChunkedLabels (per chunk, saved atomically)."""
        try:
            import zarr
        except ImportError:  # pragma: no cover
            return
        if isinstance(self.layer.data, zarr.Array):
            from napari_neuroseg.proofread.chunked import ChunkedLabels

            self.layer.data = ChunkedLabels(self.layer.data)

    @property
    def editable(self) -> bool:
        data = self.layer.data
        return isinstance(data, np.ndarray) or hasattr(data, "save") and hasattr(data, "dirty_chunks")

    def connect(self) -> None:
        """Bind the mouse actions and keys to the layer and follow its edits."""
        if self.connected:
            return
        self.connected = True
        if self._on_click not in self.layer.mouse_drag_callbacks:
            self.layer.mouse_drag_callbacks.append(self._on_click)
        self.layer.events.paint.connect(self._on_paint)
        self.layer.events.data.connect(self._on_data)
        for action, key in self.shortcuts.items():
            self.bind(action, key)
        self.rebuild_index()

    def disconnect(self) -> None:
        """Undo :meth:`connect` (the dock was hidden or closed); ``connect`` binds again."""
        if not self.connected:
            return
        self.connected = False
        if self._on_click in self.layer.mouse_drag_callbacks:
            self.layer.mouse_drag_callbacks.remove(self._on_click)
        self.layer.events.paint.disconnect(self._on_paint)
        self.layer.events.data.disconnect(self._on_data)
        for action in list(self._bound):
            self.unbind(action)
        if self._index_worker is not None:
            self._index_worker.quit()
            self._index_worker = None

    def bind(self, action: str, key: str | None) -> None:
        """(Re)bind ``action`` to ``key`` on the layer (None/"" unbinds)."""
        if action not in DEFAULT_SHORTCUTS:
            raise NeurosegError(f"unknown proofreading action {action!r}", fix=f"use one of {sorted(DEFAULT_SHORTCUTS)}")
        self.unbind(action)
        if key:
            func = self.action(action)

            def _handler(layer: Any, _f: Callable = func) -> None:
                self._guarded(_f)

            _handler.__name__ = f"proofread_{action}"
            if self.connected:
                self.layer.bind_key(key, _handler, overwrite=True)
                self._bound[action] = key
        self.shortcuts[action] = key or ""

    def unbind(self, action: str) -> None:
        key = self._bound.pop(action, None)
        if key:
            self.layer.bind_key(key, None, overwrite=True)

    def action(self, name: str) -> Callable[[], Any]:
        """The bound function of an action (what its key runs)."""
        return {
            "split": self.run_split,
            "clear_seeds": self.clear_seeds,
            "components": self.split_components,
            "delete": self.delete_selected,
            "fill_holes": self.fill_holes,
            "dilate": self.dilate,
            "erode": self.erode,
            "relabel": self.relabel,
            "new_label": self.new_label_from_painted,
            "take_over": self.take_over_painted,
            "lock": self.toggle_lock,
            "review_next": self.review_next,
            "review_previous": self.review_previous,
            "review_fixed": lambda: self.review_mark("fixed"),
            "review_ignore": lambda: self.review_mark("ignored"),
        }[name]

    # -- messages, errors -------------------------------------------------------------------
    def status(self, msg: str) -> None:
        if self._status is not None:
            self._status(msg)
        try:
            self.viewer.status = msg
        except Exception:  # noqa: BLE001 - status is cosmetic
            pass

    def _guarded(self, func: Callable[[], Any]) -> Any:
        try:
            return func()
        except GroundTruthDeclined as err:  # the user said no: not an error
            self.status(str(err))
            return None
        except NeurosegError as err:
            from napari_neuroseg._napari._notify import notify_error

            notify_error(err)
            self.status(str(err))
            return None

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
        if self.index is None:
            return
        for atom in getattr(event, "value", None) or []:
            if hasattr(atom, "slice_key"):
                self.index.grow(int(atom.new_value), atom.slice_key)
                continue
            try:
                indices, _old, new = atom
            except (TypeError, ValueError):
                continue
            idx = [np.asarray(i).reshape(-1) for i in indices] if isinstance(indices, tuple) else None
            if not idx or idx[0].size == 0:
                continue
            box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
            for v in np.unique(np.asarray(new)):
                self.index.grow(int(v), box)

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

    def _check_editable(self) -> None:
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

    def _selected(self) -> int:
        sel = int(self.layer.selected_label)
        if sel == 0:
            raise NeurosegError("no label selected", fix="pick a label (L, then click) or click a review item")
        return sel

    def value_at(self, coord: Any) -> int:
        coord = tuple(int(c) for c in coord)
        return int(np.asarray(self.layer.data[coord]))

    # -- mouse ----------------------------------------------------------------------------------
    def event_voxel(self, event: Any) -> tuple[int, ...] | None:
        """The data voxel under the mouse: in 3D the first labelled voxel along the view ray."""
        layer = self.layer
        shape = np.array(layer.data.shape)
        dims = tuple(getattr(event, "dims_displayed", ()) or ())
        view_dir = getattr(event, "view_direction", None)
        if len(dims) == 3 and view_dir is not None:
            start, end = layer.get_ray_intersections(event.position, view_dir, list(dims), world=True)
            if start is None or end is None:
                return None
            n = int(np.ceil(np.linalg.norm(np.asarray(end) - np.asarray(start)) * 2)) + 1
            pts = np.round(np.linspace(start, end, n)).astype(int)
            pts = pts[np.all((pts >= 0) & (pts < shape[list(dims)]), axis=1)]
            for p in pts:
                coord = np.round(layer.world_to_data(event.position)).astype(int)
                coord[list(dims)] = p
                if self.value_at(coord) != 0:
                    return tuple(int(c) for c in coord)
            return None
        coord = np.round(layer.world_to_data(event.position)).astype(int)
        if np.any(coord < 0) or np.any(coord >= shape):
            return None
        return tuple(int(c) for c in coord)

    def _on_click(self, layer: Any, event: Any) -> None:
        mods = {str(getattr(m, "name", m)) for m in (getattr(event, "modifiers", ()) or ())}
        ctrl = bool(mods & {"Control", "Meta"})
        if not ("Shift" in mods or ctrl) or getattr(event, "type", "mouse_press") != "mouse_press":
            return
        coord = self.event_voxel(event)
        if coord is None:
            return
        if ctrl:
            self._guarded(lambda: self.add_seed(coord))
        else:
            self._guarded(lambda: self.merge_at(coord))

    # -- actions --------------------------------------------------------------------------------
    def merge_at(self, coord: Any) -> pr.Edit | None:
        """Merge the label at ``coord`` into the selected label (Shift+click)."""
        self._check_editable()
        target = self._selected()
        clicked = self.value_at(coord)
        if clicked == 0 or clicked == target:
            self.status("Shift+click another label to merge it into the selected one")
            return None
        return self.merge([target, clicked], target=target)

    def merge(self, ids: list[int], target: int | None = None) -> pr.Edit:
        self._check_editable()
        edit = pr.merge(self.layer.data, ids, target=target, locked=self.locked, index=self.index, dry_run=True)
        return self.apply(edit)

    def add_seed(self, coord: Any) -> None:
        """Add a split seed (Ctrl+click). Seeds on another label start a new seed set."""
        coord = tuple(int(c) for c in coord)
        lab = self.value_at(coord)
        if lab == 0:
            raise NeurosegError("a split seed must be on a label", fix="Ctrl+click inside the label to split")
        if lab != self.seed_label:
            self.seeds = []
            self.seed_label = lab
        if coord not in self.seeds:
            self.seeds.append(coord)
        self.layer.selected_label = lab
        self._show_seeds()
        self.status(f"{len(self.seeds)} seed(s) on label {lab}; {self.shortcuts.get('split') or 'Split'} splits")

    def clear_seeds(self) -> None:
        self.seeds, self.seed_label = [], 0
        self._show_seeds()

    def _show_seeds(self) -> None:
        pts = np.array(self.seeds, dtype=float).reshape(-1, self.layer.ndim)
        if self._seed_layer is None or self._seed_layer not in self.viewer.layers:
            if not len(pts):
                return
            self._seed_layer = self.viewer.add_points(
                pts, name=f"{self.layer.name} split seeds", size=6, face_color="yellow",
                scale=self.layer.scale, translate=self.layer.translate,
            )
            self.viewer.layers.selection.active = self.layer
        else:
            self._seed_layer.data = pts

    def _image(self) -> Any:
        if self.split_method == "distance" or self.image_layer is None:
            return None
        return self.image_layer.data

    def run_split(self) -> pr.Edit | None:
        """Split the seeded label by a seeded watershed (one region per seed)."""
        self._check_editable()
        if len(self.seeds) < 2:
            raise NeurosegError("a split needs at least 2 seeds", fix="Ctrl+click 2 or more points inside the label")
        method = self.split_method if self._image() is not None else "distance"
        edit = pr.split(
            self.layer.data, self.seed_label, self.seeds, image=self._image(), method=method,
            locked=self.locked, index=self.index, dry_run=True,
        )
        self.apply(edit)
        self.layer.selected_label = self.seed_label
        self.clear_seeds()
        return edit

    def split_components(self) -> pr.Edit:
        self._check_editable()
        edit = pr.split_connected_components(self.layer.data, self._selected(), locked=self.locked, index=self.index, dry_run=True)
        return self.apply(edit)

    def delete_selected(self) -> pr.Edit:
        self._check_editable()
        return self.apply(pr.delete(self.layer.data, self._selected(), locked=self.locked, index=self.index, dry_run=True))

    def fill_holes(self) -> pr.Edit:
        self._check_editable()
        return self.apply(pr.fill_holes(self.layer.data, self._selected(), locked=self.locked, index=self.index, dry_run=True))

    def dilate(self) -> pr.Edit:
        self._check_editable()
        return self.apply(
            pr.dilate(self.layer.data, self._selected(), radius=self.radius, locked=self.locked, index=self.index, dry_run=True)
        )

    def erode(self) -> pr.Edit:
        self._check_editable()
        return self.apply(
            pr.erode(self.layer.data, self._selected(), radius=self.radius, locked=self.locked, index=self.index, dry_run=True)
        )

    def relabel(self) -> pr.Edit:
        """Relabel sequentially (locked ids kept), as one undo step of the changed voxels."""
        self._check_editable()
        remap = pr.relabel_sequential(self.layer.data, locked=self.locked, dry_run=True)
        edit = remap.as_voxel_edit(self.layer.data)
        sel = int(self.layer.selected_label)
        self.apply(edit)
        table = dict(zip(remap.src.tolist(), remap.dst.tolist()))
        if sel in table:
            self.layer.selected_label = table[sel]
        if self.index is not None:
            self.rebuild_index()
        return edit

    # painted regions: a scratch Labels layer the user paints into
    def scratch_layer(self) -> Any:
        """The scratch layer for painted regions (created on first use, then selected in paint mode)."""
        if self._scratch is None or self._scratch not in self.viewer.layers:
            self._scratch = self.viewer.add_labels(
                np.zeros(self.layer.data.shape, np.uint8), name=f"{self.layer.name} painted region",
                scale=self.layer.scale, translate=self.layer.translate, opacity=0.6,
            )
            self.viewer.layers.selection.active = self.layer
        return self._scratch

    def start_painting(self) -> None:
        scratch = self.scratch_layer()
        scratch.selected_label = 1
        self.viewer.layers.selection.active = scratch
        scratch.mode = "paint"

    def _painted(self) -> np.ndarray:
        if self._scratch is None or self._scratch not in self.viewer.layers or not np.any(self._scratch.data):
            raise NeurosegError("nothing painted", fix="press 'Paint region', paint over the scratch layer, then apply")
        return np.asarray(self._scratch.data) > 0

    def _clear_scratch(self) -> None:
        self._scratch.data = np.zeros_like(self._scratch.data)
        self.viewer.layers.selection.active = self.layer

    def new_label_from_painted(self) -> pr.Edit:
        """The painted region (minus locked labels) becomes a new label, which is selected."""
        self._check_editable()
        edit = pr.new_label_from_mask(self.layer.data, self._painted(), locked=self.locked, index=self.index, dry_run=True)
        self.apply(edit)
        self.layer.selected_label = edit.info["new_id"]
        self._clear_scratch()
        return edit

    def take_over_painted(self) -> pr.Edit:
        """The selected label takes over the painted region from the label most present there."""
        self._check_editable()
        target = self._selected()
        region = self._painted()
        from napari_neuroseg.proofread.edit import tight_bbox

        box = tight_bbox(region)
        under = np.asarray(self.layer.data[box])[region[box]]
        under = under[(under != target) & ~np.isin(under, list(self.locked))]
        if under.size == 0:
            raise NeurosegError("the painted region holds no other (unlocked) label", fix="paint over the label to take over")
        ids, counts = np.unique(under, return_counts=True)
        source = int(ids[np.argmax(counts)])
        edit = pr.take_over(self.layer.data, region[box], source, target, bbox=box, locked=self.locked, index=self.index, dry_run=True)
        self.apply(edit)
        self._clear_scratch()
        return edit

    def toggle_lock(self, label_id: int | None = None) -> bool:
        """Lock (or unlock) a label: proofreading operations never change a locked label."""
        lab = int(label_id) if label_id is not None else self._selected()
        if lab in self.locked:
            self.locked.discard(lab)
        else:
            self.locked.add(lab)
        self.layer.metadata[LOCKED_KEY] = sorted(self.locked)
        if self.review is not None:
            self.review.locked = sorted(self.locked)
            self._autosave_review()
        self.status(f"label {lab} {'locked' if lab in self.locked else 'unlocked'}")
        return lab in self.locked

    # -- saving ---------------------------------------------------------------------------------
    def save(self, path: str | None = None) -> str:
        """Save the edits: chunk by chunk into a zarr-backed layer's store, or the FISBe layout
        (gt_instances rebuilt from the edited labels) for a layer read from a FISBe sample."""
        from napari_neuroseg._napari._layers import FISBE_DIM_NEURONS, FISBE_INSTANCES

        data = self.layer.data
        if hasattr(data, "save") and hasattr(data, "dirty_chunks"):
            n = data.save()
            msg = f"saved {n} edited chunk(s)"
        elif self.layer.metadata.get(FISBE_INSTANCES) is not None:
            from napari_neuroseg.proofread.fisbe import save_fisbe_edits

            target = path or getattr(self.layer.source, "path", None)
            if not target:
                raise NeurosegError("the layer has no FISBe file to save into", fix="use File > Save Selected Layer(s)")
            save_fisbe_edits(
                target, data, self.layer.metadata[FISBE_INSTANCES],
                dim_neurons=self.layer.metadata.get(FISBE_DIM_NEURONS),
            )
            msg = f"saved FISBe layout to {target}"
        else:
            raise NeurosegError(
                "this layer lives in memory only",
                fix="save it with File > Save Selected Layer(s) (TIFF, OME-Zarr or FISBe)",
            )
        self.status(msg)
        return msg

    # -- review queue ---------------------------------------------------------------------------
    def set_review(self, queue: Any, path: str | None = None) -> None:
        self.review = queue
        self.review_path = path
        if queue is not None and getattr(queue, "locked", None):
            self.locked |= {int(i) for i in queue.locked}
            self.layer.metadata[LOCKED_KEY] = sorted(self.locked)

    def _autosave_review(self) -> None:
        if self.review is not None and self.review_path:
            self.review.save(self.review_path)

    def goto(self, item: Any) -> None:
        """Centre the camera on a review item and select its label."""
        if item is None:
            self.status("review: no more items")
            return
        world = np.asarray(self.layer.data_to_world(np.asarray(item.centroid, float)))
        dims = self.viewer.dims
        for ax in range(len(world)):
            dims.set_point(dims.ndim - len(world) + ax, float(world[ax]))
        disp = list(dims.displayed)
        offset = dims.ndim - len(world)
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9
        camera = scene.camera if scene is not None and hasattr(scene, "camera") else self.viewer.camera
        camera.center = tuple(float(world[d - offset]) for d in disp if d - offset >= 0)
        if item.select_id:
            self.layer.selected_label = int(item.select_id)
        self.status(f"review {self.review.position + 1}/{len(self.review)}: {item.describe()}")

    def _need_review(self) -> Any:
        if self.review is None:
            raise NeurosegError("no review queue", fix="build one from the metrics or the checks in the widget")
        return self.review

    def review_next(self) -> Any:
        item = self._need_review().next()
        self.goto(item)
        self._autosave_review()
        return item

    def review_previous(self) -> Any:
        item = self._need_review().previous()
        self.goto(item)
        self._autosave_review()
        return item

    def review_mark(self, status: str) -> Any:
        q = self._need_review()
        q.mark(status)
        self._autosave_review()
        return self.review_next()
