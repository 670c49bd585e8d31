import numpy as np

from napari_neuroseg.models.neurons.targets import OFFSETS, make_targets


def test_affinities_on_crossing_tubes(tube_stack):
    stack = tube_stack()
    fg, affs, mask = make_targets(stack)
    assert fg.shape == stack.shape[1:] and affs.shape == (len(OFFSETS),) + fg.shape
    np.testing.assert_array_equal(fg > 0, stack.any(0))
    kx = OFFSETS.index((0, 0, 1))
    a = stack[0] > 0
    only_a = a & ~(stack[1] > 0)
    # inside tube A, away from the crossing, neighbours along X are affine
    z, y = 8, 20
    assert affs[kx, z, y, 2] == 1 and affs[kx, z, y, 5] == 1
    # between an A-only voxel and an overlap voxel: different instance sets -> 0
    ov = (stack > 0).all(0)
    zz, yy, xx = np.argwhere(ov)[0]
    assert only_a[zz, yy, xx - 1]
    assert affs[kx, zz, yy, xx - 1] == 0
    # background pairs are 0 and outside the loss mask; fg-bg pairs are in the mask
    assert affs[kx, 0, 0, 0] == 0 and mask[kx, 0, 0, 0] == 0
    assert mask[kx, z, y - 3, 2] == 0 and mask[OFFSETS.index((0, 1, 0)), z, y - 3, 2] == 1
    # last slice along the offset axis has no partner
    assert not mask[kx, ..., -1].any()
