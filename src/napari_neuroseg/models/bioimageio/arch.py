"""Architecture callables named by exported packages (``weights.pytorch_state_dict.architecture``
with ``import_from: napari_neuroseg.models.bioimageio.arch``): plain keyword arguments in, a
``torch.nn.Module`` out, whose state dict is the package's ``weights.pt``."""

from __future__ import annotations

from typing import Any


def stardist3d_network(config: dict[str, Any]):
    """The StarDist-3D network of a StarDist ``config.json`` dict; ``forward`` returns
    ``(prob (B,1,Z/gz,Y/gy,X/gx), dist (B,n_rays,...))``."""
    from napari_neuroseg.models.stardist3d.config import StarDistConfig
    from napari_neuroseg.models.stardist3d.network import build_network

    return build_network(StarDistConfig.from_dict(dict(config)))


def neuron_unet(in_channels: int = 3, out_channels: int = 7, base: int = 12, levels: int = 4):
    """The neuron U-Net (foreground + affinity logits), eval mode."""
    from napari_neuroseg.models.neurons.network import UNet3D

    return UNet3D(in_channels, out_channels, base, levels).eval()
