"""Property tests of the proofreading operations over their argument space (issue 16).

For every operation, any arguments (ids, starts, radii, boxes, seeds, new ids, locked sets) on
small label arrays of uint8/uint16/int32/uint64 with ids near the dtype limits: either the edit
applies and ``undo`` restores the array bit for bit (and ``redo`` gives the applied result
again), or it raises a :class:`NeurosegError` and the labels are untouched.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_neuroseg import proofread as pr
from napari_neuroseg.errors import NeurosegError

DTYPES = [np.uint8, np.uint16, np.int32, np.uint64]
SHAPE = (4, 6, 6)


@st.composite
def label_arrays(draw):
    dt = np.dtype(draw(st.sampled_from(DTYPES)))
    top = int(np.iinfo(dt).max)
    # ids: small ones and ones at the dtype's upper limit
    pool = draw(st.lists(st.one_of(st.integers(1, 6), st.integers(max(1, top - 3), top)), min_size=1, max_size=4, unique=True))
    seed = draw(st.integers(0, 2**32 - 1))
    background = draw(st.sampled_from([0.3, 0.6, 0.9]))
    rng = np.random.default_rng(seed)
    values = rng.choice(np.array(pool, dtype=dt), size=SHAPE)
    values[rng.random(SHAPE) < background] = 0
    return values


ids = st.one_of(st.integers(-3, 8), st.integers(2**8 - 3, 2**8 + 1), st.integers(2**63 - 2, 2**64 + 1))
small = st.integers(-2, 8)


def boxes():
    return st.tuples(*[st.tuples(small, small).map(lambda t: slice(*t)) for _ in SHAPE])


def _present(labels):
    return [int(v) for v in np.unique(labels) if v != 0]


def _check(labels, op):
    """Apply ``op``; exact undo/redo if it applied, untouched labels if it raised."""
    before = labels.copy()
    try:
        edit = op(labels)
    except NeurosegError:
        assert np.array_equal(labels, before), "raised after changing the labels"
        return
    after = labels.copy()
    edit.undo(labels)
    assert labels.dtype == before.dtype and np.array_equal(labels, before), f"undo not exact: {edit!r}"
    edit.redo(labels)
    assert np.array_equal(labels, after), f"redo differs: {edit!r}"
    edit.undo(labels)
    assert np.array_equal(labels, before)


COMMON = dict(max_examples=30)


@settings(**COMMON)
@given(label_arrays(), st.lists(ids, max_size=3), st.one_of(st.none(), ids), st.lists(ids, max_size=2))
def test_merge_and_delete(labels, which, target, locked):
    _check(labels, lambda a: pr.merge(a, which, target=target, locked=locked))
    _check(labels, lambda a: pr.delete(a, which, locked=locked))


@settings(**COMMON)
@given(label_arrays(), st.one_of(ids, st.integers(-10**6, 10**6)), st.lists(ids, max_size=3), st.booleans())
def test_relabel_sequential(labels, start, locked, use_index):
    index = pr.LabelIndex.build(labels) if use_index else None
    _check(labels, lambda a: pr.relabel_sequential(a, start=start, locked=locked, index=index))


@settings(**COMMON)
@given(label_arrays(), st.data())
def test_split_by_seeds(labels, data):
    present = _present(labels)
    label = data.draw(st.one_of(st.sampled_from(present), ids) if present else ids)
    coords = st.tuples(*[st.integers(-1, n) for n in SHAPE])
    if present and label in present:
        inside = [tuple(int(c) for c in p) for p in np.argwhere(labels == label)]
        coords = st.one_of(st.sampled_from(inside), coords)
    seeds = data.draw(st.lists(coords, min_size=0, max_size=3))
    new_ids = data.draw(st.one_of(st.none(), st.lists(ids, max_size=3)))
    locked = data.draw(st.lists(ids, max_size=2))
    _check(labels, lambda a: pr.split(a, label, seeds, locked=locked, new_ids=new_ids))
    _check(labels, lambda a: pr.split_connected_components(a, label, locked=locked, new_ids=new_ids,
                                                           connectivity=data.draw(st.sampled_from([6, 18, 26, 5]))))


@settings(**COMMON)
@given(label_arrays(), st.data(), st.one_of(st.integers(-3, 8), st.integers(10**5, 10**12)), st.booleans())
def test_dilate_erode_fill(labels, data, radius, into):
    present = _present(labels)
    label = data.draw(st.one_of(st.sampled_from(present), ids) if present else ids)
    locked = data.draw(st.lists(ids, max_size=2))
    _check(labels, lambda a: pr.dilate(a, label, radius=radius, into_labels=into, locked=locked))
    _check(labels, lambda a: pr.erode(a, label, radius=radius, locked=locked))
    _check(labels, lambda a: pr.fill_holes(a, label, into_labels=into, locked=locked))


@settings(**COMMON)
@given(label_arrays(), boxes(), ids, ids, st.one_of(st.none(), ids), st.lists(ids, max_size=2), st.booleans())
def test_take_over_and_paint(labels, box, a_id, b_id, new_id, locked, overwrite):
    _check(labels, lambda a: pr.take_over(a, None, a_id, b_id, bbox=box, locked=locked))
    _check(labels, lambda a: pr.new_label_from_mask(a, None, bbox=box, new_id=new_id, overwrite=overwrite, locked=locked))


@pytest.mark.parametrize("radius", [0, 1, 2, 3])
def test_edt_dilate_erode_equal_the_ball_morphology(radius):
    """The distance-transform dilation/erosion is the binary morphology with a Euclidean ball."""
    from scipy import ndimage

    rng = np.random.default_rng(radius)
    a = np.zeros((12, 14, 14), np.uint16)
    a[3:9, 4:11, 3:10] = 1
    a[rng.random(a.shape) < 0.05] = 0
    a[0:2, 0:3, 0:3] = 2
    grid = np.indices((2 * radius + 1,) * 3) - radius
    ball = (grid**2).sum(0) <= radius * radius
    d = a.copy()
    pr.dilate(d, 1, radius=radius)
    ref = ndimage.binary_dilation(a == 1, structure=ball) & (a == 0)
    assert np.array_equal(d == 1, (a == 1) | ref)
    e = a.copy()
    pr.erode(e, 1, radius=radius)
    assert np.array_equal(e == 1, ndimage.binary_erosion(a == 1, structure=ball, border_value=0))


def test_history_rejects_bad_limits_and_keeps_an_edit_that_cannot_be_undone():
    for kw in ({"max_steps": 0}, {"max_steps": -1}, {"max_bytes": -5}):
        with pytest.raises(NeurosegError):
            pr.EditHistory(**kw)
    a = np.zeros(SHAPE, np.uint16)
    a[1:3, 1:3, 1:3] = 1
    hist = pr.EditHistory()
    hist.push(pr.delete(a, 1))
    wrong = np.zeros((2, 2, 2), np.uint16)
    with pytest.raises(NeurosegError, match="does not fit"):
        hist.undo(wrong)
    assert not wrong.any() and hist.n_undo == 1
    hist.undo(a)
    assert int(a.sum()) == 8
