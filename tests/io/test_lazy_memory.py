"""Lazy loading: a Zarr far larger than a memory budget is opened and sliced within it."""

from __future__ import annotations

import resource
import tracemalloc

import dask
import numpy as np
import zarr

from napari_neuroseg.io import read_image, read_labels

SHAPE = (100, 2000, 2000)  # 400 MB of uint8
CHUNKS = (10, 500, 500)  # 2.5 MB chunks
BUDGET = 40 * 2**20  # 40 MB: a tenth of the array


def _make_big_zarr(path):
    from zarr.codecs import BloscCodec

    arr = zarr.create_array(str(path), shape=SHAPE, chunks=CHUNKS, dtype="uint8", zarr_format=3, fill_value=0,
                            compressors=BloscCodec(cname="lz4", clevel=1))
    slab = np.empty((CHUNKS[0],) + SHAPE[1:], np.uint8)
    for z in range(0, SHAPE[0], CHUNKS[0]):
        slab.fill(1 + z // CHUNKS[0])  # every chunk stored (non-fill), compresses to ~nothing
        arr[z : z + CHUNKS[0]] = slab
    return arr


def test_lazy_read_of_a_zarr_larger_than_the_budget(tmp_path):
    path = tmp_path / "big.zarr"
    _make_big_zarr(path)
    nbytes = int(np.prod(SHAPE))
    on_disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert on_disk < nbytes // 50  # compressed on disk
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    try:
        vol = read_image(path, lazy=True)
        assert vol.shape == SHAPE and vol.axes == "ZYX"
        small = vol.data[55, 900:1100, 900:1100].compute()
        with dask.config.set(scheduler="synchronous"):  # streaming reduction, chunk by chunk
            total = int(vol.data.sum(dtype=np.uint64).compute())
        labels = read_labels(path, lazy=True)
        corner = np.asarray(labels[-1, :3, :3])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert small.shape == (200, 200) and (small == 6).all()
    assert total == sum((1 + z) * 10 * 2000 * 2000 for z in range(10))
    assert (corner == 10).all()
    assert peak < BUDGET, f"peak traced {peak / 2**20:.1f} MiB for a {nbytes / 2**20:.0f} MiB array"
    assert rss_after - rss_before < nbytes // 2  # the process never held the whole array
