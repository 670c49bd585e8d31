"""Blockwise runs: stitching (faces / centre), resume, memory bound, output formats."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cc3d
import numpy as np
import pytest
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from batch_helpers import CentreThreshold, ColourObjects, ColourObjectsFaces, blobs, same_partition, tube, write_zarr  # noqa: E402

from napari_neuroseg.batch import discover_inputs, get_task, open_input, read_output, segment_blockwise
from napari_neuroseg.batch.blocks import plan_blocks
from napari_neuroseg.batch.blockwise import work_dir_for
from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.runtime.progress import Cancelled, run_to_completion


def _run(spec, task, params, target, **kw):
    kw.setdefault("fmt", "zarr")
    fmt = kw.pop("fmt")
    return run_to_completion(segment_blockwise(spec, task, params, target, fmt, **kw))


@pytest.mark.parametrize("connectivity", [6, 26])
def test_blockwise_connected_components_equal_whole_volume(tmp_path, connectivity):
    rng = np.random.default_rng(3)
    density = {6: 0.62, 26: 0.86}[connectivity]  # below percolation: many objects
    vol = (rng.random((24, 40, 40)) > density).astype(np.uint16) * 100
    spec = discover_inputs([write_zarr(tmp_path / "in.zarr", vol)])[0]
    task = get_task("threshold")
    params = task.resolve({"threshold": 50, "connectivity": connectivity, "min_size": 3})
    res = _run(spec, task, params, tmp_path / "out.zarr", block_shape=(12, 20, 20), halo=(1, 1, 1))
    out = read_output(tmp_path / "out.zarr")
    whole = task.segment(vol, "ZYX", params)  # min_size applied on whole objects
    assert res["blocks"] == 8 and res["n_objects"] == int(whole.max()) > 10
    assert same_partition(out, whole)
    assert out.max() == len(np.unique(out)) - 1  # ids 1..N, no gaps
    assert not work_dir_for(tmp_path / "out.zarr").exists()


def test_long_tube_crossing_many_blocks_gets_one_id(tmp_path):
    vol = tube((32, 48, 128))
    spec = discover_inputs([write_zarr(tmp_path / "tube.zarr", vol)])[0]
    blocks = plan_blocks(vol.shape, (16, 16, 16))
    crossed = sum(bool(vol[b.core].any()) for b in blocks)
    assert crossed >= 5
    task = get_task("threshold")
    params = task.resolve({"threshold": 400})
    res = _run(spec, task, params, tmp_path / "out.ome.zarr", fmt="ome-zarr", block_shape=(16, 16, 16))
    out = read_output(tmp_path / "out.ome.zarr")
    assert res["n_objects"] == 1
    assert set(np.unique(out[vol > 0])) == {1} and not out[vol == 0].any()
    # OME-Zarr metadata
    g = zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="r")
    assert g.attrs["multiscales"][0]["datasets"][0]["path"] == "0"
    assert g["0"].chunks == (16, 16, 16)


def test_centre_mode_keeps_each_blob_once(tmp_path):
    vol = blobs((40, 64, 64), n=30, radius=3, seed=1)
    spec = discover_inputs([write_zarr(tmp_path / "b.zarr", vol)])[0]
    task = CentreThreshold()
    params = task.resolve({"threshold": 500})
    res = _run(spec, task, params, tmp_path / "o.zarr", block_shape=(20, 24, 24), halo=(8, 8, 8))
    out = read_output(tmp_path / "o.zarr")
    whole = cc3d.connected_components(vol > 500)
    assert res["truncated"] == 0 and res["n_objects"] == whole.max() == 30
    assert same_partition(out, whole)
    # a halo smaller than the objects is reported
    res2 = _run(spec, task, params, tmp_path / "o2.zarr", block_shape=(20, 24, 24), halo=(1, 1, 1))
    assert res2["truncated"] > 0


def test_cancel_between_blocks_then_resume_gives_same_output(tmp_path):
    vol = blobs((32, 48, 48), n=20, radius=4, seed=2) + tube((32, 48, 48))
    spec = discover_inputs([write_zarr(tmp_path / "v.zarr", vol)])[0]
    task = get_task("threshold")
    params = task.resolve({"threshold": 300})
    ref = _run(spec, task, params, tmp_path / "ref.zarr", block_shape=(16, 16, 16))
    target = tmp_path / "out.zarr"
    seen = []
    with pytest.raises(Cancelled):
        run_to_completion(
            segment_blockwise(spec, task, params, target, "zarr", block_shape=(16, 16, 16)),
            callback=seen.append, should_stop=lambda: len(seen) >= 5,
        )
    assert not target.exists()  # nothing at the target until the end
    work = work_dir_for(target)
    assert len(list((work / "p1").glob("*.json"))) == 5
    msgs = []
    res = run_to_completion(
        segment_blockwise(spec, task, params, target, "zarr", block_shape=(16, 16, 16), resume=True),
        callback=lambda p: msgs.append(p.message),
    )
    assert msgs[0].startswith("resuming: 5/18")
    assert res["n_objects"] == ref["n_objects"]
    assert np.array_equal(read_output(target), read_output(tmp_path / "ref.zarr"))


_PEAK_MEMORY_SCRIPT = r"""
import json, sys, tracemalloc
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[1])
from batch_helpers import blobs, tube, write_zarr
from napari_neuroseg.batch import discover_inputs, get_task, segment_blockwise
from napari_neuroseg.runtime.progress import run_to_completion

tmp = Path(sys.argv[2])
shape, block = (128, 256, 256), (32, 64, 64)
vol = blobs(shape, n=60, radius=4, seed=5) + tube(shape)
spec = discover_inputs([write_zarr(tmp / "m.zarr", vol, chunks=block)])[0]
del vol
task = get_task("threshold")
params = task.resolve({"threshold": 100})
small = discover_inputs([write_zarr(tmp / "s.zarr", tube((16, 16, 64)))])[0]
run_to_completion(segment_blockwise(small, task, params, tmp / "warm.zarr", "zarr", block_shape=(8, 8, 8)))
outer = int(np.prod([b + 2 * h for b, h in zip(block, task.halo_for(params))]))
tracemalloc.start()
res = run_to_completion(segment_blockwise(spec, task, params, tmp / "o.zarr", "zarr", block_shape=block))
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
print(json.dumps({"blocks": res["blocks"], "n_objects": res["n_objects"], "peak": peak, "outer": outer,
                  "whole_voxels": int(np.prod(shape))}))
"""


@pytest.mark.slow
def test_peak_memory_bounded_by_block_size(tmp_path):
    """A volume 8x the block budget: peak traced memory stays within the budget.

    Measured in a fresh interpreter: tracemalloc counts every thread of the process, so threads
    left over by earlier tests (napari, Dask) would otherwise add to the peak.
    """
    import subprocess

    helpers = Path(__file__).resolve().parent
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY_SCRIPT, str(helpers), str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # Budget of one block: 24 B per halo'd voxel (uint16 input + decompressed chunk 4, mask 1,
    # uint32 labels, core copy, renumbered and remapped ids 16, compression buffer ~3) + 1 MB.
    budget = out["outer"] * 24 + 1_000_000
    whole_bytes = out["whole_voxels"] * (2 + 1 + 4)  # input + mask + labels of a whole-volume run
    assert whole_bytes >= 8 * budget
    assert out["blocks"] == 64 and out["n_objects"] >= 50
    assert out["peak"] < budget, (out["peak"], budget)


def test_blockwise_rejects_tiff_and_bad_task_output(tmp_path):
    vol = blobs((16, 32, 32), n=3)
    spec = discover_inputs([write_zarr(tmp_path / "v.zarr", vol)])[0]
    task = get_task("threshold")
    with pytest.raises(NeurosegError, match="zarr"):
        _run(spec, task, task.resolve(), tmp_path / "o.tif", fmt="tif", block_shape=(8, 8, 8))


def test_blockwise_reads_multichannel_fisbe_layout(tmp_path):
    raw = np.zeros((3, 24, 32, 40), np.uint16)
    raw[1] = tube((24, 32, 40))
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=2)
    g.create_array("volumes/raw", shape=raw.shape, chunks=(3, 12, 16, 16), dtype="uint16")[...] = raw
    spec = discover_inputs([tmp_path / "s.zarr"])[0]
    assert spec.format == "fisbe"
    with open_input(spec) as inp:
        assert inp.axes == "CZYX" and inp.spatial_shape == (24, 32, 40)
    task = get_task("threshold")
    res = _run(spec, task, task.resolve({"threshold": 100}), tmp_path / "o.zarr", block_shape=(12, 16, 16))
    assert res["n_objects"] == 1
    assert np.array_equal(read_output(tmp_path / "o.zarr") > 0, raw.max(0) > 100)
    state = json.loads((tmp_path / "o.zarr" / ".zarray").read_text())
    assert state["chunks"] == [12, 16, 16]
    shutil.rmtree(tmp_path / "o.zarr")


def test_overlap_stitching_keeps_a_tube_across_many_blocks_whole(tmp_path):
    vol = tube((32, 48, 128))
    spec = discover_inputs([write_zarr(tmp_path / "tube.zarr", vol)])[0]
    task = ColourObjects()
    params = task.resolve({"threshold": 400})
    res = _run(spec, task, params, tmp_path / "out.zarr", block_shape=(16, 16, 16))
    out = read_output(tmp_path / "out.zarr")
    assert res["stitch"] == "overlap" and res["halo"] == [3, 3, 3]
    assert res["n_objects"] == 1
    assert set(np.unique(out[vol > 0])) == {1} and not out[vol == 0].any()


def test_overlap_stitching_keeps_touching_objects_apart(tmp_path):
    """Two bars told apart by intensity touch along their whole length and cross 4 block faces:
    face stitching merges them, overlap matching keeps them apart, like the whole-volume run."""
    vol = np.zeros((16, 32, 64), np.uint16)
    vol[5:10, 8:14, 2:62] = 500
    vol[5:10, 14:20, 2:62] = 700  # touches the first bar at y = 13|14
    spec = discover_inputs([write_zarr(tmp_path / "bars.zarr", vol)])[0]
    whole = ColourObjects().segment(vol, "ZYX", ColourObjects().resolve({"threshold": 100}))
    assert whole.max() == 2
    for task, expected in ((ColourObjects(), 2), (ColourObjectsFaces(), 1)):
        params = task.resolve({"threshold": 100})
        target = tmp_path / f"{task.name}.zarr"
        res = _run(spec, task, params, target, block_shape=(16, 16, 16))
        assert res["n_objects"] == expected, task.name
    out = read_output(tmp_path / "colour.zarr")
    assert same_partition(out, whole)


def test_overlap_stitching_needs_a_halo(tmp_path):
    spec = discover_inputs([write_zarr(tmp_path / "t.zarr", tube((16, 16, 32)))])[0]
    task = ColourObjects()
    with pytest.raises(NeurosegError, match="halo"):
        _run(spec, task, task.resolve({"threshold": 100}), tmp_path / "o.zarr", block_shape=(8, 8, 8), halo=(0, 2, 2))
