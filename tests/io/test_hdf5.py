"""HDF5: list keys, read by key, FISBe prediction files, errors."""

from __future__ import annotations

import dask.array as da
import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io import list_keys, read_hdf5, read_image, read_labels, write_hdf5


@settings(max_examples=15, deadline=None)
@given(
    arr=hnp.arrays(st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float32]),
                   hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=6),
                   elements=st.integers(0, 200)),
    key=st.sampled_from(["data", "volumes/labels", "a/b/c"]),
    suffix=st.sampled_from([".h5", ".hdf", ".hdf5"]),
)
def test_hdf5_round_trip(tmp_path_factory, arr, key, suffix):
    path = tmp_path_factory.mktemp("h") / f"x{suffix}"
    write_hdf5(path, arr, key=key, scale=(2.0, 0.5, 0.5))
    assert list_keys(path) == [key]
    np.testing.assert_array_equal(read_hdf5(path, key), arr)
    vol = read_image(path)  # the only dataset, no key needed
    assert vol.axes == "ZYX" and vol.scale == (2.0, 0.5, 0.5) and vol.meta["format"] == "hdf5"
    np.testing.assert_array_equal(vol.data, arr)
    if arr.dtype.kind in "iu":
        np.testing.assert_array_equal(read_labels(path, lazy=True).compute(), arr)


def _multi(tmp_path):
    path = tmp_path / "pred.hdf"
    with h5py.File(path, "w") as f:
        f["volumes/gmm_image"] = np.zeros((2, 3, 4, 3), np.uint8)
        f["volumes/gmm_label"] = np.ones((2, 3, 4), np.int32)
        f["volumes/gmm_label_cleaned"] = np.full((2, 3, 4), 5, np.int32)
    return path


def test_several_datasets_need_a_key_except_known_label_keys(tmp_path):
    path = _multi(tmp_path)
    assert list_keys(path) == ["volumes/gmm_image", "volumes/gmm_label", "volumes/gmm_label_cleaned"]
    assert int(read_labels(path).max()) == 5  # FISBe predictions: volumes/gmm_label_cleaned
    assert int(read_labels(path, "volumes/gmm_label").max()) == 1
    with pytest.raises(NeurosegError, match=r"holds 3 datasets.*gmm_label_cleaned") as err:
        read_image(path)
    assert "pred.hdf" in str(err.value) and "--key" in str(err.value)


def test_missing_key_lists_the_keys(tmp_path):
    path = _multi(tmp_path)
    with pytest.raises(NeurosegError, match=r"no dataset 'volumes/nope'.*volumes/gmm_label_cleaned"):
        read_labels(path, "volumes/nope")
    with pytest.raises(NeurosegError, match="no dataset"):
        read_hdf5(path, "nope")


def test_not_hdf5_and_float_labels(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(NeurosegError, match="not a readable HDF5"):
        list_keys(bad)
    write_hdf5(tmp_path / "f.h5", np.zeros((2, 2, 2), np.float32))
    with pytest.raises(NeurosegError, match="labels must be integers"):
        read_labels(tmp_path / "f.h5")


@pytest.mark.realdata
def test_real_fisbe_prediction_is_read_lazily(fisbe_real_dir):
    path = fisbe_real_dir / "pred" / "R14A02-20180905_65_A6.hdf"
    assert "volumes/gmm_label_cleaned" in list_keys(path)
    pred = read_labels(path, lazy=True)
    assert isinstance(pred, da.Array)
    assert pred.shape == (385, 685, 686) and pred.dtype == np.int32
    block = np.asarray(pred[150:200, 300:400, 300:400])
    assert block.min() >= 0
    same = read_labels(path, "volumes/gmm_label_cleaned", lazy=True)
    np.testing.assert_array_equal(np.asarray(same[150:200, 300:400, 300:400]), block)
