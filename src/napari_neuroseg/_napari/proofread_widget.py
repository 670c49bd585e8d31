"""The Proofreading dock widget: buttons, editable shortcuts, locks, saving and a review queue.

All logic lives in :class:`~napari_neuroseg._napari.proofreading.ProofreadController` (bound to
one Labels layer; keys, picking, painting, review navigation and saving in the modules of
:mod:`napari_neuroseg._napari.proofreading`); this widget only collects parameters and calls its
public methods, every action through ``controller.run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.layers import Image, Labels
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_neuroseg.metrics.nuclei import TASK_TITLES
from napari_neuroseg.proofread.review import ReviewQueue, review_path

from ._dock import CollapsibleSection, DockLifecycleMixin, fit_controls, scrollable
from ._layers import FISBE_INSTANCES, ROLE_KEY, is_ground_truth
from .proofreading import (
    ACTION_TITLES,
    DEFAULT_SHORTCUTS,
    SCRATCH_SUFFIX,
    ProofreadController,
)
from .proofreading.saving import default_save_path, labels_filters

if TYPE_CHECKING:  # pragma: no cover
    import napari

_BUTTONS = [
    ("split", "Split at seeds"),
    ("clear_seeds", "Clear seeds"),
    ("components", "Connected components"),
    ("delete", "Delete label"),
    ("fill_holes", "Fill holes"),
    ("relabel", "Relabel 1..n"),
    ("dilate", "Dilate"),
    ("erode", "Erode"),
    ("new_label", "Painted → new label"),
    ("take_over", "Painted → selected"),
    ("lock", "Lock / unlock"),
]

#: What each action button does (its tooltip; the key, if any, is added).
_BUTTON_TIPS = {
    "split": "Split the seeded label by a seeded watershed, one region per Ctrl+click seed (one undo step)",
    "clear_seeds": "Forget the split seeds placed with Ctrl+click (no label changes)",
    "components": "Give each unconnected piece of the selected label its own id (one undo step)",
    "delete": "Set every voxel of the selected label to background 0 (one undo step)",
    "fill_holes": "Fill the enclosed background holes of the selected label (one undo step)",
    "relabel": "Renumber all labels 1..n, locked ids kept (one undo step)",
    "dilate": "Grow the selected label by the radius (voxels) into background only (one undo step)",
    "erode": "Shrink the selected label by the radius (voxels) (one undo step)",
    "new_label": "The region painted on the scratch layer becomes a new label (locked labels kept)",
    "take_over": "The selected label takes the painted region from the label most present there",
    "lock": "Lock or unlock the selected label: no proofreading action changes a locked label",
}

#: Labels layers the plugin itself adds that are never proofreading targets.
_NOT_TARGET_META = ("neuroseg_error_kind", "fisbe_overlaps")


def _is_candidate(layer: Any) -> bool:
    """A Labels layer the user may proofread (not a scratch, error or overlaps layer)."""
    if not isinstance(layer, Labels) or layer.name.endswith(SCRATCH_SUFFIX):
        return False
    md = getattr(layer, "metadata", None) or {}
    if md.get(ROLE_KEY) == "scratch" or any(md.get(k) for k in _NOT_TARGET_META):
        return False
    from . import evaluate_widget as ev

    names = {name for name, _ in getattr(ev, "ERROR_KINDS", {}).values()} | {getattr(ev, "ERRORS_LAYER", "")}
    return layer.name not in names


class ProofreadWidget(DockLifecycleMixin, QWidget):
    """Dock widget: proofreading tools for a Labels layer (see docs/proofreading.md).

    It edits the Labels layer chosen in "Labels layer", which follows the layer selected in the
    layer list, except onto a ground-truth layer (``metadata["neuroseg_role"]``, set by the
    plugin's readers): that one must be chosen in the box, and its first edit asks first. Its key
    bindings and mouse actions exist only while the dock is open (released when it is hidden or
    closed; see :mod:`._dock`).
    """

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.controller: ProofreadController | None = None
        self._save_worker: Any = None  # the save being written (None: none, or written in place)
        self.shortcuts = dict(DEFAULT_SHORTCUTS)
        self._gt_confirmed: set[int] = set()  # id() of ground-truth layers the user agreed to edit
        content = QWidget()
        layout = QVBoxLayout(content)
        self._build_target_form(layout)
        self._build_action_buttons(layout)
        self._build_shortcut_section(layout)
        self._build_review_section(layout)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        fit_controls(content)
        self.scroll = scrollable(self, content)  # as wide as the expanded sections need
        self.shortcut_section.set_expanded(False)
        self.review_section.set_expanded(False)
        self._connect_signals()
        self._refresh_layers()

    # -- building the dock (top to bottom) ------------------------------------------------------
    def _build_target_form(self, layout: QVBoxLayout) -> None:
        """The edited layer, the split method and image, the dilate/erode radius."""
        form = QFormLayout()
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("The Labels layer that the keys, clicks and buttons edit; "
                                    "follows the layer selected in the layer list (not onto ground truth)")
        self.target_label = QLabel("Editing: (no Labels layer)")
        self.target_label.setWordWrap(True)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("Image whose intensities guide an 'intensity' or 'boundary' split "
                                    "(ignored for 'distance')")
        self.method_combo = QComboBox()
        self.method_combo.addItems(["distance", "intensity", "boundary"])
        self.method_combo.setToolTip("What the split watershed follows: distance to the label's edge, "
                                     "dark valleys of the image (intensity) or its bright edges (boundary)")
        self.radius = QSpinBox()
        self.radius.setRange(1, 20)
        self.radius.setSuffix(" vox")
        self.radius.setToolTip("Dilate / erode step, in voxels (1-20)")
        form.addRow("Labels layer", self.layer_combo)
        form.addRow(self.target_label)
        form.addRow("Split on", self.method_combo)
        form.addRow("Image (split)", self.image_combo)
        form.addRow("Dilate/erode radius", self.radius)
        layout.addLayout(form)

    def _build_action_buttons(self, layout: QVBoxLayout) -> None:
        """The mouse help, the action buttons, Paint region, the locked labels, Save… and Load
        into memory."""
        help_text = QLabel("Shift+click: merge the clicked label into the selected one.\n"
                           "Ctrl+click: add a split seed (then Split). Ctrl+Z / Ctrl+Shift+Z: undo / redo.")
        help_text.setWordWrap(True)
        layout.addWidget(help_text)

        grid = QGridLayout()
        self.buttons: dict[str, QPushButton] = {}
        for n, (action, title) in enumerate(_BUTTONS):
            btn = QPushButton(title)
            btn.clicked.connect(lambda _=False, a=action: self.run_action(a))
            grid.addWidget(btn, n // 2, n % 2)
            self.buttons[action] = btn
        self.paint_btn = QPushButton("Paint region")
        self.paint_btn.setToolTip("Paint into a scratch layer, then 'Painted → new label' or 'Painted → selected'")
        self.paint_btn.clicked.connect(self.start_painting)
        grid.addWidget(self.paint_btn, len(_BUTTONS) // 2, len(_BUTTONS) % 2)
        layout.addLayout(grid)
        self._update_buttons()

        self.locked_label = QLabel("Locked: none")
        self.locked_label.setWordWrap(True)
        layout.addWidget(self.locked_label)
        row = QHBoxLayout()
        self.save_btn = QPushButton("Save…")
        self.save_btn.setToolTip(
            "Save the edited labels with the plugin's writers: choose a TIFF (voxel size kept), OME-Zarr or "
            "FISBe .zarr file (in-memory layers too); an opened input file is overwritten only after you agree. "
            "A zarr layer edited chunk by chunk writes its edited chunks into its own store (asks first).")
        self.save_btn.clicked.connect(self.save)
        self.load_btn = QPushButton("Load into memory")
        self.load_btn.setToolTip("Copy a lazy (dask) layer into memory so it can be edited (needs its size in RAM)")
        self.load_btn.clicked.connect(self.load_into_memory)
        row.addWidget(self.save_btn)
        row.addWidget(self.load_btn)
        layout.addLayout(row)

    def _build_shortcut_section(self, layout: QVBoxLayout) -> None:
        """The editable keys (always active: the section only folds away)."""
        self.shortcut_box = QWidget()
        sform = QFormLayout(self.shortcut_box)
        self.shortcut_edits: dict[str, QLineEdit] = {}
        for action, key in DEFAULT_SHORTCUTS.items():
            edit = QLineEdit(key)
            edit.setToolTip(f"Key for '{ACTION_TITLES[action]}' on the edited layer: napari key syntax "
                            "(Shift+S, Alt+D, Delete); empty = no key")
            edit.editingFinished.connect(lambda a=action, e=edit: self.set_shortcut(a, e.text().strip()))
            sform.addRow(ACTION_TITLES[action], edit)
            self.shortcut_edits[action] = edit
        self.shortcut_section = CollapsibleSection(
            "Shortcuts", self.shortcut_box, expanded=True,
            tooltip="Show or hide the keys of the actions (the keys work either way)")
        layout.addWidget(self.shortcut_section)

    def _build_review_section(self, layout: QVBoxLayout) -> None:
        """The review queue: its options, the buttons that build or load it, the item shown and
        the navigation buttons."""
        review = QWidget()
        rl = QVBoxLayout(review)
        rl.setContentsMargins(0, 0, 0, 0)
        nav = QHBoxLayout()
        for title, action in (("◀ Prev", "review_previous"), ("Next ▶", "review_next"),
                              ("Fixed", "review_fixed"), ("Ignore", "review_ignore")):
            b = QPushButton(title)
            key = DEFAULT_SHORTCUTS.get(action)
            b.setToolTip(ACTION_TITLES[action] + (f" ({key})" if key else "")
                         + "; the view zooms to the item's box, centred on a voxel of the object, outlined in white")
            b.clicked.connect(lambda _=False, a=action: self.run_action(a))
            nav.addWidget(b)
        # the count, the queue's rule, the current item and the walk buttons first: in view
        # without scrolling at 1280x800 while walking (the options below fold with the section)
        self.review_label = QLabel("No review queue")
        self.review_label.setWordWrap(True)
        self.review_label.setToolTip("The queue's size and progress, the rule that chose its items "
                                     "(metrics task, FISBe size filter, partly-labelled mode) and the current item")
        rl.addWidget(self.review_label)
        rl.addLayout(nav)
        rl.addLayout(self._review_options_form())
        brow = QHBoxLayout()
        for title, slot, tip in (
            ("From metrics", self.build_review_from_metrics,
             "Queue the metric errors of the Task against the ground truth (nuclei: missed nuclei, false "
             "positives; neurons: false merges/splits, false positives, missed neurons); runs in the background"),
            ("From checks", self.build_review_from_checks, "Queue tiny, largest and border-touching labels"),
            ("Load…", self.load_review, "Open a saved review queue (.review.json) to resume"),
        ):
            b = QPushButton(title)
            b.setToolTip(tip)
            b.clicked.connect(slot)
            brow.addWidget(b)
        rl.addLayout(brow)
        self.review_section = CollapsibleSection(
            "Review queue", review, expanded=True,
            tooltip="Show or hide the review queue (a list of places to check, saved next to the labels)")
        layout.addWidget(self.review_section)

    def _review_options_form(self) -> QFormLayout:
        """Ground truth, task and the checks' options of the review queue."""
        rform = QFormLayout()
        self.gt_combo = QComboBox()
        self.gt_combo.setToolTip("Ground-truth Labels layer the metrics compare the edited layer with")
        self.partly = QCheckBox("partly labelled GT")
        self.partly.setToolTip("Predictions lying mostly in unlabelled background are not counted as false positives")
        self.task_combo = QComboBox()
        self.task_combo.addItem("auto (guess from the ground truth)", "auto")
        for task in ("nuclei", "neurons"):
            self.task_combo.addItem(TASK_TITLES[task], task)
        self.task_combo.setToolTip(
            "Metrics behind 'From metrics': nuclei = unmatched objects at IoU 0.5, every object counts; "
            "neurons = FISBe preset (false merges/splits, predictions <= 800 voxels dropped); "
            "auto guesses from the ground truth. The queue names missed objects after the task")
        self.task_combo.currentIndexChanged.connect(  # a FISBe option: off for nuclei
            lambda *_: self.partly.setEnabled(self.task_combo.currentData() != "nuclei"))
        rform.addRow("Ground truth", self.gt_combo)
        rform.addRow("Task", self.task_combo)
        rform.addRow("", self.partly)
        self.tiny = QSpinBox()
        self.tiny.setRange(0, 10**9)
        self.tiny.setValue(100)
        self.tiny.setSuffix(" vox")
        self.tiny.setToolTip("Labels of at most this many voxels are queued as tiny (0 = none)")
        self.largest = QSpinBox()
        self.largest.setRange(0, 10**6)
        self.largest.setValue(5)
        self.largest.setToolTip("Queue this many of the largest labels (likely false merges; 0 = none)")
        self.border = QCheckBox("objects touching the border")
        self.border.setToolTip("Queue the labels that touch the volume's border")
        self.border.setChecked(True)
        rform.addRow("Tiny: at most", self.tiny)
        rform.addRow("Largest objects", self.largest)
        rform.addRow("", self.border)
        return rform

    def _connect_signals(self) -> None:
        """The form's options, the viewer's layer list and the teardown on close."""
        self.layer_combo.currentIndexChanged.connect(self._on_combo_changed)
        self.gt_combo.currentIndexChanged.connect(self._warm_metrics)
        self.method_combo.currentTextChanged.connect(self._sync_options)
        self.image_combo.currentIndexChanged.connect(self._sync_options)
        self.radius.valueChanged.connect(self._sync_options)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            self.connect_event(ev, self._refresh_layers)
        self.connect_event(self.viewer.layers.selection.events.active, self._on_active)
        self.on_teardown(self._release_controller)

    # -- dock lifecycle (see _dock.py) ----------------------------------------------------------
    def _release_controller(self) -> None:
        """Unbind the keys and mouse actions and stop listening to the layer (no Qt calls)."""
        if self.controller is not None:
            try:
                self.controller.disconnect()
            except Exception:  # noqa: BLE001 - the layer may be gone
                pass

    def on_dock_hidden(self) -> None:
        self._release_controller()
        self._status("proofreading paused: the dock is hidden (keys and clicks released)")

    def on_dock_shown(self) -> None:
        self._refresh_layers()
        c = self.controller
        if c is not None and c.layer in self.viewer.layers and not c.connected:
            c.connect()
            self._status("")
        self._update_target()

    def on_dock_closed(self) -> None:
        self._release_controller()

    # -- layers ---------------------------------------------------------------------------------
    def _layers(self, kind: type) -> list[Any]:
        return [ly for ly in self.viewer.layers if isinstance(ly, kind)]

    def _default_target(self, names: list[str]) -> str:
        """The layer to edit when none is chosen: the selected Labels layer unless it is ground
        truth, else the last non-ground-truth one, else the first."""
        layers = [self.viewer.layers[n] for n in names]
        active = self.viewer.layers.selection.active
        if active in layers and not is_ground_truth(active):
            return active.name
        results = [ly for ly in layers if not is_ground_truth(ly)]
        return (results[-1] if results else layers[0]).name

    def _refresh_layers(self, event: Any = None) -> None:
        cur = self.layer_combo.currentText()
        labels = [ly.name for ly in self._layers(Labels) if _is_candidate(ly)]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(labels)
        if labels:
            self.layer_combo.setCurrentText(cur if cur in labels else self._default_target(labels))
        self.layer_combo.blockSignals(False)
        for combo, kind, none in ((self.image_combo, Image, "(none)"), (self.gt_combo, Labels, "(none)")):
            c = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItem(none)
            combo.addItems([ly.name for ly in self._layers(kind)])
            if c:
                combo.setCurrentText(c)
            combo.blockSignals(False)
        if self.controller is None or self.controller.layer not in self.viewer.layers \
                or self.controller.layer.name != self.layer_combo.currentText():
            self._bind_selected_layer()
        self._on_active()  # a new layer is selected as napari adds it: follow it
        self._warm_metrics()

    def _on_active(self, event: Any = None) -> None:
        """The layer selected in the layer list changed: follow it, unless it is ground truth."""
        layer = self.viewer.layers.selection.active
        if layer is not None and _is_candidate(layer) and not is_ground_truth(layer) \
                and self.layer_combo.findText(layer.name) >= 0:
            self.layer_combo.setCurrentText(layer.name)  # → _on_combo_changed
        self._update_target()

    def _on_combo_changed(self, *_: Any) -> None:
        """A layer chosen in the box: edit it, and select it (its keys work on the active layer)."""
        self._bind_selected_layer()
        c = self.controller
        if c is not None and self.viewer.layers.selection.active is not c.layer:
            self.viewer.layers.selection.active = c.layer
        self._update_target()

    def _bind_selected_layer(self, *_: Any) -> None:
        name = self.layer_combo.currentText()
        layer = self.viewer.layers[name] if name and name in self.viewer.layers else None
        if self.controller is not None and self.controller.layer is layer:
            return
        if self.controller is not None:
            self._release_controller()
            self.controller = None
        if layer is not None and not (self.dock_closed or self.dock_suspended):
            self.controller = ProofreadController(self.viewer, layer, shortcuts=self.shortcuts, status=self._status,
                                                  confirm_ground_truth=self._confirm_ground_truth,
                                                  display_widget=self)
            self._sync_options()
            self._update_buttons()
        self._update_locked()

    def _update_target(self) -> None:
        """Say which layer the keys and buttons edit (and whether it is ground truth)."""
        c = self.controller
        if c is None:
            text = "Editing: (no Labels layer)"
        elif is_ground_truth(c.layer):
            text = f"Editing '{c.layer.name}': GROUND TRUTH — each first edit asks first"
        else:
            text = f"Editing '{c.layer.name}'"
            active = self.viewer.layers.selection.active
            if active is not None and active is not c.layer and is_ground_truth(active):
                text += (f" (the selected layer '{active.name}' is ground truth: "
                         "choose it in 'Labels layer' to edit it)")
        self.target_label.setText(text)
        self.target_label.setStyleSheet("color: #f0a030;" if c is not None and is_ground_truth(c.layer) else "")

    def _confirm_ground_truth(self, layer: Any) -> bool:
        """Ask before the first edit of a ground-truth layer (once per layer)."""
        if id(layer) in self._gt_confirmed:
            return True
        answer = QMessageBox.question(
            self, "Edit the ground truth?",
            f"'{layer.name}' is a ground-truth layer. Edit it anyway?\n"
            "(Each edit can be undone with Ctrl+Z; the file changes only when you save.)",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No,
        )
        if answer == QMessageBox.StandardButton.Yes:
            self._gt_confirmed.add(id(layer))
            return True
        return False

    def _sync_options(self, *_: Any) -> None:
        c = self.controller
        if c is None:
            return
        c.split_method = self.method_combo.currentText()
        name = self.image_combo.currentText()
        c.image_layer = self.viewer.layers[name] if name in self.viewer.layers else None
        c.radius = int(self.radius.value())

    def _update_buttons(self) -> None:
        for action, btn in self.buttons.items():
            key = self.shortcuts.get(action)
            btn.setToolTip(_BUTTON_TIPS[action] + (f" — key {key}" if key else ""))

    def _update_locked(self) -> None:
        locked = sorted(self.controller.locked) if self.controller else []
        self.locked_label.setText("Locked: " + (", ".join(map(str, locked)) if locked else "none"))

    def _status(self, msg: str) -> None:
        self.status_label.setText(msg)
        self._update_locked()
        c = self.controller
        if c is not None and c.review is not None:
            self.review_label.setText(self.review_text(c.review))

    @staticmethod
    def review_rule(queue: ReviewQueue) -> str:
        """The rule that chose the queue's items: the metrics' error rule (nuclei: IoU 0.5;
        neurons: the FISBe size filter, how many it removed, the partly-labelled mode) or the
        checks' options."""
        meta = queue.meta or {}
        rule = meta.get("rule")
        if rule:
            return str(rule)
        if meta.get("source") == "checks":
            parts = [f"tiny <= {meta['tiny']} voxels" if meta.get("tiny") else "",
                     "touching the border" if meta.get("border") else "",
                     f"{meta['largest']} largest" if meta.get("largest") else ""]
            return "checks: " + (", ".join(p for p in parts if p) or "none")
        return ""

    def review_text(self, queue: ReviewQueue) -> str:
        """The review line: count and progress, the queue's rule, the current item."""
        n = queue.counts()
        rule = self.review_rule(queue)
        cur = queue.current
        return (f"review queue: {len(queue)} items: {n['todo']} to do, {n['fixed']} fixed, {n['ignored']} ignored"
                + (f"\nrule: {rule}" if rule else "")
                + (f"\ncurrent: {queue.describe(cur)}" if cur else ""))

    # -- actions --------------------------------------------------------------------------------
    def run_action(self, action: str) -> Any:
        """Run a proofreading action (a key's name in DEFAULT_SHORTCUTS) on the edited layer."""
        if self.controller is None:
            self._status("add or select a Labels layer first")
            return None
        self._sync_options()
        return self.controller.run(action)

    def start_painting(self) -> None:
        if self.controller is not None:
            self.controller.run(self.controller.painter.start_painting)

    def set_shortcut(self, action: str, key: str) -> None:
        self.shortcuts[action] = key
        c = self.controller
        if c is not None:
            c.run(lambda: c.bind(action, key))
        self._update_buttons()

    def save(self) -> str | None:
        """Save the edited labels (the Save… button): a chunk-edited zarr layer into its own store
        after asking; any other layer to a file chosen in a dialog with the plugin's formats (an
        opened input only after asking). Returns the path or message, None when backed out."""
        from ._save import confirm, save_with_dialog

        c = self.controller
        if c is None:
            self._status("add or select a Labels layer first")
            return None
        if c.chunked:
            n = len(c.layer.data.dirty_chunks)
            if not confirm(self, "Save into the opened file?",
                           f"Write {n} edited chunk(s) of '{c.layer.name}' into the zarr store it was opened "
                           "from? The file changes in place (atomically)."):
                return None
            return c.run(c.save)
        return c.run(lambda: save_with_dialog(
            self, title=f"Save '{c.layer.name}'", start=default_save_path(c.layer),
            filters=labels_filters(c.layer), viewer=self.viewer, write=lambda path: self._start_save(c, path)))

    def _start_save(self, c: ProofreadController, path: str) -> None:
        """Write the layer to ``path``: its labels copied now, encoded and written in a worker
        (``proofreading.saving.start_save``); the status line says when the file is complete."""
        from .proofreading.saving import start_save

        def done(msg: str) -> None:
            self._status_if_alive(msg)

        def failed(err: BaseException) -> None:
            self._status_if_alive(f"not saved: {err}")

        self._save_worker = start_save(c, path, on_done=done, on_error=failed)
        if self._save_worker is not None:
            self._status(f"saving '{c.layer.name}' to {path}…")

    def _status_if_alive(self, msg: str) -> None:
        """The status line, unless the dock was deleted meanwhile (a save ending after a close)."""
        try:
            self._status(msg)
        except RuntimeError:  # the Qt widget is gone
            pass

    def load_into_memory(self) -> None:
        import numpy as np

        c = self.controller
        if c is None:
            return
        if not isinstance(c.layer.data, np.ndarray):
            c.layer.data = np.asarray(c.layer.data)
            self._status(f"{c.layer.name} loaded into memory ({c.layer.data.nbytes / 2**20:.0f} MiB)")

    # -- review ---------------------------------------------------------------------------------
    def _labels_path(self) -> str | None:
        c = self.controller
        return None if c is None else getattr(c.layer.source, "path", None)

    def _warm_metrics(self, *_: Any) -> None:
        """Ready *From metrics*' kernels for the chosen ground truth and edited layer in the
        background (:func:`~napari_neuroseg._napari._workers.warm_metrics`), not in its first run."""
        from ._workers import warm_metrics

        c = self.controller
        warm_metrics(self._gt_data(), None if c is None else c.layer.data)

    def _gt_data(self) -> Any:
        """The chosen ground truth (its FISBe stack if it has one), or None."""
        name = self.gt_combo.currentText()
        if name not in self.viewer.layers:
            return None
        gt_layer = self.viewer.layers[name]
        gt = gt_layer.metadata.get(FISBE_INSTANCES)
        return gt if gt is not None else gt_layer.data

    def _install_queue(self, queue: ReviewQueue, path: str | None, gt: Any = None) -> None:
        c = self.controller
        if c is None:
            return
        c.set_review(queue, path, gt=gt if gt is not None else self._gt_data())
        if path:
            queue.save(path)
        self._status(f"review queue: {len(queue)} items" + (f" (saved to {path})" if path else ""))
        self.review_label.setText(self.review_text(queue))
        # the outline layer is added (hidden) in a later event-loop pass of its own, redrawn in
        # the pass after it: napari's insert is paid neither here nor by the first Next
        from ._display import StagedDisplay

        StagedDisplay(self).start_later([c.nav.prepare_highlight])

    def install_review_queue(self, queue: ReviewQueue, target_layer: Any, *, gt_layer: Any = None,
                             gt: Any = None) -> bool:
        """Walk ``queue`` on ``target_layer`` (the layer its items were found in, e.g. the
        prediction the Evaluate dock scored): that layer becomes the edited one, ``gt_layer`` the
        ground truth, the queue's task and partly-labelled mode are set in the review options, the
        review section opens. ``gt`` is the array the queue was placed against (a FISBe stack);
        default: ``gt_layer``'s. Returns False (and says why) when the layer cannot be edited here."""
        if target_layer is None or target_layer not in self.viewer.layers or not _is_candidate(target_layer):
            self._status("the evaluated prediction is not in the viewer any more: evaluate again")
            return False
        self.layer_combo.setCurrentText(target_layer.name)  # binds it (_on_combo_changed)
        c = self.controller
        if c is None or c.layer.name != target_layer.name:  # (napari may hand docks proxies of a layer)
            self._status(f"cannot proofread '{target_layer.name}' now (is this dock open?)")
            return False
        if gt_layer is not None and self.gt_combo.findText(gt_layer.name) >= 0:
            self.gt_combo.setCurrentText(gt_layer.name)
        task = queue.meta.get("task")
        i = self.task_combo.findData(task) if task else -1
        if i >= 0:
            self.task_combo.setCurrentIndex(i)
        self.partly.setChecked(bool(queue.meta.get("partly")))
        self.review_section.set_expanded(True)
        self._install_queue(queue, self._default_review_path(), gt)
        return True

    def _default_review_path(self) -> str | None:
        p = self._labels_path()
        return str(review_path(p)) if p else None

    def build_review_from_checks(self) -> None:
        c = self.controller
        if c is None:
            return
        queue = ReviewQueue.from_checks(c.layer.data, tiny=int(self.tiny.value()), border=self.border.isChecked(),
                                        largest=int(self.largest.value()))
        self._install_queue(queue, self._default_review_path())

    def build_review_from_metrics(self) -> None:
        c = self.controller
        gt = self._gt_data()
        if c is None or gt is None:
            self._status("choose the ground-truth Labels layer first")
            return
        from ._workers import start_worker

        path = self._default_review_path()
        task = str(self.task_combo.currentData())
        start_worker(
            ReviewQueue.from_metrics_iter, gt, c.layer.data, partly=self.partly.isChecked() and task != "nuclei",
            task=task,
            on_return=lambda q: self._install_queue(q, path, gt), desc="metrics for the review queue",
        )

    def load_review(self, path: str | None = None) -> None:
        if not path:
            start = self._default_review_path() or str(Path.home())
            path, _ = QFileDialog.getOpenFileName(self, "Load review queue", start, "Review queue (*.review.json *.json)")
        if not path or self.controller is None:
            return
        queue = self.controller.run(lambda: ReviewQueue.load(path))
        if queue is not None:
            self._install_queue(queue, path)
