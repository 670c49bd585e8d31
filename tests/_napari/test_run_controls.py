"""RunControls: the Run/Cancel row, status line and progress bar shared by the dock widgets."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from napari_neuroseg._napari import _notify
from napari_neuroseg._napari._run_controls import RunControls
from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.runtime.progress import Progress

pytestmark = pytest.mark.gui


def gated(n: int, gate: threading.Event, log: list):
    """Yield n steps; wait for ``gate`` after the first; return n (log records cleanup)."""
    try:
        for i in range(n):
            yield Progress(i + 1, n, f"step {i + 1}")
            if i == 0:
                gate.wait(10)
            log.append(i)
        return n
    finally:
        log.append("closed")


def failing(exc: BaseException):
    yield Progress(1, 2, "half way")
    raise exc


@pytest.fixture
def errors_shown(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(_notify, "show_error", shown.append)
    return shown


@pytest.fixture
def controls(qtbot):
    runs: list[int] = []
    c = RunControls("Go", on_run=lambda: runs.append(1), progress_bar=True)
    c.runs = runs
    qtbot.addWidget(c)
    return c


def idle(c: RunControls) -> bool:
    return c.worker is None and c.run_button.isEnabled() and not c.cancel_button.isEnabled()


def test_start_progress_finish(controls, qtbot, errors_shown):
    c = controls
    assert idle(c) and c.progress is not None
    c.run_button.click()
    assert c.runs == [1]  # the Run button calls on_run
    gate, log, yielded, returned, finished = threading.Event(), [], [], [], []
    worker = c.start(gated, 4, gate, log, desc="gated", on_yield=yielded.append,
                     on_return=returned.append, on_finished=lambda: finished.append(c.status.text()))
    assert worker is c.worker and c.busy
    assert not c.run_button.isEnabled() and c.cancel_button.isEnabled()
    with pytest.raises(RuntimeError, match="already running"):
        c.start(gated, 1, gate, [])
    # the first step arrives while the job waits: bar and status follow it
    qtbot.waitUntil(lambda: c.status.text() == "step 1", timeout=10000)
    assert (c.progress.maximum(), c.progress.value()) == (4, 1)
    assert c.busy and not c.run_button.isEnabled()
    gate.set()
    qtbot.waitUntil(lambda: idle(c), timeout=10000)
    # steps 2-4 come within 0.1 s: rate-limited to the last one (the progress rule)
    assert returned == [4] and [p.step for p in yielded] == [1, 4]
    assert log == [0, 1, 2, 3, "closed"]
    assert c.progress.value() == c.progress.maximum() > 0  # full, not a busy indicator
    assert finished == ["step 4"] and c.last_error is None and errors_shown == []


def test_cancel_stops_the_job(controls, qtbot, errors_shown):
    c = controls
    gate, log, returned, yielded = threading.Event(), [], [], []
    c.start(gated, 50, gate, log, on_yield=yielded.append, on_return=returned.append)
    qtbot.waitUntil(lambda: c.status.text() == "step 1", timeout=10000)
    c.cancel_button.click()  # default on_cancel is RunControls.cancel
    assert c.cancelling and c.status.text() == "cancelling…"
    gate.set()
    qtbot.waitUntil(lambda: idle(c), timeout=10000)
    assert returned == [] and errors_shown == []
    assert c.status.text() == "cancelled"
    assert log[-1] == "closed" and len(log) < 10  # stopped early, cleanup ran
    assert c.progress.maximum() > 0  # never left spinning
    c.cancel()  # idle: nothing happens
    assert c.status.text() == "cancelled"


def test_cancelled_text_none_keeps_cancel_text(qtbot):
    c = RunControls(cancel_text="Cancelled.", cancelled_text=None)
    qtbot.addWidget(c)
    gate = threading.Event()
    c.start(gated, 20, gate, [])
    qtbot.waitUntil(lambda: c.status.text() == "step 1", timeout=10000)
    c.cancel()
    gate.set()
    qtbot.waitUntil(lambda: idle(c), timeout=10000)
    assert c.status.text() == "Cancelled." and c.progress is None


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (NeurosegError("volume is 2D", fix="give a ZYX volume"), "volume is 2D"),
        # superqt swallows a RuntimeError from a generator worker unless start_worker wraps it
        (RuntimeError("CUDA out of memory"), "RuntimeError: CUDA out of memory"),
    ],
)
def test_error_shows_in_status_and_reenables(controls, qtbot, errors_shown, exc, expected):
    c = controls
    errors, finished = [], []
    c.start(failing, exc, on_error=errors.append, on_finished=lambda: finished.append(1))
    qtbot.waitUntil(lambda: idle(c), timeout=10000)
    assert c.status.text().startswith("Error: ") and expected in c.status.text()
    assert errors == [exc] and c.last_error is exc and finished == [1]
    assert len(errors_shown) == 1 and expected in errors_shown[0]
    assert c.progress.maximum() > 0
    # the controls are usable again
    gate = threading.Event()
    gate.set()
    returned = []
    c.start(gated, 2, gate, [], on_return=returned.append)
    qtbot.waitUntil(lambda: idle(c), timeout=10000)
    assert returned == [2] and c.last_error is None and c.status.text() == "step 2"


def test_custom_progress_text_and_error_prefix(qtbot, errors_shown):
    c = RunControls(progress_text=lambda p: f"[{p.step}/{p.total}] {p.message}", error_prefix="failed: ")
    qtbot.addWidget(c)
    c.start(failing, ValueError("bad"))
    qtbot.waitUntil(lambda: idle(c), timeout=10000)
    assert c.status.text() == "failed: ValueError: bad"


def test_tooltips_of_the_buttons_and_the_bar(qtbot):
    """The docks give their Run/Cancel/progress tooltips to RunControls (one place sets them)."""
    c = RunControls("Go", progress_bar=True, run_tip="run it", cancel_tip="stop it", progress_tip="how far")
    qtbot.addWidget(c)
    assert (c.run_button.toolTip(), c.cancel_button.toolTip(), c.progress.toolTip()) == ("run it", "stop it", "how far")
    bare = RunControls("Go", cancel_tip="stop it")  # no bar: its tip is not needed
    qtbot.addWidget(bare)
    assert bare.progress is None and bare.run_button.toolTip() == "" and bare.cancel_button.toolTip() == "stop it"


def test_late_progress_after_an_error_keeps_the_error(controls, qtbot, errors_shown):
    """A progress signal delivered after the error (queued or throttled behind it) must not
    replace the error message in the status line (seen under load: the Fine-tune dock showed
    '[0/1] loading the base model …' instead of its error)."""
    c = controls
    worker = c.start(failing, ValueError("bad"))
    qtbot.waitUntil(lambda: idle(c), timeout=10000)
    assert c.status.text() == "Error: ValueError: bad"
    @dataclasses.dataclass(frozen=True)
    class PhaseProgress(Progress):  # carries data (as the fine-tune job's phase items): never rate-limited away
        record: str | None = None

    late = PhaseProgress(1, 2, "late step", record="loading")
    worker.yielded.emit(late)
    qtbot.wait(50)
    assert c.status.text() == "Error: ValueError: bad"


def test_controls_deleted_while_a_job_runs_stop_it_and_take_nothing(qtbot, errors_shown):
    """The viewer closed while a dock's job runs (Qt deletes the dock and its controls): the job is
    asked to stop, and its later steps, return and end touch no deleted widget (they raised
    'wrapped C/C++ object of type QProgressBar has been deleted' tracebacks in napari's console)."""
    from qtpy.QtCore import QEvent
    from qtpy.QtWidgets import QApplication, QWidget

    gate, log, seen = threading.Event(), [], []
    dock = QWidget()
    c = RunControls("Go", progress_bar=True, parent=dock)
    worker = c.start(gated, 50, gate, log, on_yield=seen.append, on_return=seen.append,
                     on_finished=lambda: seen.append("finished"), progress_interval=0)
    qtbot.waitUntil(lambda: "step 1" in c.status.text(), timeout=10_000)
    dock.deleteLater()
    QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)  # the dock and the controls are gone
    n_seen = len(seen)
    gate.set()
    qtbot.waitUntil(lambda: "closed" in log, timeout=10_000)  # the job ended ...
    qtbot.wait(100)  # ... and its queued signals were delivered (no exception may be raised by them)
    assert len([s for s in log if isinstance(s, int)]) < 50  # stopped early: asked to quit on deletion
    assert len(seen) == n_seen  # the deleted dock's callbacks were not called
    assert worker is not None and errors_shown == []
