"""The FISBe layout: instance stack <-> labels, bit-identical round trips, real samples."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io import (
    detect_format,
    instances_to_labels,
    is_fisbe,
    labels_to_instances,
    list_keys,
    read_fisbe,
    read_image,
    read_labels,
    write_fisbe,
)

CROP = "fisbe/real_raw_crop/JRC_SS05008-20160318_24_B2_crop.zarr"


@st.composite
def instance_stacks(draw, max_n=5):
    """(N,Z,Y,X) uint8 stacks in FISBe form (channel i in {0, i+1}), overlaps likely."""
    n = draw(st.integers(0, max_n))
    shape = draw(st.tuples(st.integers(1, 5), st.integers(1, 7), st.integers(1, 7)))
    seed = draw(st.integers(0, 2**31 - 1))
    density = draw(st.floats(0.0, 0.6))
    rng = np.random.default_rng(seed)
    masks = rng.random((n,) + shape) < density
    ids = np.arange(1, n + 1, dtype=np.uint8).reshape((n, 1, 1, 1))
    return masks.astype(np.uint8) * ids


@settings(max_examples=15, deadline=None)
@given(stack=instance_stacks())
def test_instances_to_labels_keeps_lower_id_and_counts(stack):
    labels, count = instances_to_labels(stack)
    assert labels.dtype == np.uint32 and count.dtype == np.uint8
    assert labels.shape == stack.shape[1:] == count.shape
    fg = stack > 0
    np.testing.assert_array_equal(count, fg.sum(0))
    expected = np.zeros(stack.shape[1:], np.int64)
    for i in range(stack.shape[0] - 1, -1, -1):  # lower channels painted last win
        expected[fg[i]] = i + 1
    np.testing.assert_array_equal(labels, expected)


@settings(max_examples=15, deadline=None)
@given(stack=instance_stacks())
def test_labels_to_instances_restores_the_stack_bit_for_bit(stack):
    labels, _ = instances_to_labels(stack)
    back = labels_to_instances(labels, stack)
    assert back.dtype == stack.dtype and back.shape == stack.shape
    assert back.tobytes() == stack.tobytes()
    # without the original, overlaps cannot be known: each voxel belongs to its visible id only
    plain = labels_to_instances(labels)
    assert plain.shape[0] == int(labels.max())
    for i in range(plain.shape[0]):
        np.testing.assert_array_equal(plain[i], np.where(labels == i + 1, i + 1, 0))


@settings(max_examples=15, deadline=None)
@given(stack=instance_stacks(), dim=st.lists(st.integers(1, 5), max_size=3, unique=True))
def test_fisbe_write_read_round_trip_is_bit_identical(tmp_path_factory, stack, dim):
    dim = sorted(d for d in dim if d <= stack.shape[0])
    raw = np.random.default_rng(0).integers(0, 4096, (3,) + stack.shape[1:], dtype=np.uint16)
    path = tmp_path_factory.mktemp("f") / "s.zarr"
    labels, _ = instances_to_labels(stack)
    write_fisbe(path, raw=raw, gt_instances=labels_to_instances(labels, stack), dim_neurons=dim)
    assert is_fisbe(path) and detect_format(path) == "fisbe"
    s = read_fisbe(path)
    assert s.gt_instances.dtype == np.uint8 and s.raw.dtype == np.uint16
    assert s.gt_instances.tobytes() == stack.tobytes()
    assert s.raw.tobytes() == raw.tobytes()
    assert s.dim_neurons == dim
    meta = json.loads((path / "volumes" / "gt_instances" / ".zarray").read_text())
    assert meta["zarr_format"] == 2 and meta["compressor"]["cname"] == "zstd"
    assert json.loads((path / "volumes" / "gt_instances" / ".zattrs").read_text())["dim_neurons"] == dim


def test_edits_change_only_edited_voxels_and_keep_other_overlaps():
    stack = np.zeros((3, 1, 4, 6), np.uint8)
    stack[0, 0, 1, 0:4] = 1
    stack[1, 0, 1, 2:6] = 2  # overlaps channel 0 at x=2,3 (hidden under id 1)
    stack[2, 0, 3, :] = 3
    labels, count = instances_to_labels(stack)
    assert labels[0, 1].tolist() == [1, 1, 1, 1, 2, 2] and count[0, 1].tolist() == [1, 1, 2, 2, 1, 1]
    edited = labels.copy()
    edited[0, 1, 3] = 0  # erase one overlap voxel: all channels cleared there
    edited[0, 0, 0] = 5  # paint a new id: new channels are added up to 5
    out = labels_to_instances(edited, stack)
    assert out.shape == (5, 1, 4, 6)
    assert out[:, 0, 1, 3].tolist() == [0, 0, 0, 0, 0]
    assert out[:, 0, 1, 2].tolist() == [1, 2, 0, 0, 0]  # untouched overlap survives
    assert out[4, 0, 0, 0] == 5 and out[3].max() == 0
    np.testing.assert_array_equal(out[2], stack[2])
    # deleting id 2 everywhere it is visible also removes its hidden voxels
    gone = labels.copy()
    gone[gone == 2] = 0
    out = labels_to_instances(gone, stack)
    assert out[1].max() == 0 and out[0].tobytes() == stack[0].tobytes()


def test_instance_conversions_work_on_lazy_arrays():
    stack = np.zeros((2, 2, 3, 3), np.uint8)
    stack[0, :, 0] = 1
    stack[1, :, :2] = 2
    lazy = da.from_array(stack, chunks=(1, 1, 3, 3))
    labels, count = instances_to_labels(lazy)
    np.testing.assert_array_equal(labels, instances_to_labels(stack)[0])
    assert labels_to_instances(labels, lazy).tobytes() == stack.tobytes()


def test_write_fisbe_keeps_existing_arrays_when_updating_one(tmp_path):
    raw = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5)
    gt = np.zeros((2, 3, 4, 5), np.uint8)
    gt[0, 0] = 1
    gt[1, 1] = 2
    path = tmp_path / "s.zarr"
    write_fisbe(path, raw=raw, gt_instances=gt, dim_neurons=[2])
    new_gt = gt.copy()
    new_gt[0, 2] = 1
    write_fisbe(path, gt_instances=new_gt)
    s = read_fisbe(path)
    assert s.raw.tobytes() == raw.tobytes()
    assert s.gt_instances.tobytes() == new_gt.tobytes()
    assert s.dim_neurons == [2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]  # no temp leftovers


def test_write_fisbe_converts_bool_masks_and_rejects_bad_input(tmp_path):
    masks = np.zeros((2, 2, 2, 2), bool)
    masks[0, 0, 0, 0] = masks[1, 0, 0, 0] = True
    write_fisbe(tmp_path / "b.zarr", gt_instances=masks)
    assert read_fisbe(tmp_path / "b.zarr").gt_instances[:, 0, 0, 0].tolist() == [1, 2]
    bad = tmp_path / "bad.zarr"
    wrong_ids = np.zeros((2, 2, 2, 2), np.uint8)
    wrong_ids[1, 0, 0, 0] = 7
    with pytest.raises(NeurosegError, match=r"channel 1 holds values \[7\]"):
        write_fisbe(bad, gt_instances=wrong_ids)
    with pytest.raises(NeurosegError, match="labels_to_instances"):
        write_fisbe(bad, gt_instances=np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(NeurosegError, match="labels must be integers"):
        write_fisbe(bad, gt_instances=np.zeros((1, 2, 2, 2), np.float32))
    with pytest.raises(NeurosegError, match="different Z, Y, X shapes"):
        write_fisbe(bad, raw=np.zeros((3, 2, 2, 2), np.uint16), gt_instances=np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(NeurosegError, match="raw must be"):
        write_fisbe(bad, raw=np.zeros((2, 2, 2), np.uint16))
    with pytest.raises(NeurosegError, match="dim_neurons"):
        write_fisbe(bad, gt_instances=np.zeros((1, 2, 2, 2), np.uint8), dim_neurons=[2])
    with pytest.raises(NeurosegError, match="nothing to write"):
        write_fisbe(bad)
    assert not bad.exists()
    with pytest.raises(NeurosegError, match="shape"):
        labels_to_instances(np.zeros((2, 2, 2), np.uint8), np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(NeurosegError, match="labels must be integers"):
        labels_to_instances(np.zeros((2, 2, 2), np.float64))


def test_zarr_group_that_is_not_fisbe_lists_keys(tmp_path):
    root = zarr.open_group(str(tmp_path / "x.zarr"), mode="w", zarr_format=2)
    root.create_array("volumes/other", shape=(2, 2), dtype="uint8")
    with pytest.raises(NeurosegError, match=r"not a FISBe sample.*volumes/other"):
        read_fisbe(tmp_path / "x.zarr")


@pytest.mark.realdata
def test_real_raw_crop(shared_dir):
    path = shared_dir / CROP
    s = read_fisbe(path)
    assert s.raw.shape == (3, 50, 50, 50) and s.raw.dtype == np.uint16
    assert s.gt_instances.shape == (3, 50, 50, 50) and s.gt_instances.dtype == np.uint8
    for i, ch in enumerate(s.gt_instances):
        assert set(np.unique(ch).tolist()) == {0, i + 1}
    labels, count = instances_to_labels(s.gt_instances)
    assert count.max() >= 2  # the crop really has overlaps
    assert labels_to_instances(labels, s.gt_instances).tobytes() == s.gt_instances.tobytes()
    vol = read_image(path)
    assert vol.axes == "CZYX" and vol.meta["format"] == "fisbe"
    assert read_labels(path).shape == (3, 50, 50, 50)
    assert list_keys(path) == ["volumes/gt_instances", "volumes/raw"]


@pytest.mark.realdata
@pytest.mark.parametrize(
    "name, shape, dim",
    [("R14A02-20180905_65_A6", (7, 385, 685, 686), [3, 5, 7]),
     ("VT011145-20171222_63_I2", (8, 425, 685, 685), [5, 6, 8])],
)
def test_real_ground_truth_read_lazily(fisbe_real_dir, name, shape, dim):
    path = fisbe_real_dir / "gt" / f"{name}.zarr"
    s = read_fisbe(path, lazy=True)
    assert s.raw is None and isinstance(s.gt_instances, da.Array)
    assert s.gt_instances.shape == shape and s.gt_instances.dtype == np.uint8
    assert s.dim_neurons == dim
    block = np.asarray(s.gt_instances[:, 160:224, 320:448, 320:448])  # ~7 MB, not 1.3 GB
    assert block.any()
    for i, ch in enumerate(block):
        assert set(np.unique(ch).tolist()) <= {0, i + 1}
    labels, _ = instances_to_labels(block)
    assert labels_to_instances(labels, block).tobytes() == block.tobytes()
    lazy = read_labels(path, lazy=True)
    assert isinstance(lazy, da.Array) and lazy.shape == shape


@settings(max_examples=15, deadline=None)
@given(stack=instance_stacks(), seed=st.integers(0, 2**16), n_edits=st.integers(0, 12),
       slab=st.sampled_from([1, 64, 1 << 30]), lazy=st.booleans())
def test_rebuilt_stack_flattens_to_the_edited_labels(stack, seed, n_edits, slab, lazy):
    """Whatever the edits, flattening the rebuilt stack gives the edited labels back, and every
    unedited voxel keeps its original values except in channels whose id was removed."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("napari_neuroseg.io.fisbe.SLAB_BYTES", slab)  # 1: one Z plane per slab
        _check_rebuild(stack, seed, n_edits, lazy)


def _check_rebuild(stack, seed, n_edits, lazy):
    labels, _ = instances_to_labels(stack)
    rng = np.random.default_rng(seed)
    edited = labels.copy()
    n = stack.shape[0]
    for _ in range(n_edits):
        z, y, x = (rng.integers(0, s) for s in labels.shape)
        edited[z, y, x] = rng.integers(0, n + 3)
    original = da.from_array(stack, chunks=(1, 1, 4, 4)) if lazy and stack.size else stack
    out = labels_to_instances(edited, original)
    np.testing.assert_array_equal(instances_to_labels(out)[0], edited)
    same = edited == labels
    gone = {i for i in range(1, n + 1) if (labels == i).any() and not (edited == i).any()}
    for i in range(n):
        if i + 1 in gone:
            assert out[i].max() == 0
        else:
            np.testing.assert_array_equal(out[i][same], stack[i][same])


@pytest.mark.parametrize("key, says", [
    ("volumes/raw", "FISBe raw is (channels, Z, Y, X)"),
    ("volumes/gt_instances", "FISBe instances are (N, Z, Y, X)"),
])
def test_read_fisbe_refuses_an_array_of_the_wrong_rank(tmp_path, key, says):
    path = tmp_path / "sample.zarr"
    zarr.open_group(str(path), mode="w").create_array(key, shape=(4, 5, 6), dtype="uint8")
    with pytest.raises(NeurosegError, match=r"has shape \(4, 5, 6\)") as err:
        read_fisbe(path)
    assert says in str(err.value) and "4D array" in str(err.value) and str(path) in str(err.value)
