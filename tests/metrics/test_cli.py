"""``neuroseg evaluate``: files, folders matched by name, split file, JSON and TOML output."""

from __future__ import annotations

import json
import tomllib

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from napari_neuroseg.cli import main
from napari_neuroseg.metrics.files import read_split_file

from helpers import labels_from, stack_from, three_tubes, tube


def _write_fisbe(path, stack, dim=()):
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    arr = root.create_array("volumes/gt_instances", shape=stack.shape, dtype=stack.dtype,
                            chunks=(stack.shape[0], 8, 16, 16))
    arr[:] = stack
    arr.attrs["dim_neurons"] = list(dim)


def _write_h5(path, labels):
    with h5py.File(path, "w") as f:
        f.create_dataset("volumes/gmm_label_cleaned", data=labels, compression="gzip")


def test_files_table_json_and_toml(tmp_path, capsys):
    masks = three_tubes()
    _write_fisbe(tmp_path / "s1.zarr", stack_from(masks), dim=[3])
    tifffile.imwrite(tmp_path / "s1.tif", labels_from(masks[:2]))
    rc = main(["evaluate", str(tmp_path / "s1.zarr"), str(tmp_path / "s1.tif"), "--quiet",
               "--json", str(tmp_path / "r.json"), "--toml", str(tmp_path / "r.toml")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "avF1" in out and "s1" in out and "0.55" in out
    data = json.loads((tmp_path / "r.json").read_text())
    for key in ("avF1", "C", "S", "clDice_TP", "tp", "FS", "FM", "n_gt", "n_pred", "TP_05",
                "per_threshold", "gt_coverage"):
        assert key in data
    assert data["n_gt"] == 3 and data["TP_05"] == 2 and data["errors"]["missed_gt"] == [3]
    assert data["dim"]["n"] == 1  # read from the FISBe .zattrs
    toml = tomllib.loads((tmp_path / "r.toml").read_text())
    assert toml["general"]["Num GT"] == 3 and toml["general"]["GT_dim"] == 1
    assert "th_0_95" in toml["confusion_matrix"]


def test_folders_matched_by_name_with_split_file(tmp_path, capsys):
    masks = three_tubes()
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    _write_fisbe(tmp_path / "gt" / "A.zarr", stack_from(masks))
    _write_fisbe(tmp_path / "gt" / "B.zarr", stack_from(masks))
    _write_fisbe(tmp_path / "gt" / "unmatched.zarr", stack_from(masks))
    extra = tube(z=20, y=44, x0=0, x1=130)
    _write_h5(tmp_path / "pred" / "A.hdf", labels_from(masks))
    _write_h5(tmp_path / "pred" / "B.hdf", labels_from(masks[:2] + [extra]))
    split = tmp_path / "split.txt"
    split.write_text("(1) samples for FlyLight completely:\n\ntest:\nA\n\n"
                     "(2) samples for FlyLight partly:\n\ntest:\nB\n")
    rc = main(["evaluate", str(tmp_path / "gt"), str(tmp_path / "pred"), "--quiet",
               "--split-file", str(split), "--json", str(tmp_path / "all.json"),
               "--toml", str(tmp_path / "tomls")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "[combined]" in out and "unmatched" not in out
    data = json.loads((tmp_path / "all.json").read_text())
    assert set(data["samples"]) == {"A", "B"}
    assert data["samples"]["B"]["partly"] is True
    # B is partly labelled: the background tube is no false positive
    assert data["samples"]["B"]["per_threshold"]["0.5"]["fp"] == 0
    sets = data["sets"]
    assert sets["completely"]["avF1"] == 1.0
    assert sets["combined"]["tp"] == pytest.approx(5 / 6)
    assert sorted(p.name for p in (tmp_path / "tomls").iterdir()) == \
        ["A.completely.toml", "B.partly.toml"]


def test_bad_input_gives_one_clear_line(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "gt.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "p.tif", np.zeros((8, 8), np.uint8))
    rc = main(["evaluate", str(tmp_path / "gt.tif"), str(tmp_path / "p.tif"), "--quiet"])
    assert rc != 0
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


def test_split_file_simple_lines(tmp_path):
    p = tmp_path / "s.txt"
    p.write_text("X partly\nY completely\n")
    assert read_split_file(p) == {"X": True, "Y": False}
