"""Batch runs over folders of volumes and blockwise runs over volumes larger than memory.

Entry points: :func:`run_batch` (files → outputs, manifest, summary; a progress generator) and
:func:`segment_blockwise` (one huge volume → a chunked Zarr/OME-Zarr with stitched objects). Work
runs on :class:`Engine` (embedded Dask by default, ``scheduler="tcp://HOST:PORT"`` for a cluster).
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

__all__ = [
    "BatchProgress", "BatchResult", "Block", "Engine", "InputSpec", "Manifest", "Param", "Task",
    "ThresholdTask", "discover_inputs", "get_task", "list_tasks", "open_input", "output_path",
    "plan_blocks", "read_output", "register_task", "run_batch", "segment_blockwise",
]
