"""Inference runtime shared by the segmenters: device choice, tiling, memory, model cache,
progress/cancel and a worker process for GIL-holding C++ code.

Importing it stays cheap: torch, psutil and stardist are imported inside the functions.
"""

from napari_neuroseg.runtime.cache import ModelCache, cached_model, clear_model_cache, model_cache
from napari_neuroseg.runtime.device import available_devices, select_device
from napari_neuroseg.runtime.progress import Cancelled, Progress, run_to_completion
from napari_neuroseg.runtime.tiling import (
    Tile,
    auto_tiles,
    available_memory,
    is_oom_error,
    iter_tiles,
    more_tiles,
    plan_tiles,
    predict_tiled,
    predict_tiled_auto,
)

__all__ = [
    "Cancelled",
    "ModelCache",
    "Progress",
    "Tile",
    "auto_tiles",
    "available_devices",
    "available_memory",
    "cached_model",
    "clear_model_cache",
    "is_oom_error",
    "iter_tiles",
    "model_cache",
    "more_tiles",
    "plan_tiles",
    "predict_tiled",
    "predict_tiled_auto",
    "run_to_completion",
    "select_device",
]
