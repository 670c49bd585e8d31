"""Screenshots of the Fine-tune dock on the real nuclei volume: before, during (live plot), after.

    xvfb-run -a python scripts/screenshot_finetune.py [--data /work/shared/real_nuclei] [--minutes 10]

Opens ``gonuclear_1135_raw.tif`` (voxel size 0.2837 x 0.1268 x 0.1268 um from its ImageJ
metadata) and its expert labels (standing in for the user's corrected annotation), segments it
with the shipped model (the "first try" the user corrects), docks the Fine-tune widget, starts a
run from ``neuroseg_nuclei``, saves the window while it trains and once it has finished and
re-segmented. Models and sessions go to a temporary folder (not the user's). Prints the numbers
(steps, minutes, F1 before/after on the held-out slab) for docs/finetune.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _wait(app, cond, timeout: float) -> bool:
    t0 = time.time()
    while not cond() and time.time() - t0 < timeout:
        app.processEvents()
        time.sleep(0.05)
    return cond()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/real_nuclei"))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--during", type=int, default=2, help="take the 'during' shot after this many validations")
    parser.add_argument("--size", type=int, nargs=2, default=(1500, 950), metavar=("W", "H"))
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="neuroseg-screens-"))
    os.environ.setdefault("NEUROSEG_MODELS_DIR", str(work / "models"))
    os.environ.setdefault("NEUROSEG_SESSIONS_DIR", str(work / "sessions"))

    import napari
    import numpy as np
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_neuroseg._napari.finetune_widget import FineTuneWidget
    from napari_neuroseg._napari.nuclei_widget import segment_nuclei_iter
    from napari_neuroseg.runtime.progress import run_to_completion

    torch.set_num_threads(args.threads)
    viewer = napari.Viewer(title="napari-neuroseg: Fine-tune", show=True)
    app = QApplication.instance()
    viewer.window.resize(*args.size)
    raw = viewer.open(str(args.data / "gonuclear_1135_raw.tif"), plugin="napari-neuroseg")[0]
    raw.name = "raw"
    gt = viewer.open(str(args.data / "gonuclear_1135_labels.tif"), plugin="napari-neuroseg", layer_type="labels")[0]
    gt.name = "corrected"
    w = FineTuneWidget(viewer)
    vs = w.voxel_size(raw)
    print("voxel size from the file:", vs)
    first = run_to_completion(segment_nuclei_iter(np.asarray(raw.data), "neuroseg_nuclei", device="cpu", voxel_size=vs))
    shipped = viewer.add_labels(first["labels"], name="shipped model", scale=raw.scale, translate=raw.translate)
    viewer.layers.move(viewer.layers.index(gt), len(viewer.layers) - 1)
    gt.contour = 1
    shipped.opacity = 0.5
    viewer.dims.set_point(0, float(raw.scale[0]) * 50)
    viewer.reset_view()
    viewer.window.add_dock_widget(w, name="Fine-tune", area="right")
    w.image.value = "raw"
    w.labels.value = "corrected"
    w.base.value = "neuroseg_nuclei"
    w.minutes.value = args.minutes
    w.device.value = "cpu"
    w.output.value = "gonuclear_finetuned"
    _wait(app, lambda: False, 1.0)
    viewer.reset_view()
    _wait(app, lambda: False, 0.5)
    args.out.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out / "finetune_before.png"), canvas_only=False)
    print("before: shipped model", int(first["labels"].max()), "objects")

    t0 = time.time()
    w.run()
    # during: a few validation points on the plot
    _wait(app, lambda: len(w.plot.val_f1) >= args.during or w.worker is None, 0.8 * 60 * args.minutes)
    _wait(app, lambda: False, 0.5)
    viewer.screenshot(str(args.out / "finetune_during.png"), canvas_only=False)
    print(f"during: {len(w.plot.loss)} steps after {time.time() - t0:.0f} s; status: {w.status.text()}")
    _wait(app, lambda: w.worker is None, 60 * args.minutes + 600)
    res = w.result
    if res is None:
        print("run failed:", w.status.text())
        return 1
    print(f"after: {res.steps} steps, {res.minutes:.2f} min, F1@0.5 held-out {res.f1_before:.3f} -> {res.f1_after:.3f}; "
          f"curve val_f1 {res.curve['val_f1']}")
    w.resegment()
    _wait(app, lambda: w.worker is None, 600)
    print(w.status.text())
    shipped.visible = False
    new = viewer.layers[f"raw nuclei ({res.name})"]
    new.opacity = 0.5
    viewer.layers.move(viewer.layers.index(gt), len(viewer.layers) - 1)
    viewer.layers.selection.active = new
    _wait(app, lambda: False, 1.0)
    viewer.screenshot(str(args.out / "finetune_after.png"), canvas_only=False)
    from stardist.matching import matching

    for name, lab in (("shipped", first["labels"]), ("fine-tuned", np.asarray(new.data))):
        m = matching(np.asarray(gt.data), lab, thresh=0.5)
        print(f"whole volume (includes the training part!) F1@0.5 {name}: {m.f1:.3f} ({m.n_pred} objects)")
    print(f"wrote {args.out}/finetune_*.png; work folder {work}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
