"""The decoded-chunk cache used for block halos, and the pass-1/pass-2 id helpers."""

from __future__ import annotations

import numpy as np
import zarr

from napari_neuroseg.batch import chunkcache
from napari_neuroseg.batch.blocks import plan_blocks
from napari_neuroseg.batch.jobs import apply_lut, dense_ids, smallest_dtype


def test_read_region_equals_slicing_and_decodes_each_chunk_once(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, (2, 20, 30, 26), dtype=np.uint16)
    z = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=data.shape, chunks=(2, 10, 15, 13),
                        dtype=data.dtype, zarr_format=2)
    z[...] = data
    chunkcache.clear()
    blocks = plan_blocks(data.shape[1:], (10, 15, 13), (2, 3, 3))
    cap = 2 * max(chunkcache.touched_bytes(z, (slice(None),) + b.outer) for b in blocks)
    assert cap <= 2 * data.nbytes  # bounded by the chunks of one block, here the whole toy volume
    for b in blocks:
        sl = (slice(None),) + b.outer
        got = chunkcache.read_region(z, sl, run_id="r1", source="a", capacity=cap)
        assert np.array_equal(got, data[sl])
    st = chunkcache.stats()
    assert st["misses"] == 8 and st["hits"] > 0 and st["nbytes"] <= cap  # 8 chunks, each decoded once
    # a new run never sees the old run's chunks; a tiny capacity still gives correct data
    z[...] = data + 1
    got = chunkcache.read_region(z, (slice(None),) + blocks[0].outer, run_id="r2", source="a", capacity=1)
    assert np.array_equal(got, (data + 1)[(slice(None),) + blocks[0].outer])
    assert chunkcache.stats()["nbytes"] == 0
    chunkcache.clear()


def test_dense_ids_and_lut_helpers():
    lab = np.array([[[0, 7, 7], [3, 0, 9]]], np.uint32)
    out, sizes = dense_ids(lab.copy())
    assert out.tolist() == [[[0, 2, 2], [1, 0, 3]]] and sizes.tolist() == [1, 2, 1]
    same = np.array([[[0, 1, 2]]], np.uint32)
    assert dense_ids(same)[0] is same  # already 1..n: untouched
    lut = np.array([0, 5, 5, 9], np.uint32)
    assert apply_lut(out.astype(np.uint8), lut).tolist() == [[[0, 5, 5], [5, 0, 9]]]
    assert apply_lut(out.astype(np.uint16), np.arange(4, dtype=np.uint32)).dtype == np.uint32
    assert smallest_dtype(255) == np.uint8 and smallest_dtype(256) == np.uint16 and smallest_dtype(70000) == np.uint32
