"""Atomic writers: a failure or cancel never leaves a (half-written) file at the target."""

from __future__ import annotations

import numpy as np
import pytest

import napari_neuroseg.io.zarr_io as zarr_io
from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io import (
    atomic_output,
    read_fisbe,
    read_image,
    write_fisbe,
    write_ome_zarr,
    write_tiff,
    write_zarr,
)


def test_success_renames_file_and_directory(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    folder = tmp_path / "out.zarr"
    folder.mkdir()
    (folder / "old").write_text("old")
    with atomic_output(folder) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in folder.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt", "out.zarr"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_error_removes_temp_and_keeps_previous(tmp_path, exc):
    target = tmp_path / "out.tif"
    with pytest.raises(exc):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise exc()
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"previous")
    with pytest.raises(exc):
        with atomic_output(target) as tmp:
            tmp.mkdir()
            (tmp / "chunk").write_bytes(b"x")
            raise exc()
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


def test_missing_output_folder_is_a_clear_error(tmp_path):
    with pytest.raises(NeurosegError, match="output folder does not exist"):
        write_tiff(tmp_path / "nope" / "x.tif", np.zeros((2, 2, 2), np.uint8))


def test_tiff_writer_failure_leaves_nothing(tmp_path, monkeypatch):
    import tifffile

    def boom(path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"II*\x00partial")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", boom)
    with pytest.raises(OSError, match="disk full"):
        write_tiff(tmp_path / "x.tif", np.zeros((2, 3, 3), np.uint16))
    assert list(tmp_path.iterdir()) == []


class _Exploding:
    """An array-like that fails half-way through being read (like a cancelled dask compute)."""

    def __init__(self, shape, dtype=np.uint16):
        self.shape, self.dtype, self.ndim = shape, np.dtype(dtype), len(shape)

    def __getitem__(self, index):
        sl = index[0] if isinstance(index, tuple) else index
        if isinstance(sl, slice) and (sl.start or 0) >= self.shape[0] // 2:
            raise RuntimeError("cancelled")
        return np.ones(self.shape, self.dtype)[index]


def test_zarr_writers_failing_mid_write_leave_old_or_nothing(tmp_path):
    import dask.array as da

    failing = da.from_array(_Exploding((4, 6, 6)), chunks=(1, 6, 6))
    with pytest.raises(RuntimeError, match="cancelled"):
        write_zarr(tmp_path / "a.zarr", failing, chunks=(1, 6, 6))
    with pytest.raises(RuntimeError, match="cancelled"):
        write_ome_zarr(tmp_path / "b.ome.zarr", failing, chunks=(1, 6, 6))
    assert list(tmp_path.iterdir()) == []
    # an existing FISBe sample survives a failed overwrite unchanged
    gt = np.zeros((1, 4, 6, 6), np.uint8)
    gt[0, 1, 2, 3] = 1
    write_fisbe(tmp_path / "s.zarr", gt_instances=gt)
    with pytest.raises(RuntimeError, match="cancelled"):
        write_fisbe(tmp_path / "s.zarr", raw=failing[None])
    assert read_fisbe(tmp_path / "s.zarr").gt_instances.tobytes() == gt.tobytes()
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]


def test_writer_error_in_metadata_step_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("metadata failed")

    monkeypatch.setattr(zarr_io, "_ome_axes_meta", boom)
    with pytest.raises(RuntimeError, match="metadata failed"):
        write_ome_zarr(tmp_path / "c.ome.zarr", np.zeros((2, 4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []
    write_zarr(tmp_path / "ok.zarr", np.ones((2, 2, 2), np.uint8))
    assert read_image(tmp_path / "ok.zarr").data.sum() == 8


# -- the file helpers (bytes, text, JSON, .npy) and their callers --------------------------------
from napari_neuroseg.io.atomic import (
    atomic_save_npy,
    atomic_write_bytes,
    atomic_write_file,
    atomic_write_json,
    atomic_write_text,
    clean_temporaries,
)


def _fail_after_some_bytes(fh):
    fh.write(b"partial data")
    raise OSError(5, "simulated I/O error")


def test_file_helpers_write_and_read_back(tmp_path):
    assert atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert atomic_write_text(tmp_path / "a.txt", "é\n").read_text(encoding="utf-8") == "é\n"
    atomic_write_json(tmp_path / "a.json", {"n": np.int64(3), "x": np.float32(0.5), "a": np.arange(2), "p": tmp_path})
    import json

    assert json.loads((tmp_path / "a.json").read_text()) == {"n": 3, "x": 0.5, "a": [0, 1], "p": str(tmp_path)}
    atomic_save_npy(tmp_path / "a.npy", np.arange(6, dtype=np.uint16).reshape(2, 3)[:, ::2])
    assert np.array_equal(np.load(tmp_path / "a.npy"), [[0, 2], [3, 5]])
    atomic_write_text(tmp_path / "sub" / "b.txt", "x", parents=True)
    assert (tmp_path / "sub" / "b.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.json", "a.npy", "a.txt", "sub"]


@pytest.mark.parametrize("name", ["old.bin", "old.json", "old.npy"])
def test_file_helpers_failing_mid_write_keep_the_old_file_and_leave_no_temporary(tmp_path, name):
    target = tmp_path / name
    target.write_bytes(b"the previous version")
    with pytest.raises(OSError, match="simulated"):
        atomic_write_file(target, _fail_after_some_bytes)
    with pytest.raises(ValueError):  # an object array would need a pickle: refused, nothing written
        atomic_save_npy(target, np.array([{"a": 1}], dtype=object))
    assert target.read_bytes() == b"the previous version"
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_full_disk_mid_write_is_a_clear_error_and_keeps_the_old_file(tmp_path):
    import errno

    target = tmp_path / "summary.csv"
    target.write_text("old")

    def full(fh):
        fh.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(NeurosegError, match="no space left"):
        atomic_write_file(target, full)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.csv"]


def test_clean_temporaries_removes_only_leftovers(tmp_path):
    (tmp_path / ".out.tif.tmp-1234abcd.tif").write_bytes(b"x")
    (tmp_path / ".out.zarr.tmp-old-1234abcd").mkdir()
    (tmp_path / "out.tif").write_bytes(b"keep")
    (tmp_path / ".hidden").write_bytes(b"keep")
    assert clean_temporaries(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "out.tif"]


def test_review_queue_save_failing_mid_write_keeps_the_old_queue(tmp_path, monkeypatch):
    """The review queue's save went through a fixed ``.tmp`` name that a failed write left behind."""
    from napari_neuroseg.io import atomic
    from napari_neuroseg.proofread.review import ReviewQueue

    path = tmp_path / "q.review.json"
    ReviewQueue([]).save(path)
    before = path.read_bytes()

    def fsync_fails(fd):  # the data is written, flushing it to the disk fails
        raise OSError(5, "simulated I/O error")

    monkeypatch.setattr(atomic.os, "fsync", fsync_fails)
    with pytest.raises(OSError, match="simulated"):
        ReviewQueue([], position=-1, meta={"changed": True}).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_batch_block_files_failing_mid_write_leave_no_temporary(tmp_path, monkeypatch):
    """Batch pass-1 block results (``.npy``) used a hand-written temp name left behind on failure."""
    from napari_neuroseg.batch import jobs

    target = jobs.block_file(tmp_path, 0)
    target.parent.mkdir()
    jobs.atomic_save_npy(target, np.ones((2, 2, 2), np.uint8))

    def boom(fh, arr, allow_pickle=False):
        fh.write(b"\x93NUMPY torn")
        raise OSError(28, "simulated")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(NeurosegError, match="no space left"):
        jobs.atomic_save_npy(target, np.zeros((2, 2, 2), np.uint8))
    monkeypatch.undo()
    assert np.array_equal(np.load(target), np.ones((2, 2, 2), np.uint8))
    assert [p.name for p in target.parent.iterdir()] == ["0.npy"]
