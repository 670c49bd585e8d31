"""PNG pictures (screenshots for the docs), written atomically with imageio (a napari dependency)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_neuroseg.io.atomic import atomic_write_file

__all__ = ["write_png"]


def write_png(path: str | Path, image: Any, *, parents: bool = False) -> Path:
    """Write an (H, W), (H, W, 3) or (H, W, 4) uint8 picture to ``path`` as PNG, atomically."""
    from imageio.v3 import imwrite

    return atomic_write_file(path, lambda fh: imwrite(fh, image, extension=".png"), fsync=False, parents=parents)
