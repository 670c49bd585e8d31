"""Zarr-backed editing (per chunk, crash-safe saves) and the FISBe overlap stack after edits."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

from napari_neuroseg import proofread as pr
from napari_neuroseg.proofread.chunked import ChunkedLabels, recover


def _volume():
    data = np.zeros((16, 20, 20), np.uint32)
    data[2:8, 2:10, 2:10] = 1
    data[2:8, 10:18, 2:10] = 2
    data[10:14, 3:17, 3:17] = 3
    return data


def _store(tmp_path, data, fmt=2, name="l.zarr"):
    z = zarr.open_array(str(tmp_path / name), mode="w", shape=data.shape, chunks=(8, 8, 8), dtype=data.dtype, zarr_format=fmt)
    z[:] = data
    return tmp_path / name


def _chunk_mtimes(path):
    return {
        os.path.relpath(os.path.join(r, f), path): os.stat(os.path.join(r, f)).st_mtime_ns
        for r, _, fs in os.walk(path)
        for f in fs
    }


@pytest.mark.parametrize("fmt", [2, 3])
def test_chunked_labels_edit_undo_and_save_per_chunk(tmp_path, fmt):
    data = _volume()
    path = _store(tmp_path, data, fmt)
    before = _chunk_mtimes(path)
    lab = ChunkedLabels.open(path)
    np.testing.assert_array_equal(np.asarray(lab), data)
    e = pr.merge(lab, [1, 2])
    ref = data.copy()
    ref[ref == 2] = 1
    np.testing.assert_array_equal(lab[...], ref)
    np.testing.assert_array_equal(zarr.open_array(str(path))[:], data)  # nothing saved yet
    # reads: basic slices with ints, and coordinate arrays, see the edits
    assert lab[5, 12, 5] == 1 and lab[5, 12].shape == (20,)
    np.testing.assert_array_equal(lab[(np.array([5, 12]), np.array([12, 5]), np.array([5, 5]))], ref[[5, 12], [12, 5], [5, 5]])
    n = lab.save()
    assert n == 4 and not lab.modified
    np.testing.assert_array_equal(zarr.open_array(str(path))[:], ref)
    after = _chunk_mtimes(path)
    # only chunks holding label 2 were rewritten (per-chunk save, the rest untouched)
    rewritten = {k for k in before if k in after and after[k] != before[k]}
    meta = zarr.open_array(str(path)).metadata
    touched = {meta.encode_chunk_key(c) for c in np.ndindex(2, 3, 3) if (data[tuple(slice(8 * i, 8 * i + 8) for i in c)] == 2).any()}
    assert rewritten and rewritten <= touched
    e.undo(lab)
    lab.save()
    np.testing.assert_array_equal(zarr.open_array(str(path))[:], data)
    assert not (tmp_path / ("l.zarr" + ".neuroseg-pending")).exists()


def test_chunk_that_becomes_empty_is_removed_and_reads_as_zero(tmp_path):
    data = _volume()
    path = _store(tmp_path, data, 3)
    lab = ChunkedLabels.open(path)
    pr.delete(lab, 3)
    lab.save()
    ref = data.copy()
    ref[ref == 3] = 0
    np.testing.assert_array_equal(zarr.open_array(str(path))[:], ref)


def test_crash_before_commit_leaves_saved_labels_intact(tmp_path, monkeypatch):
    data = _volume()
    path = _store(tmp_path, data)
    lab = ChunkedLabels.open(path)
    pr.merge(lab, [1, 2, 3])
    assert len(lab._dirty) >= 2
    written = []
    setitem = zarr.Array.__setitem__

    def crash_on_second_chunk(self, key, value):  # a crash while writing the pending chunk store
        if written:
            raise RuntimeError("simulated crash while writing the pending chunk store")
        written.append(key)
        setitem(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", crash_on_second_chunk)
    with pytest.raises(RuntimeError, match="simulated crash"):
        lab.save()
    monkeypatch.undo()
    assert len(written) == 1
    np.testing.assert_array_equal(zarr.open_array(str(path))[:], data)
    assert recover(path) == "discarded"
    np.testing.assert_array_equal(ChunkedLabels.open(path)[...], data)


def test_crash_after_commit_is_rolled_forward_on_open(tmp_path, monkeypatch):
    from napari_neuroseg.proofread import chunked

    data = _volume()
    path = _store(tmp_path, data)
    lab = ChunkedLabels.open(path)
    pr.merge(lab, [1, 2, 3])
    expected = lab[...]
    write_mark = chunked.atomic_write_json

    def crash_after_the_mark(*args, **kwargs):
        write_mark(*args, **kwargs)
        raise RuntimeError("simulated crash after the commit mark")

    monkeypatch.setattr(chunked, "atomic_write_json", crash_after_the_mark)
    with pytest.raises(RuntimeError, match="after the commit"):
        lab.save()
    monkeypatch.undo()
    reopened = ChunkedLabels.open(path)  # finishes the interrupted save
    np.testing.assert_array_equal(reopened[...], expected)
    np.testing.assert_array_equal(zarr.open_array(str(path))[:], expected)


def test_chunked_labels_with_index_and_history(tmp_path):
    data = _volume()
    lab = ChunkedLabels.open(_store(tmp_path, data))
    index = pr.LabelIndex.build(lab)
    assert index.bbox(3) == (slice(10, 14), slice(3, 17), slice(3, 17))
    hist = pr.EditHistory(index=index)
    hist.push(pr.split(lab, 3, [(11, 4, 4), (12, 16, 16)], index=index))
    hist.push(pr.relabel_sequential(lab, index=index))
    assert lab[11, 4, 4] != lab[12, 16, 16]
    hist.undo(lab)
    hist.undo(lab)
    np.testing.assert_array_equal(lab[...], data)


# -- FISBe -----------------------------------------------------------------------------------
def _fisbe_stack():
    """4 neurons; 1 and 3 overlap (hidden voxels of 3 under 1), 2 and 4 overlap."""
    stack = np.zeros((4, 10, 16, 16), np.uint8)
    stack[0, 2:8, 2:6, 2:12] = 1
    stack[1, 2:8, 8:12, 2:12] = 2
    stack[2, 4:6, 1:7, 8:10] = 3  # crosses neuron 1
    stack[3, 3:5, 10:14, 5:7] = 4  # crosses neuron 2
    return stack


def test_fisbe_round_trip_after_edits_and_undo(tmp_path):
    from napari_neuroseg.io import instances_to_labels, read_fisbe, write_fisbe
    from napari_neuroseg.proofread.fisbe import edited_instances, save_fisbe_edits

    stack = _fisbe_stack()
    path = tmp_path / "s.zarr"
    raw = np.random.default_rng(0).integers(0, 4000, (3,) + stack.shape[1:]).astype(np.uint16)
    write_fisbe(path, raw=raw, gt_instances=stack, dim_neurons=[2])
    sample = read_fisbe(path)
    labels, count = instances_to_labels(sample.gt_instances)
    assert (count > 1).any()
    hist = pr.EditHistory()
    hist.push(pr.merge(labels, [2, 4]))  # 4 merged into 2
    hist.push(pr.split(labels, 1, [(3, 3, 3), (6, 4, 11)], new_ids=[5]))
    out = edited_instances(labels, sample.gt_instances)
    # consistent: every channel i holds only {0, i+1}, flattening gives the edited labels back
    for i in range(out.shape[0]):
        assert set(np.unique(out[i])) <= {0, i + 1}
    fg = labels > 0
    np.testing.assert_array_equal(out[labels[fg].astype(int) - 1, np.nonzero(fg)[0], np.nonzero(fg)[1], np.nonzero(fg)[2]], labels[fg])
    flat_view = instances_to_labels(out)[0]
    # the view differs only where neuron 3 (hidden under neuron 1) was uncovered by the split
    assert set(np.unique(flat_view[flat_view != labels])) <= {3}
    assert not out[3].any()  # neuron 4 merged away, hidden voxels too
    assert out.shape[0] == 5 and out[4].any()  # the split's new neuron is a new channel
    np.testing.assert_array_equal(out[2], stack[2])  # neuron 3 was not edited: bit-identical
    # deleting neuron 1 keeps neuron 3 where it crossed neuron 1
    lab2 = labels.copy()
    pr.delete(lab2, 1)
    np.testing.assert_array_equal(edited_instances(lab2, sample.gt_instances)[2], stack[2])
    save_fisbe_edits(path, labels, sample.gt_instances, dim_neurons=sample.dim_neurons)
    again = read_fisbe(path)
    np.testing.assert_array_equal(np.asarray(again.gt_instances), out)
    np.testing.assert_array_equal(np.asarray(again.raw), raw)  # raw kept
    assert again.dim_neurons == [2]
    # undo everything: the saved layout is bit-identical to the original
    hist.undo(labels)
    hist.undo(labels)
    save_fisbe_edits(path, labels, sample.gt_instances, dim_neurons=sample.dim_neurons)
    final = np.asarray(read_fisbe(path).gt_instances)
    assert final.dtype == stack.dtype
    np.testing.assert_array_equal(final, stack)


@pytest.mark.realdata
def test_fisbe_real_sample_crop_round_trip(fisbe_real_dir):
    from napari_neuroseg.io import instances_to_labels

    from napari_neuroseg.proofread.fisbe import edited_instances

    gt = zarr.open_array(str(fisbe_real_dir / "gt" / "R14A02-20180905_65_A6.zarr" / "volumes" / "gt_instances"), mode="r")
    # a crop where neurons are present (taken from the centre of the first neuron's extent)
    ch0 = np.asarray(gt[0, ::8, ::8, ::8])
    zc, yc, xc = (np.argwhere(ch0).mean(0) * 8).astype(int)
    crop = np.asarray(gt[:, max(0, zc - 32) : zc + 32, max(0, yc - 64) : yc + 64, max(0, xc - 64) : xc + 64])
    labels, _ = instances_to_labels(crop)
    np.testing.assert_array_equal(edited_instances(labels, crop), crop)  # unedited: bit-identical
    ids = [int(v) for v in np.unique(labels) if v]
    e = pr.delete(labels, ids[0])
    out = edited_instances(labels, crop)
    assert not out[ids[0] - 1].any()
    keep = [i - 1 for i in range(1, crop.shape[0] + 1) if i != ids[0]]
    np.testing.assert_array_equal(out[keep], crop[keep])
    e.undo(labels)
    np.testing.assert_array_equal(edited_instances(labels, crop), crop)
