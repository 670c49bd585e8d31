"""TIFF reading/writing: round trips, axes from metadata and guesses, voxel size, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io import read_image, read_labels, write_tiff
from napari_neuroseg.io.volume import guess_axes

DTYPES = [np.uint8, np.uint16, np.float32, np.int32, np.uint32, np.int16]


@settings(max_examples=15, deadline=None)
@given(
    data=st.data(),
    dtype=st.sampled_from(DTYPES),
    channels=st.sampled_from([0, 2, 3]),  # TIFF readers squeeze singleton axes (documented)
    scale=st.tuples(*[st.floats(0.05, 8.0, allow_nan=False, allow_infinity=False)] * 3),
)
def test_tiff_round_trip(tmp_path_factory, data, dtype, channels, scale):
    shape = data.draw(st.tuples(st.integers(2, 6), st.integers(1, 9), st.integers(1, 9)))
    if channels:
        shape = (channels,) + shape
    arr = data.draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(np.dtype(dtype), allow_nan=False,
                                                                     allow_infinity=False)))
    axes = "CZYX" if channels else "ZYX"
    path = tmp_path_factory.mktemp("tif") / "x.tif"
    write_tiff(path, arr, axes=axes, scale=scale)
    vol = read_image(path)
    assert vol.axes == axes
    assert vol.data.dtype == arr.dtype
    np.testing.assert_array_equal(vol.data, arr)
    assert vol.meta["axes_guessed"] is False
    np.testing.assert_allclose(vol.scale, scale, rtol=1e-5)
    lazy = read_image(path, lazy=True)
    np.testing.assert_array_equal(np.asarray(lazy.data), arr)


def test_imagej_zcyx_is_returned_channels_first(tmp_path):
    arr = np.random.default_rng(0).integers(0, 4000, (5, 2, 7, 8), dtype=np.uint16)  # Z, C, Y, X
    path = tmp_path / "h.tif"
    tifffile.imwrite(path, arr, imagej=True, metadata={"axes": "ZCYX", "spacing": 2.5, "unit": "um"},
                     resolution=(1 / 0.4, 1 / 0.4))
    vol = read_image(path)
    assert vol.axes == "CZYX" and vol.meta["source_axes"] == "ZCYX"
    np.testing.assert_array_equal(vol.data, arr.transpose(1, 0, 2, 3))
    np.testing.assert_allclose(vol.scale, (2.5, 0.4, 0.4))


def test_ome_tiff_axes_and_physical_size(tmp_path):
    arr = np.arange(3 * 4 * 5 * 6, dtype=np.uint16).reshape(4, 3, 5, 6)  # Z C Y X
    path = tmp_path / "o.ome.tif"
    tifffile.imwrite(path, arr, ome=True, metadata={"axes": "ZCYX", "PhysicalSizeZ": 3.0,
                                                    "PhysicalSizeY": 0.3, "PhysicalSizeX": 0.2})
    vol = read_image(path)
    assert vol.axes == "CZYX"
    np.testing.assert_array_equal(vol.data, arr.transpose(1, 0, 2, 3))
    np.testing.assert_allclose(vol.scale, (3.0, 0.3, 0.2))


@pytest.mark.parametrize(
    "shape, expected",
    [((5, 6), "YX"), ((4, 5, 6), "ZYX"), ((3, 40, 50, 50), "CZYX"), ((40, 3, 50, 50), "ZCYX"),
     ((2, 2, 9, 9), "CZYX"), ((1, 2, 3, 4, 5), "TCZYX")],
)
def test_guess_axes_rules(shape, expected):
    assert guess_axes(shape) == expected


def test_guess_axes_refuses_ambiguous_4d():
    with pytest.raises(NeurosegError, match="--axes"):
        guess_axes((40, 30, 50, 50))


def test_plain_tiff_axes_are_guessed_and_overridable(tmp_path):
    arr = np.random.default_rng(1).integers(0, 255, (20, 2, 8, 8), dtype=np.uint8)  # Z, C, Y, X
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, arr, photometric="minisblack")
    vol = read_image(path)
    assert vol.meta["axes_guessed"] is True
    assert vol.axes == "CZYX" and vol.shape == (2, 20, 8, 8)
    assert vol.scale == (1.0, 1.0, 1.0)
    forced = read_image(path, axes="CZYX")  # wrong on purpose: the user decides
    assert forced.shape == (20, 2, 8, 8)


def test_bool_and_int64_labels_are_written_as_supported_types(tmp_path):
    lab = np.zeros((3, 4, 5), dtype=np.int64)
    lab[1, 1:3, 1:3] = 70000
    write_tiff(tmp_path / "l.tif", lab)
    back = read_labels(tmp_path / "l.tif")
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, lab)
    write_tiff(tmp_path / "b.tif", lab > 0)
    assert read_labels(tmp_path / "b.tif").dtype == np.uint8


def _good_tiff(tmp_path):
    path = tmp_path / "good.tif"
    write_tiff(path, np.random.default_rng(2).integers(0, 60000, (12, 64, 64), dtype=np.uint16), compression=None)
    return path


@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_truncated_tiff_is_a_clear_error(tmp_path, cut):
    data = _good_tiff(tmp_path).read_bytes()
    bad = tmp_path / "cut.tif"
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(NeurosegError, match="corrupt or truncated") as err:
        read_image(bad)
    assert "cut.tif" in str(err.value) and "Fix:" in str(err.value)


def test_garbage_tiff_is_a_clear_error(tmp_path):
    bad = tmp_path / "junk.tif"
    bad.write_bytes(b"this is not a tiff at all" * 4)
    with pytest.raises(NeurosegError, match="corrupt or truncated"):
        read_image(bad)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(NeurosegError, match="corrupt or truncated"):
        read_labels(empty)


def test_float_labels_are_refused(tmp_path):
    write_tiff(tmp_path / "f.tif", np.ones((2, 3, 3), np.float32))
    with pytest.raises(NeurosegError, match="labels must be integers"):
        read_labels(tmp_path / "f.tif")


def test_negative_label_ids_are_refused(tmp_path):
    lab = np.zeros((2, 3, 3), np.int16)
    lab[0, 0, 0] = -4
    write_tiff(tmp_path / "n.tif", lab)
    with pytest.raises(NeurosegError, match="negative"):
        read_labels(tmp_path / "n.tif")


def test_write_tiff_checks_axes_and_scale(tmp_path):
    with pytest.raises(NeurosegError, match="axes"):
        write_tiff(tmp_path / "a.tif", np.zeros((2, 3, 4)), axes="CZYX")
    with pytest.raises(NeurosegError, match="scale"):
        write_tiff(tmp_path / "a.tif", np.zeros((2, 3, 4), np.uint8), scale=(1.0, 0.0, 1.0))
    assert not list(tmp_path.iterdir())
