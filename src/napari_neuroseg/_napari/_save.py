"""The Save… buttons of the run docks: write a result layer (or a metrics file) through the
plugin's own writers (:mod:`napari_neuroseg._napari.writers`, atomic: nothing half-written).

The file dialog offers the plugin's formats (TIFF, OME-Zarr, FISBe Zarr for a layer carrying a
FISBe stack); a name typed without an extension gets the chosen format's. A path that is the
source file of a layer open in the viewer (an input) is only overwritten after the user agreed.
:func:`ask_save_path` and :func:`confirm` are the only dialogs (tests replace them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from napari_neuroseg.errors import NeurosegError

__all__ = ["LABELS_FILTERS", "ask_save_path", "check_writer", "confirm", "input_sources", "save_with_dialog", "write_layer",
           "write_layer_data"]

TIFF_FILTER = "TIFF with voxel size (*.tif *.tiff)"
OME_ZARR_FILTER = "OME-Zarr (*.ome.zarr)"
FISBE_FILTER = "FISBe Zarr, instances (*.zarr)"
#: formats offered for a Labels result, in the dialog's order
LABELS_FILTERS = (TIFF_FILTER, OME_ZARR_FILTER, FISBE_FILTER)


def ask_save_path(parent: Any, title: str, start: str, filters: Iterable[str]) -> tuple[str, str]:
    """``(path, chosen filter)`` from a save dialog; ``("", "")`` when cancelled."""
    from qtpy.QtWidgets import QFileDialog

    path, chosen = QFileDialog.getSaveFileName(parent, title, start, ";;".join(filters))
    return path, chosen


def confirm(parent: Any, title: str, text: str) -> bool:
    """Ask yes/no (default no)."""
    from qtpy.QtWidgets import QMessageBox

    yes, no = QMessageBox.StandardButton.Yes, QMessageBox.StandardButton.No
    return QMessageBox.question(parent, title, text, yes | no, no) == yes


def _patterns(filter_text: str) -> list[str]:
    m = re.search(r"\(([^)]*)\)", filter_text or "")
    return [p.lstrip("*") for p in m.group(1).split()] if m else []


def with_extension(path: str, chosen_filter: str, filters: Iterable[str]) -> str:
    """``path`` with the chosen format's extension when it ends in none of the offered ones."""
    low = path.lower()
    offered = [e for f in filters for e in _patterns(f)]
    if any(low.endswith(e) for e in offered):
        return path
    exts = _patterns(chosen_filter) or (_patterns(next(iter(filters), "")) or [""])
    return path + exts[0]


def input_sources(layers: Iterable[Any]) -> dict[Path, str]:
    """Resolved source file of each layer (``layer.source.path``, a FISBe layer's file) -> the
    layer's name."""
    out: dict[Path, str] = {}
    for ly in layers:
        for p in (getattr(getattr(ly, "source", None), "path", None),
                  (getattr(ly, "metadata", None) or {}).get("fisbe_source")):
            if p:
                try:
                    out[Path(str(p)).expanduser().resolve()] = ly.name
                except (OSError, RuntimeError):
                    pass
    return out


def write_layer(layer: Any, path: str) -> list[str]:
    """Write a Labels or Image layer with the plugin's writers, chosen by the extension."""
    return write_layer_data(path, *layer.as_layer_data_tuple())


def write_layer_data(path: str, data: Any, meta: dict, kind: str) -> list[str]:
    """Write a layer's data tuple (``layer.as_layer_data_tuple()``, e.g. taken in the main thread
    and written in a worker) with the plugin's writers, chosen by the extension."""
    from napari_neuroseg._napari import writers

    check_writer(path)
    labels = kind == "labels"
    if path.lower().endswith((".tif", ".tiff")):
        fn = writers.write_labels_tiff if labels else writers.write_image_tiff
    else:
        fn = writers.write_labels_zarr if labels else writers.write_image_zarr
    return fn(path, data, meta)


def check_writer(path: str) -> None:
    """Refuse a path no writer takes (the extension chooses: .tif/.tiff, .zarr, .ome.zarr)."""
    if not path.lower().endswith((".tif", ".tiff", ".zarr")):
        raise NeurosegError(f"no writer for {Path(path).name!r}", path=path,
                            fix="end the name with .tif, .ome.zarr or .zarr")


def save_with_dialog(parent: Any, *, title: str, start: str, filters: Iterable[str], viewer: Any,
                     write: Callable[[str], Any]) -> str | None:
    """Ask for a path, refuse to overwrite an open layer's source file unless the user agrees,
    then ``write(path)``. Returns the path written, or None when the user backed out."""
    filters = list(filters)
    path, chosen = ask_save_path(parent, title, start, filters)
    if not path:
        return None
    path = with_extension(str(path), chosen, filters)
    target = Path(path).expanduser().resolve()
    owner = input_sources(viewer.layers).get(target)
    if owner is not None and not confirm(
            parent, "Overwrite an input?",
            f"{target.name} is the file layer '{owner}' was opened from.\nOverwrite it?"):
        return None
    write(path)
    return path
