"""Run a progress generator in a napari worker thread.

Every long job in napari-neuroseg is a generator that yields
:class:`~napari_neuroseg.runtime.progress.Progress` and returns its result (see
``runtime/progress.py``). :func:`start_worker` runs one with napari's ``create_worker`` so that:

- the activity dock shows a progress bar driven by each yielded ``Progress`` (step/total/message);
- ``worker.quit()`` cancels it: the generator is not resumed past its current ``yield`` and is
  closed (its ``finally`` blocks run, e.g. temp files are removed);
- an exception becomes an error notification (a ``NeurosegError`` shows its own message) instead
  of a traceback, and the progress bar is closed on every outcome, so no spinner stays stuck.

Layers and Qt objects are only touched in the callbacks, which run in the main thread.

Progress rule (why a job with one step per object cannot hang the GUI): napari's progress bar
calls ``QApplication.processEvents()`` on every value or description change, which delivers the
next queued ``yielded`` signal *inside* the current one. One update per object therefore nested
hundreds deep (``RecursionError``, a frozen viewer). So

- steps are rate-limited by time in the worker thread
  (:func:`~napari_neuroseg.runtime.progress.throttle`: at most one ``Progress`` per
  ``progress_interval``, default 0.1 s; the first and the last always; other items unthrottled);
- the main-thread handler never re-enters itself: an item arriving while a bar update is inside
  ``processEvents()`` is queued and handled by the outer call when it returns (only the latest
  queued ``Progress`` is shown); after the job ended, left-over steps are dropped.

Start rule (why the first run of a dock no longer stalls the viewer 0.3-0.4 s): when a job
starts, napari builds its progress bar in the main thread (the first one of a session takes
~150 ms: the activity indicator appears, the status bar grows, the canvas is redrawn). A job that
starts at once with Python-heavy work (loading a model: imports, unpickling, building the network)
competes for the GIL with that work and doubles it. The job's body therefore waits until the main
thread has handled the worker's ``started`` signal (napari's bar is then built), at most
``START_WAIT_S``; the wait costs the job a few milliseconds.

Preload rule (why opening a dock does not freeze the viewer for seconds): the dock modules and
their construction never import torch (importing it takes 2-5 s, all of it holding the GIL in
the thread that imports). A dock that needs torch's device list calls :func:`preload_torch`
when it opens: torch is imported in a background thread (started once the dock is built), once
per process, and the device list comes back to the main thread; a job that starts before it is done waits for the import in its
worker thread (Python's import lock), never in the main thread.
"""

from __future__ import annotations

import functools
import io
import sys
import threading
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker

from napari_neuroseg._napari._notify import notify_error
from napari_neuroseg.runtime import collector
from napari_neuroseg.runtime.progress import PROGRESS_INTERVAL, Progress, carries_data, throttle

__all__ = ["JobRuntimeError", "METRICS_WARMUP", "START_WAIT_S", "TorchRead", "after_torch", "as_progress", "offer_devices",
           "NEURONS_WARMUP", "NUCLEI_WARMUP", "preload_torch", "run_in_background", "start_worker", "torch_ready",
           "warm_metrics", "warm_neurons", "warm_nuclei", "warm_task"]

#: longest wait (s) of a job's body for the main thread to have set up its progress bar
START_WAIT_S = 1.0


class JobRuntimeError(Exception):
    """Carries a ``RuntimeError`` raised by a job out of the worker thread.

    superqt treats a ``RuntimeError`` from a generator worker as "the worker was deleted": it
    emits neither ``errored`` nor ``finished`` (a stuck spinner, and e.g. torch's out-of-memory
    error is a ``RuntimeError``). :func:`start_worker` re-raises such errors wrapped in this class;
    ``on_error`` still receives the original exception (``.original``).
    """

    def __init__(self, original: RuntimeError):
        super().__init__(str(original))
        self.original = original


def _after_pending_events(fn: Callable[[], Any]) -> None:
    """Call ``fn`` in the main thread once the events pending now have been handled.

    napari's own slot of a worker's ``started`` signal builds the progress bar and calls
    ``processEvents()`` inside, where this signal's other slots run nested, before the bar's
    layout and repaint. Qt handles an event posted while it delivers posted events in its next
    pass, so two hops land after that ``processEvents()``."""
    from qtpy.QtCore import QTimer

    QTimer.singleShot(0, lambda: QTimer.singleShot(0, fn))


_PRELOAD: dict[str, Any] = {}  # "thread", "devices" (once known), "relay", "waiting" callbacks
_PRELOAD_LOCK = threading.Lock()


def _preload_relay() -> Any:
    """A main-thread QObject whose signal carries the device list from the preload thread."""
    from qtpy.QtCore import QObject, Signal, Slot

    class _Relay(QObject):
        done = Signal(object)

        @Slot(object)
        def deliver(self, devices: list[str]) -> None:
            _preload_done(devices)

    relay = _Relay()  # lives in the main thread: emitted from the preload thread, queued
    relay.done.connect(relay.deliver)
    return relay


def _preload_done(devices: list[str]) -> None:
    with _PRELOAD_LOCK:
        waiting, _PRELOAD["waiting"] = _PRELOAD.get("waiting", []), []
    for fn in waiting:
        try:
            fn(list(devices))
        except RuntimeError:  # the dock's Qt widgets were deleted meanwhile
            pass


def _dlopen_torch_libraries() -> list[str]:
    """Load torch's big shared libraries with the GIL released; returns the files loaded.

    CPython holds the GIL while it loads an extension module (``dlopen``, which for
    ``torch._C`` maps ~0.5 GB of libraries and runs their C++ static initialisers: 0.3-0.7 s
    measured here), and so does ``ctypes.CDLL``; a call of C's ``dlopen`` through ctypes releases
    it. The libraries are loaded as torch loads them (``libtorch_global_deps`` with RTLD_GLOBAL,
    the rest local); ``import torch`` then finds them loaded. Any failure leaves it to torch."""
    import ctypes
    import importlib.util
    import os

    if not hasattr(os, "RTLD_NOW"):  # Windows: no dlopen
        return []
    spec = importlib.util.find_spec("torch")  # finds, does not import
    if spec is None or not spec.origin:
        return []
    lib = os.path.join(os.path.dirname(spec.origin), "lib")
    ext = ".dylib" if sys.platform == "darwin" else ".so"
    libc = ctypes.CDLL(None)
    dlopen = libc.dlopen
    dlopen.restype, dlopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
    loaded = []
    for name, mode in (("libtorch_global_deps", os.RTLD_GLOBAL), ("libtorch_python", os.RTLD_LOCAL)):
        path = os.path.join(lib, name + ext)
        if not os.path.isfile(path) or not dlopen(os.fsencode(path), os.RTLD_NOW | mode):
            break
        loaded.append(path)
    return loaded


def _preload_body(relay: Any) -> None:
    try:
        _dlopen_torch_libraries()
    except Exception:  # noqa: BLE001, S110 - the import below loads them as usual
        pass
    from napari_neuroseg.runtime import collector

    collector.settle()  # the import's full collections traverse its own objects only
    try:
        from napari_neuroseg.runtime.device import available_devices

        devices = available_devices()  # imports torch
        import torch

        buf = io.BytesIO()  # the first torch.load imports more (~0.1 s): model files are read with it
        torch.save({"thresholds": [0.5]}, buf)
        buf.seek(0)
        torch.load(buf, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch problems are reported when a job runs
        devices = ["cpu"]
    collector.settle()  # and torch's objects join the settled heap
    with _PRELOAD_LOCK:
        _PRELOAD["devices"] = devices
    relay.done.emit(devices)


def preload_torch(on_devices: Callable[[list[str]], None] | None = None) -> threading.Thread | None:
    """Import torch in a background thread (once per process; the preload rule, module
    docstring) and call ``on_devices(names)`` in the main thread with the usable devices, best
    first (:func:`~napari_neuroseg.runtime.device.available_devices`; ``["cpu"]`` if torch
    fails). Call it from the main thread. If the list is known already, ``on_devices`` is called
    at once. Returns the preload thread (None when it had finished before)."""
    with _PRELOAD_LOCK:
        devices = _PRELOAD.get("devices")
        if devices is None and on_devices is not None:
            _PRELOAD.setdefault("waiting", []).append(on_devices)
        th = _PRELOAD.get("thread")
        if th is None:
            relay = _PRELOAD["relay"] = _preload_relay()
            th = _PRELOAD["thread"] = threading.Thread(target=_preload_body, args=(relay,),
                                                       name="neuroseg-preload-torch", daemon=True)
            # started once the dock is built and laid out: building it competes for the GIL
            _after_pending_events(th.start)
    if devices is not None:
        if on_devices is not None:
            on_devices(list(devices))
        return None
    return th


_BACKGROUND: dict[str, threading.Thread] = {}


def run_in_background(fn: Callable[[], Any], name: str) -> threading.Thread | None:
    """Run ``fn()`` once per process (per ``name``) in a daemon thread, started once the events
    pending now are handled (a dock being built is laid out first). For imports a later action
    would otherwise pay in the main thread: an import runs Python bytecode, so the main thread
    keeps getting the GIL between its steps. Errors are ignored (the action that needs the
    module meets them itself). Returns the thread, None when one of this name was started
    before."""
    with _PRELOAD_LOCK:
        if name in _BACKGROUND:
            return None

        def body() -> None:
            try:
                fn()
            except Exception:  # noqa: BLE001, S110 - reported by the action that needs it
                pass
            from napari_neuroseg.runtime import collector

            collector.settle()  # what it imported joins the settled heap (runtime/collector.py)

        th = _BACKGROUND[name] = threading.Thread(target=body, name=name, daemon=True)
    _after_pending_events(th.start)
    return th


#: the background threads that ready the nuclei NMS's and the neurons post-processing's numba
#: kernels (:func:`warm_nuclei`, :func:`warm_neurons`), once per process
NUCLEI_WARMUP = "neuroseg-nuclei-dock-warmup"
NEURONS_WARMUP = "neuroseg-neurons-dock-warmup"


def warm_nuclei() -> None:
    """Compile (or load from numba's cache) the nuclei NMS in a background thread, once per
    process, for a dock about to run it (Nuclei, Batch's *nuclei* task), not in its first run
    (its compiler's garbage collections stalled the viewer up to 138 ms). Started once the dock
    is built and laid out: building it competes for the GIL."""
    def warm() -> None:
        from napari_neuroseg.models.stardist3d.nms import warmup_async

        warmup_async()

    run_in_background(warm, NUCLEI_WARMUP)


def warm_neurons() -> None:
    """Compile (the first time after an install: ~12 s) or load from numba's disk cache the
    neurons post-processing's kernels in a background thread, once per process, for a dock about
    to run it (Neurons, Batch's *neurons* task) while the user chooses: compiled in the first
    run, numba's compiler (Python code) made that run 5x longer (16 s against 3 s) and competed
    with the viewer for the GIL (213-277 ms stalls). A run started before it ends waits for
    numba's compiler lock, not for a second compilation."""
    def warm() -> None:
        from napari_neuroseg.models.neurons.postprocess import warmup

        warmup()

    run_in_background(warm, NEURONS_WARMUP)


def warm_task(task: str) -> None:
    """The warm-up of a batch task's kernels (:func:`warm_nuclei`, :func:`warm_neurons`, the
    thinning of :func:`warm_metrics`); nothing for a task without any."""
    {"nuclei": warm_nuclei, "neurons": warm_neurons, "evaluate": warm_metrics}.get(task, lambda: None)()


#: the background threads that ready the metrics' numba kernels (:func:`warm_metrics`): this name
#: (the thinning), and this name with a pair of label dtypes (stardist's overlap table)
METRICS_WARMUP = "neuroseg-metrics-warmup"


def warm_metrics(gt: Any = None, pred: Any = None) -> None:
    """Compile (the first time after an install) or load from numba's disk cache the metrics'
    kernels in background threads (:mod:`napari_neuroseg.metrics.warmup`), for the docks that
    evaluate (Evaluate, Proofreading's *From metrics*) while the user chooses: the thinning once
    per process, stardist's overlap table once per pair of label dtypes of the arrays ``gt`` and
    ``pred`` (none for a FISBe stack or a non-integer array). Compiled in the first run after an
    install, numba's compiler stalled the viewer 110-116 ms."""
    from napari_neuroseg.metrics.warmup import label_signature, warmup

    run_in_background(warmup, METRICS_WARMUP)
    if gt is None or pred is None:
        return
    pair = (label_signature(gt), label_signature(pred))
    if None in pair or pair[0][1] != pair[1][1]:
        return
    run_in_background(lambda: warmup([pair], thinning=False),
                      f"{METRICS_WARMUP}-{pair[0][0]}-{pair[1][0]}-{pair[0][1]}d")


def torch_ready() -> bool:
    """Whether torch is imported completely (not absent, not being imported by another thread)."""
    mod = sys.modules.get("torch")
    return mod is not None and not getattr(getattr(mod, "__spec__", None), "_initializing", False)


def after_torch(dock: Any, fn: Callable[[], Any]) -> bool:
    """Call ``fn()`` now if torch is imported; otherwise start its background import
    (:func:`preload_torch`) and call ``fn()`` in the main thread once it is done, unless ``dock``
    was closed meanwhile. Returns whether ``fn`` ran now."""
    if torch_ready():
        fn()
        return True

    def ready(_devices: list[str]) -> None:
        if not getattr(dock, "dock_closed", False):
            fn()

    preload_torch(ready)
    return False


class TorchRead:
    """A dock's read of a model file that needs torch (its stored thresholds): :meth:`request`
    reads now when torch is imported, otherwise once the background import
    (:func:`preload_torch`) has ended, in the main thread, unless the dock was closed;
    :meth:`flush` reads now if a read still waits (a run started first: the read then waits for
    the import in the calling thread, so the run never uses the boxes' defaults instead of the
    model's values). Only the latest request is read; :meth:`cancel` drops a waiting one."""

    def __init__(self, dock: Any, read: Callable[[], Any]):
        self._dock = dock
        self._read = read
        self.pending = False

    def request(self) -> None:
        self.pending = True
        after_torch(self._dock, self.flush)

    def flush(self) -> None:
        if self.pending:
            self.pending = False
            self._read()

    def cancel(self) -> None:
        self.pending = False


def offer_devices(dock: Any, box: Any) -> None:
    """Offer ``"auto"`` and the usable devices in the ComboBox ``box`` of ``dock`` once the
    background import of torch (:func:`preload_torch`) knows them; until then ``"auto"`` and
    ``"cpu"``. The choice is kept; nothing happens after the dock was closed."""

    def known(devices: list[str]) -> None:
        if getattr(dock, "dock_closed", False):
            return
        value = box.value
        box.choices = ["auto", *[d for d in devices if d != "auto"]]
        if value in box.choices:
            box.value = value

    preload_torch(known)


def as_progress(item: Any) -> Progress | None:
    """Interpret one yielded item as :class:`Progress` (also accepts a dict with step/total)."""
    if isinstance(item, Progress):
        return item
    if isinstance(item, dict) and "step" in item:
        return Progress(
            int(item["step"]), int(item.get("total", 0)), str(item.get("message", ""))
        )
    return None


# long function: mostly the documented signature and the small closures (_drive, _show, _yielded, ...) that share one worker's state
def start_worker(
    gen_func: Callable[..., Generator[Any, Any, Any]],
    *args: Any,
    on_yield: Callable[[Any], None] | None = None,
    on_return: Callable[[Any], None] | None = None,
    total: int | None = None,
    desc: str | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    progress_interval: float = PROGRESS_INTERVAL,
    _start: bool = True,
    **kwargs: Any,
) -> GeneratorWorker:
    """Start ``gen_func(*args, **kwargs)`` (a progress generator) in a worker thread.

    Parameters
    ----------
    gen_func
        A generator function yielding ``Progress`` (or dicts with ``step``/``total``/``message``,
        or anything else, which is passed to ``on_yield`` only) and returning its result.
    on_yield, on_return
        Main-thread callbacks for the yielded items and for the return value (not called when
        the job was cancelled or failed). ``on_yield`` sees every item that is not progress and
        the progress steps that are shown (rate-limited, see the module docstring).
    total
        Number of steps if known in advance (otherwise taken from the first ``Progress``).
    desc
        Label of the progress bar (defaults to the function name).
    on_error
        Extra main-thread callback for an exception (after the error notification is shown).
    on_finished
        Main-thread callback run once on every outcome (success, error or cancel).
    progress_interval
        Seconds between two progress steps sent to the main thread (0: every step).
    _start
        Start the thread at once (default). Pass ``False`` to connect more signals first and
        call ``worker.start()`` yourself: a queued signal emitted before a slot is connected
        never reaches it (so ``qtbot.waitSignal(worker.finished)`` after a started fast job
        can miss it; use ``on_finished`` or ``_start=False`` instead).

    Returns
    -------
    The started ``GeneratorWorker``; ``worker.quit()`` cancels at the next ``yield``.
    """
    label = desc or getattr(gen_func, "__name__", "napari-neuroseg job").replace("_", " ")
    gen = gen_func(*args, **kwargs)
    if not isinstance(gen, Generator):
        raise TypeError(f"start_worker needs a generator function, got {gen_func!r}")

    holder: list[GeneratorWorker] = []
    main_ready = threading.Event()  # set in the main thread once napari's bar for the job exists

    def _abort_requested() -> bool:
        return bool(holder) and bool(holder[0].abort_requested)

    job_mark: list[Callable[[], None]] = []  # ends the job's mark (runtime/collector.py)

    @functools.wraps(gen_func)
    def _drive() -> Generator[Any, Any, Any]:
        main_ready.wait(START_WAIT_S)  # the start rule (module docstring)
        job_mark.append(collector.begin_job())  # nothing of a running job is frozen
        try:
            return (yield from throttle(gen, progress_interval, should_stop=_abort_requested,
                                        is_progress=lambda x: as_progress(x) is not None))
        except RuntimeError as exc:
            raise JobRuntimeError(exc) from exc
        finally:
            job_mark[0]()

    worker = create_worker(
        _drive,
        _progress={"total": int(total or 0), "desc": label},
        _ignore_errors=True,  # errors are reported below, not re-raised in the main thread
    )
    holder.append(worker)
    pbar = getattr(worker, "pbar", None)
    if pbar is not None:
        # We set the bar from each Progress ourselves instead of counting yields.
        try:
            worker.yielded.disconnect(pbar.increment_with_overflow)
        except (TypeError, RuntimeError):  # not connected (total == 0)
            pass

    queue: deque[Any] = deque()
    state = {"busy": False, "ended": False}

    def _show(prog: Progress) -> None:
        # napari's bar calls processEvents() here: queued items arrive in _yielded re-entrantly
        if prog.total > 0 and pbar.total != prog.total:
            pbar.total = prog.total
        pbar.n = max(0, min(prog.step, prog.total) if prog.total > 0 else prog.step)
        pbar.events.value(value=pbar.n)
        if prog.message and not state["ended"]:
            pbar.set_description(f"{label}: {prog.message}")

    def _yielded(item: Any) -> None:
        queue.append(item)
        if state["busy"]:  # re-entered from a processEvents() below: the outer call handles it
            return
        state["busy"] = True
        try:
            while queue:
                item = queue.popleft()
                prog = as_progress(item)
                if prog is not None and not carries_data(item):
                    if state["ended"] or any(as_progress(x) is not None for x in queue):
                        continue  # a newer step is already waiting, or the job is over
                if on_yield is not None:
                    on_yield(item)
                if prog is not None and pbar is not None and not state["ended"]:
                    _show(prog)
        finally:
            state["busy"] = False

    def _ended(*_: Any) -> None:
        state["ended"] = True

    def _errored(exc: BaseException) -> None:
        if isinstance(exc, JobRuntimeError):
            exc = exc.original
        notify_error(exc)
        if on_error is not None:
            on_error(exc)

    def _finished() -> None:
        # After quit() the generator is suspended at a yield: close it so its cleanup runs.
        gen.close()
        for end in job_mark:  # the worker's generator stays suspended too: the job is over
            end()
        if pbar is not None:
            pbar.close()  # also connected by napari; closing twice is harmless
        if on_finished is not None:
            on_finished()

    worker.started.connect(lambda *_: _after_pending_events(main_ready.set))
    worker.yielded.connect(_yielded)
    for sig in (worker.returned, worker.errored, worker.finished):
        sig.connect(_ended)  # connected first: runs before the other slots of these signals
    worker.errored.connect(_errored)
    worker.finished.connect(_finished)
    if on_return is not None:
        worker.returned.connect(on_return)
    if _start:
        worker.start()
    return worker
