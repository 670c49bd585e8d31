"""Hostile and clumsy input through the CLI and io (issue 16, part A).

One test per audit finding; each failed on the code before the fix (segfault, swallowed Ctrl-C,
left-over temp folders, minutes at 7 GB, overwritten ground truth, raw ``TypeError``/``AxisError``/
``RuntimeError``, silent defaults) and passes after it. The CLI runs in-process through
``napari_neuroseg.cli.main``; only the crash and Ctrl-C cases run in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_neuroseg.cli import main

HUGE = (100_000, 100_000, 100_000)


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"neuroseg {command}: error:"), err
    assert "Traceback" not in err and "rerun with --debug" not in err, err  # a NeurosegError, not a raw one
    return lines[0]


@pytest.fixture
def huge_zarr(tmp_path) -> Path:
    """A tiny store that declares a 100000^3 uint16 array (no chunk is written)."""
    import zarr

    path = tmp_path / "huge.zarr"
    zarr.create_array(str(path), shape=HUGE, chunks=(64, 64, 64), dtype="uint16", fill_value=0)
    return path


@pytest.fixture
def small(tmp_path) -> dict[str, Path]:
    lab = np.zeros((8, 24, 24), np.uint16)
    lab[2:6, 4:14, 4:14] = 1
    paths = {"gt": tmp_path / "gt.tif", "pred": tmp_path / "pred.tif", "img": tmp_path / "img.tif"}
    tifffile.imwrite(paths["gt"], lab)
    tifffile.imwrite(paths["pred"], lab)
    tifffile.imwrite(paths["img"], (lab * 100).astype(np.uint16))
    return paths


def _run_py(code: str, tmp_path: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    script = tmp_path / "harness.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path)


# -- 2. crashes ----------------------------------------------------------------------------------


def test_hdf5_on_a_full_disk_is_one_error_line_not_a_segfault(tmp_path):
    """A write that runs out of room (here: RLIMIT_FSIZE, as a 1 MiB tmpfs did in the audit) made
    HDF5 leave half-closed objects that crashed the interpreter at exit (rc 139)."""
    tifffile.imwrite(tmp_path / "big.tif", np.random.default_rng(0).integers(0, 60000, (32, 128, 128), np.uint16))
    res = _run_py(
        """
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        from napari_neuroseg.cli import main
        sys.exit(main(["convert", "big.tif", "out.h5"]))
        """,
        tmp_path,
    )
    assert res.returncode == 1, (res.returncode, res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left to write the output" in lines[0], res.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "harness.py"]  # no temp file left


def test_train_nuclei_with_a_huge_patch_is_refused_before_allocating(tmp_path, capsys):
    """--patch-size 1000 1000 1000 grew to all memory and segfaulted in stardist's C++ code."""
    t0 = time.perf_counter()
    code = main(["train", "nuclei", "--synthetic", "1", "--synthetic-shape", "16", "32", "32",
                 "--patch-size", "1000", "1000", "1000", "-o", str(tmp_path / "m")])
    assert code == 1
    line = _one_error_line(capsys, "train")
    assert "patches of (1000, 1000, 1000)" in line and "--patch-size" in line
    assert time.perf_counter() - t0 < 30  # before any synthetic volume is made
    assert not (tmp_path / "m").exists()


# -- 3. hangs: a tiny Zarr declaring a 100000^3 array ----------------------------------------------


@pytest.mark.parametrize(
    "command, args, fix",
    [
        ("evaluate", ["{gt}", "{huge}", "--quiet"], "crop"),
        ("nuclei", ["{huge}", "-o", "{out}.tif", "--quiet"], "--block-shape"),
        ("neurons", ["{huge}", "-o", "{out}.tif", "--quiet"], "--block-shape"),
        ("convert", ["{huge}", "{out}.h5"], ".zarr"),
        ("convert", ["{huge}", "{out}.ome.zarr"], "declared shape"),
    ],
)
def test_huge_declared_zarr_fails_fast(command, args, fix, huge_zarr, small, tmp_path, capsys):
    """evaluate ran for minutes at 7 GB; nuclei/neurons/convert ended in a raw MemoryError."""
    fmt = {"gt": small["gt"], "huge": huge_zarr, "out": tmp_path / "out"}
    t0 = time.perf_counter()
    code = main([command, *[a.format(**fmt) for a in args]])
    elapsed = time.perf_counter() - t0
    assert code == 1
    line = _one_error_line(capsys, command)
    assert "(100000, 100000, 100000)" in line and "of memory but only" in line and fix in line, line
    assert elapsed < 20, elapsed  # measured 0.1-3 s (the model load dominates nuclei)
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".out*"))


# -- 4. data loss: outputs never overwrite inputs ---------------------------------------------------


@pytest.mark.parametrize("flag", ["--json", "--toml"])
@pytest.mark.parametrize("target", ["gt", "pred"])
def test_evaluate_never_writes_over_an_input(flag, target, small, capsys):
    """``evaluate GT PRED --json GT`` replaced the ground truth with JSON and exited 0."""
    before = small[target].read_bytes()
    code = main(["evaluate", str(small["gt"]), str(small["pred"]), "--quiet", flag, str(small[target])])
    assert code == 1
    line = _one_error_line(capsys, "evaluate")
    assert f"the output {flag} is the same path as the input" in line
    assert small[target].read_bytes() == before


def test_outputs_apart_catches_links_and_stores(small, tmp_path, capsys):
    """The one helper also sees a symlink to an input, and an output inside an input store."""
    import zarr

    link = tmp_path / "link.json"
    link.symlink_to(small["gt"])
    before = small["gt"].read_bytes()
    assert main(["evaluate", str(small["gt"]), str(small["pred"]), "--quiet", "--json", str(link)]) == 1
    assert "same path" in _one_error_line(capsys, "evaluate")
    assert small["gt"].read_bytes() == before
    store = tmp_path / "in.zarr"
    zarr.create_array(str(store), shape=(8, 24, 24), chunks=(8, 24, 24), dtype="uint16")[...] = 1
    assert main(["convert", str(store), str(store / "inner.tif")]) == 1
    assert "lies inside the input IN" in _one_error_line(capsys, "convert")


# -- 6. interrupts ------------------------------------------------------------------------------------

_SIGINT_HARNESS = """
import os, signal, sys, threading, time
import numpy as np, tifffile
tifffile.imwrite("in.tif", np.random.default_rng(0).integers(0, 60000, (32, 256, 256), np.uint16))
{patch}
from napari_neuroseg.cli import main
rc = main(["convert", "in.tif", {out!r}])
time.sleep(1.0)  # any writer thread still running would now recreate its temp files
sys.exit(rc)
"""

# h5py: Ctrl-C lands while a weakref callback runs inside the write, as it did in the audit (h5py
# drops its object ids through a WeakValueDictionary; Python prints "Exception ignored" there and
# carries on, so the write finished and the CLI exited 0)
_H5_PATCH = """
import h5py, weakref
_orig = h5py.Group.create_dataset
_refs = []
class _Id:
    pass
def _on_drop(_ref):
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(10000):  # the handler runs here, inside the callback
        pass
def create_dataset(self, *a, **k):
    obj = _Id()
    _refs.append(weakref.ref(obj, _on_drop))
    del obj
    return _orig(self, *a, **k)
h5py.Group.create_dataset = create_dataset
"""

# zarr: chunk writes are slowed down in zarr's I/O thread; Ctrl-C arrives after the first one
_ZARR_PATCH = """
from zarr.storage import LocalStore
_orig_set = LocalStore.set
_sent = []
async def slow_set(self, key, value, *a, **k):
    import asyncio
    if key.endswith("zarr.json"):
        return await _orig_set(self, key, value, *a, **k)
    if not _sent:
        _sent.append(1)
        os.kill(os.getpid(), signal.SIGINT)
    await asyncio.sleep(0.05)
    return await _orig_set(self, key, value, *a, **k)
LocalStore.set = slow_set
"""


@pytest.mark.parametrize("out, patch", [("out.h5", _H5_PATCH), ("out.ome.zarr", _ZARR_PATCH)],
                         ids=["hdf5", "ome-zarr"])
def test_ctrl_c_while_writing_exits_130_and_leaves_nothing(out, patch, tmp_path):
    """.h5: the KeyboardInterrupt was swallowed inside h5py (traceback, write finished, exit 0);
    OME-Zarr: zarr's I/O thread kept writing chunks after the temp folder was removed and left a
    hidden ``.out.ome.zarr.tmp-*`` folder."""
    res = _run_py(_SIGINT_HARNESS.format(patch=patch, out=out), tmp_path)
    assert res.returncode == 130, (res.returncode, res.stderr[-3000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("interrupted"), res.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["harness.py", "in.tif"]


# -- 7. raw exceptions -----------------------------------------------------------------------------------


def test_complex_image_is_a_neuroseg_error(tmp_path, capsys):
    """A complex-valued image ended in ``TypeError: a must be an array of real numbers``."""
    path = tmp_path / "cplx.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, (rng.random((8, 24, 24)) + 1j * rng.random((8, 24, 24))).astype(np.complex64))
    assert main(["nuclei", str(path), "-o", str(tmp_path / "o.tif"), "--quiet"]) == 1
    line = _one_error_line(capsys, "nuclei")
    assert "cplx.tif" in line and "complex64" in line and "numpy.abs" in line


def test_channel_axis_out_of_range_is_a_neuroseg_error(tmp_path, capsys):
    """``--channel-axis 7`` ended in numpy's ``AxisError``."""
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros((3, 8, 24, 24), np.float32))
    assert main(["neurons", str(path), "-o", str(tmp_path / "o.tif"), "--channel-axis", "7", "--quiet"]) == 1
    line = _one_error_line(capsys, "neurons")
    assert "--channel-axis 7 does not exist" in line and "between -4 and 3" in line


@pytest.mark.parametrize("command, shape", [("nuclei", (8, 24, 24)), ("neurons", (3, 8, 24, 24))])
def test_nan_image_is_refused_naming_the_file(command, shape, tmp_path, capsys):
    """NaN images are refused, not repaired (any fill value would silently change the result);
    the message said so but named no file."""
    path = tmp_path / "nan.tif"
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    img[..., 0, 0, 0] = np.nan
    tifffile.imwrite(path, img)
    assert main([command, str(path), "-o", str(tmp_path / "o.tif"), "--quiet"]) == 1
    line = _one_error_line(capsys, command)
    assert "nan.tif" in line and "NaN" in line
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize("model, flag", [("nuclei", "--n-filter-base"), ("neurons", "--base")])
def test_huge_filter_counts_are_refused_before_building(model, flag, tmp_path, capsys):
    """Huge filter counts ended in an allocation ``RuntimeError`` while building the network."""
    args = ["--synthetic", "1"] if model == "nuclei" else ["--synthetic"]
    out = ["-o", str(tmp_path / "m")] if model == "nuclei" else ["--out", str(tmp_path / "m")]
    assert main(["train", model, *args, flag, "100000", *out]) == 1
    line = _one_error_line(capsys, "train")
    assert "parameters) needs about" in line and flag.lstrip("-").split("-")[-1] in line
    assert not (tmp_path / "m").exists()


def test_stardist_config_with_huge_filters_is_refused(tmp_path):
    """The same check guards every config parse (a model folder's config.json)."""
    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.models.stardist3d.config import StarDistConfig

    with pytest.raises(NeurosegError, match="parameters.*needs about"):
        StarDistConfig.from_dict({"n_rays": 32, "unet_n_filter_base": 100000}, path=tmp_path / "config.json")


def test_train_nuclei_on_a_2d_pair_names_the_file(tmp_path, capsys):
    """A 2D pair gave 'image shape (64, 64) does not match labels shape (64, 64)'."""
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((64, 64), np.float32))
    tifffile.imwrite(tmp_path / "lab.tif", np.zeros((64, 64), np.uint16))
    assert main(["train", "nuclei", "--images", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"),
                 "-o", str(tmp_path / "m")]) == 1
    line = _one_error_line(capsys, "train")
    assert "img.tif" in line and "not 3D" in line and "2D plane" in line


def test_check_pairs_says_2d_not_a_shape_mismatch():
    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.models.stardist3d.training.data import check_pairs

    with pytest.raises(NeurosegError, match="trains on 3D volumes, but the image is 2D"):
        check_pairs([np.zeros((64, 64))], [np.zeros((64, 64), np.uint16)])


# -- 8. silent results -------------------------------------------------------------------------------------


def test_train_neurons_zero_iterations_is_an_error_and_writes_nothing(tmp_path, capsys):
    """``--iterations 0`` (now ``--steps 0``; the old spelling is an alias) trained one iteration and
    wrote a model."""
    out = tmp_path / "m"
    assert main(["train", "neurons", "--synthetic", "--iterations", "0", "--out", str(out)]) == 1
    assert "--steps 0" in _one_error_line(capsys, "train")
    assert not out.exists()


@pytest.mark.parametrize("content, key", [({"prob": "0.5", "nms": 0.4}, "prob"), ({"prob": 0.5, "nms": "x"}, "nms"),
                                          ({"prob": 0.5, "nms": 0.4, "border": "2"}, "border")])
def test_thresholds_json_with_strings_names_the_key(content, key, tmp_path):
    """String values in thresholds.json silently fell back to the defaults."""
    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.models.stardist3d import load_thresholds

    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(content))
    with pytest.raises(NeurosegError, match=f"'{key}' is ") as info:
        load_thresholds(path)
    assert str(path) in str(info.value)


def test_thresholds_json_with_strings_through_the_cli(tmp_path, capsys):
    """A model folder whose thresholds.json holds strings: one error line naming file and key."""
    import shutil

    from napari_neuroseg.models.stardist3d import resolve_model_path

    src = Path(resolve_model_path(None))
    model = tmp_path / "model"
    shutil.copytree(src, model)
    (model / "thresholds.json").write_text(json.dumps({"prob": "high", "nms": 0.3}))
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, np.random.default_rng(0).integers(0, 1000, (8, 24, 24), np.uint16))
    assert main(["nuclei", str(img), "-o", str(tmp_path / "o.tif"), "--model", str(model), "--quiet"]) == 1
    line = _one_error_line(capsys, "nuclei")
    assert "thresholds.json" in line and "'prob' is 'high'" in line
