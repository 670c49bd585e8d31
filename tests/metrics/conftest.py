"""Fixtures for the metrics tests: the two real FISBe samples, evaluated once per session."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

REAL_SAMPLES = {
    "R14A02-20180905_65_A6": "completely",
    "VT011145-20171222_63_I2": "partly",
}


def open_real(real_dir: Path, name: str):
    """Lazy GT stack (zarr), lazy prediction (h5py) and dim neuron ids of one real sample."""
    import h5py
    import zarr

    gt = zarr.open(str(real_dir / "gt" / f"{name}.zarr"), mode="r")["volumes/gt_instances"]
    pred = h5py.File(real_dir / "pred" / f"{name}.hdf", "r")["volumes/gmm_label_cleaned"]
    return gt, pred, list(gt.attrs.get("dim_neurons", []))


@pytest.fixture(scope="session")
def real_results(fisbe_real_dir: Path):
    """``{name: (result, reference_toml_dict, partly)}`` for both real samples."""
    from napari_neuroseg.metrics import evaluate

    out = {}
    for name, mode in REAL_SAMPLES.items():
        gt, pred, dim = open_real(fisbe_real_dir, name)
        partly = mode == "partly"
        res = evaluate(gt, pred, partly=partly, dim_ids=dim)
        with open(fisbe_real_dir / "reference" / f"{name}.{mode}.toml", "rb") as f:
            ref = tomllib.load(f)
        out[name] = (res, ref, partly)
    return out
