"""A small 3D U-Net over the 3 colour channels of a FISBe-like volume.

BatchNorm (not GroupNorm) so that, in eval mode, the network is purely convolutional and a tile
gives the same output as the whole volume.

Outputs, per voxel (see :mod:`.targets` for the exact order): a foreground logit, and one
affinity logit per offset in :data:`~napari_neuroseg.models.neurons.targets.DEFAULT_OFFSETS`
(is this voxel in the same neuron as the voxel ``offset`` away?).
"""

from __future__ import annotations

import torch
from torch import nn


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv3d(cin, cout, 3, padding=1),
            nn.BatchNorm3d(cout),
            nn.ReLU(inplace=True),
            nn.Conv3d(cout, cout, 3, padding=1),
            nn.BatchNorm3d(cout),
            nn.ReLU(inplace=True),
        )


class UNet3D(nn.Module):
    """U-Net with ``levels`` resolutions (pooling 2×2×2), ``base`` filters at full resolution.

    Input (B, in_channels, Z, Y, X) with Z, Y, X divisible by ``2 ** (levels - 1)``; output
    (B, out_channels, Z, Y, X) logits.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 7, base: int = 16, levels: int = 3):
        super().__init__()
        self.levels = levels
        chans = [base * 2**i for i in range(levels)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.down.append(_Block(cin, c))
            cin = c
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList()
        self.upconv = nn.ModuleList()
        for i in range(levels - 1, 0, -1):
            self.upconv.append(nn.ConvTranspose3d(chans[i], chans[i - 1], 2, stride=2))
            self.up.append(_Block(2 * chans[i - 1], chans[i - 1]))
        self.head = nn.Conv3d(chans[0], out_channels, 1)

    @property
    def divisor(self) -> int:
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.levels - 1:
                skips.append(x)
                x = self.pool(x)
        for upconv, block in zip(self.upconv, self.up):
            x = upconv(x)
            x = block(torch.cat([skips.pop(), x], dim=1))
        return self.head(x)
