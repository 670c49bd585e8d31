"""``neuroseg convert``: formats from extensions, overlaps kept, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_neuroseg.cli import main
from napari_neuroseg.io import (
    instances_to_labels,
    read_fisbe,
    read_image,
    read_labels,
    write_fisbe,
    write_tiff,
)


@pytest.fixture()
def sample(tmp_path):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 4000, (3, 4, 10, 12), dtype=np.uint16)
    gt = np.zeros((3, 4, 10, 12), np.uint8)
    gt[0, :, 2, :8] = 1
    gt[1, :, 1:4, 5] = 2  # crosses neuron 1 at (2, 5): an overlap
    gt[2, 1:3, 7, 2:10] = 3
    path = tmp_path / "s.zarr"
    write_fisbe(path, raw=raw, gt_instances=gt, dim_neurons=[3])
    return path, raw, gt


def test_fisbe_to_tiff_and_back_keeps_overlaps(sample, tmp_path, capsys):
    path, raw, gt = sample
    assert main(["convert", str(path), str(tmp_path / "raw.tif")]) == 0
    assert "wrote tiff" in capsys.readouterr().out
    np.testing.assert_array_equal(read_image(tmp_path / "raw.tif").data, raw)
    assert main(["convert", str(path), str(tmp_path / "inst.tif"), "--labels"]) == 0
    assert main(["convert", str(tmp_path / "inst.tif"), str(tmp_path / "back.zarr"), "--labels",
                 "--format", "fisbe"]) == 0
    assert read_fisbe(tmp_path / "back.zarr").gt_instances.tobytes() == gt.tobytes()
    assert main(["convert", str(path), str(tmp_path / "copy.zarr")]) == 0  # .zarr from FISBe = FISBe
    copy = read_fisbe(tmp_path / "copy.zarr")
    assert copy.gt_instances.tobytes() == gt.tobytes() and copy.raw.tobytes() == raw.tobytes()
    assert copy.dim_neurons == [3]


def test_fisbe_to_ome_zarr_warns_about_overlaps(sample, tmp_path, capsys):
    path, raw, gt = sample
    out = tmp_path / "s.ome.zarr"
    assert main(["convert", str(path), str(out), "--levels", "2", "--scale", "2", "0.5", "0.5"]) == 0
    err = capsys.readouterr().err
    assert "warning: 4 voxels where neurons overlap" in err
    vol = read_image(out)
    assert vol.axes == "CZYX" and vol.scale == (2.0, 0.5, 0.5)
    np.testing.assert_array_equal(vol.data, raw)
    np.testing.assert_array_equal(read_labels(out), instances_to_labels(gt)[0])
    assert len(zarr.open_group(str(out), mode="r").attrs["multiscales"][0]["datasets"]) == 2


def test_tiff_zarr_tiff_keeps_axes_and_scale(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (6, 2, 8, 9), dtype=np.uint8)  # Z C Y X, no metadata
    import tifffile

    tifffile.imwrite(tmp_path / "in.tif", img, photometric="minisblack")
    assert main(["convert", str(tmp_path / "in.tif"), str(tmp_path / "a.zarr"), "--format", "zarr",
                 "--axes", "ZCYX", "--scale", "3", "1", "1"]) == 0
    vol = read_image(tmp_path / "a.zarr")
    assert vol.axes == "CZYX" and vol.scale == (3.0, 1.0, 1.0)
    np.testing.assert_array_equal(vol.data, img.transpose(1, 0, 2, 3))
    assert main(["convert", str(tmp_path / "a.zarr"), str(tmp_path / "b.tif")]) == 0
    back = read_image(tmp_path / "b.tif")
    assert back.axes == "CZYX" and back.scale == (3.0, 1.0, 1.0)
    np.testing.assert_array_equal(back.data, vol.data)


def test_labels_tiff_to_fisbe_and_ome_zarr(tmp_path):
    lab = np.zeros((3, 5, 5), np.uint16)
    lab[0, 1:3, 1:3] = 1
    lab[2, 3:, 3:] = 4
    write_tiff(tmp_path / "lab.tif", lab, scale=(2.0, 1.0, 1.0))
    assert main(["convert", str(tmp_path / "lab.tif"), str(tmp_path / "f.zarr"), "--labels", "--format", "fisbe"]) == 0
    s = read_fisbe(tmp_path / "f.zarr")
    assert s.gt_instances.shape == (4, 3, 5, 5) and s.raw is None
    np.testing.assert_array_equal(instances_to_labels(s.gt_instances)[0], lab)
    assert main(["convert", str(tmp_path / "lab.tif"), str(tmp_path / "l.ome.zarr"), "--labels"]) == 0
    np.testing.assert_array_equal(read_labels(tmp_path / "l.ome.zarr"), lab)
    assert read_image(tmp_path / "l.ome.zarr").scale == (2.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["{t}/missing.tif", "{t}/o.tif"], "input not found"),
        (["{t}/in.tif", "{t}/out.xyz"], "cannot tell the output format"),
        (["{t}/in.tif", "{t}/in.tif"], "same path"),
        (["{t}/bad.tif", "{t}/o.zarr"], "corrupt or truncated"),
        (["{t}/in.tif", "{t}/f.zarr", "--format", "fisbe", "--axes", "YX"], "axes 'YX' do not fit"),
        (["{t}/float.tif", "{t}/o.tif", "--labels"], "labels must be integers"),
        (["{t}/multi.h5", "{t}/o.tif", "--key", "nope"], "no dataset 'nope'"),
        (["{t}/in.tif", "{t}/exists.tif"], "already exists"),
    ],
)
def test_errors_are_one_line_and_nonzero(tmp_path, capsys, args, message):
    import h5py

    write_tiff(tmp_path / "in.tif", np.zeros((2, 3, 3), np.uint8))
    write_tiff(tmp_path / "float.tif", np.zeros((2, 3, 3), np.float32))
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\xff" * 20)
    (tmp_path / "exists.tif").write_bytes(b"keep")
    with h5py.File(tmp_path / "multi.h5", "w") as f:
        f["a"] = np.zeros((2, 2, 2), np.uint8)
        f["b"] = np.zeros((2, 2, 2), np.uint8)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["convert", *[a.format(t=tmp_path) for a in args]])
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("neuroseg convert: error:") and message in lines[0]
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written
    assert (tmp_path / "exists.tif").read_bytes() == b"keep"
