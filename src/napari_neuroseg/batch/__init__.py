"""Batch runs over folders of volumes and blockwise runs over volumes larger than memory.

Entry points: :func:`run_batch` (files → outputs, manifest, summary; a progress generator) and
:func:`segment_blockwise` (one huge volume → a chunked Zarr/OME-Zarr with stitched objects). Work
runs on :class:`Engine` (embedded threads by default, ``scheduler="tcp://HOST:PORT"`` for a Dask
cluster).
Tasks (``threshold``, ``nuclei``, ``neurons``, ``evaluate`` or your own :class:`Task`) are listed
by :func:`list_tasks`. No Qt/napari imports here.
"""

from napari_neuroseg.batch.blocks import Block, plan_blocks
from napari_neuroseg.batch.blockwise import segment_blockwise
from napari_neuroseg.batch.engine import Engine
from napari_neuroseg.batch.manifest import Manifest
from napari_neuroseg.batch.outputs import output_path, read_output
from napari_neuroseg.batch.runner import BatchProgress, BatchResult, run_batch
from napari_neuroseg.batch.sources import InputSpec, discover_inputs, open_input
from napari_neuroseg.batch.tasks import Param, Task, ThresholdTask, get_task, list_tasks, register_task

#: the libraries a local batch run imports on first use (readers, writers, stitching, the
#: built-in tasks); :func:`preload` imports them ahead of a run
RUN_MODULES = (
    "zarr", "zarr.codecs", "numcodecs", "dask.array", "tifffile", "psutil", "cc3d", "fastremap",
    "scipy.ndimage", "scipy.sparse.csgraph", "skimage.filters", "napari_neuroseg.runtime.memory",
    "napari_neuroseg.runtime.scale",
)


def preload(cluster: bool = False) -> list[str]:
    """Import what a batch run needs before it starts (``cluster``: also Dask's ``distributed``,
    which only the ``processes`` and cluster engines use); returns the modules imported now.

    An application calls it in a background thread while the user fills in a form: the ~550
    modules of a first run otherwise load inside the run, and their objects set off a full
    garbage collection of the process during it (the Batch dock; ``benchmarks/bench_stalls_batch.py``).
    """
    import importlib
    import sys

    names = RUN_MODULES + (("distributed",) if cluster else ())
    new = [n for n in names if n not in sys.modules]
    for name in new:
        importlib.import_module(name)
    return new


__all__ = [
    "BatchProgress", "BatchResult", "Block", "Engine", "InputSpec", "Manifest", "Param", "Task",
    "ThresholdTask", "discover_inputs", "get_task", "list_tasks", "open_input", "output_path",
    "plan_blocks", "preload", "read_output", "register_task", "run_batch", "segment_blockwise",
]
