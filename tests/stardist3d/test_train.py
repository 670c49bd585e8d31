"""Training of StarDist-3D: targets, augmentation, sampling, losses, thresholds, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models.stardist3d.train import TrainSettings, default_config, synthetic_dataset, train
from napari_neuroseg.models.stardist3d.training import (
    AugmentSettings,
    PatchSampler,
    augment_patch,
    make_targets,
    optimize_thresholds,
)


def _balls(shape=(16, 48, 48), centres=((8, 12, 12), (8, 30, 34)), radius=(4, 7, 7)):
    zz, yy, xx = np.indices(shape)
    lbl = np.zeros(shape, np.int32)
    for k, (cz, cy, cx) in enumerate(centres, start=1):
        inside = ((zz - cz) / radius[0]) ** 2 + ((yy - cy) / radius[1]) ** 2 + ((xx - cx) / radius[2]) ** 2 <= 1
        lbl[inside] = k
    return lbl


def _tiny_config():
    return default_config(n_rays=16, n_filter_base=4, net_conv_after=8, grid=(1, 2, 2), anisotropy=(2, 1, 1))


def _tiny_settings(**kw):
    base = dict(steps=2, batch_size=1, patch_size=(8, 32, 32), val_every=1, checkpoint_every=1,
                n_val_patches=1, val_fraction=0.34, device="cpu", optimize_thresholds=False, warmup_steps=1)
    base.update(kw)
    return TrainSettings(**base)


@pytest.fixture(scope="module")
def tiny_data():
    return synthetic_dataset(3, (16, 48, 48), seed=123, vary=0.0)


def test_targets_are_stardist_targets():
    from stardist import Rays_GoldenSpiral

    lbl = _balls()
    rays = Rays_GoldenSpiral(32, anisotropy=(2, 1, 1))
    prob, dist = make_targets(lbl, rays, (1, 2, 2), (2, 1, 1))
    assert prob.shape == (16, 24, 24) and dist.shape == (32, 16, 24, 24)
    sub = lbl[:, ::2, ::2]
    assert np.all(prob[sub == 0] == 0) and np.all(dist[:, sub == 0] == 0)
    for k in (1, 2):  # normalised edt: 1 at the centre of each object
        assert prob[sub == k].max() == pytest.approx(1.0)
    # at the centre of ball 1 every ray reaches the ellipsoid surface: r(dir) in voxels
    d = dist[:, 8, 6, 6]
    v = np.asarray(rays.vertices)  # (z, y, x), rays are in voxel units
    expected = 1.0 / np.sqrt((v[:, 0] / 4) ** 2 + (v[:, 1] / 7) ** 2 + (v[:, 2] / 7) ** 2)
    # star_dist3D marches to the first voxel outside: up to ~1.5 voxels beyond the surface
    assert np.all(d >= expected - 0.5) and np.all(d <= expected + 1.5)


def test_targets_of_empty_patch():
    from stardist import Rays_GoldenSpiral

    prob, dist = make_targets(np.zeros((8, 16, 16), np.int32), Rays_GoldenSpiral(8), (1, 2, 2))
    assert prob.shape == (8, 8, 8) and dist.shape == (8, 8, 8, 8) and prob.max() == 0


def test_augment_keeps_image_and_labels_aligned():
    lbl = _balls()
    img = lbl[np.newaxis].astype(np.float32)
    rng = np.random.default_rng(0)
    geo_only = AugmentSettings(scale=(1.0, 1.0), shift_sigma=0.0, noise_sigma=0.0)
    seen = set()
    for _ in range(12):
        x, y = augment_patch(img, lbl, rng, geo_only)
        np.testing.assert_array_equal(x[0], y)
        assert sorted(np.unique(y)) == [0, 1, 2]
        seen.add(y.tobytes())
    assert len(seen) > 3  # the geometry really changes
    x, _ = augment_patch(img, lbl, rng, AugmentSettings())
    assert not np.array_equal(x, img) and x.dtype == np.float32
    same = augment_patch(img, lbl, rng, AugmentSettings(enabled=False))
    assert same[0] is img and same[1] is lbl


def test_patch_sampler_is_foreground_biased():
    lbl = np.zeros((16, 128, 128), np.int32)
    lbl[6:10, 100:110, 100:110] = 1  # one small object in a big empty volume
    img = lbl[np.newaxis].astype(np.float32)
    rng = np.random.default_rng(1)
    fg = PatchSampler([img], [lbl], (8, 32, 32), foreground_prob=1.0)
    assert all(fg.sample(rng)[1].any() for _ in range(20))
    uniform = PatchSampler([img], [lbl], (8, 32, 32), foreground_prob=0.0)
    assert sum(uniform.sample(rng)[1].any() for _ in range(40)) < 20
    small = PatchSampler([img[:, :4, :20, :20]], [lbl[:4, :20, :20]], (8, 32, 32))
    x, y = small.sample(rng)
    assert x.shape == (1, 8, 32, 32) and y.shape == (8, 32, 32)


def test_patch_sampler_draws_volumes_by_mixing_weights():
    """A small annotated volume among large synthetic ones gets the share mix_weights gives it,
    not its share of the voxels; bad weights are refused."""
    from napari_neuroseg.models.stardist3d.training.data import mix_weights

    small = np.ones((8, 16, 16), np.int32)
    big = [np.ones((16, 64, 64), np.int32)] * 3
    w = mix_weights([small], big, 0.5)
    assert w[0] == pytest.approx(0.5) and w[1:] == pytest.approx([1 / 6] * 3)
    images = [np.full((1,) + small.shape, 7.0, np.float32)] + [np.zeros((1,) + b.shape, np.float32) for b in big]
    rng = np.random.default_rng(0)
    by_size = PatchSampler(images, [small] + big, (8, 16, 16))
    mixed = PatchSampler(images, [small] + big, (8, 16, 16), weights=w)

    def share(sampler):  # the fraction of patches from the small volume
        return np.mean([sampler.sample(rng)[0].max() == 7.0 for _ in range(1000)])

    assert share(by_size) < 0.05 and 0.44 < share(mixed) < 0.56
    with pytest.raises(NeurosegError, match="sampling weights"):
        PatchSampler(images, [small] + big, (8, 16, 16), weights=[1.0, 0.0])
    with pytest.raises(NeurosegError, match="outside"):
        mix_weights([small], big, 1.5)


def test_losses_match_stardist_formulas():
    import torch

    from napari_neuroseg.models.stardist3d.training.losses import dist_loss, prob_loss, stardist_loss

    g = torch.Generator().manual_seed(0)
    p_true = torch.rand(2, 1, 4, 5, 6, generator=g)
    p_pred = torch.rand(2, 1, 4, 5, 6, generator=g) * 0.98 + 0.01
    d_true = torch.rand(2, 8, 4, 5, 6, generator=g) * 5
    d_pred = torch.rand(2, 8, 4, 5, 6, generator=g) * 5
    bce = -(p_true * torch.log(p_pred) + (1 - p_true) * torch.log(1 - p_pred)).mean()
    assert float(prob_loss(p_pred, p_true)) == pytest.approx(float(bce), rel=1e-5)
    mae = (p_true * (d_true - d_pred).abs().mean(1, keepdim=True)).mean() / (p_true.mean() + 1e-7)
    reg = 1e-4 * ((1 - p_true) * d_pred.abs()).mean()
    assert float(dist_loss(d_pred, d_true, p_true)) == pytest.approx(float(mae + reg), rel=1e-5)
    assert float(dist_loss(d_true, d_true, p_true, background_reg=0)) == 0.0
    total, parts = stardist_loss(p_pred, d_pred, p_true, d_true)
    assert float(total) == pytest.approx(float(bce + 0.2 * (mae + reg)), rel=1e-5)
    assert set(parts) == {"loss", "prob_loss", "dist_loss"}


def test_optimize_thresholds_on_perfect_predictions():
    """With the targets as predictions, the best thresholds recover the objects (F1 ≈ 1)."""
    from napari_neuroseg.models.stardist3d.model import StarDist3D

    cfg = default_config(n_rays=32, n_filter_base=4, net_conv_after=8)
    model = StarDist3D(cfg, device="cpu")
    lbl = _balls()
    prob, dist = make_targets(lbl, model.rays, model.grid, cfg.anisotropy)
    pred = (prob, np.moveaxis(np.maximum(dist, 1e-3), 0, -1))
    th, f1, hist = optimize_thresholds(model, [None], [lbl], predictions=[pred], nms_threshs=(0.3, 0.5), maxiter=6)
    assert f1 > 0.95
    assert 0.45 <= th.prob <= 1.0 and th.nms in (0.3, 0.5)
    assert set(hist) == {"0.3", "0.5"} and all(len(v) >= 2 for v in hist.values())


def test_optimize_thresholds_chooses_the_edge_exclusion():
    """With objects whose centres lie at the volume's edge, excluding 2 grid voxels there loses
    them: searched together with the thresholds, border 0 wins; with only (2,) it stays 2."""
    from napari_neuroseg.models.stardist3d.model import StarDist3D

    cfg = default_config(n_rays=32, n_filter_base=4, net_conv_after=8)
    model = StarDist3D(cfg, device="cpu")
    lbl = _balls(centres=((8, 12, 12), (8, 30, 34), (8, -4, 20), (-2, 30, 12)))  # two cut to slivers
    prob, dist = make_targets(lbl, model.rays, model.grid, cfg.anisotropy)
    pred = (prob, np.moveaxis(np.maximum(dist, 1e-3), 0, -1))
    th2, f2, _ = optimize_thresholds(model, [None], [lbl], predictions=[pred], nms_threshs=(0.3,), maxiter=4)
    th, f, hist = optimize_thresholds(model, [None], [lbl], predictions=[pred], nms_threshs=(0.3,), maxiter=4,
                                      borders=(2, 0))
    assert th2.border == 2 and th.border == 0 and f > f2
    assert set(hist) == {"0.3/2", "0.3/0"}
    with pytest.raises(NeurosegError, match="borders"):
        optimize_thresholds(model, [None], [lbl], predictions=[pred], borders=(-1,))


def test_train_tiny_writes_loadable_model_and_resumes(tmp_path, tiny_data):
    from napari_neuroseg.models.stardist3d.model import StarDist3D

    xs, ys = tiny_data
    out = tmp_path / "m"
    seen = []
    res = train(xs, ys, _tiny_config(), out_dir=out, settings=_tiny_settings(steps=2), callback=seen.append)
    assert [p.step for p in seen if p.message.startswith("step")] == [1, 2]
    assert {"config.json", "thresholds.json", "weights.pt", "checkpoint.pt", "training.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp leftovers
    hist = json.loads((out / "training.json").read_text())["history"]
    assert [h["step"] for h in hist] == [1, 2] and all(np.isfinite(h["loss"]) for h in hist)
    assert "val_loss" in hist[-1]
    loaded = StarDist3D.from_folder(out, device="cpu")
    assert loaded.config.n_rays == 16 and loaded.config.extra["train_patch_size"] == [8, 32, 32]
    prob, dist = loaded.predict(np.zeros((8, 32, 32), np.float32) + np.linspace(0, 1, 32, dtype=np.float32))
    assert prob.shape == (8, 16, 16) and dist.shape == (8, 16, 16, 16)

    # resume 2 -> 3 equals training 3 steps in one go (batches depend only on seed and step)
    res3 = train(xs, ys, _tiny_config(), out_dir=out, settings=_tiny_settings(steps=3, keep_best=False), resume=True)
    hist = json.loads((out / "training.json").read_text())["history"]
    assert [h["step"] for h in hist] == [1, 2, 3] and res3.step == 3
    direct = train(xs, ys, _tiny_config(), out_dir=tmp_path / "d", settings=_tiny_settings(steps=3, keep_best=False))
    a = res3.model.net.state_dict()
    b = direct.model.net.state_dict()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-4, atol=1e-6)
    assert res.model is not None


def test_train_in_memory_optimises_thresholds(monkeypatch, tiny_data):
    """The thresholds step runs on the validation volumes and the model ends with its result.
    ``predict`` is replaced by perfect predictions (an untrained net predicts ~0.5 everywhere,
    which makes NMS needlessly slow for a unit test)."""
    from napari_neuroseg.models.stardist3d.model import StarDist3D

    xs, ys = tiny_data
    calls = []

    def perfect_predict(self, image, **kw):
        calls.append(image)
        lbl = val_label[0]
        prob, dist = make_targets(lbl, self.rays, self.grid, self.config.anisotropy)
        return prob, np.moveaxis(np.maximum(dist, 1e-3), 0, -1)

    # with val_fraction 0.34 of 3 volumes exactly one is held out: find which, as train does
    from napari_neuroseg.models.stardist3d.train import _split

    _, va = _split(3, 0.34, np.random.default_rng(0))
    val_label = [ys[va[0]]]
    monkeypatch.setattr(StarDist3D, "predict", perfect_predict)
    res = train(xs, ys, _tiny_config(), settings=_tiny_settings(
        steps=1, optimize_thresholds=True, nms_threshs=(0.3, 0.4), iou_threshs=(0.5,)))
    assert len(calls) == 1 and calls[0].shape == (1,) + ys[va[0]].shape
    # 16 rays approximate these small, partly cut nuclei coarsely: perfect predictions give F1 ~0.75
    assert res.out_dir is None and res.val_f1 > 0.6
    assert 0 < res.thresholds.prob <= 1 and res.thresholds.nms in (0.3, 0.4)
    assert res.model.thresholds == res.thresholds


def test_bad_training_input(tmp_path, tiny_data):
    xs, ys = tiny_data
    with pytest.raises(NeurosegError, match="does not match"):
        train([xs[0]], [ys[0][:, :10]], _tiny_config(), settings=_tiny_settings())
    with pytest.raises(NeurosegError, match="divisor"):
        train(xs, ys, _tiny_config(), settings=_tiny_settings(patch_size=(8, 30, 30)))
    with pytest.raises(NeurosegError, match="images but"):
        train(xs, ys[:1], _tiny_config(), settings=_tiny_settings())
    with pytest.raises(NeurosegError, match="nothing to resume"):
        train(xs, ys, _tiny_config(), out_dir=tmp_path / "none", settings=_tiny_settings(), resume=True)
    with pytest.raises(NeurosegError, match="integer"):
        train([xs[0]], [ys[0].astype(np.float32)], _tiny_config(), settings=_tiny_settings())


def test_train_cli_synthetic_and_files(tmp_path, tiny_data):
    import tifffile

    from napari_neuroseg.cli import main

    out = tmp_path / "cli_model"
    common = ["--n-rays", "16", "--n-filter-base", "4", "--conv-after", "8", "--steps", "1", "--batch-size", "1",
              "--patch-size", "8", "32", "32", "--no-optimize-thresholds", "--device", "cpu", "--val-every", "1"]
    rc = main(["train", "nuclei", "--synthetic", "2", "--synthetic-shape", "16", "48", "48", "-o", str(out), *common])
    assert rc == 0 and (out / "weights.pt").is_file() and (out / "checkpoint.pt").is_file()
    # a model trained from scratch stores its scale (synthetic: nominal 0.25 um per Y/X voxel, anisotropy 2 1 1;
    # object sizes measured on the training labels), so --model OUT resamples inputs to it
    from napari_neuroseg.models.stardist3d.model import StarDist3D

    scale = StarDist3D.load(out, device="cpu").scale
    assert scale is not None and scale.nominal and scale.voxel_size == (0.5, 0.25, 0.25)
    lo, hi = scale.object_diameter_range_vox
    assert 0 < lo <= scale.object_diameter_vox <= hi < 48

    xs, ys = tiny_data
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    for i, (x, y) in enumerate(zip(xs, ys)):
        tifffile.imwrite(tmp_path / "img" / f"v{i}.tif", x)
        tifffile.imwrite(tmp_path / "lbl" / f"v{i}.tif", y.astype(np.uint16))
    out2 = tmp_path / "files_model"
    rc = main(["train", "nuclei", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lbl"),
               "-o", str(out2), "--voxel-size", "1", "0.4", "0.4", *common])
    assert rc == 0 and (out2 / "config.json").is_file()
    scale = StarDist3D.load(out2, device="cpu").scale  # the files' voxel size (--voxel-size), measured sizes
    assert scale.voxel_size == (1.0, 0.4, 0.4) and not scale.nominal and scale.object_diameter_vox > 0
    rc = main(["train", "nuclei", "--images", str(tmp_path / "img" / "v0.tif"), "-o", str(tmp_path / "x"), *common])
    assert rc == 1  # one image, no labels: a clear error, not a traceback


def test_train_stops_when_the_time_budget_is_spent(tmp_path, tiny_data):
    """--max-minutes: a spent budget ends the run early with a checkpoint at the last step, and
    the caller's settings are not changed."""
    xs, ys = tiny_data
    settings = _tiny_settings(steps=50, max_minutes=1e-6)
    res = train(xs, ys, _tiny_config(), out_dir=tmp_path / "m", settings=settings)
    assert res.step == 1 and settings.steps == 50
    hist = json.loads((tmp_path / "m" / "training.json").read_text())["history"]
    assert [h["step"] for h in hist] == [1] and "val_loss" in hist[0]
    import torch

    ck = torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 1


def test_targets_on_device_give_the_same_batches_and_training(tiny_data):
    """``targets_on_device`` (the CUDA default, forced here on CPU): the workers return label
    patches and the distance targets are computed per batch with star_dist3d_torch — the same
    targets as stardist's, so the same losses and weights."""
    import torch

    from napari_neuroseg.models.stardist3d.rays import make_rays, rays_spec
    from napari_neuroseg.models.stardist3d.train import _BatchMaker
    from napari_neuroseg.models.stardist3d.training.star_dist_torch import star_dist3d_torch

    xs, ys = tiny_data
    cfg = _tiny_config()
    rays = make_rays(rays_spec(cfg), cfg.n_rays)
    s = _tiny_settings(batch_size=2)
    sampler = PatchSampler(xs, ys, s.patch_size, s.foreground_prob)
    ref = _BatchMaker(sampler, rays, cfg.grid, cfg.anisotropy, s)
    dev = _BatchMaker(sampler, rays, cfg.grid, cfg.anisotropy, s, labels_only=True)
    for k in range(3):
        x0, p0, d0 = ref(k)
        x1, p1, y1 = dev(k)
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(p0, p1)
        assert y1.shape == (2, 8, 32, 32) and y1.dtype == np.int32 and y1.any()
        d1 = star_dist3d_torch(torch.from_numpy(y1), rays, cfg.grid).permute(0, 4, 1, 2, 3).numpy()
        assert d0.shape == d1.shape == (2, 16, 8, 16, 16) and d0.any()
        np.testing.assert_array_equal(d0, d1)

    a = train(xs, ys, cfg, settings=_tiny_settings(steps=2, keep_best=False, targets_on_device=False))
    b = train(xs, ys, _tiny_config(), settings=_tiny_settings(steps=2, keep_best=False, targets_on_device=True))
    for ha, hb in zip(a.history, b.history, strict=True):
        assert ha["loss"] == hb["loss"] and ha["dist_loss"] == hb["dist_loss"] and ha["val_loss"] == hb["val_loss"]
    sa, sb = a.model.net.state_dict(), b.model.net.state_dict()
    for k in sa:
        np.testing.assert_array_equal(sa[k].numpy(), sb[k].numpy())


def test_synthetic_axial_blur_range_varies_the_z_blur():
    """``axial_blur=(lo, hi)`` draws each volume's Z blur from the range (reproducibly); a larger
    blur leaves less high-frequency energy along Z, and a bad range is a clear error."""
    xs, _ = synthetic_dataset(4, (16, 48, 48), seed=7, vary=0.0, axial_blur=(0.5, 4.0))
    again, _ = synthetic_dataset(4, (16, 48, 48), seed=7, vary=0.0, axial_blur=(0.5, 4.0))
    for a, b in zip(xs, again):
        np.testing.assert_array_equal(a, b)
    sharp, _ = synthetic_dataset(1, (16, 48, 48), seed=7, vary=0.0, axial_blur=(0.5, 0.5))
    soft, _ = synthetic_dataset(1, (16, 48, 48), seed=7, vary=0.0, axial_blur=(4.0, 4.0))
    plain, _ = synthetic_dataset(1, (16, 48, 48), seed=7, vary=0.0)

    def z_energy(x):  # Z edges of the image smoothed in Y/X (the noise averaged away)
        from scipy import ndimage as ndi

        return float(np.abs(np.diff(ndi.gaussian_filter(x, (0, 2, 2)), axis=0)).mean())

    assert z_energy(soft[0]) < 0.75 * z_energy(sharp[0])  # measured 0.66
    assert z_energy(sharp[0]) != z_energy(plain[0])  # the range replaced the default Z blur
    with pytest.raises(NeurosegError, match="axial blur"):
        synthetic_dataset(1, (16, 48, 48), axial_blur=(3.0, 1.0))


def test_fine_tuning_starts_from_the_given_model(tmp_path, tiny_data):
    """``init_from``: a new run (step 0) starting from another model's weights; a model with
    another network is refused with a clear error."""
    import torch

    from napari_neuroseg.models.stardist3d.model import StarDist3D

    xs, ys = tiny_data
    src = tmp_path / "src"
    train(xs, ys, _tiny_config(), out_dir=src, settings=_tiny_settings(steps=2))
    source = StarDist3D.from_folder(src, device="cpu").net.state_dict()
    # zero learning rate: the fine-tuned weights stay those of the source model
    res = train(xs, ys, _tiny_config(), out_dir=tmp_path / "ft",
                settings=_tiny_settings(steps=1, learning_rate=0.0, init_from=str(src)))
    tuned = res.model.net.state_dict()
    for k in source:
        torch.testing.assert_close(tuned[k], source[k])
    scratch = train(xs, ys, _tiny_config(), settings=_tiny_settings(steps=1, learning_rate=0.0)).model.net.state_dict()
    assert any(not torch.equal(scratch[k], source[k]) for k in source)
    doc = json.loads((tmp_path / "ft" / "training.json").read_text())
    assert doc["settings"]["init_from"] == str(src) and [h["step"] for h in doc["history"]] == [1]

    other = default_config(n_rays=32, n_filter_base=4, net_conv_after=8, grid=(1, 2, 2), anisotropy=(2, 1, 1))
    with pytest.raises(NeurosegError, match="n_rays"):
        train(xs, ys, other, settings=_tiny_settings(steps=1, init_from=str(src)))


def test_evaluate_cli_scores_test_image_synthetic_and_axial_blur(tmp_path):
    """The model-card evaluation: the stardist test image, unseen synthetic volumes and the same
    volumes with a stronger Z blur and with dimmer rims, scored at IoU 0.3/0.5/0.7 and written as JSON."""
    from napari_neuroseg.models.stardist3d.training.evaluate import main

    out = tmp_path / "eval.json"
    assert main(["--synthetic", "1", "--shape", "16", "48", "48", "--axial-blur", "3", "--dome", "0.5",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    for name in ("stardist_test_image", "synthetic", "synthetic_axial_blur_3", "synthetic_dome_0.5"):
        assert set(res[name]) == {"0.3", "0.5", "0.7"}
        s = res[name]["0.5"]
        assert s["tp"] + s["fn"] == s["n_true"] > 0 and 0.0 <= s["f1"] <= 1.0
    assert res["stardist_test_image"]["0.5"]["n_true"] == 51  # all of the test image's nuclei


def test_synthetic_dome_range_is_drawn_per_volume_without_changing_the_other_draws():
    """``dome=(lo, hi)`` changes only the intensity profile: the labels and the axial-blur draws
    stay those of the run without it; a range reaching 1 is refused."""
    a_x, a_y = synthetic_dataset(2, (16, 48, 48), seed=3, axial_blur=(1.0, 4.5))
    b_x, b_y = synthetic_dataset(2, (16, 48, 48), seed=3, axial_blur=(1.0, 4.5), dome=(0.3, 0.6))
    for xa, xb, ya, yb in zip(a_x, b_x, a_y, b_y):
        np.testing.assert_array_equal(ya, yb)
        assert not np.array_equal(xa, xb)
    same, _ = synthetic_dataset(2, (16, 48, 48), seed=3, axial_blur=(1.0, 4.5), dome=(0.0, 0.0))
    for xa, xs in zip(a_x, same):
        np.testing.assert_array_equal(xa, xs)
    with pytest.raises(NeurosegError, match="dome range"):
        synthetic_dataset(1, (16, 48, 48), dome=(0.2, 1.0))
