"""Hand-made volumes whose metrics are known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.metrics import evaluate, evaluate_iter
from napari_neuroseg.runtime.progress import Progress

from helpers import SHAPE, labels_from, stack_from, three_tubes, tube


def test_perfect_prediction_scores_one():
    masks = three_tubes()
    res = evaluate(stack_from(masks), labels_from(masks))
    assert res["avF1"] == 1.0 and res["C"] == pytest.approx(1.0) and res["S"] == pytest.approx(1.0)
    assert res["tp"] == 1.0 and res["clDice_TP"] == pytest.approx(1.0)
    assert (res["FS"], res["FM"], res["n_gt"], res["n_pred"]) == (0, 0, 3, 3)
    assert all(r["f1"] == 1.0 for r in res["per_threshold"].values())
    assert res["errors"] == {"missed_gt": [], "false_positive": [], "false_merge": [],
                             "false_split": []}
    assert res["warnings"] == []


def test_gt_as_label_volume_equals_gt_as_stack():
    masks = three_tubes()
    pred = labels_from(masks[:2] + [tube(z=16, y=38, x1=60)], ids=[7, 9, 11])
    a = evaluate(stack_from(masks), pred, min_size=0)
    b = evaluate(labels_from(masks), pred, min_size=0)
    assert a["official"] == b["official"]
    assert a["errors"] == b["errors"]


def test_missed_gt_and_false_positive_completely_vs_partly():
    masks = three_tubes()
    extra = tube(z=20, y=44, x0=10, x1=120)  # lies in unlabelled background
    pred = labels_from([masks[0], masks[1], extra], ids=[5, 6, 40])
    full = evaluate(stack_from(masks), pred)
    assert full["errors"]["missed_gt"] == [3]
    assert full["errors"]["false_positive"] == [40]
    assert full["per_threshold"]["0.5"] == pytest.approx(
        {"tp": 2, "fp": 1, "fn": 1, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3,
         "ap": 4 / 9})
    part = evaluate(stack_from(masks), pred, partly=True)
    # partly labelled: a prediction lying mostly in unlabelled background is no false positive
    assert part["per_threshold"]["0.5"]["fp"] == 0
    assert part["errors"]["false_positive"] == []
    assert part["errors"]["ignored_background"] == [40]
    assert part["avF1"] == pytest.approx(2 * (1 * (2 / 3)) / (1 + 2 / 3))
    assert full["C"] == pytest.approx(2 / 3, abs=1e-6)


def test_split_counts_fs_and_merge_counts_fm():
    masks = [tube(y=8), tube(y=30)]
    gt = stack_from(masks)
    left, right = tube(y=8, x1=70), tube(y=8, x0=70)
    split = evaluate(gt, labels_from([left, right, masks[1]]), min_size=0)
    assert (split["FS"], split["FM"]) == (1, 0)
    assert split["errors"]["false_split"] == [{"gt": 1, "preds": [1, 2]}]
    merged = labels_from([masks[0] | masks[1]])
    merge = evaluate(gt, merged, min_size=0)
    assert (merge["FS"], merge["FM"]) == (0, 1)
    assert merge["errors"]["false_merge"] == [{"pred": 1, "gts": [1, 2]}]


def test_small_predictions_are_removed_like_the_official_preset():
    masks = three_tubes()
    small = tube(z=20, y=42, x0=10, x1=43, r=2)  # 25 * 33 = 825 voxels > 800: kept
    tiny = tube(z=20, y=42, x0=60, x1=92, r=2)  # 25 * 32 = 800 voxels: removed (<= 800)
    pred = labels_from(masks + [small, tiny], ids=[1, 2, 3, 8, 9])
    res = evaluate(stack_from(masks), pred)
    assert res["removed_small_pred_ids"] == [9]
    assert res["n_pred"] == 4 and 9 not in res["pred_ids"]
    assert res["errors"]["false_positive"] == [8]


def test_overlapping_gt_and_prediction_stacks():
    a = tube(y=20)
    b = np.zeros(SHAPE, bool)
    b[4:9, 5:40, 60:63] = True  # crosses tube a
    gt = stack_from([a, b])
    res = evaluate(gt, stack_from([a, b]), min_size=0)
    assert res["overlap"]["n"] == 2
    assert res["avF1"] == 1.0 and res["C"] == pytest.approx(1.0)
    assert (res["FS"], res["FM"]) == (0, 0)
    # label-volume prediction of the same: the overlap voxels belong to one id only
    res2 = evaluate(gt, labels_from([a, b & ~a]), min_size=0)
    assert res2["TP_05"] == 2


def test_evaluate_iter_yields_progress_and_returns_the_result():
    masks = three_tubes()
    gen = evaluate_iter(stack_from(masks), labels_from(masks))
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            res = stop.value
            break
    assert steps and all(isinstance(s, Progress) for s in steps)
    assert steps[-1].fraction == 1.0
    assert res["avF1"] == 1.0


def test_empty_prediction_is_well_defined():
    masks = three_tubes()
    res = evaluate(stack_from(masks), np.zeros(SHAPE, np.int32))
    assert res["n_pred"] == 0 and res["avF1"] == 0.0 and res["C"] == 0.0 and res["tp"] == 0.0
    assert (res["FS"], res["FM"]) == (0, 0)
    assert math.isnan(res["clDice_TP"])
    assert res["errors"]["missed_gt"] == [1, 2, 3]
    assert any("empty" in w for w in res["warnings"])


def test_everything_removed_counts_as_empty():
    masks = three_tubes()
    res = evaluate(stack_from(masks), labels_from([tube(x1=20)]))
    assert res["n_pred"] == 0 and res["removed_small_pred_ids"] == [1]
    assert any("800" in w for w in res["warnings"])


def test_overlapping_gt_with_empty_prediction_does_not_crash():
    a, b = tube(y=20), np.zeros(SHAPE, bool)
    b[4:9, 5:40, 60:63] = True
    res = evaluate(stack_from([a, b]), np.zeros(SHAPE, np.uint8))
    assert res["overlap"]["n"] == 2 and res["overlap"]["TP_05"] == 0
    assert any("TP_05_overlap" in w for w in res["warnings"])


def test_no_ground_truth_is_well_defined():
    masks = three_tubes()
    res = evaluate(np.zeros(SHAPE, np.uint8), labels_from(masks))
    assert res["n_gt"] == 0 and res["n_pred"] == 3
    assert res["avF1"] == 0.0 and res["C"] == 0.0 and res["tp"] == 0.0
    assert res["per_threshold"]["0.5"]["fp"] == 3
    assert res["errors"]["false_positive"] == [1, 2, 3]
    assert any("no instances" in w for w in res["warnings"])


def test_binary_stack_channels_become_ids():
    masks = three_tubes()
    binary = np.stack([m.astype(np.uint8) for m in masks])
    res = evaluate(binary, labels_from(masks))
    assert res["gt_ids"] == [1, 2, 3] and res["avF1"] == 1.0


def test_larger_prediction_is_centre_cropped():
    masks = three_tubes()
    pred = labels_from(masks)
    big = np.zeros((SHAPE[0] + 4, SHAPE[1] + 3, SHAPE[2] + 2), pred.dtype)
    big[2 : 2 + SHAPE[0], 1 : 1 + SHAPE[1], 1 : 1 + SHAPE[2]] = pred  # (a-b)//2 offsets
    res = evaluate(stack_from(masks), big)
    assert res["avF1"] == 1.0
    assert any("centre-cropped" in w for w in res["warnings"])
    # and the other way round: a larger GT is cropped to the prediction
    res2 = evaluate(np.pad(stack_from(masks), ((0, 0), (2, 2), (1, 2), (1, 1))), pred)
    assert res2["avF1"] == 1.0


@pytest.mark.parametrize(
    "gt, pred, match",
    [
        (np.zeros((40, 40), np.uint8), np.zeros((40, 40), np.uint8), "2D"),
        (np.zeros((4, 8, 8), np.uint8), np.zeros((4, 8, 8), np.float32), "floating"),
        (np.zeros((4, 8, 8), np.uint8), np.full((4, 8, 8), -3, np.int32), "negative"),
        (np.zeros((4, 8, 8), np.uint8), np.zeros((4, 10, 6), np.uint8), "neither"),
        (np.zeros((2, 2, 4, 8, 8), np.uint8), np.zeros((4, 8, 8), np.uint8), "5D"),
    ],
)
def test_bad_inputs_raise_a_clear_error(gt, pred, match):
    with pytest.raises(NeurosegError, match=match) as info:
        evaluate(gt, pred)
    assert "Fix:" in str(info.value)


def test_lazy_inputs_equal_numpy(tmp_path):
    import dask.array as da
    import zarr

    masks = three_tubes()
    gt, pred = stack_from(masks), labels_from(masks[:2] + [tube(z=16, y=38, x1=90)])
    z = zarr.open(str(tmp_path / "gt.zarr"), mode="w", shape=gt.shape, chunks=(3, 8, 16, 16),
                  dtype=gt.dtype)
    z[:] = gt
    a = evaluate(gt, pred, min_size=0)
    b = evaluate(z, da.from_array(pred, chunks=(5, 20, 20)), min_size=0)
    assert a["official"] == b["official"]
