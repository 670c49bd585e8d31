import numpy as np

from napari_neuroseg.models.neurons import PostprocessParams, instances_from_outputs
from napari_neuroseg.models.neurons.targets import make_targets

#: design B: learned affinities (here: the ground-truth ones) cut by colour
DESIGN_B = PostprocessParams(use_affinities=True, colour_threshold=0.25, merge_threshold=0.15, colour_sigma=1.0,
                             min_size=5)


def _colour_image(stack, colours):
    img = np.zeros((3,) + stack.shape[1:], np.float32)
    for m, c in zip(stack > 0, colours):
        img += m[None] * np.asarray(c, np.float32)[:, None, None, None]
    return img


def _major(values):
    ids, counts = np.unique(values, return_counts=True)
    return ids[counts.argmax()], counts.max() / counts.sum()


def test_oracle_outputs_give_one_id_per_tube(tube_stack):
    stack = tube_stack()
    fg, affs, _ = make_targets(stack)
    img = _colour_image(stack, [(1, 0, 0), (0, 0.2, 1)])
    lab = instances_from_outputs(fg, affs, img, DESIGN_B)
    a_only = (stack[0] > 0) & ~(stack[1] > 0)
    b_only = (stack[1] > 0) & ~(stack[0] > 0)
    ia, ib = _major(lab[a_only]), _major(lab[b_only])
    # each tube (both halves of A, cut by the crossing) is one instance; a few voxels at the
    # crossing's rim may go to the overlap region's instance
    assert ia[1] > 0.95 and ib[1] > 0.95 and ia[0] != ib[0] and 0 not in (ia[0], ib[0])
    assert (lab > 0).sum() == (stack.any(0)).sum()


def test_colour_design_splits_crossing_and_affinity_design_bridges_gap(tube_stack):
    stack = tube_stack()
    fg = stack.any(0).astype(np.float32)
    img = _colour_image(stack, [(1, 0, 0), (0, 0, 1)])
    p = PostprocessParams(use_affinities=False, colour_threshold=0.05, merge_threshold=0.2, min_size=5)
    lab = instances_from_outputs(fg, None, img, p)
    a_only = (stack[0] > 0) & ~(stack[1] > 0)
    b_only = (stack[1] > 0) & ~(stack[0] > 0)
    ia, ib = _major(lab[a_only]), _major(lab[b_only])
    assert ia[1] > 0.9 and ib[1] > 0.9 and ia[0] != ib[0] and 0 not in (ia[0], ib[0])
    # a 3-voxel gap in tube A: long-range affinities (and equal colour) join both halves
    one = stack[:1].copy()
    fg2, affs2, _ = make_targets(one)
    gap = np.zeros_like(fg2, bool)
    gap[:, :, 10:13] = True
    fg2[gap] = 0
    affs2[:3, gap] = 0
    img2 = _colour_image(one, [(0.5, 0.5, 0)]) * ~gap
    lab2 = instances_from_outputs(fg2, affs2, img2, DESIGN_B)
    assert len(np.unique(lab2[fg2 > 0])) == 1


def test_empty_and_tiny_foreground():
    z = np.zeros((8, 16, 16), np.float32)
    assert not instances_from_outputs(z, np.zeros((6,) + z.shape), np.zeros((3,) + z.shape)).any()
    z[4, 4, 4] = 1
    lab = instances_from_outputs(z, np.zeros((6,) + z.shape), np.ones((3,) + z.shape, np.float32))
    assert lab.dtype == np.uint32 and not lab.any()  # below min_size
