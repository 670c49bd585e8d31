"""Proofreading: undoable label corrections, local to the bounding boxes they touch (no Qt).

>>> from napari_neuroseg import proofread as pr
>>> e = pr.merge(labels, [3, 7])          # label 7 becomes 3, in place
>>> e.undo(labels); e.redo(labels)        # bit-exact undo/redo
>>> index = pr.LabelIndex.build(labels)   # for many edits: no full-volume scans
>>> pr.split(labels, 3, [(10, 20, 30), (12, 40, 35)], index=index)
"""

from .edit import Edit, EditPart, RemapEdit
from .history import EditHistory
from .index import LabelIndex, find_bbox, max_label
from .ops import (
    delete,
    dilate,
    erode,
    fill_holes,
    merge,
    new_label_from_mask,
    relabel_sequential,
    split,
    split_connected_components,
    take_over,
)

__all__ = [
    "Edit",
    "EditPart",
    "RemapEdit",
    "EditHistory",
    "LabelIndex",
    "find_bbox",
    "max_label",
    "merge",
    "split",
    "split_connected_components",
    "delete",
    "fill_holes",
    "dilate",
    "erode",
    "relabel_sequential",
    "new_label_from_mask",
    "take_over",
]
