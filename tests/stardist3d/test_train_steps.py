"""The StarDist trainer split into named steps (``train._TrainRun``) trains exactly as the one
generator it replaced: the losses of a fixed-seed tiny run, recorded with the former
``train_iter`` (the same machine gave bit-identical histories, weights, checkpoints and progress
messages before and after the split), and the early stop of the held-out score."""

from __future__ import annotations

import numpy as np
import pytest

from napari_neuroseg.models.stardist3d.train import TrainSettings, default_config, synthetic_dataset, train_iter
from napari_neuroseg.runtime.progress import run_to_completion

#: (step, loss, val_loss) of the former train_iter for _settings(steps=4) on _data()
RECORDED = [(1, 1.4940857887268066, None), (2, 1.4774022102355957, 1.4328911304473877),
            (3, 1.4201785326004028, None), (4, 1.6428442001342773, 1.4311403036117554)]


def _config():
    return default_config(n_rays=16, n_filter_base=4, net_conv_after=8, grid=(1, 2, 2), anisotropy=(2, 1, 1))


def _settings(**kw):
    base = dict(steps=4, batch_size=1, patch_size=(8, 32, 32), val_every=2, checkpoint_every=3, n_val_patches=1,
                val_fraction=0.34, device="cpu", optimize_thresholds=False, warmup_steps=1, threads=1)
    base.update(kw)
    return TrainSettings(**base)


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(3, (16, 48, 48), seed=123, vary=0.0)


def test_losses_are_those_of_the_former_trainer(tmp_path, data, one_thread):
    xs, ys = data
    seen = []
    gen = train_iter(xs, ys, _config(), out_dir=tmp_path / "m", settings=_settings())
    res = run_to_completion(gen, seen.append)
    got = [(h["step"], h["loss"], h.get("val_loss")) for h in res.history]
    assert [g[0] for g in got] == [r[0] for r in RECORDED]
    np.testing.assert_allclose([g[1] for g in got], [r[1] for r in RECORDED], rtol=1e-4)
    assert [g[2] is None for g in got] == [r[2] is None for r in RECORDED]
    np.testing.assert_allclose([g[2] for g in got if g[2] is not None],
                               [r[2] for r in RECORDED if r[2] is not None], rtol=1e-4)
    steps = [p for p in seen if p.message.startswith("step")]
    assert [(p.step, p.total) for p in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert seen[-1].message == "done" and res.step == 4
    assert {"checkpoint.pt", "weights.pt", "training.json"} <= {p.name for p in (tmp_path / "m").iterdir()}


def test_score_selection_stops_early_after_patience(data, one_thread):
    xs, ys = data
    res = run_to_completion(train_iter(xs, ys, _config(), settings=_settings(
        steps=6, val_every=1, select_by="score", score_every=1, patience=1, nms_backend="stardist")))
    # an untrained network scores 0 twice: no better score at step 2, so the run ends there
    assert [h["step"] for h in res.history] == [1, 2] and res.step == 2
    assert res.history[-1].get("early_stop") is True and "val_score" in res.history[-1]
