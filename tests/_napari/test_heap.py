"""The settled heap in a real viewer (``_napari/_heap.py``, ``runtime/collector.py``): the docks'
warm-ups settle it, jobs run unfrozen, and nothing a user removes or closes is kept frozen."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from napari_neuroseg.runtime import collector

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.delenv("NEUROSEG_SETTLE_HEAP", raising=False)
    collector.reset()
    yield
    collector.reset()


def _evaluate_dock(viewer):
    from napari_neuroseg._napari.evaluate_widget import EvaluateWidget

    w = EvaluateWidget(viewer)
    dock = viewer.window.add_dock_widget(w, name="Evaluate")
    return w, dock


def test_a_removed_layer_that_predates_the_settling_is_freed(viewer, qtbot):
    from napari_neuroseg._napari import _heap

    old = viewer.add_image(np.ones((4, 64, 64), np.float32), name="old")
    data_ref = weakref.ref(old.data)
    w, _ = _evaluate_dock(viewer)
    assert _heap.is_watched(viewer)
    assert collector.settle()  # as a dock's warm-up does when it ends
    new = viewer.add_labels(np.zeros((4, 64, 64), np.uint16), name="new")
    viewer.layers.remove(new)  # made after the settling: not frozen, nothing handed back
    assert collector.state() == "settled"
    viewer.layers.remove(old)
    del old
    assert collector.state() == "released" and gc.get_freeze_count() == 0
    gc.collect()
    assert data_ref() is None  # the layer's data is not kept by the frozen heap
    assert collector.state() == "settled"  # that full collection settled the survivors again


def test_closing_the_dock_releases_the_heap_and_the_viewer_watch(viewer, qtbot):
    from napari_neuroseg._napari import _heap

    n_inserted = len(viewer.layers.events.inserted.callbacks)
    n_removed = len(viewer.layers.events.removed.callbacks)
    w, dock = _evaluate_dock(viewer)
    assert len(viewer.layers.events.removed.callbacks) > n_removed
    collector.settle()
    viewer.window.remove_dock_widget(w)  # as the title bar's close button does
    qtbot.wait(20)
    assert w.dock_closed
    assert collector.state() == "released" and gc.get_freeze_count() == 0
    assert len(viewer.layers.events.inserted.callbacks) == n_inserted
    assert len(viewer.layers.events.removed.callbacks) == n_removed
    assert not _heap.is_watched(viewer)


def test_a_background_warm_up_settles_and_a_job_runs_marked(viewer, qtbot):
    from napari_neuroseg._napari._workers import run_in_background, start_worker

    assert not collector.settle()  # no plugin dock open: nothing is frozen
    _evaluate_dock(viewer)
    th = run_in_background(lambda: None, "neuroseg-test-heap-warmup")
    qtbot.waitUntil(lambda: th.ident is not None and not th.is_alive(), timeout=5000)
    assert collector.state() == "settled"
    seen = []

    def job():
        seen.append(collector.jobs_running())
        yield {"step": 1, "total": 1}
        return "done"

    out = []
    start_worker(job, on_return=out.append)
    qtbot.waitUntil(lambda: out == ["done"], timeout=10_000)
    assert seen == [1] and collector.jobs_running() == 0


def test_a_cancelled_job_ends_its_mark(viewer, qtbot):
    """napari's worker leaves a quit job's generator suspended at its yield: the mark must still
    end (else nothing would be settled again in the process)."""
    import threading

    from napari_neuroseg._napari._workers import start_worker

    _evaluate_dock(viewer)
    gate = threading.Event()

    def job():
        for i in range(1000):
            gate.wait(5)
            yield {"step": i, "total": 1000}

    ended = []
    worker = start_worker(job, on_finished=lambda: ended.append(True), progress_interval=0)
    qtbot.waitUntil(lambda: collector.jobs_running() == 1, timeout=10_000)
    worker.quit()
    gate.set()
    qtbot.waitUntil(lambda: ended == [True], timeout=10_000)
    assert collector.jobs_running() == 0


def test_closing_the_viewer_leaves_nothing_frozen(make_napari_viewer, qtbot):
    """napari's own test fixture asserts that a closed viewer is collected: with a dock open and
    the heap settled, closing the viewer releases it."""
    viewer = make_napari_viewer()
    w, _ = _evaluate_dock(viewer)
    assert collector.settle()
    viewer.close()
    qtbot.waitUntil(lambda: w.dock_closed, timeout=5000)
    assert collector.holders() == 0 and collector.state() == "released" and gc.get_freeze_count() == 0
