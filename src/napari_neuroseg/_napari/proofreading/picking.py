"""The mouse: the voxel under a click (in 3D, the first labelled voxel along the view ray),
Shift+click merge and Ctrl+click split seeds, shown in a Points layer, and the seeded split."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_neuroseg import proofread as pr
from napari_neuroseg.errors import NeurosegError

from . import edits

if TYPE_CHECKING:  # pragma: no cover
    from .controller import ProofreadController

__all__ = ["Picker", "event_modifiers"]


def event_modifiers(event: Any) -> set[str]:
    return {str(getattr(m, "name", m)) for m in (getattr(event, "modifiers", ()) or ())}


class Picker:
    """Mouse actions on the controller's layer, and the split seeds they place."""

    def __init__(self, controller: ProofreadController):
        self._c = controller
        self.seeds: list[tuple[int, ...]] = []
        self.seed_label = 0
        self._seed_layer: Any = None

    # -- the layer's mouse callback ----------------------------------------------------------
    def attach(self) -> None:
        callbacks = self._c.layer.mouse_drag_callbacks
        if self.on_click not in callbacks:
            callbacks.append(self.on_click)

    def detach(self) -> None:
        callbacks = self._c.layer.mouse_drag_callbacks
        if self.on_click in callbacks:
            callbacks.remove(self.on_click)

    def on_click(self, layer: Any, event: Any) -> None:
        """Shift+click merges into the selected label; Ctrl+click (Cmd) adds a split seed."""
        mods = event_modifiers(event)
        ctrl = bool(mods & {"Control", "Meta"})
        if not ("Shift" in mods or ctrl) or getattr(event, "type", "mouse_press") != "mouse_press":
            return
        coord = self.event_voxel(event)
        if coord is None:
            return
        if ctrl:
            self._c.run(lambda: self.add_seed(coord))
        else:
            self._c.run(lambda: edits.merge_at(self._c, coord))

    def event_voxel(self, event: Any) -> tuple[int, ...] | None:
        """The data voxel under the mouse: in 3D the first labelled voxel along the view ray."""
        layer = self._c.layer
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
                if self._c.value_at(coord) != 0:
                    return tuple(int(c) for c in coord)
            return None
        coord = np.round(layer.world_to_data(event.position)).astype(int)
        if np.any(coord < 0) or np.any(coord >= shape):
            return None
        return tuple(int(c) for c in coord)

    # -- split seeds ----------------------------------------------------------------------------
    def add_seed(self, coord: Any) -> None:
        """Add a split seed (Ctrl+click). Seeds on another label start a new seed set."""
        coord = tuple(int(c) for c in coord)
        lab = self._c.value_at(coord)
        if lab == 0:
            raise NeurosegError("a split seed must be on a label", fix="Ctrl+click inside the label to split")
        if lab != self.seed_label:
            self.seeds = []
            self.seed_label = lab
        if coord not in self.seeds:
            self.seeds.append(coord)
        self._c.layer.selected_label = lab
        self._show_seeds()
        key = self._c.shortcuts.get("split") or "Split"
        self._c.status(f"{len(self.seeds)} seed(s) on label {lab}; {key} splits")

    def clear_seeds(self) -> None:
        self.seeds, self.seed_label = [], 0
        self._show_seeds()

    def _show_seeds(self) -> None:
        c = self._c
        pts = np.array(self.seeds, dtype=float).reshape(-1, c.layer.ndim)
        if self._seed_layer is None or self._seed_layer not in c.viewer.layers:
            if not len(pts):
                return
            self._add_seed_layer(pts)
        else:
            self._seed_layer.data = pts

    def _add_seed_layer(self, pts: np.ndarray) -> Any:
        """Add the seeds' Points layer, placed like the edited layer (the active layer stays)."""
        from napari.layers import Points

        from napari_neuroseg._napari._layers import ROLE_KEY

        c = self._c
        self._seed_layer = Points(pts, name=f"{c.layer.name} split seeds", size=6, face_color="yellow",
                                  scale=c.layer.scale, translate=c.layer.translate,
                                  metadata={ROLE_KEY: "scratch"})
        active = c.viewer.layers.selection.active
        c.viewer.layers.append(self._seed_layer)
        c.viewer.layers.selection.active = active if active is not None else c.layer
        return self._seed_layer

    def prepare(self) -> None:
        """Add the seeds' layer (empty, or with the seeds placed before) unless it exists, so the
        first Ctrl+click only sets its points: napari's insert of a Points layer (its visuals,
        its controls) and the first draw of its text visual (glyphs rendered on the CPU) took
        0.2-0.5 s in that click. Nothing once the controller let go of its layer."""
        c = self._c
        if not c.connected or c.layer not in c.viewer.layers:
            return
        if self._seed_layer is None or self._seed_layer not in c.viewer.layers:
            self._add_seed_layer(np.array(self.seeds, dtype=float).reshape(-1, c.layer.ndim))

    def remove_layer(self) -> None:
        """Remove the seeds' layer (the controller let go of its layer; the seeds are kept and
        shown again by :meth:`prepare`)."""
        sl, self._seed_layer = self._seed_layer, None
        try:
            if sl is not None and sl in self._c.viewer.layers:
                self._c.viewer.layers.remove(sl)
        except Exception:  # noqa: BLE001 - the viewer may be closing
            pass

    def run_split(self) -> pr.Edit | None:
        """Split the seeded label by a seeded watershed (one region per seed)."""
        c = self._c
        c.check_editable()
        if len(self.seeds) < 2:
            raise NeurosegError("a split needs at least 2 seeds", fix="Ctrl+click 2 or more points inside the label")
        image = None if c.split_method == "distance" or c.image_layer is None else c.image_layer.data
        edit = pr.split(
            c.layer.data, self.seed_label, self.seeds, image=image,
            method=c.split_method if image is not None else "distance",
            locked=c.locked, index=c.index, dry_run=True,
        )
        c.apply(edit)
        c.layer.selected_label = self.seed_label
        self.clear_seeds()
        return edit
