"""Training of StarDist-3D models: targets, patch sampling, augmentation, losses, threshold
optimisation and evaluation. Torch is imported only by :mod:`.losses` and the training loop."""

from napari_neuroseg.models.stardist3d.training.augment import AugmentSettings, augment_patch
from napari_neuroseg.models.stardist3d.training.data import PatchSampler, make_targets, normalize_volume
from napari_neuroseg.models.stardist3d.training.evaluate import instances_from_prediction, score_instances
from napari_neuroseg.models.stardist3d.training.thresholds import optimize_thresholds, optimize_thresholds_iter

__all__ = [
    "AugmentSettings",
    "PatchSampler",
    "augment_patch",
    "instances_from_prediction",
    "make_targets",
    "normalize_volume",
    "optimize_thresholds",
    "optimize_thresholds_iter",
    "score_instances",
]
