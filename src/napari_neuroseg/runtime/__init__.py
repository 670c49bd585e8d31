"""Inference runtime shared by the segmenters: device choice, tiling, progress and cancel."""

from napari_neuroseg.runtime.device import available_devices, select_device

__all__ = ["available_devices", "select_device"]
