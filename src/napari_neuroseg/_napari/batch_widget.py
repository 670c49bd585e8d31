"""The "Batch" dock widget: run a task over files, huge volumes or open layers.

Collects parameters and calls :func:`napari_neuroseg.batch.run_batch` in a worker thread via
:class:`~napari_neuroseg._napari._run_controls.RunControls` (Run/Cancel, status, error
notifications). Results arrive in the main thread and fill the table; a row's output opens in the
viewer with one click ("Open result" or a double click): it is read and its Labels layer built in
a worker thread (:func:`output_layer`), and the main thread only inserts the layer, its redraw
in the next event-loop pass (:class:`~napari_neuroseg._napari._display.StagedDisplay`).

The form is a :class:`magicgui.widgets.Container` (``dock.form``: ``inputs``, ``use_layers``,
``task``, ``params`` — one text field per parameter of the chosen task, rebuilt when the task
changes, empty = the task's default —, ``outdir``, ``format``, ``block_shape``, ``engine``,
``scheduler``, ``resume``); the run controls, results table and "Open result" stay hand-written
Qt. The folder fields are read as typed text (``inputs`` may be a glob or files joined by ';').
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, Container, LineEdit
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_neuroseg._napari._display import StagedDisplay, show_overlays_on_mode
from napari_neuroseg._napari._dock import DockLifecycleMixin, fit_controls, scrollable
from napari_neuroseg._napari._forms import fit_form, path_edit
from napari_neuroseg._napari._notify import error_message, notify_error
from napari_neuroseg._napari._run_controls import RunControls, RunControlsMixin
from napari_neuroseg._napari._workers import JobRuntimeError, run_in_background, warm_task
from napari_neuroseg.batch import get_task, list_tasks, read_output, run_batch
from napari_neuroseg.errors import NeurosegError

if TYPE_CHECKING:
    import napari

COLUMNS = ("input", "status", "n_objects", "seconds", "output")


class BatchWidget(DockLifecycleMixin, RunControlsMixin, QWidget):
    """Batch runs from napari: inputs, task + parameters, output, engine, progress, results."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.result: Any = None
        #: the last output opened by *Open result* (its layer, once in the viewer)
        self.opened_layer: Any = None
        self._opening: set[Any] = set()  # the workers reading outputs (kept alive until they end)
        self.arrival = StagedDisplay(self)  # an opened output's insert, its redraw a pass later

        inputs = path_edit("inputs", "Inputs", "d", placeholder="folder, glob (data/*.tif) or files separated by ';'",
                           tooltip="The input volumes: a folder, a glob (data/*.tif) or files separated by ';'",
                           browse_text="Folder…", browse_tip="Choose an input folder")
        use_layers = CheckBox(name="use_layers", text="use the selected image layers instead",
                              tooltip="Run on the image layers selected in the layer list instead of files")
        task = ComboBox(name="task", label="Task", choices=list_tasks(),
                        tooltip="What to run on each input; its parameters appear below")
        self.params = Container(name="params", label="Parameters", labels=True,
                                tooltip="The chosen task's parameters (empty field = the task's default)")
        self.params.margins = (0, 0, 0, 0)
        outdir = path_edit("outdir", "Output folder", "d",
                           tooltip="Folder for the outputs and the summary CSV (created if missing)",
                           browse_text="Folder…", browse_tip="Choose the output folder")
        fmt = ComboBox(name="format", label="Format", choices=["tif", "zarr", "ome-zarr"],
                       tooltip="Output file format; blockwise runs need zarr or ome-zarr")
        block = LineEdit(name="block_shape", label="Block shape",
                         tooltip="Block size in voxels, Z,Y,X, for huge volumes processed block by block "
                                 "(needs zarr/ome-zarr); empty = automatic")
        block.native.setPlaceholderText("Z,Y,X for blockwise (needs zarr/ome-zarr); empty = auto")
        engine = ComboBox(name="engine", label="Engine", choices=["local", "scheduler"],
                          tooltip="local = this computer; scheduler = a Dask cluster at the address below")
        scheduler = LineEdit(name="scheduler", label="Scheduler",
                             tooltip="Address of the Dask scheduler (engine 'scheduler' only)")
        scheduler.native.setPlaceholderText("tcp://HOST:8786 (Dask scheduler)")
        resume = CheckBox(name="resume", text="resume (skip finished outputs)",
                          tooltip="Skip the inputs whose outputs are already complete (continue a cancelled run)")
        self.form = Container(name="batch_form", widgets=[
            inputs, use_layers, task, self.params, outdir, fmt, block, engine, scheduler, resume])
        self.form.margins = (0, 0, 0, 0)
        task.changed.connect(self._build_params)
        task.changed.connect(warm_task)  # the task's numba kernels, readied while the form is filled in

        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addWidget(self.form.native)
        # run / cancel / status
        self.controls = RunControls(
            "Run", on_run=self.run, on_cancel=self.cancel, running_text="starting…",
            cancel_text="cancelling after the current step…",
            cancelled_text="cancelled — tick 'resume' to continue later",
            run_tip="Run the task over the inputs (a row per input below)",
            cancel_tip="Stop after the current file or block; finished outputs stay",
        )
        layout.addWidget(self.controls)
        # results
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.cellDoubleClicked.connect(lambda r, _c: self.open_result(r))
        self.table.setToolTip("One row per input: status, objects found, seconds, output; double-click opens it")
        corner = self.table.findChild(QAbstractButton)
        if corner is not None:  # the table's select-all corner
            corner.setToolTip("Select all rows")
        layout.addWidget(self.table)
        self.open_button = QPushButton("Open result")
        self.open_button.setToolTip("Open the selected row's output as a Labels layer (or double-click the row)")
        self.open_button.clicked.connect(lambda: self.open_result(self.table.currentRow()))
        layout.addWidget(self.open_button)
        self._build_params(task.value)
        fit_controls(content)
        self.scroll = scrollable(self, content)  # fits a small screen; no minimum height
        fit_form(self.form, self.scroll)
        preload_batch()
        warm_task(task.value)
        engine.changed.connect(lambda value: value == "scheduler" and preload_batch(cluster=True))

    # -- dock lifecycle (_dock.py) -----------------------------------------------------------------
    def on_dock_closed(self) -> None:
        self.cancel()  # stop after the current file/block (resume continues later)
        self.arrival.flush()  # an opened output still waiting for its pass is added now

    # -- form helpers ---------------------------------------------------------------------------
    def _build_params(self, name: str) -> None:
        """One text field per parameter of task ``name`` (``dock.params.<name>``; empty = default)."""
        self.params.clear()
        for p in get_task(name).params:
            edit = LineEdit(name=p.name, label=p.name,
                            tooltip=p.help or f"task parameter {p.name}; empty = {p.default}")
            edit.native.setPlaceholderText("" if p.default is None else str(p.default))
            self.params.append(edit)

    def set_param(self, name: str, value: Any) -> None:
        """Set a task parameter field (for scripts and tests)."""
        self.params[name].value = str(value)

    def collect(self) -> dict[str, Any]:
        """The run_batch arguments from the form; NeurosegError for a bad field."""
        form = self.form
        task = str(form.task.value)
        params = {e.name: str(e.value).strip() for e in self.params if str(e.value).strip()}
        if form.use_layers.value:
            from napari.layers import Image

            layers = [ly for ly in self.viewer.layers.selection if isinstance(ly, Image)]
            if not layers:
                raise NeurosegError("no image layer is selected", fix="select image layers or untick 'use the selected image layers'")
            inputs: list = [(ly.name, ly.data) for ly in layers]
        else:
            text = str(form.inputs.line_edit.value).strip()
            if not text:
                raise NeurosegError("no inputs given", fix="enter a folder, a glob or files")
            inputs = [t.strip() for t in text.split(";") if t.strip()]
        outdir = str(form.outdir.line_edit.value).strip()
        if not outdir:
            raise NeurosegError("no output folder given", fix="choose an output folder")
        block = str(form.block_shape.value).strip()
        block_shape = None
        if block:
            try:
                block_shape = tuple(int(v) for v in block.replace(" ", ",").split(",") if v)
            except ValueError:
                block_shape = ()
            if len(block_shape) != 3 or min(block_shape) < 1:
                raise NeurosegError(f"bad block shape {block!r}", fix="write three positive sizes Z,Y,X, e.g. 64,256,256")
        scheduler = None
        if form.engine.value == "scheduler":
            scheduler = str(form.scheduler.value).strip()
            if not scheduler:
                raise NeurosegError("no scheduler address given", fix="enter tcp://HOST:PORT or choose the local engine")
        return {
            "task": task, "inputs": inputs, "outdir": outdir, "params": params,
            "fmt": str(form.format.value), "block_shape": block_shape,
            "scheduler": scheduler, "resume": bool(form.resume.value),
        }

    # -- running --------------------------------------------------------------------------------
    @property
    def status_label(self) -> Any:
        """The status line (``self.status``)."""
        return self.controls.status

    def run(self) -> Any:
        """Start the batch in a worker thread; returns the worker (None if the form is bad)."""
        if self.controls.busy:
            return None
        try:
            kw = self.collect()
        except NeurosegError as err:
            notify_error(err)
            self.status_label.setText(str(err))
            return None
        self.table.setRowCount(0)
        self.result = None
        task, inputs, outdir = kw.pop("task"), kw.pop("inputs"), kw.pop("outdir")
        return self.controls.start(
            run_batch, task, inputs, outdir, on_yield=self._on_progress, on_return=self._on_done,
            desc=f"batch {task}", **kw,
        )

    def cancel(self) -> None:
        """Stop after the current file/block (finished outputs stay; resume continues)."""
        self.controls.cancel()

    def _on_progress(self, p: Any) -> None:
        rec = getattr(p, "record", None)
        if rec is not None:
            self._add_row(rec)

    def _add_row(self, rec: dict) -> None:
        r = self.table.rowCount()
        self.table.insertRow(r)
        for c, key in enumerate(COLUMNS):
            val = rec.get(key, "")
            text = Path(val).name if key in ("input", "output") and val else str(val)
            item = QTableWidgetItem(text)
            if key in ("output", "input"):
                item.setToolTip(str(val))
            if key == "status" and rec.get("error"):
                item.setToolTip(str(rec["error"]))
            item.setData(256, rec)  # Qt.UserRole
            self.table.setItem(r, c, item)

    def _on_done(self, result: Any) -> None:
        self.result = result
        counts = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items()))
        self.status_label.setText(f"finished: {counts} — summary {result.summary_csv}")

    def row_record(self, row: int) -> dict | None:
        item = self.table.item(row, 0) if row >= 0 else None
        return None if item is None else item.data(256)

    def open_result(self, row: int) -> Any:
        """Open the output of table row ``row`` in the viewer as a Labels layer, at the voxel size
        of the output (else of its input). The output is read and the layer built in a worker
        thread (:func:`output_layer`); the layer is added when it is ready (``opened_layer``).
        Returns that worker (None when the row has no output to open)."""
        rec = self.row_record(row)
        if not rec or rec.get("status") not in ("done", "skipped") or not rec.get("output"):
            self.status_label.setText("choose a finished row to open")
            return None
        out = Path(rec["output"])
        if out.suffix == ".json":
            import json

            self.status_label.setText(json.dumps({k: v for k, v in rec.items() if k not in ("input", "output")})[:500])
            return None
        from napari.qt.threading import create_worker

        self.status_label.setText(f"opening {out.name}…")
        worker = create_worker(_open_job, out, rec.get("input"), _ignore_errors=True)
        self._opening.add(worker)
        worker.returned.connect(self._on_opened)
        worker.errored.connect(self._on_open_error)
        worker.finished.connect(lambda: self._opening.discard(worker))
        worker.start()
        return worker

    def _on_opened(self, layer: Any) -> None:
        """Main thread: add an opened output's layer (built in the worker), its redraw in the next
        event-loop pass; at once if the dock was closed meanwhile (the user asked for it)."""
        def add() -> None:
            self.viewer.layers.append(layer)
            show_overlays_on_mode(layer)
            self.opened_layer = layer

        if self.dock_closed:
            add()
            return
        self.arrival.start([add])
        self.status_label.setText(f"opened {layer.name}")

    def _on_open_error(self, exc: BaseException) -> None:
        if isinstance(exc, JobRuntimeError):
            exc = exc.original
        notify_error(exc)
        if not self.dock_closed:
            self.status_label.setText(f"cannot open the result: {error_message(exc)}")


#: the background thread that imports what a batch run needs when a Batch dock opens
PRELOAD_THREAD = "neuroseg-preload-batch"
#: the one that imports Dask's ``distributed`` when the *scheduler* engine is picked
PRELOAD_CLUSTER_THREAD = "neuroseg-preload-distributed"


def preload_batch(cluster: bool = False) -> None:
    """Import a batch run's libraries (:func:`napari_neuroseg.batch.preload`) in a background
    thread, once per process, while the form is filled in, not in the first run's job: those
    ~550 modules' objects set off a full garbage collection of the process during the run
    (``benchmarks/bench_stalls_batch.py``); the warm-up settles the heap after them
    (``_workers.run_in_background``). ``cluster``: Dask's ``distributed`` too (the scheduler
    engine; the local one runs a thread pool since session 10)."""
    from napari_neuroseg import batch

    if cluster:
        run_in_background(lambda: batch.preload(cluster=True), PRELOAD_CLUSTER_THREAD)
    else:
        run_in_background(batch.preload, PRELOAD_THREAD)


def _open_job(output: Path, input_path: Any) -> Any:
    """:func:`output_layer` in a worker; a ``RuntimeError`` is carried out wrapped (superqt
    would otherwise take it for a deleted worker and report nothing)."""
    from napari_neuroseg.runtime import collector

    try:
        with collector.job():  # nothing of it is frozen meanwhile (runtime/collector.py)
            return output_layer(output, input_path)
    except RuntimeError as exc:
        raise JobRuntimeError(exc) from exc


def output_layer(output: Path, input_path: Any = None) -> Any:
    """Worker thread: the napari Labels layer of a batch output, made ready so that adding it is
    cheap (``_napari/_display.py``): read into memory when it is at most
    :data:`~napari_neuroseg._napari._layers.EAGER_LABEL_BYTES` (as the plugin's reader does:
    napari paints only in-memory labels; larger ones stay lazy, read slice by slice), ``uint16``
    when its ids fit (napari then skips its per-slice remap), its painting overlays made when
    their mode is picked; named after the output, at its voxel size (else its input's)."""
    from napari.layers import Labels

    from napari_neuroseg._napari._display import (
        compact_labels,
        hide_painting_overlays,
        warm_labels_display,
    )
    from napari_neuroseg._napari._layers import EAGER_LABEL_BYTES, maybe_load

    data = compact_labels(maybe_load(read_output(output, lazy=True), EAGER_LABEL_BYTES))
    scale, unit = _voxel_size_of(output, input_path)
    warm_labels_display()
    return hide_painting_overlays(Labels(data, name=output.name.split(".")[0], scale=scale,
                                         metadata={"unit": unit} if unit else {}))


def _voxel_size_of(output: Path, input_path: Any) -> tuple[tuple[float, ...], str | None]:
    """The voxel size (Z, Y, X) and unit a result opens with: the output file's, else its input's
    (so a result lies on its image in the viewer); (1, 1, 1) when neither says."""
    from napari_neuroseg.io import read_image

    for path in (output, input_path):
        if not path:
            continue
        try:
            vol = read_image(path, lazy=True)
        except Exception:  # noqa: BLE001 - unreadable metadata: try the next source
            continue
        scale = tuple(float(v) for v in tuple(vol.scale)[-3:])
        if len(scale) == 3 and any(v != 1.0 for v in scale):
            return scale, (vol.meta or {}).get("unit")
    return (1.0, 1.0, 1.0), None
