"""Writers: round trips through ``viewer.layers.save(..., plugin="napari-neuroseg")``."""

from __future__ import annotations

import numpy as np
import pytest

from napari_neuroseg import io

PLUGIN = "napari-neuroseg"
pytestmark = pytest.mark.gui


def _save(viewer, path, *layers):
    viewer.layers.selection = set(layers)
    written = viewer.layers.save(str(path), selected=True, plugin=PLUGIN)
    assert written == [str(path)]
    return path


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".ome.zarr", ".zarr"])
def test_image_and_labels_round_trip(viewer, tmp_path, small_volumes, suffix):
    image = viewer.add_image(small_volumes["image"], name="img", scale=(3.0, 0.25, 0.25))
    labels = viewer.add_labels(small_volumes["labels"], name="seg", scale=(3.0, 0.25, 0.25))
    img_path = _save(viewer, tmp_path / f"img{suffix}", image)
    lab_path = _save(viewer, tmp_path / f"seg{suffix}", labels)
    vol = io.read_image(img_path)
    np.testing.assert_array_equal(vol.data, small_volumes["image"])
    np.testing.assert_allclose(vol.scale, (3.0, 0.25, 0.25))
    np.testing.assert_array_equal(io.read_labels(lab_path), small_volumes["labels"])
    # and back through the plugin's own reader
    (back,) = viewer.open(str(lab_path), plugin=PLUGIN)
    assert back.__class__.__name__ == "Labels"
    np.testing.assert_array_equal(np.asarray(back.data), small_volumes["labels"])
    np.testing.assert_allclose(back.scale, (3.0, 0.25, 0.25))


def test_fisbe_overlaps_survive_open_save(viewer, tmp_path, fisbe_small, by_name):
    viewer.open(str(fisbe_small["path"]), plugin=PLUGIN)
    inst = by_name(viewer, "instances")
    out = _save(viewer, tmp_path / "saved.zarr", inst)
    saved = io.read_fisbe(out)
    assert saved.gt_instances.dtype == fisbe_small["stack"].dtype
    np.testing.assert_array_equal(saved.gt_instances, fisbe_small["stack"])  # bit for bit
    assert saved.dim_neurons == fisbe_small["dim_neurons"]


def test_fisbe_edit_is_written_back(viewer, tmp_path, fisbe_small, by_name):
    viewer.open(str(fisbe_small["path"]), plugin=PLUGIN)
    inst = by_name(viewer, "instances")
    stack = fisbe_small["stack"]
    empty = np.argwhere((stack > 0).sum(0) == 0)[0]
    overlap = (5, 5, 5)  # neurons 1 and 2 overlap here (fixture)
    inst.data_setitem(tuple(np.array([[v] for v in empty])), 3)
    out = _save(viewer, tmp_path / "edited.zarr", inst)
    saved = io.read_fisbe(out).gt_instances
    expected = stack.copy()
    expected[(2, *empty)] = 3  # channel of id 3
    np.testing.assert_array_equal(saved, expected)
    assert saved[0][overlap] == 1 and saved[1][overlap] == 2  # untouched overlap kept


def test_fisbe_writer_raw_and_labels(viewer, tmp_path, fisbe_small, by_name):
    layers = viewer.open(str(fisbe_small["path"]), plugin=PLUGIN)
    raws = [ly for ly in layers if ly.__class__.__name__ == "Image"]
    inst = by_name(viewer, "instances")
    # save blue, red, green (in that selection order): channels come back in r, g, b order
    out = _save(viewer, tmp_path / "full.zarr", raws[2], raws[0], raws[1], inst)
    saved = io.read_fisbe(out)
    np.testing.assert_array_equal(saved.raw, fisbe_small["raw"])
    np.testing.assert_array_equal(saved.gt_instances, fisbe_small["stack"])


def test_plain_labels_to_fisbe_layout(tmp_path, small_volumes):
    from napari_neuroseg._napari.writers import write_fisbe

    path = tmp_path / "plain.zarr"
    write_fisbe(str(path), [(small_volumes["labels"], {"name": "seg", "scale": (1, 1, 1)}, "labels")])
    stack = io.read_fisbe(path).gt_instances
    ids = [i for i in np.unique(small_volumes["labels"]) if i]
    assert stack.shape[0] == max(ids)
    for i in ids:
        np.testing.assert_array_equal(stack[i - 1] > 0, small_volumes["labels"] == i)


def test_ome_zarr_suffix_forces_ome_for_fisbe_labels(viewer, tmp_path, fisbe_small, by_name):
    viewer.open(str(fisbe_small["path"]), plugin=PLUGIN)
    inst = by_name(viewer, "instances")
    out = _save(viewer, tmp_path / "flat.ome.zarr", inst)
    assert not io.is_fisbe(out)
    np.testing.assert_array_equal(io.read_labels(out), np.asarray(inst.data))


def test_saving_instances_in_place_keeps_raw(viewer, tmp_path, fisbe_small, by_name):
    import shutil

    path = tmp_path / "inplace.zarr"
    shutil.copytree(fisbe_small["path"], path)
    viewer.open(str(path), plugin=PLUGIN)
    inst = by_name(viewer, "instances")
    inst.data_setitem((np.array([0]), np.array([0]), np.array([0])), 1)
    _save(viewer, path, inst)
    saved = io.read_fisbe(path)
    np.testing.assert_array_equal(saved.raw, fisbe_small["raw"])
    assert saved.gt_instances[0, 0, 0, 0] == 1
    assert saved.dim_neurons == fisbe_small["dim_neurons"]
