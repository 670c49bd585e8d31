"""Augmentation of (image, labels) training patches before their targets are computed.

Geometric changes (flips on every axis, 90° rotations in YX when Y and X have the same size) are
applied to image and labels together, so the StarDist targets computed afterwards stay exact.
Intensity changes (scale, shift, Gaussian noise) touch the image only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AugmentSettings", "augment_patch"]


@dataclass(frozen=True)
class AugmentSettings:
    """Knobs of :func:`augment_patch` (``enabled=False`` returns the patch unchanged)."""

    enabled: bool = True
    flip: bool = True
    rot90_yx: bool = True
    scale: tuple[float, float] = (0.6, 2.0)  # multiplicative intensity factor range
    shift_sigma: float = 0.1  # additive intensity shift ~ N(0, shift_sigma)
    noise_sigma: float = 0.03  # Gaussian noise std drawn uniformly from [0, noise_sigma]


def augment_patch(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, settings: AugmentSettings = AugmentSettings()
) -> tuple[np.ndarray, np.ndarray]:
    """A randomly augmented copy of an (image (C,Z,Y,X) float32, labels (Z,Y,X)) patch."""
    if not settings.enabled:
        return image, labels
    x, y = image, labels
    if settings.flip:
        for ax in range(3):
            if rng.random() < 0.5:
                x = np.flip(x, axis=ax + 1)
                y = np.flip(y, axis=ax)
    if settings.rot90_yx and y.shape[1] == y.shape[2]:
        k = int(rng.integers(4))
        if k:
            x = np.rot90(x, k, axes=(2, 3))
            y = np.rot90(y, k, axes=(1, 2))
    x = np.array(x, dtype=np.float32, copy=True)
    y = np.ascontiguousarray(y)
    lo, hi = settings.scale
    if hi > lo > 0:
        x *= np.float32(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    if settings.shift_sigma > 0:
        x += np.float32(rng.normal(0.0, settings.shift_sigma))
    if settings.noise_sigma > 0:
        sigma = float(rng.uniform(0.0, settings.noise_sigma))
        if sigma > 0:
            x += rng.normal(0.0, sigma, size=x.shape).astype(np.float32)
    return x, y
