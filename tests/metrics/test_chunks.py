"""The direct chunk readers (Zarr v2, gzip HDF5) find exactly the voxels the slab reader finds."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import zarr

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io.chunks import chunk_source
from napari_neuroseg.metrics._sparse import _View, match_shapes


def _random_labels(shape, dtype, seed=0, density=0.02):
    rng = np.random.default_rng(seed)
    a = (rng.random(shape) < density) * rng.integers(1, 120, shape)
    return a.astype(dtype)


def _same(view_a: _View, view_b: _View):
    a, b = view_a.extract(), view_b._extract_slabs()
    assert len(a) == len(b)
    for (ka, va), (kb, vb) in zip(a, b):
        np.testing.assert_array_equal(ka, kb)
        np.testing.assert_array_equal(va, vb)


@pytest.mark.parametrize("crop", [False, True])
def test_zarr_v2_chunks_equal_slabs(tmp_path, crop):
    data = _random_labels((3, 17, 30, 41), np.uint8)
    z = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=data.shape,
                        chunks=(3, 8, 16, 16), dtype=data.dtype, zarr_format=2)
    z[:] = data
    assert chunk_source(z) is not None
    a, b = _View(z, "gt"), _View(z, "gt")
    if crop:  # exercise the centre crop on chunk edges
        for v in (a, b):
            match_shapes(v, _View(np.zeros((13, 25, 33), np.uint8), "pred"))
    _same(a, b)


@pytest.mark.parametrize("opts", [dict(compression="gzip"), dict(compression="gzip", shuffle=True),
                                  dict()])
def test_hdf5_chunks_equal_slabs(tmp_path, opts):
    data = _random_labels((19, 33, 27), np.int32, seed=3)
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f.create_dataset("labels", data=data, chunks=(5, 8, 8), **opts)
    with h5py.File(tmp_path / "p.h5", "r") as f:
        ds = f["labels"]
        assert chunk_source(ds) is not None
        _same(_View(ds, "pred"), _View(ds, "pred"))


def test_negative_ids_found_in_chunks(tmp_path):
    data = np.zeros((8, 8, 8), np.int16)
    data[3, 3, 3] = -2
    with h5py.File(tmp_path / "n.h5", "w") as f:
        f.create_dataset("labels", data=data, chunks=(4, 4, 4), compression="gzip")
    with h5py.File(tmp_path / "n.h5", "r") as f:
        with pytest.raises(NeurosegError, match="negative"):
            _View(f["labels"], "prediction").extract()
