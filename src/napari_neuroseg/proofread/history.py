"""Undo/redo stacks of :class:`Edit` records with memory accounting."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from napari_neuroseg.errors import NeurosegError

from .edit import Edit


class EditHistory:
    """Undo and redo stacks for scripted proofreading.

    ``push`` an applied edit; ``undo``/``redo`` move it between the stacks and change
    ``labels``. The oldest edits are dropped when more than ``max_steps`` are kept or their
    records take more than ``max_bytes``. An optional ``index`` (:class:`LabelIndex`) is kept
    up to date.
    """

    def __init__(self, max_steps: int = 100, max_bytes: int = 2 << 30, index: Any = None):
        if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
            raise NeurosegError(f"max_steps must be an integer >= 1, not {max_steps!r}", fix="keep at least one step")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0:
            raise NeurosegError(f"max_bytes must be an integer >= 0, not {max_bytes!r}", fix="give a size in bytes")
        self.max_steps = int(max_steps)
        self.max_bytes = int(max_bytes)
        self.index = index
        self._undo: deque[Edit] = deque()
        self._redo: deque[Edit] = deque()

    def push(self, edit: Edit) -> Edit:
        """Record an edit that has just been applied (empty edits are ignored)."""
        if not isinstance(edit, Edit):
            raise NeurosegError(f"push takes a proofreading Edit, not {type(edit).__name__}", fix="push what an operation returned")
        if edit.empty and edit.nbytes == 0 and edit.kind != "relabel_sequential":
            return edit
        self._undo.append(edit)
        self._redo.clear()
        self._trim()
        return edit

    def undo(self, labels: Any) -> Edit | None:
        """Revert the last edit; returns it (None when there is nothing to undo)."""
        if not self._undo:
            return None
        edit = self._undo[-1].undo(labels)  # raises before touching labels: the edit stays put
        self._undo.pop()
        if self.index is not None:
            self.index.update(edit, forward=False)
        self._redo.append(edit)
        return edit

    def redo(self, labels: Any) -> Edit | None:
        """Re-apply the last undone edit (None when there is nothing to redo)."""
        if not self._redo:
            return None
        edit = self._redo[-1].redo(labels)
        self._redo.pop()
        if self.index is not None:
            self.index.update(edit, forward=True)
        self._undo.append(edit)
        return edit

    def clear(self) -> None:
        self._undo.clear()
        self._redo.clear()

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def n_undo(self) -> int:
        return len(self._undo)

    @property
    def n_redo(self) -> int:
        return len(self._redo)

    @property
    def nbytes(self) -> int:
        """Bytes held by all the records on both stacks."""
        return sum(e.nbytes for e in self._undo) + sum(e.nbytes for e in self._redo)

    def _trim(self) -> None:
        while len(self._undo) > self.max_steps:
            self._undo.popleft()
        while len(self._undo) > 1 and self.nbytes > self.max_bytes:
            self._undo.popleft()
