"""Saving the edited labels.

- A zarr-backed layer (edited chunk by chunk) writes its edited chunks into its own store.
- A layer read from a FISBe sample (``metadata["fisbe_instances"]``) saved to a FISBe ``.zarr``
  gets its instance stack rebuilt from the edits (:func:`napari_neuroseg.proofread.fisbe.save_fisbe_edits`;
  the sample's raw volume is kept).
- Anything else, in-memory layers included, goes through the plugin's writers
  (:func:`napari_neuroseg._napari._save.write_layer`: TIFF, OME-Zarr, FISBe by the extension).

The widget's **Save…** asks for the file (:func:`napari_neuroseg._napari._save.save_with_dialog`:
the plugin's formats, an open layer's source file is overwritten only after the user agreed).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_neuroseg.errors import NeurosegError

if TYPE_CHECKING:  # pragma: no cover
    from .controller import ProofreadController

__all__ = ["default_save_path", "labels_filters", "save_layer", "source_path"]


def source_path(layer: Any) -> str | None:
    """The file the layer was opened from (napari's ``layer.source.path``), if any."""
    p = getattr(getattr(layer, "source", None), "path", None)
    return str(p) if p else None


def _is_fisbe(layer: Any) -> bool:
    from napari_neuroseg._napari._layers import FISBE_INSTANCES

    return (layer.metadata or {}).get(FISBE_INSTANCES) is not None


def labels_filters(layer: Any) -> list[str]:
    """The formats offered for ``layer``: TIFF and OME-Zarr; FISBe first for a FISBe layer."""
    from napari_neuroseg._napari._save import FISBE_FILTER, LABELS_FILTERS

    if _is_fisbe(layer):
        return [FISBE_FILTER] + [f for f in LABELS_FILTERS if f != FISBE_FILTER]
    return [f for f in LABELS_FILTERS if f != FISBE_FILTER]


def default_save_path(layer: Any) -> str:
    """Where the dialog starts: beside the layer's source file (else the working folder), named
    after the layer with ``_edited`` and the first offered format's extension."""
    src = source_path(layer)
    folder = Path(src).parent if src else Path.cwd()
    stem = re.sub(r"[^\w.-]+", "_", layer.name).strip("_") or "labels"
    ext = ".zarr" if _is_fisbe(layer) else ".tif"
    return str(folder / f"{stem}_edited{ext}")


def save_layer(ctrl: ProofreadController, path: str | None = None) -> str:
    """Save the controller's layer; returns what was done. Without ``path``: in place (a zarr
    store's edited chunks, a FISBe layer's source file); refused for a layer living in memory."""
    from napari_neuroseg._napari._layers import FISBE_DIM_NEURONS, FISBE_INSTANCES

    layer = ctrl.layer
    data = layer.data
    if ctrl.chunked and path is None:
        n = data.save()
        return f"saved {n} edited chunk(s)"
    fisbe_target = path or (source_path(layer) if _is_fisbe(layer) else None)
    if _is_fisbe(layer) and fisbe_target and fisbe_target.lower().rstrip("/").endswith(".zarr") \
            and not fisbe_target.lower().rstrip("/").endswith(".ome.zarr"):
        from napari_neuroseg.proofread.fisbe import save_fisbe_edits

        save_fisbe_edits(fisbe_target, data, layer.metadata[FISBE_INSTANCES],
                         dim_neurons=layer.metadata.get(FISBE_DIM_NEURONS))
        return f"saved FISBe layout to {fisbe_target}"
    if path is None:
        raise NeurosegError(
            f"layer {layer.name!r} lives in memory only: there is no file to save into",
            fix="press 'Save…' and choose a file (TIFF, OME-Zarr or FISBe)",
        )
    from napari_neuroseg._napari._save import write_layer

    write_layer(layer, path)  # a chunked layer too: a copy, its store unchanged
    return f"saved {layer.name!r} to {path}"
