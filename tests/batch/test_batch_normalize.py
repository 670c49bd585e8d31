"""Per-volume normalisation statistics from bounded samples of lazily read volumes."""

from __future__ import annotations

import numpy as np
import zarr

from napari_neuroseg.batch.normalize import apply_percentiles, percentile_stats, sample_values
from napari_neuroseg.models.stardist3d.model import normalize_image


def test_sample_small_or_in_memory_is_every_voxel_and_matches_stardist(tmp_path):
    rng = np.random.default_rng(1)
    vol = rng.gamma(2.0, 100.0, (2, 12, 20, 20)).astype(np.uint16)
    z = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=vol.shape, chunks=(2, 6, 10, 10),
                        dtype=vol.dtype, zarr_format=2)
    z[...] = vol
    assert sample_values(z, "CZYX").shape == (2, 12 * 20 * 20)
    stats = percentile_stats(z, "CZYX")
    assert stats == percentile_stats(vol, "CZYX")
    ref = normalize_image(vol)
    for c in range(2):
        assert np.array_equal(apply_percentiles(vol[c], *stats[c]), ref[c])  # bit-identical


def test_sample_of_a_large_chunked_volume_reads_few_chunks_deterministically(tmp_path):
    vol = np.arange(32 * 64 * 64, dtype=np.uint32).reshape(32, 64, 64) % 1000
    z = zarr.open_array(str(tmp_path / "b.zarr"), mode="w", shape=vol.shape, chunks=(8, 8, 8),
                        dtype=vol.dtype, zarr_format=2)
    z[...] = vol

    class Counting:
        """Counts the reads of the wrapped array."""

        def __init__(self, a):
            self.a, self.shape, self.dtype, self.chunks, self.reads = a, a.shape, a.dtype, a.chunks, 0

        def __getitem__(self, sl):
            self.reads += 1
            return self.a[sl]

    c = Counting(z)
    s1 = sample_values(c, "ZYX", max_voxels=1000)
    assert c.reads == 16 < 4 * 8 * 8  # 16 of the 256 chunks, strided inside each
    assert s1.shape[0] == 1 and 1000 <= s1.shape[1] <= 16 * 512
    assert np.array_equal(s1, sample_values(z, "ZYX", max_voxels=1000))  # same chunks every time
    assert abs(np.median(s1) - np.median(vol)) < 100
