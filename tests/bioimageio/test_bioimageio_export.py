"""BioImage.IO export: ``neuroseg export`` writes packages that bioimageio.spec accepts (files and
hashes checked), whose test outputs are the model's, that bioimageio.core's model test passes,
and that import back with identical weights and outputs."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import yaml
from zoo_fixtures import KERAS_DIR

from napari_neuroseg.errors import NeurosegError

pytest.importorskip("bioimageio.spec")

NAME = "unet_d2_g122_r48_aniso_c2"


@pytest.fixture(scope="module")
def nuclei_zip(tmp_path_factory):
    from napari_neuroseg.cli import main

    out = tmp_path_factory.mktemp("exp") / "nuclei.zip"
    assert main(["export", str(KERAS_DIR / NAME), str(out), "--author", "A. Tester", "--license", "MIT"]) == 0
    return out


@pytest.fixture(scope="module")
def neuron_model_file(tmp_path_factory):
    import torch

    from napari_neuroseg.models.neurons import NetConfig, PostprocessParams, save_model

    torch.manual_seed(0)
    cfg = NetConfig(base=4, levels=2)
    net = cfg.build()
    for m in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("neur") / "tiny_neurons.pt"
    save_model(path, net, cfg, PostprocessParams())
    return path


def _rdf(z) -> dict:
    with zipfile.ZipFile(z) as f:
        return yaml.safe_load(f.read("rdf.yaml"))


def test_nuclei_package_content_and_validation(nuclei_zip):
    from bioimageio.spec import InvalidDescr, load_description

    descr = load_description(nuclei_zip, perform_io_checks=True)
    assert not isinstance(descr, InvalidDescr), descr.validation_summary
    rdf = _rdf(nuclei_zip)
    with zipfile.ZipFile(nuclei_zip) as f:
        names = set(f.namelist())
    assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "environment.yaml", "README.md", "cover.png",
            "test_input.npy", "prob.npy", "dist.npy"} <= names
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert arch["import_from"] == "napari_neuroseg.models.bioimageio.arch" and arch["kwargs"]["config"]["n_rays"] == 48
    sd = rdf["config"]["stardist"]
    assert sd["config"]["grid"] == [1, 2, 2] and sd["thresholds"]["nms"] == 0.3 and "border" in sd["thresholds"]
    pre = rdf["inputs"][0]["preprocessing"][-1]
    assert pre["id"] == "scale_range" and (pre["kwargs"]["min_percentile"], pre["kwargs"]["max_percentile"]) == (1.0, 99.8)
    assert rdf["authors"] == [{"name": "A. Tester"}] and rdf["license"] == "MIT" and len(rdf["cite"]) == 2


def test_nuclei_roundtrip_identical(nuclei_zip):
    from napari_neuroseg.models.bioimageio import load_stardist3d
    from napari_neuroseg.models.stardist3d import StarDist3D

    orig = StarDist3D.from_folder(KERAS_DIR / NAME, device="cpu")
    back = load_stardist3d(nuclei_zip, device="cpu")
    assert back.config.to_dict() == orig.config_dict() or back.config.to_dict() == orig.config.to_dict() | {
        "rays_json": back.config.rays_json}
    assert back.thresholds == orig.thresholds and back.percentiles == orig.percentiles
    for k, v in orig.net.state_dict().items():
        assert np.array_equal(back.net.state_dict()[k].numpy(), v.numpy()), k
    with zipfile.ZipFile(nuclei_zip) as f:
        import io

        x = np.load(io.BytesIO(f.read("test_input.npy")))
        prob_t = np.load(io.BytesIO(f.read("prob.npy")))
    xn = np.stack([c for c in x[0]])
    prob, dist = back.predict(StarDist3D.prepare_image(back, xn))
    prob_o, dist_o = orig.predict(StarDist3D.prepare_image(orig, xn))
    assert np.array_equal(prob, prob_o) and np.array_equal(dist, dist_o)
    np.testing.assert_allclose(prob, prob_t[0, 0], atol=1e-5)  # the package's test output is the model's


@pytest.mark.slow  # ~20 s on 2 loaded cores (bioimageio.core import + 12 inference runs)
def test_bioimageio_core_reproduces_test_outputs(nuclei_zip):
    core = pytest.importorskip("bioimageio.core")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = core.test_model(nuclei_zip)
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    names = " ".join(d.name for d in summary.details)
    assert "Reproduce test outputs from test inputs (pytorch_state_dict)" in names
    assert "Reproduce test outputs from test inputs (torchscript)" in names


def test_neuron_package_roundtrip(tmp_path, neuron_model_file):
    import torch
    from bioimageio.spec import InvalidDescr, load_description

    from napari_neuroseg.models.bioimageio import export_package, load_neuron_model
    from napari_neuroseg.models.neurons import load_model

    out = export_package(neuron_model_file, tmp_path / "neurons.zip")
    assert not isinstance(load_description(out, perform_io_checks=True), InvalidDescr)
    rdf = _rdf(out)
    assert rdf["config"]["neuroseg"]["model"] == "neurons" and rdf["outputs"][0]["postprocessing"] == [{"id": "sigmoid"}]
    assert rdf["config"]["neuroseg"]["postprocess"] == load_model(neuron_model_file, "cpu").params.to_dict()
    orig = load_model(neuron_model_file, "cpu")
    back = load_neuron_model(out, device="cpu")
    assert back.config == orig.config and back.params == orig.params
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, 8, 16, 16)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(orig.net(x), back.net(x))
    with pytest.raises(NeurosegError, match="neuron"):
        from napari_neuroseg.models.bioimageio import load_stardist3d

        load_stardist3d(out)


def test_export_refusals(tmp_path, nuclei_zip, monkeypatch):
    from napari_neuroseg.cli import main
    from napari_neuroseg.models.bioimageio import export_package

    with pytest.raises(NeurosegError, match=r"\.zip"):
        export_package(KERAS_DIR / NAME, tmp_path / "x.tar")
    before = nuclei_zip.read_bytes()
    assert main(["export", str(KERAS_DIR / NAME), str(nuclei_zip)]) == 1  # exists, no --overwrite
    assert nuclei_zip.read_bytes() == before
    with pytest.raises(NeurosegError, match="neither a bundled model"):
        export_package("no_such_model", tmp_path / "y.zip")
    import builtins

    real = builtins.__import__

    def no_spec(name, *a, **k):
        if name.startswith("bioimageio"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_spec)
    with pytest.raises(NeurosegError, match=r"napari-neuroseg\[bioimageio\]"):
        export_package(KERAS_DIR / NAME, tmp_path / "z.zip")
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob(".*"))
