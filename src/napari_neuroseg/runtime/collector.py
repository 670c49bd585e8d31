"""Keep Python's full garbage collections short in a process that runs a GUI next to long jobs.

Why: a full (generation-2) collection traverses every tracked object of the process, holding the
GIL for its whole length, in whichever thread crosses the collector's threshold. With napari,
torch, numba and dask loaded a process tracks ~450,000-600,000 objects: 0.25-0.5 s per full
collection on an idle 2-core machine (more when loaded). CPython starts one whenever the objects
that survived into the old generation since the last one exceed a quarter of those it kept then,
so a job, a layer insertion or an import sets one off somewhere in a session: it was the longest
stall of the viewer in the stall benchmarks (Batch while running, Proofreading's first seed click
and its 3D queue arrival, Fine-tune's set-up).

The rule (*settling*): once the modules a dock needs are imported (its warm-up), the objects that
exist then are moved to the collector's permanent generation (``gc.freeze()``). Full collections
afterwards traverse only the objects made since: a few ms instead of 0.3 s. Reference counting
still frees frozen objects; only *cyclic* garbage among them would stay until they are released.
So the heap is handed back (:func:`release`, ``gc.unfreeze()``) whenever something that existed at
the last settling may become cyclic garbage: a layer that predates it is removed from a viewer, a
plugin dock is closed, a viewer is closed (``_napari/_heap.py`` watches those). The next natural
full collection then collects it, and the survivors are settled again right after it (a
``gc.callbacks`` hook: they were just traversed, so nothing is left to collect among them), unless
a job is running: its live temporaries must not be frozen.

- :func:`settle` (after a warm-up; at a job's start when nothing was settled yet): collects the
  young generations, then freezes. Refuses after a release (the released objects may hold the
  garbage the release was for: the next full collection settles instead). During a job it is
  postponed to the next job's start.
- :func:`job` / :func:`begin_job` mark a running job (``_workers.start_worker`` marks each job
  from its start until its generator ends or its worker finishes, cancelled jobs included).
- :func:`release` unfreezes.
- :func:`hold` / :func:`unhold`: the rule acts only while something holds it (each open plugin
  dock, ``_napari/_heap.py``); the last one leaving releases the heap. A warm-up that ends after
  its dock was closed, a script or the CLI freeze nothing.

``NEUROSEG_SETTLE_HEAP=0`` in the environment turns the rule off (nothing is ever frozen).
Process-wide, thread-safe, no Qt.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["begin_job", "enabled", "epoch", "hold", "holders", "job", "jobs_running", "release", "reset", "settle", "state",
           "unhold"]

NEVER, SETTLED, RELEASED = "never", "settled", "released"

_LOCK = threading.RLock()
_S = {"state": NEVER, "epoch": 0, "jobs": 0, "pending": False, "hooked": False, "holders": 0}


def enabled() -> bool:
    """Whether the rule is on (``NEUROSEG_SETTLE_HEAP`` is not ``0``) and something holds it
    (:func:`hold`: an open plugin dock)."""
    return _S["holders"] > 0 and os.environ.get("NEUROSEG_SETTLE_HEAP", "1").strip().lower() not in {
        "0", "false", "no", "off"}


def hold() -> None:
    """Something that wants the rule (an open plugin dock) starts; nothing is ever frozen while
    no holder exists (a script, the CLI, a test without a dock)."""
    with _LOCK:
        _S["holders"] += 1


def unhold() -> None:
    """A holder ends: releases the heap (its objects may be cyclic garbage now)."""
    with _LOCK:
        _S["holders"] = max(0, _S["holders"] - 1)
        release()


def holders() -> int:
    return _S["holders"]


def state() -> str:
    """``"never"`` (nothing settled yet in this process), ``"settled"`` or ``"released"``."""
    return _S["state"]


def epoch() -> int:
    """How many times the heap was settled so far: an object made while it read ``e`` is frozen
    if and only if ``epoch() > e`` and :func:`state` is ``"settled"``."""
    return _S["epoch"]


def jobs_running() -> int:
    return _S["jobs"]


def _freeze_locked() -> None:
    gc.freeze()
    _S["state"], _S["pending"] = SETTLED, False
    _S["epoch"] += 1
    if not _S["hooked"]:
        gc.callbacks.append(_after_collection)
        _S["hooked"] = True


def settle() -> bool:
    """Freeze the objects that exist now (after collecting the young generations); returns whether
    it did. Not after a :func:`release` (the next full collection settles), not while a job runs
    (postponed to the next job's start)."""
    if not enabled():
        return False
    with _LOCK:
        if _S["state"] == RELEASED:
            return False
        if _S["jobs"]:
            _S["pending"] = True
            return False
        gc.collect(1)
        _freeze_locked()
        return True


def release() -> bool:
    """Hand every frozen object back to the collector (``gc.unfreeze()``); returns whether anything
    was frozen by this rule. The next full collection traverses them all once, then settles."""
    with _LOCK:
        if _S["state"] != SETTLED:
            return False
        gc.unfreeze()
        _S["state"] = RELEASED
        return True


def begin_job() -> Callable[[], None]:
    """Mark a job as running; returns the function that ends the mark (idempotent: call it from
    the job's ``finally`` and from whoever learns that the job is over, e.g. a GUI's *finished*
    signal after a cancel, which leaves the job's generator suspended). At the start the heap is
    settled if it never was, or if a settling was postponed by a job."""
    with _LOCK:
        if enabled() and _S["state"] != RELEASED and (_S["state"] == NEVER or _S["pending"]):
            gc.collect(1)
            _freeze_locked()
        _S["jobs"] += 1
    done = threading.Event()

    def end() -> None:
        with _LOCK:
            if not done.is_set():
                done.set()
                _S["jobs"] = max(0, _S["jobs"] - 1)

    return end


@contextmanager
def job() -> Iterator[None]:
    """:func:`begin_job` for the duration of the block (nestable, any thread)."""
    end = begin_job()
    try:
        yield
    finally:
        end()


def _after_collection(phase: str, info: dict) -> None:
    """``gc.callbacks`` hook: after a full collection following a release, with no job running,
    settle the survivors (no young collection: the collector is inside a collection now)."""
    if phase != "stop" or info.get("generation") != 2 or _S["state"] != RELEASED or _S["jobs"]:
        return
    if not _LOCK.acquire(blocking=False):  # another thread is inside settle/release/job
        return
    try:
        if _S["state"] == RELEASED and not _S["jobs"] and enabled():
            _freeze_locked()
    finally:
        _LOCK.release()


def reset() -> None:
    """Release, and forget that anything was ever settled, held or running (the next :func:`settle`
    freezes as the first one of the process). For tests (a test starts from a clean state whatever
    an earlier one left running), and for a host that wants the rule undone."""
    with _LOCK:
        release()
        _S["state"], _S["pending"], _S["holders"], _S["jobs"] = NEVER, False, 0, 0
