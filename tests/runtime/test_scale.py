"""Physical scale (runtime/scale.py): voxel sizes from files and flags, the factor rule,
resampling there and back (nuclei and neurons), the automatic nucleus-size estimate."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.runtime.scale import (
    ModelScale,
    ObjectSize,
    estimate_object_diameter,
    parse_object_size,
    parse_voxel_size,
    plan_scale,
    read_scale_json,
    resample_image,
    restore_labels,
    voxel_size_from_volume,
)

NUC = ModelScale((0.5, 0.25, 0.25), 16.5, (9.75, 25.0), "nucleus", True)


# ------------------------------------------------------------------ voxel size from files and flags
def test_voxel_size_from_imagej_tiff(tmp_path):
    import tifffile

    from napari_neuroseg.io import read_image

    p = tmp_path / "a.tif"
    tifffile.imwrite(p, np.zeros((4, 8, 8), np.uint8), imagej=True, resolution=(1 / 0.127, 1 / 0.127),
                     metadata={"spacing": 0.284, "unit": "um", "axes": "ZYX"})
    vs = voxel_size_from_volume(read_image(p))
    assert vs == pytest.approx((0.284, 0.127, 0.127), rel=1e-4)
    q = tmp_path / "b.tif"
    tifffile.imwrite(q, np.zeros((4, 8, 8), np.uint8), photometric="minisblack")
    assert voxel_size_from_volume(read_image(q)) is None  # no metadata: unknown, not 1 µm


def test_voxel_size_from_ome_zarr_in_nanometres(tmp_path):
    from napari_neuroseg.io import read_image, write_ome_zarr

    p = tmp_path / "a.ome.zarr"
    write_ome_zarr(p, np.zeros((4, 8, 8), np.uint8), axes="ZYX", scale=(2.0, 0.5, 0.5))
    assert voxel_size_from_volume(read_image(p)) == pytest.approx((2.0, 0.5, 0.5))

    class V:  # a reader result in nanometres
        scale = (300.0, 100.0, 100.0)
        meta = {"unit": "nanometer"}

    assert voxel_size_from_volume(V()) == pytest.approx((0.3, 0.1, 0.1))


def test_parse_sizes():
    assert parse_voxel_size("0.28, 0.127 0.127") == (0.28, 0.127, 0.127)
    for bad in ("1 2", "0 1 1", "a b c", (1, -1, 1)):
        with pytest.raises(NeurosegError):
            parse_voxel_size(bad)
    assert parse_object_size("auto").auto
    assert parse_object_size("3.2um") == ObjectSize(3.2, "um")
    assert parse_object_size("3.2") == ObjectSize(3.2, "um")
    assert parse_object_size("25 vox") == ObjectSize(25.0, "vox")
    assert parse_object_size(None) is None
    with pytest.raises(NeurosegError):
        parse_object_size("3 parsec")


def test_cli_voxel_size_flag_overrides_metadata(tmp_path, monkeypatch):
    """`neuroseg nuclei --voxel-size` reaches the model instead of the file's voxel size."""
    import tifffile

    from napari_neuroseg.cli import nuclei as cli_nuclei
    from napari_neuroseg.models import stardist3d

    p = tmp_path / "in.tif"
    tifffile.imwrite(p, np.random.default_rng(0).integers(0, 200, (8, 16, 16), dtype=np.uint8), imagej=True,
                     resolution=(1 / 0.127, 1 / 0.127), metadata={"spacing": 0.284, "unit": "um", "axes": "ZYX"})
    seen = []

    class Fake:  # the network is not what is tested here
        name, scale = "fake", NUC
        config = stardist3d.StarDistConfig()

        class thresholds:  # noqa: N801
            prob, nms, border = 0.5, 0.4, 0

        def predict_instances_iter(self, image, **kw):
            seen.append(kw)
            return np.zeros(image.shape, np.int32), {"points": np.zeros((0, 3))}
            yield  # pragma: no cover

    monkeypatch.setattr(stardist3d, "load_model", lambda *a, **k: Fake())
    parser = argparse.ArgumentParser()
    cli_nuclei.register(parser.add_subparsers())
    for extra, want in (([], (0.284, 0.127, 0.127)), (["--voxel-size", "1", "0.5", "0.5"], (1.0, 0.5, 0.5)),
                        (["--no-rescale"], None)):
        args = parser.parse_args(["nuclei", str(p), "-o", str(tmp_path / "out.tif"), "--quiet", *extra])
        assert args.func(args) == 0
        got = seen[-1]["voxel_size"]
        assert (got is None) if want is None else got == pytest.approx(want, rel=1e-4)
    args = parser.parse_args(["nuclei", str(p), "-o", str(tmp_path / "o.tif"), "--object-size", "auto"])
    args.func(args)
    assert seen[-1]["object_size"].auto


# ------------------------------------------------------------------ the model's scale and the factor rule
def test_model_scale_files(tmp_path):
    from napari_neuroseg.models.stardist3d import load_model

    m = load_model(None, device="cpu")
    assert m.scale is not None and m.scale.voxel_size == (0.5, 0.25, 0.25) and m.scale.object_diameter_vox == 16.5
    assert ModelScale.from_dict(json.loads(json.dumps(NUC.to_dict()))) == NUC
    bad = tmp_path / "scale.json"
    bad.write_text(json.dumps({"voxel_size": [1, 1]}))
    with pytest.raises(NeurosegError, match="scale"):
        read_scale_json(bad)
    assert read_scale_json(tmp_path / "missing.json") is None
    from napari_neuroseg.models.neurons.model import DEFAULT_MODEL, load_model as load_neurons
    from napari_neuroseg.models.neurons.predict import model_scale

    assert DEFAULT_MODEL.is_file()
    assert model_scale(load_neurons(None, "cpu")).voxel_size == (0.44, 0.44, 0.44)


def test_saved_model_keeps_its_scale(tmp_path):
    from napari_neuroseg.models.stardist3d import StarDist3D, StarDistConfig

    m = StarDist3D(StarDistConfig(n_rays=8, unet_n_depth=1, unet_n_filter_base=2, net_conv_after_unet=4), device="cpu")
    m.scale = NUC
    assert StarDist3D.from_folder(m.save(tmp_path / "m"), device="cpu").scale == NUC
    assert StarDist3D.from_file(m.save_file(tmp_path / "m.pt"), device="cpu").scale == NUC


def test_plan_rules():
    assert plan_scale(NUC).identity  # unknown voxel size: as before
    p = plan_scale(NUC, voxel_size=(0.28, 0.125, 0.125))
    assert p.factors == pytest.approx((0.56, 0.5, 0.5))
    p = plan_scale(NUC, voxel_size=(0.28, 0.125, 0.125), object_size="2.0625um")  # half the model's nucleus
    assert p.factors == pytest.approx((1.12, 1.0, 1.0))
    assert plan_scale(NUC, object_size="33 vox").factors == pytest.approx((0.5, 0.5, 0.5))
    with pytest.raises(NeurosegError, match="voxel size"):
        plan_scale(NUC, object_size="3 um")
    with pytest.raises(NeurosegError, match="scale"):
        plan_scale(None, object_size="3 um")
    assert plan_scale(None, voxel_size=(1, 1, 1)).identity


# ------------------------------------------------------------------ resampling there and back
def test_resample_and_restore_shapes():
    rng = np.random.default_rng(0)
    img = rng.random((9, 20, 21)).astype(np.float32)
    small = resample_image(img, (0.5, 0.5, 0.5))
    assert small.shape == (4, 10, 10) and small.dtype == np.float32  # round(4.5) = 4 (banker's), 10, 10
    assert resample_image(img[None], (2, 1, 1), channel_axis=0).shape == (1, 18, 20, 21)
    lab = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4)
    big = restore_labels(lab, (4, 6, 8))
    assert big.shape == (4, 6, 8) and np.array_equal(big[::2, ::2, ::2], lab) and np.array_equal(big[1::2, 1::2, 1::2], lab)
    back = restore_labels(big, (2, 3, 4))
    assert np.array_equal(back, lab)


@pytest.mark.slow  # 50 s measured (--durations, loaded 2-core machine): the NMS compiles on first use
def test_nuclei_labels_come_back_at_the_input_shape():
    from napari_neuroseg.models.stardist3d import load_model
    from napari_neuroseg.synth import make_nuclei

    img = np.asarray(make_nuclei((12, 40, 36), seed=3)[0])
    m = load_model(None, device="cpu")
    lab, det = m.predict_instances(img, scale_factors=(0.75, 0.6, 0.6), use_subprocess=False)
    assert lab.shape == img.shape
    assert det["scale_plan"]["factors"] == pytest.approx([0.75, 0.6, 0.6])
    pts = np.asarray(det["points"])
    if len(pts):
        assert (pts >= -0.5).all() and (pts < np.array(img.shape)).all()  # input voxels, not resampled ones


def test_neuron_labels_come_back_at_the_input_shape():
    from napari_neuroseg.models.neurons.predict import predict
    from napari_neuroseg.synth import make_neurons

    raw = np.asarray(make_neurons((16, 30, 26), seed=1).raw)
    res = predict(raw, voxel_size=(0.88, 0.88, 0.88), device="cpu", return_outputs=True)  # model: 0.44 µm
    assert res.labels.shape == raw.shape[1:] and res.foreground.shape == raw.shape[1:]
    assert res.info["scale_plan"]["factors"] == pytest.approx([2.0, 2.0, 2.0])


# ------------------------------------------------------------------ automatic size
@pytest.mark.parametrize("zoom", [0.6, 1.5])
def test_auto_size_on_a_volume_rendered_at_a_known_scale(zoom):
    """make_nuclei renders at anisotropy (2, 1, 1); zooming the volume scales the truth."""
    from napari_neuroseg.synth import make_nuclei

    img, lab = (np.asarray(a) for a in make_nuclei((32, 96, 96), seed=11)[:2])
    vols = np.bincount(lab.ravel())[1:]
    truth = np.median((6 * vols[vols > 0] * 2.0 / np.pi) ** (1 / 3)) * zoom  # equivalent diameter, Y/X voxels
    est = estimate_object_diameter(resample_image(img, (zoom,) * 3), anisotropy=2.0)
    assert truth / 1.4 < est.diameter_vox < truth * 1.4, (est, truth)
    assert est.n_blobs >= 5


def test_batch_nuclei_task_decides_the_factors_once(monkeypatch):
    from napari_neuroseg.batch.adapters import NucleiTask

    task = NucleiTask()
    params = task.resolve({"voxel_size": "0.25,0.125,0.125"})
    img = np.random.default_rng(0).integers(0, 255, (8, 24, 24)).astype(np.uint8)
    prepared = task.prepare(img, "ZYX", params)
    assert prepared["_factors"] == pytest.approx([0.5, 0.5, 0.5])
    plain = task.halo_for(task.resolve({}))
    assert task.halo_for(prepared) == tuple(2 * h for h in plain)  # context at the model's scale
    labels = task.segment(img, "ZYX", prepared)
    assert labels.shape == img.shape


def test_layer_scale_is_a_voxel_size_only_with_a_length_unit():
    """napari's default units are pixels: the synthetic sample's scale (2, 1, 1) is an anisotropy,
    not 2 µm voxels (resampling by it made the nuclei 4x too large); a file's unit or µm layer units count."""
    from napari_neuroseg.runtime.scale import voxel_size_from_layer_scale

    assert voxel_size_from_layer_scale((2, 1, 1)) is None
    assert voxel_size_from_layer_scale((2, 1, 1), ("pixel",) * 3) is None
    assert voxel_size_from_layer_scale((2, 1, 1), ("pixel",) * 3, "pixel") is None
    assert voxel_size_from_layer_scale((0.3, 0.1, 0.1), ("pixel",) * 3, "micrometer") == (0.3, 0.1, 0.1)
    assert voxel_size_from_layer_scale((300, 100, 100), ("nanometer",) * 3) == pytest.approx((0.3, 0.1, 0.1))
    assert voxel_size_from_layer_scale((1, 1, 1), ("micrometer",) * 3) is None


def test_imagej_tiff_without_a_unit_has_no_voxel_size(tmp_path):
    """ImageJ shows 'pixel' for a file with a Z spacing but no unit: not a physical voxel size."""
    from napari_neuroseg.io import read_image
    from napari_neuroseg.runtime.scale import voxel_size_from_volume

    import tifffile

    p = tmp_path / "noUnit.tif"
    tifffile.imwrite(p, np.zeros((4, 8, 8), np.uint16), imagej=True, resolution=(1.0, 1.0),
                     metadata={"spacing": 2.0, "axes": "ZYX"})
    vol = read_image(p)
    assert tuple(vol.scale) == (2.0, 1.0, 1.0)  # still shown with its anisotropy in napari
    assert voxel_size_from_volume(vol) is None


def test_object_diameters_skip_cut_objects_and_training_scale_uses_known_voxel_size():
    from napari_neuroseg.runtime.scale import object_diameters_vox, training_data_scale

    z, y, x = np.ogrid[:20, :40, :40]
    lab = np.zeros((20, 40, 40), np.uint16)
    lab[((z - 10) * 2) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 <= 8**2] = 1  # radius 8 Y/X voxels, Z voxels 2x
    lab[:, :3, :3] = 2  # touches the border: not measured
    d = object_diameters_vox(lab, (2.0, 1.0, 1.0))
    assert d.shape == (1,) and abs(d[0] - 16) < 0.5
    sc = training_data_scale([lab, lab], [(1.0, 0.5, 0.5), (1.0, 0.5, 0.5)], object_name="nucleus")
    assert sc.voxel_size == (1.0, 0.5, 0.5) and not sc.nominal and abs(sc.object_diameter_vox - 16) < 0.5
    sc = training_data_scale([lab, lab], [(1.0, 0.5, 0.5), None], (2.0, 1.0, 1.0))
    assert sc.nominal and sc.voxel_size == (0.5, 0.25, 0.25)
    with pytest.raises(NeurosegError, match="no objects"):
        training_data_scale([np.zeros((4, 4, 4), np.uint8)], [None])


def test_neurite_thickness_rescales_neurons_and_auto_is_refused():
    """``object_size`` for a neuron model is the neurite thickness: the volume is rescaled so its
    neurites have the model's typical thickness (3 voxels at 0.44 µm) and the labels come back
    at the input's shape; ``auto`` is refused with a fix (no estimator proved reliable)."""
    from napari_neuroseg.models.neurons.predict import model_scale, predict
    from napari_neuroseg.models.neurons.model import load_model
    from napari_neuroseg.synth import make_neurons

    ms = model_scale(load_model(None, device="cpu"))
    assert ms.object_name == "neurite" and ms.object_diameter_vox == pytest.approx(3.0)
    assert plan_scale(ms, object_size="6 vox").factors == pytest.approx((0.5, 0.5, 0.5))
    # µm: 2.64 µm neurites in 0.44 µm voxels are 6 voxels thick, as above
    assert plan_scale(ms, voxel_size=(0.44,) * 3, object_size="2.64um").factors == pytest.approx((0.5, 0.5, 0.5))
    with pytest.raises(NeurosegError, match="automatic neurite thickness") as err:
        plan_scale(ms, voxel_size=(0.44,) * 3, object_size="auto", image=np.zeros((4, 8, 8)))
    assert "1.3 um" in err.value.fix
    raw = np.asarray(make_neurons((16, 30, 26), seed=1).raw)
    res = predict(raw, object_size="1.5 vox", device="cpu")  # thinner than the model's: upsampled x2
    assert res.labels.shape == raw.shape[1:]
    assert res.info["scale_plan"]["factors"] == pytest.approx([2.0, 2.0, 2.0])
    assert "object diameter 1.5 vox (given)" in res.info["scale_plan"]["text"]
