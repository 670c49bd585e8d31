"""BioImage.IO import: Zoo-style 3D StarDist packages (built here from the tiny Keras fixtures)
load with the outputs of the Keras-folder import, their thresholds and normalisation; wrong or
hostile packages are clear NeurosegErrors and never run anything."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from zoo_fixtures import KERAS_DIR, zoo_package

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models.bioimageio import ModelPackage, is_package, load_stardist3d
from napari_neuroseg.models.stardist3d import StarDist3D

NAME = "unet_d2_g122_r48_aniso_c2"  # 2 channels, grid (1,2,2), anisotropic, 48 rays


@pytest.fixture(scope="module")
def keras_model() -> StarDist3D:
    return StarDist3D.from_folder(KERAS_DIR / NAME, device="cpu")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """The Keras-equivalence input (objects for the random-weight fixture model), (C, Z, Y, X)."""
    from sd3d_helpers import load_inputs, model_input

    return np.ascontiguousarray(np.moveaxis(model_input(load_inputs(), 2), -1, 0))


def _rewrite(pkg: Path, edit) -> None:
    rdf = yaml.safe_load((pkg / "rdf.yaml").read_text())
    edit(rdf)
    (pkg / "rdf.yaml").write_text(yaml.safe_dump(rdf))


@pytest.mark.parametrize("weights", ["tf", "keras_hdf5"])
@pytest.mark.parametrize("form", ["folder", "rdf", "zip"])
def test_zoo_package_matches_keras_folder(tmp_path, keras_model, image, weights, form):
    p = zoo_package(tmp_path, NAME, weights=weights, as_zip=form == "zip", percentiles=(2.0, 99.5))
    if form == "rdf":
        p = p / "rdf.yaml"
    assert is_package(p)
    model = load_stardist3d(p, device="cpu")
    assert model.percentiles == (2.0, 99.5)
    assert model.thresholds.prob == pytest.approx(keras_model.thresholds.prob)
    assert (model.thresholds.nms, model.thresholds.border) == (keras_model.thresholds.nms, 2)
    assert model.config.to_dict() == keras_model.config.to_dict()
    for k, v in keras_model.net.state_dict().items():
        assert np.array_equal(model.net.state_dict()[k].numpy(), v.numpy()), k
    prob, dist = model.predict(image)
    prob_k, dist_k = keras_model.predict(image)
    assert np.array_equal(prob, prob_k) and np.array_equal(dist, dist_k)


def test_load_paths_and_package_percentiles(tmp_path, keras_model, image):
    """StarDist3D.load / from_bioimageio / from_folder take packages; predict_instances uses the
    package's percentiles by default (the CLI/widget/batch path goes through StarDist3D.load)."""
    z = zoo_package(tmp_path, NAME, as_zip=True, percentiles=(3.0, 99.0))
    m1 = StarDist3D.load(z, device="cpu")
    m2 = StarDist3D.from_bioimageio(z, device="cpu")
    m3 = StarDist3D.from_folder(zoo_package(tmp_path / "f", NAME), device="cpu")
    assert m1.percentiles == m2.percentiles == (3.0, 99.0) and m3.percentiles == (1.0, 99.8)
    lab, _ = m1.predict_instances(image, use_subprocess=False)
    ref, _ = keras_model.predict_instances(image, percentiles=(3.0, 99.0), use_subprocess=False)
    other, _ = keras_model.predict_instances(image, use_subprocess=False)
    assert np.array_equal(lab, ref)
    assert keras_model.percentiles == (1.0, 99.8)
    assert lab.max() > 0 and not np.array_equal(other, lab)  # the package's percentiles were used


def test_cli_nuclei_with_zip_package(tmp_path, keras_model, image):
    import tifffile

    from napari_neuroseg.cli import main

    z = zoo_package(tmp_path, NAME, as_zip=True, percentiles=(3.0, 99.0))
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, image, metadata={"axes": "CZYX"}, imagej=False)
    out = tmp_path / "labels.tif"
    assert main(["nuclei", str(src), "-o", str(out), "--model", str(z), "--device", "cpu", "--quiet",
                 "--no-rescale"]) == 0
    ref, _ = keras_model.predict_instances(image, percentiles=(3.0, 99.0), use_subprocess=False)
    assert np.array_equal(tifffile.imread(out), ref)


# ---------------------------------------------------------------------------- refused packages
def _err(p) -> str:
    with pytest.raises(NeurosegError) as ei:
        load_stardist3d(p, device="cpu")
    return str(ei.value)


def test_2d_stardist_package_is_refused(tmp_path):
    p = zoo_package(tmp_path, NAME, n_dim=2)
    assert "2D StarDist model" in _err(p)


def test_non_stardist_and_non_model_packages_are_refused(tmp_path):
    p = zoo_package(tmp_path, NAME)
    _rewrite(p, lambda r: r.pop("config"))
    assert "not a StarDist model" in _err(p)
    _rewrite(p, lambda r: r.update(type="dataset"))
    assert "not a model" in _err(p)


def test_package_without_readable_weights(tmp_path):
    p = zoo_package(tmp_path, NAME)
    _rewrite(p, lambda r: r["config"]["stardist"].pop("weights"))
    msg = _err(p)
    assert "no weights neuroseg can read" in msg and "tensorflow_saved_model_bundle" in msg


def test_missing_config_and_bad_thresholds(tmp_path):
    p = zoo_package(tmp_path, NAME)
    _rewrite(p, lambda r: r["config"]["stardist"].pop("config"))
    assert "config.stardist.config" in _err(p)
    p = zoo_package(tmp_path / "b", NAME)
    _rewrite(p, lambda r: r["config"]["stardist"].update(thresholds={"prob": 7}))
    assert "'prob'" in _err(p)


@pytest.mark.parametrize("ref", ["../outside.h5", "/etc/passwd", "https://zenodo.org/x/stardist_weights.h5"])
def test_weights_outside_the_package_are_refused(tmp_path, ref):
    p = zoo_package(tmp_path, NAME)
    (tmp_path / "outside.h5").write_bytes((p / "stardist_weights.h5").read_bytes())
    _rewrite(p, lambda r: r["config"]["stardist"].update(weights=ref))
    msg = _err(p)
    assert ("outside itself" in msg) or ("never downloaded" in msg)


def test_zip_slip_member_and_symlink_are_never_written(tmp_path):
    folder = zoo_package(tmp_path, NAME)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    rdf["config"]["stardist"]["weights"] = "../../evil.h5"
    z = tmp_path / "slip.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("rdf.yaml", yaml.safe_dump(rdf))
        zf.writestr("../../evil.h5", b"x")
    assert "outside itself" in _err(z)
    assert not (tmp_path.parent / "evil.h5").exists() and not (tmp_path / "evil.h5").exists()
    # a member that is a symbolic link is refused, not followed
    rdf["config"]["stardist"]["weights"] = "stardist_weights.h5"
    z2 = tmp_path / "link.zip"
    with zipfile.ZipFile(z2, "w") as zf:
        zf.writestr("rdf.yaml", yaml.safe_dump(rdf))
        info = zipfile.ZipInfo("stardist_weights.h5")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    assert "symbolic link" in _err(z2)


def test_folder_symlink_weights_refused(tmp_path):
    p = zoo_package(tmp_path, NAME)
    target = tmp_path / "real.h5"
    os.replace(p / "stardist_weights.h5", target)
    (p / "stardist_weights.h5").symlink_to(target)
    assert "symbolic link" in _err(p)


def test_yaml_with_python_tags_is_not_executed(tmp_path):
    marker = tmp_path / "ran"
    p = tmp_path / "evil"
    p.mkdir()
    (p / "rdf.yaml").write_text(f"type: model\nname: !!python/object/apply:os.system ['touch {marker}']\n")
    assert "not valid YAML" in _err(p)
    assert not marker.exists()


def test_not_a_package(tmp_path):
    assert "not found" in _err(tmp_path / "nope.zip")
    (tmp_path / "empty").mkdir()
    assert "no rdf.yaml" in _err(tmp_path / "empty")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    assert "zip" in _err(tmp_path / "bad.zip")
    assert not is_package(tmp_path / "bad.zip") and not is_package(KERAS_DIR / NAME)


def test_package_temp_files_are_removed(tmp_path):
    z = zoo_package(tmp_path, NAME, as_zip=True)
    with ModelPackage(z) as pkg:
        local = pkg.file("stardist_weights.h5")
        assert local.is_file() and json.loads(json.dumps(pkg.rdf["config"]["stardist"]["thresholds"]))
    assert not local.exists()
