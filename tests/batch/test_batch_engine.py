"""The embedded ``threads`` engine: a thread pool in this process, no Dask cluster."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from napari_neuroseg.batch import Engine


def _square(x: int) -> int:
    return x * x


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def test_threads_engine_yields_every_job_with_its_index_and_error():
    with Engine("threads", 2) as eng:
        got = sorted(eng.map(_fail_on_three, [(i,) for i in range(6)]), key=lambda t: t[0])
    assert [(i, r) for i, r, e in got if e is None] == [(0, 0), (1, 1), (2, 2), (4, 4), (5, 5)]
    errs = [(i, e) for i, r, e in got if e is not None]
    assert len(errs) == 1 and errs[0][0] == 3 and isinstance(errs[0][1], ValueError)
    assert eng.describe() == {"kind": "threads", "workers": 2}


def test_threads_engine_runs_jobs_in_parallel_pool_threads():
    seen: set[str] = set()
    barrier = threading.Barrier(2, timeout=10)

    def job(i: int) -> int:
        seen.add(threading.current_thread().name)
        barrier.wait()  # both jobs must run at once, or this times out
        return i

    with Engine("threads", 2) as eng:
        assert sorted(r for _i, r, e in eng.map(job, [(0,), (1,)])) == [0, 1]
    assert len(seen) == 2 and all(n.startswith("neuroseg-batch") for n in seen)


def test_closing_the_iterator_drops_queued_jobs_and_close_waits_for_the_running_one():
    started: list[int] = []
    finished: list[int] = []

    def job(i: int) -> int:
        started.append(i)
        time.sleep(0.2)
        finished.append(i)
        return i

    eng = Engine("threads", 2)
    it = eng.map(job, [(i,) for i in range(20)])
    first = next(it)
    it.close()  # the user cancelled after the first result
    eng.close()  # returns only when no job of the run is still running
    assert first[2] is None
    assert len(started) < 20, "queued jobs were not dropped"
    assert sorted(started) == sorted(finished), "close() returned while a job was still running"
    n = len(finished)
    time.sleep(0.3)
    assert len(finished) == n  # nothing ran after close


def _fresh_python_prints(code: str) -> str:
    """What ``code`` prints, run in a fresh interpreter (its modules are this process's own)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_threads_engine_does_not_import_dask_distributed():
    code = (
        "import sys\n"
        "from napari_neuroseg.batch import Engine\n"
        "with Engine('threads', 2) as e:\n"
        "    assert sorted(r for _i, r, _e in e.map(abs, [(-1,), (-2,)])) == [1, 2]\n"
        "print('distributed' in sys.modules)\n"
    )
    assert _fresh_python_prints(code) == "False"


def test_preload_imports_what_a_local_run_needs():
    code = (
        "import sys, tempfile\n"
        "import numpy as np\n"
        "from pathlib import Path\n"
        "from napari_neuroseg import batch\n"
        "batch.preload()\n"
        "before = set(sys.modules)\n"
        "from napari_neuroseg.runtime.progress import run_to_completion\n"
        "arr = (np.arange(16 * 32 * 32) % 1000).reshape(16, 32, 32).astype('uint16')\n"
        "out = Path(tempfile.mkdtemp()) / 'o'\n"
        "run_to_completion(batch.run_batch('threshold', [('a', arr)], out, params={'threshold': 500},\n"
        "                  fmt='zarr', block_shape=(8, 16, 16), workers=2))\n"
        "print(sorted(set(sys.modules) - before - {'napari_neuroseg.runtime.progress'}))\n"
    )
    assert _fresh_python_prints(code) == "[]"


@pytest.mark.parametrize("workers", [1, 2])
def test_local_engine_kind(workers):
    assert Engine(None, workers).kind == ("sync" if workers == 1 else "threads")
