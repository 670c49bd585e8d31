"""How long does the main thread stall while the Fine-tune dock trains, and when its model
arrives? (issue 17's targets: <= 100 ms while a job runs, <= 300 ms when its result arrives)

Run as napari runs it: a shown ``napari.Viewer`` (Xvfb on a headless machine) with napari's error
hooks (``notification_manager``) and its activity dock open (the job's progress bar), the
plugin's docks opened through their npe2 widget contributions (Fine-tune, and the Nuclei or
Neurons dock whose model picker must offer the new model at the end), inputs from the bundled
samples (nuclei: the synthetic nuclei and their GT as the "corrected" labels; neurons: the three
raw channels as one (3, Z, Y, X) layer and the GT instances), the shipped base model, a small
budget and step cap, the threshold / post-processing search on, CPU, and Run pressed through the
button. A 20 ms ``QTimer`` (``StallMeter``) records the gaps between its ticks:

- *run*: from the click until the model is registered (set-up, base scoring, training steps with
  the curve and progress updates, checkpoints, live held-out F1, threshold / post-processing
  search, final scoring), split by the job's phase at the gap's end;
- *arrival*: from the registration (the pickers' refresh, queued from the worker) and the
  result (scores, the plot's last curve, the session's state) until the Nuclei/Neurons dock's
  picker offers the model, then 0.5 s more (their first paints).

Every garbage collection is logged (``gc.callbacks``; the longest full one in each window is
printed). ``--sample`` also starts a thread that records the main thread's stack (and the other
threads' innermost frames) every 2 ms with ``sys._current_frames()``; for each stall over its
target the most frequent main-thread frames during it are printed, and how many samples the
sampler got (few samples in a long gap: another thread held the GIL, or the process got no CPU).
Each of the longest stalls also carries the main thread's time on a CPU (``main_cpu_ms``) and
waiting for one while runnable (``main_runq_ms``, ``/proc/thread-self/schedstat``): a gap that is
mostly run-queue wait is the machine's load (other processes, ``nice``), not this process; the
rest of a gap the thread slept or waited for the GIL.
A baseline in the same process: one redraw of the scene, no job. Each case is a fresh process
(``nice -n 10``, 1 torch thread); cases alternate (nuclei, neurons) ``--repeats`` times.

    xvfb-run -a python benchmarks/bench_stalls_finetune.py [--tasks nuclei neurons] [--repeats 3]
        [--minutes 0.75] [--steps 12] [--sample] [--switchinterval 0.005] [--src DIR] [--no-wait]

By default Run is pressed once the docks' background work (torch's import, the Fine-tune
dock's warm-up) has ended, as for a user who fills in the form; ``--no-wait`` presses it 1 s
after the docks open, while the warm-up still runs (the baseline then too).

``--src DIR``: run the children against another checkout's ``src`` (PYTHONPATH), for
interleaved before/after runs of one version of this script.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "_napari"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_widget_stalls import (
    ARRIVAL_TARGET,
    DOCKS,
    RUN_TARGET,
    _pump,
    _track_gc,
    settle_events,
    track_full_gc_threads,
)

#: the dock whose model picker must offer the fine-tuned model, per task
PICKER_DOCK = {"nuclei": "nuclei", "neurons": "neurons"}


class StackSampler(threading.Thread):
    """Every ``interval`` s: the main thread's stack (innermost last) and the innermost frames of
    the other threads, with the time (``time.perf_counter``)."""

    def __init__(self, interval: float = 0.002, depth: int = 40):
        super().__init__(name="bench-stack-sampler", daemon=True)
        self.interval, self.depth = interval, depth
        self.main_id = threading.main_thread().ident
        self.samples: list[tuple[float, tuple[str, ...], tuple[str, ...]]] = []
        self.stop_event = threading.Event()

    @staticmethod
    def _frames(frame, depth: int) -> tuple[str, ...]:
        out = []
        while frame is not None and len(out) < depth:
            code = frame.f_code
            path = code.co_filename.split("site-packages/")[-1].split("src/")[-1]
            out.append(f"{path}:{frame.f_lineno}:{code.co_name}")
            frame = frame.f_back
        return tuple(reversed(out))

    #: innermost frames of a thread that waits (not worth reporting)
    IDLE = ("threading.py", "queue.py", "selectors.py", "concurrent/futures/thread.py")

    def run(self) -> None:
        me = threading.get_ident()
        names: dict = {}
        while not self.stop_event.is_set():
            t = time.perf_counter()
            frames = sys._current_frames()
            main = self._frames(frames.get(self.main_id), self.depth)
            others = []
            for ident, fr in frames.items():
                if ident in (me, self.main_id):
                    continue
                if ident not in names:
                    names = {th.ident: th.name for th in threading.enumerate()}
                top = self._frames(fr, 4)
                if top and not any(k in top[-1] for k in self.IDLE):
                    others.append(f"[{names.get(ident, ident)}] {' < '.join(reversed(top))}")
            self.samples.append((t, main, tuple(others)))
            del frames
            time.sleep(self.interval)

    def during(self, start: float, end: float, top: int = 5) -> dict:
        """What the threads did in ``[start, end]``: sample count, the most frequent main-thread
        frames of this package / napari / Qt (any depth), its innermost frames, the others'
        innermost frames; and the other threads' frames in the last sample before ``start``."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        before = [s for s in self.samples if s[0] < start][-1:]
        inner, any_depth, others = Counter(), Counter(), Counter()
        for _, main, oth in inside:
            if main:
                inner[main[-1]] += 1
            for f in set(main):
                if any(k in f for k in ("napari_neuroseg", "napari/", "superqt", "vispy", "magicgui")):
                    any_depth[f] += 1
            for o in oth:
                others[o] += 1
        return {"samples": len(inside), "expected": round((end - start) / self.interval),
                "main_innermost": inner.most_common(top), "main_frames": any_depth.most_common(top),
                "other_threads": others.most_common(top),
                "before": [(o, 1) for o in (before[0][2] if before else ())]}


def _sched() -> tuple[int, int]:
    """The calling thread's time on a CPU and time waiting for one (runnable, not running), ns
    (``/proc/thread-self/schedstat``; zeros where the kernel does not offer it)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            run, wait = f.read().split()[:2]
        return int(run), int(wait)
    except (OSError, ValueError):
        return 0, 0


def _wait_for_background(app, limit: float = 180.0) -> float:
    """Pump events until the docks' background threads (torch import, NMS compile) have ended."""
    from napari_neuroseg._napari import _workers
    from napari_neuroseg._napari.finetune_widget import WARMUP_THREAD

    busy = ("neuroseg-preload-torch", "neuroseg-nms-compile", _workers.NUCLEI_WARMUP, _workers.NEURONS_WARMUP,
            "neuroseg-finetune-warmup")

    t0 = time.perf_counter()
    warm = _workers._BACKGROUND.get(WARMUP_THREAD)  # the dock's warm-up (run_in_background)
    while time.perf_counter() - t0 < limit:
        _pump(app, 0.1)
        if warm is not None and warm.ident is None:
            continue  # the dock's warm-up is started once the pending events are handled
        if not any(th.name in busy and th.is_alive() for th in threading.enumerate()):
            break
    return time.perf_counter() - t0


def _inputs(viewer, task: str):
    """The sample's image and labels layer names for ``task`` (neurons: the raw channels as one
    (3, Z, Y, X) layer, which the Fine-tune dock needs)."""
    import numpy as np

    layers = viewer.open_sample("napari-neuroseg", task)
    images = [ly for ly in layers if ly.__class__.__name__ == "Image"]
    labels = [ly for ly in layers if ly.__class__.__name__ == "Labels" and "overlap" not in ly.name]
    if task == "nuclei":
        return images[0].name, labels[0].name
    raw = np.stack([np.asarray(ly.data) for ly in images])
    viewer.add_image(raw, name="synthetic neurons raw (3 channels)", visible=False)
    return "synthetic neurons raw (3 channels)", labels[0].name


# long function: one measured scenario, read top to bottom (viewer, docks, baseline, run, arrival, report)
def finetune_case(task: str, minutes: float, steps: int, sample: bool, switchinterval: float | None,
                  no_wait: bool = False) -> dict:
    """One fresh-process case: the Fine-tune dock trains ``task`` on its sample; the longest
    stalls while it runs (per phase) and from its model's registration to the picker's refresh.
    ``no_wait``: Run is pressed 1 s after the docks open, while the dock's warm-up still runs."""
    import napari
    import torch
    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QApplication
    from test_evaluate_responsive import StallMeter

    import napari_neuroseg
    from napari_neuroseg.models import registry

    torch.set_num_threads(1)
    if switchinterval:
        sys.setswitchinterval(switchinterval)
    viewer = napari.Viewer(show=True)
    notification_manager.install_hooks()
    records = len(notification_manager.records)
    qt_window = viewer.window._qt_window
    bar = getattr(qt_window, "_status_bar", None) or qt_window.statusBar()
    if hasattr(bar, "_toggle_activity_dock"):
        bar._toggle_activity_dock(True)  # the activity dock shows the job's progress bar
    app = QApplication.instance()
    image_name, labels_name = _inputs(viewer, task)
    _, picker = viewer.window.add_plugin_dock_widget("napari-neuroseg", DOCKS[PICKER_DOCK[task]])
    _, w = viewer.window.add_plugin_dock_widget("napari-neuroseg", DOCKS["finetune"])
    idle_s = 0.0 if no_wait else _wait_for_background(app)
    name = f"bench_ft_{task}"
    w.task.value = task
    w.image.value = image_name
    w.labels.value = labels_name
    w.base.value = f"neuroseg_{task}"
    w.minutes.value = minutes
    w.steps.value = steps
    w.thresholds.value = True
    w.device.value = "cpu"
    w.output.value = name
    _pump(app, 1.0)

    meter = StallMeter()
    ends: list[float] = []
    phases: list[str] = []
    statuses: list[str] = []
    scheds: list[tuple[int, int]] = []  # the main thread's (CPU, run-queue wait) ns at each tick
    last_phase = ["(before the first step)"]
    meter.on_tick.append(lambda: (ends.append(time.perf_counter()), phases.append(last_phase[0]),
                                  statuses.append(w.status.text()[:60]), scheds.append(_sched())))

    settle = functools.partial(settle_events, app, ends)  # pump, then until a tick after the last stall

    # baseline: one redraw of the scene, no job
    viewer.reset_view()
    settle(0.5)
    meter.restart()
    ends.clear(), phases.clear(), statuses.clear()
    viewer.scene.camera.zoom = viewer.scene.camera.zoom * 1.01
    settle(1.0)
    base = meter.worst

    marks: dict[str, float] = {}
    registry.on_change(lambda: marks.setdefault("registered", time.perf_counter()))
    on_result, on_progress = w._on_result, w._on_progress

    def timed_result(res):
        marks.setdefault("result", time.perf_counter())
        return on_result(res)

    def timed_progress(p):
        last_phase[0] = str(getattr(p, "phase", "?"))
        return on_progress(p)

    w._on_result, w._on_progress = timed_result, timed_progress
    gc_pauses = _track_gc()
    gc_threads = track_full_gc_threads()
    sampler = StackSampler() if sample else None
    if sampler is not None:
        sampler.start()
    settle(0.3)
    t0 = meter.restart()
    ends.clear(), phases.clear(), statuses.clear(), scheds.clear()
    sched0 = _sched()
    w.run_button.click()
    while w.worker is not None and time.perf_counter() - t0 < 900:
        app.processEvents()
        time.sleep(0.002)
    t_done = time.perf_counter()

    def offered() -> bool:
        return name in picker.form.model.choices

    while not offered() and time.perf_counter() - t_done < 10:
        app.processEvents()
        time.sleep(0.002)
    settle(0.5)
    meter.stop()
    if sampler is not None:
        sampler.stop_event.set()
        sampler.join()
    t_arr = min(marks.get("registered", float("inf")), marks.get("result", float("inf")))
    gaps = [(e - g, e, g, ph, st) for g, e, ph, st in zip(meter.gaps, ends, phases, statuses)]
    # per gap: the main thread's CPU and run-queue wait (the rest it slept or waited for the GIL)
    cpu_wait = {e: ((b[0] - a[0]) / 1e6, (b[1] - a[1]) / 1e6) for e, a, b in zip(ends, [sched0, *scheds], scheds)}
    run = [x for x in gaps if x[1] < t_arr]
    arr = [x for x in gaps if x[1] >= t_arr]
    per_phase: dict[str, float] = {}
    for _s, _e, g, ph, _st in run:
        per_phase[ph] = max(per_phase.get(ph, 0.0), g)

    def gc_in(a: float, b: float) -> float:
        return max((d for t, d, gen in gc_pauses if a <= t < b and gen == 2), default=0.0)

    def worst(xs: list, target: float, k: int = 5) -> list:
        out = []
        for s, e, g, ph, st in sorted(xs, key=lambda x: -x[2])[:k]:
            item = {"at_s": round(s - t0, 2), "ms": round(g * 1000), "phase": ph, "status": st,
                    "gc_ms": round(1000 * max((d for t, d, _ in gc_pauses if s - 0.005 <= t < e), default=0.0)),
                    "main_cpu_ms": round(cpu_wait.get(e, (0, 0))[0]), "main_runq_ms": round(cpu_wait.get(e, (0, 0))[1]),
                    "gc_by": sorted({n for t, n in gc_threads if s - 0.005 <= t < e})}
            if sampler is not None and g > target:
                item["stack"] = sampler.during(s, e)
            out.append(item)
        return out

    errors = [r for r in notification_manager.records[records:] if str(r.severity).lower() in ("error", "fatal")]
    out = {"case": task, "src": str(Path(napari_neuroseg.__file__).parent), "load": os.getloadavg()[0],
           "switchinterval": sys.getswitchinterval(), "baseline_ms": base * 1000, "idle_s": idle_s,
           "run_s": (t_arr if t_arr < float("inf") else t_done) - t0, "total_s": t_done - t0,
           "run_ms": 1000 * max((x[2] for x in run), default=float("nan")),
           "run_over": sum(x[2] > RUN_TARGET for x in run), "ticks": len(gaps),
           "per_phase_ms": {k: round(v * 1000) for k, v in per_phase.items()},
           "arrival_ms": 1000 * max((x[2] for x in arr), default=float("nan")),
           "arrival_to_offered_s": (time.perf_counter() if not offered() else t_done) - t_arr if arr else None,
           "offered": offered(), "gc_run_ms": 1000 * gc_in(t0, t_arr), "gc_arrival_ms": 1000 * gc_in(t_arr, 1e18),
           "status": w.status.text()[:90], "steps": getattr(w.result, "steps", None),
           "errors": [str(r.message)[:200] for r in errors],
           "run_worst": worst(run, RUN_TARGET), "arrival_worst": worst(arr, ARRIVAL_TARGET, 3)}
    notification_manager.restore_hooks()
    viewer.close()
    return out


def _run_child(args: list[str], src: str | None) -> dict:
    """One case in a fresh process (``nice -n 10``, one torch/OpenMP thread, its own model and
    session folders); the dict it printed."""
    with tempfile.TemporaryDirectory(prefix="bench-ft-") as tmp:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NEUROSEG_MODELS_DIR=f"{tmp}/models",
                   NEUROSEG_SESSIONS_DIR=f"{tmp}/sessions")
        if src:
            env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        proc = subprocess.run(["nice", "-n", "10", sys.executable, __file__, *args], capture_output=True,
                              text=True, timeout=1800, check=False, env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        print(proc.stdout[-2000:], proc.stderr[-4000:])
        raise SystemExit(1)
    return json.loads(line[-1][7:])


def _print_case(r: dict, verbose: bool) -> None:
    phases = ", ".join(f"{k} {v}" for k, v in r["per_phase_ms"].items())
    print(f"{r['case']:8s} load {r['load']:.1f} | warm-up waited {r['idle_s']:4.1f} s | baseline {r['baseline_ms']:4.0f} ms | run {r['run_s']:5.1f} s "
          f"({r['steps']} steps): longest stall {r['run_ms']:5.0f} ms, {r['run_over']} > 100 ms of {r['ticks']} "
          f"ticks, longest full GC {r['gc_run_ms']:4.0f} ms [{phases}] | arrival {r['arrival_ms']:4.0f} ms "
          f"(full GC {r['gc_arrival_ms']:3.0f} ms), offered: {r['offered']} | errors {len(r['errors'])} | "
          f"{r['status'][:50]}", flush=True)
    if verbose:
        for key in ("run_worst", "arrival_worst"):
            for item in r[key]:
                stack = item.pop("stack", None)
                print(f"    {key[:-6]:7s} {item}", flush=True)
                if stack:
                    print(f"        samples {stack['samples']}/{stack['expected']}", flush=True)
                    for k in ("main_innermost", "main_frames", "other_threads", "before"):
                        for f, n in stack[k]:
                            print(f"        {k:15s} {n:4d} {f[:220]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", choices=("nuclei", "neurons"), default=["nuclei", "neurons"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=0.75, help="the dock's time budget")
    ap.add_argument("--steps", type=int, default=12, help="the dock's step cap")
    ap.add_argument("--sample", action="store_true", help="sample the main thread's stack every 2 ms")
    ap.add_argument("--switchinterval", type=float, default=None, help="sys.setswitchinterval in the child")
    ap.add_argument("--src", default=None, help="run the children against this src folder (PYTHONPATH)")
    ap.add_argument("--verbose", action="store_true", help="the longest stalls of each case (with --sample: stacks)")
    ap.add_argument("--no-wait", action="store_true",
                    help="press Run 1 s after the docks open, while the dock's warm-up runs (a quick user)")
    ap.add_argument("--case", choices=("nuclei", "neurons"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        r = finetune_case(args.case, args.minutes, args.steps, args.sample, args.switchinterval, args.no_wait)
        print("RESULT " + json.dumps(r), flush=True)
        return 0
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; budget {args.minutes} min, "
          f"{args.steps} steps", flush=True)
    rows = []
    child = ["--minutes", str(args.minutes), "--steps", str(args.steps)]
    child += ["--sample"] if args.sample else []
    child += ["--no-wait"] if args.no_wait else []
    child += ["--switchinterval", str(args.switchinterval)] if args.switchinterval else []
    for _ in range(args.repeats):
        for task in args.tasks:
            r = _run_child(["--case", task, *child], args.src)
            rows.append(r)
            _print_case(r, args.verbose or args.sample)
    for task in args.tasks:
        rs = [r for r in rows if r["case"] == task]
        if not rs:
            continue
        run = [r["run_ms"] for r in rs]
        arr = [r["arrival_ms"] for r in rs]
        base = [r["baseline_ms"] for r in rs]
        print(f"{task:8s} {len(rs)} runs, min / median: while training {min(run):.0f} / {statistics.median(run):.0f} ms "
              f"(target {RUN_TARGET * 1000:.0f}), at the model's arrival {min(arr):.0f} / "
              f"{statistics.median(arr):.0f} ms (target {ARRIVAL_TARGET * 1000:.0f}); baseline redraw "
              f"{min(base):.0f} / {statistics.median(base):.0f} ms; src {rs[0]['src']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
