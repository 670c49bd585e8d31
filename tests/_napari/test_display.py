"""_display: result data made ready for napari in the worker (compact labels, warmed caches)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_neuroseg._napari._display import compact_labels, warm_labels_display

pytestmark = pytest.mark.gui


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32, np.uint64])
def test_wide_labels_whose_ids_fit_become_uint16(dtype):
    lab = np.zeros((3, 4, 5), dtype)
    lab[0, 0, :3] = [1, 700, 65535]
    out = compact_labels(lab)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, lab)
    assert compact_labels(np.zeros((0, 2), dtype)).dtype == np.uint16


def test_labels_that_do_not_fit_or_need_nothing_are_returned_as_they_are():
    big = np.array([[0, 65536]], np.uint32)
    neg = np.array([[0, -1]], np.int32)
    small = np.array([[0, 3]], np.uint8)
    floats = np.array([[0.0, 1.0]])
    for arr in (big, neg, small, floats):
        assert compact_labels(arr) is arr
    lazy = [np.zeros((2, 2), np.int32)]  # not an in-memory ndarray (e.g. dask, multiscale)
    assert compact_labels(lazy) is lazy


def test_warm_labels_display_fills_vispys_dash_pattern_cache():
    from vispy.visuals.line import dash_atlas

    warm_labels_display()
    hits = dash_atlas._make_pattern.cache_info().hits
    dash_atlas.DashAtlas()  # what napari's labels polygon overlay builds in the main thread
    assert dash_atlas._make_pattern.cache_info().hits >= hits + 13  # every pattern from the cache
