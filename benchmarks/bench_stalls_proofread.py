"""How long does the main thread stall for each action of the Proofreading dock? (issue 17)

Targets, declared before measuring: every edit, undo, redo and jump to a review item is an
interactive action, <= 100 ms; *From metrics* computes in a worker (<= 100 ms while it runs) and
its result, the review queue, arrives in the main thread (<= 300 ms). A case also passes at
<= 1.5 x the baseline redraw of the same run (one redraw of the scene, no action: under Xvfb
software OpenGL draws a 3D view slowly). A jump to an item on another slice (*Next*) changes the
slice: napari slices every layer again, as when the user moves the z-slider; it also passes at
<= 1.5 x napari's own slice change in the same run (``slice``: the z point moved by
:data:`SLICE_STEPS` slices with ``dims.set_point``, no plugin action).

A real napari viewer (shown; under Xvfb on a headless machine), napari's error hooks and
notification manager installed, its activity dock showing progress; a result with ``--n``
nuclei (default 1,000) on ``--shape`` (default 64 x 256 x 256) and its ground truth (the
result loses each nucleus's +X face and misses some). The dock is opened through the plugin's
npe2 contribution (``add_plugin_dock_widget``) and every action is a real Qt event: mouse
clicks (Shift+click merge, Ctrl+click split seeds) and keys (the split key, Delete, Ctrl+Z,
Ctrl+Shift+Z, N) sent with ``QTest`` to the vispy canvas's native widget at the pixel of the
object, the dock's buttons (*From metrics*, *Save…*) clicked with ``QTest``. The save dialog
alone is replaced by a fixed path in a temporary folder (a modal dialog cannot be clicked here).

Each action is measured on its own: the longest gap of a 20 ms ``QTimer`` from the event until
a tick has come after the last long gap (its redraws included), with the longest full garbage
collection in that window; ``--sample`` also samples the main thread's stack every 2 ms (a
sampler thread reading ``sys._current_frames()``) and prints where the longest gap of every
action over its target was spent. Each case (2D or 3D view) is a fresh process; the cases
alternate over ``--repeats``; min / median per action at the end. ``--compare SRC`` also runs
the package found in ``SRC`` (e.g. ``git archive <commit> src | tar -x -C /tmp/before``; replace
the ``napari.yaml`` symlink in it by the file, npe2 reads it there), interleaved with the
installed one (or with the one on ``PYTHONPATH``).

    nice -n 10 xvfb-run -a python benchmarks/bench_stalls_proofread.py [--repeats 3] [--views 2 3]
        [--n 1000] [--shape 64 256 256] [--dtype uint16] [--sample] [--compare /tmp/before/src]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests" / "_napari"))

from bench_widget_stalls import _track_gc, scene, settle_events

#: issue 17: an interactive action (edit, undo, redo, jump), and a computed result arriving
ACTION_TARGET, ARRIVAL_TARGET = 0.100, 0.300
#: the actions in the order a case runs them; "metrics" is measured in two windows (its
#: worker running, then its queue arriving)
ACTIONS = ("metrics", "next", "merge", "undo", "redo", "seeds", "split", "delete", "undo2", "save")
TARGETS = {a: ACTION_TARGET for a in ACTIONS} | {"metrics_arrival": ARRIVAL_TARGET}
#: how far napari's own slice change (the ``slice`` baseline) moves the slice, in slices
SLICE_STEPS = 7
#: actions whose longest gap ``--sample`` profiles even within their limit (``--profile``)
PROFILE_ALWAYS: set[str] = set()


def limit_ms(name: str, base_ms: float, slice_ms: float) -> float:
    """An action's limit: its target, or 1.5 x the baseline redraw; a jump to another slice
    (*Next*) also 1.5 x napari's own slice change of the same run (``slice``)."""
    lim = max(TARGETS.get(name, 1e9) * 1000, 1.5 * base_ms)
    return max(lim, 1.5 * slice_ms) if name == "next" else lim
DOCK = ("napari-neuroseg", "Proofreading")


class StackSampler:
    """Samples the main thread's stack every ``interval`` s in a daemon thread (while started)."""

    def __init__(self, interval: float = 0.002, depth: int = 150):
        self.ident = threading.main_thread().ident
        self.interval, self.depth = interval, depth
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)

    def start(self) -> StackSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            frame = sys._current_frames().get(self.ident)
            stack = []
            while frame is not None and len(stack) < self.depth:
                code = frame.f_code
                name = code.co_filename.split("site-packages/")[-1].split("src/")[-1]
                stack.append(f"{name}:{code.co_name}")
                frame = frame.f_back
            self.samples.append((time.perf_counter(), tuple(stack)))
            time.sleep(self.interval)

    def profile(self, t0: float, t1: float, top: int = 14) -> list[tuple[int, str]]:
        """The functions most often on the stack between ``t0`` and ``t1`` (inclusive counts),
        the innermost first among equals; the count is in samples (~``interval`` each)."""
        counts: Counter[str] = Counter()
        leaf: Counter[str] = Counter()
        n = 0
        for t, stack in self.samples:
            if t0 <= t <= t1 and stack:
                n += 1
                leaf[stack[0]] += 1
                for f in set(stack):
                    counts[f] += 1
        rows = [(c, f) for f, c in counts.most_common(top * 3)
                if "bench_stalls_proofread" not in f and "_pump" not in f]
        inside = [st for t, st in self.samples if t0 <= t <= t1 and st]
        mid = [f for f in inside[len(inside) // 2] if not f.startswith(("numba/", "llvmlite/", "<frozen"))] \
            if inside else []
        return ([(n, "samples in the gap")] + rows[:top] + [(c, "leaf " + f) for f, c in leaf.most_common(4)]
                + [(0, "mid-gap stack (numba, llvmlite, importlib left out): " + " < ".join(mid[:25]))])


def _pick_objects(pred: np.ndarray, n_pairs: int = 3) -> dict:
    """Objects the case acts on, each alone in its (y, x) column (a 3D click's ray meets it
    first whatever the camera's side): a merge pair in the same z plane, a split target, a
    delete target."""
    from skimage.measure import regionprops

    props = {p.label: p for p in regionprops(pred)}
    free = []
    for lab, p in props.items():
        _z0, y0, x0, _z1, y1, x1 = p.bbox
        if set(np.unique(pred[:, y0:y1, x0:x1]).tolist()) == {0, lab} and p.area >= 20:
            free.append(lab)
    cz = {lab: round(props[lab].centroid[0]) for lab in free}
    pairs = [(a, b) for i, a in enumerate(free) for b in free[i + 1:]
             if cz[a] == cz[b] and abs(props[a].centroid[1] - props[b].centroid[1])
             + abs(props[a].centroid[2] - props[b].centroid[2]) < 40]
    a, b = pairs[0]
    rest = [lab for lab in free if lab not in (a, b)]
    return {"merge": (a, b), "split": rest[0], "delete": rest[1],
            "centre": {lab: tuple(round(c) for c in props[lab].centroid) for lab in free}}


def case(ndisplay: int, n: int, shape: tuple[int, int, int], dtype: str, sample: bool) -> dict:
    """One fresh-process case: every action once, in a ``ndisplay``-D view."""
    import napari
    from napari.utils.notifications import notification_manager
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication
    from test_evaluate_responsive import StallMeter

    from napari_neuroseg._napari import _save
    from napari_neuroseg._napari._layers import GROUND_TRUTH, ROLE_KEY
    from napari_neuroseg._napari.proofreading.navigation import frame_box

    gt, pred = scene(n, shape)
    if dtype == "uint16":  # what the Nuclei dock shows (``_display.compact_labels``)
        pred = pred.astype(np.uint16)
    picks = _pick_objects(pred)
    viewer = napari.Viewer(show=True)
    notification_manager.install_hooks()
    start_records = len(notification_manager.records)
    viewer.add_labels(gt, name="ground truth", metadata={ROLE_KEY: GROUND_TRUTH})
    layer = viewer.add_labels(pred, name="nuclei result")
    _dock_widget, w = viewer.window.add_plugin_dock_widget(*DOCK)
    w.review_section.set_expanded(True)
    w.gt_combo.setCurrentText("ground truth")
    w.task_combo.setCurrentIndex(w.task_combo.findData("nuclei"))
    ctrl = w.controller
    assert ctrl is not None and ctrl.layer.name == layer.name, "the dock does not edit the result layer"
    app = QApplication.instance()
    canvas = viewer.window._qt_viewer.canvas  # the vispy canvas; its native widget gets the events
    native = canvas.native
    out_dir = Path(tempfile.mkdtemp(prefix="bench-proofread-"))
    _save.ask_save_path = lambda *a, **k: (str(out_dir / "edited.tif"), _save.TIFF_FILTER)
    arrived: list[float] = []
    install = w._install_queue

    def timed_install(*a, **k):  # the review queue's arrival in the main thread
        arrived.append(time.perf_counter())
        return install(*a, **k)

    w._install_queue = timed_install
    meter = StallMeter()
    ends: list[float] = []
    meter.on_tick.append(lambda: ends.append(time.perf_counter()))
    gc_pauses = _track_gc()
    sampler = StackSampler().start() if sample else None

    settle = functools.partial(settle_events, app, ends)  # pump, then until a tick after the last stall

    def pixel(coord) -> QPoint:
        """The canvas pixel of a data voxel of the result layer (its displayed axes)."""
        world = np.asarray(layer.data_to_world(np.asarray(coord, float)))
        shown = list(viewer.dims.displayed)
        scene_pos = world[shown][::-1]  # vispy's order: x, y(, z)
        tr = canvas.view.scene.node_transform(canvas._scene_canvas.scene)
        p = tr.map(np.r_[scene_pos, [0.0] * (3 - len(scene_pos)), 1.0])
        return QPoint(round(p[0] / p[3]), round(p[1] / p[3]))

    def show(labs) -> None:
        """Frame the objects (not measured: the user navigating there)."""
        c = picks["centre"]
        pts = np.array([c[lab] for lab in labs])
        box = [[int(lo) - 3, int(hi) + 4] for lo, hi in zip(pts.min(0), pts.max(0))]
        frame_box(viewer, layer, box, c[labs[0]])
        settle(0.5)

    def click(coord, modifier) -> None:
        pos = pixel(coord)
        QTest.mouseMove(native, pos)
        app.processEvents()
        QTest.mouseClick(native, Qt.MouseButton.LeftButton, modifier, pos)

    def key(k, modifier=Qt.KeyboardModifier.NoModifier) -> None:
        QTest.keyClick(native, k, modifier)

    results: dict[str, dict] = {}

    def measure(name: str, fire, done=lambda: True) -> None:
        settle(0.3)
        t0 = meter.restart()
        ends.clear()
        arrived.clear()
        fire()
        while not done() and time.perf_counter() - t0 < 300:
            app.processEvents()
            time.sleep(0.002)
        settle(0.5)
        t1 = time.perf_counter()
        t_arr = arrived[0] if arrived else None
        windows = {name: (t0, t_arr or t1)}
        if t_arr is not None:  # the worker's run, then its result's arrival
            windows[name + "_arrival"] = (t_arr, t1)
        for wname, (a, b) in windows.items():
            gaps = [(g, e) for g, e in zip(meter.gaps, ends)
                    if (e >= a if wname.endswith("_arrival") else e < b or t_arr is None)]
            worst, end = max(gaps, default=(0.0, a))
            full_gc = max((d for t, d, gen in gc_pauses if a <= t < b + 0.5 and gen == 2), default=0.0)
            r = {"stall_ms": 1000 * worst, "gc_ms": 1000 * full_gc, "wall_s": b - a,
                 "status": w.status_label.text()[:60]}
            over = 1000 * worst > limit_ms(wname, 1000 * base, 1000 * slice_base)
            if sampler is not None and (over or wname in PROFILE_ALWAYS):
                r["profile"] = sampler.profile(end - worst, end)
            results[wname] = r

    try:
        viewer.dims.ndisplay = ndisplay
        viewer.layers.selection.active = layer
        viewer.reset_view()
        settle(1.5)
        # baseline: one redraw of the scene, no action
        settle(0.5)
        meter.restart()
        ends.clear()
        viewer.scene.camera.zoom = viewer.scene.camera.zoom * 1.01
        settle(1.0)
        base = meter.worst
        results["baseline"] = {"stall_ms": 1000 * base, "gc_ms": 0.0, "wall_s": 0.0, "status": ""}
        # napari's own slice change, as the z-slider moved by hand (no plugin action): every layer
        # is sliced again; a jump to an item on another slice costs at least that
        z_axis = viewer.dims.not_displayed[0] if viewer.dims.not_displayed else 0
        z0 = viewer.dims.point[z_axis]
        settle(0.5)
        meter.restart()
        ends.clear()
        viewer.dims.set_point(z_axis, z0 + SLICE_STEPS * viewer.dims.range[z_axis].step)
        settle(1.0)
        slice_base = meter.worst
        results["slice"] = {"stall_ms": 1000 * slice_base, "gc_ms": 0.0, "wall_s": 0.0, "status": ""}
        viewer.dims.set_point(z_axis, z0)
        settle(1.0)
        btn = {b.text(): b for b in w.findChildren(type(w.save_btn))}
        # From metrics: the review queue (worker), then Next (N) jumps to its first item
        measure("metrics", lambda: QTest.mouseClick(btn["From metrics"], Qt.MouseButton.LeftButton),
                lambda: ctrl.review is not None)
        assert ctrl.review is not None and len(ctrl.review) > 0, w.status_label.text()
        viewer.layers.selection.active = layer
        native.setFocus()
        measure("next", lambda: key(Qt.Key.Key_N))
        assert ctrl.review.position == 0, w.status_label.text()
        # merge: select a, Shift+click b
        a, b = picks["merge"]
        show([a, b])
        layer.selected_label = a
        measure("merge", lambda: click(picks["centre"][b], Qt.KeyboardModifier.ShiftModifier))
        assert not (layer.data == b).any(), f"merge did not happen: {w.status_label.text()}"
        measure("undo", lambda: key(Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier))
        assert (layer.data == b).any(), "undo did not bring the merged label back"
        measure("redo", lambda: key(Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier
                                    | Qt.KeyboardModifier.ShiftModifier))
        assert not (layer.data == b).any(), "redo did not merge again"
        # split: two Ctrl+click seeds (measured together), then the split key (Shift+S)
        s = picks["split"]
        show([s])
        cz, cy, cx = picks["centre"][s]

        def seeds() -> None:
            click((cz, cy - 2, cx), Qt.KeyboardModifier.ControlModifier)
            app.processEvents()
            click((cz, cy + 2, cx), Qt.KeyboardModifier.ControlModifier)

        measure("seeds", seeds)
        assert len(ctrl.picker.seeds) == 2, f"seeds: {ctrl.picker.seeds} {w.status_label.text()}"
        measure("split", lambda: key(Qt.Key.Key_S, Qt.KeyboardModifier.ShiftModifier))
        assert len(np.unique(layer.data[max(cz - 3, 0):cz + 4, cy - 3:cy + 4, cx - 3:cx + 4])) >= 3, \
            f"split did not happen: {w.status_label.text()}"
        # delete the selected label (Delete), undo it
        d = picks["delete"]
        show([d])
        layer.selected_label = d
        measure("delete", lambda: key(Qt.Key.Key_Delete))
        assert not (layer.data == d).any(), f"delete did not happen: {w.status_label.text()}"
        measure("undo2", lambda: key(Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier))
        assert (layer.data == d).any(), "undo did not bring the deleted label back"
        # Save… (the dialog answered with a path in a temporary folder)
        saved = out_dir / "edited.tif"  # written in a worker: complete once it exists (atomic rename)
        measure("save", lambda: QTest.mouseClick(w.save_btn, Qt.MouseButton.LeftButton), saved.exists)
        assert saved.exists(), w.status_label.text()
    finally:
        meter.stop()
        if sampler is not None:
            sampler.stop()
        notification_manager.restore_hooks()
    errors = [str(r.message)[:200] for r in notification_manager.records[start_records:]
              if str(r.severity).lower() in ("error", "fatal")]
    out = {"ndisplay": ndisplay, "load": os.getloadavg()[0], "results": results, "errors": errors,
           "n_objects": int(len(np.unique(pred)) - 1), "queue": len(ctrl.review)}
    viewer.close()
    return out


def _child(args_list: list[str], src: str | None = None) -> dict:
    """One case in a fresh process of this script (``bench_widget_stalls._child`` runs its own);
    ``src``: a folder that holds another version of the package (put first on ``PYTHONPATH``)."""
    import json
    import subprocess

    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, __file__, *args_list], capture_output=True, text=True, timeout=1800,
                          check=False, env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        print(proc.stdout[-2000:], proc.stderr[-3000:])
        raise SystemExit(1)
    return json.loads(line[-1][7:])


def _print_case(label: str, r: dict) -> bool:
    """One line per case (and the sampled stacks); returns whether an action was over target."""
    res = r["results"]
    base = res["baseline"]["stall_ms"]
    parts = []
    over = False
    slice_base = res.get("slice", {}).get("stall_ms", 0.0)
    for name, x in res.items():
        lim = limit_ms(name, base, slice_base)
        mark = "" if name in ("baseline", "slice") or x["stall_ms"] <= lim else " OVER"
        over |= bool(mark)
        gc_note = f" (GC {x['gc_ms']:.0f})" if x["gc_ms"] > 0 else ""
        parts.append(f"{name} {x['stall_ms']:.0f}{gc_note}{mark}")
    view = r["ndisplay"]
    print(f"{label + ' ' if label else ''}{view}D load {r['load']:.1f}, {r['n_objects']} objects, queue "
          f"{r['queue']}: " + " | ".join(parts) + (f" | errors {r['errors']}" if r["errors"] else ""), flush=True)
    for name, x in res.items():
        if "profile" in x:
            print(f"    {view}D {name} {x['stall_ms']:.0f} ms, main thread:")
            for c, f in x["profile"]:
                print(f"      {c:5d} {f}")
    return over or bool(r["errors"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="number of nuclei")
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 256, 256))
    ap.add_argument("--dtype", choices=("uint16", "uint32"), default="uint16",
                    help="the result's dtype (uint16: as the Nuclei dock shows it)")
    ap.add_argument("--views", type=int, nargs="+", choices=(2, 3), default=(2, 3))
    ap.add_argument("--repeats", type=int, default=3, help="processes per view")
    ap.add_argument("--sample", action="store_true", help="sample the main thread's stack (2 ms)")
    ap.add_argument("--profile", nargs="+", default=[], metavar="ACTION",
                    help="with --sample: profile these actions' longest gaps even within their limits")
    ap.add_argument("--compare", metavar="SRC",
                    help="also run the package found in SRC (e.g. an older commit's src/), interleaved")
    ap.add_argument("--case", type=int, choices=(2, 3), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        import json

        PROFILE_ALWAYS.update(args.profile)
        r = case(args.case, args.n, tuple(args.shape), args.dtype, args.sample)
        print("RESULT " + json.dumps(r), flush=True)
        return 0
    import subprocess

    up = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    print(f"{up}\ntargets: edit/undo/redo/jump/save {ACTION_TARGET * 1000:.0f} ms, From metrics while running "
          f"{ACTION_TARGET * 1000:.0f} ms, its queue arriving {ARRIVAL_TARGET * 1000:.0f} ms (or 1.5 x the baseline)",
          flush=True)
    versions = [("installed", None)] + ([(f"compare ({args.compare})", args.compare)] if args.compare else [])
    rows: dict[tuple[str, int], list[dict]] = {}
    failed = False
    for rep in range(args.repeats):
        for view in args.views:
            for label, src in versions[::-1] if rep % 2 else versions:  # alternate which runs first
                cmd = ["--case", str(view), "--n", str(args.n), "--shape", *map(str, args.shape),
                       "--dtype", args.dtype]
                r = _child(cmd + (["--sample"] if args.sample else [])
                           + (["--profile", *args.profile] if args.profile else []), src)
                rows.setdefault((label, view), []).append(r)
                failed |= _print_case(label if args.compare else "", r)
    print("min / median longest stall (ms):")
    for (label, view), rs in rows.items():
        names = list(rs[0]["results"])
        cells = []
        for name in names:
            v = [r["results"][name]["stall_ms"] for r in rs]
            cells.append(f"{name} {min(v):.0f}/{statistics.median(v):.0f}")
        print(f"  {label + ' ' if args.compare else ''}{view}D: " + ", ".join(cells))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
