"""The real-task adapters: evaluate (FISBe metrics), nuclei (StarDist-3D), neurons.

Where no trained model is installed, the segmenters are replaced by a threshold stand-in with the
same call signature (monkeypatched), so the adapters' wiring — inputs, channels, stitching mode,
global size filter, errors — is still exercised; a missing model must fail clearly per file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import cc3d
import numpy as np
import pytest
import tifffile

sys.path.insert(0, str(Path(__file__).parent))
from batch_helpers import blobs, same_partition, tube, write_zarr  # noqa: E402

from napari_neuroseg.batch import get_task, read_output, run_batch
from napari_neuroseg.runtime.progress import run_to_completion


def _run(*a, **k):
    return run_to_completion(run_batch(*a, workers=1, **k))


def test_evaluate_task_matches_direct_metrics(tmp_path):
    from napari_neuroseg.io import write_fisbe
    from napari_neuroseg.metrics import evaluate
    from napari_neuroseg.synth import make_neurons

    nv = make_neurons(shape=(24, 64, 64), seed=0)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    write_fisbe(gt_dir / "s1.zarr", raw=nv.raw, gt_instances=nv.gt_instances, dim_neurons=nv.dim_neurons)
    pred = nv.labels.copy()
    pred[pred == 2] = 1  # a false merge
    tifffile.imwrite(pred_dir / "s1.tif", pred)
    res = _run("evaluate", [pred_dir], tmp_path / "m", params={"gt": str(gt_dir)})
    row = res.records[0]
    assert row["status"] == "done", row
    direct = evaluate(nv.gt_instances, pred)
    assert row["avF1"] == pytest.approx(direct["avF1"]) and row["FM"] == direct["FM"] >= 1
    assert Path(row["output"]).name == "s1_evaluate.json"
    # missing ground truth: reported per file
    tifffile.imwrite(pred_dir / "other.tif", pred)
    res = _run("evaluate", [pred_dir / "other.tif"], tmp_path / "m2", params={"gt": str(gt_dir)})
    assert res.records[0]["status"] == "failed" and "no ground truth" in res.records[0]["error"]


def test_missing_models_fail_clearly_per_file(tmp_path):
    f = tmp_path / "n.tif"
    tifffile.imwrite(f, blobs((16, 32, 32), n=2))
    g = tmp_path / "raw.tif"
    tifffile.imwrite(g, np.stack([tube((16, 32, 48))] * 3))
    for task, inp in (("nuclei", f), ("neurons", g)):
        res = _run(task, [inp], tmp_path / task, params={"model": str(tmp_path / "no_such_model")})
        r = res.records[0]
        assert r["status"] == "failed" and r["error"], r


class _FakeStarDist:
    """predict_instances with StarDist's signature and normalisation: (labels, details) from a
    threshold of the (1, 99.8)-percentile normalised image."""

    calls: list = []

    def predict_instances(self, image, *, normalize=True, prob_thresh=None, nms_thresh=None, n_tiles=None, **kw):
        from napari_neuroseg.models.stardist3d.model import normalize_image

        x = np.asarray(image)
        self.calls.append(normalize)
        if normalize:
            x = normalize_image(x[None])[0]
        lab = cc3d.connected_components(x > (prob_thresh or 0.5))
        return lab.astype(np.int32), {"points": None}


def test_nuclei_adapter_whole_and_blockwise_centre_stitching(tmp_path, monkeypatch):
    import napari_neuroseg.models.stardist3d as sd

    monkeypatch.setattr(sd, "load_model", lambda name=None, device=None: _FakeStarDist())
    task = get_task("nuclei")
    assert task.stitch == "centre" and not task.uses_gpu({"device": "cpu"}) and task.uses_gpu({"device": "cuda:0"})
    vol = blobs((32, 48, 48), n=15, radius=3, seed=4)
    src = write_zarr(tmp_path / "n.zarr", vol)
    whole = _run("nuclei", [src], tmp_path / "w", params={"prob_thresh": 0.5}, fmt="zarr")
    block = _run("nuclei", [src], tmp_path / "b", params={"prob_thresh": 0.5}, fmt="zarr",
                 block_shape=(16, 24, 24), halo=(8, 8, 8))
    a = read_output(whole.records[0]["output"])
    b = read_output(block.records[0]["output"])
    assert block.records[0]["status"] == "done", block.records[0]
    assert block.records[0]["mode"] == "blockwise" and block.records[0]["truncated"] == 0
    assert a.max() == b.max() >= 10 and same_partition(a, b)


def test_neurons_adapter_blockwise_overlap_stitching_and_global_min_size(tmp_path, monkeypatch):
    import importlib

    npred = importlib.import_module("napari_neuroseg.models.neurons.predict")

    calls = []

    def fake_predict(raw, model=None, *, device=None, params=None, **kw):
        calls.append(dict(params or {}))
        fg = np.asarray(raw).max(0) > 100
        lab = cc3d.connected_components(fg).astype(np.uint32)
        ms = (params or {}).get("min_size", 0)
        if ms:
            sizes = np.bincount(lab.ravel())
            lab[sizes[lab] < ms] = 0
        return SimpleNamespace(labels=lab)

    monkeypatch.setattr(npred, "predict", fake_predict)
    raw = np.zeros((3, 24, 32, 96), np.uint16)
    raw[1] = tube((24, 32, 96))
    raw[0, 2:4, 2:4, 2:4] = 500  # an 8-voxel speck: removed by min_size
    src = tmp_path / "raw.zarr"
    write_zarr(src, raw, chunks=(3, 12, 16, 16))
    res = _run("neurons", [src], tmp_path / "o", params={"min_size": 20}, fmt="ome-zarr", block_shape=(12, 16, 16),
               halo=(32, 32, 32))
    r = res.records[0]
    assert r["status"] == "done" and r["n_objects"] == 1 and r["blocks"] == 2 * 2 * 6 and r["stitch"] == "overlap"
    # blocks keep the parameter (the neuron model also uses it to absorb small fragments; in a
    # halo'd block the tube's piece is long), and the filter runs again on the stitched objects
    assert calls and all(c.get("min_size") == 20 for c in calls)
    out = read_output(r["output"])
    assert np.array_equal(out > 0, raw[1] > 100)


def _bright_corner(shape=(32, 48, 48), seed=4):
    """Blobs of intensity 1000 everywhere, and in one corner a small blob 40x brighter: the
    corner's block, normalised on its own, would lose its dim blobs."""
    vol = blobs(shape, n=15, radius=3, seed=seed).astype(np.uint16)
    vol[vol > 0] = 1000
    vol[1:4, 1:4, 1:4] = 40000
    return vol


def test_nuclei_blocks_use_the_volume_percentiles(tmp_path, monkeypatch):
    import napari_neuroseg.models.stardist3d as sd
    from napari_neuroseg.batch.normalize import percentile_stats
    from napari_neuroseg.models.stardist3d.model import normalize_image

    fake = _FakeStarDist()
    fake.calls = []
    monkeypatch.setattr(sd, "load_model", lambda name=None, device=None: fake)
    vol = _bright_corner()
    block = vol[:16, :24, :24]  # the corner block: its own 99.8th percentile is the bright blob
    assert np.percentile(block, 99.8) > 10000 > np.percentile(vol, 99.8)
    lost = cc3d.connected_components(normalize_image(block[None])[0] > 0.5).max()
    src = write_zarr(tmp_path / "n.zarr", vol)
    whole = _run("nuclei", [src], tmp_path / "w", params={"prob_thresh": 0.5}, fmt="zarr")
    blockw = _run("nuclei", [src], tmp_path / "b", params={"prob_thresh": 0.5}, fmt="zarr",
                  block_shape=(16, 24, 24), halo=(8, 8, 8))
    a, b = read_output(whole.records[0]["output"]), read_output(blockw.records[0]["output"])
    assert set(fake.calls) == {False}  # the adapter normalised every block itself
    assert blockw.records[0]["resolved_params"]["_norm"] == percentile_stats(vol, "ZYX")[0]
    assert a.max() == b.max() == 16 and same_partition(a, b)
    assert lost < int(cc3d.connected_components(block > 500).max())  # per-block normalisation would lose blobs


def test_threshold_bright_corner_blockwise_equals_whole(tmp_path):
    from skimage.filters import threshold_otsu

    vol = _bright_corner()
    src = write_zarr(tmp_path / "t.zarr", vol)
    p = {"sigma": 1.0}
    whole = _run("threshold", [src], tmp_path / "w", fmt="zarr", params=p)
    blockw = _run("threshold", [src], tmp_path / "b", fmt="zarr", params=p, block_shape=(16, 24, 24))
    a, b = read_output(whole.records[0]["output"]), read_output(blockw.records[0]["output"])
    thr = blockw.records[0]["resolved_params"]["threshold"]
    assert thr == whole.records[0]["resolved_params"]["threshold"] > 1000  # one Otsu for the volume
    assert threshold_otsu(vol[16:, 24:, 24:]) < 1000  # a block on its own would pick another
    assert a.max() >= 1 and same_partition(a, b)


def test_neuron_blocks_get_the_volume_norm_stats(tmp_path, monkeypatch):
    import importlib

    from napari_neuroseg.models.neurons.preprocess import apply_norm, norm_stats

    npred = importlib.import_module("napari_neuroseg.models.neurons.predict")
    seen = []

    def fake_predict(raw, model=None, *, device=None, params=None, norm_stats=None, **kw):
        seen.append(norm_stats)
        x = apply_norm(raw, norm_stats)
        return SimpleNamespace(labels=cc3d.connected_components(x.max(0) > 0.5).astype(np.uint32))

    monkeypatch.setattr(npred, "predict", fake_predict)
    raw = np.zeros((3, 24, 32, 96), np.uint16)
    raw[1] = tube((24, 32, 96))
    raw[2, 1:4, 1:4, 1:4] = 60000
    src = tmp_path / "raw.zarr"
    write_zarr(src, raw, chunks=(3, 12, 16, 16))
    res = _run("neurons", [src], tmp_path / "o", params={"min_size": 0}, fmt="zarr", block_shape=(12, 16, 16),
               halo=(32, 32, 32))
    r = res.records[0]
    assert r["status"] == "done" and r["n_objects"] == 2, r  # the tube and the bright speck
    bg, hi = norm_stats(raw)
    assert len(seen) == r["blocks"] and all(np.allclose(s[0], bg) and s[1] == pytest.approx(hi) for s in seen)
    assert np.array_equal(read_output(r["output"]) > 0, raw.max(0) > 0)


def test_neurons_min_size_defaults_to_the_models_own(monkeypatch):
    """A fine-tuned neuron model stores the min_size its post-processing search chose; batch uses
    it unless min_size is given (it used to force 40)."""
    from types import SimpleNamespace

    from napari_neuroseg.batch.adapters import NeuronsTask
    import importlib

    from napari_neuroseg.models.neurons.postprocess import PostprocessParams

    pred_mod = importlib.import_module("napari_neuroseg.models.neurons.predict")
    task = NeuronsTask()
    assert task.resolve({})["min_size"] == PostprocessParams().min_size  # the shipped model's
    monkeypatch.setattr(pred_mod, "cached_load_model",
                        lambda path=None, device=None: SimpleNamespace(params=SimpleNamespace(min_size=400)))
    assert task.resolve({"model": "tuned.pt"})["min_size"] == 400
    assert task.resolve({"model": "tuned.pt", "min_size": 5})["min_size"] == 5
