"""The "Neurons (FISBe)" widget: layer choice, segmentation in a worker, errors, cancel."""

from __future__ import annotations

import numpy as np
import pytest

from napari_neuroseg._napari.neurons_widget import NONE, NeuronsWidget


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from napari_neuroseg.models.neurons import NetConfig, save_model

    torch.manual_seed(0)
    cfg = NetConfig(base=4, levels=2)
    net = cfg.build()
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(path, net, cfg)
    return path


@pytest.fixture(scope="module")
def volume():
    from napari_neuroseg.synth import make_neurons

    return make_neurons((16, 40, 40), seed=5, n_neurons=2)


def _wait(w, qtbot):
    qtbot.waitUntil(lambda: w.worker is None, timeout=120000)


def test_three_channel_layers_segment_into_labels(make_napari_viewer, qtbot, tiny_model, volume):
    viewer = make_napari_viewer()
    viewer.add_image(volume.raw, channel_axis=0, name=["red", "green", "blue"])
    w = NeuronsWidget(viewer)
    assert [c.currentText() for c in w.channel_combos] == ["red", "green", "blue"]
    w.model_edit.setText(str(tiny_model))
    w.device_combo.setCurrentText("cpu")
    w.fg_spin.setValue(0.05)
    w.min_size_spin.setValue(1)
    w.run()
    _wait(w, qtbot)
    assert w.result is not None, w.status.text()
    layer = viewer.layers["red neurons"]
    assert layer.data.shape == volume.raw.shape[1:] and layer.data.dtype == np.uint32
    np.testing.assert_array_equal(layer.data, w.result.labels)
    assert w.status.text().startswith("Done")
    # a second run replaces the layer's data instead of adding another layer
    w.run()
    _wait(w, qtbot)
    assert sum(ly.name == "red neurons" for ly in viewer.layers) == 1


def test_czyx_layer_and_bad_choices(make_napari_viewer, qtbot, tiny_model, volume):
    viewer = make_napari_viewer()
    viewer.add_image(volume.raw, name="raw czyx")
    w = NeuronsWidget(viewer)
    assert w.channel_combos[0].currentText() == "raw czyx" and w.channel_combos[1].currentText() == NONE
    assert len(w.selected_channels()) == 1
    # a single-channel 3D layer alone: the model's input check reports it in the status line
    viewer.add_image(volume.raw[0], name="one channel")
    w.channel_combos[0].setCurrentText("one channel")
    w.model_edit.setText(str(tiny_model))
    w.run()
    _wait(w, qtbot)
    assert w.result is None and "single-channel" in w.status.text()
    # CZYX plus extra channels is refused before starting a worker
    w.channel_combos[0].setCurrentText("raw czyx")
    w.channel_combos[1].setCurrentText("one channel")
    w.run()
    assert w.worker is None and "three single-channel" in w.status.text()


def test_cancel_leaves_no_layer(make_napari_viewer, qtbot, tiny_model, volume):
    viewer = make_napari_viewer()
    viewer.add_image(np.tile(volume.raw, (1, 4, 2, 2)), name="big")
    w = NeuronsWidget(viewer)
    w.model_edit.setText(str(tiny_model))
    w.run()
    w.cancel()
    _wait(w, qtbot)
    assert "big neurons" not in viewer.layers
    assert w.run_button.isEnabled()


def test_thresholds_follow_the_chosen_model(make_napari_viewer, tmp_path):
    """The threshold boxes show the values stored in the model file (shipped model by default);
    an unreadable model file leaves them and says why."""
    import torch

    from napari_neuroseg.models.neurons import NetConfig, PostprocessParams, save_model
    from napari_neuroseg.models.neurons.model import DEFAULT_MODEL, read_checkpoint

    w = NeuronsWidget(make_napari_viewer())
    shipped = read_checkpoint(DEFAULT_MODEL)["postprocess"]
    assert w.merge_spin.value() == pytest.approx(shipped["merge_threshold"])
    assert w.min_size_spin.value() == shipped["min_size"]

    torch.manual_seed(0)
    cfg = NetConfig(base=4, levels=2)
    path = tmp_path / "tuned.pt"
    save_model(path, cfg.build(), cfg, PostprocessParams(fg_threshold=0.3, merge_threshold=0.4, min_size=77))
    w.model_edit.setText(str(path))
    w.model_edit.editingFinished.emit()
    assert (w.fg_spin.value(), w.merge_spin.value(), w.min_size_spin.value()) == (pytest.approx(0.3), pytest.approx(0.4), 77)
    assert w.params() == {"fg_threshold": pytest.approx(0.3), "merge_threshold": pytest.approx(0.4), "min_size": 77}

    (tmp_path / "bad.pt").write_bytes(b"not a model")
    w.model_edit.setText(str(tmp_path / "bad.pt"))
    w.model_edit.editingFinished.emit()
    assert w.merge_spin.value() == pytest.approx(0.4) and "Model not read" in w.status.text()
