"""Flip averaging through the StarDist-3D predict path and the CLI flags (``--tta``)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def nuclei():
    from napari_neuroseg.models.stardist3d import load_model
    from napari_neuroseg.synth import make_nuclei

    img, lab = make_nuclei((32, 64, 64), seed=900001)[:2]
    return load_model(None, device="cpu"), img, lab


def test_stardist_tta_is_flip_equivariant(nuclei):
    from napari_neuroseg.models.stardist3d.model import normalize_image
    from napari_neuroseg.runtime.tta import ray_flip_weights

    model, img, _ = nuclei
    x = normalize_image(img[None, :16, :48, :48].astype(np.float32), model.percentiles)[0]
    p, d = model.predict(x, tta=True)
    # Z has grid 1: flipping the input flips the averaged probabilities (same 8 passes) ...
    pf, df = model.predict(np.flip(x, 0).copy(), tta=True)
    np.testing.assert_allclose(np.flip(pf, 0), p, atol=1e-4)
    # ... and the distances, once the flipped volume's rays are mapped back, up to the ray
    # interpolation (a golden-spiral ray set is not flip-symmetric)
    W = ray_flip_weights(model.rays.vertices, model.rays.faces, (0,))
    fg = p > 0.5
    rel = np.abs(np.flip(df, 0) @ W.T - d)[fg] / d[fg]
    assert np.median(rel) < 0.03
    assert np.median(np.abs(np.flip(df, 0) - d)[fg] / d[fg]) > 2 * np.median(rel)  # the mapping matters


@pytest.mark.slow
def test_stardist_tta_keeps_the_objects(nuclei):
    from stardist.matching import matching

    model, img, lab = nuclei
    labels_tta = model.predict_instances(img, tta=True)[0]
    labels_f = model.predict_instances(np.flip(img, 0).copy(), tta=True)[0]
    assert matching(labels_tta, np.flip(labels_f, 0), thresh=0.5).f1 > 0.9
    # correct ray mapping: TTA segments as well as the plain prediction (wrong rays would not)
    plain = model.predict_instances(img)[0]
    f_plain, f_tta = matching(lab, plain, thresh=0.5).f1, matching(lab, labels_tta, thresh=0.5).f1
    assert f_tta >= f_plain - 0.05 and f_tta > 0.8


def test_cli_tta_flags(tmp_path, nuclei):
    import tifffile

    from napari_neuroseg.cli import main
    from napari_neuroseg.synth import make_neurons

    _, img, _ = nuclei
    tifffile.imwrite(tmp_path / "n.tif", img[:16, :32, :32])
    assert main(["nuclei", str(tmp_path / "n.tif"), "-o", str(tmp_path / "n_out.tif"), "--tta", "--quiet",
                 "--device", "cpu"]) == 0
    assert tifffile.imread(tmp_path / "n_out.tif").shape == (16, 32, 32)
    v = make_neurons((16, 32, 32), seed=5, n_neurons=2)
    tifffile.imwrite(tmp_path / "raw.tif", v.raw)
    assert main(["neurons", str(tmp_path / "raw.tif"), "-o", str(tmp_path / "neu.tif"), "--tta", "--quiet",
                 "--device", "cpu"]) == 0
    assert tifffile.imread(tmp_path / "neu.tif").shape == (16, 32, 32)
