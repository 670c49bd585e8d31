"""Nuclei metrics (metrics.nuclei): stardist.matching's numbers, error lists, task guess."""

from __future__ import annotations

import numpy as np
import pytest
from stardist.matching import matching

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.metrics.nuclei import (
    NUCLEI_THRESHOLDS,
    evaluate_task_iter,
    guess_task,
    nuclei_metrics,
)
from napari_neuroseg.runtime.progress import run_to_completion


def blobs(shape=(16, 48, 48), n=40, seed=0, r=2):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint32)
    zz, yy, xx = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
    ball = zz ** 2 + yy ** 2 + xx ** 2 <= r * r
    for i in range(n):
        c = [int(rng.integers(r, s - r)) for s in shape]
        sl = tuple(slice(a - r, a + r + 1) for a in c)
        lab[sl][ball] = i + 1  # later ones may overwrite earlier ones: touching, odd shapes
    return lab


def perturbed(gt, seed=1):
    """Shift some objects, drop some, add some, give large non-sequential ids."""
    rng = np.random.default_rng(seed)
    pred = np.zeros_like(gt)
    for i in np.unique(gt)[1:]:
        m = gt == i
        u = rng.random()
        if u < 0.1:
            continue  # missed
        if u < 0.5:
            m = np.roll(m, int(rng.integers(1, 3)), axis=int(rng.integers(0, 3)))
        pred[m] = 1000 + 7 * int(i)
    extra = blobs(gt.shape, n=5, seed=seed + 10) > 0
    pred[extra & (pred == 0)] = 99999
    return pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numbers_are_stardists(seed):
    gt = blobs(seed=seed)
    pred = perturbed(gt, seed=seed + 1)
    res = nuclei_metrics(gt, pred)
    ref = matching(gt, pred, thresh=list(NUCLEI_THRESHOLDS), report_matches=True)
    assert list(res["per_threshold"]) == [str(t) for t in NUCLEI_THRESHOLDS]
    for th, s in zip(NUCLEI_THRESHOLDS, ref):
        row = res["per_threshold"][str(th)]
        assert (row["tp"], row["fp"], row["fn"]) == (s.tp, s.fp, s.fn)
        for k, ref_k in (("precision", "precision"), ("recall", "recall"), ("f1", "f1"),
                         ("ap", "accuracy"), ("mean_matched_iou", "mean_matched_score"),
                         ("mean_true_iou", "mean_true_score"),
                         ("panoptic_quality", "panoptic_quality")):
            assert row[k] == pytest.approx(float(getattr(s, ref_k)), abs=1e-12), (th, k)
    s05 = ref[NUCLEI_THRESHOLDS.index(0.5)]
    assert (res["precision"], res["recall"], res["f1"], res["TP_05"]) == (
        s05.precision, s05.recall, s05.f1, s05.tp)
    assert res["mean_f1"] == pytest.approx(np.mean([s.f1 for s in ref]))
    # error lists at IoU 0.5, with the user's ids: exactly the unmatched ones
    tp_pairs = {s05.matched_pairs[k] for k in s05.matched_tps}
    gt_ids = set(int(x) for x in np.unique(gt)[1:])
    pred_ids = set(int(x) for x in np.unique(pred)[1:])
    assert set(res["errors"]["missed_gt"]) == gt_ids - {a for a, _ in tp_pairs}
    assert set(res["errors"]["false_positive"]) == pred_ids - {b for _, b in tp_pairs}
    assert len(res["errors"]["missed_gt"]) == s05.fn
    assert len(res["errors"]["false_positive"]) == s05.fp
    assert 99999 in res["errors"]["false_positive"]
    assert {(m["gt"], m["pred"]) for m in res["matches"]["0.5"]} == tp_pairs


def test_every_object_counts_and_2d_works():
    gt = np.zeros((20, 20), np.uint8)
    gt[1:3, 1:3] = 1  # 4 pixels: the FISBe preset would drop such objects
    gt[10:13, 10:13] = 2
    pred = gt.copy()
    res = nuclei_metrics(gt, pred)
    assert res["TP_05"] == 2 and res["f1"] == 1.0 and res["errors"]["missed_gt"] == []


def test_bad_input_and_edge_cases():
    gt = blobs()
    with pytest.raises(NeurosegError, match="different shapes"):
        nuclei_metrics(gt, gt[:, :10])
    with pytest.raises(NeurosegError, match="integers"):
        nuclei_metrics(gt.astype(np.float32), gt)
    with pytest.raises(NeurosegError, match="negative"):
        nuclei_metrics(gt.astype(np.int32) - 1, gt)
    empty = nuclei_metrics(gt, np.zeros_like(gt))
    assert empty["TP_05"] == 0 and len(empty["errors"]["missed_gt"]) == empty["n_gt"]
    assert any("empty" in w for w in empty["warnings"])
    # a FISBe-style (N,Z,Y,X) stack is compared as its label volume
    stack = np.stack([(gt == i).astype(np.uint8) * i for i in (1, 2, 3)])
    res = nuclei_metrics(stack, np.where(np.isin(gt, [1, 2, 3]), gt, 0))
    assert res["n_gt"] == 3


def test_task_guess_and_dispatch():
    from napari_neuroseg.synth import make_neurons

    vol = make_neurons((24, 80, 80), n_neurons=3, seed=3)
    assert guess_task(vol.gt_instances)[0] == "neurons"  # FISBe stack
    assert guess_task(vol.labels)[0] == "neurons"  # thin branching objects
    task, why = guess_task(blobs())
    assert task == "nuclei" and "compact" in why
    gt = blobs()
    res = run_to_completion(evaluate_task_iter("auto", gt, perturbed(gt)))
    assert res["task"] == "nuclei" and res["task_reason"].startswith("guessed")
    res = run_to_completion(evaluate_task_iter("neurons", gt, perturbed(gt)))
    assert res["task"] == "neurons" and res["preset"]["min_size"] == 800
    # 33-voxel balls: the FISBe size filter removes every prediction, and says so
    assert res["n_pred"] == 0
    assert res["preset"]["n_removed_small_pred"] == len(res["removed_small_pred_ids"]) > 0
    assert "<= 800 voxels" in res["error_rule"]
    with pytest.raises(NeurosegError, match="partly"):
        run_to_completion(evaluate_task_iter("nuclei", gt, gt, partly=True))
    with pytest.raises(NeurosegError, match="unknown"):
        run_to_completion(evaluate_task_iter("cells", gt, gt))


def test_review_queue_from_metrics_per_task():
    """The review queue takes the evaluation's errors: for nuclei the unmatched objects at IoU
    0.5 (no FISBe size filter turning every small nucleus into a 'missed' one)."""
    from napari_neuroseg.proofread.review import ReviewQueue

    gt = blobs()
    pred = perturbed(gt)
    ref = nuclei_metrics(gt, pred)
    q = ReviewQueue.from_metrics(gt, pred)  # auto: compact objects -> nuclei
    assert q.meta["task"] == "nuclei"
    assert sorted(it.id for it in q.items if it.kind == "missed_gt") == ref["errors"]["missed_gt"]
    assert sorted(it.id for it in q.items if it.kind == "false_positive") == sorted(
        ref["errors"]["false_positive"])
    fisbe = ReviewQueue.from_metrics(gt, pred, task="neurons")
    assert fisbe.meta["task"] == "neurons" and "800 voxels" in fisbe.meta["rule"]
    # every prediction is below the FISBe size filter: all GT objects become "missed"
    assert sum(it.kind == "missed_gt" for it in fisbe.items) == ref["n_gt"]
    # a guessed nuclei task ignores the FISBe-only partly option (with a warning)
    assert ReviewQueue.from_metrics(gt, pred, partly=True).meta["task"] == "nuclei"


def test_stardists_overlap_table_is_compiled_once_per_machine_not_per_process():
    """stardist jit-compiles its overlap table without numba's disk cache: seconds on the first
    evaluation of every process. The nuclei metrics turn the cache on (numba's own, as
    ``cache=True`` does), so a later process loads the compiled code."""
    from stardist.matching import _label_overlap

    gt = np.zeros((4, 8, 8), np.uint16)
    gt[1:3, 1:4, 1:4] = 1
    nuclei_metrics(gt, gt.astype(np.uint32))
    assert type(_label_overlap._cache).__name__ == "FunctionCache"
    assert _label_overlap.stats.cache_path  # where numba keeps it
