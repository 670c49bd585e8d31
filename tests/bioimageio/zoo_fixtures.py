"""Build BioImage.IO Model Zoo-style StarDist-3D packages at test time from the tiny Keras
fixtures in ``tests/stardist3d/fixtures/models`` (no binary files committed for them).

The layout follows what ``stardist.bioimageio_utils.export_bioimageio`` writes for the Zoo (format
0.4): ``config.stardist`` with ``config`` (the model's config.json), ``thresholds`` (prob, nms),
``weights`` (the Keras file, listed in ``attachments.files``); one input ``bzyxc`` with a
``scale_range`` pre-processing (per-sample percentiles over zyx); a
``tensorflow_saved_model_bundle`` weight entry. The SavedModel itself cannot be made without
TensorFlow, so ``zoo_package(..., weights="keras_hdf5")`` lists the .h5 as ``keras_hdf5`` weights
instead, and ``weights="tf"`` keeps the Zoo's TF entry with a placeholder archive (never read).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import yaml

KERAS_DIR = Path(__file__).resolve().parents[1] / "stardist3d" / "fixtures" / "models"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def zoo_package(
    out_dir: Path,
    name: str = "unet_d2_g122_r48_aniso_c2",
    *,
    weights: str = "tf",
    percentiles: tuple[float, float] = (1.0, 99.8),
    n_dim: int = 3,
    as_zip: bool = False,
    test_input: np.ndarray | None = None,
    test_output: np.ndarray | None = None,
) -> Path:
    """Write a Zoo-style package of the Keras fixture ``name`` into ``out_dir`` (a folder, or
    ``out_dir/<name>.zip`` with ``as_zip``); returns the folder or zip path."""
    src = KERAS_DIR / name
    config = json.loads((src / "config.json").read_text())
    config["n_dim"] = n_dim
    thresholds = json.loads((src / "thresholds.json").read_text())
    pkg = Path(out_dir) / name
    pkg.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "weights_best.h5", pkg / "stardist_weights.h5")
    c = int(config["n_channel_in"])
    grid = config["grid"]
    if test_input is None:
        rng = np.random.default_rng(0)
        test_input = rng.normal(100, 20, size=(1, 16, 32, 32, c)).astype(np.float32)
    np.save(pkg / "test_input.npy", test_input)
    if test_output is None:
        test_output = np.zeros((1, 16 // grid[0], 32 // grid[1], 32 // grid[2], 1 + config["n_rays"]), np.float32)
    np.save(pkg / "test_output.npy", test_output)
    (pkg / "README.md").write_text("# StarDist Model\nA tiny 3D StarDist test model.\n")
    rdf = {
        "format_version": "0.4.10",
        "type": "model",
        "name": f"StarDist 3D {name}",
        "description": "StarDist - Object Detection with Star-convex Shapes",
        "authors": [{"name": "Uwe Schmidt"}, {"name": "Martin Weigert", "github_user": "maweigert"}],
        "cite": [
            {"text": "Cell Detection with Star-Convex Polygons", "doi": "10.1007/978-3-030-00934-2_30"},
            {"text": "Star-convex Polyhedra for 3D Object Detection and Segmentation in Microscopy",
             "doi": "10.1109/WACV45572.2020.9093435"},
        ],
        "license": "BSD-3-Clause",
        "documentation": "README.md",
        "git_repo": "https://github.com/stardist/stardist",
        "tags": ["stardist", "3d", "nuclei", "instance-segmentation", "tensorflow"],
        "timestamp": "2023-01-01T00:00:00",
        "attachments": {"files": ["stardist_weights.h5"]},
        "inputs": [{
            "name": "input",
            "axes": "bzyxc",
            "data_type": "float32",
            "data_range": ["-inf", "inf"],
            "shape": {"min": [1, 16, 32, 32, c], "step": [0, 8, 8, 8, 0]},
            "preprocessing": [{"name": "scale_range", "kwargs": {
                "mode": "per_sample", "axes": "zyx",
                "min_percentile": percentiles[0], "max_percentile": percentiles[1]}}],
        }],
        "outputs": [{
            "name": "output",
            "axes": "bzyxc",
            "data_type": "float32",
            "data_range": ["-inf", "inf"],
            "halo": [0, 4, 4, 4, 0],
            "shape": {"reference_tensor": "input", "scale": [1.0] + [1.0 / g for g in grid] + [0.0],
                      "offset": [0, 0, 0, 0, (1 + config["n_rays"]) / 2]},
        }],
        "test_inputs": ["test_input.npy"],
        "test_outputs": ["test_output.npy"],
        "config": {"stardist": {
            "stardist_version": "0.8.3",
            "thresholds": {"prob": thresholds["prob"], "nms": thresholds["nms"]},
            "weights": "stardist_weights.h5",
            "config": config,
        }},
    }
    if weights == "tf":
        with zipfile.ZipFile(pkg / "TF_SavedModel.zip", "w") as z:
            z.writestr("saved_model.pb", b"placeholder: not read by neuroseg")
        rdf["weights"] = {"tensorflow_saved_model_bundle": {
            "source": "TF_SavedModel.zip", "sha256": _sha(pkg / "TF_SavedModel.zip"), "tensorflow_version": "2.10"}}
    elif weights == "keras_hdf5":
        rdf["weights"] = {"keras_hdf5": {
            "source": "stardist_weights.h5", "sha256": _sha(pkg / "stardist_weights.h5"), "tensorflow_version": "2.10"}}
        del rdf["config"]["stardist"]["weights"]
        del rdf["attachments"]
    else:
        raise ValueError(weights)
    (pkg / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    if not as_zip:
        return pkg
    zpath = Path(out_dir) / f"{name}.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(pkg.iterdir()):
            z.write(f, f.name)
    shutil.rmtree(pkg)
    return zpath
