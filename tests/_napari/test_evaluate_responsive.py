"""The Evaluate widget on a result with hundreds of objects, run the way napari runs it.

napari's progress bars are active (the viewer's activity dock shows the job), napari's own error
hooks are installed (``sys.excepthook`` and the thread hook, as ``napari.run()`` installs them
through ``notification_manager``), and a 20 ms ``QTimer`` records how long the main thread is
away. Before the progress rule (``_workers.start_worker``: rate-limited, no re-entry) each
per-object progress step went through napari's progress bar, whose ``processEvents()`` nested
the next step inside the previous one until ``RecursionError``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from qtpy.QtCore import QEvent, QObject, QTimer

from napari_neuroseg._napari.evaluate_widget import EvaluateWidget

pytestmark = pytest.mark.gui


def many_nuclei(n: int = 320, shape=(24, 96, 128), r: int = 2, seed: int = 0) -> np.ndarray:
    """``n`` small balls (about 30 voxels each, ids 1..n) on a jittered grid."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
    ball = zz ** 2 + yy ** 2 + xx ** 2 <= r * r + 1
    cents = [(z, y, x) for z in range(4, shape[0] - 3, 7) for y in range(4, shape[1] - 3, 7)
             for x in range(4, shape[2] - 3, 7)]
    assert len(cents) >= n
    order = rng.permutation(len(cents))[:n]
    lab = np.zeros(shape, np.uint16)
    for i, k in enumerate(order):
        z, y, x = cents[k]
        lab[z - r:z + r + 1, y - r:y + r + 1, x - r:x + r + 1][ball] = i + 1
    return lab


def nuclei_scene(n: int = 320):
    """GT with ``n`` nuclei; the prediction loses each one's +X face (IoU about 0.7), misses
    the first 10 and adds 5 false positives in empty space (ids 1001..1005)."""
    gt = many_nuclei(n)
    pred = gt.astype(np.uint32)
    pred[(gt > 0) & (np.roll(gt, -1, axis=2) != gt)] = 0
    pred[np.isin(pred, np.arange(1, 11))] = 0
    zz, yy, xx = np.nonzero(gt == 0)
    free = [(z, y, x) for z, y, x in zip(zz[::997], yy[::997], xx[::997])
            if gt[max(z - 1, 0):z + 2, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].max() == 0]
    for k, (z, y, x) in enumerate(free[:5]):
        pred[z, y, x] = 1001 + k
    return gt, pred


class StallMeter:
    """A 20 ms QTimer on the main thread; ``worst`` is the longest gap between its ticks."""

    def __init__(self, interval_ms: int = 20):
        self.gaps: list[float] = []
        self._last = time.perf_counter()
        self.timer = QTimer()
        self.timer.timeout.connect(self._tick)
        self.timer.start(interval_ms)
        self.on_tick: list = []

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now
        for f in self.on_tick:
            f()

    def restart(self) -> float:
        """Forget the gaps so far and measure from now on; returns now (``time.perf_counter``)."""
        self.gaps.clear()
        self._last = time.perf_counter()
        return self._last

    def stop(self) -> float:
        self.timer.stop()
        return self.worst

    @property
    def worst(self) -> float:
        return max(self.gaps, default=0.0)


@pytest.fixture
def napari_error_hooks():
    """napari's exception hooks, as ``napari.run()`` installs them; yields the new records."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)
    notification_manager.install_hooks()
    new: list = []
    try:
        yield new
    finally:
        notification_manager.restore_hooks()
        new.extend(notification_manager.records[start:])


def _activity_bars(viewer) -> int:
    from napari._qt.widgets.qt_progress_bar import QtLabeledProgressBar

    return len(viewer.window._qt_window.findChildren(QtLabeledProgressBar))


def _evaluate_dock(viewer, gt, pred) -> EvaluateWidget:
    """The scene as layers ``gt`` and ``pred``, and a docked Evaluate widget set to compare them."""
    viewer.add_labels(gt, name="gt")
    viewer.add_labels(pred, name="pred")
    w = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.form.gt.value = viewer.layers["gt"]
    w.form.pred.value = viewer.layers["pred"]
    return w


@pytest.mark.timeout(180)
@pytest.mark.parametrize("task", ["nuclei", "neurons"])
def test_evaluate_hundreds_of_objects_stays_responsive(make_napari_viewer, qtbot, capfd,
                                                       napari_error_hooks, task):
    viewer = make_napari_viewer()
    w = _evaluate_dock(viewer, *nuclei_scene())
    w.set_task(task)
    bars_seen: list[int] = []
    meter = StallMeter()
    meter.on_tick.append(lambda: bars_seen.append(_activity_bars(viewer)))
    w.run()
    # also sampled as each step arrives: on a loaded machine the main thread can be away for the
    # whole (short) run, so the 20 ms ticks alone may never fall between the bar's start and end
    assert w.worker is not None
    w.worker.yielded.connect(lambda *_: bars_seen.append(_activity_bars(viewer)))
    qtbot.waitUntil(lambda: w.worker is None, timeout=120000)
    qtbot.wait(100)  # let queued signals and the layer insertion settle, still measured
    worst = meter.stop()

    errors = [r for r in napari_error_hooks if str(getattr(r, "severity", "")).lower()
              in ("error", "fatal")]
    assert errors == [], [r.message for r in errors]
    err = capfd.readouterr().err
    assert "RecursionError" not in err and "Traceback" not in err, err[-2000:]
    assert w.result is not None, w.status.text()
    assert max(bars_seen, default=0) >= 1  # napari's progress bar was shown during the run
    print(f"[{task}] longest main-thread stall {worst * 1000:.0f} ms over {len(meter.gaps)} ticks")
    assert worst < 1.0, f"main thread stalled {worst:.3f} s"

    res = w.result
    assert res["task"] == task
    layer = viewer.layers["evaluation errors"]
    if task == "nuclei":
        # stardist's numbers: 310 of 320 matched at IoU 0.5, the 10 dropped and 5 extra listed
        assert (res["n_gt"], res["n_pred"], res["TP_05"]) == (320, 315, 310)
        assert res["errors"]["missed_gt"] == list(range(1, 11))
        assert res["errors"]["false_positive"] == [1001, 1002, 1003, 1004, 1005]
        assert w.errors_list.count() == 1 + 15  # the rule line, then one line per error
        assert set(layer.features["id"]) == set(range(1, 11)) | set(range(1001, 1006))
    else:
        # the FISBe preset drops every prediction (all <= 800 voxels) and says so
        assert res["preset"]["min_size"] == 800 and res["preset"]["n_removed_small_pred"] == 315
        assert len(res["errors"]["missed_gt"]) == 320
        assert "800 voxels" in w.errors_list.item(0).text()
        assert "800 voxels" in w.task_note.text()



class _ResizeLog(QObject):
    """Records the widgets resized (name, old size, new size) while ``on`` is set."""

    def __init__(self, *widgets):
        super().__init__()
        self.on = False
        self.resized: list[tuple[str, tuple[int, int], tuple[int, int]]] = []
        for widget in widgets:
            widget.installEventFilter(self)

    def eventFilter(self, obj, ev):
        if self.on and ev.type() == QEvent.Type.Resize:
            old, new = ev.oldSize(), ev.size()
            self.resized.append((type(obj).__name__, (old.width(), old.height()), (new.width(), new.height())))
        return False


@pytest.mark.timeout(120)
@pytest.mark.parametrize("reserve", [True, False], ids=["dock-reserves", "napari-alone"])
def test_first_run_of_a_session_resizes_nothing(make_napari_viewer, qtbot, napari_error_hooks, monkeypatch,
                                                reserve):
    """The indicator rule (``_dock.reserve_activity_indicator``): napari's first progress bar of a
    session grows its status bar by a pixel (its "in progress" animation had no frame loaded
    before), which resized and redrew the canvas and every dock inside napari's building of the
    bar: the first run's longest stall. With the dock shown first, the status bar has its final
    height, and the first run's start (until the job's first step, after napari built its bar)
    resizes neither the canvas, the status bar nor the dock. Without the dock's reservation
    (``napari-alone``) the same start resizes them: the check sees the growth."""
    from qtpy.QtWidgets import QStatusBar

    from napari_neuroseg._napari import _dock

    if not reserve:
        monkeypatch.setattr(_dock, "reserve_activity_indicator", lambda widget: False)
    viewer = make_napari_viewer(show=True)
    w = _evaluate_dock(viewer, *nuclei_scene(40))
    qtbot.wait(100)  # the dock is shown and laid out
    qwin = w.window()
    bar = qwin.findChild(QStatusBar)
    log = _ResizeLog(viewer.window._qt_viewer.canvas.native, bar, w)
    bars_seen: list[int] = []

    def first_step(*_):  # napari built its bar before the job's body began (the start rule)
        bars_seen.append(_activity_bars(viewer))
        log.on = False  # the result's arrival may lay the dock out anew: not measured here

    log.on = True
    w.run()
    w.worker.yielded.connect(first_step)
    qtbot.waitUntil(lambda: w.worker is None, timeout=60000)
    log.on = False
    assert w.result is not None, w.status.text()
    assert max(bars_seen, default=0) >= 1  # napari's progress bar was built and shown
    assert [r for r in napari_error_hooks if str(getattr(r, "severity", "")).lower() == "error"] == []
    if reserve:
        assert log.resized == [], log.resized
    else:
        assert any(name == type(bar).__name__ and new[1] > old[1] for name, old, new in log.resized), log.resized
