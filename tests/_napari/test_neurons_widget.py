"""The "Neurons (FISBe)" widget: layer choice, segmentation in a worker, errors, cancel."""

from __future__ import annotations

import numpy as np
import pytest

from napari_neuroseg._napari.neurons_widget import FILE, NeuronsWidget


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
    f = w.form
    assert [f.raw.value.name, f.channel_2.value.name, f.channel_3.value.name] == ["red", "green", "blue"]
    f.model.value = FILE
    f.model_path.value = str(tiny_model)
    f.device.value = "cpu"
    f.fg_threshold.value = 0.05
    f.min_size.value = 1
    w.run()
    _wait(w, qtbot)
    assert w.result is not None, w.status.text()
    layer = viewer.layers["red neurons"]
    # the ids fit 16 bits: the worker handed napari uint16 labels (shown without a per-slice remap)
    assert layer.data.shape == volume.raw.shape[1:] and layer.data.dtype == np.uint16
    np.testing.assert_array_equal(layer.data, w.result.labels)
    assert w.status.text().startswith("Done")
    # the layer was built in the worker (neurons_display_job): run's metadata, no painting-overlay
    # visual until its mode is picked, the active layer as add_labels made it
    assert layer is w.result_layer and layer.metadata["neuroseg"]["params"] == w.result.params.to_dict()
    assert viewer.layers.selection.active is layer and not layer._overlays["polygon"].visible
    # a second run replaces the layer's data instead of adding another layer
    w.run()
    _wait(w, qtbot)
    assert sum(ly.name == "red neurons" for ly in viewer.layers) == 1


def test_czyx_layer_and_bad_choices(make_napari_viewer, qtbot, tiny_model, volume):
    viewer = make_napari_viewer()
    viewer.add_image(volume.raw, name="raw czyx")
    w = NeuronsWidget(viewer)
    f = w.form
    assert f.raw.value.name == "raw czyx" and f.channel_2.value is None and f.channel_3.value is None
    assert len(w.selected_channels()) == 1
    # a single-channel 3D layer alone: the model's input check reports it in the status line
    viewer.add_image(volume.raw[0], name="one channel")
    f.raw.value = viewer.layers["one channel"]
    f.model.value = FILE
    f.model_path.value = str(tiny_model)
    w.run()
    _wait(w, qtbot)
    assert w.result is None and "single-channel" in w.status.text()
    # CZYX plus extra channels is refused before starting a worker
    f.raw.value = viewer.layers["raw czyx"]
    f.channel_2.value = viewer.layers["one channel"]
    w.run()
    assert w.worker is None and "three single-channel" in w.status.text()


def test_cancel_leaves_no_layer(make_napari_viewer, qtbot, tiny_model, volume):
    viewer = make_napari_viewer()
    viewer.add_image(np.tile(volume.raw, (1, 4, 2, 2)), name="big")
    w = NeuronsWidget(viewer)
    w.form.model.value = FILE
    w.form.model_path.value = str(tiny_model)
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
    f = w.form
    shipped = read_checkpoint(DEFAULT_MODEL)["postprocess"]
    assert f.merge_threshold.value == pytest.approx(shipped["merge_threshold"])
    assert f.min_size.value == shipped["min_size"]

    torch.manual_seed(0)
    cfg = NetConfig(base=4, levels=2)
    path = tmp_path / "tuned.pt"
    save_model(path, cfg.build(), cfg, PostprocessParams(fg_threshold=0.3, merge_threshold=0.4, min_size=77))
    f.model.value = FILE
    f.model_path.value = str(path)
    assert (f.fg_threshold.value, f.merge_threshold.value, f.min_size.value) == (pytest.approx(0.3), pytest.approx(0.4), 77)
    assert w.params() == {"fg_threshold": pytest.approx(0.3), "merge_threshold": pytest.approx(0.4), "min_size": 77}

    (tmp_path / "bad.pt").write_bytes(b"not a model")
    f.model_path.value = str(tmp_path / "bad.pt")
    assert f.merge_threshold.value == pytest.approx(0.4) and "Model not read" in w.status.text()


def test_voxel_size_from_the_layer_scale(make_napari_viewer, volume):
    """The voxel-size box follows the raw layer's scale when it has a length unit (as in the
    Nuclei dock), is blank for napari's default pixel units, and is passed to the job."""
    viewer = make_napari_viewer()
    viewer.add_image(volume.raw, name="raw um", scale=(1, 0.5, 0.4, 0.4), units=("", "um", "um", "um"))
    viewer.add_image(volume.raw, name="raw px", scale=(1, 2, 1, 1))
    w = NeuronsWidget(viewer)
    f = w.form
    f.raw.value = viewer.layers["raw um"]
    assert f.voxel_size.value == "0.5 0.4 0.4" and w.voxel_size() == (0.5, 0.4, 0.4)
    f.raw.value = viewer.layers["raw px"]
    assert f.voxel_size.value == "" and w.voxel_size() is None
    f.voxel_size.value = "0.5 zero 1"
    w.run()
    assert w.worker is None and "voxel size" in w.status.text()


@pytest.fixture(scope="module")
def neuron_package(tmp_path_factory, tiny_model):
    pytest.importorskip("bioimageio.spec")
    from napari_neuroseg.models.bioimageio import export_package

    return export_package(tiny_model, tmp_path_factory.mktemp("pkg") / "tiny_neurons.zip")


def test_bioimageio_package_in_the_widget_and_the_cli(make_napari_viewer, qtbot, tmp_path, tiny_model,
                                                        neuron_package, volume):
    """A package exported by this project (zip, or its unpacked folder / rdf.yaml) is a model for
    the widget and for `neuroseg neurons --model`: same labels as the .pt it came from."""
    import zipfile

    from napari_neuroseg.cli import main
    from napari_neuroseg.io import read_labels, write_tiff
    from napari_neuroseg.models.neurons import predict

    viewer = make_napari_viewer()
    viewer.add_image(volume.raw, name="raw")
    w = NeuronsWidget(viewer)
    f = w.form
    f.model.value = FILE
    f.model_path.value = str(neuron_package)
    assert "Model not read" not in w.status.text()
    f.device.value = "cpu"
    f.fg_threshold.value = 0.05
    f.min_size.value = 1
    w.run()
    _wait(w, qtbot)
    assert w.result is not None, w.status.text()
    ref = predict(volume.raw, tiny_model, device="cpu", params=w.params())
    np.testing.assert_array_equal(w.result.labels, ref.labels)
    # unpacked: the folder and its rdf.yaml are packages too
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(neuron_package) as z:
        z.extractall(folder)
    for spec in (folder, folder / "rdf.yaml"):
        res = predict(volume.raw, spec, device="cpu", params=w.params())
        np.testing.assert_array_equal(res.labels, ref.labels)
    # the CLI
    src = tmp_path / "raw.tif"
    write_tiff(src, volume.raw, axes="CZYX")
    out = tmp_path / "out.tif"
    assert main(["neurons", str(src), "-o", str(out), "--model", str(neuron_package), "--device", "cpu",
                 "--fg-threshold", "0.05", "--min-size", "1", "--quiet"]) == 0
    np.testing.assert_array_equal(np.asarray(read_labels(out)), ref.labels)


def test_torchscript_only_package_is_refused(tmp_path, neuron_package):
    """TorchScript is code: a package offering only TorchScript weights is not loaded."""
    import zipfile

    import yaml

    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.models.neurons import load_model

    folder = tmp_path / "ts"
    with zipfile.ZipFile(neuron_package) as z:
        z.extractall(folder)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    assert "torchscript" in rdf["weights"]
    rdf["weights"] = {"torchscript": rdf["weights"]["torchscript"]}
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    with pytest.raises(NeurosegError, match="pytorch_state_dict"):
        load_model(folder, "cpu")


def test_save_writes_the_result_and_asks_before_overwriting_an_input(make_napari_viewer, qtbot, tiny_model,
                                                                     volume, tmp_path, monkeypatch):
    from napari_neuroseg._napari import _save
    from napari_neuroseg.io import read_labels, write_tiff

    src = tmp_path / "raw.tif"
    write_tiff(src, volume.raw, axes="CZYX")
    viewer = make_napari_viewer()
    viewer.open(str(src), plugin="napari-neuroseg")
    w = NeuronsWidget(viewer)
    assert not w.save_button.isEnabled()
    f = w.form
    f.model.value = FILE
    f.model_path.value = str(tiny_model)
    f.fg_threshold.value = 0.05
    f.min_size.value = 1
    w.run()
    _wait(w, qtbot)
    assert w.result is not None and w.save_button.isEnabled()
    asked: list = []
    answers: list = []
    monkeypatch.setattr(_save, "ask_save_path", lambda parent, title, start, filters: (
        asked.append(list(filters)) or answers.pop(0)))
    confirmed: list = []
    monkeypatch.setattr(_save, "confirm", lambda parent, title, text: confirmed.append(text) or False)
    answers.append((str(tmp_path / "result"), _save.TIFF_FILTER))  # no extension: the format's
    assert w.save() == str(tmp_path / "result.tif")
    assert asked[0][0] == _save.TIFF_FILTER and any("OME-Zarr" in x for x in asked[0])
    np.testing.assert_array_equal(np.asarray(read_labels(tmp_path / "result.tif")), w.result.labels)
    # the input's own file: asked, refused, untouched
    before = src.read_bytes()
    answers.append((str(src), _save.TIFF_FILTER))
    assert w.save() is None and confirmed and "raw" in confirmed[-1]
    assert src.read_bytes() == before and "Not saved" in w.status.text()
    # cancelled dialog
    answers.append(("", ""))
    assert w.save() is None


def test_neurite_thickness_field(make_napari_viewer, volume):
    """The thickness box is parsed like --object-size; 'auto' and nonsense stop before a run."""
    viewer = make_napari_viewer()
    viewer.add_image(volume.raw, name="raw")
    w = NeuronsWidget(viewer)
    f = w.form
    f.raw.value = viewer.layers["raw"]
    assert w.object_size() is None
    f.object_size.value = "4 vox"
    assert w.object_size() == "4 vox"
    for bad, words in (("auto", "automatic neurite thickness"), ("thick", "not understood")):
        f.object_size.value = bad
        w.run()
        assert w.worker is None and words in w.status.text()
    assert f.object_size.tooltip and "vox" in f.object_size.tooltip


@pytest.mark.timeout(240)
def test_opening_the_dock_readies_the_post_processing_kernels(make_napari_viewer, warms_once):
    """The dock starts ``postprocess.warmup`` in a background thread once per process: numba's
    compiler no longer runs in the user's first run (tests/neurons/test_postprocess_warmup.py
    checks that a prediction after it compiles nothing)."""
    from napari_neuroseg._napari import _workers
    from napari_neuroseg.models.neurons import _postprocess_kernels as K

    warms_once(make_napari_viewer(), NeuronsWidget, _workers.NEURONS_WARMUP)
    assert K.count_rows.signatures and K.write_labels.signatures and K.greedy_merge.signatures


def test_the_status_says_post_processing_while_it_runs(make_napari_viewer, qtbot, tiny_model, volume, monkeypatch):
    """The step the job yields right after the last network tile ("post-processing: foreground
    (0 %)") is shown while the post-processing runs (held back by the progress rate limit, the
    dock said "network: tile 1/1" through 3-13 s of it)."""
    import importlib
    import threading

    predict_module = importlib.import_module("napari_neuroseg.models.neurons.predict")
    entered, release = threading.Event(), threading.Event()
    real = predict_module.instances_from_outputs_iter

    def slow_post_processing(*args, **kwargs):  # held after announcing its first step
        gen = real(*args, **kwargs)
        yield next(gen)
        entered.set()
        release.wait(60)
        return (yield from gen)

    monkeypatch.setattr(predict_module, "instances_from_outputs_iter", slow_post_processing)
    viewer = make_napari_viewer()
    viewer.add_image(volume.raw, name="raw")
    w = NeuronsWidget(viewer)
    w.form.model.value = FILE
    w.form.model_path.value = str(tiny_model)
    w.form.device.value = "cpu"
    w.run()
    try:
        qtbot.waitUntil(entered.is_set, timeout=60_000)
        qtbot.waitUntil(lambda: w.status.text().startswith("post-processing: foreground"), timeout=5_000)
    finally:
        release.set()
    _wait(w, qtbot)
    assert w.status.text().startswith("Done")
