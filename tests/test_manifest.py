"""The npe2 manifest: valid, discoverable, shipped inside the package and inside wheels."""

from __future__ import annotations

import importlib.resources
import shutil
import stat
import subprocess
import sys
import zipfile

import pytest

PLUGIN = "napari-neuroseg"


@pytest.fixture(scope="module")
def manifest():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover(include_npe1=False)
    return pm, pm.get_manifest(PLUGIN)


def test_manifest_validates_and_imports(manifest):
    from npe2 import PluginManifest

    _, mf = manifest
    PluginManifest.model_validate(mf.model_dump())
    mf.validate_imports()  # every python_name (readers, writers, samples, widgets) resolves


def test_npe2_cli_validate():
    exe = shutil.which("npe2")
    cmd = [exe, "validate", PLUGIN] if exe else [sys.executable, "-m", "npe2", "validate", PLUGIN]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout + proc.stderr


def test_readers_writers_samples_listed(manifest):
    pm, mf = manifest
    c = mf.contributions
    patterns = {p for r in c.readers for p in r.filename_patterns}
    assert {"*.tif", "*.tiff", "*.zarr", "*.h5", "*.hdf", "*.hdf5"} <= patterns
    assert any(r.accepts_directories and "*.zarr" in r.filename_patterns for r in c.readers)
    assert {s.key for s in c.sample_data} >= {"nuclei", "neurons", "stardist_nuclei_3d"}
    exts = {(lt, e) for w in c.writers for lt in w.layer_types for e in w.filename_extensions}
    for kind in ("image", "labels"):
        for ext in (".tif", ".tiff", ".ome.zarr", ".zarr"):
            assert (kind, ext) in exts
    # the plugin manager routes paths to the right writer
    assert pm.get_writer("a.tif", ["labels"], PLUGIN)[0].command == f"{PLUGIN}.write_labels_tiff"
    assert pm.get_writer("a.ome.zarr", ["image"], PLUGIN)[0].command == f"{PLUGIN}.write_image_zarr"
    assert pm.get_writer("a.zarr", ["labels"], PLUGIN)[0].command == f"{PLUGIN}.write_labels_zarr"
    multi = pm.get_writer("a.zarr", ["image", "image", "image", "labels"], PLUGIN)[0]
    assert multi.command == f"{PLUGIN}.write_fisbe"
    # and readers claim our formats
    readers = {r.command for r in pm.iter_compatible_readers(["x.zarr"])}
    assert f"{PLUGIN}.get_reader_zarr" in readers


def test_packaged_manifest_is_the_root_file(repo_dir):
    packaged = importlib.resources.files("napari_neuroseg") / "napari.yaml"
    assert packaged.read_text() == (repo_dir / "napari.yaml").read_text()


def test_wheel_ships_real_manifest(repo_dir, tmp_path):
    """A normal (non-editable) build puts the real file, not a symlink, into the package —
    even where the symlink did not survive the checkout (e.g. a Windows clone)."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    ".hypothesis", "sample_data", "runs", "out", "docs", "benchmarks", "tests")
    shutil.copytree(repo_dir, src, ignore=ignore, symlinks=True)
    link = src / "src" / "napari_neuroseg" / "napari.yaml"
    link.unlink()
    link.write_text("../../napari.yaml")  # what git writes where symlinks are unsupported
    code = "from setuptools import build_meta as b; import sys; print(b.build_wheel(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=src,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo("napari_neuroseg/napari.yaml")
        assert zf.read(info).decode() == (repo_dir / "napari.yaml").read_text()
        assert not stat.S_ISLNK(info.external_attr >> 16)  # a real file, not a symlink entry
        entry_points = next(n for n in zf.namelist() if n.endswith("entry_points.txt"))
        assert "napari_neuroseg:napari.yaml" in zf.read(entry_points).decode()
