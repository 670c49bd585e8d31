"""The spawn worker process and the per-device model cache."""

from __future__ import annotations

import math
import os
import threading
import time

import pytest

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.runtime import Cancelled, ModelCache
from napari_neuroseg.runtime.subprocess import ProcessWorker, get_worker
from napari_neuroseg.runtime.tiling import normalize_n_tiles


@pytest.fixture(scope="module")
def worker():
    w = ProcessWorker()
    yield w
    w.shutdown()


def test_runs_in_another_process_and_persists(worker):
    pid1 = worker.call(os.getpid)
    pid2 = worker.call(os.getpid)
    assert pid1 != os.getpid()
    assert pid1 == pid2 == worker.pid
    assert worker.call(math.hypot, 3.0, 4.0) == 5.0


def test_errors_come_back_with_their_type(worker):
    with pytest.raises(ValueError, match="math domain"):
        worker.call(math.sqrt, -1.0)
    with pytest.raises(NeurosegError, match="n_tiles"):
        worker.call(normalize_n_tiles, 0, (4, 4, 4))
    assert worker.call(math.sqrt, 4.0) == 2.0  # still usable


def test_call_iter_yields_while_waiting_and_cancel_kills(worker):
    gen = worker.call_iter(time.sleep, 30, poll=0.02)
    ticks = [next(gen) for _ in range(3)]
    assert ticks == sorted(ticks)
    pid = worker.pid
    t0 = time.perf_counter()
    gen.close()  # cancel while the call runs
    assert time.perf_counter() - t0 < 5
    assert not worker.alive
    # a fresh process serves the next call
    assert worker.call(os.getpid) not in (pid, None)


def test_should_stop_cancels(worker):
    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        worker.call(time.sleep, 30, should_stop=lambda: time.perf_counter() - t0 > 0.2)
    assert time.perf_counter() - t0 < 5


def test_dead_worker_reported_and_restarted(worker):
    worker.call(os.getpid)
    gen = worker.call_iter(os._exit, 3, poll=0.02)
    with pytest.raises(NeurosegError, match="worker process"):
        for _ in gen:
            pass
    assert worker.call(math.sqrt, 9.0) == 3.0


def test_in_process_mode():
    w = ProcessWorker(in_process=True)
    assert w.call(os.getpid) == os.getpid()
    assert not w.alive


def test_worker_runs_calls_from_threads(worker):
    results = []

    def job(v):
        results.append(worker.call(math.sqrt, v))

    threads = [threading.Thread(target=job, args=(float(i * i),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0.0, 1.0, 2.0, 3.0]


def test_default_worker_is_shared():
    assert get_worker() is get_worker()


def test_model_cache_one_model_per_device():
    cache = ModelCache(max_entries=2)
    calls = []

    def loader(device):
        calls.append(device)
        return object()

    a = cache.get("m", "cpu", loader)
    assert cache.get("m", "cpu", loader) is a
    b = cache.get("m", "cuda:0", loader)
    assert b is not a and calls == ["cpu", "cuda:0"]
    assert ("m", "cpu") in cache
    cache.get("other", "cpu", loader)  # evicts the least recently used
    assert len(cache) == 2 and ("m", "cpu") not in cache
    cache.clear()
    assert len(cache) == 0
