"""The "Batch" dock widget: run a task over files, huge volumes or open layers.

Collects parameters and calls :func:`napari_neuroseg.batch.run_batch` in a worker thread via
:class:`~napari_neuroseg._napari._run_controls.RunControls` (Run/Cancel, status, error
notifications). Results arrive in the main thread and fill the table; a row's output opens in the
viewer with one click ("Open result" or a double click).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_neuroseg._napari._dock import DockLifecycleMixin, fit_controls, scrollable
from napari_neuroseg._napari._notify import notify_error
from napari_neuroseg._napari._run_controls import RunControls, RunControlsMixin
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
        self._param_edits: dict[str, QLineEdit] = {}

        content = QWidget()
        layout = QVBoxLayout(content)
        form = QFormLayout()
        # inputs
        row = QHBoxLayout()
        self.inputs_edit = QLineEdit()
        self.inputs_edit.setPlaceholderText("folder, glob (data/*.tif) or files separated by ';'")
        self.inputs_edit.setToolTip("The input volumes: a folder, a glob (data/*.tif) or files separated by ';'")
        browse = QPushButton("Folder…")
        browse.setToolTip("Choose an input folder")
        browse.clicked.connect(self._browse_inputs)
        row.addWidget(self.inputs_edit)
        row.addWidget(browse)
        form.addRow("Inputs", row)
        self.use_layers = QCheckBox("use the selected image layers instead")
        self.use_layers.setToolTip("Run on the image layers selected in the layer list instead of files")
        form.addRow("", self.use_layers)
        # task
        self.task_combo = QComboBox()
        self.task_combo.addItems(list_tasks())
        self.task_combo.setToolTip("What to run on each input; its parameters appear below")
        self.task_combo.currentTextChanged.connect(self._build_params)
        form.addRow("Task", self.task_combo)
        layout.addLayout(form)
        self.params_box = QGroupBox("Parameters")
        self.params_form = QFormLayout(self.params_box)
        layout.addWidget(self.params_box)
        # output + engine
        form2 = QFormLayout()
        row = QHBoxLayout()
        self.outdir_edit = QLineEdit()
        self.outdir_edit.setToolTip("Folder for the outputs and the summary CSV (created if missing)")
        browse_out = QPushButton("Folder…")
        browse_out.setToolTip("Choose the output folder")
        browse_out.clicked.connect(self._browse_output)
        row.addWidget(self.outdir_edit)
        row.addWidget(browse_out)
        form2.addRow("Output folder", row)
        self.format_combo = QComboBox()
        self.format_combo.addItems(["tif", "zarr", "ome-zarr"])
        self.format_combo.setToolTip("Output file format; blockwise runs need zarr or ome-zarr")
        form2.addRow("Format", self.format_combo)
        self.block_edit = QLineEdit()
        self.block_edit.setPlaceholderText("Z,Y,X for blockwise (needs zarr/ome-zarr); empty = auto")
        self.block_edit.setToolTip("Block size in voxels, Z,Y,X, for huge volumes processed block by block "
                                   "(needs zarr/ome-zarr); empty = automatic")
        form2.addRow("Block shape", self.block_edit)
        self.engine_combo = QComboBox()
        self.engine_combo.addItems(["local", "scheduler"])
        self.engine_combo.setToolTip("local = this computer; scheduler = a Dask cluster at the address below")
        form2.addRow("Engine", self.engine_combo)
        self.scheduler_edit = QLineEdit()
        self.scheduler_edit.setPlaceholderText("tcp://HOST:8786 (Dask scheduler)")
        self.scheduler_edit.setToolTip("Address of the Dask scheduler (engine 'scheduler' only)")
        form2.addRow("Scheduler", self.scheduler_edit)
        self.resume_check = QCheckBox("resume (skip finished outputs)")
        self.resume_check.setToolTip("Skip the inputs whose outputs are already complete (continue a cancelled run)")
        form2.addRow("", self.resume_check)
        layout.addLayout(form2)
        # run / cancel / status
        self.controls = RunControls(
            "Run", on_run=self.run, on_cancel=self.cancel, running_text="starting…",
            cancel_text="cancelling after the current step…",
            cancelled_text="cancelled — tick 'resume' to continue later",
        )
        self.controls.run_button.setToolTip("Run the task over the inputs (a row per input below)")
        self.controls.cancel_button.setToolTip("Stop after the current file or block; finished outputs stay")
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
        self._build_params(self.task_combo.currentText())
        fit_controls(content)
        self.scroll = scrollable(self, content)  # fits a small screen; no minimum height

    # -- dock lifecycle (_dock.py) -----------------------------------------------------------------
    def on_dock_closed(self) -> None:
        self.cancel()  # stop after the current file/block (resume continues later)

    # -- form helpers ---------------------------------------------------------------------------
    def _build_params(self, name: str) -> None:
        while self.params_form.rowCount():
            self.params_form.removeRow(0)
        self._param_edits = {}
        task = get_task(name)
        for p in task.params:
            edit = QLineEdit()
            edit.setPlaceholderText("" if p.default is None else str(p.default))
            edit.setToolTip(p.help or f"task parameter {p.name}; empty = {p.default}")
            self.params_form.addRow(p.name, edit)
            self._param_edits[p.name] = edit

    def _browse_inputs(self) -> None:  # pragma: no cover - dialog
        d = QFileDialog.getExistingDirectory(self, "Input folder")
        if d:
            self.inputs_edit.setText(d)

    def _browse_output(self) -> None:  # pragma: no cover - dialog
        d = QFileDialog.getExistingDirectory(self, "Output folder")
        if d:
            self.outdir_edit.setText(d)

    def set_param(self, name: str, value: Any) -> None:
        """Set a task parameter field (for scripts and tests)."""
        self._param_edits[name].setText(str(value))

    def collect(self) -> dict[str, Any]:
        """The run_batch arguments from the form; NeurosegError for a bad field."""
        task = self.task_combo.currentText()
        params = {k: e.text().strip() for k, e in self._param_edits.items() if e.text().strip()}
        if self.use_layers.isChecked():
            from napari.layers import Image

            layers = [ly for ly in self.viewer.layers.selection if isinstance(ly, Image)]
            if not layers:
                raise NeurosegError("no image layer is selected", fix="select image layers or untick 'use the selected image layers'")
            inputs: list = [(ly.name, ly.data) for ly in layers]
        else:
            text = self.inputs_edit.text().strip()
            if not text:
                raise NeurosegError("no inputs given", fix="enter a folder, a glob or files")
            inputs = [t.strip() for t in text.split(";") if t.strip()]
        outdir = self.outdir_edit.text().strip()
        if not outdir:
            raise NeurosegError("no output folder given", fix="choose an output folder")
        block = self.block_edit.text().strip()
        block_shape = None
        if block:
            try:
                block_shape = tuple(int(v) for v in block.replace(" ", ",").split(",") if v)
            except ValueError:
                block_shape = ()
            if len(block_shape) != 3 or min(block_shape) < 1:
                raise NeurosegError(f"bad block shape {block!r}", fix="write three positive sizes Z,Y,X, e.g. 64,256,256")
        scheduler = None
        if self.engine_combo.currentText() == "scheduler":
            scheduler = self.scheduler_edit.text().strip()
            if not scheduler:
                raise NeurosegError("no scheduler address given", fix="enter tcp://HOST:PORT or choose the local engine")
        return {
            "task": task, "inputs": inputs, "outdir": outdir, "params": params,
            "fmt": self.format_combo.currentText(), "block_shape": block_shape,
            "scheduler": scheduler, "resume": self.resume_check.isChecked(),
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
        """Add the output of table row ``row`` to the viewer as a labels layer."""
        rec = self.row_record(row)
        if not rec or rec.get("status") not in ("done", "skipped") or not rec.get("output"):
            self.status_label.setText("choose a finished row to open")
            return None
        out = Path(rec["output"])
        if out.suffix == ".json":
            import json

            self.status_label.setText(json.dumps({k: v for k, v in rec.items() if k not in ("input", "output")})[:500])
            return None
        # lazily (dask), so huge blockwise outputs open at once
        data = read_output(out, lazy=True)
        scale, unit = _voxel_size_of(out, rec.get("input"))
        return self.viewer.add_labels(data, name=out.name.split(".")[0], scale=scale,
                                      metadata={"unit": unit} if unit else {})


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
