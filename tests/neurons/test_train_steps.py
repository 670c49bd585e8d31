"""The neuron trainer split into named steps (``train._NeuronRun``) trains exactly as the one
generator it replaced: the losses and validation scores of a fixed-seed tiny run on a FISBe
folder, recorded with the former ``train_iter`` (the same machine gave bit-identical logs,
checkpoints and progress messages before and after the split, also for resume, synthetic data,
fine-tuning with a held-out slab and post-processing search, and a spent time budget)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_neuroseg.models.neurons.train import NeuronTrainSettings, train_iter
from napari_neuroseg.runtime.progress import run_to_completion

#: (iteration, loss, mean validation avF1) of the former train_iter for the run below (the network's
#: initial weights come from torch's global random state, seeded in the test)
RECORDED = [(1, 2.976884603500366, None), (2, 2.8990416526794434, None), (3, 2.8750948905944824, 0.1111111111111111)]


@pytest.fixture
def fisbe_folder(tmp_path):
    from napari_neuroseg.io import write_fisbe
    from napari_neuroseg.synth import make_neurons

    d = tmp_path / "fisbe"
    d.mkdir()
    for i, name in enumerate(["a", "b", "c"]):
        v = make_neurons((16, 48, 48), seed=100 + i, n_neurons=2)
        write_fisbe(d / f"{name}.zarr", raw=v.raw, gt_instances=v.gt_instances)
    (d / "split.json").write_text(json.dumps({"train": ["a.zarr", "b.zarr"], "val": ["c"], "test": []}))
    return d


def test_losses_are_those_of_the_former_trainer(fisbe_folder, tmp_path, one_thread):
    out = tmp_path / "run"
    seen = []
    torch.manual_seed(1234)
    summary = run_to_completion(train_iter(NeuronTrainSettings(
        output=str(out), data=str(fisbe_folder), steps=3, save_every=2, val_every=3, patch=(8, 16, 16), base=4,
        levels=2, threads=1, device="cpu")), seen.append)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [r[0] for r in RECORDED]
    np.testing.assert_allclose([r["loss"] for r in log], [r[1] for r in RECORDED], rtol=1e-4)
    assert [None if "val" not in r else float(np.mean(list(r["val"].values()))) for r in log] == \
        [r[2] for r in RECORDED]
    assert [p.step for p in seen if p.message.startswith("loss")] == [1, 2, 3]
    assert summary["iterations"] == 3 and summary["best_score"] == RECORDED[-1][2]
    assert {"last.pt", "best.pt", "model.pt"} <= {p.name for p in out.iterdir()}
