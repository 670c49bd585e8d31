"""Reading and writing volumes: TIFF, Zarr v2/v3, OME-Zarr, the FISBe layout, HDF5.

No Qt/napari imports here. All errors are :class:`~napari_neuroseg.errors.NeurosegError` naming
the file, the problem and the fix; all writers are atomic (temp file/folder, then rename).
See ``docs/io.md``.
"""

from napari_neuroseg.io.atomic import atomic_output
from napari_neuroseg.io.checks import (
    as_label_array,
    check_label_dtype,
    check_label_values,
    require_3d,
    require_same_shape,
)
from napari_neuroseg.io.fisbe import (
    FisbeSample,
    instances_to_labels,
    is_fisbe,
    labels_to_instances,
    read_fisbe,
    write_fisbe,
)
from napari_neuroseg.io.hdf5 import read_hdf5, write_hdf5
from napari_neuroseg.io.readers import FORMATS, OpenArray, detect_format, list_keys, open_array, read_image, read_labels
from napari_neuroseg.io.tiff import read_tiff, write_tiff
from napari_neuroseg.io.volume import Volume, guess_axes
from napari_neuroseg.io.zarr_io import is_ome_zarr, is_zarr, write_ome_zarr, write_zarr

__all__ = [
    "FORMATS",
    "FisbeSample",
    "OpenArray",
    "Volume",
    "as_label_array",
    "atomic_output",
    "check_label_dtype",
    "check_label_values",
    "detect_format",
    "guess_axes",
    "instances_to_labels",
    "is_fisbe",
    "is_ome_zarr",
    "is_zarr",
    "labels_to_instances",
    "list_keys",
    "open_array",
    "read_fisbe",
    "read_hdf5",
    "read_image",
    "read_labels",
    "read_tiff",
    "require_3d",
    "require_same_shape",
    "write_fisbe",
    "write_hdf5",
    "write_ome_zarr",
    "write_tiff",
    "write_zarr",
]
