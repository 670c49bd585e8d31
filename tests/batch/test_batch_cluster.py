"""The Dask engine on a real LocalCluster of worker processes (started and closed here)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import dask
import numpy as np
import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # worker processes inherit sys.path, so they import batch_helpers
from batch_helpers import CrashingThreshold, GpuThreshold, blobs, tube, write_zarr  # noqa: E402

from napari_neuroseg.batch import Engine, read_output, run_batch
from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.runtime.progress import run_to_completion

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        lc = distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
            dashboard_address=None, worker_dashboard_address=None, resources={"GPU": 1},
            silence_logs=logging.CRITICAL,
        )
    try:
        yield lc
    finally:
        lc.close()


def _inputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(4):
        write_zarr(d / f"v{i}.zarr", blobs((16, 32, 32), n=4, radius=3, seed=i))
    big = write_zarr(tmp_path / "tube.zarr", tube((24, 32, 96)))
    return d, big


def test_scheduler_address_gives_same_results_as_embedded(tmp_path, cluster):
    d, big = _inputs(tmp_path)
    kw = dict(params={"threshold": 400})
    local = run_to_completion(run_batch("threshold", [d], tmp_path / "a", workers=1, **kw))
    remote = run_to_completion(run_batch("threshold", [d], tmp_path / "b", scheduler=cluster.scheduler_address, **kw))
    assert local.counts == remote.counts == {"done": 4}
    for x, y in zip(local.records, remote.records):
        assert np.array_equal(read_output(x["output"]), read_output(y["output"]))
    # blockwise on the cluster: the tube still gets one id
    res = run_to_completion(run_batch("threshold", [big], tmp_path / "c", fmt="zarr", block_shape=(12, 16, 16),
                                      scheduler=cluster.scheduler_address, **kw))
    assert res.records[0]["status"] == "done" and res.records[0]["n_objects"] == 1
    assert res.records[0]["blocks"] == 2 * 2 * 6


def test_gpu_tasks_use_worker_resources(tmp_path, cluster):
    d, _ = _inputs(tmp_path)
    res = run_to_completion(run_batch(GpuThreshold(), [d], tmp_path / "g", params={"threshold": 400},
                                      scheduler=cluster.scheduler_address))
    assert res.counts == {"done": 4}
    with Engine(cluster.scheduler_address) as eng, pytest.raises(NeurosegError, match="resources"):
        eng.check_resources({"GPU": 2})


def test_worker_dying_once_is_retried(tmp_path, cluster):
    _, big = _inputs(tmp_path)
    marker = tmp_path / "crashed"
    res = run_to_completion(run_batch(CrashingThreshold(), [big], tmp_path / "o", fmt="zarr", block_shape=(12, 16, 16),
                                      params={"threshold": 400, "marker": str(marker)},
                                      scheduler=cluster.scheduler_address))
    assert marker.exists()  # one worker process did die
    assert res.records[0]["status"] == "done" and res.records[0]["n_objects"] == 1


def test_worker_dying_always_fails_with_a_clear_error(tmp_path, cluster):
    d, _ = _inputs(tmp_path)
    res = run_to_completion(run_batch(CrashingThreshold(), [d / "v0.zarr"], tmp_path / "o",
                                      params={"threshold": 400, "marker": str(tmp_path / "m"), "always": True},
                                      scheduler=cluster.scheduler_address))
    r = res.records[0]
    assert r["status"] == "failed" and "worker process died" in r["error"]
    assert not (tmp_path / "o" / "v0_crash.tif").exists()


def test_unreachable_scheduler_is_a_clear_error(tmp_path):
    arr = blobs((16, 16, 16), n=1)
    with pytest.raises(NeurosegError, match="cannot connect"):
        run_to_completion(run_batch("threshold", [("x", arr)], tmp_path / "o",
                                    engine=Engine("tcp://127.0.0.1:9", timeout=1)))
