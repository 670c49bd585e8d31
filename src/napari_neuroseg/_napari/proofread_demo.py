"""Make the proofreading screenshots of ``docs/proofreading.md`` (a scripted demo).

    xvfb-run -a python -m napari_neuroseg._napari.proofread_demo docs/images
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def _save(viewer, path: Path, canvas_only: bool = False) -> None:
    from napari_neuroseg.io.png import write_png

    img = viewer.screenshot(canvas_only=canvas_only, flash=False)
    write_png(path, img)
    print(f"wrote {path} {img.shape}")


def _camera(viewer):
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def main(out_dir: str = "docs/images") -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _nuclei_split_shots(out)
    _neurons_review_shot(out)
    return 0


def _new_viewer():
    import napari

    viewer = napari.Viewer(show=False)
    viewer.window._qt_window.resize(1400, 900)
    return viewer


def _add_proofread_dock(viewer):
    from napari_neuroseg._napari.proofread_widget import ProofreadWidget

    widget = ProofreadWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Proofreading", area="right")
    return widget


def _touching_pair(labels: np.ndarray) -> tuple[int, int, int, tuple, tuple]:
    """``(a, b, z, seed_a, seed_b)``: the touching pair of labels with the most contact, the
    slice where both are large and a seed at each one's centre in that slice."""
    from scipy import ndimage

    best = None
    for a in [int(i) for i in np.unique(labels) if i]:
        ring = ndimage.binary_dilation(labels == a) & (labels != a) & (labels > 0)
        if ring.any():
            b = int(np.bincount(labels[ring]).argmax())
            contact = int((labels[ring] == b).sum())
            if best is None or contact > best[0]:
                best = (contact, a, b)
    _, a, b = best
    per_z = np.minimum((labels == a).sum((1, 2)), (labels == b).sum((1, 2)))
    z = int(np.argmax(per_z))
    s1 = (z, *np.round(np.argwhere(labels[z] == a).mean(0)).astype(int))
    s2 = (z, *np.round(np.argwhere(labels[z] == b).mean(0)).astype(int))
    return a, b, z, tuple(int(v) for v in s1), tuple(int(v) for v in s2)


def _nuclei_split_shots(out: Path) -> None:
    """1. nuclei: two touching nuclei merged by mistake, seeds placed for a split
    (``proofread_widget.png``), then before | after the split (``proofread_split.png``)."""
    from napari_neuroseg import proofread as pr
    from napari_neuroseg.io.png import write_png
    from napari_neuroseg.synth import make_nuclei

    image, labels = make_nuclei((32, 128, 128), n_nuclei=40, seed=2)
    labels = labels.astype(np.uint32)
    # the seeds go at the pair's centres, then the pair is merged to create the error to fix
    a, b, z, s1, s2 = _touching_pair(labels)
    pr.merge(labels, [a, b])
    viewer = _new_viewer()
    viewer.add_image(image, name="nuclei", colormap="gray")
    layer = viewer.add_labels(labels, name="nuclei labels", opacity=0.55)
    ctrl = _add_proofread_dock(viewer).controller
    centre = (np.array(s1) + np.array(s2)) / 2
    viewer.dims.set_point(0, z)
    layer.selected_label = a
    ctrl.picker.add_seed(s1)
    ctrl.picker.add_seed(s2)
    _camera(viewer).center = tuple(float(c) for c in centre[1:])
    _camera(viewer).zoom = 5
    _save(viewer, out / "proofread_widget.png")
    before = viewer.screenshot(canvas_only=True, flash=False)
    ctrl.picker.run_split()
    after = viewer.screenshot(canvas_only=True, flash=False)
    pair = np.concatenate([before, np.full((before.shape[0], 12, 4), 255, np.uint8), after], axis=1)
    rows = np.flatnonzero(before[..., :3].max(axis=(1, 2)) > 0)
    write_png(out / "proofread_split.png", pair[rows[0] : rows[-1] + 1])
    viewer.close()


def _neurons_review_shot(out: Path) -> None:
    """2. FISBe-like neurons: a review queue from the metrics (a false merge and a missed
    neuron) in 3D (``proofread_review.png``)."""
    from napari_neuroseg.io import instances_to_labels
    from napari_neuroseg.proofread.review import ReviewQueue
    from napari_neuroseg.synth import make_neurons

    vol = make_neurons((40, 160, 160), n_neurons=4, seed=5)
    gt = vol.gt_instances
    pred = np.zeros(gt.shape[1:], np.uint32)
    pred[gt[0] > 0] = 1
    pred[(gt[1] > 0) & (pred == 0)] = 1  # false merge of neurons 1 and 2
    pred[(gt[2] > 0) & (pred == 0)] = 3  # neuron 4 is missed
    viewer = _new_viewer()
    for c, cmap in enumerate(("red", "green", "blue")):
        viewer.add_image(vol.raw[c], name=f"raw {c}", colormap=cmap, blending="additive")
    viewer.add_labels(instances_to_labels(gt)[0], name="ground truth", visible=False)
    layer = viewer.add_labels(pred, name="prediction")
    viewer.dims.ndisplay = 3
    widget = _add_proofread_dock(viewer)
    widget.layer_combo.setCurrentText("prediction")
    widget.gt_combo.setCurrentText("ground truth")
    widget._install_queue(ReviewQueue.from_metrics(gt, pred), None)
    widget.run_action("review_next")
    layer.show_selected_label = True
    _camera(viewer).zoom *= 1.3
    _save(viewer, out / "proofread_review.png")
    viewer.close()


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
