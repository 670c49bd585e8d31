"""io's NumPy files (.npy/.npz without pickles, written atomically), the FISBe array opener, PNG."""

from __future__ import annotations

import numpy as np
import pytest

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io.atomic import atomic_save_npy, atomic_save_npz, is_temporary
from napari_neuroseg.io.fisbe import open_fisbe_arrays, write_fisbe
from napari_neuroseg.io.npy import read_npy, read_npz


def test_npz_round_trip_at_the_exact_path_and_no_temporaries(tmp_path):
    path = tmp_path / "cache.bin"  # no .npz appended
    arrays = {"names": np.array(["a", "bb"]), "c0_0": np.arange(6, dtype=np.int16).reshape(2, 3)}
    assert atomic_save_npz(path, arrays) == path
    back = read_npz(path)
    assert sorted(back) == ["c0_0", "names"]
    np.testing.assert_array_equal(back["c0_0"], arrays["c0_0"])
    assert back["c0_0"].dtype == np.int16 and list(back["names"]) == ["a", "bb"]
    assert [p.name for p in tmp_path.iterdir()] == ["cache.bin"]
    assert not any(is_temporary(p) for p in tmp_path.iterdir())


def test_npy_read_memory_mapped_and_pickles_refused(tmp_path):
    a = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    atomic_save_npy(tmp_path / "a.npy", a)
    m = read_npy(tmp_path / "a.npy", mmap=True)
    assert isinstance(m, np.memmap) and not m.flags.writeable
    np.testing.assert_array_equal(read_npy(tmp_path / "a.npy"), a)
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        read_npy(tmp_path / "obj.npy")


def test_open_fisbe_arrays_opens_without_reading(tmp_path):
    raw = np.zeros((3, 4, 8, 8), np.uint16)
    gt = np.zeros((2, 4, 8, 8), np.uint8)
    gt[0, 1:3, 2:5, 2:5] = 1
    write_fisbe(tmp_path / "s.zarr", raw=raw, gt_instances=gt)
    r, g = open_fisbe_arrays(tmp_path / "s.zarr")
    assert not isinstance(r, np.ndarray) and tuple(r.shape) == raw.shape
    np.testing.assert_array_equal(np.asarray(g[...]), gt)
    write_fisbe(tmp_path / "raw_only.zarr", raw=raw)
    assert open_fisbe_arrays(tmp_path / "raw_only.zarr")[1] is None
    with pytest.raises(NeurosegError):
        open_fisbe_arrays(tmp_path / "missing.zarr")


def test_write_png_round_trip(tmp_path):
    from imageio.v3 import imread

    from napari_neuroseg.io.png import write_png

    img = np.zeros((5, 7, 4), np.uint8)
    img[1:3, 2:6] = (255, 0, 0, 255)
    write_png(tmp_path / "shot.png", img)
    np.testing.assert_array_equal(imread(tmp_path / "shot.png"), img)
    assert [p.name for p in tmp_path.iterdir()] == ["shot.png"]
