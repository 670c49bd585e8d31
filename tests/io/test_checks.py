"""Validation helpers other areas call: require_3d, shapes, label dtypes, format detection."""

from __future__ import annotations

import numpy as np
import pytest

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io import (
    Volume,
    as_label_array,
    detect_format,
    read_image,
    require_3d,
    require_same_shape,
    write_tiff,
)


def test_require_3d_accepts_volumes_and_refuses_planes(tmp_path):
    require_3d(np.zeros((2, 3, 4)))
    require_3d(np.zeros((3, 2, 3, 4)), allow_channels=True)
    with pytest.raises(NeurosegError, match=r"not 3D .*shape \(3, 4\)") as err:
        require_3d(np.zeros((3, 4)), tmp_path / "plane.tif")
    assert "plane.tif" in str(err.value) and "single 2D plane" in str(err.value)
    with pytest.raises(NeurosegError, match="singleton"):
        require_3d(np.zeros((1, 2, 3, 4)))
    write_tiff(tmp_path / "p.tif", np.zeros((5, 6), np.uint8))
    vol = read_image(tmp_path / "p.tif")
    assert vol.axes == "YX"
    with pytest.raises(NeurosegError, match="axes YX"):
        require_3d(vol, tmp_path / "p.tif")
    require_3d(Volume(np.zeros((2, 3, 4, 5)), "CZYX", (1, 1, 1), "v"), allow_channels=True)


def test_require_same_shape():
    require_same_shape(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)))
    with pytest.raises(NeurosegError, match=r"image has shape \(2, 3, 4\) but the labels has shape \(2, 3, 5\)"):
        require_same_shape(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), path="x.tif")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64])
def test_label_dtypes_refused(dtype):
    with pytest.raises(NeurosegError, match="labels must be integers"):
        as_label_array(np.zeros((2, 2, 2), dtype))


def test_label_bool_and_negative():
    assert as_label_array(np.ones((2, 2, 2), bool)).dtype == np.uint8
    with pytest.raises(NeurosegError, match="negative ids"):
        as_label_array(np.full((2, 2, 2), -1, np.int32))
    assert as_label_array(np.zeros((2, 2, 2), np.int64)).dtype == np.int64


def test_detect_format(tmp_path):
    write_tiff(tmp_path / "noext", np.zeros((2, 2, 2), np.uint8))
    assert detect_format(tmp_path / "noext") == "tiff"  # magic bytes
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(NeurosegError, match="unsupported file type .png"):
        detect_format(tmp_path / "x.png")
    np.save(tmp_path / "a.npy", np.arange(24, dtype=np.uint16).reshape(2, 3, 4))
    assert detect_format(tmp_path / "a.npy") == "npy"
    vol = read_image(tmp_path / "a.npy", lazy=True)
    assert vol.axes == "ZYX" and int(vol.data.sum().compute()) == sum(range(24))
