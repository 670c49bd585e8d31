"""napari sample-data contributions (File ▸ Open Sample ▸ napari-neuroseg).

- ``nuclei``: synthetic anisotropic 3D nuclei (``synth.make_nuclei``, seed 0) + ground truth;
- ``neurons``: synthetic FISBe-like neurons (``synth.make_neurons``, seed 0): 3 additive raw
  channels (red/green/blue) + the instance Labels layer (full stack kept in its metadata, so it
  can be saved back to the FISBe layout) + where neurons overlap;
- ``stardist_nuclei_3d``: the small 3D nuclei test image shipped inside the ``stardist`` package
  (``stardist.data.test_image_nuclei_3d``) + its mask.
"""

from __future__ import annotations

from napari_neuroseg._napari._layers import (
    LayerData,
    fisbe_instance_layers,
    fisbe_raw_layer,
    image_layer,
    labels_layer,
)

__all__ = ["sample_nuclei", "sample_neurons", "sample_stardist_nuclei"]

#: Voxel size (Z, Y, X) of the synthetic nuclei (the generator's default anisotropy).
NUCLEI_SCALE = (2.0, 1.0, 1.0)


def sample_nuclei() -> list[LayerData]:
    """Synthetic 3D nuclei (64×128×128, anisotropy 2:1:1) and their ground-truth labels."""
    from napari_neuroseg.synth import make_nuclei

    image, labels = make_nuclei(seed=0, anisotropy=NUCLEI_SCALE)
    return [
        image_layer(image, name="synthetic nuclei", axes="ZYX", scale=NUCLEI_SCALE,
                    metadata={"sample": "nuclei", "seed": 0}),
        labels_layer(labels, name="synthetic nuclei GT", scale=NUCLEI_SCALE,
                     metadata={"sample": "nuclei", "seed": 0}),
    ]


def sample_neurons() -> list[LayerData]:
    """Synthetic FISBe-like neurons (48×160×160): raw red/green/blue + GT instances (+ overlaps)."""
    from napari_neuroseg.synth import make_neurons

    vol = make_neurons(seed=0)
    name = "synthetic neurons"
    return [
        fisbe_raw_layer(vol.raw, name=name),
        *fisbe_instance_layers(vol.gt_instances, name=name, dim_neurons=list(vol.dim_neurons)),
    ]


def sample_stardist_nuclei() -> list[LayerData]:
    """The 3D nuclei test image that ships with ``stardist`` (31×61×57) and its mask."""
    from stardist.data import test_image_nuclei_3d

    image, mask = test_image_nuclei_3d(return_mask=True)
    meta = {"sample": "stardist_nuclei_3d", "source": "stardist.data.test_image_nuclei_3d"}
    return [
        image_layer(image, name="stardist nuclei 3D", axes="ZYX", metadata=meta),
        labels_layer(mask.astype("uint16"), name="stardist nuclei 3D mask", metadata=meta),
    ]
