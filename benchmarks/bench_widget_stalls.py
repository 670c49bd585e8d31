"""How long does the main thread stall while the Evaluate dock runs? (issue 17's targets: <= 100 ms
while the job runs, <= 300 ms when its result arrives)

A napari viewer (shown, under Xvfb on a headless machine) with napari's error hooks installed
and its activity dock showing the progress bar, a ground truth with hundreds of small nuclei and
a prediction of it; the Evaluate dock runs each task and a 20 ms ``QTimer`` records the gaps
between its ticks. Printed per case: the whole run, the longest gap while the job runs and the
longest from the result's arrival (layer, tables, list) to its first draw, with the longest full
garbage collection in each window and the CPU time the main thread and the whole process spent in
the longest stall while running (on a loaded machine most of a long gap can be other processes'
turns: a gap with little CPU in it was not this process's work), for the first run (adds the error layer) and a second run
(swaps its data); after the cases, one redraw of the scene with the error layer. The first run of a process also pays
one-off costs (numba compiling stardist's overlap table in the worker, napari's first-use
shaders), so the second run is the steady state. A baseline in the same run, one redraw of the
scene with no job, shows what the display alone costs (software OpenGL under Xvfb draws a 3D
view slowly); a case passes at <= its target or <= 1.5 x that baseline. The result's arrival
is also compared with one redraw of the scene it leaves (the same view with the error layer, no
job, measured right after the case): in 3D every visible Labels layer is ray-cast, so the third
volume makes napari's every redraw of that scene ~1.5 x the two-layer baseline, whatever
triggers it; an arrival passes at <= 1.5 x that redraw too. ``--sample`` samples the main
thread's stack every 2 ms and prints, for each case, the gaps after the arrival and where the
longest one went. Before the first run the benchmark waits, as a user choosing the layers would, for
the dock's background threads that ready the metrics' numba kernels (compiled the first time
after an install: run with ``NUMBA_CACHE_DIR`` set to an empty folder to see that case), and
prints the longest stall meanwhile.

Before the progress rule of ``_napari/_workers.py`` this job nested hundreds of progress updates
(``RecursionError``) and froze for seconds; before the worker-built error layer the result
arrival froze the viewer 2.6 s (2D) to 6-9 s (3D).

    xvfb-run -a python benchmarks/bench_widget_stalls.py [--n 479] [--shape 64 128 128]

``--widget nuclei``: the Nuclei dock's *first* run of a process on the napari sample (the
shipped model), which used to compile the numba NMS (garbage collections of the compiler stalled
the viewer up to 138 ms). Each case is a fresh process (the compilation happens once per
process), both cases alternate in one session (``--repeats``): ``dock-warmup`` as shipped (the
dock compiles in a background thread when it opens; the stall while it does, the user still
choosing parameters, is printed too) and ``no-warmup`` (the dock's warm-up disabled: the
compilation overlaps the first run's network, as before).

    xvfb-run -a python benchmarks/bench_widget_stalls.py --widget nuclei [--repeats 2] [--cases dock-warmup] [--all-layers]

``--all-layers`` ticks the dock's "Also show the polyhedra" and "… probability map" boxes: the
result then adds three layers (one event-loop pass each, ``_display.StagedDisplay``).

Every case also records the process's garbage collections (``gc.callbacks``): a full
collection holds the GIL for its whole length (0.3-0.9 s in a process with napari, torch and
numba loaded: ~570,000 tracked objects), in whichever thread crosses the threshold, so the
longest one inside each window is printed beside the stall.

``--widget neurons``: the Neurons dock's first run of a fresh process on the napari sample
(shipped model): the longest stall while the dock sits open until its warm-up (the
post-processing's numba kernels, compiled or loaded in a background thread) has ended, while
the run runs (where, and the status line then) and at the result's arrival; both cases
(``dock-warmup`` as shipped, ``no-warmup``: the kernels readied in the run) unless
``--cases dock-warmup``. ``--cold`` gives each process an empty numba cache, as the first run
after an install meets it (the kernels are compiled: ~12 s).

``--widget arrival [--n 1000]``: the Nuclei dock's result arrival alone, a result with ``n``
objects handed to the dock as the worker returned it before (``int32`` labels) and as it does
now (``uint16``, caches warmed and the layers built in the worker: ``_napari/_display.py``,
``nuclei_widget.result_layers``), each in a fresh process, once the dock's background import of
torch has ended (a result cannot come earlier).

    xvfb-run -a python benchmarks/bench_widget_stalls.py --widget neurons [--repeats 2] [--cases dock-warmup] [--cold]
    xvfb-run -a python benchmarks/bench_widget_stalls.py --widget arrival --n 1000 [--repeats 2]

``--widget open``: opening each dock as napari does (its npe2 widget contribution) in a fresh
process that has not imported torch: the longest stall from the click until the dock's background
work (torch's import, the nuclei NMS compilation) has ended, the longest garbage collection in
that window, and which thread imported torch (it used to be the main thread: 4-6 s). This machine
sets PYTHONDONTWRITEBYTECODE; run with ``PYTHONPYCACHEPREFIX=<dir>`` and that unset (second run
onwards) so that module compilation, which an installed package does not pay, is not counted.

    xvfb-run -a python benchmarks/bench_widget_stalls.py --widget open [--docks nuclei neurons finetune] [--repeats 2]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "_napari"))

#: issue 17's targets for the longest main-thread stall: while a job runs, and when its result
#: arrives (the layer is added or updated, the tables and the error list are filled)
RUN_TARGET, ARRIVAL_TARGET = 0.100, 0.300


def scene(n: int, shape: tuple[int, int, int]):
    from test_evaluate_responsive import many_nuclei

    gt = many_nuclei(n, shape=shape, r=2)
    pred = gt.astype(np.uint32)
    pred[(gt > 0) & (np.roll(gt, -1, axis=2) != gt)] = 0  # lose one face: IoU ~0.7
    pred[np.isin(pred, np.arange(1, max(2, n // 30)))] = 0  # some missed
    return gt, pred


def settle_events(app, ends: list[float], seconds: float) -> None:
    """Pump events for ``seconds``, then on until a tick of the stall meter (its times in
    ``ends``) has come after the last stall: a redraw longer than the pump would otherwise end
    it unmeasured (at most 10 s more)."""
    t_end = time.perf_counter() + seconds
    while True:
        app.processEvents()
        time.sleep(0.005)
        now = time.perf_counter()
        if now >= t_end and ((ends and now - ends[-1] < 0.06) or now > t_end + 10):
            return


def _pump(app, seconds: float) -> None:
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        app.processEvents()
        time.sleep(0.005)


def wait_for_warmups(app, prefix: str, at_least: float = 0.0, limit: float = 300.0) -> float:
    """Pump events for ``at_least`` s, then until no docks' background thread whose name starts
    with ``prefix`` (``_workers.run_in_background``) is waiting to start or running (at most
    ``limit`` s in all): the user choosing parameters while a dock readies its kernels. Returns
    the seconds waited."""
    from napari_neuroseg._napari import _workers

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        warming = [th for name, th in list(_workers._BACKGROUND.items())
                   if name.startswith(prefix) and (th.ident is None or th.is_alive())]
        if not warming and time.perf_counter() - t0 >= at_least:
            break
        app.processEvents()
        time.sleep(0.002)
    return time.perf_counter() - t0


def nuclei_case(warmup: bool, threads: int, all_layers: bool = False) -> dict:
    """One fresh-process case of the Nuclei dock's first run; returns the measured numbers."""
    import napari
    import torch
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_neuroseg._napari import nuclei_widget
    from napari_neuroseg.models.stardist3d import nms

    torch.set_num_threads(threads)
    if not warmup:  # the dock as it was: no compilation before the first run
        nuclei_widget.NucleiWidget._start_warmup = staticmethod(lambda: None)
    viewer = napari.Viewer(show=True)
    layers = viewer.open_sample("napari-neuroseg", "nuclei")
    image = next(ly for ly in layers if ly.__class__.__name__ == "Image")
    app = QApplication.instance()
    gaps: list[float] = []
    last = [time.perf_counter()]

    where: list[tuple[float, float, str]] = []  # (end time, gap, status line) of each long gap
    arrived: list[bool] = []
    loading: list[bool] = []
    w = None

    ends: list[float] = []

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        ends.append(now)
        arrived.append(w is not None and w.result is not None)  # the gap ended after the result came
        loading.append(w is not None and "loading the model" in w.status.text())
        if now - last[0] > 0.1:
            where.append((now, now - last[0], w.status.text()[:50] if w is not None else ""))
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(20)
    gc_pauses = _track_gc()
    _pump(app, 1.0)
    gaps.clear()
    last[0] = time.perf_counter()
    viewer.reset_view()
    _pump(app, 1.0)
    base = max(gaps, default=float("nan"))
    # the dock opens (construction: widgets, the model's thresholds) ...
    gaps.clear()
    t0 = time.perf_counter()
    last[0] = t0
    dock = nuclei_widget.NucleiWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Nuclei (StarDist-3D)")
    dock.form.image.value = image
    dock.form.device.value = "cpu"
    dock.form.show_surface.value = dock.form.show_prob.value = all_layers  # --all-layers
    _pump(app, 0.3)
    open_stall = max(gaps, default=float("nan"))
    # ... and the user picks parameters for a while: the warm-up compiles meanwhile (until done)
    gaps.clear()
    t1 = time.perf_counter()
    last[0] = t1
    while time.perf_counter() - t1 < 300:
        th = nms._WARM.get("thread")
        if not warmup and time.perf_counter() - t1 > 5:
            break
        if warmup and th is not None and not th.is_alive():
            break
        app.processEvents()
        time.sleep(0.002)
    idle_s = time.perf_counter() - t1
    idle_stall = max(gaps, default=float("nan"))
    w = dock
    # the first run
    gaps.clear()
    ends.clear()
    arrived.clear()
    loading.clear()
    t0 = time.perf_counter()
    last[0] = t0
    where.clear()
    w.run()
    while w.worker is not None and time.perf_counter() - t0 < 900:
        app.processEvents()
        time.sleep(0.002)
    wall = time.perf_counter() - t0
    t_end = time.perf_counter()
    while getattr(getattr(w, "arrival", None), "pending", False) and time.perf_counter() - t_end < 10:
        app.processEvents()  # the result's later layers (one event-loop pass each)
        time.sleep(0.002)
    _pump(app, 0.3)
    t_res = min((e - g for g, e, a in zip(gaps, ends, arrived) if a), default=time.perf_counter())
    run_gaps = sorted((g for g, a in zip(gaps, arrived) if not a), reverse=True)  # before the result
    arrival = max((g for g, a in zip(gaps, arrived) if a), default=float("nan"))
    # network + NMS + rendering: after the model load (which stalls alike in both cases)
    compute = max((g for g, a, ld in zip(gaps, arrived, loading) if not a and not ld), default=float("nan"))
    timer.stop()
    out = {"case": "dock-warmup" if warmup else "no-warmup", "baseline_ms": base * 1000,
           "open_stall_ms": open_stall * 1000, "idle_s": idle_s, "idle_stall_ms": idle_stall * 1000,
           "arrival_ms": arrival * 1000, "compute_ms": compute * 1000, "run_s": wall,
           "run_stall_ms": run_gaps[0] * 1000 if run_gaps else float("nan"),
           "run_stalls_over_100ms": sum(g > 0.1 for g in run_gaps), "status": w.status.text()[:70],
           "gc_run_ms": 1000 * max((d for t, d, _ in gc_pauses if t0 <= t < t_res), default=0.0),
           "gc_arrival_ms": 1000 * max((d for t, d, _ in gc_pauses if t >= t_res), default=0.0),
           "run_worst": [(round(t - t0, 2), round(g * 1000), st) for t, g, st in
                         sorted(where, key=lambda x: -x[1])[:4]]}
    viewer.close()
    return out


def track_full_gc_threads() -> list[tuple[float, str]]:
    """Which thread started each full garbage collection from now on: (start, thread name). A
    collection runs in whichever thread crossed the threshold (``_track_gc`` records how long)."""
    import gc
    import threading

    out: list[tuple[float, str]] = []

    def cb(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 2:
            out.append((time.perf_counter(), threading.current_thread().name))

    gc.callbacks.append(cb)
    return out


def _track_gc() -> list[tuple[float, float, int]]:
    """Record every garbage collection of the process: (start, seconds, generation). A full
    collection holds the GIL for its whole length, in whichever thread triggered it."""
    import gc

    pauses: list[tuple[float, float, int]] = []
    start: dict[str, float] = {}

    def cb(phase: str, info: dict) -> None:
        if phase == "start":
            start["t"] = time.perf_counter()
        elif "t" in start:
            pauses.append((start["t"], time.perf_counter() - start["t"], info["generation"]))

    gc.callbacks.append(cb)
    return pauses


def neurons_case(threads: int, warmup: bool = True) -> dict:
    """One fresh-process case of the Neurons dock's first run on the napari sample (shipped
    model): the longest stall while the dock sits open until its warm-up has ended (the user
    choosing parameters; 2 s without the warm-up), while it runs (the model load included) and
    at the result."""
    import napari
    import torch
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_neuroseg._napari import _workers, neurons_widget

    torch.set_num_threads(threads)
    if not warmup:  # the dock as it was: the kernels compiled (or loaded) in the first run
        neurons_widget.NeuronsWidget._start_warmup = staticmethod(lambda: None)
    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-neuroseg", "neurons")
    app = QApplication.instance()
    gaps: list[tuple[float, float, str, bool]] = []  # (start, end, status, the result had arrived)
    last = [time.perf_counter()]
    w = neurons_widget.NeuronsWidget(viewer)

    def tick() -> None:
        now = time.perf_counter()
        gaps.append((last[0], now, w.status.text()[:40], w.result is not None))
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(20)
    gc_pauses = _track_gc()
    viewer.window.add_dock_widget(w, name="Neurons (FISBe)")
    w.form.device.value = "cpu"
    idle_s = wait_for_warmups(app, _workers.NEURONS_WARMUP, at_least=2.0)  # until the dock's warm-up ended
    idle_stall = max((b - a for a, b, *_ in gaps), default=float("nan"))
    gaps.clear()
    last[0] = time.perf_counter()
    viewer.reset_view()
    _pump(app, 1.0)
    base = max((b - a for a, b, *_ in gaps), default=float("nan"))
    gaps.clear()
    t0 = last[0] = time.perf_counter()
    w.run()
    while w.worker is not None and time.perf_counter() - t0 < 900:
        app.processEvents()
        time.sleep(0.002)
    t_res = time.perf_counter()
    _pump(app, 0.5)
    timer.stop()
    arrival = [g for g in gaps if g[3]]  # the gap ended after the result came (adding the layer)
    run = [g for g in gaps if not g[3]]
    t_arr = min((g[0] for g in arrival), default=t_res)
    worst_run = max(run, key=lambda g: g[1] - g[0], default=(0.0, 0.0, "", False))
    out = {"case": "dock-warmup" if warmup else "no-warmup", "baseline_ms": base * 1000,
           "idle_s": idle_s, "idle_stall_ms": idle_stall * 1000, "run_s": t_res - t0,
           "run_stall_ms": 1000 * (worst_run[1] - worst_run[0]), "run_stall_at_s": worst_run[0] - t0,
           "run_stall_status": worst_run[2],
           "arrival_ms": 1000 * max((b - a for a, b, *_ in arrival), default=float("nan")),
           "gc_run_ms": 1000 * max((d for t, d, _ in gc_pauses if t0 <= t < t_arr), default=0.0),
           "gc_arrival_ms": 1000 * max((d for t, d, _ in gc_pauses if t >= t_arr), default=0.0),
           "status": w.status.text()[:70]}
    viewer.close()
    return out


def arrival_case(n: int, prepared: bool) -> dict:
    """The Nuclei dock's result arrival alone (fresh process, the nuclei sample's image open):
    a result with ``n`` objects handed to the dock as the worker returned it before
    (``int32`` labels) or as it returns it now (:mod:`napari_neuroseg._napari._display`:
    ``uint16``, caches warmed in the worker). Printed: the longest stall from the result's
    arrival to its first draws, and the longest garbage collection in that window."""
    import napari
    from qtpy.QtWidgets import QApplication
    from test_evaluate_responsive import StallMeter, many_nuclei

    from napari_neuroseg._napari import nuclei_widget
    from napari_neuroseg._napari._display import compact_labels, warm_labels_display

    nuclei_widget.NucleiWidget._start_warmup = staticmethod(lambda: None)
    viewer = napari.Viewer(show=True)
    layers = viewer.open_sample("napari-neuroseg", "nuclei")
    image = next(ly for ly in layers if ly.__class__.__name__ == "Image")
    for ly in [ly for ly in layers if ly is not image]:
        viewer.layers.remove(ly)
    w = nuclei_widget.NucleiWidget(viewer)
    viewer.window.add_dock_widget(w)
    app = QApplication.instance()
    labels = many_nuclei(n, shape=tuple(image.data.shape), r=2).astype(np.int32)
    result = {"labels": labels, "details": {"points": np.zeros((n, 3))}, "thresholds": (0.5, 0.4),
              "model": "synthetic", "prob": None, "grid": (1, 1, 1)}
    w._layer_name, w._scale, w._translate = image.name, tuple(image.scale), tuple(image.translate)
    if prepared:  # what the worker does now, off the main thread
        result["labels"] = labels = compact_labels(labels)
        warm_labels_display()
        if hasattr(nuclei_widget, "result_layers"):  # the layers built in the worker too
            result["layers"] = nuclei_widget.result_layers(result, w._layer_name, w._scale, w._translate)
    # the dock imports torch in a background thread when it opens (_workers.preload_torch); a
    # result never arrives before that import has ended (the job needs torch), so wait for it:
    # its GIL holds would otherwise be counted as the arrival's stall
    from napari_neuroseg._napari._workers import torch_ready

    t_wait = time.perf_counter()
    while not torch_ready() and time.perf_counter() - t_wait < 120:
        _pump(app, 0.1)
    meter = StallMeter()
    gc_pauses = _track_gc()
    _pump(app, 1.5)
    t0 = meter.restart()
    w._on_result(result)
    _pump(app, 1.0)
    meter.stop()
    out = {"case": f"{'worker-ready' if prepared else 'as-before'} n={n}", "dtype": str(labels.dtype),
           "arrival_ms": 1000 * max(meter.gaps, default=float("nan")),
           "gc_ms": 1000 * max((d for t, d, _ in gc_pauses if t >= t0), default=0.0)}
    viewer.close()
    return out


DOCKS = {"nuclei": "Nuclei (StarDist-3D)", "neurons": "Neurons (FISBe)", "finetune": "Fine-tune"}
HEAVY = ("torch", "numba", "scipy.ndimage", "stardist")


def open_case(dock: str, watch_s: float) -> dict:
    """One fresh-process case of opening a dock as napari does (npe2 widget contribution) in a
    session that has not imported torch: the longest stall while the dock is built and while
    the background imports run (until they end, or ``watch_s``), and which thread imported
    torch and the other heavy modules."""
    import threading
    import traceback

    first: dict[str, tuple[str, float, list[str]]] = {}

    class Spy:  # records the first import of each heavy module: thread, time, importer
        def find_spec(self, name, path=None, target=None):
            if name in HEAVY and name not in first:
                stack = [f"{f.filename.split('site-packages/')[-1].split('src/')[-1]}:{f.lineno}"
                         for f in traceback.extract_stack()[:-1]
                         if "importlib" not in f.filename and "<frozen" not in f.filename]
                first[name] = (threading.current_thread().name, time.perf_counter(), stack[-3:])

    sys.meta_path.insert(0, Spy())
    import napari
    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QApplication
    from test_evaluate_responsive import StallMeter

    viewer = napari.Viewer(show=True)
    notification_manager.install_hooks()
    records = len(notification_manager.records)
    app = QApplication.instance()
    _pump(app, 1.5)
    before = {m: m in sys.modules for m in HEAVY}
    meter = StallMeter()
    _pump(app, 0.5)
    base = meter.worst
    gc_pauses = _track_gc()
    t0 = meter.restart()
    viewer.window.add_plugin_dock_widget("napari-neuroseg", DOCKS[dock])
    built = time.perf_counter() - t0
    torch_after_build = "torch" in sys.modules
    while time.perf_counter() - t0 < watch_s:  # the dock's background imports and warm-ups
        _pump(app, 0.1)
        if not any(th.name.startswith("neuroseg-") and th.is_alive() for th in threading.enumerate()):
            break
    _pump(app, 0.5)
    watched = time.perf_counter() - t0
    meter.stop()
    errors = [r for r in notification_manager.records[records:] if str(r.severity).lower() in ("error", "fatal")]
    out = {"case": dock, "baseline_ms": base * 1000, "build_s": built, "watched_s": watched,
           "stall_ms": meter.worst * 1000, "top_ms": [round(g * 1000) for g in sorted(meter.gaps)[-4:][::-1]],
           "gc_ms": 1000 * max((d for t, d, _ in gc_pauses if t >= t0), default=0.0),
           "torch_after_build": torch_after_build, "before": before, "errors": len(errors),
           "imports": {k: [th, round(t - t0, 2), st] for k, (th, t, st) in first.items() if t >= t0}}
    viewer.close()
    return out


def open_main(args) -> int:
    for _ in range(args.repeats):
        for dock in args.docks:
            r = _child(["--widget", "open-case", "--dock", dock])
            where = "; ".join(f"{k} in {th} at {t:.2f} s" for k, (th, t, _st) in r["imports"].items())
            print(f"open {dock:8s} baseline {r['baseline_ms']:3.0f} ms | built in {r['build_s']:4.2f} s | longest "
                  f"stall over {r['watched_s']:4.1f} s: {r['stall_ms']:5.0f} ms (top {r['top_ms']}; longest GC "
                  f"{r['gc_ms']:3.0f} ms) | torch imported when built: {r['torch_after_build']} | {where} | "
                  f"errors {r['errors']}", flush=True)
    return 0


def _child(args_list: list[str], env: dict | None = None) -> dict:
    import json
    import os
    import subprocess

    proc = subprocess.run([sys.executable, __file__, *args_list], capture_output=True, text=True, timeout=1800,
                          check=False, env=None if env is None else {**os.environ, **env})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        print(proc.stdout[-2000:], proc.stderr[-3000:])
        raise SystemExit(1)
    return json.loads(line[-1][7:])


def neurons_main(args) -> int:
    import tempfile

    for rep in range(args.repeats):
        for warm in (True,) if args.cases == "dock-warmup" else (False, True) if rep % 2 == 0 else (True, False):
            # --cold: numba's disk cache empty, as on the first run after an install
            env = {"NUMBA_CACHE_DIR": tempfile.mkdtemp(prefix="neuroseg-cold-numba-")} if args.cold else None
            r = _child(["--widget", "neurons-case", "--threads", str(args.threads)]
                       + ([] if warm else ["--no-warmup"]), env)
            print(f"{r['case']:12s} baseline {r['baseline_ms']:4.0f} ms | dock open {r['idle_s']:4.1f} s: "
                  f"{r['idle_stall_ms']:4.0f} ms | first run {r['run_s']:5.1f} s: longest stall "
                  f"{r['run_stall_ms']:4.0f} ms at {r['run_stall_at_s']:.2f} s ({r['run_stall_status']!r}), longest GC "
                  f"{r['gc_run_ms']:4.0f} ms | result arrival {r['arrival_ms']:5.0f} ms (longest GC in it "
                  f"{r['gc_arrival_ms']:4.0f} ms) | {r['status'][:30]}{' | cold numba cache' if args.cold else ''}",
                  flush=True)
    return 0


def arrival_main(args) -> int:
    for _ in range(args.repeats):
        for prepared in (False, True):
            cmd = ["--widget", "arrival-case", "--n", str(args.n)] + (["--prepared"] if prepared else [])
            r = _child(cmd)
            print(f"arrival {r['case']:22s} labels {r['dtype']:6s}: longest stall {r['arrival_ms']:5.0f} ms "
                  f"(longest GC in it {r['gc_ms']:4.0f} ms)", flush=True)
    return 0


def nuclei_main(args) -> int:
    import json
    import subprocess

    rows = []
    for rep in range(args.repeats):
        for warm in (True,) if args.cases == "dock-warmup" else (False, True) if rep % 2 == 0 else (True, False):
            cmd = [sys.executable, __file__, "--widget", "nuclei-case", "--threads", str(args.threads)]
            if args.all_layers:
                cmd.append("--all-layers")
            if not warm:
                cmd.append("--no-warmup")
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(proc.stdout[-2000:], proc.stderr[-3000:])
                return 1
            r = json.loads(line[-1][7:])
            rows.append(r)
            print(f"{r['case']:12s} baseline {r['baseline_ms']:4.0f} ms | dock opens {r['open_stall_ms']:4.0f} ms | "
                  f"idle {r['idle_s']:4.1f} s: {r['idle_stall_ms']:4.0f} ms | first run {r['run_s']:5.1f} s: "
                  f"{r['run_stall_ms']:4.0f} ms (after the model load {r['compute_ms']:4.0f} ms), "
                  f"{r['run_stalls_over_100ms']} > 100 ms, longest GC {r['gc_run_ms']:4.0f} ms; result arrival "
                  f"{r['arrival_ms']:4.0f} ms (longest GC in it {r['gc_arrival_ms']:4.0f} ms) | "
                  f"{r['status'][:12]}", flush=True)
            if args.verbose:
                print("    longest first-run stalls (s after Run, ms, status):", r["run_worst"], flush=True)
    for case in ("no-warmup", "dock-warmup"):
        rs = [r for r in rows if r["case"] == case]
        if not rs:
            continue
        each = ", ".join(f"{r['run_stall_ms']:.0f}" for r in rs)
        after = ", ".join(f"{r['compute_ms']:.0f}" for r in rs)
        print(f"{case:12s} first run until the result: longest stall {max(r['run_stall_ms'] for r in rs):5.0f} ms "
              f"(each run: {each} ms; after the model load: {after} ms); dock idle while compiling: "
              f"{max(r['idle_stall_ms'] for r in rs):5.0f} ms; baseline redraw {max(r['baseline_ms'] for r in rs):4.0f} ms")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=479, help="number of nuclei")
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 128, 128))
    ap.add_argument("--widget", default="evaluate",
                    choices=("evaluate", "nuclei", "nuclei-case", "neurons", "neurons-case", "arrival", "arrival-case",
                             "open", "open-case"))
    ap.add_argument("--dock", choices=tuple(DOCKS), help=argparse.SUPPRESS)
    ap.add_argument("--docks", nargs="+", choices=tuple(DOCKS), default=list(DOCKS), help="open: the docks")
    ap.add_argument("--watch", type=float, default=20.0, help="open: longest watch after opening (s)")
    ap.add_argument("--prepared", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cases", choices=("both", "dock-warmup"), default="both",
                    help="nuclei, neurons: run both cases (the dock's warm-up off and on) or only the dock as shipped")
    ap.add_argument("--cold", action="store_true",
                    help="neurons: each process with an empty numba cache (NUMBA_CACHE_DIR), as after an install")
    ap.add_argument("--repeats", type=int, default=2, help="nuclei, neurons: processes per case")
    ap.add_argument("--threads", type=int, default=1, help="nuclei: torch threads")
    ap.add_argument("--no-warmup", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--all-layers", action="store_true",
                    help="nuclei: also show the polyhedra (Surface) and the probability map")
    ap.add_argument("--verbose", action="store_true", help="nuclei: where the longest stalls were")
    ap.add_argument("--sample", action="store_true",
                    help="evaluate: sample the main thread's stack (2 ms) and print where the longest "
                         "gap at each result's arrival went")
    args = ap.parse_args(argv)
    if args.widget == "nuclei":
        return nuclei_main(args)
    if args.widget == "neurons":
        return neurons_main(args)
    if args.widget == "arrival":
        return arrival_main(args)
    if args.widget == "open":
        return open_main(args)
    if args.widget == "open-case":
        import json

        print("RESULT " + json.dumps(open_case(args.dock, args.watch)), flush=True)
        return 0
    if args.widget in ("neurons-case", "arrival-case"):
        import json

        r = (neurons_case(args.threads, not args.no_warmup) if args.widget == "neurons-case"
             else arrival_case(args.n, args.prepared))
        print("RESULT " + json.dumps(r), flush=True)
        return 0
    if args.widget == "nuclei-case":
        import json

        print("RESULT " + json.dumps(nuclei_case(not args.no_warmup, args.threads, args.all_layers)), flush=True)
        return 0

    return evaluate_main(args)


def evaluate_main(args) -> int:
    """The Evaluate dock, each task in a 2D then a 3D view, a first run (adds the error layer)
    and a second (swaps its data): the longest stall while the job runs and from the result's
    arrival on (to its first draw), against the issue's targets or 1.5 x the baseline redraw."""
    import os

    import napari
    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QApplication
    from test_evaluate_responsive import StallMeter

    from napari_neuroseg._napari.evaluate_widget import EvaluateWidget

    gt, pred = scene(args.n, tuple(args.shape))
    print(f"{len(np.unique(gt)) - 1} GT nuclei, {len(np.unique(pred)) - 1} predicted, "
          f"shape {gt.shape}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    viewer = napari.Viewer(show=True)
    viewer.add_labels(gt, name="gt")
    viewer.add_labels(pred, name="pred")
    w = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.form.gt.value = viewer.layers["gt"]
    w.form.pred.value = viewer.layers["pred"]
    app = QApplication.instance()
    arrived: list[float] = []
    on_result = w._on_result

    def timed_on_result(value):  # the result's arrival in the main thread
        arrived.append(time.perf_counter())
        return on_result(value)

    w._on_result = timed_on_result
    notification_manager.install_hooks()
    start_records = len(notification_manager.records)
    meter = StallMeter()
    ends: list[float] = []
    cpu: list[tuple[float, float]] = []  # CPU time at each tick: the main thread's, the process's
    meter.on_tick.append(lambda: (ends.append(time.perf_counter()),
                                  cpu.append((time.thread_time(), time.process_time()))))
    gc_pauses = _track_gc()
    failed = False
    sampler = None
    if args.sample:
        from bench_stalls_proofread import StackSampler

        sampler = StackSampler().start()

    settle = functools.partial(settle_events, app, ends)  # pump, then until a tick after the last stall
    # the user chooses the layers while the dock readies the metrics' kernels (compiled the first
    # time after an install, loaded from numba's cache later): until those threads have ended
    from napari_neuroseg._napari import _workers

    meter.restart()
    waited = wait_for_warmups(app, _workers.METRICS_WARMUP, at_least=0.5)
    print(f"dock open while it readies the metrics' kernels: {waited:.1f} s, "
          f"longest stall {meter.worst * 1000:.0f} ms", flush=True)

    def redraw_stall() -> float:
        """The longest stall of one redraw of the scene as it is, no job running."""
        settle(0.5)
        meter.restart()
        ends.clear()
        viewer.scene.camera.zoom = viewer.scene.camera.zoom * 1.01
        settle(1.0)
        return meter.worst

    def jump_errors(ndisplay: int, task: str, base: float) -> bool:
        """Click three errors of the list in turn (the jump: slice, zoom, outline): the longest
        stall of each click until the canvas is quiet, against the action target (100 ms, or
        1.5 x the baseline redraw; a jump also 1.5 x one redraw of the view it leads to, and a
        jump to another slice 1.5 x napari's own slice change, ``dims.set_point`` 7 slices on
        from the last error's, both measured here)."""
        from qtpy.QtCore import Qt
        from qtpy.QtGui import QCursor
        from qtpy.QtTest import QTest

        lst = w.errors_list
        rows = [k for k in range(lst.count()) if lst.item(k).data(256)]  # errors (not the rule's line)
        n = len(rows)
        if n == 0:
            print(f"{ndisplay}D {task:8s} jump: no errors listed")
            return True
        z_axis = viewer.dims.not_displayed[0] if viewer.dims.not_displayed else None
        stalls = []
        for k in (rows[0], rows[n // 2], rows[-1]):
            item = lst.item(k)
            lst.scrollToItem(item)
            # the pointer on the list, as a user's (Xvfb's sits on the canvas: napari's status
            # from a 3D cursor that never moved fails, a napari bug a real click never meets)
            QCursor.setPos(lst.viewport().mapToGlobal(lst.visualItemRect(item).center()))
            settle(0.3)
            meter.restart()
            ends.clear()
            QTest.mouseClick(lst.viewport(), Qt.MouseButton.LeftButton, pos=lst.visualItemRect(item).center())
            settle(0.8)
            stalls.append(meter.worst)
        # one redraw of the view the last jump left (zoomed in to an error: in 3D the volume
        # then covers the canvas, and software OpenGL casts a ray per pixel)
        view_base = redraw_stall()
        slice_base = 0.0
        if z_axis is not None:  # napari's own slice change, from the last error's slice
            z = viewer.dims.point[z_axis]
            settle(0.3)
            meter.restart()
            ends.clear()
            viewer.dims.set_point(z_axis, z + 7 * viewer.dims.range[z_axis].step)
            settle(0.8)
            slice_base = meter.worst
        limit = max(RUN_TARGET, 1.5 * base, 1.5 * slice_base, 1.5 * view_base)
        ok = max(stalls) <= limit
        print(f"{ndisplay}D {task:8s} jump to 3 errors (first, middle, last of {n}): longest stall "
              + ", ".join(f"{x * 1000:.0f}" for x in stalls) + f" ms {'ok' if ok else 'OVER'} "
              f"(napari's own slice change {slice_base * 1000:.0f} ms, one redraw of the jumped-to view "
              f"{view_base * 1000:.0f} ms; limit {limit * 1000:.0f} ms)", flush=True)
        return ok

    try:
        for ndisplay in (2, 3):
            viewer.dims.ndisplay = ndisplay
            # baseline in the same run: one redraw of the scene, no job running (under Xvfb the
            # canvas is drawn by software OpenGL: a 3D redraw alone can take 0.3 s or more)
            _pump(app, 0.5)
            viewer.reset_view()
            base = redraw_stall()
            print(f"{ndisplay}D baseline: one redraw, no job: longest stall {base * 1000:6.0f} ms")
            for task in ("nuclei", "neurons"):
                w.set_task(task)
                for rep in ("first", "second"):
                    if rep == "first":
                        for ly in [ly for ly in viewer.layers if ly.name == "evaluation errors"]:
                            viewer.layers.remove(ly)
                    _pump(app, 0.3)  # settle
                    t0 = meter.restart()
                    ends.clear()
                    cpu.clear()
                    c0 = (time.thread_time(), time.process_time())
                    arrived.clear()
                    w.run()
                    while w.worker is not None and time.perf_counter() - t0 < 600:
                        app.processEvents()
                        time.sleep(0.002)
                    wall = time.perf_counter() - t0
                    settle(0.5)  # the layer's first draw counts too
                    t_arr = arrived[0] if arrived else float("inf")
                    run = max((g for g, e in zip(meter.gaps, ends) if e < t_arr), default=0.0)
                    # the CPU time spent in the longest gap while running, by the main thread and
                    # by the whole process (software OpenGL draws in its own threads): work that a
                    # loaded machine inflates far less than the wall-clock gap (other processes' turns)
                    busy = [(c[0] - p[0], c[1] - p[1]) for c, p in zip(cpu, [c0, *cpu[:-1]])]
                    run_cpu = max(((g, b) for g, b, e in zip(meter.gaps, busy, ends) if e < t_arr),
                                  default=(0.0, (0.0, 0.0)))[1]
                    arr = max((g for g, e in zip(meter.gaps, ends) if e >= t_arr), default=0.0)
                    gc_run = max((d for t, d, gen in gc_pauses if t0 <= t < t_arr and gen == 2), default=0.0)
                    gc_arr = max((d for t, d, gen in gc_pauses if t >= t_arr and gen == 2), default=0.0)
                    where: list[str] = []
                    if sampler is not None and arr > 0:
                        end = max(e for g, e in zip(meter.gaps, ends) if e >= t_arr and g == arr)
                        where.append("      gaps from the arrival on (> 40 ms): " + ", ".join(
                            f"{g * 1000:.0f} ms at +{(e - g - t_arr) * 1000:.0f}"
                            for g, e in zip(meter.gaps, ends) if e >= t_arr and g > 0.04))
                        where += [f"      {c:4d} {f}" for c, f in sampler.profile(end - arr, end)]
                    # napari's own redraw of the scene the result leaves (same view, the error
                    # layer in it): in 3D each visible Labels layer is ray-cast, so a third
                    # volume makes every redraw ~1.5 x the baseline's, whoever triggers it
                    scene_redraw = redraw_stall()
                    ok_run = run <= max(RUN_TARGET, 1.5 * base)
                    ok_arr = arr <= max(ARRIVAL_TARGET, 1.5 * base, 1.5 * scene_redraw)
                    failed |= not (ok_run and ok_arr)
                    print(f"{ndisplay}D {task:8s} {rep:6s} run {wall:5.2f} s | longest stall while running "
                          f"{run * 1000:5.0f} ms {'ok' if ok_run else 'OVER'} (full GC {gc_run * 1000:3.0f} ms; "
                          f"CPU main thread {run_cpu[0] * 1000:3.0f}, process {run_cpu[1] * 1000:3.0f} ms) | "
                          f"at the result {arr * 1000:5.0f} ms {'ok' if ok_arr else 'OVER'} (full GC "
                          f"{gc_arr * 1000:3.0f} ms; one redraw of the result's scene {scene_redraw * 1000:3.0f} ms)"
                          f" | {w.status.text()[:40]}", flush=True)
                    for line in where:
                        print(line)
                failed |= not jump_errors(ndisplay, task, base)
            after = redraw_stall()
            print(f"{ndisplay}D one redraw with the error layer, no job: longest stall {after * 1000:6.0f} ms")
    finally:
        meter.stop()
        notification_manager.restore_hooks()
        if sampler is not None:
            sampler.stop()
    print(f"targets: while running {RUN_TARGET * 1000:.0f} ms, at the result {ARRIVAL_TARGET * 1000:.0f} ms, "
          "or 1.5 x the baseline redraw (at the result also 1.5 x one redraw of the result's scene)")
    errors = [r for r in notification_manager.records[start_records:]
              if str(r.severity).lower() in ("error", "fatal")]
    print(f"error notifications: {len(errors)}")
    viewer.close()
    return 1 if failed or errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
