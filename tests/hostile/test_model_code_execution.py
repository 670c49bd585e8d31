"""No model or checkpoint file may execute code when it is opened (issue 16, finding 1).

Each test writes a model file whose pickle carries a ``__reduce__`` payload that would create a
marker file, opens it through one loading path a user can reach (CLI, batch, widget helpers,
training ``--init``/``--init-from``/``--resume``) and asserts that the marker never appears and the
user gets a NeurosegError (exit code 1 on the CLI)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from napari_neuroseg.cli import main
from napari_neuroseg.errors import NeurosegError


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _neuron_model_with_payload(path, marker):
    import torch

    from napari_neuroseg.models.neurons import NetConfig, save_model

    cfg = NetConfig(base=4, levels=2)
    save_model(path, cfg.build(), cfg)
    ckpt = torch.load(path, weights_only=True)
    ckpt["train_info"] = {"note": _Payload(marker)}
    torch.save(ckpt, path)
    return path


def _stardist_folder_with_payload(folder, marker):
    """A copy of the shipped StarDist folder whose weights.pt carries the payload."""
    import torch

    from napari_neuroseg.models.stardist3d import resolve_model_path

    src = resolve_model_path("neuroseg_nuclei")
    shutil.copytree(src, folder)
    state = torch.load(folder / "weights.pt", weights_only=True)
    state = {"payload": _Payload(marker), **state} if isinstance(state, dict) else state
    torch.save(state, folder / "weights.pt")
    return folder


@pytest.fixture
def image(tmp_path):
    from napari_neuroseg.io import write_tiff

    rng = np.random.default_rng(0)
    p = tmp_path / "img.tif"
    write_tiff(p, rng.random((3, 8, 16, 16), dtype=np.float32), axes="CZYX")
    return p


def _assert_refused(code, capsys, marker):
    assert not marker.exists(), "the model file executed code"
    assert code == 1
    assert "refused because loading it could run code" in capsys.readouterr().err


def test_payload_really_executes_without_the_guard(tmp_path):
    """The fixture is a real attack: an unguarded load runs it."""
    import torch

    marker = tmp_path / "marker"
    p = _neuron_model_with_payload(tmp_path / "evil.pt", marker)
    torch.load(p, weights_only=False)
    assert marker.exists()


def test_read_checkpoint_load_model_and_cached_load_refuse(tmp_path):
    from napari_neuroseg.models.neurons.model import cached_load_model, load_model, read_checkpoint

    marker = tmp_path / "marker"
    p = _neuron_model_with_payload(tmp_path / "evil.pt", marker)
    for load in (read_checkpoint, load_model, cached_load_model):
        with pytest.raises(NeurosegError, match="refused"):
            load(p)
    assert not marker.exists()


def test_cli_neurons_model(tmp_path, image, capsys):
    marker = tmp_path / "marker"
    p = _neuron_model_with_payload(tmp_path / "evil.pt", marker)
    code = main(["neurons", str(image), "-o", str(tmp_path / "o.tif"), "--model", str(p), "--quiet"])
    _assert_refused(code, capsys, marker)
    assert not (tmp_path / "o.tif").exists()


def test_cli_batch_neurons_model_param(tmp_path, image, capsys):
    marker = tmp_path / "marker"
    p = _neuron_model_with_payload(tmp_path / "evil.pt", marker)
    code = main(["batch", "neurons", str(image), "-o", str(tmp_path / "out"), "-p", f"model={p}"])
    assert not marker.exists(), "the model file executed code"
    assert code != 0


def test_cli_train_neurons_init_and_resume(tmp_path, capsys):
    marker = tmp_path / "marker"
    p = _neuron_model_with_payload(tmp_path / "evil.pt", marker)
    common = ["train", "neurons", "--synthetic", "--iterations", "1", "--base", "4", "--levels", "2",
              "--patch", "8", "16", "16", "--synth-shape", "8", "32", "32", "--pool-size", "1",
              "--val-every", "0", "--quiet", "--device", "cpu"]
    code = main([*common, "-o", str(tmp_path / "a"), "--init", str(p)])
    _assert_refused(code, capsys, marker)
    (tmp_path / "b").mkdir()
    shutil.copy(p, tmp_path / "b" / "last.pt")
    code = main([*common, "-o", str(tmp_path / "b"), "--resume"])
    _assert_refused(code, capsys, marker)


def test_neurons_widget_model_reader_refuses(tmp_path):
    """The Neurons widget reads thresholds through read_checkpoint (same guard); its fallback
    (keep the boxes, show why) must not execute the file either."""
    from napari_neuroseg.models.neurons.model import read_checkpoint, stored_params

    marker = tmp_path / "marker"
    p = _neuron_model_with_payload(tmp_path / "evil.pt", marker)
    with pytest.raises(NeurosegError):
        stored_params(read_checkpoint(p))
    assert not marker.exists()


def test_stardist_folder_cli_and_init_from(tmp_path, image, capsys):
    from napari_neuroseg.io import write_tiff

    marker = tmp_path / "marker"
    folder = _stardist_folder_with_payload(tmp_path / "evil_model", marker)
    rng = np.random.default_rng(0)
    img = tmp_path / "nuc.tif"
    write_tiff(img, rng.random((16, 32, 32), dtype=np.float32))
    code = main(["nuclei", str(img), "-o", str(tmp_path / "o.tif"), "--model", str(folder)])
    _assert_refused(code, capsys, marker)
    lab = tmp_path / "lab.tif"
    labels = np.zeros((16, 32, 32), np.uint16)
    labels[4:10, 8:16, 8:16], labels[4:10, 20:28, 20:28] = 1, 2  # valid training data: the weights are reached
    write_tiff(lab, labels)
    code = main(["train", "nuclei", "--images", str(img), "--labels", str(lab), "-o", str(tmp_path / "m"),
                 "--init-from", str(folder), "--steps", "1"])
    _assert_refused(code, capsys, marker)


def test_stardist_single_file_and_training_checkpoint(tmp_path, capsys):
    import torch

    from napari_neuroseg.models.stardist3d import StarDist3D

    marker = tmp_path / "marker"
    torch.save({"format": "x", "payload": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(NeurosegError, match="refused"):
        StarDist3D.load(tmp_path / "evil.pt", device="cpu")
    # train nuclei --resume reads MODEL_DIR/checkpoint.pt
    from napari_neuroseg.io import write_tiff

    img, lab = tmp_path / "nuc.tif", tmp_path / "lab.tif"
    write_tiff(img, np.random.default_rng(0).random((16, 32, 32), dtype=np.float32))
    labels = np.zeros((16, 32, 32), np.uint16)
    labels[4:10, 8:16, 8:16], labels[4:10, 20:28, 20:28] = 1, 2
    write_tiff(lab, labels)
    (tmp_path / "m").mkdir()
    shutil.copy(tmp_path / "evil.pt", tmp_path / "m" / "checkpoint.pt")
    code = main(["train", "nuclei", "--images", str(img), "--labels", str(lab), "-o", str(tmp_path / "m"),
                 "--resume", "--steps", "1"])
    _assert_refused(code, capsys, marker)
