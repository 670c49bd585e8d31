"""Saving the edited labels.

- A zarr-backed layer (edited chunk by chunk) writes its edited chunks into its own store.
- A layer read from a FISBe sample (``metadata["fisbe_instances"]``) saved to a FISBe ``.zarr``
  gets its instance stack rebuilt from the edits (:func:`napari_neuroseg.proofread.fisbe.save_fisbe_edits`;
  the sample's raw volume is kept).
- Anything else, in-memory layers included, goes through the plugin's writers
  (:func:`napari_neuroseg._napari._save.write_layer`: TIFF, OME-Zarr, FISBe by the extension).

The dock saves with :func:`start_save`: an in-memory layer's labels are copied in the main
thread and encoded and written in a worker (a TIFF's encoding alone took 40-60 ms of a
64 x 256 x 256 volume, tifffile's first import ~0.4 s), atomically as before.

The widget's **Save…** asks for the file (:func:`napari_neuroseg._napari._save.save_with_dialog`:
the plugin's formats, an open layer's source file is overwritten only after the user agreed).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.runtime.progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    from .controller import ProofreadController

__all__ = ["default_save_path", "in_worker", "labels_filters", "prepare_save", "save_layer", "source_path",
           "start_save"]


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
    """Save the controller's layer now; returns what was done. Without ``path``: in place (a zarr
    store's edited chunks, a FISBe layer's source file); refused for a layer living in memory."""
    return prepare_save(ctrl, path)()


def prepare_save(ctrl: ProofreadController, path: str | None = None) -> Callable[[], str]:
    """Main thread: what :func:`save_layer` would write, taken now, as a function that writes it
    and returns what was done. An in-memory layer's labels are copied (a snapshot: edits made
    while the function runs in a worker are not in the file, the file is never a mix); a zarr
    store edited chunk by chunk is read when the function runs (:func:`in_worker` says no).
    Refusals (no file for an in-memory layer, no writer for the extension) are raised here."""
    from napari_neuroseg._napari._layers import FISBE_DIM_NEURONS, FISBE_INSTANCES

    layer = ctrl.layer
    data = layer.data
    if ctrl.chunked and path is None:
        return lambda: f"saved {data.save()} edited chunk(s)"
    fisbe_target = path or (source_path(layer) if _is_fisbe(layer) else None)
    if _is_fisbe(layer) and fisbe_target and fisbe_target.lower().rstrip("/").endswith(".zarr") \
            and not fisbe_target.lower().rstrip("/").endswith(".ome.zarr"):
        from napari_neuroseg.proofread.fisbe import save_fisbe_edits

        labels = _snapshot(data)
        stack, dims = layer.metadata[FISBE_INSTANCES], layer.metadata.get(FISBE_DIM_NEURONS)

        def write_fisbe() -> str:
            save_fisbe_edits(fisbe_target, labels, stack, dim_neurons=dims)
            return f"saved FISBe layout to {fisbe_target}"

        return write_fisbe
    if path is None:
        raise NeurosegError(
            f"layer {layer.name!r} lives in memory only: there is no file to save into",
            fix="press 'Save…' and choose a file (TIFF, OME-Zarr or FISBe)",
        )
    from napari_neuroseg._napari._save import check_writer, write_layer_data

    check_writer(path)
    arr, meta, kind = layer.as_layer_data_tuple()
    meta = dict(meta, metadata=dict(meta.get("metadata") or {}))
    arr, name = _snapshot(arr), layer.name

    def write() -> str:
        write_layer_data(path, arr, meta, kind)  # a chunked layer too: a copy, its store unchanged
        return f"saved {name!r} to {path}"

    return write


def _snapshot(data: Any) -> Any:
    """An in-memory array copied (the layer may be edited while a worker writes it); a lazy or
    chunk-edited array as it is."""
    return data.copy() if isinstance(data, np.ndarray) else data


def in_worker(ctrl: ProofreadController) -> bool:
    """Whether :func:`prepare_save`'s function may run in a worker thread: the layer's labels
    are an in-memory array (copied when prepared). A zarr store edited chunk by chunk is written
    in the main thread (its chunks are read as the edits change them)."""
    return isinstance(ctrl.layer.data, np.ndarray)


def start_save(ctrl: ProofreadController, path: str | None = None, *,
               on_done: Callable[[str], None] | None = None,
               on_error: Callable[[BaseException], None] | None = None) -> Any:
    """Save like :func:`save_layer`, the writing (encoding, compression, the atomic rename) in a
    worker thread when :func:`in_worker` allows: the labels are copied now, in the main thread,
    and written as they were at this call. Returns the started worker (None when it was written
    here). ``on_done(message)`` runs in the main thread once the file is complete; ``on_error``
    after an error notification (nothing half-written is left: the writers write atomically)."""
    write = prepare_save(ctrl, path)
    if not in_worker(ctrl):
        msg = write()
        if on_done is not None:
            on_done(msg)
        return None
    from napari_neuroseg._napari._workers import start_worker

    return start_worker(_write_job, write, on_return=on_done, on_error=on_error,
                        desc=f"saving {ctrl.layer.name}")


def _write_job(write: Callable[[], str]) -> Generator[Progress, None, str]:
    yield Progress(0, 1, "writing")
    return write()
