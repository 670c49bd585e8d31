"""Hostile input for ``neuroseg batch`` and the proofreading API (issue 16, part B).

One test per audit finding; each failed on the code before the fix (hang, reprocessed outputs,
silent lost updates, raw tracebacks, corrupted labels) and passes after it. Volumes are tiny and
the task is the cheapest one (``threshold``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from batch_helpers import blobs

from napari_neuroseg import proofread as pr
from napari_neuroseg.batch import run_batch, segment_blockwise
from napari_neuroseg.batch.sources import InputSpec
from napari_neuroseg.batch.tasks import ThresholdTask
from napari_neuroseg.cli import main
from napari_neuroseg.errors import NeurosegError

LOCK_NAME = ".neuroseg-batch.lock"  # napari_neuroseg.batch.lock.LOCK_NAME


def _drain(gen):
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# -- finding 3: a tiny store declaring an astronomically large array ---------------------------
def test_huge_declared_zarr_is_refused_before_block_planning(tmp_path):
    import zarr

    src = tmp_path / "huge.zarr"
    zarr.open_array(str(src), mode="w", shape=(100000,) * 3, chunks=(64, 64, 64), dtype="uint8", zarr_format=2)
    assert sum(f.stat().st_size for f in src.rglob("*") if f.is_file()) < 10_000  # metadata only
    cmd = [sys.executable, "-m", "napari_neuroseg", "batch", "threshold", str(src), "-o", str(tmp_path / "o"),
           "--block-shape", "64", "256", "256", "--format", "zarr", "--workers", "1", "-q"]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:  # the code before the fix enumerated 2.4e8 blocks
        pytest.fail("batch planning hung on a 100000^3 declared shape")
    assert time.monotonic() - t0 < 120
    assert proc.returncode == 1, proc.stderr
    err = " ".join(proc.stderr.split())
    assert "huge.zarr" in err and "[100000, 100000, 100000]" in err and "238,953,003 blocks" in err
    assert "Fix:" in err and "--block-shape" in err
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "o").glob("*.zarr"))  # nothing was written for it


# -- finding 4: the output folder is the input folder ------------------------------------------
def test_output_folder_equal_to_input_ignores_own_outputs_and_never_overwrites_inputs(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    tifffile.imwrite(d / "v0.tif", blobs((12, 24, 24), n=3, seed=0))
    originals = _snapshot(d)
    for _ in range(2):
        res = _drain(run_batch("threshold", [d], d, workers=1))
        assert res.ok and res.counts == {"done": 1}
    names = sorted(p.name for p in d.iterdir())
    assert "v0_threshold.tif" in names
    assert not [n for n in names if "_threshold_threshold" in n], names
    assert (d / "v0.tif").read_bytes() == originals["v0.tif"]

    # A user's own file named like an output is an input: it is never overwritten.
    tifffile.imwrite(d / "x.tif", blobs((12, 24, 24), n=2, seed=1))
    tifffile.imwrite(d / "x_threshold.tif", blobs((12, 24, 24), n=4, seed=2))
    mine = (d / "x_threshold.tif").read_bytes()
    res = _drain(run_batch("threshold", [d], d, workers=1))
    failed = [r for r in res.records if r["status"] == "failed"]
    assert [Path(r["input"]).name for r in failed] == ["x.tif"]
    assert "would overwrite" in failed[0]["error"] and "Fix:" in failed[0]["error"]
    assert (d / "x_threshold.tif").read_bytes() == mine
    assert (d / "v0.tif").read_bytes() == originals["v0.tif"]


def test_output_folder_inside_an_input_store_is_refused(tmp_path):
    from batch_helpers import write_zarr

    src = tmp_path / "in.zarr"
    write_zarr(src, blobs((12, 16, 16), n=2, radius=2))
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    with pytest.raises(NeurosegError, match="inside the input"):
        _drain(run_batch("threshold", [src], src / "out", workers=1))
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before


# -- finding 5: two runs into one folder -------------------------------------------------------
def test_second_batch_run_into_the_same_folder_is_refused_and_the_lock_released(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(2):
        tifffile.imwrite(d / f"v{i}.tif", blobs((12, 24, 24), n=3, seed=i))
    out = tmp_path / "out"
    first = run_batch("threshold", [d], out, workers=1)
    next(first)  # the first run has started (and holds the folder)
    lock = out / LOCK_NAME
    assert lock.exists()
    holder = json.loads(lock.read_text())
    assert holder["pid"] == os.getpid()
    with pytest.raises(NeurosegError) as exc:
        next(run_batch("threshold", [d / "v0.tif"], out, workers=1))
    msg = str(exc.value)
    assert f"another neuroseg batch (pid {os.getpid()}, started {holder['started']}) is writing to {out}" in msg
    assert "wait for it or use another -o" in msg
    res = _drain(first)
    assert res.counts == {"done": 2}
    man = json.loads((out / "neuroseg-batch-threshold.json").read_text())
    assert sorted(man["entries"]) == ["v0", "v1"]
    assert not lock.exists()  # released at the end

    # released on an error and on a cancel (Ctrl-C closes the generator) too
    with pytest.raises(NeurosegError):
        _drain(run_batch("threshold", [d], out, workers=1, params={"nope": 1}))
    assert not lock.exists()
    gen = run_batch("threshold", [d], out, workers=1)
    next(gen)
    assert lock.exists()
    gen.close()
    assert not lock.exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    import socket

    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(d / "v0.tif", blobs((12, 24, 24), n=3, seed=0))
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}))
    res = _drain(run_batch("threshold", [d], out, workers=1))
    assert res.ok and not (out / LOCK_NAME).exists()
    # a lock from another host cannot be judged from here: refused, and the message says how to clear it
    (out / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere.invalid", "started": "T"}))
    with pytest.raises(NeurosegError, match=r"pid 1 on host elsewhere.invalid, started T.*delete"):
        next(run_batch("threshold", [d], out, workers=1))


def test_second_blockwise_run_of_one_input_is_refused_clearly(tmp_path):
    from batch_helpers import write_zarr

    src = tmp_path / "v.zarr"
    write_zarr(src, blobs((16, 32, 32), n=4))
    spec = InputSpec(str(src), "zarr", "v")
    target = tmp_path / "out" / "v_threshold.zarr"
    kw = dict(block_shape=(8, 16, 16), params=ThresholdTask().resolve({"threshold": 500}))
    first = segment_blockwise(spec, ThresholdTask(), kw["params"], target, "zarr", block_shape=kw["block_shape"])
    next(first)
    second = segment_blockwise(spec, ThresholdTask(), kw["params"], target, "zarr", block_shape=kw["block_shape"])
    with pytest.raises(NeurosegError, match="another blockwise run .* is writing to") as exc:
        next(second)
    assert "free disk space" not in str(exc.value)
    res = _drain(first)
    assert res["n_objects"] >= 1 and target.exists()


# -- finding 7: NaN image and truncated TIFF ---------------------------------------------------
def test_nan_and_truncated_inputs_fail_with_one_line_each_and_no_dask_tracebacks(tmp_path, capfd, caplog):
    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(d / "good.tif", blobs((12, 24, 24), n=3, seed=0))
    nan = blobs((12, 24, 24), n=3, seed=1).astype(np.float32)
    nan[3, 4, 5] = np.nan
    tifffile.imwrite(d / "nan.tif", nan)
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, blobs((16, 64, 64), n=3, seed=2), compression="zlib")
    data = full.read_bytes()
    (d / "trunc.tif").write_bytes(data[: int(len(data) * 0.99)])  # page headers intact, last strip cut
    rc = main(["batch", "threshold", str(d), "-o", str(tmp_path / "o"), "--workers", "2", "-q"])
    out = capfd.readouterr()
    assert rc == 1
    assert "1 done, 2 failed" in out.out
    failed = [ln for ln in out.err.splitlines() if ln.startswith("  failed:")]
    assert len(failed) == 2
    by_file = {("nan" if "nan.tif" in ln else "trunc"): ln for ln in failed}
    assert "NaN" in by_file["nan"] and "Fix:" in by_file["nan"]
    # io's TIFF check finds it when the file is opened ("corrupt or truncated"), before any block is read
    assert "corrupt or truncated" in by_file["trunc"] and "Fix:" in by_file["trunc"]
    assert "Compute Failed" not in out.err and "Traceback" not in out.err
    assert not [r for r in caplog.records if "Compute Failed" in r.getMessage()]
    assert "ValueError: autodetected range" not in out.err


# -- finding 9: proofreading API edges ---------------------------------------------------------
def _labels(dtype=np.uint16) -> np.ndarray:
    a = np.zeros((6, 10, 10), dtype)
    a[1:3, 1:4, 1:4] = 1
    a[3:5, 4:8, 4:8] = 2
    a[1:5, 7:10, 0:2] = 3
    return a


@pytest.mark.parametrize("start", [0, -2])
def test_relabel_sequential_with_a_start_below_one_is_refused(start):
    a = _labels()
    before = a.copy()
    with pytest.raises(NeurosegError, match="start"):
        pr.relabel_sequential(a, start=start)
    assert np.array_equal(a, before)


def test_relabel_that_overflows_uint8_is_refused_and_labels_untouched():
    a = _labels(np.uint8)
    before = a.copy()
    with pytest.raises(NeurosegError, match="uint8"):
        pr.relabel_sequential(a, start=254)
    assert np.array_equal(a, before)
    e = pr.relabel_sequential(a, start=253)  # 253, 254, 255 fit exactly
    assert sorted(np.unique(a)) == [0, 253, 254, 255]
    e.undo(a)
    assert np.array_equal(a, before)


def test_split_never_creates_a_locked_id():
    a = _labels()
    before = a.copy()
    e = pr.split(a, 2, [(3, 4, 4), (4, 7, 7)], locked=[4, 5])
    assert e.info["new_ids"] == [6]
    assert 4 not in np.unique(a) and 5 not in np.unique(a)
    e.undo(a)
    assert np.array_equal(a, before)
    for bad in ([4], [3], [0]):  # locked, already present, background
        with pytest.raises(NeurosegError):
            pr.split(a, 2, [(3, 4, 4), (4, 7, 7)], locked=[4], new_ids=bad)
        assert np.array_equal(a, before)


@pytest.mark.parametrize("radius", [-1, 10**6, 2.5])
def test_bad_radius_is_a_neuroseg_error(radius):
    a = _labels()
    before = a.copy()
    for op in (pr.dilate, pr.erode):
        with pytest.raises(NeurosegError, match="radius"):
            op(a, 1, radius=radius)
        assert np.array_equal(a, before)


def test_take_over_box_beyond_the_volume_is_a_neuroseg_error():
    a = _labels()
    before = a.copy()
    for box in [(slice(0, 100), slice(0, 10), slice(0, 10)), (slice(-5, 3), slice(0, 10), slice(0, 10)),
                (slice(0, 3), slice(0, 10))]:
        with pytest.raises(NeurosegError, match="box"):
            pr.take_over(a, None, 1, 2, bbox=box)
        with pytest.raises(NeurosegError, match="box"):
            pr.new_label_from_mask(a, None, bbox=box)
        assert np.array_equal(a, before)
