"""The "Evaluate segmentation" dock widget: FISBe metrics of a prediction layer against a
ground-truth layer, with the errors as layers you can jump to.

The ground truth may be any Labels layer; a layer read from a FISBe file carries the full
instance stack (with overlaps) in ``metadata["fisbe_instances"]`` and its dim neurons in
``metadata["fisbe_dim_neurons"]``, which are then used. The computation is
:func:`napari_neuroseg.metrics.evaluate_iter` in a worker thread; the error layers are built in the
same thread (plain numpy) and added to the viewer in the main thread.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_neuroseg._napari._run_controls import RunControls, RunControlsMixin
from napari_neuroseg.metrics import evaluate_iter, write_csv, write_json
from napari_neuroseg.metrics.report import SUMMARY_KEYS, per_threshold_rows, summary_rows
from napari_neuroseg.runtime.progress import Progress

if TYPE_CHECKING:
    import napari

FISBE_INSTANCES = "fisbe_instances"
FISBE_DIM_NEURONS = "fisbe_dim_neurons"

#: error kind -> (layer name, colour used for the centroid points)
ERROR_KINDS = {
    "missed_gt": ("missed GT", "magenta"),
    "false_positive": ("false positives", "yellow"),
    "false_merge": ("false merges", "red"),
    "false_split": ("false splits", "cyan"),
}

LABELS_OF = {
    "S": "S (0.5 avF1 + 0.5 C)", "avF1": "avF1", "C": "C (coverage)", "clDice_TP": "clDice TP",
    "tp": "tp (TP@0.5 / #GT)", "FS": "FS (false splits)", "FM": "FM (false merges)",
    "n_gt": "# GT", "n_pred": "# predictions", "TP_05": "TP @ 0.5",
}


def _dtype_for(max_id: int):
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_id <= np.iinfo(dt).max:
            return dt
    return np.uint64


def _error_volume(lab: Any, ids: list[int]):
    """A label volume holding only the instances ``ids`` (original ids) of a SparseLabels, and
    their centroids; built from the stored voxel lists (no pass over the full volume)."""
    ids = sorted(set(int(i) for i in ids))
    out = np.zeros(lab.shape, _dtype_for(max(ids)))
    flat = out.reshape(-1)
    cents = {}
    for i in reversed(ids):  # the lower id wins where instances overlap (as in the GT layer)
        keys = lab.coords_of_original(i)
        flat[keys] = i
        cents[i] = tuple(float(c.mean()) if c.size else float("nan")
                         for c in np.unravel_index(keys, lab.shape))
    return out, cents


def evaluate_layers_iter(gt: Any, pred: Any, partly: bool, *, dim_ids: list[int] | None = None):
    """Worker job: evaluate, then build the error volumes and their centroids (numpy only).

    Returns ``(result, errors)`` with ``errors[kind] = (volume, {id: centroid}, items)``.
    """
    result = yield from evaluate_iter(gt, pred, partly, dim_ids=dim_ids, with_instances=True)
    inst = result.pop("_instances")
    err = result["errors"]
    kinds = {
        "missed_gt": (inst["gt"], err["missed_gt"],
                      [(i, f"missed GT {i}") for i in err["missed_gt"]]),
        "false_positive": (inst["pred"], err["false_positive"],
                           [(i, f"false positive: prediction {i}") for i in
                            err["false_positive"]]),
        "false_merge": (inst["pred"], [m["pred"] for m in err["false_merge"]],
                        [(m["pred"], f"false merge: prediction {m['pred']} covers GT "
                          + ", ".join(map(str, m["gts"]))) for m in err["false_merge"]]),
        "false_split": (inst["gt"], [s["gt"] for s in err["false_split"]],
                        [(s["gt"], f"false split: GT {s['gt']} split into predictions "
                          + ", ".join(map(str, s["preds"]))) for s in err["false_split"]]),
    }
    out: dict[str, Any] = {}
    for k, (kind, (lab, ids, items)) in enumerate(kinds.items()):
        yield Progress(k, len(kinds), f"building the {ERROR_KINDS[kind][0]} layer")
        if ids:
            vol, cents = _error_volume(lab, ids)
            out[kind] = (vol, cents, items)
    return result, out


class EvaluateWidget(RunControlsMixin, QWidget):
    """Pick GT and prediction layers, evaluate with the FISBe metrics, inspect the errors."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.result: dict[str, Any] | None = None
        self.error_layers: dict[str, Any] = {}
        self._centroids: dict[tuple[str, int], tuple[float, float, float]] = {}

        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.gt_combo = QComboBox()
        self.pred_combo = QComboBox()
        form.addRow("Ground truth", self.gt_combo)
        form.addRow("Prediction", self.pred_combo)
        self.partly_check = QCheckBox("partly labelled ground truth")
        self.partly_check.setToolTip(
            "Predictions lying mostly in unlabelled background are not false positives")
        form.addRow("", self.partly_check)
        layout.addLayout(form)

        self.controls = RunControls(
            "Evaluate", on_run=self.run, on_cancel=self.cancel, progress_bar=True,
            running_text="Evaluating…", cancel_text="Cancelled.", cancelled_text=None,
        )
        layout.addWidget(self.controls)

        self.summary = QTableWidget(len(SUMMARY_KEYS), 2)
        self.summary.setHorizontalHeaderLabels(["metric", "value"])
        self.summary.verticalHeader().setVisible(False)
        self.summary.setEditTriggers(QAbstractItemView.NoEditTriggers)
        layout.addWidget(self.summary)
        self.thresholds = QTableWidget(0, 7)
        self.thresholds.setHorizontalHeaderLabels(
            ["threshold", "TP", "FP", "FN", "precision", "recall", "F1"])
        self.thresholds.verticalHeader().setVisible(False)
        self.thresholds.setEditTriggers(QAbstractItemView.NoEditTriggers)
        layout.addWidget(self.thresholds)

        layout.addWidget(QLabel("Errors (click to jump):"))
        self.errors_list = QListWidget()
        self.errors_list.itemClicked.connect(self._jump)
        layout.addWidget(self.errors_list)

        row = QHBoxLayout()
        self.csv_button = QPushButton("Export CSV…")
        self.csv_button.clicked.connect(lambda: self._export("csv"))
        self.json_button = QPushButton("Export JSON…")
        self.json_button.clicked.connect(lambda: self._export("json"))
        for b in (self.csv_button, self.json_button):
            b.setEnabled(False)
            row.addWidget(b)
        layout.addLayout(row)

        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.events.changed.connect(self._refresh_layers)
        self._refresh_layers()

    # ---------------------------------------------------------------- layers
    def _label_layers(self) -> list[Any]:
        from napari.layers import Labels

        names = set(v[0] for v in ERROR_KINDS.values())
        return [ly for ly in self.viewer.layers if isinstance(ly, Labels)
                and ly.name not in names]

    def _refresh_layers(self, *_: Any) -> None:
        layers = [ly.name for ly in self._label_layers()]
        for combo, prefer in ((self.gt_combo, ("instances", "gt", "truth")),
                              (self.pred_combo, ("cleaned", "pred", "seg", "label"))):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(layers)
            if current in layers:
                combo.setCurrentText(current)
            else:
                for p in prefer:
                    hit = [n for n in layers if p in n.lower()]
                    if hit:
                        combo.setCurrentText(hit[0])
                        break
            combo.blockSignals(False)
        if self.gt_combo.currentText() == self.pred_combo.currentText() and len(layers) > 1:
            other = [n for n in layers if n != self.gt_combo.currentText()]
            self.pred_combo.setCurrentText(other[-1])

    @staticmethod
    def _source(layer: Any) -> tuple[Any, list[int] | None]:
        """What to evaluate for a layer: its FISBe instance stack if it carries one (read
        straight from its file when the stack is lazy: the fast chunk reader), else its data."""
        md = getattr(layer, "metadata", {}) or {}
        stack = md.get(FISBE_INSTANCES)
        if stack is None:
            return layer.data, None
        dim = list(md.get(FISBE_DIM_NEURONS) or [])
        src = md.get("fisbe_source")
        if not isinstance(stack, np.ndarray) and src:
            try:
                from napari_neuroseg.metrics.files import open_labels

                arr, _ = open_labels(src)
                if tuple(arr.shape) == tuple(stack.shape):
                    return arr, dim
            except Exception:  # noqa: BLE001 - fall back to the layer's own (lazy) stack
                pass
        return stack, dim

    # ---------------------------------------------------------------- running
    def run(self) -> None:
        """Start the evaluation of the chosen layers in a worker thread."""
        if self.controls.busy:
            return
        try:
            gt_layer = self.viewer.layers[self.gt_combo.currentText()]
            pred_layer = self.viewer.layers[self.pred_combo.currentText()]
        except (KeyError, ValueError):
            self.status.setText("Choose a ground-truth and a prediction Labels layer.")
            return
        if gt_layer is pred_layer:
            self.status.setText("Ground truth and prediction must be different layers.")
            return
        gt, dim = self._source(gt_layer)
        pred, _ = self._source(pred_layer)
        self.result = None
        self.controls.start(
            evaluate_layers_iter, gt, pred, self.partly_check.isChecked(),
            dim_ids=dim, on_return=self._on_result, desc="Evaluate segmentation",
        )

    def _on_result(self, value: tuple[dict[str, Any], dict[str, Any]]) -> None:
        result, errors = value
        self.result = result
        self._fill_tables(result)
        self._add_error_layers(errors)
        warn = " ".join(f"Warning: {w}." for w in result["warnings"])
        self.status.setText(("Done. " + warn).strip())
        self.csv_button.setEnabled(True)
        self.json_button.setEnabled(True)

    # ---------------------------------------------------------------- display
    def _fill_tables(self, result: dict[str, Any]) -> None:
        rows = summary_rows({"sample": result})
        self.summary.setRowCount(len(SUMMARY_KEYS))
        for r, (key, val) in enumerate(zip(rows[0][1:], rows[1][1:])):
            self.summary.setItem(r, 0, QTableWidgetItem(LABELS_OF.get(key, key)))
            self.summary.setItem(r, 1, QTableWidgetItem(val))
        self.summary.resizeColumnsToContents()
        th_rows = per_threshold_rows(result)[1:]
        self.thresholds.setRowCount(len(th_rows))
        for r, row in enumerate(th_rows):
            for c, val in enumerate(row):
                self.thresholds.setItem(r, c, QTableWidgetItem(val))
        self.thresholds.resizeColumnsToContents()

    def _add_error_layers(self, errors: dict[str, Any]) -> None:
        self.errors_list.clear()
        self._centroids.clear()
        for kind, (name, colour) in ERROR_KINDS.items():
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            self.error_layers.pop(kind, None)
            if kind not in errors:
                continue
            vol, cents, items = errors[kind]
            scale = None
            try:
                scale = self.viewer.layers[self.gt_combo.currentText()].scale
            except (KeyError, ValueError):
                pass
            layer = self.viewer.add_labels(vol, name=name, opacity=0.8,
                                           scale=scale if scale is not None else None)
            layer.metadata["neuroseg_error_kind"] = kind
            try:  # one colour per kind of error, whatever the ids
                from napari.utils.colormaps import DirectLabelColormap

                layer.colormap = DirectLabelColormap(
                    color_dict={None: colour, 0: "transparent"})
            except Exception:  # noqa: BLE001 - cosmetic only
                pass
            self.error_layers[kind] = layer
            for i, text in items:
                self._centroids[(kind, int(i))] = cents[int(i)]
                it = QListWidgetItem(text)
                it.setData(256, (kind, int(i)))  # Qt.UserRole
                self.errors_list.addItem(it)

    def jump_to(self, kind: str, obj_id: int) -> None:
        """Centre the view on error ``obj_id`` of ``kind`` and select it in its layer."""
        c = self._centroids.get((kind, int(obj_id)))
        layer = self.error_layers.get(kind)
        if c is None or layer is None or any(math.isnan(v) for v in c):
            return
        world = tuple(np.asarray(c) * np.asarray(layer.scale[-3:]) +
                      np.asarray(layer.translate[-3:]))
        nd = self.viewer.dims.ndim
        for k in range(min(3, nd)):
            self.viewer.dims.set_point(nd - 3 + k, float(world[k]))
        self.viewer.scene.camera.center = world
        layer.selected_label = int(obj_id)
        self.viewer.layers.selection.active = layer

    def _jump(self, item: QListWidgetItem) -> None:
        data = item.data(256)
        if data:
            self.jump_to(*data)

    # ---------------------------------------------------------------- export
    def export_csv(self, path: str) -> None:
        """The summary and per-threshold tables as CSV."""
        if self.result is None:
            return
        rows = summary_rows({"sample": self.result}) + [[]] + per_threshold_rows(self.result)
        write_csv(path, rows)

    def export_json(self, path: str) -> None:
        """The full result (metrics, matching, errors, official layout) as JSON."""
        if self.result is not None:
            write_json(path, self.result)

    def _export(self, kind: str) -> None:
        path, _ = QFileDialog.getSaveFileName(self, f"Export {kind.upper()}", f"metrics.{kind}",
                                              f"{kind.upper()} (*.{kind})")
        if path:
            (self.export_csv if kind == "csv" else self.export_json)(path)
