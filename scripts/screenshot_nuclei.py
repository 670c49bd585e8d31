"""Screenshot of the "Nuclei (StarDist-3D)" widget and its result on the bundled nuclei sample.

    xvfb-run -a python scripts/screenshot_nuclei.py [--out docs/images/nuclei_widget.png]

Opens File ▸ Open Sample ▸ napari-neuroseg ▸ nuclei, docks the widget, runs it with the shipped
model (polyhedra as a Surface layer on), waits for the worker and saves the whole window.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "nuclei_widget.png")
    parser.add_argument("--size", type=int, nargs=2, default=(1500, 900), metavar=("W", "H"))
    parser.add_argument("--ndisplay", type=int, default=3, choices=(2, 3))
    args = parser.parse_args(argv)

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_neuroseg._napari.nuclei_widget import NucleiWidget

    torch.set_num_threads(2)
    viewer = napari.Viewer(title="napari-neuroseg: Nuclei (StarDist-3D)", show=True)
    viewer.window.resize(*args.size)
    layers = viewer.open_sample("napari-neuroseg", "nuclei")
    gt = [ly for ly in layers if ly.__class__.__name__ == "Labels"]
    for ly in gt:
        ly.visible = False
    w = NucleiWidget(viewer)
    viewer.window.add_dock_widget(w, name="Nuclei (StarDist-3D)", area="right")
    image = next(ly for ly in layers if ly.__class__.__name__ == "Image")
    w.form.image.value = image
    w.form.show_surface.value = True
    w.form.device.value = "cpu"
    w.run()
    t0 = time.time()
    while w.worker is not None and time.time() - t0 < 600:
        QApplication.processEvents()
        time.sleep(0.05)
    print(w.status.text())
    surf = [ly for ly in viewer.layers if ly.name.endswith("polyhedra")]
    if args.ndisplay == 3:
        viewer.dims.ndisplay = 3
        image.rendering = "mip"
        for ly in gt:  # grid mode shows every layer, visible or not: drop the ground truth
            viewer.layers.remove(ly)
        viewer.canvas.grid.enabled = True  # image | labels | polyhedra side by side
        viewer.canvas.grid.shape = (1, -1)
        viewer.reset_view()
        camera = viewer.scene.camera
        camera.angles = tuple(a + t for a, t in zip(camera.angles, (-20.0, 15.0, 0.0)))
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False)
    print(f"wrote {args.out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
