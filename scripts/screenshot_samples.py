"""Screenshot of napari showing both napari-neuroseg sample datasets (for docs/getting-started).

Run under a real display or Xvfb::

    xvfb-run -a python scripts/screenshot_samples.py [--out docs/images/getting-started.png]

Opens the synthetic nuclei (image + ground truth) and the FISBe-like neurons (3 additive raw
channels + ground-truth instances) through ``viewer.open_sample`` — exactly what a user gets from
File ▸ Open Sample ▸ napari-neuroseg — places them side by side in a 3D view and saves
``viewer.screenshot(canvas_only=False)`` (the whole window: canvas, layer list, controls).
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "napari-neuroseg"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "getting-started.png")
    parser.add_argument("--tilt", type=float, nargs=3, default=(-20.0, 15.0, 0.0),
                        help="added to napari's default 3D camera angles (which look down Z)")
    parser.add_argument("--size", type=int, nargs=2, default=(1500, 900), metavar=("W", "H"))
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-neuroseg samples", show=True)
    viewer.window.resize(*args.size)

    nuclei = viewer.open_sample(PLUGIN, "nuclei")
    neurons = viewer.open_sample(PLUGIN, "neurons")

    # Four blocks in one 3D scene: nuclei image | nuclei GT (top), neurons raw | neurons GT
    # (bottom). The nuclei span 128 x 128 x 128 um (64 slices x 2), the neurons 48 x 160 x 160.
    gap = 16.0
    nuc_image, nuc_labels = nuclei
    neuron_raw = [ly for ly in neurons if ly.__class__.__name__ == "Image"]
    neuron_gt = next(ly for ly in neurons if ly.name.endswith("instances"))
    overlaps = [ly for ly in neurons if ly.name.endswith("overlaps")]
    nuc_image.rendering = "mip"
    nuc_labels.translate = (0.0, 0.0, 128.0 + gap)
    for layer in neuron_raw:
        layer.rendering = "mip"
        layer.translate = (0.0, 128.0 + gap, 0.0)
    for layer in [neuron_gt, *overlaps]:
        layer.translate = (0.0, 128.0 + gap, 160.0 + gap)
    for layer in overlaps:
        layer.visible = False

    viewer.dims.ndisplay = 3
    viewer.reset_view()
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.angles = tuple(a + t for a, t in zip(camera.angles, args.tilt))
    print(f"camera angles {tuple(round(a, 1) for a in camera.angles)}")
    camera.zoom *= 0.72
    viewer.layers.selection = {neuron_gt}

    app = QApplication.instance()
    for _ in range(5):
        app.processEvents()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False, flash=False)
    print(f"wrote {args.out} ({', '.join(ly.name for ly in viewer.layers)})")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
