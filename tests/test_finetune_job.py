"""The in-memory fine-tuning job the Fine-tune dock runs (models/finetune_job.py): a tiny run with
curve, scores, model card and registration; resume from its checkpoint; the reviewed-part mask and
"ignore unlabelled"; bad input as NeurosegErrors. A tiny network and 2-4 steps: fast on 2 cores."""

from __future__ import annotations

import numpy as np
import pytest
from sd3d_helpers import (  # tests/stardist3d is on pythonpath
    balls,
    make_tiny_base,
)

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models.finetune_job import (
    FineTuneProgress,
    finetune_nuclei_iter,
    restrict_to_region,
)
from napari_neuroseg.runtime.progress import run_to_completion


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("base"))


@pytest.fixture(autouse=True)
def _user_models(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROSEG_MODELS_DIR", str(tmp_path / "user_models"))


TINY = {"steps": 4, "batch_size": 1, "threads": 1, "device": "cpu", "optimize_thresholds": False,
        "max_minutes": None}


def test_job_trains_scores_registers_and_carries_the_curve(tmp_path, base_model):
    import torch

    torch.set_num_threads(1)
    from napari_neuroseg.models import registry

    img, lbl = balls()
    seen = []
    changed = []
    registry.on_change(lambda: changed.append(1))
    try:
        gen = finetune_nuclei_iter([img], [lbl], [(1.0, 0.5, 0.5)], out_dir=tmp_path / "run", base=str(base_model),
                                   name="my_tiny", **TINY)
        res = run_to_completion(gen, seen.append)
    finally:
        registry._listeners.clear()
    assert res.steps == 4 and res.name == "my_tiny" and res.kind == "nuclei"
    assert 0.0 <= res.f1_before <= 1.0 and 0.0 <= res.f1_after <= 1.0
    assert (tmp_path / "run" / "MODEL_CARD.md").is_file() and (tmp_path / "run" / "checkpoint.pt").is_file()
    assert res.entry["name"] == "my_tiny" and "my_tiny" in registry.model_names("nuclei")
    assert changed, "registering must notify the model pickers"
    steps = [p for p in seen if isinstance(p, FineTuneProgress) and p.phase == "train"]
    assert [s for s, _ in steps[-1].loss] == [1, 2, 3, 4]
    assert all(np.isfinite(v) for _, v in steps[-1].loss)
    assert steps[-1].val_loss and steps[-1].val_loss[-1][0] == 4  # validated at the last step
    assert steps[-1].f1_before == res.f1_before
    assert all(p.eta_s is not None and p.eta_s >= 0 for p in steps)
    assert seen[-1].phase == "done"
    assert res.curve["loss"] == list(steps[-1].loss)
    # phase starts are never held back by a GUI's rate limiting; training steps may be
    from napari_neuroseg.runtime.progress import carries_data

    assert all(carries_data(p) for p in seen if p.phase in ("setup", "saving", "done"))
    assert not any(carries_data(p) for p in steps)


def test_job_resumes_from_its_checkpoint(tmp_path, base_model):
    img, lbl = balls()
    kw = dict(TINY, out_dir=tmp_path / "run", base=str(base_model), register=False, live_f1=False)
    gen = finetune_nuclei_iter([img], [lbl], [(1.0, 0.5, 0.5)], **dict(kw, steps=2))
    run_to_completion(gen)
    seen = []
    res = run_to_completion(finetune_nuclei_iter([img], [lbl], [(1.0, 0.5, 0.5)], resume=True, **dict(kw, steps=4)),
                            seen.append)
    train = [p for p in seen if p.phase == "train"]
    assert [p.step for p in train] == [3, 4]  # steps 1-2 came from the checkpoint
    assert res.steps == 4 and res.entry is None


def test_cancel_mid_run_keeps_the_checkpoint(tmp_path, base_model):
    from napari_neuroseg.models.stardist3d.model import StarDist3D

    img, lbl = balls()
    gen = finetune_nuclei_iter([img], [lbl], [(1.0, 0.5, 0.5)], out_dir=tmp_path / "run", base=str(base_model),
                               **dict(TINY, steps=100), live_f1=False)
    for p in gen:
        if p.phase == "train" and p.step == 26:  # one checkpoint written (every 25 steps)
            break
    gen.close()  # what Cancel does
    StarDist3D.load(tmp_path / "run", device="cpu")  # loadable
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_restrict_to_region_mask_and_unlabelled():
    img, lbl = balls()
    mask = np.zeros(lbl.shape, np.uint8)
    mask[:, :24, :] = 1
    x, y, note = restrict_to_region(img, lbl, mask=mask)
    assert y.shape[1] <= 24 and x.shape == y.shape and "reviewed" in note
    assert set(np.unique(y)) - {0} <= set(np.unique(lbl[:, :24])) - {0}
    _x2, y2, note2 = restrict_to_region(img, lbl, ignore_unlabelled=True)
    box = np.nonzero(lbl)
    assert y2.shape[0] == min(lbl.shape[0], box[0].max() - box[0].min() + 1 + 8)
    assert "partly labelled" in note2
    with pytest.raises(NeurosegError, match="mask layer is empty"):
        restrict_to_region(img, lbl, mask=np.zeros_like(mask))
    with pytest.raises(NeurosegError, match="shape"):
        restrict_to_region(img, lbl, mask=mask[:, :10])


@pytest.mark.parametrize("case, match", [
    ("shapes", "differ"), ("empty", "empty"), ("one", "only one object"), ("small", "too little data"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, base_model, case, match):
    img, lbl = balls()
    if case == "shapes":
        lbl = lbl[:, :40]
    elif case == "empty":
        lbl = np.zeros_like(lbl)
    elif case == "one":
        lbl = (lbl == 5).astype(np.uint16)
    elif case == "small":
        img, lbl = img[:, :12, :12], lbl[:, :12, :12].copy()
        lbl[:] = 0
        lbl[4:8, 1:4, 1:4], lbl[4:8, 8:11, 8:11] = 1, 2
    with pytest.raises(NeurosegError, match=match):
        run_to_completion(finetune_nuclei_iter([img], [lbl], [(1.0, 0.5, 0.5)], out_dir=tmp_path / "run",
                                               base=str(base_model), **TINY))
    assert not (tmp_path / "run").exists()


def test_neuron_model_as_base_is_refused(tmp_path):
    img, lbl = balls()
    with pytest.raises(NeurosegError, match="neuron model"):
        run_to_completion(finetune_nuclei_iter([img], [lbl], None, out_dir=tmp_path / "run",
                                               base="neuroseg_neurons", **TINY))


@pytest.mark.slow  # ~90 s on the loaded machine: the neuron post-processing compiles (numba) once
def test_neuron_job_trains_on_a_held_out_split_and_registers(tmp_path):
    """The neurons twin: a tiny network, 2 steps, validation at the end (avF1 on the held-out slab)."""
    import torch

    from napari_neuroseg.models import registry
    from napari_neuroseg.models.finetune_job import (
        finetune_neurons_iter,
        labels_to_stack,
    )
    from napari_neuroseg.models.neurons.model import NetConfig, save_model
    from napari_neuroseg.synth import make_neurons

    torch.manual_seed(0)
    cfg = NetConfig(base=2, levels=2)
    save_model(tmp_path / "tiny_neurons.pt", cfg.build(), cfg)
    v = make_neurons((20, 48, 48), n_neurons=4, seed=3)
    stack = labels_to_stack(v.labels)
    assert stack.shape[0] == len(np.unique(v.labels)) - 1 and set(np.unique(stack[0])) == {0, 1}
    seen = []
    res = run_to_completion(finetune_neurons_iter([v.raw], [v.labels], None, out_dir=tmp_path / "run",
                                                  base=str(tmp_path / "tiny_neurons.pt"), name="tiny_neurons_ft",
                                                  steps=2, batch_size=1, threads=1, device="cpu", max_minutes=None),
                            seen.append)
    assert res.kind == "neurons" and res.steps == 2 and 0.0 <= res.f1_before <= 1.0 and 0.0 <= res.f1_after <= 1.0
    assert [s for s, _ in res.curve["loss"]] == [1, 2] and res.curve["val_f1"] and res.curve["val_f1"][-1][0] == 2
    assert registry.lookup("tiny_neurons_ft")["kind"] == "neurons"
    assert "tiny_neurons_ft" in registry.model_names("neurons")
    assert (tmp_path / "run" / "MODEL_CARD.md").is_file()
    from napari_neuroseg.models.neurons.model import read_checkpoint

    search = read_checkpoint(tmp_path / "run" / "model.pt")["scores"]["postprocess_search"]  # on both parts
    assert search["evaluated"] >= 1 and search["weights"] in ("best.pt", "last.pt")
    assert any(p.phase == "train" for p in seen) and seen[-1].phase == "done"
    with pytest.raises(NeurosegError, match="3-channel"):
        run_to_completion(finetune_neurons_iter([v.raw[0]], [v.labels], None, out_dir=tmp_path / "run2",
                                                base=str(tmp_path / "tiny_neurons.pt"), steps=1))
    with pytest.raises(NeurosegError, match="nuclei model"):
        run_to_completion(finetune_neurons_iter([v.raw], [v.labels], None, out_dir=tmp_path / "run3",
                                                base="neuroseg_nuclei", steps=1))


def test_thresholds_are_the_base_models_unless_searched_in_time(tmp_path, base_model):
    """Without a search the saved model keeps the base model's thresholds; a search that would
    overrun the time budget is stopped at the deadline (the base thresholds are kept, the card says so)."""
    import json

    img, lbl = balls()
    res = run_to_completion(finetune_nuclei_iter([img], [lbl], [(1.0, 0.5, 0.5)], out_dir=tmp_path / "a",
                                                 base=str(base_model), register=False, live_f1=False, **TINY))
    assert json.loads((tmp_path / "a" / "thresholds.json").read_text())["prob"] == pytest.approx(0.95)
    assert res.info["prob"] == pytest.approx(0.95)
    res = run_to_completion(finetune_nuclei_iter([img], [lbl], [(1.0, 0.5, 0.5)], out_dir=tmp_path / "b",
                                                 base=str(base_model), register=False, live_f1=False,
                                                 **dict(TINY, optimize_thresholds=True, max_minutes=0.005)))
    assert json.loads((tmp_path / "b" / "thresholds.json").read_text())["prob"] == pytest.approx(0.95)
    assert any("threshold search did not fit" in n for n in res.info["notes"])
    assert "threshold search did not fit" in (tmp_path / "b" / "MODEL_CARD.md").read_text()


def test_fixed_objects_of_a_review_queue_as_the_reviewed_part():
    from napari_neuroseg.models.finetune_job import fixed_objects_mask
    from napari_neuroseg.proofread.review import ReviewQueue

    _img, lbl = balls()
    q = ReviewQueue.from_checks(lbl, tiny=10_000)  # every object is "tiny": one item per object
    assert len(q) == 9
    for target in (2, 5):
        q.position = next(k for k, it in enumerate(q.items) if it.id == target)
        q.mark("fixed")
    m = fixed_objects_mask(lbl, q)
    assert set(np.unique(lbl[m > 0])) == {2, 5} and m.dtype == np.uint8
    assert (fixed_objects_mask(lbl, q.to_dict()) == m).all()
    _x, y, note = restrict_to_region(lbl, lbl, mask=m)
    assert set(np.unique(y)) - {0} == {2, 5} and "reviewed" in note
    with pytest.raises(NeurosegError, match="marked fixed"):
        fixed_objects_mask(lbl, ReviewQueue.from_checks(lbl, tiny=10_000))
    with pytest.raises(NeurosegError, match="marked fixed"):
        fixed_objects_mask(lbl, None)


def test_settings_object_or_keywords_are_the_same_job_settings(tmp_path):
    """Both jobs take one FineTuneSettings (or its fields as keywords); the base defaults to the
    task's shipped model; an unknown option is an error."""
    from napari_neuroseg.models.finetune_job import FineTuneSettings

    s = FineTuneSettings(out_dir=tmp_path, steps=3)
    assert FineTuneSettings.of(s, {}, base="neuroseg_nuclei") == FineTuneSettings(
        out_dir=tmp_path, steps=3, base="neuroseg_nuclei")
    assert FineTuneSettings.of(s, {"steps": 5, "base": "mine"}, base="neuroseg_neurons").steps == 5
    assert FineTuneSettings.of(None, {"out_dir": tmp_path, "every": 10}, base="neuroseg_neurons").base == \
        "neuroseg_neurons"
    with pytest.raises(TypeError):
        FineTuneSettings.of(s, {"stpes": 5}, base="neuroseg_nuclei")
    img, lbl = balls()
    missing = s.__class__(out_dir=tmp_path / "run", base=str(tmp_path / "no_such_model"))
    with pytest.raises(NeurosegError, match="no_such_model"):  # the settings' base reaches the job
        run_to_completion(finetune_nuclei_iter([img], [lbl], None, missing))


def test_nuclei_job_uses_the_cli_fine_tuning_recipe(tmp_path, base_model, monkeypatch):
    """The dock's job trains with the same recipe as `neuroseg train nuclei --init-from`
    (FINETUNE_RECIPE: schedule length, learning rate, weights kept by the held-out score, early
    stop); a given number of steps wins over the recipe's."""
    from napari_neuroseg.models.stardist3d import train as st_train
    from napari_neuroseg.models.stardist3d.training.finetune import FINETUNE_RECIPE

    seen = []

    class Captured(Exception):
        pass

    def capture(*args, settings, **kwargs):
        seen.append(settings)
        raise Captured
        yield  # a generator, like train_iter

    monkeypatch.setattr(st_train, "train_iter", capture)
    img, lbl = balls()
    kw = dict(TINY, out_dir=tmp_path / "run", base=str(base_model), register=False)
    for steps in (None, 7):
        with pytest.raises(Captured):
            run_to_completion(finetune_nuclei_iter([img], [lbl], [(1.0, 0.5, 0.5)], **dict(kw, steps=steps)))
    recipe, given = seen
    assert recipe.steps == FINETUNE_RECIPE["steps"] and given.steps == 7
    for s in seen:
        assert s.learning_rate == FINETUNE_RECIPE["learning_rate"] and s.select_by == "score"
        assert s.patience == FINETUNE_RECIPE["patience"] and not s.optimize_thresholds
