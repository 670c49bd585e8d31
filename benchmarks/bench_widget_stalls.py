"""How long does the main thread stall while the Evaluate dock runs? (targets: <= 100 ms with a
2D view, <= 300 ms with a 3D view)

A napari viewer (shown, under Xvfb on a headless machine) with napari's error hooks installed
and its activity dock showing the progress bar, a ground truth with hundreds of small nuclei and
a prediction of it; the Evaluate dock runs each task and a 20 ms ``QTimer`` records the gaps
between its ticks. Printed per case: the whole run and the longest gap, for the first run (adds
the error layer) and a second run (swaps its data). The first run of a process also pays
one-off costs (numba compiling stardist's overlap table in the worker, napari's first-use
shaders), so the second run is the steady state. A baseline in the same run, one redraw of the
scene with no job, shows what the display alone costs (software OpenGL under Xvfb draws a 3D
view slowly); a case passes at <= target or <= 1.5 x that baseline.

Before the progress rule of ``_napari/_workers.py`` this job nested hundreds of progress updates
(``RecursionError``) and froze for seconds; before the worker-built error layer the result
arrival froze the viewer 2.6 s (2D) to 6-9 s (3D).

    xvfb-run -a python benchmarks/bench_widget_stalls.py [--n 479] [--shape 64 128 128]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "_napari"))

TARGETS = {2: 0.100, 3: 0.300}


def scene(n: int, shape: tuple[int, int, int]):
    from test_evaluate_responsive import many_nuclei

    gt = many_nuclei(n, shape=shape, r=2)
    pred = gt.astype(np.uint32)
    pred[(gt > 0) & (np.roll(gt, -1, axis=2) != gt)] = 0  # lose one face: IoU ~0.7
    pred[np.isin(pred, np.arange(1, max(2, n // 30)))] = 0  # some missed
    return gt, pred


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=479, help="number of nuclei")
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 128, 128))
    args = ap.parse_args(argv)

    import napari
    from napari.utils.notifications import notification_manager
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_neuroseg._napari.evaluate_widget import EvaluateWidget

    gt, pred = scene(args.n, tuple(args.shape))
    print(f"{len(np.unique(gt)) - 1} GT nuclei, {len(np.unique(pred)) - 1} predicted, "
          f"shape {gt.shape}")
    viewer = napari.Viewer(show=True)
    viewer.add_labels(gt, name="gt")
    viewer.add_labels(pred, name="pred")
    w = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.form.gt.value = viewer.layers["gt"]
    w.form.pred.value = viewer.layers["pred"]
    app = QApplication.instance()
    notification_manager.install_hooks()
    start_records = len(notification_manager.records)
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(20)
    failed = False
    try:
        for ndisplay in (2, 3):
            viewer.dims.ndisplay = ndisplay
            # baseline in the same run: the stall of one redraw of the scene, no job running
            # (under Xvfb the canvas is drawn by software OpenGL: a 3D redraw alone can take s)
            t_end = time.perf_counter() + 0.5
            while time.perf_counter() < t_end:
                app.processEvents()
                time.sleep(0.005)
            gaps.clear()
            last[0] = time.perf_counter()
            viewer.reset_view()
            t_end = time.perf_counter() + 1.0
            while time.perf_counter() < t_end:
                app.processEvents()
                time.sleep(0.005)
            base = max(gaps, default=float("nan"))
            print(f"{ndisplay}D baseline: one redraw, no job: longest stall {base * 1000:6.0f} ms")
            for task in ("nuclei", "neurons"):
                w.set_task(task)
                for rep in ("first", "second"):
                    if rep == "first":
                        for ly in [ly for ly in viewer.layers if ly.name == "evaluation errors"]:
                            viewer.layers.remove(ly)
                    t_end = time.perf_counter() + 0.3
                    while time.perf_counter() < t_end:  # settle
                        app.processEvents()
                        time.sleep(0.005)
                    gaps.clear()
                    last[0] = time.perf_counter()
                    t0 = time.perf_counter()
                    w.run()
                    while w.worker is not None and time.perf_counter() - t0 < 600:
                        app.processEvents()
                        time.sleep(0.002)
                    wall = time.perf_counter() - t0
                    t_end = time.perf_counter() + 0.3
                    while time.perf_counter() < t_end:  # the layer's first draw counts too
                        app.processEvents()
                        time.sleep(0.005)
                    worst = max(gaps, default=float("nan"))
                    ok = worst <= max(TARGETS[ndisplay], 1.5 * base)
                    failed |= not ok
                    print(f"{ndisplay}D {task:8s} {rep:6s} run: {wall:6.2f} s, longest stall "
                          f"{worst * 1000:6.0f} ms = {worst / base:4.1f} x baseline (target "
                          f"{TARGETS[ndisplay] * 1000:.0f} ms or 1.5 x baseline) "
                          f"{'ok' if ok else 'OVER'}; status: {w.status.text()[:60]}")
    finally:
        timer.stop()
        notification_manager.restore_hooks()
    errors = [r for r in notification_manager.records[start_records:]
              if str(r.severity).lower() in ("error", "fatal")]
    print(f"error notifications: {len(errors)}")
    viewer.close()
    return 1 if failed or errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
