"""FISBe neuron instance segmentation: a 3D U-Net (foreground + affinities) over the 3 colour
channels and a colour-aware agglomeration into neuron instances.

Main entry points: :func:`predict` / :func:`predict_iter` (any size, tiled), :func:`load_model`,
``neuroseg train neurons`` (:mod:`.train`), ``neuroseg neurons`` (CLI). See ``docs/neurons.md``.
Importing this package does not import torch.
"""

from .model import DEFAULT_MODEL, MODEL_TYPE, NetConfig, NeuronModel, load_model, read_checkpoint, save_model
from .postprocess import PostprocessParams, instances_from_outputs
from .predict import NeuronPrediction, predict, predict_iter
from .preprocess import check_raw, normalize

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_TYPE",
    "NetConfig",
    "NeuronModel",
    "NeuronPrediction",
    "PostprocessParams",
    "check_raw",
    "instances_from_outputs",
    "load_model",
    "normalize",
    "predict",
    "predict_iter",
    "read_checkpoint",
    "save_model",
]
