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


#: how torch's weights-only unpickler says a file needs a Python global (code) to load: torch >= 2.4
#: "Unsupported global: GLOBAL posix.system", torch 2.3 "Unsupported class posix.system"
_NEEDS_GLOBALS = ("Unsupported global", "allowed global", "Unsupported class")


def load_torch_file(path: str | Path, *, fix: str, what: str = "model file") -> Any:
    """Load ``path`` on the CPU with ``weights_only=True``; NeurosegError (naming the file, the
    problem and ``fix``) when it is unreadable or needs more than weights and plain values."""
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not any(m in str(err) for m in _NEEDS_GLOBALS):
            raise NeurosegError(f"cannot read the {what} (not a PyTorch file, or damaged: {str(err)[:200]})",
                                path=path, fix=fix) from err
        why = [ln.strip()[ln.strip().find("Unsupported"):] for ln in str(err).splitlines()
               if "Unsupported" in ln]
        first = why[0] if why else "not weights-only"
        raise NeurosegError(
            f"the {what} holds Python objects beyond weights and plain values ({first[:160]}); it was refused "
            "because loading it could run code", path=path,
            fix=f"{fix}; never load model files from an untrusted source with tools that execute pickles",
        ) from err
    except Exception as err:  # noqa: BLE001 - any other unreadable file (truncated, not a zip, ...)
        raise NeurosegError(f"cannot read the {what} ({type(err).__name__}: {str(err)[:200]})", path=path,
                            fix=fix) from err
