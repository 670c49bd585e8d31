"""Drive every dock widget of the plugin on its samples and save a screenshot of each step.

    python scripts/screenshot_widgets.py [--out docs/images] [--only nuclei neurons ...]

Runs under a virtual X display of 1280x800 (``xvfb-run``; started here when there is no
``$DISPLAY``), in a real napari window of that size, the way a user meets the plugin: File ▸ Open
Sample ▸ napari-neuroseg, Plugins ▸ napari-neuroseg ▸ <dock>, the dock's own buttons. Steps:

- ``nuclei``: the nuclei sample, the Nuclei dock, a run with the shipped model (result shown);
- ``neurons``: the neurons sample, the Neurons dock, a run with the shipped model;
- ``evaluate``: the nuclei result against the ground truth, then a click on an error in the list
  (the view jumps to it);
- ``proofreading``: the Proofreading dock on the nuclei result, a review queue from the metrics,
  the first item (zoomed to its box, outlined), then the Shortcuts section;
- ``batch``: the Batch dock thresholding the nuclei sample written to two TIFF files, then
  *Open result* on the first row (over its input);
- ``finetune``: the Fine-tune dock opened on the nuclei sample (no training run: minutes of CPU).

Each PNG is ``<out>/widgets-<step>.png`` (the whole window, docks included). A step that fails
or times out is reported and screenshotted as it stands; the exit code is the number of failed
steps. Heavy runs use 2 torch threads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCREEN = (1280, 800)
STEPS = ("nuclei", "neurons", "evaluate", "proofreading", "batch", "finetune")
PLUGIN = "napari-neuroseg"
#: a dock's width (px) at least: what the docks ask for at 1280x800 (tests/_napari/test_dock_lifecycle.py)
DOCK_WIDTH = 420


def _ensure_display(argv: list[str]) -> None:
    """Re-run this script under ``xvfb-run`` (1280x800) when there is no display."""
    if os.environ.get("DISPLAY") or os.environ.get("NEUROSEG_SCREENSHOT_CHILD"):
        return
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        raise SystemExit("no $DISPLAY and no xvfb-run: install xvfb (apt-get install xvfb) or run under a display")
    env = {**os.environ, "NEUROSEG_SCREENSHOT_CHILD": "1"}
    cmd = [xvfb, "-a", "-s", f"-screen 0 {SCREEN[0]}x{SCREEN[1]}x24", sys.executable, __file__, *argv]
    raise SystemExit(subprocess.call(cmd, env=env))


class Driver:
    """One napari window; helpers to wait for workers and to save screenshots."""

    def __init__(self, out: Path, timeout: float):
        import napari

        self.out = out
        self.timeout = timeout
        self.viewer = napari.Viewer(title="napari-neuroseg", show=True)
        self.window = self.viewer.window._qt_window
        self.window.resize(*SCREEN)
        self.failed: list[str] = []
        self.written: list[Path] = []
        self.wait(0.3)

    # -- Qt helpers ----------------------------------------------------------------------------
    def wait(self, seconds: float) -> None:
        from qtpy.QtWidgets import QApplication

        end = time.time() + seconds
        while time.time() < end:
            QApplication.processEvents()
            time.sleep(0.02)

    def wait_for(self, done, what: str, timeout: float | None = None) -> bool:
        from qtpy.QtWidgets import QApplication

        t0 = time.time()
        limit = self.timeout if timeout is None else timeout
        while not done():
            if time.time() - t0 > limit:
                print(f"  timed out after {limit:.0f} s waiting for {what}")
                return False
            QApplication.processEvents()
            time.sleep(0.05)
        print(f"  {what}: {time.time() - t0:.1f} s")
        return True

    def wait_worker(self, widget, what: str) -> bool:
        ok = self.wait_for(lambda: widget.worker is None, what)
        self.wait(0.5)
        return ok

    def dock(self, name: str):
        """Plugins ▸ napari-neuroseg ▸ ``name``: the dock widget (QDockWidget, widget)."""
        from qtpy.QtCore import Qt

        dw, widget = self.viewer.window.add_plugin_dock_widget(PLUGIN, name)
        self.wait(0.1)
        # the dock area keeps the width of a wider dock closed before: back to this one's own
        width = max(DOCK_WIDTH, widget.sizeHint().width(), widget.minimumSizeHint().width())
        self.window.resizeDocks([dw], [width], Qt.Orientation.Horizontal)
        self.wait(0.3)
        return dw, widget

    def shot(self, name: str) -> Path:
        from imageio.v3 import imwrite

        self.wait(0.4)
        img = self.viewer.screenshot(canvas_only=False, flash=False)
        path = self.out / f"widgets-{name}.png"
        imwrite(path, img)
        self.written.append(path)
        print(f"  wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} {img.shape[1]}x{img.shape[0]}")
        return path

    def step(self, name: str, func) -> None:
        print(f"[{name}]")
        t0 = time.time()
        try:
            func(self)
        except Exception:  # noqa: BLE001 - report, screenshot what is there, go on
            traceback.print_exc()
            self.failed.append(name)
            try:
                self.shot(f"{name}-failed")
            except Exception:  # noqa: BLE001
                traceback.print_exc()
        print(f"  {name}: {time.time() - t0:.1f} s")

    def clear_docks(self) -> None:
        """Close the plugin's docks (the layers stay), the way remove_dock_widget does."""
        from qtpy.QtWidgets import QDockWidget

        for dw in list(self.window.findChildren(QDockWidget)):
            inner = dw.widget()
            if inner is not None and type(inner).__module__.startswith("napari_neuroseg"):
                self.viewer.window.remove_dock_widget(dw)
        self.wait(0.2)

    def layer(self, cls: str, contains: str = ""):
        for ly in self.viewer.layers:
            if ly.__class__.__name__ == cls and contains in ly.name:
                return ly
        raise LookupError(f"no {cls} layer with {contains!r} in {[ly.name for ly in self.viewer.layers]}")


# -------------------------------------------------------------------------------- the steps
def _nuclei_result(d: Driver, *, shots: bool):
    """The nuclei sample and a Nuclei run: (dock, GT layer, result layer). The run is made once;
    later steps get its result again as a layer (the same data, name and voxel size)."""
    d.viewer.open_sample(PLUGIN, "nuclei")
    gt = d.layer("Labels", "GT")
    gt.visible = False
    cached = getattr(d, "nuclei_result", None)
    if cached is not None and not shots:
        data, kwargs = cached
        return None, gt, d.viewer.add_labels(data, **kwargs)
    _, w = d.dock("Nuclei (StarDist-3D)")
    image = d.layer("Image", "nuclei")
    d.viewer.layers.selection.active = image
    form = getattr(w, "form", None)
    if form is not None and hasattr(form, "image"):
        form.image.value = image
    if shots:
        d.shot("nuclei-1-dock")
    w.run()
    d.wait_worker(w, "nuclei run")
    result = next(ly for ly in d.viewer.layers if ly.__class__.__name__ == "Labels" and ly is not gt
                  and "surface" not in ly.name and "polyhedra" not in ly.name)
    d.nuclei_result = (result.data, {"name": result.name, "scale": result.scale, "metadata": dict(result.metadata)})
    d.viewer.layers.selection.active = result
    d.viewer.dims.set_point(0, d.viewer.dims.range[0].stop / 2)
    if shots:
        d.shot("nuclei-2-result")
    return w, gt, result


def step_nuclei(d: Driver) -> None:
    _nuclei_result(d, shots=True)


def step_neurons(d: Driver) -> None:
    d.viewer.open_sample(PLUGIN, "neurons")
    for ly in d.viewer.layers:
        if ly.__class__.__name__ == "Labels":
            ly.visible = False
    _, w = d.dock("Neurons (FISBe)")
    d.viewer.dims.ndisplay = 3  # a single slice of thin neurons is nearly black: show them whole
    for ly in d.viewer.layers:
        if ly.__class__.__name__ == "Image":
            ly.rendering = "mip"
    d.viewer.reset_view()
    d.shot("neurons-1-dock")
    w.run()
    d.wait_worker(w, "neurons run")
    d.shot("neurons-2-result")


def step_evaluate(d: Driver) -> None:
    _, gt, result = _nuclei_result(d, shots=False)
    d.clear_docks()
    _, w = d.dock("Evaluate segmentation")
    form = getattr(w, "form", None)
    if form is not None and hasattr(form, "gt"):
        form.gt.value = gt
        form.pred.value = result
    d.shot("evaluate-1-dock")
    w.run()
    d.wait_worker(w, "evaluate run")
    d.shot("evaluate-2-result")
    lst = w.errors_list
    row = next((i for i in range(lst.count()) if lst.item(i).data(256)), None)
    if row is None:
        print("  no error to jump to")
        return
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    lst.scrollToItem(lst.item(row))
    rect = lst.visualItemRect(lst.item(row))
    QTest.mouseClick(lst.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, rect.center())
    d.shot("evaluate-3-jump")


def step_proofreading(d: Driver) -> None:
    _, gt, result = _nuclei_result(d, shots=False)
    gt.visible = False
    d.clear_docks()
    _, w = d.dock("Proofreading")
    d.viewer.layers.selection.active = result
    w.review_section.set_expanded(True)
    w.gt_combo.setCurrentText(gt.name)
    d.shot("proofreading-1-dock")
    w.build_review_from_metrics()
    d.wait_for(lambda: w.controller is not None and w.controller.review is not None, "review queue from metrics")
    d.wait(0.3)
    queue, shape = w.controller.review, result.data.shape
    # for a clearer picture: the first item away from the volume's Y/X edges (else the first)
    inner = [k for k, it in enumerate(queue.items)
             if all(0 < lo and hi < n for (lo, hi), n in list(zip(it.bbox, shape))[1:])]
    for _ in range(1 + (inner[0] if inner else 0)):
        w.run_action("review_next")
    print(f"  review item: {queue.describe()}")
    d.shot("proofreading-2-jump-to-error")
    w.review_section.set_expanded(False)
    w.shortcut_section.set_expanded(True)
    d.shot("proofreading-3-shortcuts")


def step_batch(d: Driver) -> None:
    from napari_neuroseg.io import write_tiff
    from napari_neuroseg.synth import make_nuclei

    tmp = Path(tempfile.mkdtemp(prefix="batch-demo-"))
    try:
        inputs = tmp / "inputs"
        inputs.mkdir()
        for seed in (0, 1):
            image, _ = make_nuclei((32, 96, 96), n_nuclei=30, seed=seed)
            write_tiff(inputs / f"nuclei_{seed}.tif", image, axes="ZYX", scale=(2.0, 1.0, 1.0))
        _, w = d.dock("Batch")
        w.form.inputs.value = str(inputs)
        w.form.task.value = "threshold"
        for name, value in (("sigma", "1.5"), ("min_size", "50")):  # smooth the noise, drop specks
            if name in [f.name for f in w.form.params]:
                w.set_param(name, value)
        w.form.outdir.value = str(tmp / "outputs")
        d.shot("batch-1-dock")
        w.run()
        d.wait_worker(w, "batch run")
        d.shot("batch-2-result")
        if w.table.rowCount():
            d.viewer.open(str(inputs / w.table.item(0, 0).text()), plugin=PLUGIN)  # row 0's input under it
            w.table.selectRow(0)
            w.open_result(0)  # read in a worker thread; the layer is added when ready
            d.wait_for(lambda: w.opened_layer is not None, "the opened result")
            d.wait(0.5)
            d.shot("batch-3-open-result")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def step_finetune(d: Driver) -> None:
    d.viewer.open_sample(PLUGIN, "nuclei")
    d.dock("Fine-tune")
    d.shot("finetune-1-dock")


STEP_FUNCS = {"nuclei": step_nuclei, "neurons": step_neurons, "evaluate": step_evaluate,
              "proofreading": step_proofreading, "batch": step_batch, "finetune": step_finetune}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for one run")
    args = parser.parse_args(argv)
    _ensure_display(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import torch

    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    d = Driver(args.out, args.timeout)
    for name in args.only:
        d.clear_docks()
        d.viewer.layers.clear()
        d.viewer.dims.ndisplay = 2
        d.step(name, STEP_FUNCS[name])
    d.viewer.close()
    print(f"{len(d.written)} screenshots, failed steps: {d.failed or 'none'}")
    return len(d.failed)


if __name__ == "__main__":
    raise SystemExit(main())
