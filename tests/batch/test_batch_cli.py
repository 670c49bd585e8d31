"""``neuroseg batch`` in-process and in a subprocess killed with SIGKILL mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from batch_helpers import blobs, tube, write_zarr  # noqa: E402

from napari_neuroseg.batch import read_output
from napari_neuroseg.cli import main


def test_cli_folder_run_with_task_parameters(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(2):
        tifffile.imwrite(d / f"v{i}.tif", blobs((16, 32, 32), n=3, seed=i))
    (d / "broken.tif").write_bytes(b"not a tiff at all")
    rc = main(["batch", "threshold", str(d), "-o", str(tmp_path / "o"), "--threshold", "500",
               "--min-size", "5", "--workers", "1", "--format", "zarr"])
    out = capsys.readouterr()
    assert rc == 1  # one input failed; the others are done
    assert "2 done, 1 failed" in out.out and "broken.tif" in out.err
    man = json.loads((tmp_path / "o" / "neuroseg-batch-threshold.json").read_text())
    assert man["params"]["min_size"] == 5 and man["output_format"] == "zarr"
    assert read_output(tmp_path / "o" / "v0_threshold.zarr").max() >= 1
    rc = main(["batch", "threshold", str(d / "v0.tif"), "-o", str(tmp_path / "o"), "--block-shape", "8", "8", "8"])
    assert rc == 1 and "--format zarr" in capsys.readouterr().err


def test_cli_help_lists_tasks(capsys):
    with pytest.raises(SystemExit):
        main(["batch", "--help"])
    text = capsys.readouterr().out
    for t in ("threshold", "nuclei", "neurons", "evaluate", "custom"):
        assert t in text


def _env(hold_after: int | None = None, calls: Path | None = None):
    """The environment of a CLI run; with ``hold_after``, SlowThreshold holds every call after that
    many (counted in ``calls``) until the run is killed (see batch_helpers.SlowThreshold)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    if hold_after is not None:
        calls.mkdir()
        env["NEUROSEG_TEST_HOLD_AFTER"], env["NEUROSEG_TEST_CALLS_DIR"] = str(hold_after), str(calls)
    return env


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it could be killed: {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for progress")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "napari_neuroseg", "batch", "custom", "batch_helpers:SlowThreshold", *args]


def test_sigkill_mid_batch_then_resume_equals_uninterrupted_run(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(8):
        tifffile.imwrite(d / f"v{i}.tif", blobs((16, 32, 32), n=4, seed=i))
    common = ["-p", "threshold=500", "-p", "delay=0.4", "--workers", "1", "-q"]
    out = tmp_path / "killed"
    # three files go through, the fourth call is held: killed after two outputs, whatever the timing
    proc = subprocess.Popen(_cli(str(d), "-o", str(out), *common), env=_env(3, tmp_path / "calls"),
                            stderr=subprocess.PIPE, text=True)
    _kill_when(proc, lambda: len(list(out.glob("v*_slow.tif"))) >= 2)
    assert proc.returncode == -signal.SIGKILL
    done_before = len(list(out.glob("v*_slow.tif")))
    assert 2 <= done_before <= 3
    r = subprocess.run(_cli(str(d), "-o", str(out), *common, "--resume"), env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary-slow.json").read_text())
    assert summary["counts"].get("skipped", 0) >= 1 and sum(summary["counts"].values()) == 8
    ref = tmp_path / "ref"
    r = subprocess.run(_cli(str(d), "-o", str(ref), "-p", "threshold=500", "--workers", "1", "-q"),
                       env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for i in range(8):
        a, b = out / f"v{i}_slow.tif", ref / f"v{i}_slow.tif"
        assert np.array_equal(tifffile.imread(a), tifffile.imread(b))
    assert not list(out.glob(".*tmp*"))
    man = json.loads((out / "neuroseg-batch-slow.json").read_text())
    assert all(e["status"] == "done" for e in man["entries"].values()) and len(man["entries"]) == 8


def test_sigkill_mid_blockwise_run_then_resume_equals_uninterrupted_run(tmp_path):
    vol = blobs((32, 48, 64), n=12, radius=4, seed=7) + tube((32, 48, 64))
    src = write_zarr(tmp_path / "v.zarr", vol)
    common = ["-p", "threshold=300", "--format", "ome-zarr", "--block-shape", "16", "16", "16", "--workers", "1", "-q"]
    out = tmp_path / "killed"
    work = out / ".neuroseg-work" / "v_slow.ome.zarr"
    # six of the 24 blocks go through, the seventh call is held: killed mid pass 1, whatever the timing
    proc = subprocess.Popen(_cli(str(src), "-o", str(out), *common, "-p", "delay=0.15"),
                            env=_env(6, tmp_path / "calls"), stderr=subprocess.PIPE, text=True)
    _kill_when(proc, lambda: len(list((work / "p1").glob("*.json"))) >= 4 if (work / "p1").exists() else False)
    n_done = len(list((work / "p1").glob("*.json")))
    assert 4 <= n_done <= 6 and not (out / "v_slow.ome.zarr").exists()
    r = subprocess.run(_cli(str(src), "-o", str(out), *common, "-p", "delay=0.15", "--resume"), env=_env(),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ref = tmp_path / "ref"
    r = subprocess.run(_cli(str(src), "-o", str(ref), *common), env=_env(),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b = read_output(out / "v_slow.ome.zarr"), read_output(ref / "v_slow.ome.zarr")
    assert np.array_equal(a, b) and a.max() >= 10
    assert not work.exists()
