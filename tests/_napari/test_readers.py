"""Every reader opened in a real viewer (``viewer.open(path, plugin="napari-neuroseg")``)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from napari_neuroseg import io
from napari_neuroseg._napari import readers

PLUGIN = "napari-neuroseg"
pytestmark = pytest.mark.gui


def test_tiff_image_and_labels(viewer, tmp_path, small_volumes, by_name):
    io.write_tiff(tmp_path / "cells.tif", small_volumes["image"], scale=(2.0, 0.5, 0.5))
    io.write_tiff(tmp_path / "cells_labels.tiff", small_volumes["labels"])
    viewer.open(str(tmp_path / "cells.tif"), plugin=PLUGIN)
    viewer.open(str(tmp_path / "cells_labels.tiff"), plugin=PLUGIN)
    image = by_name(viewer, "cells")
    labels = by_name(viewer, "cells_labels")
    assert image.__class__.__name__ == "Image" and labels.__class__.__name__ == "Labels"
    np.testing.assert_array_equal(np.asarray(image.data), small_volumes["image"])
    np.testing.assert_array_equal(np.asarray(labels.data), small_volumes["labels"])
    np.testing.assert_allclose(image.scale, (2.0, 0.5, 0.5))


def test_tiff_multichannel_imagej(viewer, tmp_path):
    data = np.random.default_rng(1).integers(0, 255, (5, 3, 16, 16)).astype(np.uint8)  # ZCYX
    tifffile.imwrite(tmp_path / "multi.tif", data, imagej=True, metadata={"axes": "ZCYX", "spacing": 3.0},
                     resolution=(2.0, 2.0))
    layers = viewer.open(str(tmp_path / "multi.tif"), plugin=PLUGIN)
    assert len(layers) == 3
    for c, layer in enumerate(layers):
        np.testing.assert_array_equal(np.asarray(layer.data), data[:, c])
        assert layer.blending == "additive"
        np.testing.assert_allclose(layer.scale, (3.0, 0.5, 0.5))
    assert [ly.colormap.name for ly in layers] == ["red", "green", "blue"]


def test_ome_zarr_with_labels(viewer, tmp_path, small_volumes, by_name):
    path = tmp_path / "cells.ome.zarr"
    io.write_ome_zarr(path, small_volumes["image"], axes="ZYX", scale=(2.0, 1.0, 1.0),
                      labels=small_volumes["labels"])
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert {ly.__class__.__name__ for ly in layers} == {"Image", "Labels"}
    np.testing.assert_array_equal(np.asarray(by_name(viewer, "labels").data), small_volumes["labels"])
    np.testing.assert_allclose(layers[0].scale, (2.0, 1.0, 1.0))


def test_ome_zarr_multiscale(viewer, tmp_path, small_volumes):
    path = tmp_path / "pyr.ome.zarr"
    io.write_ome_zarr(path, small_volumes["image"], axes="ZYX", n_levels=3)
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    assert layer.multiscale and len(layer.data) == 3
    np.testing.assert_array_equal(np.asarray(layer.data[0]), small_volumes["image"])


def test_plain_zarr_group_opens_every_array(viewer, tmp_path, small_volumes, by_name):
    path = tmp_path / "group.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("raw", data=small_volumes["image"])
    root.create_array("segmentation", data=small_volumes["labels"])
    viewer.open(str(path), plugin=PLUGIN)
    assert by_name(viewer, "raw").__class__.__name__ == "Image"
    seg = by_name(viewer, "segmentation")
    assert seg.__class__.__name__ == "Labels"
    np.testing.assert_array_equal(np.asarray(seg.data), small_volumes["labels"])


def test_fisbe_layout(viewer, fisbe_small, by_name):
    layers = viewer.open(str(fisbe_small["path"]), plugin=PLUGIN)
    raws = [ly for ly in layers if ly.__class__.__name__ == "Image"]
    assert [ly.colormap.name for ly in raws] == ["red", "green", "blue"]
    assert all(ly.blending == "additive" for ly in raws)
    for c, ly in enumerate(raws):
        np.testing.assert_array_equal(np.asarray(ly.data), fisbe_small["raw"][c])
    inst = by_name(viewer, "instances")
    stack = fisbe_small["stack"]
    np.testing.assert_array_equal(inst.metadata["fisbe_instances"], stack)
    assert inst.metadata["fisbe_dim_neurons"] == fisbe_small["dim_neurons"]
    # one id per neuron; where neurons overlap the lower id is shown
    assert set(np.unique(inst.data)) - {0} == set(range(1, stack.shape[0] + 1))
    assert inst.data[5, 5, 5] == 1
    overlaps = by_name(viewer, "overlaps")
    np.testing.assert_array_equal(overlaps.data > 0, (stack > 0).sum(0) > 1)


def test_hdf5_datasets(viewer, tmp_path, small_volumes, by_name):
    path = tmp_path / "pred.hdf"
    with h5py.File(path, "w") as f:
        f["volumes/raw"] = small_volumes["image"]
        f["volumes/gmm_label_cleaned"] = small_volumes["labels"].astype(np.int32)
        f["volumes/raw"].attrs["resolution"] = [2.0, 1.0, 1.0]
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert len(layers) == 2
    pred = by_name(viewer, "gmm_label_cleaned")
    assert pred.__class__.__name__ == "Labels"
    np.testing.assert_array_equal(np.asarray(pred.data), small_volumes["labels"])
    raw = by_name(viewer, "volumes/raw")
    assert raw.__class__.__name__ == "Image"
    np.testing.assert_allclose(raw.scale, (2.0, 1.0, 1.0))


@pytest.mark.realdata
def test_real_fisbe_crop(viewer, shared_dir, by_name):
    path = shared_dir / "fisbe" / "real_raw_crop" / "JRC_SS05008-20160318_24_B2_crop.zarr"
    layers = viewer.open(str(path), plugin=PLUGIN)
    root = zarr.open_group(str(path), mode="r")
    raw, gt = root["volumes/raw"][...], root["volumes/gt_instances"][...]
    assert len(layers) >= 4
    np.testing.assert_array_equal(np.asarray(layers[0].data), raw[0])
    np.testing.assert_array_equal(by_name(viewer, "instances").metadata["fisbe_instances"], gt)


def test_readers_decline_other_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert readers.get_reader_tiff(str(tmp_path / "notes.txt")) is None
    assert readers.get_reader_tiff(str(tmp_path / "missing.tif")) is None
    assert readers.get_reader_zarr(str(tmp_path / "notes.txt")) is None
    assert readers.get_reader_zarr(str(tmp_path)) is None  # a plain folder
    assert readers.get_reader_hdf5(str(tmp_path / "missing.h5")) is None


def test_corrupt_tiff_raises_clear_error(viewer, tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00" + b"\x13" * 100)
    with pytest.raises(Exception, match="broken.tif"):
        viewer.open(str(bad), plugin=PLUGIN)
    assert len(viewer.layers) == 0


def test_corrupt_hdf5_raises_neuroseg_error(tmp_path):
    from napari_neuroseg.errors import NeurosegError

    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 10)
    reader = readers.get_reader_hdf5(str(bad))
    assert reader is not None
    with pytest.raises(NeurosegError, match="broken.h5"):
        reader(str(bad))


def test_large_volumes_stay_lazy(viewer, tmp_path, small_volumes, monkeypatch, by_name):
    """Above the in-memory limit a volume opens as a dask array (browsable, not loaded)."""
    import dask.array as da

    monkeypatch.setattr(readers, "EAGER_BYTES", 100)
    monkeypatch.setattr(readers, "EAGER_LABEL_BYTES", 100)
    path = tmp_path / "big.zarr"
    root = zarr.open_group(str(path), mode="w")
    root.create_array("raw", data=small_volumes["image"], chunks=(2, 10, 12))
    root.create_array("labels", data=small_volumes["labels"], chunks=(2, 10, 12))
    viewer.open(str(path), plugin=PLUGIN)
    raw, labels = by_name(viewer, "raw"), by_name(viewer, "labels")
    assert isinstance(raw.data, da.Array) and isinstance(labels.data, da.Array)
    np.testing.assert_array_equal(np.asarray(labels.data), small_volumes["labels"])
    lo, hi = raw.contrast_limits
    assert 0 <= lo < hi <= 2000  # from a subsample, without loading the volume


def test_empty_zarr_group_names_the_problem(tmp_path):
    from napari_neuroseg.errors import NeurosegError

    path = tmp_path / "empty.zarr"
    zarr.open_group(str(path), mode="w")
    reader = readers.get_reader_zarr(str(path))
    assert reader is not None
    with pytest.raises(NeurosegError, match="empty.zarr.*no image or label volume"):
        reader(str(path))
