"""The Run / Cancel row, status line and optional progress bar shared by the dock widgets.

:class:`RunControls` is a small ``QWidget`` that a dock widget adds to its layout. It owns the
worker of one job at a time (started with :func:`~napari_neuroseg._napari._workers.start_worker`)
and keeps the buttons, the status line and the progress bar consistent on every outcome:

- start: Run disabled, Cancel enabled, progress bar reset, a "running" message;
- each yielded :class:`~napari_neuroseg.runtime.progress.Progress`: the bar and the status line
  follow it (not after Cancel or once the result arrived); the item still goes to ``on_yield``;
- error: the status line shows the error (the notification comes from ``start_worker``);
- cancel: the worker stops at its next ``yield``; a message says so;
- finished (success, error or cancel): Run enabled, Cancel disabled, ``worker`` is ``None`` —
  never a stuck spinner.

The widget's own callbacks (``on_yield``, ``on_return``, ``on_error``, ``on_finished``) run after
these updates, in the main thread, so they may override the status text (e.g. a result summary).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_neuroseg._napari._notify import error_message
from napari_neuroseg._napari._workers import as_progress, start_worker

__all__ = ["RunControls", "RunControlsMixin"]


def _message(p: Any) -> str:
    return p.message


class RunControls(QWidget):
    """Run / Cancel buttons, a status label and (optionally) a progress bar for one job.

    Parameters
    ----------
    run_text
        Label of the Run button.
    on_run, on_cancel
        Slots for the buttons (usually the dock widget's ``run`` and ``cancel``). ``on_cancel``
        defaults to :meth:`cancel`.
    progress_bar
        Show a ``QProgressBar`` driven by the yielded ``Progress`` (``self.progress``, else None).
    running_text
        Status shown when a job starts.
    progress_text
        ``Progress -> str`` for the status line on each step (None: leave the status alone).
    cancel_text
        Status shown when Cancel is pressed.
    cancelled_text
        Status shown when a cancelled job has finished (None: keep ``cancel_text``).
    error_prefix
        Put before the error message in the status line.
    run_tip, cancel_tip, progress_tip
        Tooltips of the Run and Cancel buttons and of the progress bar (None: none).
    """

    def __init__(
        self,
        run_text: str = "Run",
        *,
        on_run: Callable[[], Any] | None = None,
        on_cancel: Callable[[], Any] | None = None,
        progress_bar: bool = False,
        running_text: str = "running…",
        progress_text: Callable[[Any], str] | None = _message,
        cancel_text: str = "cancelling…",
        cancelled_text: str | None = "cancelled",
        error_prefix: str = "Error: ",
        run_tip: str | None = None,
        cancel_tip: str | None = None,
        progress_tip: str | None = None,
        parent: QWidget | None = None,
    ):
        super().__init__(parent)
        self.running_text = running_text
        self.progress_text = progress_text
        self.cancel_text = cancel_text
        self.cancelled_text = cancelled_text
        self.error_prefix = error_prefix
        self.worker: Any = None
        self.cancelling = False
        self.returned = False
        self.last_error: BaseException | None = None

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        if on_run is not None:
            self.run_button.clicked.connect(lambda *_: on_run())
        self.cancel_button.clicked.connect(lambda *_: (on_cancel or self.cancel)())
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.progress: QProgressBar | None = None
        if progress_bar:
            self.progress = QProgressBar()
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            layout.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        # Qt deleted the controls (the viewer was closed with the dock): the job is asked to stop,
        # and its signals still queued or to come touch no deleted widget (plain Python state)
        self._alive = alive = {"yes": True}
        self.destroyed.connect(lambda *_: self._deleted(alive))
        for widget, tip in ((self.run_button, run_tip), (self.cancel_button, cancel_tip), (self.progress, progress_tip)):
            if widget is not None and tip:
                widget.setToolTip(tip)

    # ------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        """Whether a job is running (its ``finished`` has not arrived yet)."""
        return self.worker is not None

    def _deleted(self, alive: dict) -> None:
        """Qt deleted the controls: no Qt calls here or after (only the worker is told to quit)."""
        alive["yes"] = False
        if self.worker is not None:
            try:
                self.worker.quit()
            except RuntimeError:  # its thread's objects are gone too
                pass

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def _set_bar(self, step: int, total: int) -> None:
        if self.progress is not None:
            top = max(1, total)
            self.progress.setRange(0, top)
            self.progress.setValue(max(0, min(step, top)))

    # ------------------------------------------------------------------ running
    def start(
        self,
        gen_func: Callable[..., Generator[Any, Any, Any]],
        *args: Any,
        desc: str | None = None,
        on_yield: Callable[[Any], None] | None = None,
        on_return: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_finished: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``gen_func(*args, **kwargs)`` with :func:`start_worker`; returns the worker.

        Raises ``RuntimeError`` if a job is already running (check :attr:`busy` first).
        """
        if self.busy:
            raise RuntimeError("a job is already running")
        self.cancelling = False
        self.returned = False
        self.last_error = None
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._set_bar(0, 1)
        self.status.setText(self.running_text)

        alive = self._alive

        def _yielded(item: Any) -> None:
            if not alive["yes"]:
                return
            prog = as_progress(item)
            # no status/bar update after Cancel, once the result is in or after an error (late queued
            # or throttled progress signals would hide the result or the error message)
            if prog is not None and not (self.cancelling or self.returned or self.last_error is not None):
                self._set_bar(prog.step, prog.total)
                if self.progress_text is not None:
                    self.status.setText(self.progress_text(prog))
            if on_yield is not None:
                on_yield(item)

        def _returned(value: Any) -> None:
            if not alive["yes"]:
                return
            self.returned = True
            self._set_bar(1, 1)
            if on_return is not None:
                on_return(value)

        def _errored(exc: BaseException) -> None:
            self.last_error = exc
            if not alive["yes"]:
                return
            self.status.setText(f"{self.error_prefix}{error_message(exc)}")
            if on_error is not None:
                on_error(exc)

        def _finished() -> None:
            self.worker = None
            if not alive["yes"]:
                return
            self.run_button.setEnabled(True)
            self.cancel_button.setEnabled(False)
            if (self.cancelling and not self.returned and self.last_error is None
                    and self.cancelled_text is not None):
                self.status.setText(self.cancelled_text)
            if on_finished is not None:
                on_finished()

        self.worker = start_worker(
            gen_func, *args, desc=desc, on_yield=_yielded, on_return=_returned,
            on_error=_errored, on_finished=_finished, **kwargs,
        )
        return self.worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next step (nothing happens when idle)."""
        if self.worker is not None:
            self.cancelling = True
            self.status.setText(self.cancel_text)
            self.worker.quit()


class RunControlsMixin:
    """For a dock widget holding a :class:`RunControls` as ``self.controls``: exposes its
    ``worker``, buttons, status label and progress bar as the widget's own attributes, and
    ``cancel()``. Put it before ``QWidget`` in the bases."""

    controls: RunControls

    @property
    def worker(self) -> Any:
        """The running job's worker (None when idle)."""
        return self.controls.worker

    @property
    def run_button(self) -> QPushButton:
        return self.controls.run_button

    @property
    def cancel_button(self) -> QPushButton:
        return self.controls.cancel_button

    @property
    def status(self) -> QLabel:
        return self.controls.status

    @property
    def progress(self) -> QProgressBar | None:
        return self.controls.progress

    @property
    def last_error(self) -> BaseException | None:
        """The exception of the last run, if it failed."""
        return self.controls.last_error

    def cancel(self) -> None:
        """Stop the running job at its next step (nothing happens when idle)."""
        self.controls.cancel()
