"""start_worker: progress generators in a napari worker thread (yield, return, error, cancel)."""

from __future__ import annotations

import threading

import pytest

from napari_neuroseg._napari import _notify, _workers
from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.runtime.progress import Progress

pytestmark = pytest.mark.gui


def counting(n: int, log: list, gate: threading.Event | None = None):
    """Yield n Progress steps, return the sum; record what ran (and cleanup) in ``log``."""
    total = 0
    try:
        for i in range(n):
            total += i
            log.append(i)
            yield Progress(i + 1, n, f"step {i + 1}")
            if gate is not None:
                gate.wait(5)
        return total
    finally:
        log.append("closed")


def failing(log: list):
    yield Progress(1, 2, "half")
    log.append("before error")
    raise NeurosegError("volume is 2D", path="x.tif", fix="give a ZYX volume")


@pytest.fixture
def errors_shown(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(_notify, "show_error", shown.append)
    return shown


def test_yields_progress_and_returns(qtbot, errors_shown):
    log: list = []
    yielded: list = []
    returned: list = []
    worker = _workers.start_worker(
        counting, 5, log, on_yield=yielded.append, on_return=returned.append, desc="count",
        _start=False,
    )
    with qtbot.waitSignal(worker.finished, timeout=5000):
        worker.start()
    assert returned == [0 + 1 + 2 + 3 + 4]
    # five quick steps, rate-limited: the first and the last reach the main thread
    assert [p.step for p in yielded] == [1, 5]
    assert all(p.total == 5 for p in yielded)
    assert log == [0, 1, 2, 3, 4, "closed"]
    # the progress bar followed the Progress steps and was closed (no stuck spinner)
    assert worker.pbar.total == 5 and worker.pbar.n == 5
    assert worker.pbar.disable
    assert errors_shown == []


def test_every_step_with_zero_interval_and_data_items_unthrottled(qtbot, errors_shown):
    def mixed():
        for i in range(6):
            yield Progress(i + 1, 6, "step")
            yield {"data": i}  # not progress: never dropped
        return "ok"

    yielded: list = []
    finished: list = []
    _workers.start_worker(mixed, on_yield=yielded.append, progress_interval=0,
                          on_finished=lambda: finished.append(True))
    qtbot.waitUntil(lambda: finished == [True], timeout=5000)
    assert [x["data"] for x in yielded if isinstance(x, dict)] == list(range(6))
    steps = [x.step for x in yielded if isinstance(x, Progress)]
    assert steps[0] == 1 and steps[-1] == 6 and steps == sorted(steps)


def test_many_fast_steps_do_not_nest_through_napari_progress_bar(make_napari_viewer, qtbot,
                                                                  errors_shown):
    """Thousands of steps with napari's activity bar (which calls processEvents on every
    update): the main-thread handler never re-enters itself and sees only a few steps."""
    import sys

    viewer = make_napari_viewer()  # the activity dock that shows napari progress bars
    depth = {"now": 0, "max": 0}
    yielded: list = []

    def on_yield(p):
        depth["now"] += 1
        depth["max"] = max(depth["max"], depth["now"])
        try:
            yielded.append(p)
            qtbot.wait(1)  # what a slow widget update with processEvents would do
        finally:
            depth["now"] -= 1

    def many(n):
        for i in range(n):
            yield Progress(i + 1, n, f"object {i + 1}/{n}")
        return n

    finished: list = []
    returned: list = []
    limit = sys.getrecursionlimit()
    _workers.start_worker(many, 20000, on_yield=on_yield, on_return=returned.append,
                          on_finished=lambda: finished.append(True))
    qtbot.waitUntil(lambda: finished == [True], timeout=20000)
    assert returned == [20000] and errors_shown == []
    assert depth["max"] == 1
    # rate-limited: a few increasing steps (a step left over when the job has already ended is
    # dropped, so the last one shown depends on timing)
    steps = [p.step for p in yielded]
    assert 1 <= len(steps) < 200 and steps == sorted(steps) and steps[-1] <= 20000
    assert sys.getrecursionlimit() == limit
    assert viewer is not None


def test_error_becomes_notification(qtbot, errors_shown):
    log: list = []
    got: list = []
    finished: list = []
    worker = _workers.start_worker(
        failing, log, on_error=got.append, on_finished=lambda: finished.append(True)
    )
    qtbot.waitUntil(lambda: finished == [True], timeout=5000)
    assert log == ["before error"]
    assert len(got) == 1 and isinstance(got[0], NeurosegError)
    assert errors_shown == ["x.tif: volume is 2D. Fix: give a ZYX volume."]
    assert finished == [True]
    assert worker.pbar.disable  # bar closed after the error


def test_unexpected_error_message_names_type(qtbot, errors_shown):
    def boom():
        yield Progress(0, 1)
        raise RuntimeError("kaput")

    worker = _workers.start_worker(boom, _start=False)
    with qtbot.waitSignal(worker.finished, timeout=5000):
        worker.start()
    assert errors_shown == ["RuntimeError: kaput"]


def test_quit_stops_at_next_yield_and_runs_cleanup(qtbot, errors_shown):
    log: list = []
    returned: list = []
    gate = threading.Event()
    first = threading.Event()

    def on_yield(p):
        first.set()

    worker = _workers.start_worker(
        counting, 100, log, gate, on_yield=on_yield, on_return=returned.append
    )
    # wait until the first step ran, then cancel while the generator is blocked in step 1
    qtbot.waitUntil(first.is_set, timeout=5000)
    with qtbot.waitSignal(worker.finished, timeout=5000):
        worker.quit()
        gate.set()
    steps = [x for x in log if x != "closed"]
    assert len(steps) <= 2  # at most the step that was already running when quit() came
    assert log[-1] == "closed"  # the generator was closed: its finally block ran
    assert returned == []
    assert errors_shown == []


def test_dict_progress_is_understood():
    p = _workers.as_progress({"step": 3, "total": 7, "message": "tile"})
    assert p == Progress(3, 7, "tile")
    assert _workers.as_progress("not progress") is None


def test_rejects_plain_function():
    with pytest.raises(TypeError, match="generator"):
        _workers.start_worker(lambda: 3)


def test_job_body_starts_after_napari_built_its_progress_bar(make_napari_viewer, qtbot, errors_shown):
    """The start rule: napari builds the job's progress bar in the main thread when the worker
    starts; the job's body (e.g. a model load) waits for that, so the two do not compete for the
    GIL (which doubled the first run's stall)."""
    viewer = make_napari_viewer()  # the activity dock that shows napari progress bars
    box: dict = {}
    seen: list = []

    def job():
        w = box.get("worker")  # set right after start_worker returned, in the main thread
        # napari's make_new_pbar marks the progress as shown first and connects its bar last
        seen.append(w is not None and bool(getattr(w.pbar, "gui", False))
                    and len(w.pbar.events.value.callbacks) > 0)
        yield Progress(1, 1, "done")
        return 1

    finished: list = []
    box["worker"] = _workers.start_worker(job, on_finished=lambda: finished.append(True))
    qtbot.waitUntil(lambda: finished == [True], timeout=10000)
    assert seen == [True]  # napari had finished building the bar before the body ran
    assert errors_shown == [] and viewer is not None


def test_torch_read_reads_the_latest_request_once(monkeypatch):
    """A model read waiting for torch's background import: a run's flush reads it at once, the
    import's end then reads nothing more; cancel drops a waiting read; a closed dock reads nothing."""
    from types import SimpleNamespace

    from napari_neuroseg._napari import _workers

    waiting = []
    monkeypatch.setattr(_workers, "torch_ready", lambda: False)
    monkeypatch.setattr(_workers, "preload_torch", lambda cb=None: waiting.append(cb))
    reads = []
    dock = SimpleNamespace(dock_closed=False)
    r = _workers.TorchRead(dock, lambda: reads.append(1))
    r.request()
    r.request()  # the model changed again before the import ended
    assert r.pending and reads == [] and len(waiting) == 2
    r.flush()  # Run pressed: read now
    assert reads == [1] and not r.pending
    for cb in waiting:  # the import ends: nothing more to read
        cb(["cpu"])
    assert reads == [1]
    r.request()
    r.cancel()
    waiting[-1](["cpu"])
    assert reads == [1]
    r.request()
    dock.dock_closed = True
    waiting[-1](["cpu"])
    assert reads == [1]
    monkeypatch.setattr(_workers, "torch_ready", lambda: True)
    dock.dock_closed = False
    r.request()  # torch imported: read at once
    assert reads == [1, 1] and not r.pending
