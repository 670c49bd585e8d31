"""How long does the main thread stall while the Batch dock runs, and when a result is opened?
(issue 17's targets: <= 100 ms while the job runs, <= 300 ms when its result arrives)

The Batch dock as napari runs it: a shown ``napari.Viewer`` (Xvfb on a headless machine) with
napari's error hooks installed (``notification_manager``), its activity dock open (the job's
progress bar), the dock opened through the plugin's npe2 widget contribution, real inputs
written to a temporary folder from the bundled synthetic nuclei (``synth.make_nuclei``, voxel
size 2 x 1 x 1 um), *Run* pressed with a mouse click (``QTest``), then a row selected and *Open
result* clicked (the output opened into the viewer, at the voxel size of its input). A 20 ms
``QTimer`` (``StallMeter`` of ``tests/_napari/test_evaluate_responsive.py``) records the gaps
between its ticks; every garbage collection of the process is logged (a full one holds the GIL
for its whole length, in whichever thread crosses the threshold).

Cases, each in a fresh process (``--repeats`` rounds, the cases interleaved):

- ``files``: four TIFF volumes (64 x 128 x 128), task ``threshold`` (sigma 1.5, min size 50),
  TIFF outputs: whole files, run in parallel on the embedded Dask engine (in-process
  ``LocalCluster``: scheduler and worker threads in this process); a row per file as it ends;
- ``blocks``: two Zarr volumes, one 64 x 256 x 256 and one 64 x 128 x 128, block shape
  16,32,32 (256 + 64 blocks, three progress steps per block: segment, match, write), Zarr
  outputs; *Open result* opens the big one (lazily).

Printed per run: the stall while the dock opens (until its background import of ``distributed``
has ended), the baseline (one redraw of the scene, no job, in the same process), the
longest stall while the job runs (with the status line then) and at *Open result*, the longest
full collection in each window, and whether each meets its target (or 1.5 x the baseline).
``--sample``: a thread samples every thread's stack every 2 ms (``sys._current_frames()``) and
the main thread's stacks during each stall over its target are printed (the sampler costs a
little GIL itself: measure without it).

    nice -n 10 xvfb-run -a python benchmarks/bench_stalls_batch.py [--repeats 3] [--cases files blocks] [--sample]

``--before FILE``: also run another version of the dock's module (``git show
REV:src/napari_neuroseg/_napari/batch_widget.py > FILE``), interleaved with the installed one,
each in its own fresh process (numbers in ``docs/widgets.md``, Responsiveness, *Batch*).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "_napari"))

from bench_widget_stalls import (
    ARRIVAL_TARGET,
    RUN_TARGET,
    _pump,
    _track_gc,
    settle_events,
    track_full_gc_threads,
)

SCALE = (2.0, 1.0, 1.0)
PARAMS = {"sigma": 1.5, "min_size": 50}


class StackSampler(threading.Thread):
    """Every ``interval`` s: the main thread's stack (innermost last) and each other thread's
    innermost frame, with the time (``time.perf_counter``)."""

    def __init__(self, interval: float = 0.002):
        super().__init__(name="stack-sampler", daemon=True)
        self.interval = interval
        self.main = threading.main_thread().ident
        self.samples: list[tuple[float, tuple[str, ...], tuple[str, ...]]] = []
        self._stop_ev = threading.Event()

    @staticmethod
    def _where(frame) -> str:
        path = frame.f_code.co_filename
        for cut in ("site-packages/", "src/", "lib/python3.11/"):
            if cut in path:
                path = path.split(cut)[-1]
                break
        return f"{path}:{frame.f_code.co_name}:{frame.f_lineno}"

    def run(self) -> None:
        me = threading.get_ident()
        while not self._stop_ev.is_set():
            frames = sys._current_frames()
            t = time.perf_counter()
            stack: list[str] = []
            f = frames.get(self.main)
            while f is not None and len(stack) < 40:
                stack.append(self._where(f))
                f = f.f_back
            others = tuple(self._where(fr) for ident, fr in frames.items() if ident not in (self.main, me))
            self.samples.append((t, tuple(reversed(stack)), others))
            del frames, f
            time.sleep(self.interval)

    def stop(self) -> None:
        self._stop_ev.set()
        self.join(1.0)

    def during(self, start: float, end: float, depth: int = 14, top: int = 3) -> dict:
        """The main thread's most frequent stacks (innermost ``depth`` frames) and the other
        threads' innermost frames between ``start`` and ``end``."""
        sel = [s for s in self.samples if start <= s[0] <= end]
        main = Counter(" > ".join(s[1][-depth:]) for s in sel)
        other = Counter(o for s in sel for o in s[2])
        return {"n": len(sel), "main": main.most_common(top), "others": other.most_common(top + 2)}


def make_inputs(folder: Path, case: str) -> dict:
    """The case's input files in ``folder`` (nuclei from the bundled generator, 2 x 1 x 1 um)."""
    from napari_neuroseg.io.tiff import write_tiff
    from napari_neuroseg.io.zarr_io import write_zarr
    from napari_neuroseg.synth import make_nuclei

    vols = [make_nuclei(seed=s, anisotropy=SCALE)[0] for s in range(4)]
    inp = folder / "in"
    inp.mkdir()
    if case == "files":
        for i, v in enumerate(vols):
            write_tiff(inp / f"nuclei{i}.tif", v, scale=SCALE)
        return {"inputs": str(inp), "format": "tif", "block_shape": "", "open": "nuclei0"}
    big = np.block([[vols[0], vols[1]], [vols[2], vols[3]]])  # 64 x 256 x 256
    write_zarr(inp / "big.zarr", big, axes="ZYX", scale=SCALE, chunks=(16, 64, 64))
    write_zarr(inp / "small.zarr", vols[0], axes="ZYX", scale=SCALE, chunks=(16, 64, 64))
    return {"inputs": str(inp), "format": "zarr", "block_shape": "16,32,32", "open": "big"}


def use_dock_module(path: str) -> None:
    """Make ``path`` (another version of ``batch_widget.py``, e.g. ``git show
    REV:src/napari_neuroseg/_napari/batch_widget.py``) the Batch dock's module of this process."""
    import importlib.util

    name = "napari_neuroseg._napari.batch_widget"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def case_run(case: str, sample: bool, dock_module: str | None = None) -> dict:
    """One fresh-process run of the Batch dock (see the module docstring)."""
    import torch

    if dock_module:
        use_dock_module(dock_module)

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    spec = make_inputs(tmp, case)

    import napari
    from napari.utils.notifications import notification_manager
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication
    from test_evaluate_responsive import StallMeter

    viewer = napari.Viewer(show=True)
    notification_manager.install_hooks()
    records = len(notification_manager.records)
    app = QApplication.instance()
    viewer.open_sample("napari-neuroseg", "nuclei")  # what the user looks at meanwhile
    status_bar = viewer.window._qt_window.statusBar()
    if hasattr(status_bar, "_toggle_activity_dock"):
        status_bar._toggle_activity_dock(True)  # the activity dock with the job's progress bar
    _pump(app, 1.0)
    meter = StallMeter()
    ends: list[float] = []
    meter.on_tick.append(lambda: ends.append(time.perf_counter()))
    gc_pauses = _track_gc()
    full_gcs = track_full_gc_threads()
    sampler = StackSampler() if sample else None
    if sampler is not None:
        sampler.start()

    settle = functools.partial(settle_events, app, ends)  # pump, then until a tick after the last stall

    # the dock, as napari opens it (Plugins menu: the npe2 widget contribution)
    meter.restart()
    _dw, w = viewer.window.add_plugin_dock_widget("napari-neuroseg", "Batch")
    from napari_neuroseg._napari import _workers

    t_wait = time.perf_counter()  # the dock's background import of distributed, if it has one
    while time.perf_counter() - t_wait < 60:
        th = _workers._BACKGROUND.get(getattr(sys.modules[type(w).__module__], "PRELOAD_THREAD", ""))
        if th is None or (th.ident is not None and not th.is_alive()):
            break
        app.processEvents()
        time.sleep(0.002)
    settle(0.5)
    open_dock = meter.worst
    w.form.inputs.value = spec["inputs"]
    w.form.outdir.value = str(tmp / "out")
    w.form.task.value = "threshold"
    for k, v in PARAMS.items():
        w.set_param(k, v)
    w.form.format.value = spec["format"]
    w.form.block_shape.value = spec["block_shape"]
    settle(0.5)
    # baseline: one redraw of the scene, no job
    meter.restart()
    viewer.camera.zoom = viewer.camera.zoom * 1.01
    settle(1.0)
    base = meter.worst

    def gaps_in(start: float, end: float) -> list[tuple[float, float]]:
        return [(e - g, g) for g, e in zip(meter.gaps, ends) if start <= e <= end + 1e-3]

    def full_gc(start: float, end: float) -> float:
        return max((d for t, d, gen in gc_pauses if start <= t <= end and gen == 2), default=0.0)

    statuses: list[tuple[float, str]] = []
    meter.on_tick.append(lambda: statuses.append((time.perf_counter(), w.status.text()[:60])))
    # Run, pressed as a user does
    t0 = meter.restart()
    ends.clear()
    statuses.clear()
    QTest.mouseClick(w.run_button, Qt.MouseButton.LeftButton)
    while (w.worker is not None or w.run_button.isEnabled() is False) and time.perf_counter() - t0 < 900:
        app.processEvents()
        time.sleep(0.002)
    settle(0.3)
    t_done = time.perf_counter()
    run_gaps = gaps_in(t0, t_done)
    rows = w.table.rowCount()
    # Open result on the chosen row
    row = next(r for r in range(rows) if w.table.item(r, 0).text().startswith(spec["open"]))
    w.table.selectRow(row)
    settle(0.3)
    t1 = meter.restart()
    ends.clear()
    n_layers = len(viewer.layers)
    QTest.mouseClick(w.open_button, Qt.MouseButton.LeftButton)
    while len(viewer.layers) == n_layers and time.perf_counter() - t1 < 120:  # read in a worker
        app.processEvents()
        time.sleep(0.002)
    t_layer = time.perf_counter()
    settle(1.0)  # its first draws count too
    t_end = time.perf_counter()
    meter.stop()
    if sampler is not None:
        sampler.stop()
    open_gaps = gaps_in(t1, t_end)
    layer = viewer.layers[-1] if len(viewer.layers) > n_layers else None
    worst_run = max(run_gaps, key=lambda x: x[1], default=(t0, 0.0))

    def status_at(t: float) -> str:
        return next((s for ts, s in statuses if ts >= t), w.status.text()[:60])

    def over(gaps: list[tuple[float, float]], target: float) -> list[dict]:
        out = []
        for start, g in sorted(gaps, key=lambda x: -x[1])[:5]:
            if g <= target:
                break
            item = {"at_s": round(start - t0, 2), "ms": round(g * 1000), "status": status_at(start + g)}
            if sampler is not None:
                item["stacks"] = sampler.during(start, start + g)
            out.append(item)
        return out

    errors = [r for r in notification_manager.records[records:] if str(r.severity).lower() in ("error", "fatal")]
    out = {
        "case": case, "load": os.getloadavg()[0], "baseline_ms": base * 1000, "open_dock_ms": open_dock * 1000,
        "run_s": t_done - t0, "rows": rows, "status": w.status.text()[:80],
        "run_ms": worst_run[1] * 1000, "run_status": status_at(worst_run[0] + worst_run[1]),
        "run_over": sum(g > RUN_TARGET for _s, g in run_gaps),
        "run_top": [round(g * 1000) for _s, g in sorted(run_gaps, key=lambda x: -x[1])[:5]],
        "gc_run_ms": full_gc(t0, t_done) * 1000,
        "full_gcs_run": [(round(t - t0, 2), round(d * 1000), name) for (t, d, gen), (_t, name)
                         in zip([p for p in gc_pauses if p[2] == 2], full_gcs) if t0 <= t <= t_done],
        "open_ms": max((g for _s, g in open_gaps), default=0.0) * 1000, "open_s": t_layer - t1, "gc_open_ms": full_gc(t1, t_end) * 1000,
        "layer": None if layer is None else {"name": layer.name, "scale": [float(s) for s in layer.scale],
                                             "shape": list(layer.data.shape)},
        "errors": [str(r.message)[:200] for r in errors],
        "run_stalls": over(run_gaps, RUN_TARGET), "open_stalls": over(open_gaps, ARRIVAL_TARGET),
        "variant": "before" if dock_module else "after",
    }
    notification_manager.restore_hooks()
    viewer.close()
    return out


def _child(args_list: list[str]) -> dict:
    """Run one case in a fresh process (this file; ``bench_widget_stalls._child`` runs its own)."""
    proc = subprocess.run([sys.executable, __file__, *args_list], capture_output=True, text=True, timeout=1800,
                          check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        print(proc.stdout[-2000:], proc.stderr[-3000:])
        raise SystemExit(1)
    return json.loads(line[-1][7:])


def _verdict(ms: float, target: float, base_ms: float) -> str:
    return "ok" if ms <= max(target * 1000, 1.5 * base_ms) else "OVER"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=("files", "blocks"), default=["files", "blocks"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sample", action="store_true", help="sample the stacks during the long stalls")
    ap.add_argument("--before", metavar="FILE",
                    help="also run this version of batch_widget.py (e.g. git show HEAD~1:src/napari_neuroseg/"
                         "_napari/batch_widget.py > FILE), interleaved with the installed one")
    ap.add_argument("--case", choices=("files", "blocks"), help=argparse.SUPPRESS)
    ap.add_argument("--dock-module", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        print("RESULT " + json.dumps(case_run(args.case, args.sample, args.dock_module)), flush=True)
        return 0
    print(f"load average {os.getloadavg()} on {os.cpu_count()} CPUs", flush=True)
    variants = [("after", None)] + ([("before", args.before)] if args.before else [])
    runs = [(c, v) for c in args.cases for v in variants]
    rows: dict[tuple[str, str], list[dict]] = {(c, v[0]): [] for c, v in runs}
    failed = False
    for rep in range(args.repeats):
        for case, (variant, module) in runs if rep % 2 == 0 else runs[::-1]:
            r = _child(["--case", case] + (["--sample"] if args.sample else [])
                       + (["--dock-module", module] if module else []))
            rows[(case, variant)].append(r)
            case = f"{case} {variant}" if args.before else case
            ok_run = _verdict(r["run_ms"], RUN_TARGET, r["baseline_ms"])
            ok_open = _verdict(r["open_ms"], ARRIVAL_TARGET, r["baseline_ms"])
            failed |= "OVER" in (ok_run, ok_open) or bool(r["errors"])
            print(f"{case:6s} load {r['load']:4.1f} | baseline {r['baseline_ms']:4.0f} ms | dock opens "
                  f"{r['open_dock_ms']:4.0f} ms | run {r['run_s']:5.1f} s, {r['rows']} rows: longest stall "
                  f"{r['run_ms']:4.0f} ms {ok_run} ({r['run_over']} > 100 ms, top {r['run_top']}; full GC "
                  f"{r['gc_run_ms']:3.0f} ms; all: {r['full_gcs_run']}) at {r['run_status'][:40]!r} | Open result {r['open_ms']:4.0f} ms "
                  f"{ok_open} (layer in {r['open_s']:.2f} s) (full GC {r['gc_open_ms']:3.0f} ms), layer {r['layer']} | errors {r['errors']}",
                  flush=True)
            for what in ("run_stalls", "open_stalls"):
                for s in r[what]:
                    print(f"    {what[:-7]} stall {s['ms']} ms at {s['at_s']} s ({s['status']!r})")
                    for stack, n in s.get("stacks", {}).get("main", []):
                        print(f"      main x{n}: {stack}")
                    if s.get("stacks"):
                        print(f"      others: {s['stacks']['others']}")
    for (case, variant), rs in rows.items():
        if not rs:
            continue
        case = f"{case} {variant}" if args.before else case
        def mm(key: str, rs: list[dict] = rs) -> str:
            v = sorted(r[key] for r in rs)
            return f"{v[0]:.0f} / {v[len(v) // 2]:.0f}"
        print(f"{case:6s} min / median over {len(rs)}: baseline {mm('baseline_ms')} ms | while running "
              f"{mm('run_ms')} ms | Open result {mm('open_ms')} ms | dock opens {mm('open_dock_ms')} ms", flush=True)
    print(f"targets: while running {RUN_TARGET * 1000:.0f} ms, Open result {ARRIVAL_TARGET * 1000:.0f} ms "
          "(or 1.5 x the baseline redraw)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
