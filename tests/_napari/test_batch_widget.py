"""The Batch dock widget: form → run in a worker → results table → open a result."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_neuroseg._napari import _notify
from napari_neuroseg._napari.batch_widget import BatchWidget
from napari_neuroseg.errors import NeurosegError

pytestmark = pytest.mark.gui


def _blobs(seed: int) -> np.ndarray:
    img = np.zeros((12, 24, 24), np.uint16)
    img[2:6, 3:9, 3:9] = 900
    img[7:11, 12 + seed : 18 + seed, 10:16] = 900
    return img


def _open(qtbot, w, row: int):
    """*Open result* on ``row``; the layer it adds once the worker has read the output."""
    before = w.opened_layer
    assert w.open_result(row) is not None
    qtbot.waitUntil(lambda: w.opened_layer is not before and w.opened_layer in w.viewer.layers, timeout=30000)
    return w.opened_layer


@pytest.fixture
def errors_shown(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(_notify, "show_error", shown.append)
    return shown


def test_batch_widget_runs_a_folder_and_opens_a_result(make_napari_viewer, qtbot, tmp_path, errors_shown):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        tifffile.imwrite(d / f"v{i}.tif", _blobs(i))
    (d / "broken.tif").write_bytes(b"garbage")
    viewer = make_napari_viewer()
    w = BatchWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.form.inputs.value = str(d)
    w.form.outdir.value = str(tmp_path / "out")
    w.form.task.value = "threshold"
    w.set_param("threshold", 500)
    assert w.form.params.threshold.value == "500"  # one field per task parameter, in the form
    w.form.format.value = "zarr"
    w.run()
    qtbot.waitUntil(lambda: w.result is not None and w.run_button.isEnabled(), timeout=30000)
    assert w.table.rowCount() == 4
    statuses = sorted(w.table.item(r, 1).text() for r in range(4))
    assert statuses == ["done", "done", "done", "failed"]
    assert w.result.counts == {"done": 3, "failed": 1}
    row = next(r for r in range(4) if w.table.item(r, 1).text() == "done")
    layer = _open(qtbot, w, row)
    assert layer is not None and layer in viewer.layers
    assert int(np.asarray(layer.data).max()) == 2
    assert errors_shown == []


def test_batch_widget_layers_input_and_form_errors(make_napari_viewer, qtbot, tmp_path, errors_shown):
    viewer = make_napari_viewer()
    w = BatchWidget(viewer)
    assert w.run() is None and errors_shown  # no inputs
    viewer.add_image(_blobs(0), name="blobs")
    w.form.use_layers.value = True
    w.form.outdir.value = str(tmp_path / "out")
    w.set_param("threshold", 500)
    w.form.block_shape.value = "6,12,12"
    w.form.format.value = "ome-zarr"
    worker = w.run()
    assert worker is not None
    qtbot.waitUntil(lambda: w.result is not None and w.run_button.isEnabled(), timeout=30000)
    assert w.table.item(0, 1).text() == "done"
    layer = _open(qtbot, w, 0)
    assert int(np.asarray(layer.data).max()) == 2  # stitched across 8 blocks
    w.form.engine.value = "scheduler"
    n = len(errors_shown)
    assert w.run() is None and len(errors_shown) == n + 1  # no scheduler address
    # a bad block shape is a message naming the fix, not an AssertionError (also under python -O)
    w.form.engine.value = "local"
    w.form.use_layers.value = False
    w.form.inputs.value = str(tmp_path)
    for bad in ("6,12", "6,12,x", "0,12,12", "6,12,12,12"):
        w.form.block_shape.value = bad
        with pytest.raises(NeurosegError, match="bad block shape") as exc:
            w.collect()
        assert "three positive sizes" in exc.value.fix
        assert w.run() is None and "bad block shape" in w.status_label.text()


def test_batch_widget_cancel(make_napari_viewer, qtbot, tmp_path, errors_shown):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(30):
        tifffile.imwrite(d / f"v{i:02d}.tif", _blobs(i % 4))
    viewer = make_napari_viewer()
    w = BatchWidget(viewer)
    w.form.inputs.value = str(d)
    w.form.outdir.value = str(tmp_path / "out")
    w.set_param("threshold", 500)
    w.set_param("sigma", 2)
    w.run()
    qtbot.waitUntil(lambda: w.table.rowCount() >= 1, timeout=30000)
    w.cancel()
    qtbot.waitUntil(lambda: w.run_button.isEnabled(), timeout=30000)
    assert w.result is None and "cancel" in w.status_label.text()
    assert len(list((tmp_path / "out").glob("*_threshold.tif"))) < 30


def test_batch_result_opens_with_the_voxel_size_of_its_image(make_napari_viewer, qtbot, tmp_path, errors_shown):
    """*Open result* keeps the voxel size (it opened at scale 1,1,1 against the image's 2,1,1)."""
    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(d / "v0.tif", _blobs(0), imagej=True, resolution=(1.0, 1.0),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    viewer = make_napari_viewer()
    w = BatchWidget(viewer)
    w.form.inputs.value = str(d)
    w.form.outdir.value = str(tmp_path / "out")
    w.form.task.value = "threshold"
    w.set_param("threshold", 500)
    w.run()
    qtbot.waitUntil(lambda: w.result is not None and w.run_button.isEnabled(), timeout=30000)
    layer = _open(qtbot, w, 0)
    assert layer is not None
    np.testing.assert_allclose(layer.scale, (2.0, 1.0, 1.0))
    assert errors_shown == []


def _finished_run(qtbot, viewer, tmp_path, fmt: str = "zarr") -> BatchWidget:
    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(d / "v0.tif", _blobs(0))
    w = BatchWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.form.inputs.value = str(d)
    w.form.outdir.value = str(tmp_path / "out")
    w.set_param("threshold", 500)
    w.form.format.value = fmt
    w.run()
    qtbot.waitUntil(lambda: w.result is not None and w.run_button.isEnabled(), timeout=30000)
    return w


def test_open_result_reads_and_builds_the_layer_in_a_worker(make_napari_viewer, qtbot, tmp_path, errors_shown,
                                                            monkeypatch):
    """Open result: the output is read and its layer built off the main thread (in memory,
    uint16, painting overlays hidden until their mode is picked); the main thread only adds it,
    its redraw held until the next event-loop pass; the button returns at once."""
    import threading

    from napari_neuroseg._napari import batch_widget

    viewer = make_napari_viewer()
    w = _finished_run(qtbot, viewer, tmp_path)
    built_in: list[str] = []
    real = batch_widget.output_layer

    def spy(*args):
        built_in.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(batch_widget, "output_layer", spy)
    holds: list[bool] = []
    monkeypatch.setattr(batch_widget.StagedDisplay, "start",
                        lambda self, steps: holds.append(True) or batch_widget.StagedDisplay.flush(self)
                        or [f() for f in steps])
    n = len(viewer.layers)
    assert w.open_result(0) is not None
    assert len(viewer.layers) == n  # nothing read or added in the click itself
    assert "opening" in w.status_label.text()
    qtbot.waitUntil(lambda: w.opened_layer is not None, timeout=30000)
    layer = w.opened_layer
    assert built_in and built_in[0] != threading.main_thread().name
    assert holds == [True]  # added through the staged display (one step, redraw a pass later)
    assert layer in viewer.layers and layer.name == "v0_threshold"
    assert isinstance(layer.data, np.ndarray) and layer.data.dtype == np.uint16
    assert int(layer.data.max()) == 2
    assert not layer._overlays["polygon"].visible  # made when the polygon tool is picked
    layer.mode = "polygon"
    assert layer._overlays["polygon"].visible
    assert "opened v0_threshold" in w.status_label.text()
    assert errors_shown == []


def test_open_result_redraw_after_the_insert_and_close(make_napari_viewer, qtbot, tmp_path, errors_shown):
    """The insert runs with the canvas held; the canvas is repainted in a later event-loop pass.
    A layer still waiting when the dock closes is added at once (nothing asked for is lost)."""
    from qtpy.QtOpenGLWidgets import QOpenGLWidget

    viewer = make_napari_viewer()
    w = _finished_run(qtbot, viewer, tmp_path)
    canvas = [c for c in w.window().findChildren(QOpenGLWidget)]
    assert canvas
    seen: list[bool] = []
    viewer.layers.events.inserted.connect(lambda e: seen.append(all(not c.updatesEnabled() for c in canvas)))
    layer = _open(qtbot, w, 0)
    assert seen == [True]  # held during napari's insert
    qtbot.waitUntil(lambda: all(c.updatesEnabled() for c in canvas), timeout=5000)  # released a pass later
    assert layer.name == "v0_threshold"
    # the dock closes while an opened output waits for its pass: it is added at once
    waiting: list = []
    w.arrival.start([lambda: None, lambda: waiting.append("added")])
    assert w.arrival.pending
    viewer.window.remove_dock_widget(w.parent() if w.parent() is not None else w)
    assert waiting == ["added"]


def test_open_result_of_a_deleted_output_is_an_error_message(make_napari_viewer, qtbot, tmp_path, errors_shown):
    import shutil

    viewer = make_napari_viewer()
    w = _finished_run(qtbot, viewer, tmp_path)
    shutil.rmtree(w.row_record(0)["output"])
    n = len(viewer.layers)
    assert w.open_result(0) is not None
    qtbot.waitUntil(lambda: bool(errors_shown), timeout=30000)
    assert "cannot open the result" in w.status_label.text()
    assert len(viewer.layers) == n and w.opened_layer is None



def test_batch_widget_shows_per_file_and_per_block_progress(make_napari_viewer, qtbot, tmp_path, errors_shown,
                                                            monkeypatch):
    """The status line names the file ([k/n] name) and, blockwise, the block being worked on, with
    an ETA once something finished (issue 17: it said 'starting…' for a whole file)."""
    d = tmp_path / "in"
    d.mkdir()
    for i in range(2):
        tifffile.imwrite(d / f"v{i}.tif", _blobs(i))
    viewer = make_napari_viewer()
    w = BatchWidget(viewer)
    w.form.inputs.value = str(d)
    w.form.outdir.value = str(tmp_path / "out")
    w.set_param("threshold", 500)
    w.form.format.value = "zarr"
    w.form.block_shape.value = "6,12,12"
    from napari_neuroseg._napari import _run_controls

    start = _run_controls.start_worker  # every step sent (not rate-limited), so the test sees the blocks
    monkeypatch.setattr(_run_controls, "start_worker", lambda *a, **k: start(*a, **{**k, "progress_interval": 0}))
    texts: list[str] = []
    show = w.status.setText
    w.status.setText = lambda t: (texts.append(t), show(t))[1]  # every text the status line got
    w.run()
    qtbot.waitUntil(lambda: w.result is not None and w.run_button.isEnabled(), timeout=60000)
    steps = [t for t in texts if t.startswith("[")]
    assert any(t.startswith("[1/2] v0: ") for t in steps) and any(t.startswith("[2/2] v1: ") for t in steps), texts
    assert any("block" in t and "/8" in t for t in steps), steps  # 2 x 2 x 2 blocks per file
    assert any("ETA" in t for t in steps), steps
    assert w.table.rowCount() == 2 and texts[-1].startswith("finished: 2 done")


def test_batch_dock_imports_a_runs_libraries_in_the_background(make_napari_viewer, qtbot):
    """Opening the dock starts (once per process) a background import of what a local run needs
    (``batch.preload``): the first run's job no longer imports ~550 modules (their objects set
    off a full garbage collection of the process during that run). Picking the *scheduler*
    engine imports Dask's ``distributed`` the same way; the local engine does not need it."""
    import sys
    import threading

    from napari_neuroseg import batch
    from napari_neuroseg._napari import _workers, batch_widget

    viewer = make_napari_viewer()
    w = BatchWidget(viewer)
    th = _workers._BACKGROUND.get(batch_widget.PRELOAD_THREAD)
    assert th is not None and th.name == batch_widget.PRELOAD_THREAD
    qtbot.waitUntil(lambda: th.ident is not None and not th.is_alive(), timeout=60000)
    assert th.ident != threading.main_thread().ident
    assert all(m in sys.modules for m in batch.RUN_MODULES)
    BatchWidget(viewer)  # a second dock does not start another
    assert _workers._BACKGROUND[batch_widget.PRELOAD_THREAD] is th

    w.form.engine.value = "scheduler"
    tc = _workers._BACKGROUND.get(batch_widget.PRELOAD_CLUSTER_THREAD)
    assert tc is not None and tc is not th
    qtbot.waitUntil(lambda: tc.ident is not None and not tc.is_alive(), timeout=60000)
    assert "distributed" in sys.modules


def test_the_chosen_task_s_kernels_are_readied_in_the_background(make_napari_viewer, monkeypatch):
    """Choosing a task readies its numba kernels in the background (the nuclei NMS, the neurons
    post-processing, the metrics' thinning), not in the first run's job."""
    from napari_neuroseg._napari import _workers, batch_widget

    started = []
    monkeypatch.setattr(_workers, "warm_nuclei", lambda: started.append("nuclei"))
    monkeypatch.setattr(_workers, "warm_neurons", lambda: started.append("neurons"))
    monkeypatch.setattr(_workers, "warm_metrics", lambda *a: started.append("metrics"))
    w = batch_widget.BatchWidget(make_napari_viewer())
    for task in ("neurons", "threshold", "evaluate", "nuclei"):
        w.form.task.value = task
    assert started == ["neurons", "metrics", "nuclei"]
