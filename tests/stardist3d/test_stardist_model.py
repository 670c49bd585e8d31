"""StarDist3D without the Keras reference: config, rays, padding, weights, formats, bad input,
tiling with random weights, progress and cancel."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from sd3d_helpers import FIXTURES, KERAS_MODELS

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models.stardist3d import StarDist3D, StarDistConfig, load_model, load_thresholds
from napari_neuroseg.models.stardist3d.network import Conv3dSame, build_network
from napari_neuroseg.models.stardist3d.rays import make_rays
from napari_neuroseg.runtime import Progress, run_to_completion

SMALL_UNET = dict(backbone="unet", n_rays=16, grid=(1, 2, 2), unet_n_filter_base=4, unet_n_depth=2,
                  net_conv_after_unet=8)
SMALL_RESNET = dict(backbone="resnet", n_rays=16, grid=(2, 2, 2), resnet_n_filter_base=4, resnet_n_blocks=2,
                    net_conv_after_resnet=8, anisotropy=(2, 1, 1))


def random_model(spec: dict, seed: int = 0, **kw) -> StarDist3D:
    torch.manual_seed(seed)
    model = StarDist3D(StarDistConfig.from_dict({**spec, **kw}), device="cpu")
    with torch.no_grad():
        for p in model.net.parameters():
            p.normal_(0, 0.3)
    return model


def blobs(shape=(20, 40, 44), seed=0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    x = np.zeros(shape, np.float32)
    for _ in range(12):
        c = tuple(rng.integers(3, s - 3) for s in shape)
        x[c] = 1
    return gaussian_filter(x, (1.5, 3, 3)) * 100 + rng.normal(0, 0.05, shape).astype(np.float32)


# -- config ----------------------------------------------------------------------------------
def test_config_tolerates_unknown_keys_and_round_trips():
    cfg = StarDistConfig.from_dict({"backbone": "resnet", "n_rays": 32, "grid": [1, 2, 2], "some_new_key": 3,
                                    "train_epochs": 5})
    assert cfg.extra == {"some_new_key": 3, "train_epochs": 5}
    d = cfg.to_dict()
    assert d["some_new_key"] == 3 and d["grid"] == [1, 2, 2]
    assert StarDistConfig.from_dict(d).grid == (1, 2, 2)


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"backbone": "vgg"}, "unknown backbone"),
        ({"grid": [1, 3, 3]}, "powers of 2"),
        ({"grid": [1, 2]}, "3 values"),
        ({"n_classes": 3}, "multi-class"),
        ({"unet_batch_norm": True}, "unsupported"),
        ({"n_rays": "many"}, "invalid config"),
    ],
)
def test_bad_config_rejected(bad, match):
    with pytest.raises(NeurosegError, match=match):
        StarDistConfig.from_dict(bad)


def test_thresholds_defaults(tmp_path):
    """A missing file or key gives the defaults; a bad value or file is an error naming it."""
    t = load_thresholds(tmp_path / "missing.json")
    assert (t.prob, t.nms) == (0.5, 0.4)
    (tmp_path / "t.json").write_text(json.dumps({"nms": 0.3}))
    t = load_thresholds(tmp_path / "t.json")
    assert (t.prob, t.nms) == (0.5, 0.3)
    (tmp_path / "t.json").write_text(json.dumps({"prob": 1.7, "nms": 0.3}))
    with pytest.raises(NeurosegError, match="'prob' is 1.7"):
        load_thresholds(tmp_path / "t.json")
    (tmp_path / "t.json").write_text("{not json")
    with pytest.raises(NeurosegError, match="not valid JSON"):
        load_thresholds(tmp_path / "t.json")


def test_thresholds_border(tmp_path):
    """``border``: stardist's 2 when absent (Keras folders) or null, else the stored count;
    anything else is refused."""
    assert load_thresholds(tmp_path / "missing.json").border == 2
    for stored, expected in ((0, 0), (3, 3), (None, 2)):
        (tmp_path / "t.json").write_text(json.dumps({"prob": 0.6, "nms": 0.3, "border": stored}))
        t = load_thresholds(tmp_path / "t.json")
        assert (t.prob, t.nms, t.border) == (0.6, 0.3, expected)
    for stored in (-1, 1.5, "x", True):
        (tmp_path / "t.json").write_text(json.dumps({"prob": 0.6, "nms": 0.3, "border": stored}))
        with pytest.raises(NeurosegError, match="'border'"):
            load_thresholds(tmp_path / "t.json")


def test_divisor_and_receptive_field_of_reference_configs():
    demo = StarDistConfig.from_dict({"backbone": "resnet", "grid": [1, 2, 2], "anisotropy": [2, 1, 1], "n_rays": 96})
    assert demo.divisor == (1, 2, 2)
    assert demo.receptive_field == (17, 30, 30)  # the demo model's (shared notes)
    unet = StarDistConfig.from_dict({"backbone": "unet", "grid": [1, 2, 2]})
    assert unet.divisor == (4, 8, 8)


# -- rays --------------------------------------------------------------------------------------
def test_rays_built_without_eval():
    from stardist import Rays_GoldenSpiral

    rays = make_rays({"name": "Rays_GoldenSpiral", "kwargs": {"n": 48, "anisotropy": [2, 1, 1]}}, 48)
    np.testing.assert_array_equal(rays.vertices, Rays_GoldenSpiral(48, anisotropy=(2, 1, 1)).vertices)
    assert len(make_rays({"name": "Rays_Octo", "kwargs": {"n_level": 2}})) == 18
    with pytest.raises(NeurosegError, match="unknown ray type"):
        make_rays({"name": "__import__('os').system('echo pwned')", "kwargs": {}})
    with pytest.raises(NeurosegError, match="rays"):
        make_rays({"name": "Rays_GoldenSpiral", "kwargs": {"n": 32}}, 96)


# -- network -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [7, 8, 9, 16])
def test_tf_same_padding_of_strided_convs(n):
    conv = Conv3dSame(1, 1, (3, 3, 3), stride=(1, 2, 2))
    with torch.no_grad():
        conv.conv.weight.fill_(1.0)
        conv.conv.bias.zero_()
        x = torch.arange(n * n * n, dtype=torch.float32).reshape(1, 1, n, n, n)
        y = conv(x)
    out = -(-n // 2)
    assert y.shape[-3:] == (n, out, out)
    # TensorFlow: total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0); before = total // 2
    total = max(3 - 2, 0) if n % 2 == 0 else max(3 - n % 2, 0)
    before = total // 2
    xp = np.pad(x.numpy()[0, 0], ((1, 1), (before, total - before), (before, total - before)))
    ref = np.zeros((n, out, out), np.float32)
    for z in range(n):
        for i in range(out):
            for j in range(out):
                ref[z, i, j] = xp[z:z + 3, 2 * i:2 * i + 3, 2 * j:2 * j + 3].sum()
    np.testing.assert_allclose(y.numpy()[0, 0], ref, rtol=1e-6)


@pytest.mark.parametrize("spec", [SMALL_UNET, SMALL_RESNET], ids=["unet", "resnet"])
def test_receptive_field_bounds_impulse_response(spec):
    """With positive weights and biases nothing is cut by ReLUs: the impulse response's extent is
    the true receptive field, and the configured overlap must cover it."""
    model = random_model(spec)
    with torch.no_grad():
        for p in model.net.parameters():
            p.copy_(p.abs() * 0.1 + 0.01)
    div = model.divisor
    shape = tuple(max(64, 4 * d) for d in div)
    shape = tuple(-(-s // d) * d for s, d in zip(shape, div))
    x = np.zeros((1,) + shape, np.float32)
    mid = tuple(s // 2 for s in shape)
    x[(0,) + mid] = 1.0
    with torch.no_grad():
        y1 = model.net(torch.from_numpy(x)[None])[1][0, 0].numpy()
        y0 = model.net(torch.zeros_like(torch.from_numpy(x))[None])[1][0, 0].numpy()
    idx = np.nonzero(np.abs(y1 - y0) > 0)
    rf = model.receptive_field
    for ax, g in enumerate(model.grid):
        lo, hi = idx[ax].min() * g, (idx[ax].max() + 1) * g - 1
        assert mid[ax] - lo <= rf[ax] + g and hi - mid[ax] <= rf[ax] + g, (ax, lo, hi, mid, rf)


@pytest.mark.parametrize("spec", [SMALL_UNET, SMALL_RESNET], ids=["unet", "resnet"])
def test_tiled_equals_untiled_random_weights(spec):
    model = random_model(spec)
    x = blobs((21, 43, 37))
    full = model.predict(x, n_tiles=1)
    for tiles in [(2, 3, 2)]:
        tiled = model.predict(x, n_tiles=tiles)
        for a, b in zip(full, tiled):
            np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)


# -- weights and formats -----------------------------------------------------------------------
needs_keras = pytest.mark.skipif(not KERAS_MODELS, reason="Keras fixtures not built")


def _copy_model(tmp_path, name=None):
    name = name or KERAS_MODELS[0]
    dst = tmp_path / name
    shutil.copytree(FIXTURES / "models" / name, dst)
    return dst


@needs_keras
def test_weight_names_without_colon_zero(tmp_path):
    folder = _copy_model(tmp_path)
    h5 = next(folder.glob("*.h5"))
    ref = StarDist3D.from_folder(folder)
    with h5py.File(h5, "r+") as f:
        for lname in f.attrs["layer_names"]:
            g = f[lname]
            names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs.get("weight_names", [])]
            new = []
            for n in names:
                g.move(n, n.replace(":0", ""))
                new.append(n.replace(":0", "").encode())
            if names:
                g.attrs["weight_names"] = new
    other = StarDist3D.from_folder(folder)
    for a, b in zip(ref.net.state_dict().values(), other.net.state_dict().values()):
        assert torch.equal(a, b)


@needs_keras
def test_missing_corrupt_or_mismatched_weights(tmp_path):
    folder = _copy_model(tmp_path)
    h5 = next(folder.glob("*.h5"))
    h5.write_bytes(b"this is not an hdf5 file" * 10)
    with pytest.raises(NeurosegError, match="corrupt|Keras weight"):
        StarDist3D.from_folder(folder)
    h5.unlink()
    with pytest.raises(NeurosegError, match="no weight file"):
        StarDist3D.from_folder(folder)
    # weights of another architecture
    other = next(n for n in KERAS_MODELS if n != folder.name)
    shutil.copy(next((FIXTURES / "models" / other).glob("*.h5")), folder / "weights_best.h5")
    with pytest.raises(NeurosegError, match="does not match|does not fit"):
        StarDist3D.from_folder(folder)
    with pytest.raises(NeurosegError, match="not found"):
        StarDist3D.from_folder(tmp_path / "nothing")
    (folder / "config.json").write_text("{broken")
    with pytest.raises(NeurosegError, match="not valid JSON"):
        StarDist3D.from_folder(folder)


@needs_keras
def test_unknown_config_key_in_keras_folder():
    name = next(n for n in KERAS_MODELS if "g222" in n and "unet" in n)
    model = StarDist3D.from_folder(FIXTURES / "models" / name)
    assert "a_key_from_a_newer_stardist" in model.config.extra


@needs_keras
def test_newest_h5_used_when_no_weights_best():
    name = next(n for n in KERAS_MODELS if "resnet_b3_g222" in n)
    assert not (FIXTURES / "models" / name / "weights_best.h5").exists()
    StarDist3D.from_folder(FIXTURES / "models" / name)


def test_own_format_round_trip(tmp_path):
    model = random_model(SMALL_RESNET, seed=3)
    model.thresholds = type(model.thresholds)(prob=0.6, nms=0.35, border=0)
    x = blobs()
    ref = model.predict(x)
    folder = model.save(tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "thresholds.json", "weights.pt"]
    again = StarDist3D.from_folder(folder)
    assert again.thresholds == model.thresholds and again.config.anisotropy == (2.0, 1.0, 1.0)
    for a, b in zip(ref, again.predict(x)):
        np.testing.assert_array_equal(a, b)
    model.save(folder)  # overwrite in place
    f = model.save_file(tmp_path / "m.pt")
    single = StarDist3D.load(f)
    assert single.thresholds == model.thresholds
    for a, b in zip(ref, single.predict(x)):
        np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.glob(".*"))  # no temp leftovers
    (folder / "weights.pt").write_bytes(b"garbage")
    with pytest.raises(NeurosegError, match="cannot read the weights"):
        StarDist3D.from_folder(folder)
    with pytest.raises(NeurosegError, match="neither a bundled model"):
        StarDist3D.load(tmp_path / "does_not_exist")


def test_load_model_cached_per_device(tmp_path):
    folder = random_model(SMALL_UNET).save(tmp_path / "m")
    a = load_model(folder, device="cpu")
    assert load_model(str(folder), device="cpu") is a


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "image,match",
    [
        (np.ones((30, 30), np.float32), "2D"),
        (np.ones((3, 2, 10, 10, 10), np.float32), "5D"),
        (np.random.rand(3, 10, 12, 12).astype(np.float32), "no axis of size 1"),
        (np.full((10, 12, 12), 7.0, np.float32), "constant"),
        (np.where(np.random.rand(10, 12, 12) > 0.5, np.nan, 1.0), "NaN or infinite"),
        (np.where(np.random.rand(10, 12, 12) > 0.5, np.inf, 1.0), "NaN or infinite"),
        (np.array([["a"]]), "numeric"),
    ],
)
def test_bad_images_rejected(image, match):
    model = random_model(SMALL_UNET)
    with pytest.raises(NeurosegError, match=match):
        model.predict_instances(image)
    with pytest.raises(NeurosegError):
        model.predict(image)


def test_channel_count_checked():
    model = random_model(SMALL_UNET, n_channel_in=2)
    with pytest.raises(NeurosegError, match="expects 2 channels"):
        model.predict(np.random.rand(10, 12, 12).astype(np.float32))
    x = np.random.rand(10, 16, 16, 2).astype(np.float32)
    a = model.predict(x)
    b = model.predict(np.moveaxis(x, -1, 0))
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(NeurosegError, match="thresholds"):
        model.predict_instances(x, prob_thresh=2.0)


# -- progress and cancel ---------------------------------------------------------------------------
@needs_keras
def test_generator_progress_per_tile_and_result():
    from sd3d_helpers import load_inputs

    model = StarDist3D.from_folder(FIXTURES / "models" / "resnet_b2_g111_r32")
    x = load_inputs()["raw1"]
    steps: list[Progress] = []
    labels, details = run_to_completion(
        model.predict_instances_iter(x, n_tiles=(1, 2, 2), use_subprocess=False), steps.append
    )
    tile_msgs = [p for p in steps if p.message.startswith("tile ")]
    assert len(tile_msgs) == 4
    assert steps[-1].step == steps[-1].total
    assert [p.step for p in steps] == sorted(p.step for p in steps)
    assert labels.shape == x.shape and labels.dtype == np.int32
    assert set(details) >= {"points", "prob", "dist", "rays_vertices", "rays_faces"}
    assert 0 < labels.max() <= len(details["points"])  # an object can be fully covered by others


def test_cancel_during_nms_kills_worker(monkeypatch):
    """Closing the generator while NMS runs in the worker process terminates that process."""
    from sd3d_helpers import slow_nms

    from napari_neuroseg.models.stardist3d import postprocess
    from napari_neuroseg.runtime.subprocess import ProcessWorker

    worker = ProcessWorker()
    monkeypatch.setattr("napari_neuroseg.runtime.subprocess.get_worker", lambda: worker)
    monkeypatch.setattr(postprocess, "nms_and_render", slow_nms)  # stands in for a long NMS
    model = random_model(SMALL_UNET)
    gen = model.predict_instances_iter(blobs(), prob_thresh=0.0, use_subprocess=True)
    try:
        for p in gen:
            if "non-maximum suppression" in p.message and worker.alive:
                break
        pid = worker.pid
        assert pid is not None
        gen.close()
        assert not worker.alive
    finally:
        worker.shutdown()


def test_polyhedra_surface_mesh():
    from napari_neuroseg.models.stardist3d.postprocess import polyhedra_surface

    model = random_model(SMALL_UNET)
    rays = model.rays
    details = {
        "points": np.array([[5, 10, 10], [5, 20, 30]]),
        "dist": np.full((2, 16), 3.0, np.float32),
        "rays_vertices": rays.vertices,
        "rays_faces": rays.faces,
    }
    v, f, val = polyhedra_surface(details, scale=(2, 1, 1))
    assert v.shape == (32, 3) and f.shape == (2 * len(rays.faces), 3) and val.shape == (32,)
    assert f.max() == 31 and set(val) == {1.0, 2.0}
    centre = v[:16].mean(0)
    np.testing.assert_allclose(centre, [10, 10, 10], atol=1.0)  # z scaled by 2
    empty = polyhedra_surface({**details, "points": np.zeros((0, 3)), "dist": np.zeros((0, 16))})
    assert empty[0].shape == (0, 3)


def test_percentiles_of_large_volumes_match_numpy():
    from napari_neuroseg.models.stardist3d.model import _percentile

    rng = np.random.default_rng(0)
    for a in (rng.gamma(2, 100, size=(8, 256, 160)).astype(np.float32),
              rng.integers(0, 4000, size=(8, 256, 160)).astype(np.uint16)):
        for q in (1.0, 50.0, 99.8):
            assert np.float32(_percentile(a, q)) == np.float32(np.percentile(a, q))


@needs_keras
def test_cpu_bfloat16_opt_in_stays_close():
    """bfloat16 where this CPU runs it; elsewhere (no AVX512/AMX: oneDNN raises) one warning and
    float32 results, never a crash. The test checks the feature, then asserts the matching branch."""
    import warnings

    import torch

    from napari_neuroseg.models.stardist3d import model as model_mod
    from sd3d_helpers import load_inputs

    model = StarDist3D.from_folder(FIXTURES / "models" / "resnet_b2_g111_r32")
    x = load_inputs()["img1"]
    p32, d32 = model.predict(x)
    model.precision = "bfloat16"
    model_mod._CPU_BF16.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p16, d16 = model.predict(x)
    cpu_has_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # oneDNN's own answer
    assert model_mod._CPU_BF16["ok"] is cpu_has_bf16
    assert p16.dtype == np.float32 and p16.shape == p32.shape
    if cpu_has_bf16:
        assert np.abs(p16 - p32).max() < 0.05  # measured 0.017
        assert not np.array_equal(p16, p32)  # it really ran in bfloat16
    else:
        assert any("cannot run bfloat16" in str(w.message) for w in caught)
        np.testing.assert_array_equal(p16, p32)
        np.testing.assert_array_equal(d16, d32)

@needs_keras
@pytest.mark.parametrize("env", [{"NEUROSEG_ONEDNN_DIRECT": "0"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}])
def test_restricted_cpu_paths_give_the_same_outputs(env, tmp_path):
    """With the private oneDNN ops turned off, or oneDNN limited to AVX2 (a CPU without AVX-512),
    float32 predictions equal the default path's; bfloat16 there runs (falls back) instead of crashing."""
    import os
    import subprocess
    import sys

    from sd3d_helpers import load_inputs

    model = StarDist3D.from_folder(FIXTURES / "models" / "resnet_b2_g111_r32")
    x = load_inputs()["img1"]
    p_ref, d_ref = model.predict(x)
    np.save(tmp_path / "x.npy", x)
    run_env = {**os.environ, **env}
    code = (
        "import sys, numpy as np, warnings\n"
        "from napari_neuroseg.models.stardist3d import StarDist3D\n"
        f"m = StarDist3D.from_folder({str(FIXTURES / 'models' / 'resnet_b2_g111_r32')!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "p, d = m.predict(x)\n"
        f"np.save({str(tmp_path / 'p.npy')!r}, p); np.save({str(tmp_path / 'd.npy')!r}, d)\n"
        "m.precision = 'bfloat16'\n"
        "p16, _ = m.predict(x)\n"
        "assert np.abs(p16 - p).max() < 0.05\n"
        "from napari_neuroseg.models.stardist3d.network import onednn_direct_ok\n"
        f"assert onednn_direct_ok() is {run_env.get('NEUROSEG_ONEDNN_DIRECT', '1') != '0'}\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), p_ref, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "d.npy"), d_ref, atol=1e-4, rtol=1e-5)
