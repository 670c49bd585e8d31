"""Keys of the proofreading actions: the default shortcuts, their titles, and binding them to a layer.

Every key runs its action through :meth:`ProofreadController.run` (the one action wrapper), so a
key, a button and a script do the same thing with the same error handling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from napari_neuroseg.errors import NeurosegError

if TYPE_CHECKING:  # pragma: no cover
    from .controller import ProofreadController

__all__ = ["ACTION_TITLES", "DEFAULT_SHORTCUTS", "HISTORY_KEYS", "KEY_HANDLER_PREFIX", "KeyBindings"]

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

#: The ``__name__`` of every key handler bound to a layer (tests look for leftovers by it).
KEY_HANDLER_PREFIX = "proofread_"

#: napari's own undo / redo keys of a Labels layer (its ``class_keymap``), bound again on the
#: edited layer while the controller is connected: the same ``layer.undo()`` / ``layer.redo()``,
#: run through :meth:`ProofreadController.run`, so that the redraw they cause (napari refreshes
#: the whole layer after a history step) comes one event-loop pass after it, not in the same stall.
HISTORY_KEYS: dict[str, str] = {"undo": "Ctrl+Z", "redo": "Ctrl+Shift+Z"}


class KeyBindings:
    """The keys of one controller's actions on its layer; bound only while the controller is
    connected (:meth:`bind_all` / :meth:`unbind_all`)."""

    def __init__(self, controller: ProofreadController, shortcuts: dict[str, str] | None = None):
        self._controller = controller
        self.shortcuts: dict[str, str] = {**DEFAULT_SHORTCUTS, **(shortcuts or {})}
        self.bound: dict[str, str] = {}  # action -> key bound on the layer now

    def bind(self, action: str, key: str | None) -> None:
        """(Re)bind ``action`` to ``key`` (None/"" unbinds); bound on the layer while connected."""
        if action not in DEFAULT_SHORTCUTS:
            raise NeurosegError(f"unknown proofreading action {action!r}", fix=f"use one of {sorted(DEFAULT_SHORTCUTS)}")
        self.unbind(action)
        self.shortcuts[action] = key or ""
        if key and self._controller.connected:
            self._controller.layer.bind_key(key, self._handler(action), overwrite=True)
            self.bound[action] = key

    def _handler(self, action: str) -> Callable[[Any], None]:
        controller = self._controller

        def _on_key(layer: Any) -> None:
            if action in HISTORY_KEYS:  # napari's own step of the layer's history
                controller.run(getattr(controller.layer, action))
            else:
                controller.run(action)

        _on_key.__name__ = f"{KEY_HANDLER_PREFIX}{action}"
        return _on_key

    def unbind(self, action: str) -> None:
        key = self.bound.pop(action, None)
        if key:
            self._controller.layer.bind_key(key, None, overwrite=True)

    def bind_all(self) -> None:
        layer = self._controller.layer
        for action, key in HISTORY_KEYS.items():  # first: an action the user put on these keys wins
            layer.bind_key(key, self._handler(action), overwrite=True)
            self.bound[action] = key
        for action, key in list(self.shortcuts.items()):
            self.bind(action, key)

    def unbind_all(self) -> None:
        for action in list(self.bound):
            self.unbind(action)
