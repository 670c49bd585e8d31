"""Tests of the committed samples and their loaders."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.synth import load_sample, make_neurons, make_nuclei, sample_dir, sample_path, stardist_nuclei_3d
from napari_neuroseg.synth.samples import SAMPLES


def test_samples_are_small():
    total = sum(f.stat().st_size for f in sample_dir().rglob("*") if f.is_file())
    assert 0 < total < 3_000_000


def test_nuclei_sample_matches_its_recipe():
    image, labels = load_sample("nuclei")
    r = SAMPLES["nuclei"]
    assert image.dtype == np.float32 and labels.dtype == np.int32
    assert image.shape == labels.shape == tuple(r["shape"])
    ref_img, ref_lab = make_nuclei(r["shape"], seed=r["seed"], anisotropy=r["anisotropy"])
    assert np.array_equal(labels, ref_lab)
    assert np.array_equal(image, np.clip(np.rint(ref_img), 0, 65535))


def test_neuron_sample_is_fisbe_layout_and_matches_recipe():
    vol = load_sample("neurons")
    r = SAMPLES["neurons"]
    ref = make_neurons(r["shape"], seed=r["seed"], hard=r["hard"])
    assert vol.raw.dtype == np.uint16 and np.array_equal(vol.raw, ref.raw)
    assert vol.gt_instances.dtype == np.uint8 and np.array_equal(vol.gt_instances, ref.gt_instances)
    assert vol.dim_neurons == ref.dim_neurons
    assert np.array_equal(vol.labels, ref.labels)
    assert (vol.overlap > 1).any()
    # the on-disk layout, read with zarr directly
    import zarr

    root = zarr.open_group(str(sample_path("neurons")), mode="r")
    assert root["volumes/raw"].metadata.zarr_format == 2
    assert root["volumes/raw"].shape == (3, *r["shape"])
    assert root["volumes/gt_instances"].attrs["dim_neurons"] == ref.dim_neurons


def test_neuron_sample_reads_with_project_io():
    from napari_neuroseg.io import is_fisbe, read_fisbe

    p = sample_path("neurons")
    assert is_fisbe(p)
    s = read_fisbe(p)
    vol = load_sample("neurons")
    assert np.array_equal(np.asarray(s.raw), vol.raw)
    assert np.array_equal(np.asarray(s.gt_instances), vol.gt_instances)
    assert list(s.dim_neurons) == vol.dim_neurons


def test_stardist_test_image():
    img, mask = stardist_nuclei_3d()
    assert img.ndim == 3 and img.shape == mask.shape
    assert mask.max() > 10
    img2, _ = load_sample("stardist_nuclei_3d")
    assert np.array_equal(img, img2)


def test_unknown_sample_name():
    with pytest.raises(NeurosegError, match="unknown sample"):
        load_sample("nope")
    with pytest.raises(NeurosegError, match="unknown sample"):
        sample_path("nope")


def test_make_samples_script_is_reproducible(tmp_path, repo_dir):
    script = repo_dir / "sample_data" / "make_samples.py"
    res = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path), "--only", "nuclei"],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    for name in SAMPLES["nuclei"]["files"]:
        assert (tmp_path / name).read_bytes() == (sample_dir() / name).read_bytes()
