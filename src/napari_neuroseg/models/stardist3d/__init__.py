"""StarDist-3D nuclei segmentation in PyTorch, exact port of the Keras models of ``stardist``.

Main entry points: :class:`StarDist3D` (``from_folder``, ``load``, ``predict``,
``predict_instances``, ``predict_instances_iter``), :func:`load_model` (cached per device) and
:class:`StarDistConfig`. Importing this package does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari_neuroseg.models.stardist3d.config import StarDistConfig, Thresholds, load_thresholds
from napari_neuroseg.models.stardist3d.pretrained import DEFAULT_MODEL, bundled_models, resolve_model_path

if TYPE_CHECKING:  # pragma: no cover
    from napari_neuroseg.models.stardist3d.model import StarDist3D

__all__ = [
    "DEFAULT_MODEL",
    "StarDist3D",
    "StarDistConfig",
    "Thresholds",
    "bundled_models",
    "load_model",
    "load_thresholds",
    "normalize_image",
    "resolve_model_path",
]


def __getattr__(name: str):
    if name in ("StarDist3D", "normalize_image"):
        from napari_neuroseg.models.stardist3d import model

        return getattr(model, name)
    raise AttributeError(name)


def load_model(name_or_path=None, device: str | None = None) -> "StarDist3D":
    """A model by bundled name or path, on ``device``, cached per (file, mtime, device) so a
    widget or batch job loads it once."""
    from napari_neuroseg.models.stardist3d.model import StarDist3D
    from napari_neuroseg.runtime.cache import cached_model
    from napari_neuroseg.runtime.device import select_device

    path = resolve_model_path(name_or_path).resolve()
    mtime = max((p.stat().st_mtime_ns for p in ([path] + (list(path.iterdir()) if path.is_dir() else []))), default=0)
    dev = select_device(device)
    return cached_model(("stardist3d", str(path), mtime), dev, lambda d: StarDist3D.load(path, device=str(d)))
