"""A persistent, cancellable worker process for GIL-holding C++ (StarDist NMS, rendering).

The compiled NMS and polyhedron rendering of the ``stardist`` package hold Python's global
interpreter lock for their whole run; called from a napari thread worker they freeze the viewer
for seconds. :class:`ProcessWorker` runs such calls in one long-lived child process (started
on first use, reused afterwards). The child is a fresh interpreter
(``python -m napari_neuroseg.runtime._worker_main``) connected by an authenticated
``multiprocessing.connection`` pipe; unlike ``multiprocessing``'s spawn start method it never
re-imports the caller's ``__main__``, so scripts without an ``if __name__ == "__main__"`` guard
work too. Its :meth:`~ProcessWorker.call_iter` is a generator that yields
the elapsed time while it waits, so a progress generator stays responsive and cancellable:
closing it while a call is in flight terminates the worker process (a fresh one starts on the next
call).

Functions sent to the worker must be importable module-level functions and their arguments and
results picklable. ``NEUROSEG_INPROCESS=1`` (or ``ProcessWorker(in_process=True)``) runs calls in
the calling process instead (for debugging and environments where spawning is not possible).
"""

from __future__ import annotations

import atexit
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from napari_neuroseg.errors import NeurosegError

T = TypeVar("T")

#: Environment variable that makes :func:`get_worker` run calls in-process.
INPROCESS_ENV = "NEUROSEG_INPROCESS"

__all__ = ["ProcessWorker", "WorkerDied", "get_worker", "run_in_worker", "shutdown_worker"]


class WorkerDied(NeurosegError):
    """The worker process exited (killed, crashed, out of memory) before answering."""


class ProcessWorker:
    """One persistent spawned process that runs one call at a time.

    Thread-safe: concurrent callers queue on a lock. ``in_process=True`` runs calls directly.
    """

    def __init__(self, *, in_process: bool = False, name: str = "neuroseg-worker"):
        self.in_process = in_process
        self.name = name
        self._proc: subprocess.Popen | None = None
        self._conn = None
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """Whether the worker process is running."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The worker process id (``None`` when not started)."""
        return self._proc.pid if self.alive else None

    def start(self, timeout: float = 60.0) -> None:
        """Start the process now (otherwise it starts on the first call)."""
        from multiprocessing.connection import Listener

        if self.in_process or self.alive:
            return
        authkey = secrets.token_bytes(32)
        listener = Listener(authkey=authkey)
        accepted: dict[str, Any] = {}

        def _accept() -> None:
            try:
                accepted["conn"] = listener.accept()
            except Exception as err:  # noqa: BLE001 - reported below
                accepted["error"] = err

        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "napari_neuroseg.runtime._worker_main"],
                stdin=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            )
            assert proc.stdin is not None
            proc.stdin.write(repr((listener.address, authkey.hex())).encode() + b"\n")
            proc.stdin.close()
            waiter = threading.Thread(target=_accept, daemon=True)
            waiter.start()
            t0 = time.perf_counter()
            while waiter.is_alive():
                waiter.join(0.05)
                if waiter.is_alive() and (proc.poll() is not None or time.perf_counter() - t0 > timeout):
                    proc.kill()
                    listener.close()  # unblocks accept()
                    waiter.join(1.0)
                    raise WorkerDied(
                        f"the worker process did not start (exit code {proc.poll()})",
                        fix="check that napari_neuroseg imports in a fresh Python process",
                    )
        finally:
            listener.close()
        if "conn" not in accepted:
            raise WorkerDied(f"the worker process did not connect ({accepted.get('error')})", fix="retry")
        conn = accepted["conn"]
        conn.send(list(sys.path))
        self._proc, self._conn = proc, conn

    def terminate(self) -> None:
        """Kill the worker process at once (an in-flight call is lost)."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(2.0)
            except subprocess.TimeoutExpired:  # pragma: no cover - terminate ignored
                proc.kill()
                proc.wait(2.0)

    def shutdown(self, timeout: float = 2.0) -> None:
        """Ask the worker to exit; kill it if it does not within ``timeout`` seconds."""
        proc, conn = self._proc, self._conn
        if proc is None:
            return
        try:
            if proc.poll() is None and conn is not None:
                conn.send(None)
                proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.terminate()

    # -- calls -----------------------------------------------------------------------------
    def call_iter(
        self, fn: Callable[..., T], *args: Any, poll: float = 0.05, **kwargs: Any
    ) -> Generator[float, None, T]:
        """Run ``fn(*args, **kwargs)`` in the worker; yield the elapsed seconds every ``poll``
        seconds while waiting and return its result (its exception is re-raised here).

        Closing the generator while the call is in flight terminates the worker process.
        """
        t0 = time.perf_counter()
        if self.in_process:
            yield 0.0
            return fn(*args, **kwargs)
        with self._lock:
            self.start()
            conn = self._conn
            try:
                conn.send((fn, args, kwargs))
            except (OSError, BrokenPipeError, EOFError):
                # the process died since the last call: restart once
                self.terminate()
                self.start()
                conn = self._conn
                conn.send((fn, args, kwargs))
            done = False
            try:
                while not conn.poll(poll):
                    if self._proc.poll() is not None:
                        raise WorkerDied(
                            f"the worker process exited with code {self._proc.returncode} while running "
                            f"{getattr(fn, '__name__', fn)}",
                            fix="it may have run out of memory: use a smaller image or more tiles",
                        )
                    yield time.perf_counter() - t0
                try:
                    reply = conn.recv()
                except (EOFError, OSError) as err:
                    raise WorkerDied(
                        f"the worker process died while running {getattr(fn, '__name__', fn)}",
                        fix="it may have run out of memory: use a smaller image or more tiles",
                    ) from err
                done = True
            finally:
                if not done:  # cancelled (generator closed) or failed mid-call
                    self.terminate()
        if reply[0] == "ok":
            return reply[1]
        err = reply[1]
        if isinstance(err, BaseException):
            if not isinstance(err, NeurosegError):
                err.add_note(f"(in the neuroseg worker process)\n{reply[2]}")
            raise err
        raise RuntimeError(str(err))  # pragma: no cover

    def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        should_stop: Callable[[], bool] | None = None,
        **kwargs: Any,
    ) -> T:
        """Blocking :meth:`call_iter`; ``should_stop()`` true → worker terminated, ``Cancelled``."""
        from napari_neuroseg.runtime.progress import Cancelled, run_to_completion

        try:
            return run_to_completion(self.call_iter(fn, *args, **kwargs), should_stop=should_stop)
        except Cancelled:
            raise Cancelled(f"cancelled while running {getattr(fn, '__name__', fn)}") from None


_DEFAULT: ProcessWorker | None = None
_DEFAULT_LOCK = threading.Lock()


def get_worker() -> ProcessWorker:
    """The shared worker (created on first use; in-process if ``$NEUROSEG_INPROCESS`` is set)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = ProcessWorker(in_process=os.environ.get(INPROCESS_ENV, "") not in ("", "0"))
        return _DEFAULT


def shutdown_worker() -> None:
    """Stop the shared worker process (it restarts on the next call)."""
    if _DEFAULT is not None:
        _DEFAULT.shutdown()


def run_in_worker(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Generator[float, None, T]:
    """``get_worker().call_iter(fn, *args, **kwargs)``."""
    return get_worker().call_iter(fn, *args, **kwargs)


atexit.register(shutdown_worker)
