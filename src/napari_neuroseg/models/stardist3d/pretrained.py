"""Bundled models: folders (or ``.pt`` files) under ``models/stardist3d/pretrained/``.

A bundled model is referred to by its name (the folder name or file stem), a fine-tuned model by
its name in the user model folder (:mod:`napari_neuroseg.models.registry`); anything else is a
path to a model folder or ``.pt`` file.
"""

from __future__ import annotations

from pathlib import Path

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models.registry import SHIPPED_NUCLEI_DIR

__all__ = ["BUNDLED_DIR", "DEFAULT_MODEL", "bundled_models", "resolve_model_path"]

#: Where bundled models live inside the package (one home: :mod:`napari_neuroseg.models.registry`).
BUNDLED_DIR = SHIPPED_NUCLEI_DIR
#: The name of the default bundled model (shipped by the training work).
DEFAULT_MODEL = "neuroseg_nuclei"


def bundled_models() -> list[str]:
    """Names of the bundled models (empty if none is installed)."""
    if not BUNDLED_DIR.is_dir():
        return []
    names = [p.name for p in BUNDLED_DIR.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    names += [p.stem for p in BUNDLED_DIR.glob("*.pt")]
    return sorted(names)


def resolve_model_path(name_or_path: str | Path | None) -> Path:
    """The folder or file of a bundled model name (``None`` = the default) or a given path."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    s = str(name_or_path)
    if s in bundled_models():
        folder = BUNDLED_DIR / s
        return folder if folder.is_dir() else BUNDLED_DIR / f"{s}.pt"
    path = Path(s).expanduser()
    if path.is_dir() and not (path / "config.json").is_file() and (path / "model.pt").is_file():
        raise NeurosegError("this is the output folder of 'train neurons' (a neuron model), not a StarDist-3D "
                            "nuclei model", path=path,
                            fix="use it with 'neuroseg neurons --model', or give a nuclei model folder")
    if path.exists():
        return path
    from napari_neuroseg.models import registry

    if s in registry.SHIPPED and registry.SHIPPED[s] != "nuclei":
        raise NeurosegError(f"{s!r} is a neuron model, not a StarDist-3D nuclei model",
                            fix="use it with 'neuroseg neurons' / 'train neurons', or give neuroseg_nuclei")
    entry = registry.lookup(s)
    if entry is not None:
        if entry["kind"] != "nuclei":
            raise NeurosegError(f"registered model {s!r} is a {entry['kind']} model, not a nuclei model",
                                path=entry["path"], fix="give a nuclei model (see 'neuroseg models list')")
        return Path(entry["path"])
    available = ", ".join(bundled_models()) or "none installed"
    raise NeurosegError(
        f"model {s!r} is neither a bundled model ({available}), a registered model nor an existing path",
        fix="give a model folder, a .pt file or a model name (see 'neuroseg models list')",
    )
