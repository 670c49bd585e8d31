"""Zarr v2/v3 and OME-Zarr: round trips, metadata, labels/, pyramids, keys and errors."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io import (
    detect_format,
    is_ome_zarr,
    list_keys,
    read_image,
    read_labels,
    write_ome_zarr,
    write_zarr,
)

DTYPES = [np.uint8, np.uint16, np.int32, np.uint32, np.float32, np.float64, np.int64]


def _array(data, dtype, shape):
    return data.draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(np.dtype(dtype), allow_nan=False,
                                                                     allow_infinity=False)))


@settings(max_examples=15, deadline=None)
@given(
    data=st.data(),
    dtype=st.sampled_from(DTYPES),
    zarr_format=st.sampled_from([2, 3]),
    channels=st.sampled_from([0, 1, 3]),
    key=st.sampled_from([None, "volumes/raw", "img"]),
)
def test_zarr_round_trip(tmp_path_factory, data, dtype, zarr_format, channels, key):
    shape = data.draw(st.tuples(st.integers(1, 5), st.integers(1, 9), st.integers(1, 9)))
    if channels:
        shape = (channels,) + shape
    arr = _array(data, dtype, shape)
    axes = "CZYX" if channels else "ZYX"
    path = tmp_path_factory.mktemp("z") / "x.zarr"
    write_zarr(path, arr, key=key, axes=axes, scale=(2.0, 0.5, 0.25), zarr_format=zarr_format,
               chunks=(1,) * len(shape) if len(shape) == 3 else None)
    vol = read_image(path)
    assert vol.axes == axes and vol.meta["axes_guessed"] is False
    assert vol.meta["zarr_format"] == zarr_format
    assert vol.data.dtype == arr.dtype
    np.testing.assert_array_equal(vol.data, arr)
    assert vol.scale == (2.0, 0.5, 0.25)
    lazy = read_image(path, lazy=True)
    assert isinstance(lazy.data, da.Array)
    np.testing.assert_array_equal(lazy.data.compute(), arr)
    if zarr_format == 3:
        assert (path / "zarr.json").is_file()
    else:
        assert (path / (".zgroup" if key else ".zarray")).is_file()


@settings(max_examples=15, deadline=None)
@given(
    data=st.data(),
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32]),
    channels=st.sampled_from([0, 2]),
    n_levels=st.integers(1, 3),
    label_dtype=st.sampled_from([np.uint8, np.uint16, np.uint32, np.int32, np.int64, np.bool_]),
)
def test_ome_zarr_round_trip(tmp_path_factory, data, dtype, channels, n_levels, label_dtype):
    spatial = data.draw(st.tuples(st.integers(1, 4), st.integers(2, 12), st.integers(2, 12)))
    shape = ((channels,) if channels else ()) + spatial
    img = _array(data, dtype, shape)
    lab = data.draw(hnp.arrays(label_dtype, spatial, elements=st.integers(0, 1) if label_dtype == np.bool_
                               else st.integers(0, 100)))
    axes = "CZYX" if channels else "ZYX"
    path = tmp_path_factory.mktemp("o") / "img.ome.zarr"
    write_ome_zarr(path, img, axes=axes, scale=(3.0, 0.5, 0.5), labels={"cells": lab}, n_levels=n_levels)
    assert detect_format(path) == "ome-zarr" and is_ome_zarr(path)
    vol = read_image(path)
    assert vol.axes == axes and vol.scale == (3.0, 0.5, 0.5) and vol.meta["format"] == "ome-zarr"
    np.testing.assert_array_equal(vol.data, img)
    back = read_labels(path)
    np.testing.assert_array_equal(back, lab.astype(np.uint8) if label_dtype == np.bool_ else lab)
    assert read_labels(path, "labels/cells").shape == spatial
    # pyramid: level i halves Y and X and doubles their voxel size
    root = zarr.open_group(str(path), mode="r")
    levels = root.attrs["multiscales"][0]["datasets"]
    assert levels[0]["path"] == "0" and 1 <= len(levels) <= n_levels
    if len(levels) > 1:
        lvl1 = read_image(path, key=levels[1]["path"])
        assert lvl1.spatial_shape == (spatial[0], spatial[1] // 2, spatial[2] // 2)
        assert lvl1.scale == (3.0, 1.0, 1.0)
        lab1 = read_labels(path, "labels/cells/1")
        assert lab1.shape == lvl1.spatial_shape
        np.testing.assert_array_equal(lab1, back[:, : spatial[1] // 2 * 2 : 2, : spatial[2] // 2 * 2 : 2])


def test_ome_zarr_metadata_is_ngff_v04(tmp_path):
    img = np.zeros((2, 3, 8, 8), np.uint16)
    path = tmp_path / "a.ome.zarr"
    write_ome_zarr(path, img, axes="CZYX", scale=(2.0, 0.3, 0.3), labels=np.ones((3, 8, 8), np.uint8), n_levels=2)
    attrs = json.loads((path / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert ms["axes"][0]["type"] == "channel" and ms["axes"][1]["type"] == "space"
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 0.6, 0.6]
    assert json.loads((path / "0" / ".zarray").read_text())["dimension_separator"] == "/"
    assert json.loads((path / "labels" / ".zattrs").read_text()) == {"labels": ["labels"]}
    lab_attrs = json.loads((path / "labels" / "labels" / ".zattrs").read_text())
    assert "image-label" in lab_attrs and lab_attrs["multiscales"][0]["axes"][0]["name"] == "z"


def test_ome_zarr_from_dask_writes_lazily_and_reads_v05_layout(tmp_path):
    img = da.random.randint(0, 1000, size=(6, 40, 40), chunks=(2, 20, 20)).astype(np.uint16)
    write_ome_zarr(tmp_path / "d.ome.zarr", img, axes="ZYX", n_levels=2)
    np.testing.assert_array_equal(read_image(tmp_path / "d.ome.zarr").data, img.compute())
    # An NGFF v0.5 store (Zarr v3, metadata under attributes["ome"]) written by hand.
    root = zarr.open_group(str(tmp_path / "v5.zarr"), mode="w", zarr_format=3)
    arr = root.create_array("s0", shape=(4, 6, 6), dtype="uint8", chunks=(2, 6, 6))
    arr[...] = 7
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"],
        "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [4.0, 1.5, 1.5]}]}],
    }]}
    vol = read_image(tmp_path / "v5.zarr", lazy=True)
    assert vol.meta["format"] == "ome-zarr" and vol.meta["zarr_format"] == 3
    assert vol.scale == (4.0, 1.5, 1.5) and int(vol.data.sum().compute()) == 7 * 4 * 6 * 6


def test_group_without_expected_keys_lists_what_is_there(tmp_path):
    root = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=2)
    root.create_array("a", shape=(2, 3, 3), dtype="uint8")
    root.create_array("sub/b", shape=(2, 3, 3), dtype="uint8")
    assert list_keys(tmp_path / "g.zarr") == ["a", "sub/b"]
    with pytest.raises(NeurosegError, match=r"holds 2 arrays.*'a'.*'sub/b'") as err:
        read_image(tmp_path / "g.zarr")
    assert "--key" in str(err.value)
    with pytest.raises(NeurosegError, match=r"no key 'nope'.*\['a', 'sub/b'\]"):
        read_image(tmp_path / "g.zarr", key="nope")
    with pytest.raises(NeurosegError, match="holds 2 arrays"):
        read_labels(tmp_path / "g.zarr")
    assert read_image(tmp_path / "g.zarr", key="sub/b").shape == (2, 3, 3)
    assert read_image(tmp_path / "g.zarr" / "sub" / "b").shape == (2, 3, 3)  # store path + key
    assert read_labels(str(tmp_path / "g.zarr") + "/sub/b").shape == (2, 3, 3)


def test_not_a_zarr_folder_and_missing_paths(tmp_path):
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(NeurosegError, match="not a Zarr store"):
        read_image(tmp_path / "empty.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(NeurosegError, match="not a Zarr store"):
        read_image(tmp_path / "plain")
    with pytest.raises(NeurosegError, match="not found"):
        read_labels(tmp_path / "missing.zarr")


def test_ome_zarr_writer_validates(tmp_path):
    with pytest.raises(NeurosegError, match="label volume 'labels' has shape"):
        write_ome_zarr(tmp_path / "x.ome.zarr", np.zeros((2, 4, 4)), labels=np.zeros((2, 4, 5), np.uint8))
    with pytest.raises(NeurosegError, match="labels must be integers"):
        write_ome_zarr(tmp_path / "x.ome.zarr", np.zeros((2, 4, 4)), labels=np.zeros((2, 4, 4), np.float32))
    with pytest.raises(NeurosegError, match="axes"):
        write_ome_zarr(tmp_path / "x.ome.zarr", np.zeros((2, 4, 4)), axes="CZY")
    assert not any(tmp_path.iterdir())
