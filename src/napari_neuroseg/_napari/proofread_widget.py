"""The Proofreading dock widget: buttons, editable shortcuts, locks, saving and a review queue.

All logic lives in :class:`~napari_neuroseg._napari.proofread_actions.ProofreadController`
(bound to one Labels layer); this widget only collects parameters and calls it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_neuroseg.proofread.review import ReviewQueue, review_path

from .proofread_actions import ACTION_TITLES, DEFAULT_SHORTCUTS, ProofreadController

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


class ProofreadWidget(QWidget):
    """Dock widget: proofreading tools for a Labels layer (see docs/proofreading.md)."""

    def __init__(self, napari_viewer: "napari.Viewer"):
        super().__init__()
        self.viewer = napari_viewer
        self.controller: ProofreadController | None = None
        self.shortcuts = dict(DEFAULT_SHORTCUTS)
        layout = QVBoxLayout(self)

        form = QFormLayout()
        self.layer_combo = QComboBox()
        self.image_combo = QComboBox()
        self.method_combo = QComboBox()
        self.method_combo.addItems(["distance", "intensity", "boundary"])
        self.radius = QSpinBox()
        self.radius.setRange(1, 20)
        form.addRow("Labels layer", self.layer_combo)
        form.addRow("Split on", self.method_combo)
        form.addRow("Image (split)", self.image_combo)
        form.addRow("Dilate/erode radius", self.radius)
        layout.addLayout(form)

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
        self.paint_btn.clicked.connect(lambda: self.controller and self.controller.start_painting())
        grid.addWidget(self.paint_btn, len(_BUTTONS) // 2, len(_BUTTONS) % 2)
        layout.addLayout(grid)

        self.locked_label = QLabel("Locked: none")
        self.locked_label.setWordWrap(True)
        layout.addWidget(self.locked_label)
        row = QHBoxLayout()
        self.save_btn = QPushButton("Save edits")
        self.save_btn.setToolTip("Zarr-backed layer: write the edited chunks. FISBe layer: rewrite the FISBe layout.")
        self.save_btn.clicked.connect(self.save)
        self.load_btn = QPushButton("Load into memory")
        self.load_btn.setToolTip("Lazy (dask) layers cannot be edited in place")
        self.load_btn.clicked.connect(self.load_into_memory)
        row.addWidget(self.save_btn)
        row.addWidget(self.load_btn)
        layout.addLayout(row)

        # shortcuts (editable)
        self.shortcut_box = QGroupBox("Shortcuts")
        self.shortcut_box.setCheckable(True)
        self.shortcut_box.setChecked(False)
        sform = QFormLayout(self.shortcut_box)
        self.shortcut_edits: dict[str, QLineEdit] = {}
        for action, key in DEFAULT_SHORTCUTS.items():
            edit = QLineEdit(key)
            edit.setToolTip("napari key syntax, e.g. Shift+S, Alt+D, Delete; empty = no key")
            edit.editingFinished.connect(lambda a=action, e=edit: self.set_shortcut(a, e.text().strip()))
            sform.addRow(ACTION_TITLES[action], edit)
            self.shortcut_edits[action] = edit
        layout.addWidget(self.shortcut_box)

        # review queue
        review = QGroupBox("Review queue")
        rl = QVBoxLayout(review)
        rform = QFormLayout()
        self.gt_combo = QComboBox()
        self.partly = QCheckBox("partly labelled GT")
        rform.addRow("Ground truth", self.gt_combo)
        rform.addRow("", self.partly)
        self.tiny = QSpinBox()
        self.tiny.setRange(0, 10**9)
        self.tiny.setValue(100)
        self.largest = QSpinBox()
        self.largest.setRange(0, 10**6)
        self.largest.setValue(5)
        self.border = QCheckBox("objects touching the border")
        self.border.setChecked(True)
        rform.addRow("Tiny: at most (voxels)", self.tiny)
        rform.addRow("Largest objects", self.largest)
        rform.addRow("", self.border)
        rl.addLayout(rform)
        brow = QHBoxLayout()
        for title, slot in (("From metrics", self.build_review_from_metrics), ("From checks", self.build_review_from_checks),
                            ("Load…", self.load_review)):
            b = QPushButton(title)
            b.clicked.connect(slot)
            brow.addWidget(b)
        rl.addLayout(brow)
        nav = QHBoxLayout()
        for title, action in (("◀ Prev", "review_previous"), ("Next ▶", "review_next"),
                              ("Fixed", "review_fixed"), ("Ignore", "review_ignore")):
            b = QPushButton(title)
            b.clicked.connect(lambda _=False, a=action: self.run_action(a))
            nav.addWidget(b)
        rl.addLayout(nav)
        self.review_label = QLabel("No review queue")
        self.review_label.setWordWrap(True)
        rl.addWidget(self.review_label)
        layout.addWidget(review)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

        self.layer_combo.currentIndexChanged.connect(self._bind_selected_layer)
        self.method_combo.currentTextChanged.connect(self._sync_options)
        self.image_combo.currentIndexChanged.connect(self._sync_options)
        self.radius.valueChanged.connect(self._sync_options)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._refresh_layers)
        self._refresh_layers()

    # -- layers ---------------------------------------------------------------------------------
    def _layers(self, kind: str) -> list[Any]:
        return [ly for ly in self.viewer.layers if ly._type_string == kind]

    def _refresh_layers(self, event: Any = None) -> None:
        cur = self.layer_combo.currentText()
        labels = [ly for ly in self._layers("labels") if not ly.name.endswith("painted region")]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems([ly.name for ly in labels])
        if cur in [ly.name for ly in labels]:
            self.layer_combo.setCurrentText(cur)
        self.layer_combo.blockSignals(False)
        for combo, kind, none in ((self.image_combo, "image", "(none)"), (self.gt_combo, "labels", "(none)")):
            c = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItem(none)
            combo.addItems([ly.name for ly in self._layers(kind)])
            if c:
                combo.setCurrentText(c)
            combo.blockSignals(False)
        if self.controller is None or self.controller.layer not in self.viewer.layers:
            self._bind_selected_layer()

    def _bind_selected_layer(self, *_: Any) -> None:
        name = self.layer_combo.currentText()
        layer = self.viewer.layers[name] if name and name in self.viewer.layers else None
        if self.controller is not None and self.controller.layer is layer:
            return
        if self.controller is not None:
            try:
                self.controller.disconnect()
            except Exception:  # noqa: BLE001 - the old layer may be gone
                pass
            self.controller = None
        if layer is not None:
            self.controller = ProofreadController(self.viewer, layer, shortcuts=self.shortcuts, status=self._status)
            self._sync_options()
            self._update_buttons()
        self._update_locked()

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
            btn.setToolTip(f"{ACTION_TITLES[action]}" + (f" ({key})" if key else ""))

    def _update_locked(self) -> None:
        locked = sorted(self.controller.locked) if self.controller else []
        self.locked_label.setText("Locked: " + (", ".join(map(str, locked)) if locked else "none"))

    def _status(self, msg: str) -> None:
        self.status_label.setText(msg)
        self._update_locked()
        c = self.controller
        if c is not None and c.review is not None:
            q = c.review
            n = q.counts()
            cur = q.current
            self.review_label.setText(
                f"{len(q)} items: {n['todo']} to do, {n['fixed']} fixed, {n['ignored']} ignored"
                + (f"\ncurrent: {cur.describe()}" if cur else "")
            )

    # -- actions --------------------------------------------------------------------------------
    def run_action(self, action: str) -> Any:
        if self.controller is None:
            self._status("add or select a Labels layer first")
            return None
        self._sync_options()
        return self.controller._guarded(self.controller.action(action))

    def set_shortcut(self, action: str, key: str) -> None:
        self.shortcuts[action] = key
        if self.controller is not None:
            self.controller._guarded(lambda: self.controller.bind(action, key))
        self._update_buttons()

    def save(self) -> None:
        if self.controller is not None:
            self.controller._guarded(self.controller.save)

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

    def _install_queue(self, queue: ReviewQueue, path: str | None) -> None:
        c = self.controller
        if c is None:
            return
        c.set_review(queue, path)
        if path:
            queue.save(path)
        self._status(f"review queue: {len(queue)} items" + (f" (saved to {path})" if path else ""))

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
        name = self.gt_combo.currentText()
        if c is None or name not in self.viewer.layers:
            self._status("choose the ground-truth Labels layer first")
            return
        from napari_neuroseg._napari._layers import FISBE_INSTANCES

        from ._workers import start_worker

        gt_layer = self.viewer.layers[name]
        gt = gt_layer.metadata.get(FISBE_INSTANCES)
        gt = gt if gt is not None else gt_layer.data
        path = self._default_review_path()
        start_worker(
            ReviewQueue.from_metrics_iter, gt, c.layer.data, partly=self.partly.isChecked(),
            on_return=lambda q: self._install_queue(q, path), desc="FISBe metrics for review",
        )

    def load_review(self, path: str | None = None) -> None:
        if not path:
            start = self._default_review_path() or str(Path.home())
            path, _ = QFileDialog.getOpenFileName(self, "Load review queue", start, "Review queue (*.review.json *.json)")
        if not path or self.controller is None:
            return
        queue = self.controller._guarded(lambda: ReviewQueue.load(path))
        if queue is not None:
            self._install_queue(queue, path)
