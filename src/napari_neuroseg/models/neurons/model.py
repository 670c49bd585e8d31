"""The neuron model file: network weights + architecture + post-processing defaults.

A model file is a ``torch.save`` dict with ``model_type == MODEL_TYPE``; anything else (a StarDist
checkpoint, a random ``.pt``) is refused with a :class:`NeurosegError`. Training checkpoints
(``last.pt``/``best.pt``) are model files with extra optimiser state, so any of them can be used
for prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io.atomic import atomic_write_file
from napari_neuroseg.models.registry import SHIPPED_NEURONS_FILE

from .postprocess import PostprocessParams
from .targets import N_OUTPUTS, OFFSETS

MODEL_TYPE = "napari-neuroseg/neurons-unet-affinities"
FORMAT_VERSION = 1
#: The shipped default model (trained on synthetic FISBe-like data, see docs/neurons.md); its path
#: has one home, :mod:`napari_neuroseg.models.registry`.
DEFAULT_MODEL = SHIPPED_NEURONS_FILE


@dataclass
class NetConfig:
    """Architecture of the network."""

    base: int = 12
    levels: int = 4
    in_channels: int = 3
    out_channels: int = N_OUTPUTS
    offsets: list = field(default_factory=lambda: [list(o) for o in OFFSETS])

    def build(self):
        from .network import UNet3D

        return UNet3D(self.in_channels, self.out_channels, self.base, self.levels)


@dataclass
class NeuronModel:
    """A loaded model: the torch network (eval mode, on ``device``) and its settings."""

    net: Any
    config: NetConfig
    params: PostprocessParams
    device: Any
    path: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def divisor(self) -> int:
        return 2 ** (self.config.levels - 1)


def save_model(path: str | Path, net, config: NetConfig, params: PostprocessParams | None = None,
               **extra: Any) -> None:
    """Atomically write a model file (``extra`` keys, e.g. optimiser state, are stored too)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    payload = {
        "model_type": MODEL_TYPE,
        "format_version": FORMAT_VERSION,
        "config": _plain(config.__dict__.copy()),
        "postprocess": _plain((params or PostprocessParams()).to_dict()),
        "state_dict": state,
        **{k: _plain(v) for k, v in extra.items()},
    }
    atomic_write_file(path, lambda fh: torch.save(payload, fh))


def _plain(value: Any) -> Any:
    """``value`` with only types that ``torch.load(weights_only=True)`` accepts: tensors, dicts, lists,
    str, int, float, bool, None. Paths become strings, numpy values lists/numbers."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor) or value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {(_plain(k) if not isinstance(k, (str, int)) else k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def read_checkpoint(path: str | Path) -> dict:
    """Load and check a model file; NeurosegError if it is missing or of another model type.

    Read with ``weights_only=True``: a file whose pickle needs anything beyond tensors and plain
    containers (a class, a function, a ``__reduce__`` payload) is refused and never executed."""
    from napari_neuroseg.models.safe_load import load_torch_file

    path = Path(path)
    if not path.is_file():
        raise NeurosegError("model file not found", path=path,
                            fix="pass a neuron model .pt written by 'neuroseg train neurons' or omit --model")
    ckpt = load_torch_file(path, fix="pass a neuron model .pt written by 'neuroseg train neurons'")
    if not isinstance(ckpt, dict) or ckpt.get("model_type") != MODEL_TYPE:
        found = ckpt.get("model_type", "no model_type") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise NeurosegError(f"not a neuron model (found {found!r}, expected {MODEL_TYPE!r})", path=path,
                            fix="use a model trained with 'neuroseg train neurons' (a StarDist/nuclei model "
                                "belongs to 'neuroseg nuclei')")
    if int(ckpt.get("format_version", 0)) > FORMAT_VERSION:
        raise NeurosegError(f"model format {ckpt.get('format_version')} is newer than this version supports",
                            path=path, fix="upgrade napari-neuroseg")
    return ckpt


def stored_params(ckpt: dict) -> PostprocessParams:
    """The post-processing thresholds stored in a model file (:func:`read_checkpoint`'s dict);
    keys this version does not know are ignored, missing ones take the defaults."""
    known = PostprocessParams.__dataclass_fields__
    return PostprocessParams(**{k: v for k, v in (ckpt.get("postprocess") or {}).items() if k in known})


def load_model(path: str | Path | None = None, device=None) -> NeuronModel:
    """Load a neuron model (default: the shipped one; a ``.pt`` file, or a BioImage.IO package
    exported by this project: folder, rdf.yaml or .zip, its PyTorch state dict only) onto
    ``device`` (name, torch.device or None = auto) in eval mode."""
    from napari_neuroseg.models.bioimageio.package import is_package
    from napari_neuroseg.runtime.device import select_device

    path = DEFAULT_MODEL if path is None else Path(path)
    if is_package(path):
        from napari_neuroseg.models.bioimageio.load import load_neuron_model

        return load_neuron_model(path, device=device)
    if path == DEFAULT_MODEL and not path.is_file():
        raise NeurosegError("the default neuron model is not installed", path=path,
                            fix="train one with 'neuroseg train neurons --synthetic' and pass --model")
    ckpt = read_checkpoint(path)
    dev = device if hasattr(device, "type") else select_device(device)
    cfg = NetConfig(**ckpt["config"])
    net = cfg.build()
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise NeurosegError(f"the weights do not fit the stored architecture ({err})", path=path,
                            fix="the file is damaged; retrain or re-download it") from err
    net.eval().to(dev)
    params = stored_params(ckpt)
    meta = {k: ckpt[k] for k in ("train_info", "scores", "iteration") if k in ckpt}
    return NeuronModel(net=net, config=cfg, params=params, device=dev, path=str(path), meta=meta)


def cached_load_model(path: str | Path | None = None, device=None) -> NeuronModel:
    """:func:`load_model` through the runtime's model cache (keyed by path and mtime)."""
    from napari_neuroseg.runtime.cache import cached_model
    from napari_neuroseg.runtime.device import select_device

    p = Path(DEFAULT_MODEL if path is None else path)
    dev = device if hasattr(device, "type") else select_device(device)
    key = ("neurons", str(p.resolve()), p.stat().st_mtime if p.exists() else 0)
    return cached_model(key, dev, lambda d: load_model(p, d))
