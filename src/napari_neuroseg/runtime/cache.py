"""One cached model per (model key, device): loading and moving weights happens once."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["ModelCache", "cached_model", "clear_model_cache", "model_cache"]


class ModelCache:
    """A small thread-safe LRU cache of loaded models keyed by ``(key, str(device))``.

    ``get(key, device, loader)`` returns the cached model or calls ``loader(device)`` once (other
    threads asking for the same entry wait for it).
    """

    def __init__(self, max_entries: int = 4):
        self.max_entries = max_entries
        self._items: OrderedDict[tuple[Hashable, str], Any] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, key: Hashable, device: Any, loader: Callable[[Any], T]) -> T:
        k = (key, str(device))
        with self._lock:
            if k in self._items:
                self._items.move_to_end(k)
                return self._items[k]
            model = loader(device)
            self._items[k] = model
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
            return model

    def __contains__(self, item: tuple[Hashable, Any]) -> bool:
        key, device = item
        return (key, str(device)) in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        """Drop every cached model (frees their device memory once unreferenced)."""
        with self._lock:
            self._items.clear()


#: The process-wide cache used by the segmenters.
model_cache = ModelCache()


def cached_model(key: Hashable, device: Any, loader: Callable[[Any], T]) -> T:
    """``model_cache.get(key, device, loader)``."""
    return model_cache.get(key, device, loader)


def clear_model_cache() -> None:
    """Empty the process-wide model cache."""
    model_cache.clear()
