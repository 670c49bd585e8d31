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
