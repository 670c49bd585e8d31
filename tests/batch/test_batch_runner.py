"""File batches: formats, bad files, manifest, resume, cancel, full disk, summary."""

from __future__ import annotations

import csv
import errno
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from batch_helpers import blobs, same_partition, tube, write_zarr  # noqa: E402

from napari_neuroseg.batch import Manifest, discover_inputs, get_task, read_output, run_batch
from napari_neuroseg.batch.outputs import write_labels
from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.runtime.progress import Cancelled, run_to_completion


def _folder(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    v = blobs((16, 32, 32), n=4, radius=3, seed=0)
    tifffile.imwrite(d / "a.tif", v)
    tifffile.imwrite(d / "b_zlib.tif", blobs((16, 32, 32), n=5, radius=3, seed=1), compression="zlib")
    write_zarr(d / "c.zarr", blobs((16, 32, 32), n=6, radius=3, seed=2))
    write_labels(d / "d.ome.zarr", blobs((16, 32, 32), n=7, radius=3, seed=3), "ome-zarr")
    g = zarr.open_group(str(d / "e.zarr"), mode="w", zarr_format=2)
    raw = np.zeros((3, 16, 32, 32), np.uint16)
    raw[2] = blobs((16, 32, 32), n=8, radius=3, seed=4)
    g.create_array("volumes/raw", shape=raw.shape, chunks=(3, 8, 16, 16), dtype="uint16")[...] = raw
    with h5py.File(d / "f.h5", "w") as f:
        f["volumes/raw"] = blobs((16, 32, 32), n=9, radius=3, seed=5)
    (d / "notes.txt").write_text("not an image")
    return d


def _run(*args, **kw):
    return run_to_completion(run_batch(*args, **kw))


def test_folder_of_all_formats_with_a_corrupt_file(tmp_path):
    d = _folder(tmp_path)
    (d / "z_corrupt.tif").write_bytes(b"II*\x00" + b"\x13" * 100)
    specs = discover_inputs([d])
    assert [s.format for s in specs] == ["tif", "tif", "zarr", "ome-zarr", "fisbe", "hdf5", "tif"]
    out = tmp_path / "out"
    progress = []
    res = run_to_completion(
        run_batch("threshold", [d], out, params={"threshold": 500}, workers=1), callback=progress.append
    )
    assert res.counts == {"done": 6, "failed": 1}
    by = {Path(r["input"]).name: r for r in res.records}
    assert by["z_corrupt.tif"]["status"] == "failed" and "corrupt" in by["z_corrupt.tif"]["error"]
    import cc3d

    for seed, name in enumerate(["a.tif", "b_zlib.tif", "c.zarr", "d.ome.zarr", "e.zarr", "f.h5"]):
        expected = cc3d.connected_components(blobs((16, 32, 32), n=4 + seed, radius=3, seed=seed) > 500)
        assert expected.max() >= 3
        assert by[name]["status"] == "done" and by[name]["n_objects"] == expected.max(), name
        lab = read_output(by[name]["output"])
        assert same_partition(lab, expected), name
    # progress: one record per file, an ETA once something finished
    assert sum(p.record is not None for p in progress) == 7
    assert progress[-1].step == progress[-1].total == 6 and progress[-1].eta_s == 0
    # summary CSV/JSON and manifest
    rows = list(csv.DictReader(open(res.summary_csv)))
    assert len(rows) == 7 and {r["status"] for r in rows} == {"done", "failed"}
    summary = json.loads(res.summary_json.read_text())
    assert summary["counts"] == {"done": 6, "failed": 1}
    man = json.loads(res.manifest.read_text())
    assert man["task"] == "threshold" and man["params"]["threshold"] == 500
    assert man["versions"]["numpy"] and man["model"]["name"] == "threshold"
    assert man["entries"]["a"]["status"] == "done" and man["entries"]["a"]["seconds"] > 0
    assert man["entries"]["z_corrupt"]["status"] == "failed"
    assert not list(out.glob(".*tmp*"))


def test_resume_skips_complete_outputs_and_redoes_changed_params(tmp_path):
    d = _folder(tmp_path)
    out = tmp_path / "out"
    _run("threshold", [d / "a.tif", d / "c.zarr"], out, params={"threshold": 500}, workers=1)
    mtime = (out / "a_threshold.tif").stat().st_mtime_ns
    # a crash after the rename but before the manifest entry: c must be redone
    m = Manifest.open(out, "threshold", resume=True)
    del m.data["entries"]["c"]
    m.save()
    res = _run("threshold", [d / "a.tif", d / "c.zarr"], out, params={"threshold": 500}, workers=1, resume=True)
    st = {Path(r["input"]).name: r["status"] for r in res.records}
    assert st == {"a.tif": "skipped", "c.zarr": "done"}
    assert (out / "a_threshold.tif").stat().st_mtime_ns == mtime
    res = _run("threshold", [d / "a.tif"], out, params={"threshold": 400}, workers=1, resume=True)
    assert res.records[0]["status"] == "done"  # other parameters: not complete


def test_cancel_between_files_leaves_no_partial_output(tmp_path):
    d = _folder(tmp_path)
    out = tmp_path / "out"
    seen = []
    with pytest.raises(Cancelled):
        run_to_completion(
            run_batch("threshold", [d], out, params={"threshold": 500}, workers=1),
            callback=seen.append, should_stop=lambda: any(p.record for p in seen),
        )
    summary = json.loads((out / "summary-threshold.json").read_text())
    assert summary["cancelled"] is True
    assert summary["counts"] == {"done": 1, "cancelled": 5}
    assert len(list(out.glob("*_threshold.tif"))) == 1 and not list(out.glob(".*tmp*"))
    res = _run("threshold", [d], out, params={"threshold": 500}, workers=1, resume=True)
    assert res.counts == {"skipped": 1, "done": 5}


def test_full_disk_leaves_no_partial_output(tmp_path, monkeypatch):
    d = _folder(tmp_path)
    out = tmp_path / "out"
    real = tifffile.imwrite

    def full_disk(path, data, **kw):
        if "b_zlib" in str(path):
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, **kw)

    monkeypatch.setattr(tifffile, "imwrite", full_disk)
    res = _run("threshold", [d / "a.tif", d / "b_zlib.tif"], out, params={"threshold": 500}, workers=1)
    by = {Path(r["input"]).name: r for r in res.records}
    assert by["b_zlib.tif"]["status"] == "failed" and "No space left" in by["b_zlib.tif"]["error"]
    assert by["a.tif"]["status"] == "done"
    assert not (out / "b_zlib_threshold.tif").exists() and not list(out.glob(".*tmp*"))


def test_full_disk_during_blockwise_run_then_resume(tmp_path, monkeypatch):
    vol = tube((24, 32, 64))
    src = write_zarr(tmp_path / "t.zarr", vol)
    out = tmp_path / "out"
    real = zarr.Array.__setitem__
    calls = {"n": 0}

    def flaky(self, sel, value):
        if "final" in str(self.store_path):
            calls["n"] += 1
            if calls["n"] > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, sel, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", flaky)
    kw = dict(params={"threshold": 400}, fmt="zarr", block_shape=(12, 16, 16), workers=1)
    res = _run("threshold", [src], out, **kw)
    assert res.records[0]["status"] == "failed" and "No space left" in res.records[0]["error"]
    assert not (out / "t_threshold.zarr").exists()
    monkeypatch.setattr(zarr.Array, "__setitem__", real)
    res = _run("threshold", [src], out, resume=True, **kw)
    assert res.records[0]["status"] == "done" and res.records[0]["n_objects"] == 1
    lab = read_output(out / "t_threshold.zarr")
    assert same_partition(lab, (vol > 400).astype(np.uint32))


def test_in_memory_layers_and_bad_arguments(tmp_path):
    arr = blobs((16, 32, 32), n=3)
    res = _run("threshold", [("layer one", arr)], tmp_path / "o", params={"threshold": 500}, fmt="zarr", workers=1)
    assert res.records[0]["status"] == "done"
    assert read_output(res.records[0]["output"]).max() == 3
    with pytest.raises(NeurosegError, match="no parameter"):
        _run("threshold", [("x", arr)], tmp_path / "o", params={"nope": 1})
    with pytest.raises(NeurosegError, match="format zarr"):
        _run("threshold", [("x", arr)], tmp_path / "o", block_shape=(8, 8, 8))
    with pytest.raises(NeurosegError, match="not found"):
        _run("threshold", [tmp_path / "missing.tif"], tmp_path / "o")
    with pytest.raises(NeurosegError, match="unknown batch task"):
        get_task("nope")


def test_large_input_switches_to_blockwise(tmp_path):
    vol = tube((24, 32, 64))
    src = write_zarr(tmp_path / "t.zarr", vol)
    res = _run("threshold", [src], tmp_path / "o", params={"threshold": 400}, fmt="ome-zarr", memory_limit=10_000, workers=1)
    r = res.records[0]
    assert r["mode"] == "blockwise" and r["status"] == "done" and r["n_objects"] == 1
    res = _run("threshold", [src], tmp_path / "o2", params={"threshold": 400}, fmt="tif", memory_limit=10_000, workers=1)
    assert res.records[0]["status"] == "failed" and "--format zarr" in res.records[0]["error"]


def test_embedded_threads_engine_matches_sync(tmp_path):
    d = _folder(tmp_path)
    r1 = _run("threshold", [d], tmp_path / "o1", params={"threshold": 500}, workers=1)
    r2 = _run("threshold", [d], tmp_path / "o2", params={"threshold": 500}, workers=2)
    assert r1.counts == r2.counts == {"done": 6}
    for a, b in zip(r1.records, r2.records):
        assert np.array_equal(read_output(a["output"]), read_output(b["output"]))
    man = json.loads(r2.manifest.read_text())
    assert man["runs"][-1]["engine"] == {"kind": "threads", "workers": 2}


# -- the voxel size comes from each input file unless --voxel-size is given (issue 12) -------------
def test_voxel_size_from_each_input_file_unless_given(tmp_path):
    from batch_helpers import ScaledThreshold

    from napari_neuroseg.batch import jobs
    from napari_neuroseg.batch.sources import open_input
    from napari_neuroseg.io import write_ome_zarr, write_tiff

    d = tmp_path / "in"
    d.mkdir()
    v = blobs((16, 32, 32), n=4, radius=3, seed=0)
    write_tiff(d / "a_um.tif", v, scale=(2.0, 0.5, 0.5))  # ImageJ metadata in µm
    write_ome_zarr(d / "b_um.ome.zarr", v, scale=(1.5, 0.25, 0.25))
    tifffile.imwrite(d / "c_none.tif", v)  # no voxel size
    tifffile.imwrite(d / "d_pixel.tif", v, imagej=True, metadata={"spacing": 3.0})  # ImageJ, no unit: pixels
    task = ScaledThreshold()
    seen = {}
    for s in discover_inputs([d]):
        with open_input(s) as inp:
            seen[s.name] = jobs.with_file_voxel_size(task, {"voxel_size": None}, inp).get("voxel_size")
    assert seen == {"a_um": "2,0.5,0.5", "b_um": "1.5,0.25,0.25", "c_none": None, "d_pixel": None}
    with open_input(discover_inputs([d / "a_um.tif"])[0]) as inp:  # given on the command line: it wins
        assert jobs.with_file_voxel_size(task, {"voxel_size": "1,1,1"}, inp)["voxel_size"] == "1,1,1"
        assert "voxel_size" not in jobs.with_file_voxel_size(get_task("threshold"), {}, inp)  # no such parameter
        # the nuclei and neurons tasks take it
        for name in ("nuclei", "neurons"):
            assert jobs.with_file_voxel_size(get_task(name), {}, inp)["voxel_size"] == "2,0.5,0.5"

    # whole files and blockwise runs hand it to the task (recorded with the resolved parameters)
    whole = _run(task, [d / "a_um.tif", d / "c_none.tif"], tmp_path / "w", params={"threshold": 500}, workers=1)
    blockw = _run(task, [d / "b_um.ome.zarr"], tmp_path / "b", params={"threshold": 500}, fmt="zarr",
                  block_shape=(8, 16, 16), workers=1)
    given = _run(task, [d / "a_um.tif"], tmp_path / "g", params={"threshold": 500, "voxel_size": "1,2,2"}, workers=1)
    rp = {Path(r["input"]).name: r.get("resolved_params", {}) for r in whole.records + blockw.records}
    assert rp["a_um.tif"]["voxel_size"] == "2,0.5,0.5" and "voxel_size" not in rp["c_none.tif"]
    assert rp["b_um.ome.zarr"]["voxel_size"] == "1.5,0.25,0.25"
    assert "voxel_size" not in given.records[0].get("resolved_params", {})
    # and the output keeps the input's voxel size
    from napari_neuroseg.io import read_image

    assert read_image(whole.records[0]["output"]).scale == (2.0, 0.5, 0.5)


# -- issue 17: the progress says which file runs and which block, from the start ---------------------
def test_progress_per_file_and_per_block_from_the_start(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(d / "a.tif", blobs((16, 32, 32), n=4, radius=3, seed=0))
    tifffile.imwrite(d / "b.tif", blobs((16, 32, 32), n=5, radius=3, seed=1))
    steps: list = []
    _ = run_to_completion(run_batch("threshold", [d / "a.tif"], tmp_path / "one", params={"threshold": 500},
                                    workers=1), callback=steps.append)
    # one whole file: its name and what runs come before it ends (not a bare "starting…")
    assert steps[0].record is None and steps[0].message.startswith("[1/1] a: segmenting the whole volume")
    assert steps[-1].record is not None and steps[-1].record["status"] == "done" and steps[-1].fraction == 1.0
    steps.clear()
    _ = run_to_completion(run_batch("threshold", [d], tmp_path / "two", params={"threshold": 500}, workers=1),
                          callback=steps.append)
    assert "segmenting 2 whole volumes (a, b)" in steps[0].message and steps[0].record is None
    assert sorted(s.record["input"] for s in steps if s.record) == [str(d / "a.tif"), str(d / "b.tif")]
    # blockwise: a step while the volume is opened and planned, then one per block and phase
    steps.clear()
    _ = run_to_completion(run_batch("threshold", [d / "a.tif", d / "b.tif"], tmp_path / "blk", fmt="zarr",
                                    params={"threshold": 500}, block_shape=(8, 16, 16), workers=1),
                          callback=steps.append)
    msgs = [s.message for s in steps]
    for k, name in ((1, "a"), (2, "b")):
        mine = [m for m in msgs if m.startswith(f"[{k}/2] {name}: ")]
        assert mine[0].startswith(f"[{k}/2] {name}: opening the volume and planning its blocks")
        assert sum("segmented block" in m for m in mine) == 8 and "segmented block 8/8" in " ".join(mine)
        assert sum("matched faces of block" in m for m in mine) == 8
        assert sum("wrote block" in m for m in mine) == 8
    done = [s.step for s in steps]
    assert done == sorted(done) and steps[-1].step == steps[-1].total == 2 * 3 * 8
