"""Property tests: perfect predictions, relabelling invariance, split <-> merge."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_neuroseg.metrics import evaluate

from helpers import SHAPE, labels_from, stack_from, tube

SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def tube_sets(draw):
    """2-4 non-touching tubes at random rows/lengths (some touching the volume border)."""
    n = draw(st.integers(2, 4))
    rows = draw(st.permutations(list(range(4, 44, 9))))[:n]
    masks = []
    for y in rows:
        z = draw(st.integers(2, SHAPE[0] - 3))
        x0 = draw(st.integers(0, 40))
        x1 = draw(st.integers(x0 + 30, SHAPE[2]))
        masks.append(tube(z=z, y=y, x0=x0, x1=x1))
    return masks


@SETTINGS
@given(tube_sets(), st.booleans())
def test_perfect_prediction_scores_one(masks, partly):
    res = evaluate(stack_from(masks), labels_from(masks), partly=partly, min_size=0)
    assert res["avF1"] == 1.0 and res["tp"] == 1.0
    assert abs(res["C"] - 1.0) < 1e-6 and abs(res["S"] - 1.0) < 1e-6
    assert res["FS"] == 0 and res["FM"] == 0


@SETTINGS
@given(tube_sets(), st.data())
def test_relabelling_prediction_ids_changes_nothing(masks, data):
    # a prediction with errors: first tube cut in two, last tube missing, one merged pair
    pred_masks = [m.copy() for m in masks[:-1]]
    cut = masks[0].copy()
    cut[..., : np.nonzero(masks[0].any(axis=(0, 1)))[0].mean().astype(int)] = False
    pred_masks[0] = masks[0] & ~cut
    pred_masks.append(cut)
    n = len(pred_masks)
    new_ids = data.draw(st.lists(st.integers(1, 60000), min_size=n, max_size=n, unique=True))
    a = evaluate(stack_from(masks), labels_from(pred_masks), min_size=0)
    b = evaluate(stack_from(masks), labels_from(pred_masks, ids=new_ids, dtype=np.uint32),
                 min_size=0)
    if sorted(new_ids) == new_ids:  # same order -> identical official numbers
        assert a["official"] == b["official"]
    for key in ("avF1", "C", "S", "tp", "FS", "FM", "n_gt", "n_pred", "TP_05"):
        assert a[key] == b[key] or abs(a[key] - b[key]) < 1e-6, key
    mapping = dict(zip(range(1, n + 1), new_ids))
    assert sorted(mapping[p] for p in a["errors"]["false_positive"]) == \
        sorted(b["errors"]["false_positive"])
    assert a["errors"]["missed_gt"] == b["errors"]["missed_gt"]


@SETTINGS
@given(tube_sets(), st.integers(35, 65))
def test_split_and_merge_move_between_fs_and_fm(masks, cut_at):
    gt = stack_from(masks)
    a, b = masks[0], masks[1]
    left = a.copy()
    left[..., cut_at:] = False
    right = a & ~left
    if left.sum() < 9 * 12 or right.sum() < 9 * 12:
        return
    # split a into two predictions
    split = evaluate(gt, labels_from([left, right] + masks[1:]), min_size=0)
    # the same two tubes merged into one prediction instead
    merge = evaluate(gt, labels_from([a | b] + masks[2:]), min_size=0)
    assert (split["FS"], split["FM"]) == (1, 0)
    assert (merge["FS"], merge["FM"]) == (0, 1)
    assert split["errors"]["false_split"][0]["gt"] == 1
    assert merge["errors"]["false_merge"][0]["gts"] == [1, 2]
