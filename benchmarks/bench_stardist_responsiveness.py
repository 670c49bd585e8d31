"""Does the viewer's event loop keep responding while StarDist-3D runs? (target: no stall > 100 ms)

Runs ``predict_instances_iter`` in a worker thread (as napari's thread workers do) and measures,
on the main thread, the longest gap between ticks of

* a Qt ``QTimer`` (10 ms interval) in a ``QCoreApplication`` event loop, when Qt is available;
* a plain loop that sleeps 5 ms and measures how late it wakes up (it needs the GIL to wake).

Once with NMS/rendering in the worker process (the default) and once in-process
(``use_subprocess=False``), which shows what the worker process buys: the ``stardist`` C++ NMS
holds the GIL for its whole run.

    nice -n 10 python benchmarks/bench_stardist_responsiveness.py [--shape 31 122 114]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
FIXTURE_MODEL = REPO / "tests" / "stardist3d" / "fixtures" / "models" / "resnet_b2_g111_r32"


def run_job(model, img, use_subprocess: bool, out: dict) -> None:
    from napari_neuroseg.runtime import run_to_completion

    t0 = time.perf_counter()
    steps = []
    labels, _ = run_to_completion(
        model.predict_instances_iter(img, use_subprocess=use_subprocess), lambda p: steps.append(p)
    )
    out.update(seconds=time.perf_counter() - t0, objects=int(labels.max()), steps=len(steps))


def measure_plain(model, img, use_subprocess: bool) -> tuple[float, dict]:
    out: dict = {}
    th = threading.Thread(target=run_job, args=(model, img, use_subprocess, out))
    worst = 0.0
    th.start()
    while th.is_alive():
        t0 = time.perf_counter()
        time.sleep(0.005)
        worst = max(worst, time.perf_counter() - t0 - 0.005)
    th.join()
    return worst, out


def measure_qt(model, img, use_subprocess: bool) -> tuple[float, dict] | None:
    try:
        from qtpy.QtCore import QCoreApplication, QTimer
    except Exception:  # noqa: BLE001 - no Qt binding
        return None
    app = QCoreApplication.instance() or QCoreApplication([])
    out: dict = {}
    gaps: list[float] = []
    last = [time.perf_counter()]
    th = threading.Thread(target=run_job, args=(model, img, use_subprocess, out))

    def tick():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now
        if not th.is_alive():
            timer.stop()
            app.quit()

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    timer.start()
    th.start()
    last[0] = time.perf_counter()
    app.exec() if hasattr(app, "exec") else app.exec_()
    th.join()
    return (max(gaps) - 0.010 if gaps else float("nan")), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[31, 122, 114])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from bench_stardist_forward import nuclei_volume

    from napari_neuroseg.models.stardist3d import StarDist3D

    if not FIXTURE_MODEL.is_dir():
        print("fixture model missing: run tests/stardist3d/make_keras_fixtures.py")
        return 1
    model = StarDist3D.from_folder(FIXTURE_MODEL, device="cpu")
    img = nuclei_volume(a.shape)
    model.predict_instances(img[:16, :32, :32], use_subprocess=True)  # start the worker, warm up
    print(f"# event-loop stalls during predict_instances on {tuple(a.shape)} (target: none > 100 ms)")
    for use_sub in (True, False):
        label = "NMS in worker process" if use_sub else "NMS in-process (for comparison)"
        worst, out = measure_plain(model, img, use_sub)
        print(f"{label:32s} plain loop: longest stall {worst * 1000:7.1f} ms "
              f"(run {out['seconds']:.1f} s, {out['objects']} objects, {out['steps']} progress steps)", flush=True)
        res = measure_qt(model, img, use_sub)
        if res is not None:
            worst, out = res
            print(f"{label:32s} QTimer:     longest stall {worst * 1000:7.1f} ms "
                  f"(run {out['seconds']:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
