"""Smooth random fields, optics and camera noise shared by the synthetic generators (no Qt)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.transform import resize

from ..errors import NeurosegError


def smooth_field(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    *,
    cells: tuple[int, ...] | int = 4,
    amplitude: float = 0.3,
    mean: float = 1.0,
) -> np.ndarray:
    """A smooth random field with ``mean`` and relative variation ``amplitude`` (float32).

    Drawn on a coarse grid of ``cells`` control points per axis and upsampled with cubic splines,
    so its wavelength is about ``shape / cells``; ``amplitude`` is the std of the coarse values.
    """
    if isinstance(cells, int):
        cells = (cells,) * len(shape)
    coarse = rng.normal(0.0, 1.0, size=tuple(max(2, int(c)) + 1 for c in cells))
    # cubic to a quarter resolution, then linear to full size: smooth and fast
    mid = tuple(max(2, -(-int(s) // 4)) for s in shape)
    up = resize(coarse, mid, order=3, mode="reflect", anti_aliasing=False)
    up = _linear_upsample(up, tuple(shape))
    std = float(up.std())
    if std > 0:
        up = (up - up.mean()) / std
    return (mean + amplitude * up).astype(np.float32)


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Dense (n_out, n_in) matrix of linear interpolation with aligned pixel centres."""
    x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    x = np.clip(x, 0, n_in - 1)
    i0 = np.floor(x).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = x - i0
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), i0] += 1 - w
    m[np.arange(n_out), i1] += w
    return m


def _linear_upsample(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Separable linear resize of a small array to ``shape`` (fast: one matmul per axis)."""
    out = a.astype(np.float32)
    for ax, n in enumerate(shape):
        m = _interp_matrix(out.shape[ax], n).astype(np.float32)
        out = np.moveaxis(np.tensordot(m, np.moveaxis(out, ax, 0), axes=(1, 0)), 0, ax)
    return np.ascontiguousarray(out)


def illumination_field(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    *,
    strength: float = 0.25,
    depth_attenuation: float = 0.2,
    cells: int = 3,
) -> np.ndarray:
    """A positive multiplicative illumination field (ZYX, float32, mean about 1).

    Combines a smooth log-normal field of relative strength ``strength`` with an exponential
    attenuation along Z that loses ``depth_attenuation`` of the signal from top to bottom.
    """
    log_field = smooth_field(rng, shape, cells=cells, amplitude=strength, mean=0.0)
    field = np.exp(log_field)
    if depth_attenuation > 0:
        z = np.linspace(0.0, 1.0, shape[0], dtype=np.float32)
        field *= np.exp(np.log1p(-min(depth_attenuation, 0.95)) * z)[:, None, None]
    field /= float(field.mean())
    return field.astype(np.float32)


def blur(volume: np.ndarray, sigma: tuple[float, ...] | float) -> np.ndarray:
    """Gaussian PSF blur (float32); sigma per spatial axis (ZYX). Zero sigma is a no-op."""
    sig = np.broadcast_to(np.asarray(sigma, dtype=float), (volume.ndim,))
    if not np.any(sig > 0):
        return volume.astype(np.float32, copy=False)
    return ndi.gaussian_filter(volume.astype(np.float32, copy=False), sig, mode="reflect", truncate=3.0)


def camera_noise(
    rng: np.random.Generator,
    signal: np.ndarray,
    *,
    gain: float,
    offset: float,
    read_noise: float,
) -> np.ndarray:
    """Shot noise (Poisson on ``signal / gain`` photons, times ``gain``) + offset + Gaussian read
    noise. Returns float32 (not clipped)."""
    sig = np.clip(signal, 0, None)
    if gain > 0:
        shot = rng.poisson(sig / gain).astype(np.float32) * np.float32(gain)
    else:
        shot = sig.astype(np.float32)
    shot += np.float32(offset)
    if read_noise > 0:
        shot += rng.normal(0.0, read_noise, size=shot.shape).astype(np.float32)
    return shot


def to_uint16(volume: np.ndarray) -> np.ndarray:
    """Round and clip to uint16."""
    return np.clip(np.rint(volume), 0, 65535).astype(np.uint16)


def wide_draws(
    rng: np.random.Generator, size: tuple[float, float]
) -> tuple[float, Callable[[float, float], float], Callable[[float, Callable[[], Any], Any], Any]]:
    """The start of every ``randomized_wide``: check the ``size`` factor range, then return the
    size factor ``k`` (log-uniform in ``size``, the first draw from ``rng``) and the two draw
    helpers ``logu(a, b)`` (log-uniform in [a, b]) and ``maybe(p, draw, default)`` (``draw()``
    with probability ``p``, else ``default``)."""
    lo_s, hi_s = (float(v) for v in size)
    if not 0 < lo_s <= hi_s:
        raise NeurosegError(f"size range {size!r} is not 0 < min <= max", fix="pass e.g. (0.5, 3.0)")

    def logu(a: float, b: float) -> float:
        return float(np.exp(rng.uniform(np.log(a), np.log(b))))

    def maybe(p: float, draw: Callable[[], Any], default: Any) -> Any:
        return draw() if rng.random() < p else default

    return logu(lo_s, hi_s), logu, maybe
