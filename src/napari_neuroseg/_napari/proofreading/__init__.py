"""Proofreading bound to a napari Labels layer: mouse and keyboard actions, through napari's undo.

Every edit is computed by :mod:`napari_neuroseg.proofread` (``dry_run=True``) and written with
``layer.data_setitem(changed voxels, values)`` inside ``layer.block_history()``: one Ctrl+Z /
Ctrl+Shift+Z step per action, holding only the changed voxels.

:class:`ProofreadController` (``controller.py``) is the small core every part goes through; the
parts are ``bindings`` (keys), ``picking`` (mouse, split seeds), ``edits`` (label operations),
``painting`` (scratch layer), ``navigation`` (review queue: zoom and highlight) and ``saving``.
No Qt widget lives here: the dock is ``napari_neuroseg._napari.proofread_widget``.
"""

from .bindings import ACTION_TITLES, DEFAULT_SHORTCUTS, KEY_HANDLER_PREFIX
from .controller import (
    INDEX_SYNC_VOXELS,
    LOCKED_KEY,
    GroundTruthDeclined,
    ProofreadController,
)
from .navigation import HIGHLIGHT_LAYER
from .painting import SCRATCH_SUFFIX

__all__ = [
    "ACTION_TITLES",
    "DEFAULT_SHORTCUTS",
    "HIGHLIGHT_LAYER",
    "INDEX_SYNC_VOXELS",
    "KEY_HANDLER_PREFIX",
    "LOCKED_KEY",
    "SCRATCH_SUFFIX",
    "GroundTruthDeclined",
    "ProofreadController",
]
