"""Write a BioImage.IO model package (format 0.5) for the nuclei (StarDist-3D) or the neuron model.

The package holds ``pytorch_state_dict`` weights (architecture: a callable of
:mod:`napari_neuroseg.models.bioimageio.arch` with its keyword arguments, and an
``environment.yaml`` naming ``napari-neuroseg``), ``torchscript`` weights (traced with PyTorch's
plain convolutions), a test input and the outputs the model makes of it, a cover PNG, a README
(the model card from ``docs/`` for the shipped models), the post-processing parameters in
``config`` (``config.stardist`` as the Zoo's StarDist packages have it, ``config.neuroseg``), and
authors, licence and citations. The description is validated with ``bioimageio.spec`` (files and
hashes included) before the zip is moved into place; nothing is written on failure.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io.atomic import atomic_output
from napari_neuroseg.models.stardist3d.config import NORM_PERCENTILES

__all__ = ["export_package", "resolve_export_model"]

STARDIST_CITES = [
    {"text": "Schmidt et al., Cell Detection with Star-Convex Polygons, MICCAI 2018",
     "doi": "10.1007/978-3-030-00934-2_30"},
    {"text": "Weigert et al., Star-convex Polyhedra for 3D Object Detection and Segmentation in Microscopy, "
             "WACV 2020", "doi": "10.1109/WACV45572.2020.9093435"},
]
UNET_CITE = {"text": "Ronneberger et al., U-Net: Convolutional Networks for Biomedical Image Segmentation, "
                     "MICCAI 2015", "doi": "10.1007/978-3-319-24574-4_28"}
_DOCS = Path(__file__).resolve().parents[4] / "docs"
_ARCH = "napari_neuroseg.models.bioimageio.arch"


def _require_spec():
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError as err:
        raise NeurosegError("exporting a BioImage.IO package needs the bioimageio.spec package",
                            fix="pip install 'napari-neuroseg[bioimageio]'") from err


def _sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_export_model(spec: str | Path) -> tuple[str, Any]:
    """``("nuclei", StarDist3D)`` or ``("neurons", NeuronModel)`` for a shipped name
    (``neuroseg_nuclei``, ``neurons_default``), a StarDist folder / ``.pt`` / package, or a
    neuron model ``.pt``."""
    from napari_neuroseg.models.neurons.model import DEFAULT_MODEL, MODEL_TYPE, load_model

    s = str(spec)
    if s in ("neurons", "neurons_default", DEFAULT_MODEL.stem):
        return "neurons", load_model(None, device="cpu")
    p = Path(s).expanduser()
    if p.is_file() and p.suffix == ".pt":
        from napari_neuroseg.models.safe_load import load_torch_file

        blob = load_torch_file(p, fix="give a model written by neuroseg")
        if isinstance(blob, dict) and blob.get("model_type") == MODEL_TYPE:
            return "neurons", load_model(p, device="cpu")
    from napari_neuroseg.models.stardist3d.model import StarDist3D

    return "nuclei", StarDist3D.load(s, device="cpu")


# ------------------------------------------------------------------------------ test data
def _crop_to(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Centre crop of the last 3 axes (reflect-padded where smaller)."""
    pads = [(0, 0)] * (a.ndim - 3) + [(0, max(0, t - n)) for n, t in zip(a.shape[-3:], shape)]
    a = np.pad(a, pads, mode="reflect") if any(p[1] for p in pads) else a
    sl = [slice(None)] * (a.ndim - 3) + [slice((n - t) // 2, (n - t) // 2 + t) for n, t in zip(a.shape[-3:], shape)]
    return a[tuple(sl)]


def _round_up(n: int, d: int) -> int:
    return -(-n // d) * d


def _nuclei_test_input(model) -> np.ndarray:
    """(1, C, Z, Y, X) float32 raw crop of the bundled nuclei sample (divisible by the divisor)."""
    from napari_neuroseg.synth.samples import load_sample

    image, _ = load_sample("nuclei")  # (32, 96, 96) float32
    div = model.divisor
    shape = tuple(max(_round_up(t, d), 2 * d) for t, d in zip((32, 64, 64), div))
    x = _crop_to(image.astype(np.float32), shape)
    return np.ascontiguousarray(np.repeat(x[None, None], model.config.n_channel_in, axis=1))


def _neuron_test_input(model) -> np.ndarray:
    """(1, 3, Z, Y, X) float32 normalised crop of the bundled neuron sample."""
    from napari_neuroseg.models.neurons.preprocess import normalize
    from napari_neuroseg.synth.samples import load_sample

    raw = np.asarray(load_sample("neurons").raw)  # (3, 40, 128, 128)
    d = model.divisor
    x = normalize(raw)
    return np.ascontiguousarray(_crop_to(x, tuple(_round_up(t, d) for t in (32, 64, 64)))[None], dtype=np.float32)


def _run(net, x: np.ndarray):
    import torch

    with torch.no_grad(), _quiet(), torch.backends.mkldnn.flags(enabled=False):
        out = net(torch.from_numpy(x))
    return out


# ------------------------------------------------------------------------------ pictures, docs
def _to_u8(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(a, NORM_PERCENTILES)  # the cover picture's contrast, as the model sees it
    return (np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1) * 255).astype(np.uint8)


def _cover(path: Path, image2d: np.ndarray, out2d: np.ndarray) -> None:
    """A 2:1 PNG: the middle test-input slice and the output (nearest-upsampled) side by side."""
    from PIL import Image

    h, w = image2d.shape
    fy, fx = max(1, h // out2d.shape[0]), max(1, w // out2d.shape[1])
    o = np.kron(out2d, np.ones((fy, fx)))[:h, :w]
    left = np.stack([_to_u8(image2d)] * 3, -1)
    right = np.zeros_like(left)
    right[..., 1] = _to_u8(o)
    right[..., 0] = right[..., 2] = left[..., 0] // 2
    img = Image.fromarray(np.concatenate([left, right], axis=1))
    img = img.resize((512, 256), Image.NEAREST)
    img.save(path)


def _readme(kind: str, model, card: str | None) -> str:
    if card is not None and (_DOCS / card).is_file():
        return (_DOCS / card).read_text(encoding="utf-8")
    if kind == "nuclei":
        c = model.config
        return (f"# {model.name}\n\nA 3D StarDist nuclei model (PyTorch, napari-neuroseg).\n\n"
                f"- backbone {c.backbone}, {c.n_rays} rays, grid {tuple(c.grid)}, {c.n_channel_in} input channel(s)\n"
                f"- thresholds: prob {model.thresholds.prob:.4g}, nms {model.thresholds.nms:.4g}, "
                f"border {model.thresholds.border}\n- input normalisation: percentiles {model.percentiles}\n\n"
                "Outputs `prob` and `dist` at the grid's resolution; instances come from StarDist's "
                "non-maximum suppression (`config.stardist`). Use with `neuroseg nuclei --model PACKAGE.zip`.\n")
    return ("# napari-neuroseg neuron model\n\nA 3D U-Net predicting foreground and affinities of FISBe-like "
            "multicolour neuron volumes; instances come from the colour-aware agglomeration of napari-neuroseg "
            "(`config.neuroseg.postprocess`).\n")


def _env_yaml() -> str:
    import torch

    from napari_neuroseg import __version__

    tv = torch.__version__.split("+")[0]
    return ("name: napari-neuroseg\nchannels:\n  - conda-forge\n  - nodefaults\ndependencies:\n"
            "  - python>=3.11\n  - pip\n  - pip:\n"
            f"      - napari-neuroseg>={__version__}\n      - torch>={tv}\n")


def _space_axes(sizes, scale=None, ref: str | None = None, halo=None):
    axes = []
    for i, a in enumerate("zyx"):
        ax: dict[str, Any] = {"type": "space", "id": a}
        if ref is None:
            ax["size"] = sizes[i]
        else:
            ax["size"] = {"tensor_id": ref, "axis_id": a}
            if scale is not None:
                ax["scale"] = float(scale[i])
            if halo is not None and halo[i]:
                ax["halo"] = int(halo[i])
        axes.append(ax)
    return axes


# ------------------------------------------------------------------------------ export
def export_package(
    model_spec: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    authors: list[str] | None = None,
    license: str = "BSD-3-Clause",
    overwrite: bool = False,
) -> Path:
    """Write ``out`` (a ``.zip``) for the nuclei or neuron model ``model_spec``; returns ``out``."""
    _require_spec()
    import torch
    import yaml

    out = Path(out).expanduser()
    if out.suffix.lower() != ".zip":
        raise NeurosegError("the package must be a .zip file", path=out, fix="give an output path ending in .zip")
    if out.exists() and not overwrite:
        raise NeurosegError("the output exists", path=out, fix="choose another name or pass --overwrite")
    src = Path(str(model_spec)).expanduser()
    if src.exists() and src.resolve() == out.resolve():
        raise NeurosegError("the output would overwrite the model", path=out, fix="choose another output path")
    kind, model = resolve_export_model(model_spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    authors_l = [{"name": a} for a in (authors or ["napari-neuroseg developers"])]

    with tempfile.TemporaryDirectory(prefix="neuroseg-export-") as tmpd:
        tmp = Path(tmpd)
        net = model.net.to("cpu").eval()
        if kind == "nuclei":
            rdf, card = _nuclei_rdf(model, tmp, net)
        else:
            rdf, card = _neuron_rdf(model, tmp, net)
        # weights: state dict (plain tensors) and TorchScript (traced, plain convolutions)
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        torch.save(state, tmp / "weights.pt")
        x = torch.from_numpy(np.load(tmp / "test_input.npy"))
        if kind == "nuclei":
            x = _normalised(model, x.numpy())
        with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False), _quiet():
            traced = torch.jit.trace(net, torch.from_numpy(np.asarray(x)), check_trace=False)
        traced.save(str(tmp / "weights_torchscript.pt"))
        (tmp / "environment.yaml").write_text(_env_yaml())
        (tmp / "README.md").write_text(_readme(kind, model, card), encoding="utf-8")
        tv = torch.__version__.split("+")[0]
        rdf["weights"]["pytorch_state_dict"].update(
            source="weights.pt", sha256=_sha(tmp / "weights.pt"), pytorch_version=tv,
            dependencies={"source": "environment.yaml", "sha256": _sha(tmp / "environment.yaml")},
        )
        rdf["weights"]["torchscript"] = {
            "source": "weights_torchscript.pt", "sha256": _sha(tmp / "weights_torchscript.pt"),
            "pytorch_version": tv, "parent": "pytorch_state_dict",
            "comment": "torch.jit.trace of the network with PyTorch's plain convolutions",
        }
        from bioimageio.spec.model.v0_5 import ModelDescr

        rdf = {
            "format_version": ModelDescr.implemented_format_version,
            "type": "model",
            "name": name or rdf.pop("_name"),
            **{k: v for k, v in rdf.items() if k != "_name"},
            "authors": authors_l,
            "license": license,
            "documentation": {"source": "README.md", "sha256": _sha(tmp / "README.md")},
            "covers": [{"source": "cover.png", "sha256": _sha(tmp / "cover.png")}],
            "git_repo": None,
            "timestamp": _timestamp(),
        }
        rdf.pop("git_repo")
        for t in rdf["inputs"] + rdf["outputs"]:
            t["test_tensor"]["sha256"] = _sha(tmp / t["test_tensor"]["source"])
        (tmp / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True), encoding="utf-8")
        _validate(tmp / "rdf.yaml")
        with atomic_output(out) as part, zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(tmp.iterdir()):
                z.write(f, f.name)
    return out


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def _timestamp() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _normalised(model, x: np.ndarray) -> np.ndarray:
    """csbdeep normalisation of (1, C, Z, Y, X) with the model's percentiles."""
    from napari_neuroseg.models.stardist3d.model import normalize_image

    return normalize_image(x[0], model.percentiles)[None]


def _validate(rdf_path: Path) -> None:
    """Full validation (files and hashes, offline: every file is local) with bioimageio.spec."""
    import warnings

    from bioimageio.spec import InvalidDescr, load_description

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        descr = load_description(rdf_path, perform_io_checks=True)
    if isinstance(descr, InvalidDescr):
        errors = [e for d in descr.validation_summary.details for e in d.errors]
        msg = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors[:4])
        raise NeurosegError(f"the package did not pass bioimageio.spec validation ({msg})",
                            fix="report this as a bug in neuroseg export")


def _nuclei_rdf(model, tmp: Path, net) -> tuple[dict, str | None]:
    from napari_neuroseg.models.stardist3d.pretrained import BUNDLED_DIR

    c = model.config
    x_raw = _nuclei_test_input(model)
    x = _normalised(model, x_raw)
    prob, dist = (t.numpy() for t in _run(net, x))
    np.save(tmp / "test_input.npy", x_raw)
    np.save(tmp / "prob.npy", prob)
    np.save(tmp / "dist.npy", dist)
    mid = x.shape[2] // 2
    _cover(tmp / "cover.png", x[0, 0, mid], prob[0, 0, mid // c.grid[0]])
    div = model.divisor
    grid = tuple(c.grid)
    # no output halo: the receptive field (29 x 57 x 57 voxels a side for the shipped model) would
    # force test tensors of tens of MB; it is stated in config.neuroseg.receptive_field instead
    min_shape = [2 * d for d in div]
    lo, hi = model.percentiles
    shipped = model.path is not None and Path(model.path).resolve().parent == BUNDLED_DIR.resolve()
    cfg = model.config_dict()
    th = model.thresholds.to_dict()
    channel_names = [f"channel{i}" for i in range(c.n_channel_in)]
    inp = {
        "id": "raw",
        "description": "3D image (raw intensities); normalised by per-channel percentiles",
        "axes": [{"type": "batch"}, {"type": "channel", "channel_names": channel_names},
                 *[{"type": "space", "id": a, "size": {"min": m, "step": d}} for a, m, d in zip("zyx", min_shape, div)]],
        "test_tensor": {"source": "test_input.npy"},
        "preprocessing": [
            {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
            {"id": "scale_range", "kwargs": {"axes": ["z", "y", "x"], "min_percentile": float(lo),
                                             "max_percentile": float(hi), "eps": 1e-6}},
        ],
    }
    outs = [
        {"id": "prob", "description": "object probability (sigmoid) on the model's grid",
         "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["prob"]},
                  *_space_axes(None, scale=grid, ref="raw")],
         "test_tensor": {"source": "prob.npy"}, "data": {"range": [0.0, 1.0]}},
        {"id": "dist", "description": "distances to the object boundary along the rays (config.stardist)",
         "axes": [{"type": "batch"}, {"type": "channel", "channel_names": [f"ray{i}" for i in range(c.n_rays)]},
                  *_space_axes(None, scale=grid, ref="raw")],
         "test_tensor": {"source": "dist.npy"}},
    ]
    rdf = {
        "_name": "neuroseg nuclei StarDist-3D" if shipped else f"StarDist-3D {model.name}",
        "description": "3D nuclei instance segmentation: a StarDist-3D model (PyTorch port of the Keras "
                       "networks) from napari-neuroseg",
        "cite": list(STARDIST_CITES),
        "tags": ["stardist", "3d", "nuclei", "instance-segmentation", "pytorch", "napari", "fluorescence-light-microscopy"],
        "inputs": [inp],
        "outputs": outs,
        "weights": {"pytorch_state_dict": {
            "architecture": {"callable": "stardist3d_network", "import_from": _ARCH,
                             "kwargs": {"config": json.loads(json.dumps(cfg))}},
        }},
        "config": {
            "stardist": {"stardist_version": _stardist_version(), "config": json.loads(json.dumps(cfg)),
                         "thresholds": th},
            "neuroseg": {"model": "stardist3d", "thresholds": th, "percentiles": [float(lo), float(hi)],
                         "scale": None if model.scale is None else model.scale.to_dict(),
                         "receptive_field": list(model.receptive_field),
                         "outputs": "prob (B,1,Z/gz,Y/gy,X/gx) and dist (B,n_rays,...): the network's raw outputs; "
                                    "neuroseg clips dist below at 1e-3 before NMS"},
        },
    }
    return rdf, ("nuclei-model-card.md" if shipped else None)


def _stardist_version() -> str:
    try:
        import importlib.metadata as md

        return md.version("stardist")
    except Exception:  # noqa: BLE001
        return "unknown"


def _neuron_rdf(model, tmp: Path, net) -> tuple[dict, str | None]:
    from napari_neuroseg.models.neurons.model import DEFAULT_MODEL
    from napari_neuroseg.models.neurons.predict import model_scale, tile_overlap

    cfg = model.config
    x = _neuron_test_input(model)
    logits = _run(net, x).numpy()
    out = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    out = out.astype(np.float32)
    np.save(tmp / "test_input.npy", x)
    np.save(tmp / "test_output.npy", out)
    mid = x.shape[2] // 2
    _cover(tmp / "cover.png", x[0, :, mid].max(0), out[0, 0, mid])
    d = model.divisor
    min_size = 2 * d  # no output halo (56 voxels for the shipped model): see config.neuroseg.tile_overlap
    shipped = model.path is not None and Path(model.path).resolve() == DEFAULT_MODEL.resolve()
    sc = model_scale(model)
    names = ["foreground"] + [f"affinity_{'_'.join(str(int(v)) for v in o)}".replace("-", "m") for o in cfg.offsets]
    names = (names + [f"output{i}" for i in range(len(names), cfg.out_channels)])[: cfg.out_channels]
    inp = {
        "id": "raw",
        "description": "colour volume normalised by napari_neuroseg.models.neurons.normalize "
                       "(see config.neuroseg.preprocessing)",
        "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["red", "green", "blue"][: cfg.in_channels]},
                 *[{"type": "space", "id": a, "size": {"min": min_size, "step": d}} for a in "zyx"]],
        "test_tensor": {"source": "test_input.npy"},
        "preprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}],
    }
    outp = {
        "id": "outputs",
        "description": "foreground and affinity probabilities (sigmoid of the network's logits)",
        "axes": [{"type": "batch"}, {"type": "channel", "channel_names": names},
                 *_space_axes(None, ref="raw")],
        "test_tensor": {"source": "test_output.npy"},
        "data": {"range": [0.0, 1.0]},
        "postprocessing": [{"id": "sigmoid"}],
    }
    net_kw = {"in_channels": cfg.in_channels, "out_channels": cfg.out_channels, "base": cfg.base,
              "levels": cfg.levels}
    rdf = {
        "_name": "neuroseg FISBe neurons U-Net" if shipped else "neuroseg neurons U-Net",
        "description": "Neuron instance segmentation of FISBe-like multicolour light microscopy: a 3D U-Net "
                       "(foreground + affinities) from napari-neuroseg",
        "cite": [UNET_CITE],
        "tags": ["3d", "neurons", "instance-segmentation", "affinities", "unet", "pytorch", "napari",
                 "fluorescence-light-microscopy"],
        "inputs": [inp],
        "outputs": [outp],
        "weights": {"pytorch_state_dict": {
            "architecture": {"callable": "neuron_unet", "import_from": _ARCH, "kwargs": net_kw},
        }},
        "config": {"neuroseg": {
            "model": "neurons",
            "net": json.loads(json.dumps(cfg.__dict__)),
            "postprocess": json.loads(json.dumps(model.params.to_dict())),
            "preprocessing": "napari_neuroseg.models.neurons.normalize (median background, common 99.95th "
                             "percentile scale, clip [-0.5, 4])",
            "scale": None if sc is None else sc.to_dict(),
            "tile_overlap": tile_overlap(cfg.levels),
        }},
    }
    return rdf, ("neurons.md" if shipped else None)
