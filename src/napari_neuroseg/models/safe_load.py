"""The one way model and checkpoint files are read: ``torch.load(weights_only=True)``.

A ``.pt`` file is a pickle; an ordinary pickle can run any code when it is loaded. Every model
path of the package (neuron models, StarDist folders and single files, training checkpoints,
widget previews) reads through :func:`load_torch_file`, so a file holding anything beyond tensors
and plain containers (a class, a function, a ``__reduce__`` payload) is refused, never executed."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from napari_neuroseg.errors import NeurosegError


def load_torch_file(path: str | Path, *, fix: str, what: str = "model file") -> Any:
    """Load ``path`` on the CPU with ``weights_only=True``; NeurosegError (naming the file, the
    problem and ``fix``) when it is unreadable or needs more than weights and plain values."""
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err) and "allowed global" not in str(err):
            raise NeurosegError(f"cannot read the {what} (not a PyTorch file, or damaged: {str(err)[:200]})",
                                path=path, fix=fix) from err
        why = [ln.strip() for ln in str(err).splitlines() if "Unsupported global" in ln]
        first = why[0] if why else "not weights-only"
        raise NeurosegError(
            f"the {what} holds Python objects beyond weights and plain values ({first[:160]}); it was refused "
            "because loading it could run code", path=path,
            fix=f"{fix}; never load model files from an untrusted source with tools that execute pickles",
        ) from err
    except Exception as err:  # noqa: BLE001 - any other unreadable file (truncated, not a zip, ...)
        raise NeurosegError(f"cannot read the {what} ({type(err).__name__}: {str(err)[:200]})", path=path,
                            fix=fix) from err
