"""The "Evaluate segmentation" dock widget: metrics of a prediction layer against a
ground-truth layer, per task, with the errors in one layer you can jump to.

Task (the "Task" box; "auto" guesses it from the ground truth and says what it chose):

- nuclei: instance metrics as ``stardist.matching.matching`` defines them (precision, recall, F1,
  AP at IoU 0.1 … 0.9, mean matched IoU); errors = objects unmatched at IoU 0.5, every object
  counts (:mod:`napari_neuroseg.metrics.nuclei`);
- neurons (FISBe): the FISBe FlyLight preset (:func:`napari_neuroseg.metrics.evaluate_iter`), whose
  size filter (predictions with <= 800 voxels are removed before matching) and partly-labelled
  mode are stated in the widget and at the top of the error list.

The ground truth may be any Labels layer; a layer read from a FISBe file carries the full
instance stack (with overlaps) in ``metadata["fisbe_instances"]`` and its dim neurons in
``metadata["fisbe_dim_neurons"]``, which are then used.

Nothing heavy runs in the main thread: the metrics, the error layer's data (one label volume,
every error kind with its own colour, the user's ids in its features) and its colormap are built in
the worker thread; the main thread fills the tables and adds (or updates) that one layer in one
step. Progress follows the rule of :mod:`napari_neuroseg._napari._workers` (rate-limited, never
re-entered), so jobs may report one step per object.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_neuroseg._napari._display import (
    CanvasCache,
    StagedDisplay,
    hide_painting_overlays,
    repaint_after_next_pass,
    show_overlays_on_mode,
)
from napari_neuroseg._napari._dock import CollapsibleSection, DockLifecycleMixin, fit_controls, scrollable
from napari_neuroseg._napari._forms import (
    LAYER_EVENTS,
    fit_form,
    keep_or_prefer,
    layer_choice,
)
from napari_neuroseg._napari._run_controls import RunControls, RunControlsMixin
from napari_neuroseg.metrics import write_csv, write_json
from napari_neuroseg.metrics.evaluate import MIN_SIZE
from napari_neuroseg.metrics.nuclei import TASK_TITLES, evaluate_task_iter, guess_task
from napari_neuroseg.metrics.report import (
    NUCLEI_SUMMARY_KEYS,
    SUMMARY_KEYS,
    per_threshold_rows,
    summary_rows,
)
from napari_neuroseg.runtime.progress import Progress

if TYPE_CHECKING:
    import napari

FISBE_INSTANCES = "fisbe_instances"
FISBE_DIM_NEURONS = "fisbe_dim_neurons"

#: error kind -> (title, colour in the error layer); the first kind wins where objects overlap
ERROR_KINDS = {
    "missed_gt": ("missed GT", "magenta"),
    "false_positive": ("false positives", "yellow"),
    "false_merge": ("false merges", "red"),
    "false_split": ("false splits", "cyan"),
}
#: the one layer holding every error object (value v has kind ``KIND_ORDER[(v - 1) % 4]``)
ERRORS_LAYER = "evaluation errors"
#: the white outline of the error jumped to (the review queue's outline layer, its own name)
JUMP_OUTLINE_LAYER = "evaluate: current error"
#: the Proofreading dock, as napari.yaml names it (``add_plugin_dock_widget``)
PLUGIN_NAME = "napari-neuroseg"
PROOFREADING_DOCK = "Proofreading"
KIND_ORDER = tuple(ERROR_KINDS)
#: the error layer draws each object's outline (px) in 2D, not a filled patch that reads as one
#: more label among the result's; 3D views show it filled (napari draws contours in 2D only)
ERROR_CONTOUR_PX = 2
#: the width (px) the dock asks for: fits a 1280x800 screen beside the layer list and the canvas
DOCK_WIDTH_HINT = 400
#: the per-threshold table: (header, tooltip)
THRESHOLD_COLUMNS = (
    ("thr.", "Matching threshold: IoU for nuclei, clDice for neurons"),
    ("TP", "True positives: matched pairs (objects)"),
    ("FP", "False positives: unmatched predictions (objects)"),
    ("FN", "False negatives: unmatched ground-truth objects"),
    ("prec.", "Precision = TP / (TP + FP)"),
    ("rec.", "Recall = TP / (TP + FN)"),
    ("F1", "F1 = 2 TP / (2 TP + FP + FN)"),
)
#: the Save… dialog's formats
JSON_FILTER = "Metrics, everything (*.json)"
CSV_FILTER = "Metrics tables (*.csv)"
ERRORS_TIFF_FILTER = "Error layer, TIFF with voxel size (*.tif *.tiff)"
#: choices of the Task box: (data, text)
TASK_CHOICES = (("auto", "auto (guess from the ground truth)"),
                ("nuclei", TASK_TITLES["nuclei"]),
                ("neurons", TASK_TITLES["neurons"]))

LABELS_OF = {
    "S": "S (0.5 avF1 + 0.5 C)", "avF1": "avF1", "C": "C (coverage)", "clDice_TP": "clDice TP",
    "tp": "tp (TP@0.5 / #GT)", "FS": "FS (false splits)", "FM": "FM (false merges)",
    "n_gt": "# GT", "n_pred": "# predictions", "TP_05": "TP @ 0.5",
    "f1": "F1 @ IoU 0.5", "precision": "precision @ 0.5", "recall": "recall @ 0.5",
    "ap": "AP @ 0.5 (TP/(TP+FP+FN))", "mean_matched_iou": "mean matched IoU @ 0.5",
    "panoptic_quality": "panoptic quality @ 0.5", "mean_f1": "mean F1 (IoU 0.1-0.9)",
}


def _dtype_for(max_id: int):
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_id <= np.iinfo(dt).max:
            return dt
    return np.uint64


def _keys_in_array(arr: np.ndarray, ids: list[int]) -> dict[int, np.ndarray]:
    """Flat voxel indices of each of ``ids`` in a label array (one pass)."""
    flat = np.asarray(arr).reshape(-1)
    want = np.asarray(sorted(set(int(i) for i in ids)), dtype=flat.dtype)
    idx = np.flatnonzero(np.isin(flat, want))
    vals = flat[idx]
    order = np.argsort(vals, kind="stable")
    idx, vals = idx[order], vals[order]
    lo = np.searchsorted(vals, want, "left")
    hi = np.searchsorted(vals, want, "right")
    return {int(i): idx[a:b] for i, a, b in zip(want, lo, hi)}


#: what a missed ground-truth object is called in the error list, per task
MISSED_WORDS = {"nuclei": "missed nucleus", "neurons": "missed neuron"}


def _error_entries(result: dict[str, Any]) -> dict[str, list[tuple[int, str, str]]]:
    """kind -> [(id, source "gt"/"pred", list text)] from a result's error lists."""
    err = result["errors"]
    missed = MISSED_WORDS.get(result.get("task"), "missed GT object")
    return {
        "missed_gt": [(int(i), "gt", f"{missed}: GT {i}") for i in err["missed_gt"]],
        "false_positive": [(int(i), "pred", f"false positive: prediction {i}")
                           for i in err["false_positive"]],
        "false_merge": [(int(m["pred"]), "pred", f"false merge: prediction {m['pred']} covers GT "
                         + ", ".join(map(str, m["gts"]))) for m in err["false_merge"]],
        "false_split": [(int(s["gt"]), "gt", f"false split: GT {s['gt']} split into predictions "
                         + ", ".join(map(str, s["preds"]))) for s in err["false_split"]],
    }


def _place(flat_idx: np.ndarray, shape: tuple[int, ...]) -> tuple[Any, Any] | None:
    """Where to look at an object: (the voxel of the object nearest its centroid, its bounding
    box [[lo, hi), ...]); ``None`` for an empty object. The centroid itself may lie off the object
    (a bent neuron, a ring), the chosen voxel never does."""
    if flat_idx.size == 0:
        return None
    coords = np.stack(np.unravel_index(flat_idx, shape), axis=1)
    cent = coords.mean(axis=0)
    voxel = coords[int(np.argmin(((coords - cent) ** 2).sum(axis=1)))]
    bbox = [[int(lo), int(hi) + 1] for lo, hi in zip(coords.min(axis=0), coords.max(axis=0))]
    return tuple(int(x) for x in voxel), bbox


def build_error_layer(result: dict[str, Any], instances: dict[str, Any]) -> dict[str, Any] | None:
    """The error layer's data, built off the main thread (numpy, pandas, a colormap model).

    One label volume: the ``j``-th object of kind ``k`` (``KIND_ORDER``) gets the value
    ``4 j + k + 1``, so a 5-colour cyclic colormap paints each kind in its colour (no per-label
    colour table to compile); ``features`` gives each value its kind and the user's id. Where
    objects of different kinds overlap, the kind listed first in ``ERROR_KINDS`` is shown.
    Returns ``None`` when there is no error, else ``{"data", "features", "colormap", "items"}``
    with ``items`` = [(kind, id, value, place, text)] in list order (``place``: see :func:`_place`).
    """
    import pandas as pd
    from napari.utils.colormaps import CyclicLabelColormap
    from napari.utils.colormaps.standardize_color import transform_color

    entries = _error_entries(result)
    if not any(entries.values()):
        return None
    keys: dict[tuple[str, int], np.ndarray] = {}
    for src in ("gt", "pred"):
        lab = instances[src]
        ids = [i for kind in KIND_ORDER for i, s, _ in entries[kind] if s == src]
        if not ids:
            continue
        if hasattr(lab, "coords_of_original"):  # SparseLabels of the FISBe metrics
            found = {i: lab.coords_of_original(i) for i in set(ids)}
            shape = tuple(lab.shape)
        else:
            found = _keys_in_array(lab, ids)
            shape = tuple(np.shape(lab))
        for i, k in found.items():
            keys[(src, i)] = k
    values: list[tuple[str, int, int, str, str]] = []
    for k, kind in enumerate(KIND_ORDER):
        for j, (i, src, text) in enumerate(entries[kind]):
            values.append((kind, i, 4 * j + k + 1, src, text))
    top = max(v for _, _, v, _, _ in values)
    out = np.zeros(shape, _dtype_for(top))
    flat = out.reshape(-1)
    items = []
    for kind, i, v, src, text in reversed(values):  # the first kind / lower index wins
        kk = keys.get((src, i), np.zeros(0, np.int64))
        flat[kk] = v
    for kind, i, v, src, text in values:
        items.append((kind, i, v, _place(keys.get((src, i), np.zeros(0, np.int64)), shape), text))
    features = pd.DataFrame({
        "index": [v for _, _, v, _, _ in values],
        "error": [ERROR_KINDS[kind][0] for kind, *_ in values],
        "id": [i for _, i, *_ in values],
    })
    colors = np.concatenate([[[0.0, 0.0, 0.0, 0.0]],
                             transform_color([ERROR_KINDS[k][1] for k in KIND_ORDER])])
    cmap = CyclicLabelColormap(colors=colors, name="neuroseg errors")
    return {"data": out, "features": features, "colormap": cmap, "items": items}


def make_error_layer(built: dict[str, Any], scale: Any = None, translate: Any = None) -> Any:
    """The napari ``Labels`` layer of :func:`build_error_layer`'s data, made off the main thread
    (a layer is a model without Qt until it is added to a viewer): colormap, outlines, scale and
    translate set here, so adding it is one step and no refresh follows (the features are set by
    the main thread after the insert: napari's status update for the new active layer fails on a
    Labels layer with features in a 3D view the mouse has not moved in yet). Its painting
    overlays are hidden until the user picks their mode (:func:`show_overlays_on_mode`)."""
    from napari.layers import Labels

    kw = {} if scale is None else {"scale": tuple(scale)}
    if translate is not None:
        kw["translate"] = tuple(translate)
    layer = Labels(built["data"], name=ERRORS_LAYER, opacity=1.0, colormap=built["colormap"],
                   metadata={"neuroseg_error_kind": "all"}, **kw)
    layer.contour = ERROR_CONTOUR_PX  # outlines: never mistaken for a label's colour
    return hide_painting_overlays(layer)


@contextmanager
def _no_3d_contour_warning() -> Iterator[None]:
    """Main thread: napari warns on each refresh of a layer with outlines in a 3D view ("Contours
    are not displayed during 3D rendering": it shows it filled); the legend says so already."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Contours are not displayed", category=UserWarning)
        yield


def evaluate_layers_iter(gt: Any, pred: Any, partly: bool, *, dim_ids: list[int] | None = None,
                         task: str = "neurons", task_reason: str | None = None,
                         scale: Any = None, translate: Any = None):
    """Worker job: evaluate with the metrics of ``task``, then build the error layer's data and
    the layer itself (:func:`make_error_layer`, with ``scale``/``translate``).

    Returns ``(result, layer)``; ``layer`` is :func:`build_error_layer`'s dict (or None) with the
    napari layer under ``"layer"``.
    """
    result = yield from evaluate_task_iter(task, gt, pred, partly, dim_ids=dim_ids,
                                           with_instances=True)
    inst = result.pop("_instances")
    if task_reason:
        result["task_reason"] = task_reason  # guessed in the main thread
    yield Progress(0, 1, "building the error layer")
    layer = build_error_layer(result, inst)
    if layer is not None:
        layer["layer"] = make_error_layer(layer, scale, translate)
    yield Progress(1, 1, "error layer ready")
    return result, layer


def layer_fingerprint(layer: Any) -> tuple[Any, ...]:
    """What an evaluated layer was: its data's identity, shape and dtype, a digest of its voxels
    when they are in memory (an edit, an undo or a new array all change it; lazy data is
    compared by identity only) and the identity of a FISBe instance stack it carries. Computed in
    a worker thread (hashing releases the GIL)."""
    import hashlib

    data = layer.data
    digest = None
    if isinstance(data, np.ndarray):
        digest = hashlib.blake2b(memoryview(np.ascontiguousarray(data)).cast("B"), digest_size=16).hexdigest()
    stack = (getattr(layer, "metadata", None) or {}).get(FISBE_INSTANCES)
    return (id(data), tuple(data.shape), str(data.dtype), digest, None if stack is None else id(stack))


def evaluate_and_fingerprint_iter(layers: tuple[Any, ...], *args: Any, **kwargs: Any):
    """Worker job: the fingerprints of the evaluated ``layers`` (taken before the metrics: what
    was evaluated), then :func:`evaluate_layers_iter` with ``args``/``kwargs``. Returns
    ``(result, layer, fingerprints)``."""
    yield Progress(0, 1, "fingerprinting the evaluated layers")
    fingerprints = tuple(layer_fingerprint(ly) for ly in layers)
    result, layer = yield from evaluate_layers_iter(*args, **kwargs)
    return result, layer, fingerprints


def review_queue_job(result: dict[str, Any], gt_layer: Any, pred_layer: Any, fingerprints: tuple[Any, ...]):
    """Worker job: the review queue of an Evaluate result, or ``None`` when the layers changed
    since the run (their fingerprints differ: the errors would be stale). No metric is
    recomputed: :meth:`ReviewQueue.from_errors` only places the listed errors (boxes, centroids)
    in the evaluated prediction (and the ground truth, for missed and split objects)."""
    from napari_neuroseg.proofread.review import ReviewQueue

    yield Progress(0, 2, "checking the evaluated layers are unchanged")
    if tuple(layer_fingerprint(ly) for ly in (gt_layer, pred_layer)) != tuple(fingerprints):
        return None
    yield Progress(1, 2, "placing the review items")
    stack = (gt_layer.metadata or {}).get(FISBE_INSTANCES)
    gt = stack if stack is not None else gt_layer.data
    preset = result.get("preset") or {}
    queue = ReviewQueue.from_errors(result["errors"], pred_layer.data, gt, task=result.get("task"),
                                    rule=result.get("error_rule"), partly=bool(preset.get("partly", False)),
                                    avF1=result.get("avF1"), f1=result.get("f1"), evaluated=pred_layer.name)
    yield Progress(2, 2, "review queue ready")
    return queue


def _wrapped_label(text: str) -> QLabel:
    """A word-wrapped label that takes the dock's width instead of widening it (a wrapped
    ``QLabel`` otherwise asks for ~550 px)."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    return label


def _compact_table(table: QTableWidget) -> None:
    """Rows as tall as the text, no row numbers, the last column taking the spare width."""
    table.verticalHeader().setVisible(False)
    table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
    table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 6)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    table.horizontalHeader().setStretchLastSection(True)
    for corner in table.findChildren(QAbstractButton):  # Qt's select-all corner button
        corner.setToolTip("Select the whole table")


def _fit_rows(table: QTableWidget, max_rows: int) -> None:
    """Make ``table`` as tall as its header and rows (at most ``max_rows``; it scrolls beyond)."""
    rows = min(table.rowCount(), max_rows)
    height = (table.horizontalHeader().sizeHint().height() + rows * table.verticalHeader().defaultSectionSize()
              + 2 * table.frameWidth() + 2)
    table.setFixedHeight(height)


def _swatch(color: str, size: int = 12) -> QIcon:
    """A small square icon of an error kind's colour (the list's key to the error layer)."""
    pix = QPixmap(size, size)
    pix.fill(QColor(color))
    return QIcon(pix)


class EvaluateWidget(DockLifecycleMixin, RunControlsMixin, QWidget):
    """Pick GT and prediction layers and a task (nuclei / FISBe neurons), evaluate, inspect the
    errors, save the metrics or the error layer.

    The parameters are the magicgui form ``self.form`` (``gt``, ``pred``: layer boxes following
    the viewer's Labels layers; ``task``; ``partly``); the task note, tables, error list and
    buttons are Qt."""

    # long function: a dock's flat list of form fields, sections and buttons, read top to bottom like the dock
    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.result: dict[str, Any] | None = None
        self.error_layers: dict[str, Any] = {}  # kind -> the error layer (one layer for all)
        self._centroids: dict[tuple[str, int], Any] = {}  # (kind, id) -> (voxel, bbox)
        self._values: dict[tuple[str, int], int] = {}  # (kind, id) -> value in the error layer
        self._guess_cache: tuple[Any, tuple[str, str]] | None = None
        self._scale: Any = None
        self._translate: Any = None
        #: the layers of the last run (gt, pred), their fingerprints and the review-queue job
        self._run_layers: tuple[Any, Any] | None = None
        self._fingerprints: tuple[Any, ...] | None = None
        self._review_worker: Any = None
        self._outline: Any = None  # proofreading.navigation.OutlineLayer of the jumped-to error
        self._canvases = CanvasCache(self)  # the window's OpenGL widgets, held during a jump

        gt = layer_choice(napari_viewer, name="gt", label="Ground truth", accept=self._is_candidate,
                          tooltip="The ground-truth Labels layer (one id per object); a layer read from a FISBe "
                                  "file brings its full instance stack (overlaps) and dim neurons")
        pred = layer_choice(napari_viewer, name="pred", label="Prediction", accept=self._is_candidate,
                            tooltip="The predicted Labels layer to score against the ground truth")
        task = ComboBox(name="task", label="Task", choices=[(text, data) for data, text in TASK_CHOICES],
                        tooltip="nuclei: precision/recall/F1/AP at IoU thresholds (stardist.matching), every "
                                "object counts; neurons: the FISBe preset (predictions <= "
                                f"{MIN_SIZE} voxels removed, clDice matching); auto: guessed from the ground truth")
        partly = CheckBox(name="partly", text="partly labelled ground truth (FISBe)",
                          tooltip="FISBe neurons only: predictions lying mostly in unlabelled background are not "
                                  "counted as false positives")
        self.form = Container(name="evaluate_form", widgets=[gt, pred, task, partly])
        self.form.margins = (0, 0, 0, 0)
        #: what the chosen task measures (a note, not a control)
        self.task_note = _wrapped_label("")
        self.task_note.setToolTip("What the chosen task measures and which objects it counts")

        content = QWidget()
        layout = QVBoxLayout(content)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.form.native)
        layout.addWidget(self.task_note)
        task.changed.connect(self._update_task_note)
        partly.changed.connect(self._update_task_note)
        gt.changed.connect(self._update_task_note)
        gt.changed.connect(self._warm_metrics)
        pred.changed.connect(self._warm_metrics)

        self.controls = RunControls(
            "Evaluate", on_run=self.run, on_cancel=self.cancel, progress_bar=True,
            running_text="Evaluating…", cancel_text="Cancelled.", cancelled_text=None,
            run_tip="Score the prediction against the ground truth in the background; fills the tables and the "
                    "'evaluation errors' layer",
            cancel_tip="Stop the running evaluation at its next step",
            progress_tip="Progress of the running evaluation (objects matched)",
        )
        layout.addWidget(self.controls)

        self.summary = QTableWidget(0, 2)  # rows come with the first result
        self.summary.setHorizontalHeaderLabels(["metric", "value"])
        _compact_table(self.summary)
        self.summary.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.summary.setToolTip("Summary metrics of the last evaluation (scores 0-1, counts of objects)")
        self.metrics_section = CollapsibleSection(
            "Metrics", self.summary, expanded=True, tooltip="Show or hide the summary metrics")
        layout.addWidget(self.metrics_section)
        self.thresholds = QTableWidget(0, len(THRESHOLD_COLUMNS))
        self.thresholds.setHorizontalHeaderLabels([h for h, _ in THRESHOLD_COLUMNS])
        for c, (_, tip) in enumerate(THRESHOLD_COLUMNS):
            self.thresholds.horizontalHeaderItem(c).setToolTip(tip)
        _compact_table(self.thresholds)
        self.thresholds.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.thresholds.setToolTip("Matches per matching threshold (IoU for nuclei, clDice for neurons): "
                                   "true/false positives and false negatives as object counts")
        self.thresholds_section = CollapsibleSection(
            "Per threshold", self.thresholds, expanded=False,
            tooltip="Show or hide the matches at each matching threshold")
        layout.addWidget(self.thresholds_section)

        layout.addWidget(QLabel("Errors (click to jump):"))
        #: which colour is which error kind (the error layer draws outlines in these colours), 2 x 2
        self.legend = QWidget()
        grid = QGridLayout(self.legend)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setVerticalSpacing(0)
        self.legend_labels: dict[str, QLabel] = {}
        for k, kind in enumerate(KIND_ORDER):
            lab = QLabel("")
            lab.setToolTip(f"{ERROR_KINDS[kind][0]}: outlined in {ERROR_KINDS[kind][1]} in the '{ERRORS_LAYER}' "
                           "layer (2D views; filled in 3D); the result's own label colours are left as they are")
            self.legend_labels[kind] = lab
            grid.addWidget(lab, k // 2, k % 2)
        layout.addWidget(self.legend)
        self.errors_list = QListWidget()
        self.errors_list.setWordWrap(True)
        # a result with 1,000 errors: Qt lays the wrapped lines out 200 at a time between events
        self.errors_list.setLayoutMode(QListView.LayoutMode.Batched)
        self.errors_list.setBatchSize(200)
        self.errors_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.errors_list.setMinimumHeight(8 * self.errors_list.fontMetrics().height())
        self.errors_list.setToolTip("Objects counted as errors; click one to centre the view on it and select "
                                    "it in the 'evaluation errors' layer")
        self.errors_list.itemClicked.connect(self._jump)
        layout.addWidget(self.errors_list)

        self.save_button = QPushButton("Save…")
        self.save_button.setToolTip("Write the metrics (JSON: everything; CSV: the tables) or the "
                                    "'evaluation errors' layer (TIFF, OME-Zarr) with the plugin's writers")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(lambda *_: self.save())
        self.review_button = QPushButton("Review these errors")
        self.review_button.setToolTip(
            "Walk these errors in the Proofreading dock's review queue (opens the dock) on the evaluated "
            "prediction, with the same task, rule and partly-labelled mode; the metrics are not recomputed. "
            "Refused when a layer changed since the evaluation")
        self.review_button.setEnabled(False)
        self.review_button.clicked.connect(lambda *_: self.review_errors())
        buttons = QHBoxLayout()
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.review_button)
        layout.addLayout(buttons)
        _fit_rows(self.summary, 12)
        _fit_rows(self.thresholds, 9)
        self._kind_icons = {kind: _swatch(color) for kind, (_, color) in ERROR_KINDS.items()}
        self._show_legend({})
        fit_controls(content)
        self.scroll_area = scrollable(self, content)
        fit_form(self.form, self.scroll_area)

        # released when the dock is hidden or closed (_dock.py)
        for ev in (*LAYER_EVENTS, "changed"):
            self.connect_event(getattr(self.viewer.layers.events, ev), self._refresh_layers)
        self._refresh_layers(initial=True)
        self._update_task_note()
        self._warm_metrics()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        """Ask for ``DOCK_WIDTH_HINT`` px: the tables scroll or elide inside, the canvas keeps its room."""
        hint = super().sizeHint()
        return QSize(max(self.minimumSizeHint().width(), DOCK_WIDTH_HINT), hint.height())

    def on_dock_shown(self) -> None:
        self._refresh_layers()

    def on_dock_closed(self) -> None:
        self.cancel()  # a closed dock's evaluation stops at its next step
        if self._review_worker is not None:
            self._review_worker.quit()
            self._review_worker = None
        self._clear_outline()

    # ---------------------------------------------------------------- layers
    @staticmethod
    def _is_candidate(layer: Any) -> bool:
        """A Labels layer to evaluate (not the error layer this dock makes)."""
        from napari.layers import Labels

        names = {v[0] for v in ERROR_KINDS.values()} | {ERRORS_LAYER}
        return (isinstance(layer, Labels) and layer.name not in names
                and not (layer.metadata or {}).get("neuroseg_error_kind"))

    def _refresh_layers(self, *_: Any, initial: bool = False) -> None:
        f = self.form

        def prefer(words: tuple[str, ...]):
            def pick(choices: list[Any]) -> Any:
                for w in words:
                    hit = [ly for ly in choices if ly is not None and w in ly.name.lower()]
                    if hit:
                        return hit[0]
                return None
            return pick

        keep_or_prefer(f.gt, prefer(("instances", "gt", "truth")), initial=initial)
        keep_or_prefer(f.pred, prefer(("cleaned", "pred", "seg", "label")), initial=initial)
        layers = list(f.pred.choices)
        if f.gt.value is not None and f.gt.value is f.pred.value and len(layers) > 1:
            f.pred.value = [ly for ly in layers if ly is not f.gt.value][-1]
        self._update_task_note()

    def _warm_metrics(self, *_: Any) -> None:
        """Ready the metrics' kernels for the chosen layers in the background
        (:func:`~napari_neuroseg._napari._workers.warm_metrics`), not in the first run."""
        from napari_neuroseg._napari._workers import warm_metrics

        gt, pred = self.form.gt.value, self.form.pred.value
        warm_metrics(None if gt is None else gt.data, None if pred is None else pred.data)

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

    # ---------------------------------------------------------------- task
    @property
    def task(self) -> str:
        """The chosen task: ``"auto"``, ``"nuclei"`` or ``"neurons"``."""
        return str(self.form.task.value)

    def set_task(self, task: str) -> None:
        """Choose ``"auto"``, ``"nuclei"`` or ``"neurons"``."""
        if task not in self.form.task.choices:
            raise ValueError(f"unknown task {task!r}")
        self.form.task.value = task

    def _guess(self) -> tuple[str, str] | None:
        """The task guessed for the chosen GT layer, or None where guessing needs a pass over
        lazy data (then it is guessed in the worker, when run)."""
        layer = self.form.gt.value
        if layer is None or layer not in self.viewer.layers:
            return None
        md = getattr(layer, "metadata", {}) or {}
        if md.get(FISBE_INSTANCES) is not None:
            return "neurons", "the layer carries a FISBe instance stack"
        data = layer.data
        if not isinstance(data, np.ndarray):
            return None
        key = (id(data), data.shape)
        if self._guess_cache is None or self._guess_cache[0] != key:
            self._guess_cache = (key, guess_task(data))  # strided: a few ms
        return self._guess_cache[1]

    def _resolved_task(self) -> tuple[str, str]:
        """(task or "auto", why) for the next run."""
        if self.task != "auto":
            return self.task, "chosen"
        g = self._guess()
        return (g[0], "guessed: " + g[1]) if g is not None else ("auto", "guessed when run")

    def _update_task_note(self, *_: Any) -> None:
        if not hasattr(self, "form"):
            return
        task, why = self._resolved_task()
        self.form.partly.enabled = task != "nuclei"
        if task == "nuclei":
            text = ("Nuclei: objects matched one-to-one by IoU (stardist.matching); precision, "
                    "recall, F1, AP at IoU 0.1-0.9; errors = objects unmatched at IoU 0.5, "
                    "every object counts.")
        elif task == "neurons":
            text = (f"FISBe neuron preset: predictions with <= {MIN_SIZE} voxels are removed "
                    "before matching (not for nuclei-sized objects); matching by clDice; "
                    + ("partly labelled GT: predictions mostly in unlabelled background are "
                       "not false positives." if self.form.partly.value
                       else "fully labelled GT."))
        else:
            text = "The task is guessed from the ground truth when the evaluation runs."
        if self.task == "auto" and task != "auto":
            text = f"auto: {TASK_TITLES[task]} ({why}). " + text
        self.task_note.setText(text)

    # ---------------------------------------------------------------- running
    def run(self) -> None:
        """Start the evaluation of the chosen layers in a worker thread."""
        if self.controls.busy:
            return
        gt_layer, pred_layer = self.form.gt.value, self.form.pred.value
        if (gt_layer is None or pred_layer is None or gt_layer not in self.viewer.layers
                or pred_layer not in self.viewer.layers):
            self.status.setText("Choose a ground-truth and a prediction Labels layer.")
            return
        if gt_layer is pred_layer:
            self.status.setText("Ground truth and prediction must be different layers.")
            return
        gt, dim = self._source(gt_layer)
        pred, _ = self._source(pred_layer)
        task, why = self._resolved_task()
        partly = bool(self.form.partly.value) and task != "nuclei"
        self._scale, self._translate = gt_layer.scale, gt_layer.translate
        self.result = None
        self._run_layers, self._fingerprints = (gt_layer, pred_layer), None
        self.review_button.setEnabled(False)
        if self._outline is not None:
            self._outline.hide()  # the last run's error; kept for the next jump (no new insert)
        self.controls.start(
            evaluate_and_fingerprint_iter, (gt_layer, pred_layer), gt, pred, partly,
            dim_ids=dim, task=task, task_reason=why if why != "guessed when run" else None,
            scale=tuple(self._scale), translate=tuple(self._translate),
            on_return=self._on_result, desc="Evaluate segmentation",
        )

    def _on_result(self, value: tuple[Any, ...]) -> None:
        result, layer, *fingerprints = value  # (result, layer) from evaluate_layers_iter alone
        self._fingerprints = fingerprints[0] if fingerprints else None
        self.result = result
        self._fill_tables(result)
        self._add_error_layer(layer, result)
        warn = " ".join(f"Warning: {w}." for w in result["warnings"])
        task = TASK_TITLES.get(result.get("task", ""), "")
        self.status.setText((f"Done ({task}). " + warn).strip())
        if self.task == "auto":
            self.task_note.setText(f"auto: {task} ({result.get('task_reason', '')}).")
        self.save_button.setEnabled(True)
        self.review_button.setEnabled(self._fingerprints is not None
                                      and any(result["errors"].get(k) for k in KIND_ORDER))

    # ---------------------------------------------------------------- review queue
    def review_errors(self) -> Any:
        """Hand the last result's errors to the Proofreading dock's review queue (opening the
        dock) on the evaluated prediction, without recomputing the metrics: the queue is placed in
        a worker thread after checking that neither evaluated layer changed (a removed layer, an
        edit, an undo, new data: refused, "evaluate again"). Returns the worker (None if refused)."""
        from napari_neuroseg._napari._workers import start_worker

        if self.result is None or self._run_layers is None or self._fingerprints is None:
            self.status.setText("Nothing to review: evaluate first.")
            return None
        if self._review_worker is not None:
            return None
        gt_layer, pred_layer = self._run_layers
        gone = [ly.name for ly in (gt_layer, pred_layer) if ly not in self.viewer.layers]
        if gone:
            self._refuse_review(f"layer {', '.join(repr(n) for n in gone)} was removed since the evaluation")
            return None
        result = self.result

        def done(queue: Any) -> None:
            self._review_worker = None
            self._on_review_queue(queue, result, gt_layer, pred_layer)

        def finished() -> None:
            self._review_worker = None

        self.status.setText("Placing the errors in a review queue…")
        self._review_worker = start_worker(review_queue_job, result, gt_layer, pred_layer, self._fingerprints,
                                           on_return=done, on_finished=finished, desc="errors for the review queue")
        return self._review_worker

    def _refuse_review(self, why: str) -> None:
        self.review_button.setEnabled(False)
        self.status.setText(f"Not reviewed: {why}; the listed errors may be stale. Evaluate again.")

    def _on_review_queue(self, queue: Any, result: dict[str, Any], gt_layer: Any, pred_layer: Any) -> None:
        if self.dock_closed or result is not self.result:
            return  # closed, or evaluated again meanwhile
        if queue is None:
            self._refuse_review("a layer's data changed since the evaluation")
            return
        if gt_layer not in self.viewer.layers or pred_layer not in self.viewer.layers:
            self._refuse_review("a layer was removed since the evaluation")
            return
        dock, proofread = self.viewer.window.add_plugin_dock_widget(PLUGIN_NAME, PROOFREADING_DOCK)
        if not dock.isVisible():
            dock.setVisible(True)  # a hidden dock: shown again (it takes its keys back)
        dock.raise_()
        stack = (gt_layer.metadata or {}).get(FISBE_INSTANCES)
        if proofread.install_review_queue(queue, pred_layer, gt_layer=gt_layer,
                                          gt=stack if stack is not None else gt_layer.data):
            self.status.setText(f"{len(queue)} errors queued for review in the Proofreading dock "
                                f"(editing '{pred_layer.name}').")
        else:
            self.status.setText("The Proofreading dock could not take the queue; see its status line.")

    # ---------------------------------------------------------------- display
    @staticmethod
    def _summary_keys(result: dict[str, Any]) -> tuple[str, ...]:
        return NUCLEI_SUMMARY_KEYS if result.get("task") == "nuclei" else SUMMARY_KEYS

    def _fill_tables(self, result: dict[str, Any]) -> None:
        keys = self._summary_keys(result)
        rows = summary_rows({"sample": result}, keys)
        self.summary.setRowCount(len(keys))
        for r, (key, val) in enumerate(zip(rows[0][1:], rows[1][1:])):
            self.summary.setItem(r, 0, QTableWidgetItem(LABELS_OF.get(key, key)))
            self.summary.setItem(r, 1, QTableWidgetItem(val))
        _fit_rows(self.summary, 12)
        th_rows = per_threshold_rows(result)[1:]
        self.thresholds.setRowCount(len(th_rows))
        for r, row in enumerate(th_rows):
            for c, val in enumerate(row):
                self.thresholds.setItem(r, c, QTableWidgetItem(val))
        _fit_rows(self.thresholds, 9)

    def _error_layer_now(self) -> Any:
        for ly in self.viewer.layers:
            if ly.name == ERRORS_LAYER and (ly.metadata or {}).get("neuroseg_error_kind"):
                return ly
        return None

    def _add_error_layer(self, built: dict[str, Any] | None, result: dict[str, Any]) -> None:
        """Show the worker-built error layer: one add (or one data swap on a re-run) and the
        list; no per-voxel work here."""
        self.errors_list.setUpdatesEnabled(False)
        try:
            self.errors_list.clear()
            self._centroids.clear()
            self._values.clear()
            self.error_layers.clear()
            rule = result.get("error_rule")
            if rule:
                head = QListWidgetItem(f"[{rule}]")
                head.setToolTip(rule)
                self.errors_list.addItem(head)  # no data: clicking it does nothing
            layer = self._error_layer_now()
            if built is None:
                self._show_legend({})
                if layer is not None:
                    self.viewer.layers.remove(layer)
                return
            if layer is not None and layer.ndim == built["data"].ndim:
                # one swap, one refresh: the features first (no redraw), the transform only
                # when it changed (each set is a refresh of its own)
                layer.features = built["features"]
                if self._scale is not None and not np.array_equal(layer.scale, self._scale):
                    layer.scale = self._scale
                if self._translate is not None and not np.array_equal(layer.translate, self._translate):
                    layer.translate = self._translate
                with _no_3d_contour_warning(), repaint_after_next_pass(self):
                    layer.data = built["data"]
            else:
                if layer is not None:
                    self.viewer.layers.remove(layer)
                layer = built.get("layer") or make_error_layer(built, self._scale, self._translate)
                # one insert of the layer built in the worker (napari makes it the active layer)
                with _no_3d_contour_warning(), repaint_after_next_pass(self):
                    self.viewer.layers.append(layer)
                    layer.features = built["features"]  # after: see make_error_layer
                show_overlays_on_mode(layer)
            self._prepare_outline_later(result, layer)
            counts: dict[str, int] = {}
            for kind, i, v, cent, text in built["items"]:
                self.error_layers[kind] = layer
                self._centroids[(kind, i)] = cent
                self._values[(kind, i)] = v
                counts[kind] = counts.get(kind, 0) + 1
                it = QListWidgetItem(self._kind_icons[kind], text)
                it.setData(256, (kind, i))  # Qt.UserRole
                it.setToolTip(f"{text} (outlined in {ERROR_KINDS[kind][1]} in the '{ERRORS_LAYER}' layer)")
                self.errors_list.addItem(it)
            self._show_legend(counts)
        finally:
            self.errors_list.setUpdatesEnabled(True)

    def _show_legend(self, counts: dict[str, int]) -> None:
        """The colour key of the error layer, with the number of errors of each kind."""
        for kind, (title, color) in ERROR_KINDS.items():
            self.legend_labels[kind].setText(
                f'<span style="color:{QColor(color).name()}">&#9634;</span> {title} ({counts.get(kind, 0)})')

    def jump_to(self, kind: str, obj_id: int) -> None:
        """Show error ``obj_id`` of ``kind``: slice through and centre on a voxel that lies on the
        object, zoom to its bounding box (the review queue's framing), select it in the error
        layer and outline it in white (in 2D after the jump's repaint, in a pass of its own:
        :func:`~napari_neuroseg._napari.proofreading.navigation.jump_to_object`)."""
        from napari_neuroseg._napari.proofreading.navigation import jump_to_object

        place = self._centroids.get((kind, int(obj_id)))
        layer = self.error_layers.get(kind)
        if place is None or layer is None:
            return
        voxel, bbox = place
        value = int(self._values[(kind, int(obj_id))])
        box = tuple(slice(int(lo), int(hi)) for lo, hi in bbox)
        mask = np.asarray(layer.data[box]) == value
        with self._canvases.redraw_after():
            jump_to_object(self.viewer, layer, self._outline_layer(), bbox, voxel, mask,
                           redraw=self._canvases.redraw_after, wanted=lambda: not self.dock_closed)
            layer.selected_label = value
            if self.viewer.layers.selection.active is not layer:
                self.viewer.layers.selection.active = layer

    def _outline_layer(self) -> Any:
        """The review queue's outline layer
        (:class:`~napari_neuroseg._napari.proofreading.navigation.OutlineLayer`), its data
        swapped at each jump."""
        from napari_neuroseg._napari.proofreading.navigation import OutlineLayer

        if self._outline is None:
            self._outline = OutlineLayer(self.viewer, name=JUMP_OUTLINE_LAYER, kind="jump")
        return self._outline

    def _prepare_outline_later(self, result: dict[str, Any], like: Any) -> None:
        """In a later event-loop pass: find the window's canvases (not in the first jump) and,
        in a 2D view without the outline layer, add it hidden in a pass of its own, redrawn a
        pass later (napari's insert of a layer, 0.2-0.4 s, is then paid when the result
        arrives, not by the first jump). Nothing is held or redrawn when there is nothing to
        add (a hold still repaints the whole canvas: a 3D redraw for nothing). Not in 3D: the
        insert hands the active layer back to the error layer, and napari's status update for
        a Labels layer with features fails in a 3D view the mouse has not moved in (see
        :func:`make_error_layer`); a 3D jump pays the insert, in a pass before its redraw."""
        from qtpy.QtCore import QTimer

        def wanted() -> bool:
            return not self.dock_closed and result is self.result and like in self.viewer.layers

        QTimer.singleShot(1, lambda: wanted() and self._canvases.get())
        outline = self._outline_layer()
        if self.viewer.dims.ndisplay != 2 or (outline.layer is not None
                                               and outline.layer in self.viewer.layers):
            return
        StagedDisplay(self).start_later(
            [lambda: wanted() and self.viewer.dims.ndisplay == 2 and outline.prepare(like)])

    def _clear_outline(self) -> None:
        if self._outline is not None:
            self._outline.clear()

    def _jump(self, item: QListWidgetItem) -> None:
        data = item.data(256)
        if data:
            self.jump_to(*data)

    # ---------------------------------------------------------------- export
    def export_csv(self, path: str) -> None:
        """The summary and per-threshold tables as CSV."""
        if self.result is None:
            return
        rows = (summary_rows({"sample": self.result}, self._summary_keys(self.result)) + [[]]
                + per_threshold_rows(self.result))
        write_csv(path, rows)

    def export_json(self, path: str) -> None:
        """The full result (metrics, matching, errors, official layout) as JSON."""
        if self.result is not None:
            write_json(path, self.result)

    def save(self) -> str | None:
        """Save the metrics (``.json``: the full result; ``.csv``: the tables) or the error layer
        (``.tif``, ``.ome.zarr``), chosen in the file dialog; an input's file is overwritten only
        after asking. Returns the path written, or None."""
        from napari_neuroseg._napari._notify import notify_error
        from napari_neuroseg._napari._save import (
            OME_ZARR_FILTER,
            save_with_dialog,
            write_layer,
        )
        from napari_neuroseg.errors import NeurosegError

        if self.result is None:
            self.save_button.setEnabled(False)
            self.status.setText("Nothing to save: evaluate first.")
            return None
        layer = self._error_layer_now()
        filters = [JSON_FILTER, CSV_FILTER] + ([ERRORS_TIFF_FILTER, f"Error layer, {OME_ZARR_FILTER}"]
                                               if layer is not None else [])

        def write(path: str) -> None:
            low = path.lower()
            if low.endswith(".json"):
                self.export_json(path)
            elif low.endswith(".csv"):
                self.export_csv(path)
            elif layer is not None:
                write_layer(layer, path)
            else:
                raise NeurosegError("there is no error layer to save", path=path, fix="save the metrics as .json or .csv")

        try:
            path = save_with_dialog(self, title="Save the evaluation", start="metrics.json", filters=filters,
                                    viewer=self.viewer, write=write)
        except (NeurosegError, OSError) as err:
            if not isinstance(err, NeurosegError):
                err = NeurosegError(f"could not write the file ({err})", path=getattr(err, "filename", None),
                                    fix="choose a folder you can write to, with free space")
            notify_error(err)
            self.status.setText(f"Not saved: {err}")
            return None
        self.status.setText("Not saved." if path is None else f"Saved to {path}")
        return path
