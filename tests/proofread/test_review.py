"""Review queue: building from metric errors and checks, walking, saving and resuming."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.proofread.review import ReviewQueue, object_stats, review_path


def _pred():
    lab = np.zeros((10, 30, 30), np.uint32)
    lab[1:9, 2:12, 2:12] = 5  # big
    lab[1:4, 20:23, 20:23] = 9  # small
    lab[0:2, 0:2, 25:30] = 11  # touches the border, tiny
    return lab


def _gt_stack():
    stack = np.zeros((3, 10, 30, 30), np.uint8)
    stack[0, 1:9, 2:6, 2:12] = 1
    stack[1, 1:9, 7:12, 2:12] = 2
    stack[2, 5:8, 15:18, 3:9] = 3  # missed
    return stack


def test_object_stats_matches_numpy():
    lab = _pred()
    st = object_stats(lab)
    assert set(st) == {5, 9, 11}
    for k, v in st.items():
        coords = np.argwhere(lab == k)
        assert v["size"] == len(coords)
        np.testing.assert_allclose(v["centroid"], coords.mean(0), atol=0.01)
        assert v["bbox"] == [[int(c.min()), int(c.max()) + 1] for c in coords.T]
    gst = object_stats(_gt_stack(), [3])
    assert list(gst) == [3] and gst[3]["size"] == 3 * 3 * 6


def test_queue_from_errors_orders_kinds_and_places_items():
    errors = {
        "false_merge": [{"pred": 5, "gts": [1, 2]}],
        "false_split": [{"gt": 2, "preds": [9, 11]}],
        "false_positive": [11, 9],
        "missed_gt": [3],
    }
    q = ReviewQueue.from_errors(errors, _pred(), _gt_stack())
    assert [(it.kind, it.id) for it in q.items] == [
        ("false_merge", 5), ("false_split", 2), ("false_positive", 9), ("false_positive", 11), ("missed_gt", 3),
    ]
    fm, fs, _, _, missed = q.items
    assert fm.select_id == 5 and fm.related == [1, 2] and fm.size == 8 * 10 * 10
    assert fs.source == "gt" and fs.select_id == 9
    assert missed.select_id == 0 and missed.bbox == [[5, 8], [15, 18], [3, 9]]
    np.testing.assert_allclose(missed.centroid, [6, 16, 5.5])
    assert "false merge: label 5 (GT 1, 2)" in fm.describe()
    # without the GT, a false split is placed on its predictions and a missed neuron is dropped
    q2 = ReviewQueue.from_errors(errors, _pred())
    assert [it.kind for it in q2.items] == ["false_merge", "false_split", "false_positive", "false_positive"]


def test_queue_from_checks():
    q = ReviewQueue.from_checks(_pred(), tiny=30, border=True, largest=1)
    assert [(it.kind, it.id) for it in q.items] == [("tiny", 11), ("tiny", 9), ("largest", 5)]
    q = ReviewQueue.from_checks(_pred(), tiny=None, border=True, largest=0)
    assert [(it.kind, it.id) for it in q.items] == [("border", 11)]


def test_walk_mark_save_load_resume(tmp_path):
    q = ReviewQueue.from_checks(_pred(), tiny=30, largest=1)
    assert q.current is None and q.previous() is None
    assert q.next().id == 11
    q.mark("fixed")
    assert q.next().id == 9
    q.mark("ignored", note="fine")
    assert q.next().id == 5 and q.next() is None and q.position == 2
    assert q.previous().id == 9
    q.locked = [5]
    path = review_path(tmp_path / "seg.tif")
    assert path.name == "seg.tif.review.json"
    q.save(path)
    assert not list(tmp_path.glob("*.tmp"))
    r = ReviewQueue.load(path)
    assert r.position == 1 and r.current.id == 9 and r.current.note == "fine" and r.locked == [5]
    assert r.counts() == {"todo": 1, "fixed": 1, "ignored": 1}
    # "next" skips done items; "previous" does not
    r.position = -1
    assert r.next().id == 5
    assert json.loads(path.read_text())["format"] == "napari-neuroseg review queue"
    assert review_path(tmp_path / "s.zarr").name == "s.zarr.review.json"


def test_bad_review_files(tmp_path):
    with pytest.raises(NeurosegError, match="no review queue"):
        ReviewQueue.load(tmp_path / "missing.review.json")
    bad = tmp_path / "bad.review.json"
    bad.write_text("{not json")
    with pytest.raises(NeurosegError, match="not valid JSON"):
        ReviewQueue.load(bad)
    bad.write_text(json.dumps({"version": 99, "items": []}))
    with pytest.raises(NeurosegError, match="newer"):
        ReviewQueue.load(bad)
    q = ReviewQueue.from_checks(_pred(), tiny=30)
    with pytest.raises(NeurosegError, match="no current"):
        q.mark("fixed")
    q.next()
    with pytest.raises(NeurosegError, match="unknown review status"):
        q.mark("done")


def test_queue_from_metrics_on_synthetic_errors():
    """A prediction with a false merge (1+2 as one label) and a missed GT neuron."""
    from napari_neuroseg.synth import make_neurons

    vol = make_neurons((24, 80, 80), n_neurons=3, seed=3)
    gt = vol.gt_instances
    pred = np.zeros(gt.shape[1:], np.uint32)
    pred[(gt[0] > 0) | (gt[1] > 0)] = 10  # merge of neurons 1 and 2; neuron 3 missed
    q = ReviewQueue.from_metrics(gt, pred)
    kinds = {(it.kind, it.id) for it in q.items}
    assert ("false_merge", 10) in kinds  # one prediction covering neurons 1 and 2
    assert ("missed_gt", 3) in kinds
    # the merged label is matched to one of the two neurons; the other counts as missed
    assert len(kinds & {("missed_gt", 1), ("missed_gt", 2)}) == 1
    for it in q.items:
        assert all(lo < hi for lo, hi in it.bbox)


@pytest.mark.realdata
def test_review_queue_on_real_fisbe_crop(fisbe_real_dir, tmp_path):
    """The queue walks the errors of the real sample's published prediction (a crop)."""
    import h5py
    import zarr
    name = "R14A02-20180905_65_A6"
    sl = (slice(100, 300), slice(380, 620), slice(350, 650))
    gt = np.asarray(zarr.open_array(str(fisbe_real_dir / "gt" / f"{name}.zarr" / "volumes" / "gt_instances"), mode="r")[(slice(None),) + sl])
    with h5py.File(fisbe_real_dir / "pred" / f"{name}.hdf", "r") as f:
        pred = np.asarray(f["volumes/gmm_label_cleaned"][sl])
    q = ReviewQueue.from_metrics(gt, pred)
    assert len(q) > 0
    for it in q.items:
        if it.source == "pred":
            assert pred[tuple(int(round(c)) for c in it.centroid)] == it.id or np.any(
                pred[tuple(slice(lo, hi) for lo, hi in it.bbox)] == it.id
            )
    path = review_path(tmp_path / f"{name}.hdf")
    while q.next() is not None:
        q.mark("fixed")
    q.save(path)
    assert ReviewQueue.load(path).counts()["todo"] == 0
