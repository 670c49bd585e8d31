"""Load BioImage.IO model packages: 3D StarDist models of the Model Zoo (Keras weights, converted
as :mod:`~napari_neuroseg.models.stardist3d.keras_import` does; no TensorFlow) and the packages
this project exports (PyTorch state dict read with ``weights_only=True``).

What is read from a package (format 0.4 or 0.5):

* ``config.stardist.config`` — the StarDist configuration (``config.json``), must be 3D;
* ``config.stardist.thresholds`` — ``prob``/``nms`` (and ``border`` when this project wrote it);
* the weights, in this order: ``weights.pytorch_state_dict`` of a package made by this project
  (``config.neuroseg``), ``weights.keras_hdf5``, the Keras file named by
  ``config.stardist.weights`` (how ``stardist.bioimageio_utils.export_bioimageio`` attaches it
  next to the TensorFlow SavedModel). TorchScript, ONNX and TensorFlow SavedModel weights are not
  loaded (TorchScript is code; the others need their runtimes);
* the input's ``scale_range`` pre-processing — its ``min_percentile``/``max_percentile`` become
  the model's normalisation percentiles.

Nothing in a package is executed: YAML is read with ``safe_load``, weight files are HDF5 arrays or
a weights-only torch file (:mod:`~napari_neuroseg.models.safe_load`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models.stardist3d.config import NORM_PERCENTILES

from .package import ModelPackage, source_of

__all__ = ["load_stardist3d", "load_neuron_model", "package_kind", "package_percentiles", "validate_rdf"]

_SUPPORTED_PRE = {"scale_range", "ensure_dtype"}


def _config(rdf: dict) -> dict:
    c = rdf.get("config")
    return c if isinstance(c, dict) else {}


def package_kind(pkg: ModelPackage) -> str:
    """``"stardist3d"``, ``"neurons"``, or a NeurosegError saying what the package is instead."""
    rdf = pkg.rdf
    if rdf.get("type", "model") != "model":
        raise NeurosegError(f"the package is a BioImage.IO {rdf.get('type')!r}, not a model", path=pkg.path,
                            fix="give a model package")
    cfg = _config(rdf)
    own = cfg.get("neuroseg")
    if isinstance(own, dict) and own.get("model") == "neurons":
        return "neurons"
    sd = cfg.get("stardist")
    if not isinstance(sd, dict):
        name = rdf.get("name") or rdf.get("id") or "?"
        raise NeurosegError(
            f"the package {name!r} is not a StarDist model (no config.stardist in its rdf.yaml)", path=pkg.path,
            fix="neuroseg nuclei needs a 3D StarDist model package; other Zoo models are not supported",
        )
    sd_cfg = sd.get("config")
    if not isinstance(sd_cfg, dict):
        raise NeurosegError(
            "the StarDist package has no configuration (config.stardist.config)", path=pkg.path,
            fix="use a package exported with stardist's export_bioimageio (it stores the config) or by neuroseg",
        )
    n_dim = sd_cfg.get("n_dim", 3 if "z" in _input_axes(rdf) else 2)
    if int(n_dim) != 3 or "z" not in _input_axes(rdf, default="z"):
        raise NeurosegError(
            f"the package holds a {n_dim}D StarDist model; neuroseg segments 3D volumes with StarDist-3D",
            path=pkg.path, fix="use a 3D StarDist package (input axes with z), e.g. one exported by neuroseg",
        )
    return "stardist3d"


def _input_axes(rdf: dict, default: str = "") -> str:
    inputs = rdf.get("inputs") or []
    if not inputs or not isinstance(inputs[0], dict):
        return default
    axes = inputs[0].get("axes")
    if isinstance(axes, str):  # format 0.4: "bzyxc"
        return axes.lower()
    out = ""
    for a in axes or []:
        if isinstance(a, dict):
            t, i = a.get("type"), a.get("id")
            out += {"batch": "b", "channel": "c"}.get(t, str(i or {"space": "?", "time": "t"}.get(t, "?"))[:1])
    return out or default


def package_percentiles(pkg: ModelPackage, default=NORM_PERCENTILES) -> tuple[float, float]:
    """The ``scale_range`` percentiles of the first input (``default`` when it has none)."""
    inputs = pkg.rdf.get("inputs") or []
    pre = (inputs[0].get("preprocessing") if inputs and isinstance(inputs[0], dict) else None) or []
    found = None
    for step in pre:
        if not isinstance(step, dict):
            continue
        op = step.get("id", step.get("name"))
        if op not in _SUPPORTED_PRE:
            raise NeurosegError(
                f"the package's input pre-processing {op!r} is not supported (StarDist models use scale_range)",
                path=pkg.path, fix="use a StarDist package whose input is normalised by percentiles (scale_range)",
            )
        if op == "scale_range":
            kw = step.get("kwargs") or {}
            try:
                lo, hi = float(kw.get("min_percentile", 0.0)), float(kw.get("max_percentile", 100.0))
            except (TypeError, ValueError) as err:
                raise NeurosegError(f"bad scale_range percentiles in the package ({kw})", path=pkg.path,
                                    fix="fix min_percentile/max_percentile in rdf.yaml") from err
            if not 0 <= lo < hi <= 100:
                raise NeurosegError(f"bad scale_range percentiles {lo}, {hi} in the package", path=pkg.path,
                                    fix="use 0 <= min_percentile < max_percentile <= 100")
            found = (lo, hi)
    return found or tuple(default)


def validate_rdf(pkg: ModelPackage) -> None:
    """Check the description with ``bioimageio.spec`` when it is installed (format only, offline:
    no file or network checks). A description it rejects is a NeurosegError listing the first
    problems; without ``bioimageio.spec`` nothing is checked here."""
    try:
        from bioimageio.spec import InvalidDescr, ValidationContext, build_description
    except ImportError:
        return
    import warnings

    root = pkg.path.parent if pkg.path.is_file() and pkg.path.suffix.lower() != ".zip" else pkg.path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        descr = build_description(
            pkg.rdf, context=ValidationContext(root=root if root.is_dir() else root.parent, perform_io_checks=False)
        )
    if isinstance(descr, InvalidDescr):
        errors = descr.validation_summary.details[0].errors if descr.validation_summary.details else []
        msg = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors[:3]) or "invalid description"
        raise NeurosegError(f"the package's rdf.yaml is not a valid BioImage.IO description ({msg})", path=pkg.path,
                            fix="repair the package or download it again")


def _weights_source(pkg: ModelPackage) -> tuple[str, str]:
    """``(kind, file name)`` of the weights to load: ``torch`` or ``keras``."""
    rdf = pkg.rdf
    weights = rdf.get("weights") or {}
    own = _config(rdf).get("neuroseg")
    if isinstance(own, dict) and isinstance(weights.get("pytorch_state_dict"), dict):
        return "torch", source_of(weights["pytorch_state_dict"]) or ""
    if isinstance(weights.get("keras_hdf5"), dict):
        return "keras", source_of(weights["keras_hdf5"]) or ""
    sd = _config(rdf).get("stardist") or {}
    if isinstance(sd, dict) and sd.get("weights"):
        return "keras", str(sd["weights"])
    raise NeurosegError(
        f"the package has no weights neuroseg can read (it has {', '.join(weights) or 'none'}); "
        "neuroseg reads Keras .h5 weights (keras_hdf5 or the stardist attachment) or its own PyTorch state dict",
        path=pkg.path, fix="use a StarDist package that includes its Keras weights (stardist_weights.h5)",
    )


def load_stardist3d(path: str | Path, *, device: str | None = None, validate: bool = True):
    """A :class:`~napari_neuroseg.models.stardist3d.StarDist3D` from a BioImage.IO package (folder,
    rdf.yaml or .zip). ``model.percentiles`` is the package's input normalisation."""
    from napari_neuroseg.models.safe_load import load_torch_file
    from napari_neuroseg.models.stardist3d.config import StarDistConfig, Thresholds
    from napari_neuroseg.models.stardist3d.keras_import import load_keras_weights
    from napari_neuroseg.models.stardist3d.model import StarDist3D

    with ModelPackage(path) as pkg:
        kind = package_kind(pkg)
        if kind == "neurons":
            raise NeurosegError("the package holds a neuron (FISBe) model, not a StarDist nuclei model",
                                path=pkg.path, fix="use it with 'neuroseg neurons', or give a StarDist package")
        if validate:
            validate_rdf(pkg)
        sd = _config(pkg.rdf)["stardist"]
        config = StarDistConfig.from_dict(dict(sd["config"]), path=pkg.path)
        thresholds = Thresholds.from_dict(sd.get("thresholds"), path=pkg.path)
        percentiles = package_percentiles(pkg)
        name = str(pkg.rdf.get("name") or pkg.path.stem)
        model = StarDist3D(config, thresholds, name=name, path=pkg.path, device="cpu")
        wkind, wfile = _weights_source(pkg)
        local = pkg.file(wfile)
        if wkind == "torch":
            state = load_torch_file(local, what="weights file", fix="download the package again")
            model.load_weights(state, pkg.path)
        else:
            try:
                load_keras_weights(model.net, local)
            except NeurosegError as err:  # name the package, not the temporary copy
                raise NeurosegError(f"{wfile}: {err.problem}", path=pkg.path, fix=err.fix) from None
        own = _config(pkg.rdf).get("neuroseg") or {}
        if isinstance(own, dict) and own.get("scale") is not None:
            from napari_neuroseg.runtime.scale import ModelScale

            model.scale = ModelScale.from_dict(own["scale"], path=pkg.path)
    model.percentiles = percentiles
    return model.to(device)


def load_neuron_model(path: str | Path, *, device: Any = None):
    """A :class:`~napari_neuroseg.models.neurons.NeuronModel` from a package exported by this
    project (``config.neuroseg.model == "neurons"``)."""
    from napari_neuroseg.models.neurons.model import NetConfig, NeuronModel, stored_params
    from napari_neuroseg.models.safe_load import load_torch_file
    from napari_neuroseg.runtime.device import select_device

    with ModelPackage(path) as pkg:
        if package_kind(pkg) != "neurons":
            raise NeurosegError("the package is not a neuroseg neuron model", path=pkg.path,
                                fix="use a package exported by 'neuroseg export' from a neuron model")
        own = _config(pkg.rdf)["neuroseg"]
        wfile = source_of((pkg.rdf.get("weights") or {}).get("pytorch_state_dict"))
        if not wfile:
            raise NeurosegError("the package has no pytorch_state_dict weights", path=pkg.path,
                                fix="export the model again with 'neuroseg export'")
        state = load_torch_file(pkg.file(wfile), what="weights file", fix="download the package again")
        cfg = NetConfig(**(own.get("net") or {}))
        net = cfg.build()
        try:
            net.load_state_dict(state)
        except (RuntimeError, TypeError) as err:
            raise NeurosegError(f"the weights do not fit the stored architecture ({str(err)[:200]})",
                                path=pkg.path, fix="export the model again") from err
        params = stored_params({"postprocess": own.get("postprocess") or {}})
        meta = {"scale": own.get("scale")}
    dev = device if hasattr(device, "type") else select_device(device)
    net.eval().to(dev)
    return NeuronModel(net=net, config=cfg, params=params, device=dev, path=str(path), meta=meta)
