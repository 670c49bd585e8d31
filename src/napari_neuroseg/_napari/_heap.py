"""When the plugin hands the settled heap back to Python's collector (``runtime/collector.py``).

The docks' warm-ups settle the heap: the objects that exist then are frozen, so that full garbage
collections during a job or a result's arrival skip them. A frozen object that becomes *cyclic*
garbage is not collected until the heap is released, so it is released (``collector.release``)
as soon as something that existed at the last settling may have become garbage:

- a layer that was inserted before the last settling (or before this viewer was watched) is
  removed from a watched viewer: napari's layers hold their data through reference cycles;
  a layer inserted since is not frozen, and its removal releases nothing (Evaluate replacing its
  error layers at a result's arrival must not hand back the whole heap);
- a plugin dock is closed (its state: undo records, results, models); nothing is settled while
  no plugin dock is open (``collector.hold``);

the next natural full collection then collects them, and the heap is settled again after it.
Each dock registers itself with :func:`watch` (``_dock.DockLifecycleMixin`` does it); the viewer's
layer-list events are connected while at least one of its docks is open, and disconnected with the
last one. No Qt.
"""

from __future__ import annotations

import weakref
from typing import Any

from napari_neuroseg.runtime import collector

__all__ = ["is_watched", "watch"]

#: viewer id -> its watch (one per viewer with an open plugin dock)
_WATCHES: dict[int, _Watch] = {}


class _Watch:
    def __init__(self, viewer: Any):
        self.viewer_ref = weakref.ref(viewer)
        self.layers_ref = weakref.ref(viewer.layers)  # weak: a closed viewer's layers are not kept
        self.inserted: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self.docks: set[int] = set()
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_removed)

    def _on_inserted(self, event: Any) -> None:
        try:
            self.inserted[event.value] = collector.epoch()
        except TypeError:  # not weak-referenceable: treated as predating on removal
            pass

    def _on_removed(self, event: Any) -> None:
        try:
            at = self.inserted.pop(event.value, -1)  # -1: in the viewer before it was watched
        except TypeError:
            at = -1
        if collector.state() == collector.SETTLED and collector.epoch() > at:
            collector.release()

    def close(self) -> None:
        layers = self.layers_ref()
        if layers is None:  # gone with the viewer (and its connections with it)
            return
        for emitter, cb in ((layers.events.inserted, self._on_inserted), (layers.events.removed, self._on_removed)):
            try:
                emitter.disconnect(cb)
            except (RuntimeError, TypeError, ValueError):
                pass


def watch(viewer: Any, dock: Any) -> Any:
    """Watch ``viewer``'s layer list while ``dock`` is open; returns the function to call when the
    dock closes (releases the heap; the watch ends with the viewer's last plugin dock)."""
    key = id(viewer)
    w = _WATCHES.get(key)
    if w is None or w.viewer_ref() is not viewer:
        w = _WATCHES[key] = _Watch(viewer)
    token = id(dock)
    w.docks.add(token)
    collector.hold()  # the heap may be settled while the dock is open

    def closed() -> None:
        collector.unhold()  # released: the dock's objects may be cyclic garbage now
        w.docks.discard(token)
        if not w.docks:
            w.close()
            if _WATCHES.get(key) is w:
                del _WATCHES[key]

    return closed


def is_watched(viewer: Any) -> bool:
    """Whether ``viewer``'s layer list is watched now (one of its plugin docks is open)."""
    w = _WATCHES.get(id(viewer))
    return w is not None and w.viewer_ref() is viewer
