"""Block plans and stitching algebra (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_neuroseg.batch.blocks import (
    face_pairs, face_regions, forward_neighbours, overlap_pairs, overlap_region, plan_blocks, union_find_mapping,
)


def test_plan_blocks_partitions_the_volume_and_clamps_the_halo():
    shape = (20, 33, 17)
    blocks = plan_blocks(shape, (8, 16, 16), (2, 3, 4))
    cover = np.zeros(shape, np.int32)
    for b in blocks:
        cover[b.core] += 1
        for c, o, s in zip(b.core, b.outer, shape):
            assert 0 <= o.start <= c.start and c.stop <= o.stop <= s
        inner = tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(b.core, b.outer))
        assert b.core_in_outer == inner
    assert (cover == 1).all()
    assert len(blocks) == 3 * 3 * 2
    assert blocks[0].outer == (slice(0, 10), slice(0, 19), slice(0, 17))


def test_union_find_joins_chains_orders_by_first_id_and_filters_globally():
    # ids 1..6; 1-3-5 is one object spanning three blocks, 2 alone, 4-6 another
    pairs = np.array([[1, 3], [3, 5], [4, 6]])
    m = union_find_mapping(6, pairs)
    assert m[0] == 0
    assert m[1] == m[3] == m[5] == 1
    assert m[2] == 2
    assert m[4] == m[6] == 3
    sizes = np.array([0, 4, 9, 4, 5, 5, 3])  # object {1,3,5}=13 voxels, {2}=9, {4,6}=8
    m = union_find_mapping(6, pairs, sizes, min_size=9)
    assert m[1] == m[3] == m[5] == 1 and m[2] == 2 and m[4] == m[6] == 0


@pytest.mark.parametrize("connectivity,expected", [(6, set()), (18, set()), (26, {(1, 2)})])
def test_face_pairs_diagonal_contact_needs_26_connectivity(connectivity, expected):
    shape = (4, 4, 4)
    (b0, _b1) = plan_blocks(shape, (2, 4, 4))
    (axis, region), = face_regions(b0, shape)
    assert axis == 0
    slab = np.zeros((2, 4, 4), np.int64)
    slab[0, 1, 1] = 1  # last plane of block 0
    slab[1, 2, 2] = 2  # first plane of block 1, touching only through a corner
    got = {tuple(p) for p in face_pairs(slab, axis, connectivity, b0, region)}
    assert got == expected
    slab[1, 1, 1] = 3  # face contact: found with any connectivity
    got = {tuple(p) for p in face_pairs(slab, axis, connectivity, b0, region)}
    assert (1, 3) in got


def test_overlap_pairs_match_by_shared_fraction_of_the_smaller_label():
    a = np.zeros((4, 10), np.uint16)
    b = np.zeros((4, 10), np.uint16)
    a[:, :5], a[:, 5:] = 1, 2  # two objects touching at x = 4|5
    b[:, :6], b[:, 6:] = 7, 8  # the neighbour sees the contact one voxel off
    got = {tuple(p) for p in overlap_pairs(a, b, 0.5)}
    assert got == {(1, 7), (2, 8)}  # (2, 7) share 4 of 20 voxels: no merge
    b[:, :] = 9  # the neighbour sees one object: both of ours overlap it fully
    assert {tuple(p) for p in overlap_pairs(a, b, 0.5)} == {(1, 9), (2, 9)}
    assert overlap_pairs(a, np.zeros_like(b)).shape == (0, 2)


def test_forward_neighbours_visit_each_overlapping_pair_once():
    blocks = plan_blocks((8, 8, 8), (4, 4, 4), (1, 1, 1))
    by_grid = {b.grid: b for b in blocks}
    pairs = {(b.index, nb.index) for b in blocks for nb in forward_neighbours(b, by_grid)}
    assert len(pairs) == 28  # all pairs of the 2x2x2 grid: every outer region overlaps every other
    assert all(i < j for i, j in pairs)
    r = overlap_region(blocks[0], blocks[1])  # neighbours along X: a 2-voxel slab around x = 4
    assert r == (slice(0, 5), slice(0, 5), slice(3, 5))
    assert forward_neighbours(plan_blocks((8, 8, 8), (4, 4, 4))[0], {b.grid: b for b in plan_blocks((8, 8, 8), (4, 4, 4))}) == []
