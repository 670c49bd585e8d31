"""Fine-tuning StarDist-3D on one corrected annotation (issue 13): at the base model's scale, a
held-out slab, model card, user model folder, and bad input (each a NeurosegError, nothing lost).

Tiny volumes, a tiny network and 1-3 steps: fast on 2 cores."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
from sd3d_helpers import BASE_SCALE, make_tiny_base
from sd3d_helpers import balls as _balls

from napari_neuroseg.errors import NeurosegError


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A tiny StarDist-3D model folder with a scale.json (voxel size 1 × 0.5 × 0.5 µm)."""
    return make_tiny_base(tmp_path_factory.mktemp("base"))


def _write(path, arr, scale):
    from napari_neuroseg.io.tiff import write_tiff

    write_tiff(path, arr, axes="ZYX", scale=scale)
    return path


@pytest.fixture
def data(tmp_path):
    img, lbl = _balls((16, 48, 48))
    scale = (1.0, 0.5, 0.5)  # the base model's: no resampling
    return _write(tmp_path / "raw.tif", img, scale), _write(tmp_path / "lab.tif", lbl, scale)


@pytest.fixture(autouse=True)
def _user_models(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROSEG_MODELS_DIR", str(tmp_path / "user_models"))


# no threshold search (an untrained tiny network makes NMS slow); the base model's thresholds are kept
COMMON = ["--steps", "2", "--batch-size", "1", "--threads", "1", "--device", "cpu", "--no-optimize-thresholds"]


def _train(base, img, lab, out, *extra):
    from napari_neuroseg.cli import main

    return main(["train", "nuclei", "--init-from", str(base), "--images", str(img), "--labels", str(lab),
                 "-o", str(out), *COMMON, *extra])


def test_finetune_cli_saves_scale_card_and_registers(tmp_path, base_model, data, capsys):
    from napari_neuroseg.cli import main
    from napari_neuroseg.models.registry import list_models
    from napari_neuroseg.models.stardist3d import load_model, resolve_model_path

    out = tmp_path / "my_nuclei"
    assert _train(base_model, *data, out) == 0
    text = capsys.readouterr().out
    assert "held-out part" in text and "registered as 'my_nuclei'" in text
    # the base model's scale travels with the model: `neuroseg nuclei --model DIR` resamples the same way
    assert json.loads((out / "scale.json").read_text())["voxel_size"] == BASE_SCALE["voxel_size"]
    card = (out / "MODEL_CARD.md").read_text()
    for words in ("base model", str(base_model), "raw.tif", "lab.tif", "1 × 0.5 × 0.5", "steps | 2",
                  "device | cpu", "base model (its thresholds)", "fine-tuned"):
        assert words in card, words
    info = json.loads((out / "finetune.json").read_text())
    assert info["steps"] == 2 and 0 <= info["f1_before"] <= 1 and 0 <= info["f1_after"] <= 1
    assert info["validation"].startswith("slab")  # a slab held out automatically
    hist = json.loads((out / "training.json").read_text())
    assert hist["settings"]["warmup_steps"] == 10 and hist["settings"]["init_from"] == str(base_model)
    # registered by name, listed, resolvable by --model NAME
    names = {d["name"]: d for d in list_models()}
    assert names["my_nuclei"]["kind"] == "nuclei" and names["my_nuclei"]["voxel_size"] == [1.0, 0.5, 0.5]
    assert names["my_nuclei"]["scores"]["f1_0.5_heldout_after"] == pytest.approx(info["f1_after"])
    path = resolve_model_path("my_nuclei")
    assert path.parent == tmp_path / "user_models" and not (path / "checkpoint.pt").exists()
    model = load_model("my_nuclei", device="cpu")
    assert model.scale is not None and model.scale.voxel_size == (1.0, 0.5, 0.5)
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "my_nuclei" in listing and "neuroseg_nuclei" in listing and "neuroseg_neurons" in listing
    assert "0.5 x 0.25 x 0.25" in listing  # the shipped nuclei model's voxel size


def test_finetune_trains_at_the_model_scale(tmp_path, base_model):
    """Data at half the base model's voxel size is resampled by 0.5 (labels nearest neighbour)."""
    img, lbl = _balls((32, 96, 96), radius=(6, 12, 12))
    scale = (0.5, 0.25, 0.25)
    raw, lab = _write(tmp_path / "r.tif", img, scale), _write(tmp_path / "l.tif", lbl, scale)
    out = tmp_path / "m"
    assert _train(base_model, raw, lab, out, "--steps", "1", "--no-register") == 0
    info = json.loads((out / "finetune.json").read_text())
    assert info["factors"] == [[0.5, 0.5, 0.5]] and info["voxel_sizes"] == [[0.5, 0.25, 0.25]]
    assert "[16, 48, 48]" in info["validation"]
    assert not (tmp_path / "user_models").exists()  # --no-register


def test_finetune_helpers():
    from napari_neuroseg.models.stardist3d.training.finetune import (
        fit_patch_size,
        holdout_slab,
        to_model_scale,
    )

    img, lbl = _balls((16, 48, 48))
    (_, yt), (_, yv), info = holdout_slab(img, lbl, 0.25)
    assert info["axis"] == "Y" and yt.shape == (16, 36, 48) and yv.shape == (16, 12, 48)
    assert np.array_equal(np.concatenate([yt, yv], axis=1), lbl)  # a split, nothing shared or lost
    assert info["objects_val"] >= 1 and info["objects_train"] >= 1
    assert fit_patch_size([yt.shape], (4, 8, 8)) == (16, 32, 48)
    assert fit_patch_size([(57, 51, 25)], (4, 8, 8)) == (32, 48, 24)
    x2, y2 = to_model_scale(img, lbl, (0.5, 0.5, 0.5))
    assert x2.shape == y2.shape == (8, 24, 24) and x2.dtype == np.float32
    assert set(np.unique(y2)) <= set(np.unique(lbl))  # nearest neighbour: no new ids


@pytest.mark.parametrize("case", ["shape", "empty", "one", "tiny", "float"])
def test_finetune_bad_annotation(tmp_path, base_model, case, capsys):
    img, lbl = _balls((16, 48, 48))
    if case == "shape":
        lbl = lbl[:, :40]
    elif case == "empty":
        lbl = np.zeros_like(lbl)
    elif case == "one":
        lbl = (lbl == 5).astype(np.uint16)
    elif case == "tiny":  # two objects, but too thin for a held-out slab
        img, lbl = _balls((6, 24, 24), n_side=2, radius=(2, 3, 3))
    scale = (1.0, 0.5, 0.5)
    raw = _write(tmp_path / "raw.tif", img, scale)
    lab = _write(tmp_path / "lab.tif", lbl.astype(np.float32) if case == "float" else lbl, scale)
    out = tmp_path / "m"
    assert _train(base_model, raw, lab, out) == 1
    err = capsys.readouterr().err
    expected = {"shape": "differ", "empty": "empty", "one": "only one object",
                "tiny": "too little data for a validation split", "float": "integer"}[case]
    assert expected in err and "fix" in err.lower()
    assert not out.exists()  # nothing written
    assert not (tmp_path / "user_models").exists()


def test_finetune_mixes_synthetic_volumes_at_a_share(tmp_path, base_model, data, capsys):
    """--init-from with --images and --synthetic N: the synthetic volumes join training and
    --synthetic-share of the patches come from them; validation and scores stay on the annotated
    part; a share outside [0, 1] and synthetic volumes alone are refused."""
    out = tmp_path / "mix"
    assert _train(base_model, *data, out, "--synthetic", "3", "--synthetic-shape", "16", "48", "48",
                  "--synthetic-share", "0.25", "--no-register") == 0
    w = json.loads((out / "training.json").read_text())["settings"]["sample_weights"]
    assert len(w) == 4  # the annotated training part + the 3 synthetic volumes
    assert w[0] == pytest.approx(0.75) and sum(w[1:]) == pytest.approx(0.25)
    info = json.loads((out / "finetune.json").read_text())
    assert any("3 synthetic volumes mixed in" in n and "25% of the training patches" in n for n in info["notes"])
    assert info["validation"].startswith("slab")
    capsys.readouterr()
    assert _train(base_model, *data, tmp_path / "bad", "--synthetic", "2", "--synthetic-share", "1.5") == 1
    assert "--synthetic-share" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    from napari_neuroseg.cli import main

    rc = main(["train", "nuclei", "--init-from", str(base_model), "--synthetic", "2", "-o", str(tmp_path / "s"),
               *COMMON])
    assert rc == 1 and "needs annotated volumes" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_base_model_of_the_other_kind(tmp_path, base_model, data, capsys):
    from napari_neuroseg.cli import main

    assert _train("neuroseg_neurons", *data, tmp_path / "m") == 1
    assert "neuron model, not a StarDist-3D nuclei model" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    # a nuclei model given to the neuron trainer (new flag names) is named as such
    rc = main(["train", "neurons", "--synthetic", "--init-from", str(base_model), "--steps", "1",
               "-o", str(tmp_path / "n")])
    assert rc == 1 and "nuclei model" in capsys.readouterr().err
    rc = main(["train", "neurons", "--synthetic", "--init-from", "neuroseg_nuclei", "--steps", "1",
               "-o", str(tmp_path / "n")])
    assert rc == 1 and "'neuroseg_nuclei' is a nuclei model" in capsys.readouterr().err


def _api_run(base_model, tmp_path, steps=3):
    from napari_neuroseg.models.stardist3d.model import StarDist3D
    from napari_neuroseg.models.stardist3d.train import TrainSettings, train_iter

    img, lbl = _balls((16, 48, 48))
    s = TrainSettings(steps=steps, batch_size=1, patch_size=(16, 32, 32), warmup_steps=1, val_every=1,
                      checkpoint_every=1, n_val_patches=1, device="cpu", optimize_thresholds=False,
                      init_from=str(base_model))
    base = StarDist3D.load(base_model, device="cpu")
    out = tmp_path / "m"
    gen = train_iter([img[:, :36]], [lbl[:, :36]], base.config_dict(), out_dir=out, settings=s,
                     val_images=[img[:, 36:]], val_labels=[lbl[:, 36:]])
    return gen, out


def test_cancel_mid_step_keeps_the_last_checkpoint(tmp_path, base_model, monkeypatch):
    import torch

    from napari_neuroseg.models.stardist3d.model import StarDist3D
    from napari_neuroseg.models.stardist3d.train import TrainProgress

    gen, out = _api_run(base_model, tmp_path)
    first = next(gen)
    assert isinstance(first, TrainProgress) and first.step == 1 and first.loss > 0 and first.val_loss is not None
    calls = {"n": 0}
    real_step = torch.optim.Adam.step

    def step_then_interrupt(self, *a, **k):  # Ctrl-C inside step 2, after its backward pass
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.optim.Adam, "step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        next(gen)
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    assert calls["n"] == 1
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 1
    model = StarDist3D.load(out, device="cpu")  # the last good model still loads
    assert model.scale is not None and model.scale.voxel_size == (1.0, 0.5, 0.5)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_disk_full_while_saving(tmp_path, base_model, monkeypatch):
    import torch

    from napari_neuroseg.models.stardist3d.model import StarDist3D

    gen, out = _api_run(base_model, tmp_path)
    next(gen)  # step 1 saved
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    real_save = torch.save

    def full(obj, f, *a, **k):
        real_save(obj, f, *a, **k)  # half a file written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(NeurosegError) as e:
        next(gen)
    monkeypatch.setattr(torch, "save", real_save)
    msg = str(e.value)
    assert "disk is full" in msg and "step 1 are intact" in msg and "--resume" in msg
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # nothing replaced by a half-written file, no temporaries
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 1
    StarDist3D.load(out, device="cpu")


def test_recipe_defaults_and_user_choices():
    """The fine-tuning recipe fills what the user did not choose; a choice wins."""
    from napari_neuroseg.models.stardist3d.train import TrainSettings
    from napari_neuroseg.models.stardist3d.training.finetune import (
        FINETUNE_RECIPE,
        finetune_settings,
    )

    s = finetune_settings(TrainSettings(), learning_rate=None, patience=3)
    assert s.learning_rate == FINETUNE_RECIPE["learning_rate"] and s.patience == 3
    # the schedule's length is capped (a long time budget does not stretch it) unless --steps is given
    assert s.steps == FINETUNE_RECIPE["steps"] == 250
    assert finetune_settings(TrainSettings(), steps=1000).steps == 1000
    assert s.select_by == "score" and s.val_every == FINETUNE_RECIPE["val_every"]
    assert TrainSettings().select_by == "loss" and TrainSettings().patience == 0  # training from scratch: unchanged


def test_frozen_encoder_stays_and_score_selection_stops_early(tmp_path, base_model):
    """``freeze=("encoder",)`` leaves the contracting path's weights as they were; with
    ``select_by="score"`` every check scores the held-out part, and ``patience`` ends the run
    once the score stops improving (the kept weights are the best-scoring ones)."""
    import torch

    from napari_neuroseg.models.stardist3d.model import StarDist3D
    from napari_neuroseg.models.stardist3d.train import (
        ENCODER_PREFIXES,
        TrainSettings,
        train_iter,
    )
    from napari_neuroseg.runtime.progress import run_to_completion

    img, lbl = _balls((16, 48, 48))
    base = StarDist3D.load(base_model, device="cpu")
    s = TrainSettings(steps=50, batch_size=1, patch_size=(16, 32, 32), warmup_steps=1, val_every=1,
                      checkpoint_every=100, n_val_patches=1, device="cpu", optimize_thresholds=False,
                      init_from=str(base_model), freeze=("encoder",), select_by="score", patience=2,
                      nms_backend="stardist", learning_rate=1e-6, score_probs=(0.9,))  # few candidates: quick
    seen = []
    res = run_to_completion(train_iter([img[:, :36]], [lbl[:, :36]], base.config_dict(), settings=s,
                                       val_images=[img[:, 36:]], val_labels=[lbl[:, 36:]]), seen.append)
    scores = [p.val_score for p in seen if getattr(p, "val_score", None) is not None]
    assert len(scores) == res.step and all(0 <= v <= 1 for v in scores)
    assert res.step < 50 and res.history[-1].get("early_stop")  # no better score in 2 checks: stopped
    before, after = base.net.state_dict(), res.model.net.state_dict()
    for name, w in after.items():
        if name.startswith(ENCODER_PREFIXES):
            assert torch.equal(w, before[name]), name
    assert all(p.requires_grad for p in res.model.net.parameters())  # unfrozen again after training
    with pytest.raises(NeurosegError, match="no network parameter"):
        run_to_completion(train_iter([img[:, :36]], [lbl[:, :36]], base.config_dict(),
                                     settings=TrainSettings(steps=1, batch_size=1, patch_size=(16, 32, 32),
                                                            device="cpu", freeze=("nonexistent.",),
                                                            init_from=str(base_model)),
                                     val_images=[img[:, 36:]], val_labels=[lbl[:, 36:]]))
