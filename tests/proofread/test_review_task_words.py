"""The review queue names ground-truth objects after the metrics task (issue 17)."""

from __future__ import annotations

import numpy as np

from napari_neuroseg.proofread.review import ReviewQueue


def _queue(task):
    gt = np.zeros((4, 10, 10), np.uint16)
    gt[1:3, 2:5, 2:5] = 3
    pred = np.zeros_like(gt)
    meta = {} if task is None else {"task": task}
    return ReviewQueue.from_errors({"missed_gt": [3], "false_split": [], "false_merge": [], "false_positive": []},
                                   pred, gt, **meta)


def test_missed_objects_are_named_after_the_task(tmp_path):
    assert _queue("nuclei").describe(_queue("nuclei").items[0]).startswith("missed nucleus: GT nucleus 3")
    assert _queue("neurons").describe(_queue("neurons").items[0]).startswith("missed neuron: GT neuron 3")
    assert _queue(None).describe(_queue(None).items[0]).startswith("missed GT object: GT object 3")
    q = _queue("nuclei")
    q.next()
    assert q.describe() == q.describe(q.current) and "nucleus" in q.describe()
    q.save(tmp_path / "q.review.json")  # the task survives a save and a load
    assert ReviewQueue.load(tmp_path / "q.review.json").describe(q.items[0]).startswith("missed nucleus")
