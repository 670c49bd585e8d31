"""Label operations of the proofreading controller, each computed by
:mod:`napari_neuroseg.proofread` as a dry run and written by ``controller.apply`` (one undo step).

The operations on the selected label share one body, :func:`edit_selected`, driven by
:data:`SELECTED_OPS`; merge, relabel and locks have their own (they take other inputs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_neuroseg import proofread as pr

if TYPE_CHECKING:  # pragma: no cover
    from .controller import ProofreadController

__all__ = ["SELECTED_OPS", "edit_selected", "grow_index_from_paint", "merge", "merge_at", "relabel", "toggle_lock"]

#: action → (operation of the selected label, the controller attributes it takes as options)
SELECTED_OPS: dict[str, tuple[Callable[..., pr.Edit], tuple[str, ...]]] = {
    "components": (pr.split_connected_components, ()),
    "delete": (pr.delete, ()),
    "fill_holes": (pr.fill_holes, ()),
    "dilate": (pr.dilate, ("radius",)),
    "erode": (pr.erode, ("radius",)),
}


def edit_selected(ctrl: ProofreadController, action: str) -> pr.Edit:
    """Run the operation of ``action`` (:data:`SELECTED_OPS`) on the selected label."""
    op, options = SELECTED_OPS[action]
    ctrl.check_editable()
    label = ctrl.selected()
    opts = {name: getattr(ctrl, name) for name in options}
    edit = op(ctrl.layer.data, label, locked=ctrl.locked, index=ctrl.index, dry_run=True, **opts)
    return ctrl.apply(edit)


def merge(ctrl: ProofreadController, ids: list[int], target: int | None = None) -> pr.Edit:
    ctrl.check_editable()
    edit = pr.merge(ctrl.layer.data, ids, target=target, locked=ctrl.locked, index=ctrl.index, dry_run=True)
    return ctrl.apply(edit)


def merge_at(ctrl: ProofreadController, coord: Any) -> pr.Edit | None:
    """Merge the label at ``coord`` into the selected label (Shift+click)."""
    ctrl.check_editable()
    target = ctrl.selected()
    clicked = ctrl.value_at(coord)
    if clicked == 0 or clicked == target:
        ctrl.status("Shift+click another label to merge it into the selected one")
        return None
    return merge(ctrl, [target, clicked], target=target)


def relabel(ctrl: ProofreadController) -> pr.Edit:
    """Relabel sequentially (locked ids kept), as one undo step of the changed voxels; the
    selected label keeps pointing at the same object."""
    ctrl.check_editable()
    layer = ctrl.layer
    remap = pr.relabel_sequential(layer.data, locked=ctrl.locked, dry_run=True)
    edit = remap.as_voxel_edit(layer.data)
    sel = int(layer.selected_label)
    ctrl.apply(edit)
    table = dict(zip(remap.src.tolist(), remap.dst.tolist()))
    if sel in table:
        layer.selected_label = table[sel]
    if ctrl.index is not None:
        ctrl.rebuild_index()
    return edit


def toggle_lock(ctrl: ProofreadController, label_id: int | None = None) -> bool:
    """Lock (or unlock) a label: proofreading operations never change a locked label."""
    lab = int(label_id) if label_id is not None else ctrl.selected()
    if lab in ctrl.locked:
        ctrl.locked.discard(lab)
    else:
        ctrl.locked.add(lab)
    from .controller import LOCKED_KEY

    ctrl.layer.metadata[LOCKED_KEY] = sorted(ctrl.locked)
    ctrl.nav.locks_changed()
    ctrl.status(f"label {lab} {'locked' if lab in ctrl.locked else 'unlocked'}")
    return lab in ctrl.locked


def grow_index_from_paint(index: pr.LabelIndex, event: Any) -> None:
    """Keep ``index`` a superset after napari's own painting/filling (a ``paint`` event)."""
    for atom in getattr(event, "value", None) or []:
        if hasattr(atom, "slice_key"):
            index.grow(int(atom.new_value), atom.slice_key)
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
            index.grow(int(v), box)
