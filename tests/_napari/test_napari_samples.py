"""Each sample opened in a real viewer (File ▸ Open Sample ▸ napari-neuroseg)."""

from __future__ import annotations

import numpy as np
import pytest

PLUGIN = "napari-neuroseg"
pytestmark = pytest.mark.gui


def test_nuclei_sample(viewer):
    layers = viewer.open_sample(PLUGIN, "nuclei")
    kinds = [ly.__class__.__name__ for ly in layers]
    assert kinds == ["Image", "Labels"]
    image, labels = layers
    assert image.data.ndim == 3 and image.data.shape == labels.data.shape
    assert labels.data.max() > 10  # many nuclei
    np.testing.assert_allclose(image.scale, (2.0, 1.0, 1.0))
    # nuclei are brighter than background
    assert image.data[labels.data > 0].mean() > image.data[labels.data == 0].mean()


def test_neurons_sample(viewer):
    layers = viewer.open_sample(PLUGIN, "neurons")
    raws = [ly for ly in layers if ly.__class__.__name__ == "Image"]
    assert [ly.colormap.name for ly in raws] == ["red", "green", "blue"]
    assert all(ly.blending == "additive" for ly in raws)
    inst = next(ly for ly in layers if ly.name.endswith("instances"))
    stack = inst.metadata["fisbe_instances"]
    assert stack.ndim == 4 and stack.shape[1:] == inst.data.shape
    for i in range(stack.shape[0]):
        assert set(np.unique(stack[i])) <= {0, i + 1}
    assert isinstance(inst.metadata["fisbe_dim_neurons"], list)


def test_stardist_sample(viewer):
    from stardist.data import test_image_nuclei_3d

    image, mask = test_image_nuclei_3d(return_mask=True)
    layers = viewer.open_sample(PLUGIN, "stardist_nuclei_3d")
    assert [ly.__class__.__name__ for ly in layers] == ["Image", "Labels"]
    np.testing.assert_array_equal(layers[0].data, image)
    np.testing.assert_array_equal(layers[1].data, mask)
