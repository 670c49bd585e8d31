"""``neuroseg nuclei``: segment the bundled sample with a model, write labels, print the count."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_neuroseg.cli import main
from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.synth import sample_path


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny untrained-but-saved StarDist-3D model folder in the project's format (fast)."""
    import torch

    from napari_neuroseg.models.stardist3d.config import Thresholds
    from napari_neuroseg.models.stardist3d.model import StarDist3D
    from napari_neuroseg.models.stardist3d.train import default_config

    torch.manual_seed(0)
    cfg = default_config(n_rays=16, n_filter_base=4, net_conv_after=8)
    model = StarDist3D(cfg, Thresholds(prob=0.5, nms=0.4), device="cpu")
    with torch.no_grad():  # make the prob head confident somewhere but not everywhere
        model.net.prob.conv.bias.fill_(-2.0)
    return model.save(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def sample_crop(tmp_path_factory):
    """A crop of the bundled nuclei sample (keeps the test fast) and its ground truth."""
    from napari_neuroseg.synth import load_sample

    image, labels = load_sample("nuclei")
    d = tmp_path_factory.mktemp("crop")
    path = d / "crop.tif"
    tifffile.imwrite(path, image[:16, :48, :48].astype(np.uint16), imagej=True,
                     resolution=(1.0, 1.0), metadata={"spacing": 2.0, "axes": "ZYX"})
    return path, labels[:16, :48, :48]


def _bundled_available() -> bool:
    from napari_neuroseg.models.stardist3d import DEFAULT_MODEL, bundled_models

    return DEFAULT_MODEL in bundled_models()


@pytest.mark.skipif(not _bundled_available(), reason="the shipped model is not installed")
def test_nuclei_cli_bundled_model_on_sample(tmp_path, capsys):
    from stardist.matching import matching

    out = tmp_path / "labels.tif"
    rc = main(["nuclei", str(sample_path("nuclei")), "-o", str(out), "--device", "cpu", "--quiet"])
    assert rc == 0
    labels = tifffile.imread(out)
    _, gt = __import__("napari_neuroseg.synth", fromlist=["load_sample"]).load_sample("nuclei")
    assert labels.shape == gt.shape
    n = len(np.unique(labels)) - 1
    text = capsys.readouterr().out
    assert f"{n} objects" in text
    assert matching(gt, labels, thresh=0.5).f1 > 0.8


def test_nuclei_cli_with_model_folder_formats_and_thresholds(tmp_path, capsys, sample_crop, tiny_model_dir):
    path, _ = sample_crop
    for name in ("out.tif", "out.zarr", "out.h5"):
        out = tmp_path / name
        rc = main(["nuclei", str(path), "-o", str(out), "--model", str(tiny_model_dir), "--device", "cpu",
                   "--prob-thresh", "0.6", "--nms-thresh", "0.3", "--n-tiles", "1", "2", "2", "--quiet"])
        assert rc == 0 and out.exists()
        assert "objects" in capsys.readouterr().out
    from napari_neuroseg.io import read_labels

    a = tifffile.imread(tmp_path / "out.tif")
    b = np.asarray(read_labels(tmp_path / "out.zarr"))
    c = np.asarray(read_labels(tmp_path / "out.h5"))
    assert a.shape == (16, 48, 48)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_nuclei_cli_errors(tmp_path, capsys, sample_crop, tiny_model_dir):
    path, _ = sample_crop
    rc = main(["nuclei", str(tmp_path / "missing.tif"), "-o", str(tmp_path / "o.tif")])
    assert rc == 1 and "input not found" in capsys.readouterr().err
    rc = main(["nuclei", str(path), "-o", str(tmp_path / "o.png"), "--model", str(tiny_model_dir)])
    assert rc == 1 and "output format" in capsys.readouterr().err
    rc = main(["nuclei", str(path), "-o", str(tmp_path / "o.tif"), "--model", str(tmp_path / "nope")])
    assert rc == 1 and "model" in capsys.readouterr().err
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.full((8, 16, 16), 7, np.uint16))
    rc = main(["nuclei", str(flat), "-o", str(tmp_path / "o.tif"), "--model", str(tiny_model_dir), "--device", "cpu"])
    assert rc == 1 and "constant" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.skipif(not _bundled_available(), reason="the shipped model is not installed")
def test_border_keeps_or_skips_object_centres_at_the_edge(tmp_path, capsys, sample_crop):
    """``border``: stardist's 2 grid voxels at the volume's edge hold no object centres; 0 keeps
    nuclei cut by the edge. The model's stored value is the default; the CLI can override it."""
    import dataclasses

    from napari_neuroseg.models.stardist3d import load_model

    path, _ = sample_crop
    image = tifffile.imread(path)
    model = load_model(None, device="cpu")
    grid = np.asarray(model.grid)
    shape = np.asarray(image.shape)

    def at_edge(points):
        g = points // grid
        return np.any((g < 2) | (g >= np.ceil(shape / grid) - 2), axis=1)

    lab2, det2 = model.predict_instances(image, border=2, use_subprocess=False)
    lab0, det0 = model.predict_instances(image, border=0, use_subprocess=False)
    assert not at_edge(det2["points"]).any() and at_edge(det0["points"]).any()
    assert lab0.max() > lab2.max()
    stored = model.thresholds
    try:
        model.thresholds = dataclasses.replace(stored, border=0)
        np.testing.assert_array_equal(model.predict_instances(image, use_subprocess=False)[0], lab0)
    finally:
        model.thresholds = stored
    with pytest.raises(NeurosegError, match="border"):
        model.predict_instances(image, border=-1)
    out = tmp_path / "b.tif"
    assert main(["nuclei", str(path), "-o", str(out), "--device", "cpu", "--border", "2", "--quiet"]) == 0
    assert "border 2" in capsys.readouterr().out
    np.testing.assert_array_equal(tifffile.imread(out), lab2)
