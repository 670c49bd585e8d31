"""``neuroseg neurons``: FISBe/TIFF in, TIFF/Zarr/FISBe out, scores printed when GT is present."""

import numpy as np
import pytest

from napari_neuroseg.cli import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, small_volume):
    from napari_neuroseg.io import write_fisbe, write_tiff

    d = tmp_path_factory.mktemp("cli")
    write_fisbe(d / "s.zarr", raw=small_volume.raw, gt_instances=small_volume.gt_instances)
    write_tiff(d / "czyx.tif", small_volume.raw, axes="CZYX")
    np.save(d / "zyxc.npy", np.moveaxis(small_volume.raw, 0, -1))
    return d


def test_fisbe_in_tiff_and_fisbe_out_with_scores(inputs, tiny_model_path, tmp_path, capsys):
    from napari_neuroseg.io import read_fisbe, read_labels

    # the shipped default model
    assert main(["neurons", str(inputs / "s.zarr"), "-o", str(tmp_path / "o.tif"), "--device", "cpu",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "neurons ->" in out and "FISBe scores: avF1=" in out and "n_gt=" in out
    lab = np.asarray(read_labels(tmp_path / "o.tif"))
    assert lab.shape == inputs_shape(inputs)
    # a .zarr output of a FISBe input is a FISBe sample (raw + predicted instances)
    assert main(["neurons", str(inputs / "s.zarr"), "-o", str(tmp_path / "o.zarr"), "--quiet"]) == 0
    s = read_fisbe(tmp_path / "o.zarr")
    assert s.raw.shape[0] == 3 and s.gt_instances.shape[1:] == lab.shape
    assert s.gt_instances.shape[0] == lab.max() >= 1


def inputs_shape(d):
    from napari_neuroseg.io import read_fisbe

    return read_fisbe(d / "s.zarr").raw.shape[1:]


def test_tiff_in_zarr_out_and_errors(inputs, tiny_model_path, tmp_path, capsys):
    assert main(["neurons", str(inputs / "czyx.tif"), "-o", str(tmp_path / "o.zarr"), "--model",
                 str(tiny_model_path), "--quiet"]) == 0
    assert "FISBe scores" not in capsys.readouterr().out
    assert (tmp_path / "o.zarr").exists()
    # wrong model type, bad output suffix: one clear error line, exit code 1
    import torch

    torch.save({"model_type": "stardist"}, tmp_path / "bad.pt")
    assert main(["neurons", str(inputs / "czyx.tif"), "-o", str(tmp_path / "x.tif"), "--model",
                 str(tmp_path / "bad.pt"), "--quiet"]) == 1
    assert "not a neuron model" in capsys.readouterr().err
    assert main(["neurons", str(inputs / "czyx.tif"), "-o", str(tmp_path / "x.png"), "--quiet"]) == 1
    assert "unknown output type" in capsys.readouterr().err
    assert not (tmp_path / "x.tif").exists()


def test_object_size_flag_rescales_by_the_neurite_thickness(inputs, tmp_path, capsys):
    """``--object-size`` (neurite thickness) rescales the volume; labels come back at the input's
    shape; ``auto`` is one clear error line and writes nothing."""
    from napari_neuroseg.io import read_labels

    out = tmp_path / "o.tif"
    assert main(["neurons", str(inputs / "czyx.tif"), "-o", str(out),  # the shipped model: it has a scale
                 "--object-size", "4.5vox", "--device", "cpu", "--quiet"]) == 0
    assert np.asarray(read_labels(out)).shape == inputs_shape(inputs)
    bad = tmp_path / "auto.tif"
    assert main(["neurons", str(inputs / "czyx.tif"), "-o", str(bad), "--object-size", "auto", "--quiet"]) == 1
    assert "automatic neurite thickness" in capsys.readouterr().err and not bad.exists()
