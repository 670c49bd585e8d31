"""Painted regions: a scratch Labels layer the user paints into, then turned into a new label or
taken over by the selected label."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_neuroseg import proofread as pr
from napari_neuroseg.errors import NeurosegError

if TYPE_CHECKING:  # pragma: no cover
    from .controller import ProofreadController

__all__ = ["SCRATCH_SUFFIX", "Painter"]

#: the scratch layer is named "<layer> painted region"
SCRATCH_SUFFIX = "painted region"


class Painter:
    def __init__(self, controller: ProofreadController):
        self._c = controller
        self._scratch: Any = None

    def scratch_layer(self) -> Any:
        """The scratch layer for painted regions (created on first use)."""
        c = self._c
        if self._scratch is None or self._scratch not in c.viewer.layers:
            from napari_neuroseg._napari._layers import ROLE_KEY

            self._scratch = c.viewer.add_labels(
                np.zeros(c.layer.data.shape, np.uint8), name=f"{c.layer.name} {SCRATCH_SUFFIX}",
                scale=c.layer.scale, translate=c.layer.translate, opacity=0.6,
                metadata={ROLE_KEY: "scratch"},
            )
            c.viewer.layers.selection.active = c.layer
        return self._scratch

    def start_painting(self) -> None:
        """Select the scratch layer in paint mode (label 1)."""
        scratch = self.scratch_layer()
        scratch.selected_label = 1
        self._c.viewer.layers.selection.active = scratch
        scratch.mode = "paint"

    def painted(self) -> np.ndarray:
        s = self._scratch
        if s is None or s not in self._c.viewer.layers or not np.any(s.data):
            raise NeurosegError("nothing painted", fix="press 'Paint region', paint over the scratch layer, then apply")
        return np.asarray(s.data) > 0

    def _clear(self) -> None:
        self._scratch.data = np.zeros_like(self._scratch.data)
        self._c.viewer.layers.selection.active = self._c.layer

    def new_label_from_painted(self) -> pr.Edit:
        """The painted region (minus locked labels) becomes a new label, which is selected."""
        c = self._c
        c.check_editable()
        edit = pr.new_label_from_mask(c.layer.data, self.painted(), locked=c.locked, index=c.index, dry_run=True)
        c.apply(edit)
        c.layer.selected_label = edit.info["new_id"]
        self._clear()
        return edit

    def take_over_painted(self) -> pr.Edit:
        """The selected label takes over the painted region from the label most present there."""
        from napari_neuroseg.proofread.edit import tight_bbox

        c = self._c
        c.check_editable()
        target = c.selected()
        region = self.painted()
        box = tight_bbox(region)
        under = np.asarray(c.layer.data[box])[region[box]]
        under = under[(under != target) & ~np.isin(under, list(c.locked))]
        if under.size == 0:
            raise NeurosegError("the painted region holds no other (unlocked) label", fix="paint over the label to take over")
        ids, counts = np.unique(under, return_counts=True)
        source = int(ids[np.argmax(counts)])
        edit = pr.take_over(c.layer.data, region[box], source, target, bbox=box, locked=c.locked, index=c.index, dry_run=True)
        c.apply(edit)
        self._clear()
        return edit
