"""End-to-end training on a tiny FISBe-layout folder and on synthetic data (a few iterations)."""

import argparse
import json

import numpy as np
import pytest

from napari_neuroseg.cli.train import add_neuron_arguments, neuron_settings, run_neurons
from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models.neurons import load_model, predict
from napari_neuroseg.models.neurons.data import find_samples
from napari_neuroseg.models.neurons.train import NeuronTrainSettings


def _args(*argv):
    p = argparse.ArgumentParser()
    add_neuron_arguments(p)
    return p.parse_args(list(argv))


def test_old_flag_spellings_are_hidden_aliases():
    """--out/--iterations/--init give the same settings as -o/--steps/--init-from and are not
    listed in --help."""
    new = neuron_settings(_args("--synthetic", "-o", "d", "--steps", "7", "--init-from", "m.pt"))
    old = neuron_settings(_args("--synthetic", "--out", "d", "--iterations", "7", "--init", "m.pt"))
    assert new == old == NeuronTrainSettings(output="d", synthetic=True, steps=7, init_from="m.pt")
    # --init-from on annotated data (--data): the fine-tuning recipe fills what was not given
    ft = neuron_settings(_args("--data", "dir", "-o", "d", "--init-from", "m.pt", "--val-every", "10"))
    assert (ft.lr, ft.val_every, ft.save_every, ft.tune_postprocess) == (1e-3, 10, 25, True)
    p = argparse.ArgumentParser()
    add_neuron_arguments(p)
    text = p.format_help()
    assert "--steps" in text and "--init-from" in text
    assert "--iterations" not in text and "--out " not in text and "--init " not in text


@pytest.fixture(scope="module")
def fisbe_folder(tmp_path_factory):
    from napari_neuroseg.io import write_fisbe
    from napari_neuroseg.synth import make_neurons

    d = tmp_path_factory.mktemp("fisbe")
    for i, name in enumerate(["a", "b", "c"]):
        v = make_neurons((16, 48, 48), seed=100 + i, n_neurons=2)
        write_fisbe(d / f"{name}.zarr", raw=v.raw, gt_instances=v.gt_instances)
    (d / "split.json").write_text(json.dumps({"train": ["a.zarr", "b.zarr"], "val": ["c"], "test": []}))
    return d


def test_split_discovery(fisbe_folder, tmp_path):
    s = find_samples(fisbe_folder)
    assert [p.name for p in s["train"]] == ["a.zarr", "b.zarr"] and [p.name for p in s["val"]] == ["c.zarr"]
    txt = tmp_path / "split.csv"
    txt.write_text("a,val\nb,train\nc,train\n")
    s = find_samples(fisbe_folder, txt)
    assert [p.name for p in s["val"]] == ["a.zarr"]
    with pytest.raises(NeurosegError, match="no training samples"):
        find_samples(tmp_path)


def test_train_on_fisbe_folder_and_resume(fisbe_folder, tmp_path):
    out = tmp_path / "run"
    common = ["--data", str(fisbe_folder), "-o", str(out), "--patch", "8", "16", "16", "--base", "4",
              "--levels", "2", "--save-every", "2", "--val-every", "3", "--threads", "1", "--quiet"]
    assert run_neurons(_args(*common, "--steps", "3")) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3] and "val" in log[-1]
    assert np.isfinite([r["loss"] for r in log]).all()
    for f in ("last.pt", "best.pt", "model.pt"):
        assert (out / f).is_file()
    assert run_neurons(_args(*common, "--steps", "5", "--resume")) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log][-2:] == [4, 5]
    m = load_model(out / "model.pt", "cpu")
    res = predict(np.random.default_rng(0).integers(0, 1000, (3, 16, 32, 32)).astype(np.uint16), m)
    assert res.labels.shape == (16, 32, 32)


def test_train_synthetic_few_iterations(tmp_path):
    out = tmp_path / "syn"
    args = _args("--synthetic", "-o", str(out), "--steps", "2", "--patch", "8", "16", "16", "--base", "4",
                 "--levels", "2", "--pool-size", "1", "--synth-shape", "16", "32", "32", "--val-every", "0",
                 "--threads", "1", "--quiet")
    assert run_neurons(args) == 0
    assert (out / "model.pt").is_file() and (out / "last.pt").is_file()
    # a new model stores the scale it was trained at (the shipped model's: same synthetic data)
    from napari_neuroseg.models.neurons.model import DEFAULT_MODEL
    from napari_neuroseg.models.neurons.predict import model_scale
    from napari_neuroseg.runtime.scale import read_scale_json

    shipped = read_scale_json(DEFAULT_MODEL.with_name(DEFAULT_MODEL.stem + ".scale.json"))
    assert read_scale_json(out / "model.scale.json") == shipped
    assert model_scale(load_model(out / "model.pt", "cpu")) == shipped


def test_trained_model_keeps_the_given_voxel_size(tmp_path):
    """--voxel-size is the new model's scale: sidecar and checkpoint, so --model resamples to it."""
    from napari_neuroseg.models.neurons.model import read_checkpoint
    from napari_neuroseg.models.neurons.predict import model_scale
    from napari_neuroseg.runtime.scale import read_scale_json

    out = tmp_path / "vs"
    args = _args("--synthetic", "-o", str(out), "--steps", "1", "--patch", "8", "16", "16", "--base", "4",
                 "--levels", "2", "--pool-size", "1", "--synth-shape", "16", "32", "32", "--val-every", "0",
                 "--threads", "1", "--quiet", "--voxel-size", "1", "0.5", "0.5")
    assert run_neurons(args) == 0
    sc = read_scale_json(out / "model.scale.json")
    assert sc.voxel_size == (1.0, 0.5, 0.5) and not sc.nominal
    assert read_checkpoint(out / "last.pt")["scale"]["voxel_size"] == [1.0, 0.5, 0.5]
    (out / "model.scale.json").unlink()  # the checkpoint's copy alone still gives the scale
    assert model_scale(load_model(out / "model.pt", "cpu")).voxel_size == (1.0, 0.5, 0.5)


def test_bad_training_arguments(tmp_path):
    with pytest.raises(NeurosegError, match="multiple"):
        run_neurons(_args("--synthetic", "-o", str(tmp_path / "x"), "--patch", "9", "16", "16", "--levels", "2",
                     "--steps", "1", "--quiet"))
    with pytest.raises(NeurosegError, match="nothing to resume"):
        run_neurons(_args("--synthetic", "-o", str(tmp_path / "y"), "--resume", "--steps", "1", "--quiet"))


def test_train_with_batch_workers_and_time_budget(fisbe_folder, tmp_path):
    """--workers makes batches in background processes (synthetic and FISBe files);
    a spent --max-minutes budget stops the run at once with a checkpoint."""
    out = tmp_path / "w"
    args = _args("--synthetic", "-o", str(out), "--steps", "3", "--patch", "8", "16", "16", "--base", "4",
                 "--levels", "2", "--pool-size", "2", "--synth-shape", "16", "32", "32", "--val-every", "0",
                 "--threads", "1", "--workers", "2", "--quiet")
    assert run_neurons(args) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3] and np.isfinite([r["loss"] for r in log]).all()

    out2 = tmp_path / "b"
    args = _args("--data", str(fisbe_folder), "-o", str(out2), "--steps", "50", "--patch", "8", "16", "16",
                 "--base", "4", "--levels", "2", "--val-every", "0", "--threads", "1", "--workers", "1",
                 "--max-minutes", "1e-6", "--quiet")
    assert run_neurons(args) == 0
    log = [json.loads(line) for line in (out2 / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1]
    from napari_neuroseg.models.neurons.model import read_checkpoint

    assert read_checkpoint(out2 / "last.pt")["iteration"] == 1


@pytest.mark.slow  # 31 s on 2 cores (the default suite keeps under 8 min)
def test_finetune_on_one_volume_holds_out_a_slab_and_tunes_postprocess(tmp_path):
    """Fine-tuning (--init-from) on a folder with one annotated volume and no validation sample:
    a slab of it is held out and scored at every check, the post-processing thresholds are
    chosen there, and --model accepts the output folder."""
    from napari_neuroseg.io import write_fisbe
    from napari_neuroseg.models.neurons.model import (
        NetConfig,
        read_checkpoint,
        save_model,
    )
    from napari_neuroseg.models.neurons.train import POSTPROCESS_GRID, split_holdout
    from napari_neuroseg.models.registry import resolve_neuron_model
    from napari_neuroseg.synth import make_neurons

    v = make_neurons((16, 48, 48), seed=100, n_neurons=3)
    parts = split_holdout(v.raw, v.gt_instances, 0.25)
    (rt, gt_t), (rv, gt_v) = parts
    assert rt.shape[1:] == (16, 36, 48) and rv.shape[1:] == (16, 12, 48)  # the last quarter of Y
    assert gt_t.shape[1:] == rt.shape[1:] and all(g.any() for g in gt_v)
    assert split_holdout(v.raw[:, :, :20, :20], v.gt_instances[:, :, :20, :20], 0.25) is None  # too thin
    data = tmp_path / "data"
    data.mkdir()
    write_fisbe(data / "one.zarr", raw=v.raw, gt_instances=v.gt_instances)
    base = tmp_path / "base.pt"
    import torch

    torch.manual_seed(0)
    cfg = NetConfig(base=4, levels=2)
    save_model(base, cfg.build(), cfg)
    out = tmp_path / "ft"
    assert run_neurons(_args("--data", str(data), "-o", str(out), "--init-from", str(base), "--steps", "2",
                             "--patch", "8", "16", "16", "--val-every", "1", "--threads", "1", "--quiet")) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [list(r["val"]) for r in log] == [["one.zarr (held-out slab)"]] * 2
    assert resolve_neuron_model(str(out)) == out / "model.pt"  # --model OUT works
    from napari_neuroseg.models.stardist3d.pretrained import resolve_model_path

    with pytest.raises(NeurosegError, match="output folder of 'train neurons'"):
        resolve_model_path(str(out))  # 'neuroseg nuclei --model OUT' names the mix-up
    blob = read_checkpoint(out / "model.pt")
    search = blob["scores"]["postprocess_search"]
    chosen = search["chosen"]
    assert set(chosen) == {*POSTPROCESS_GRID, "use_affinities", "use_colour"}
    assert all(blob["postprocess"][k] == v for k, v in chosen.items())
    assert load_model(out / "model.pt", device="cpu").params.to_dict() == blob["postprocess"]  # what predict uses
    # searched on the whole annotated volume for both best.pt and last.pt; the better pair kept
    assert [c["weights"] for c in search["candidates"]] == ["best.pt", "last.pt"]
    assert search["weights"] in ("best.pt", "last.pt") and search["avF1"] == max(c["avF1"] for c in search["candidates"])
    with pytest.raises(NeurosegError, match="no neuron model"):
        resolve_neuron_model(str(tmp_path))
