"""Device choice: CUDA, then MPS, then CPU, overridable by name."""

from __future__ import annotations

import os

from napari_neuroseg.errors import NeurosegError

#: Environment variable that overrides the automatic choice (e.g. ``cpu`` or ``cuda:1``).
DEVICE_ENV = "NEUROSEG_DEVICE"


def available_devices() -> list[str]:
    """Names of the torch devices usable here, best first (always ends with ``"cpu"``)."""
    import torch

    names: list[str] = []
    if torch.cuda.is_available():
        names.extend(f"cuda:{i}" for i in range(torch.cuda.device_count()))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    names.append("cpu")
    return names


def select_device(device: str | None = None) -> "torch.device":  # noqa: F821
    """The device to run on: ``device`` if given (``"auto"`` = choose), else ``$NEUROSEG_DEVICE``,
    else the first of CUDA, MPS, CPU that is available."""
    import torch

    name = device if device not in (None, "", "auto") else os.environ.get(DEVICE_ENV, "auto")
    if name in ("", "auto"):
        return torch.device(available_devices()[0])
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise NeurosegError(
            f"unknown device {name!r}", fix="use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NeurosegError(f"device {name!r} requested but CUDA is not available", fix="use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise NeurosegError(
            f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist",
            fix="use a smaller index or 'auto'",
        )
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise NeurosegError(f"device {name!r} requested but MPS is not available", fix="use --device cpu or auto")
    return dev
