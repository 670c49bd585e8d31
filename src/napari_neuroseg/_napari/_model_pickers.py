"""Model pickers that offer a newly registered model at once.

The user model folder (``models/registry.py``) calls its listeners when a model is registered —
possibly from a training worker thread. :func:`registry_changed` is one Qt signal, emitted in the
main thread for each such change, that every model picker (Nuclei, Neurons, Fine-tune; magicgui
``ComboBox`` or plain ``QComboBox``) connects to; :func:`follow_registry` connects a dock's
refresh callback and disconnects it when the dock is closed. :func:`model_choices` is the list a
picker shows (shipped models first, then the registered ones of that kind).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Signal

__all__ = ["follow_registry", "model_choices", "registry_changed"]


class _RegistryEvents(QObject):
    changed = Signal()


_events: _RegistryEvents | None = None


def _emit() -> None:
    from superqt.utils import ensure_main_thread

    @ensure_main_thread
    def emit() -> None:
        if _events is not None:
            try:
                _events.changed.emit()
            except RuntimeError:  # the QObject was deleted with the QApplication
                pass

    emit()


def registry_changed() -> Any:
    """The signal (``.connect``/``.disconnect``) emitted in the main thread whenever the list of
    registered models changes."""
    global _events
    if _events is None:
        from napari_neuroseg.models import registry

        _events = _RegistryEvents()
        registry.on_change(_emit)
    return _events.changed


def follow_registry(dock: Any, refresh: Callable[[], Any]) -> None:
    """Call ``refresh()`` whenever a model is registered, until ``dock`` (a
    :class:`~napari_neuroseg._napari._dock.DockLifecycleMixin`) is closed."""
    sig = registry_changed()
    sig.connect(refresh)

    def _disconnect() -> None:
        try:
            sig.disconnect(refresh)
        except (TypeError, RuntimeError):
            pass

    dock.on_teardown(_disconnect)


def model_choices(kind: str) -> list[str]:
    """Names to offer for ``kind`` ("nuclei"/"neurons"): shipped, then registered models."""
    from napari_neuroseg.models import registry

    try:
        return registry.model_names(kind)
    except Exception:  # noqa: BLE001 - an unreadable user folder must not break a dock
        return [k for k, v in registry.SHIPPED.items() if v == kind]
