"""Turn exceptions into napari notifications (one place, so every widget reports alike).

A :class:`~napari_neuroseg.errors.NeurosegError` already names the file, the problem and the fix,
so its message is shown as is. Anything else is an unexpected bug: the notification gives the
exception type and message, and the full traceback goes to the log.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from napari.utils.notifications import show_error, show_info, show_warning

from napari_neuroseg.errors import NeurosegError

__all__ = [
    "error_message",
    "notify_error",
    "reporting_errors",
    "reports_errors",
    "show_info",
    "show_warning",
]

logger = logging.getLogger("napari_neuroseg")
F = TypeVar("F", bound=Callable[..., Any])


def error_message(exc: BaseException) -> str:
    """The one-line text shown to the user for ``exc``."""
    if isinstance(exc, NeurosegError):
        return str(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def notify_error(exc: BaseException) -> str:
    """Show ``exc`` as an error notification (log the traceback if unexpected); return the text."""
    message = error_message(exc)
    if not isinstance(exc, NeurosegError):
        logger.error("napari-neuroseg: unexpected error", exc_info=exc)
    show_error(message)
    return message


@contextmanager
def reporting_errors() -> Iterator[None]:
    """Context manager for GUI callbacks: an exception becomes a notification, not a crash."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every error is reported to the user
        notify_error(exc)


def reports_errors(func: F) -> F:
    """Decorator form of :func:`reporting_errors` (the callback then returns ``None`` on error)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            notify_error(exc)
            return None

    return wrapper  # type: ignore[return-value]
