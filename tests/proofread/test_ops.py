"""Proofreading operations: each against a full-volume reference, undo/redo bit for bit, locks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from napari_neuroseg import proofread as pr
from napari_neuroseg.errors import NeurosegError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def label_volumes(draw, max_id: int = 6):
    """Blocky random label volumes (coarse grid upsampled) with a few ids."""
    shape = tuple(draw(st.integers(2, 5)) for _ in range(3))
    coarse = np.array(
        draw(st.lists(st.integers(0, max_id), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    ).reshape(shape)
    f = draw(st.integers(1, 3))
    return np.ascontiguousarray(coarse.repeat(f, 0).repeat(f, 1).repeat(f, 2).astype(np.uint32))


def present(labels):
    return [int(v) for v in np.unique(labels) if v]


@SETTINGS
@given(label_volumes(), st.data())
def test_merge_then_undo_restores_bit_for_bit(labels, data):
    ids = present(labels)
    if len(ids) < 2:
        return
    pick = data.draw(st.lists(st.sampled_from(ids), min_size=2, max_size=4, unique=True))
    original = labels.copy()
    expected = labels.copy()
    expected[np.isin(labels, pick)] = pick[0]
    use_index = data.draw(st.booleans())
    index = pr.LabelIndex.build(labels) if use_index else None
    e = pr.merge(labels, pick, index=index)
    np.testing.assert_array_equal(labels, expected)
    assert e.n_changed == int(np.isin(original, pick[1:]).sum())
    e.undo(labels)
    np.testing.assert_array_equal(labels, original)
    assert labels.dtype == original.dtype
    e.redo(labels)
    np.testing.assert_array_equal(labels, expected)


@SETTINGS
@given(label_volumes(max_id=3), st.data(), st.sampled_from(["distance", "intensity", "boundary"]))
def test_split_seeds_end_in_different_labels(labels, data, method):
    ids = present(labels)
    if not ids:
        return
    lid = data.draw(st.sampled_from(ids))
    coords = np.argwhere(labels == lid)
    if len(coords) < 2:
        return
    k = data.draw(st.integers(2, min(4, len(coords))))
    rows = data.draw(st.lists(st.integers(0, len(coords) - 1), min_size=k, max_size=k, unique=True))
    seeds = [tuple(coords[r]) for r in rows]
    image = np.random.default_rng(0).random(labels.shape).astype(np.float32)
    original = labels.copy()
    e = pr.split(labels, lid, seeds, image=image, method=method)
    got = [int(labels[s]) for s in seeds]
    assert len(set(got)) == len(seeds)
    assert got[0] == lid
    # only the split label's voxels changed, and they stay labelled
    changed = labels != original
    assert np.all(original[changed] == lid)
    assert np.all(labels[original == lid] > 0)
    np.testing.assert_array_equal(labels[original != lid], original[original != lid])
    e.undo(labels)
    np.testing.assert_array_equal(labels, original)


OPS = ["merge", "delete", "split_cc", "fill", "dilate", "erode", "new", "take_over", "relabel", "split"]


@SETTINGS
@given(label_volumes(max_id=4), st.data())
def test_locked_labels_never_change(labels, data):
    ids = present(labels)
    if len(ids) < 2:
        return
    locked = data.draw(st.lists(st.sampled_from(ids), min_size=1, max_size=2, unique=True))
    locked_mask = np.isin(labels, locked)
    locked_before = labels[locked_mask].copy()
    index = pr.LabelIndex.build(labels)
    for _ in range(6):
        op = data.draw(st.sampled_from(OPS))
        cur = present(labels)
        a = data.draw(st.sampled_from(cur))
        b = data.draw(st.sampled_from(cur))
        try:
            if op == "merge":
                pr.merge(labels, [a, b], locked=locked, index=index)
            elif op == "delete":
                pr.delete(labels, a, locked=locked, index=index)
            elif op == "split_cc":
                pr.split_connected_components(labels, a, locked=locked, index=index)
            elif op == "fill":
                pr.fill_holes(labels, a, into_labels=True, locked=locked, index=index)
            elif op == "dilate":
                pr.dilate(labels, a, into_labels=data.draw(st.booleans()), locked=locked, index=index)
            elif op == "erode":
                pr.erode(labels, a, locked=locked, index=index)
            elif op == "new":
                pr.new_label_from_mask(labels, np.ones(labels.shape, bool), locked=locked, index=index)
            elif op == "take_over":
                pr.take_over(labels, np.ones(labels.shape, bool), a, b, locked=locked, index=index)
            elif op == "relabel":
                pr.relabel_sequential(labels, locked=locked, index=index)
            elif op == "split":
                coords = np.argwhere(labels == a)
                if len(coords) >= 2:
                    pr.split(labels, a, [tuple(coords[0]), tuple(coords[-1])], locked=locked, index=index)
        except NeurosegError as err:
            assert "locked" in str(err) or "not in the label" in str(err)
        np.testing.assert_array_equal(labels[locked_mask], locked_before)


def test_locked_operations_raise():
    labels = np.zeros((4, 6, 6), np.uint32)
    labels[:, :3] = 1
    labels[:, 3:] = 2
    for fn in (
        lambda: pr.merge(labels, [1, 2], locked=[2]),
        lambda: pr.merge(labels, [1, 2], locked=[1]),
        lambda: pr.delete(labels, 2, locked=[2]),
        lambda: pr.split(labels, 1, [(0, 0, 0), (3, 2, 5)], locked=[1]),
        lambda: pr.take_over(labels, np.ones(labels.shape, bool), 1, 2, locked=[2]),
    ):
        with pytest.raises(NeurosegError, match="locked"):
            fn()
    assert labels[:, :3].min() == 1 and labels[:, 3:].min() == 2


@SETTINGS
@given(label_volumes(), st.data())
def test_ops_match_full_volume_references(labels, data):
    ids = present(labels)
    if not ids:
        return
    a = data.draw(st.sampled_from(ids))
    original = labels.copy()
    op = data.draw(st.sampled_from(["delete", "fill", "dilate", "erode", "split_cc", "relabel", "take_over", "new"]))
    ref = original.copy()
    m = original == a
    if op == "delete":
        ref[m] = 0
        e = pr.delete(labels, a)
    elif op == "fill":
        ref[ndimage.binary_fill_holes(m) & (original == 0)] = a
        e = pr.fill_holes(labels, a)
    elif op == "dilate":
        r = data.draw(st.integers(1, 2))
        ball = pr.ops._ball(3, r)
        ref[ndimage.binary_dilation(m, ball) & (original == 0)] = a
        e = pr.dilate(labels, a, radius=r)
    elif op == "erode":
        ref[m & ~ndimage.binary_erosion(m, pr.ops._ball(3, 1), border_value=0)] = 0
        e = pr.erode(labels, a)
    elif op == "split_cc":
        e = pr.split_connected_components(labels, a)
        import cc3d

        cc, n = cc3d.connected_components(m, connectivity=26, return_N=True)
        # same partition: each component is exactly one new label, all distinct
        got = {int(labels[cc == c][0]) for c in range(1, n + 1)}
        assert len(got) == n and a in got
        for c in range(1, n + 1):
            assert len(np.unique(labels[cc == c])) == 1
        ref = labels.copy()
    elif op == "relabel":
        from skimage.segmentation import relabel_sequential

        ref = relabel_sequential(original)[0]
        e = pr.relabel_sequential(labels)
        assert e.nbytes <= 16 * len(ids)
    elif op == "take_over":
        b = data.draw(st.sampled_from(ids + [0]))
        half = np.zeros(labels.shape, bool)
        half[: labels.shape[0] // 2 + 1] = True
        ref[half & m] = b
        e = pr.take_over(labels, half, a, b)
    else:  # new label from a painted region, over background only
        region = np.zeros(labels.shape, bool)
        region[:, : labels.shape[1] // 2 + 1] = True
        new = int(original.max()) + 1
        ref[region & (original == 0)] = new
        e = pr.new_label_from_mask(labels, region, overwrite=False)
        assert e.info["new_id"] == new
    np.testing.assert_array_equal(labels, ref)
    e.undo(labels)
    np.testing.assert_array_equal(labels, original)
    e.redo(labels)
    np.testing.assert_array_equal(labels, ref)


def test_edit_storage_forms_and_memory():
    labels = np.zeros((40, 40, 40), np.uint32)
    labels[5:35, 5:35, 5:35] = 1
    labels[10, 10, 10] = 2  # sparse: flat indices
    e = pr.merge(labels, [3, 2], target=3)
    assert e.parts[0].where_kind == "all" and e.n_changed == 1
    labels[10, 10, 10] = 2
    labels[30, 30, 30] = 2
    e = pr.merge(labels, [3, 2])
    assert e.parts[0].where_kind == "flat" and e.nbytes < 64
    # a dense change inside a big box: packed bits, < 1 bit per bbox voxel + values
    e = pr.delete(labels, 1)
    assert e.parts[0].where_kind in ("bits", "all")
    assert e.nbytes <= 30**3 // 8 + 16
    original = np.zeros_like(labels)
    original[5:35, 5:35, 5:35] = 1
    original[10, 10, 10] = original[30, 30, 30] = 3
    e.undo(labels)
    np.testing.assert_array_equal(labels, original)


def test_history_undo_redo_and_memory_limits():
    rng = np.random.default_rng(0)
    labels = rng.integers(1, 20, (10, 12, 12)).astype(np.uint32)
    states = [labels.copy()]
    index = pr.LabelIndex.build(labels)
    hist = pr.EditHistory(index=index)
    for a, b in [(1, 2), (3, 4), (5, 6)]:
        hist.push(pr.merge(labels, [a, b], index=index))
        states.append(labels.copy())
    assert hist.n_undo == 3 and hist.nbytes > 0
    for s in reversed(states[:-1]):
        hist.undo(labels)
        np.testing.assert_array_equal(labels, s)
    assert hist.undo(labels) is None
    hist.redo(labels)
    np.testing.assert_array_equal(labels, states[1])
    hist.push(pr.delete(labels, 7, index=index))  # a new edit clears the redo stack
    assert not hist.can_redo
    small = pr.EditHistory(max_steps=2)
    for a in (8, 9, 10):
        small.push(pr.delete(labels, a))
    assert small.n_undo == 2
    tiny = pr.EditHistory(max_bytes=1)
    for a in (11, 12):
        tiny.push(pr.delete(labels, a))
    assert tiny.n_undo == 1  # the newest is always kept


@SETTINGS
@given(label_volumes(), st.data())
def test_index_boxes_stay_supersets_through_edits_and_undo(labels, data):
    index = pr.LabelIndex.build(labels)
    for v in present(labels):
        assert index.bbox(v) == pr.find_bbox(labels, v)
    hist = pr.EditHistory(index=index)
    for _ in range(4):
        cur = present(labels)
        if len(cur) < 2:
            break
        a, b = data.draw(st.sampled_from(cur)), data.draw(st.sampled_from(cur))
        if data.draw(st.booleans()):
            hist.push(pr.merge(labels, [a, b], index=index))
        else:
            hist.push(pr.split_connected_components(labels, a, index=index))
        if data.draw(st.booleans()):
            hist.undo(labels)
    for v in present(labels):
        box = index.bbox(v)
        tight = pr.find_bbox(labels, v)
        assert all(b.start <= t.start and t.stop <= b.stop for b, t in zip(box, tight))
        assert index.next_id() > v


def test_split_errors_name_the_fix():
    labels = np.zeros((5, 5, 5), np.uint32)
    labels[1:4, 1:4, 1:4] = 1
    with pytest.raises(NeurosegError, match="at least 2 seeds"):
        pr.split(labels, 1, [(1, 1, 1)])
    with pytest.raises(NeurosegError, match="not on label"):
        pr.split(labels, 1, [(1, 1, 1), (0, 0, 0)])
    with pytest.raises(NeurosegError, match="same voxel"):
        pr.split(labels, 1, [(1, 1, 1), (1, 1, 1)])
    with pytest.raises(NeurosegError, match="needs an image"):
        pr.split(labels, 1, [(1, 1, 1), (3, 3, 3)], method="intensity")
    with pytest.raises(NeurosegError, match="not in the label array"):
        pr.split(labels, 9, [(1, 1, 1), (3, 3, 3)])
    small = labels.astype(np.uint8)
    small[0, 0, 0] = 255
    with pytest.raises(NeurosegError, match="does not fit"):
        pr.split(small, 1, [(1, 1, 1), (3, 3, 3)])


def test_distance_split_cuts_at_the_neck_and_shares_a_convex_blob():
    from skimage.morphology import ball

    labels = np.zeros((20, 20, 44), np.uint32)
    labels[1:20, 1:20, 1:20][ball(9).astype(bool)] = 1
    labels[1:20, 1:20, 22:41][ball(9).astype(bool)] = 1
    labels[8:12, 8:12, 15:27] = 1  # a thin neck joins two balls
    pr.split(labels, 1, [(10, 10, 6), (10, 10, 37)], new_ids=[2])  # seeds off-centre
    assert set(np.unique(labels[:, :, :19])) == {0, 1} and set(np.unique(labels[:, :, 24:])) == {0, 2}
    box = np.zeros((10, 10, 30), np.uint32)
    box[1:9, 1:9, 1:29] = 4
    pr.split(box, 4, [(4, 4, 3), (4, 4, 12)], new_ids=[5])  # both seeds in one half
    sizes = np.bincount(box.reshape(-1))[[4, 5]]
    assert sizes.min() >= 0.2 * sizes.sum()  # split near the bisector (x = 7.5), not a sliver


def test_split_follows_the_intensity_valley():
    labels = np.zeros((1, 8, 20), np.uint32)
    labels[0, 2:6, 1:19] = 5
    image = np.ones(labels.shape, np.float32)
    image[..., 14] = 0.0  # a dark valley off-centre: the cut must follow it
    pr.split(labels, 5, [(0, 3, 2), (0, 3, 17)], image=image, method="intensity", new_ids=[9])
    assert set(np.unique(labels[0, 2:6, 1:14])) == {5}
    assert set(np.unique(labels[0, 2:6, 15:19])) == {9}
    # image with a channel axis is summed
    labels2 = np.zeros((1, 8, 20), np.uint32)
    labels2[0, 2:6, 1:19] = 5
    pr.split(labels2, 5, [(0, 3, 2), (0, 3, 17)], image=np.stack([image, image]), method="intensity")
    assert labels2[0, 3, 17] == 6 and labels2[0, 3, 12] == 5


def test_ops_on_zarr_arrays(tmp_path):
    import zarr
    data = np.zeros((16, 20, 20), np.uint32)
    data[2:8, 2:10, 2:10] = 1
    data[2:8, 10:18, 2:10] = 2
    data[10:14, 3:17, 3:17] = 3
    z = zarr.open_array(str(tmp_path / "l.zarr"), mode="w", shape=data.shape, chunks=(8, 8, 8), dtype="uint32")
    z[:] = data
    e = pr.merge(z, [1, 2])
    ref = data.copy()
    ref[ref == 2] = 1
    np.testing.assert_array_equal(z[:], ref)
    e2 = pr.split(z, 3, [(11, 4, 4), (12, 16, 16)])
    assert z[11, 4, 4] != z[12, 16, 16]
    r = pr.relabel_sequential(z)
    assert set(np.unique(z[:])) == {0, 1, 2, 3}
    r.undo(z)
    e2.undo(z)
    e.undo(z)
    np.testing.assert_array_equal(z[:], data)
