"""The batch engine: embedded threads by default, Dask for processes and clusters.

``Engine(scheduler)``:

* ``None`` / ``"local"`` — embedded: ``"sync"`` for one worker, ``"threads"`` for several;
* ``"sync"`` — every job runs in the calling thread (no overhead, easiest to debug);
* ``"threads"`` — a ``concurrent.futures.ThreadPoolExecutor`` of N threads in this process. It
  was an in-process ``distributed.LocalCluster`` (one worker, N threads) until session 10: its
  scheduler, event loop and comms ran Python in three more threads of the viewer's process and
  made the objects of the full garbage collections that stalled napari during a blockwise run
  (``benchmarks/bench_stalls_batch.py``); independent jobs need none of it;
* ``"processes"`` — a ``LocalCluster`` of N single-threaded worker processes on 127.0.0.1;
* ``"tcp://HOST:PORT"`` (or any Dask address) — ``distributed.Client(address)`` on an existing
  cluster; every job must then reach the inputs and the output folder by the same paths (shared
  file system);
* a ``distributed.Client`` instance — used as is (not closed by the engine).

Jobs that need a GPU are submitted with ``resources={"GPU": 1}``, so each GPU worker (started
with ``dask worker ADDR --resources GPU=1 --nthreads 1``, one per GPU with
``CUDA_VISIBLE_DEVICES`` set) runs one such job at a time.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures as _futures
from typing import Any

from napari_neuroseg.errors import NeurosegError

#: loggers of the in-process Dask workers that print a traceback for every failed job
_JOB_LOGGERS = ("distributed.worker", "distributed.worker.state_machine")


class Engine:
    """Runs independent jobs and yields ``(index, result, error)`` as they complete."""

    def __init__(self, scheduler: Any = None, workers: int | None = None, *, timeout: float = 10.0, debug: bool = False):
        self.timeout = timeout
        #: without ``debug`` the embedded workers do not log a traceback per failed job ("Compute
        #: Failed"): each failure is reported once, as one line, by the caller
        self.debug = bool(debug)
        self._saved_levels: dict[str, int] = {}
        self.workers = max(1, int(workers or min(4, os.cpu_count() or 1)))
        if scheduler in (None, "local"):
            scheduler = "sync" if self.workers == 1 else "threads"
        self.scheduler = scheduler
        self._client: Any = None
        self._cluster: Any = None
        self._pool: _futures.ThreadPoolExecutor | None = None
        self._own_client = True

    # -- life cycle -------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        if isinstance(self.scheduler, str):
            return self.scheduler if self.scheduler in ("sync", "threads", "processes") else "cluster"
        return "cluster"

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the engine."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "cluster":
            out["address"] = self.scheduler if isinstance(self.scheduler, str) else getattr(self.scheduler, "scheduler", None) and self.scheduler.scheduler.address
        else:
            out["workers"] = self.workers
        return out

    def start(self) -> Any:
        """Start the thread pool (``threads``) or connect/start the Dask client; returns it
        (``None`` for ``sync``)."""
        if self.kind == "sync":
            return None
        if self.kind == "threads":
            if self._pool is None:
                self._pool = _futures.ThreadPoolExecutor(self.workers, thread_name_prefix="neuroseg-batch")
            return self._pool
        if self._client is not None:
            return self._client
        from distributed import Client, LocalCluster

        if not self.debug and self.kind == "processes":
            for name in _JOB_LOGGERS:
                lg = logging.getLogger(name)
                self._saved_levels.setdefault(name, lg.level)
                lg.setLevel(logging.CRITICAL)
        if self.kind == "processes":
            self._cluster = LocalCluster(
                processes=True, n_workers=self.workers, threads_per_worker=1, host="127.0.0.1",
                dashboard_address=None, worker_dashboard_address=None,
                silence_logs=logging.ERROR if self.debug else logging.CRITICAL,
            )
            self._client = Client(self._cluster)
        elif isinstance(self.scheduler, str):
            try:
                self._client = Client(self.scheduler, timeout=f"{self.timeout}s")
            except (OSError, TimeoutError) as err:
                raise NeurosegError(
                    f"cannot connect to the Dask scheduler at {self.scheduler} ({err})",
                    fix="start it with `dask scheduler` (and workers with `dask worker ADDRESS`) or check the address",
                ) from err
        else:
            self._client = self.scheduler
            self._own_client = False
        return self._client

    def close(self) -> None:
        """Release the engine. The thread pool drops its queued jobs and waits for the running
        ones (one block or file each), so nothing writes into a run's folder after it ended."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._client is not None and self._own_client:
            try:
                self._client.close()
            finally:
                if self._cluster is not None:
                    self._cluster.close()
        self._client = self._cluster = None
        for name, level in self._saved_levels.items():
            logging.getLogger(name).setLevel(level)
        self._saved_levels.clear()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_on_workers(self, fn: Callable[[], Any]) -> None:
        """Call ``fn()`` once in every worker process of a started process/cluster engine (best
        effort, e.g. to free per-process caches); embedded engines share this process."""
        if self.kind in ("sync", "threads") or self._client is None:
            return
        try:
            self._client.run(fn)
        except Exception:  # noqa: BLE001 - a worker gone away holds no cache either
            pass

    # -- jobs -------------------------------------------------------------------------------
    def check_resources(self, resources: dict[str, float] | None) -> None:
        """Fail clearly when no worker of the cluster offers the requested resources."""
        if not resources or self.kind in ("sync", "threads", "processes"):
            return
        info = self.start().scheduler_info()
        workers = info.get("workers", {})
        ok = [w for w in workers.values() if all(w.get("resources", {}).get(k, 0) >= v for k, v in resources.items())]
        if not ok:
            raise NeurosegError(
                f"no worker of the Dask cluster offers the resources {resources}",
                fix="start GPU workers with `dask worker ADDRESS --resources GPU=1 --nthreads 1` "
                "(one per GPU), or run the task on the CPU (--device cpu)",
            )

    def map(
        self,
        fn: Callable[..., Any],
        jobs: Sequence[tuple],
        *,
        resources: dict[str, float] | None = None,
        label: str = "job",
    ) -> Iterator[tuple[int, Any, BaseException | None]]:
        """Run ``fn(*args)`` for each args tuple; yield ``(index, result, error)`` as each ends.

        Closing the iterator early (cancel) cancels the jobs that have not started.
        """
        if not jobs:
            return
        if self.kind == "sync":
            for i, args in enumerate(jobs):
                try:
                    res = fn(*args)
                except Exception as err:  # noqa: BLE001 - reported per job
                    yield i, None, err
                else:
                    yield i, res, None
            return
        if self.kind == "threads":
            yield from self._map_threads(fn, jobs)
            return
        from distributed import as_completed

        client = self.start()
        # Embedded engines have no resources; asking for them would block forever.
        res = resources if self.kind == "cluster" else None
        self.check_resources(res)
        token = uuid.uuid4().hex[:8]
        futures = [
            client.submit(fn, *args, pure=False, resources=res, key=f"neuroseg-{label}-{i}-{token}")
            for i, args in enumerate(jobs)
        ]
        index = {f.key: i for i, f in enumerate(futures)}
        try:
            for fut in as_completed(futures):
                i = index[fut.key]
                if fut.status == "error":
                    yield i, None, _explain(fut.exception())
                elif fut.status == "cancelled":
                    yield i, None, NeurosegError("the Dask job was cancelled", fix="rerun with --resume")
                else:
                    yield i, fut.result(), None
                fut.release()
        finally:
            pending = [f for f in futures if not f.done()]
            if pending:
                try:
                    client.cancel(pending)
                except RuntimeError:  # closed late (garbage collection): the engine's loop is gone already
                    pass

    def _map_threads(
        self, fn: Callable[..., Any], jobs: Sequence[tuple],
    ) -> Iterator[tuple[int, Any, BaseException | None]]:
        pool = self.start()
        index = {pool.submit(fn, *args): i for i, args in enumerate(jobs)}
        try:
            for fut in _futures.as_completed(index):
                i = index.pop(fut)
                err = fut.exception()
                yield (i, None, err) if err is not None else (i, fut.result(), None)
        finally:
            for fut in index:  # closed early (cancel): the jobs not started are dropped
                fut.cancel()


def _explain(err: BaseException) -> BaseException:
    """Turn Dask's worker-death error into a clear message."""
    if type(err).__name__ == "KilledWorker":
        return NeurosegError(
            f"a Dask worker process died while running this job, several times ({err})",
            fix="the job probably ran out of memory or crashed: use a smaller --block-shape or "
            "give the workers more memory, then rerun with --resume",
        )
    return err
