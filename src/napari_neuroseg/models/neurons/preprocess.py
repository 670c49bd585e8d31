"""Input checks and intensity normalisation for the neuron model."""

from __future__ import annotations

import numpy as np

from napari_neuroseg.errors import NeurosegError


def check_raw(raw, *, path=None, channel_axis: int | None = None) -> np.ndarray:
    """Validate a multicolour raw volume and return it as a (3,Z,Y,X) array (not yet normalised).

    ``channel_axis`` moves the colour axis first (e.g. ``-1`` for ZYXC data); without it the
    channels must come first. Errors name the problem and the fix.
    """
    a = np.asarray(raw)
    if channel_axis is not None:
        if a.ndim != 4:
            raise NeurosegError(f"expected a 4D image with a channel axis, got shape {a.shape}", path=path,
                                fix="pass a (3, Z, Y, X) colour volume")
        a = np.moveaxis(a, channel_axis, 0)
    if a.ndim == 3 and a.shape[0] == 3 and min(a.shape[1:]) > 3:
        raise NeurosegError(
            f"got a 3D array of shape {a.shape}: this looks like a 2D colour image (C,Y,X)", path=path,
            fix="the neuron model needs a 3D multicolour volume of shape (3, Z, Y, X)")
    if a.ndim == 3 or (a.ndim == 4 and a.shape[0] == 1):
        raise NeurosegError(
            f"got a single-channel image of shape {a.shape}", path=path,
            fix="the neuron model needs the 3 colour channels of an MCFO volume, shape (3, Z, Y, X)")
    if a.ndim == 2:
        raise NeurosegError(f"got a 2D image of shape {a.shape}", path=path,
                            fix="pass a 3D colour volume of shape (3, Z, Y, X)")
    if a.ndim != 4:
        raise NeurosegError(f"expected a (3, Z, Y, X) volume, got {a.ndim} dimensions {a.shape}", path=path,
                            fix="pass a 3D colour volume with channels first")
    if a.shape[0] != 3:
        if a.shape[-1] == 3:
            raise NeurosegError(
                f"channels seem to be last (shape {a.shape})", path=path,
                fix="move the colour axis first, e.g. numpy.moveaxis(raw, -1, 0), or pass channel_axis=-1 "
                    "(CLI: --channel-axis -1)")
        raise NeurosegError(f"expected 3 colour channels first, got shape {a.shape}", path=path,
                            fix="pass a (3, Z, Y, X) volume (FISBe volumes/raw layout)")
    if a.size == 0:
        raise NeurosegError(f"the volume is empty (shape {a.shape})", path=path,
                            fix="pass a non-empty (3, Z, Y, X) volume")
    if min(a.shape[1:]) < 2:
        raise NeurosegError(f"volume {a.shape} is too thin to be 3D", path=path,
                            fix="pass a 3D colour volume of shape (3, Z, Y, X) with Z, Y, X >= 2")
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise NeurosegError(f"unsupported raw dtype {a.dtype}", path=path,
                            fix="pass uint8, uint16 or float intensities")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise NeurosegError("the raw volume contains NaN or infinite values", path=path,
                            fix="replace them (e.g. numpy.nan_to_num) before segmenting")
    return a


def norm_stats(raw) -> tuple[np.ndarray, float]:
    """Background per channel (median) and one common scale (99.95th percentile over all
    channels after background subtraction) of a (3,Z,Y,X) volume, from a subsample."""
    a = raw
    step = max(1, int(round((int(np.prod(a.shape[1:])) / 2e6) ** (1 / 3))))
    sub = np.asarray(a[:, ::step, ::step, ::step], dtype=np.float32)
    bg = np.median(sub.reshape(sub.shape[0], -1), axis=1).astype(np.float32)
    centred = sub - bg[:, None, None, None]
    hi = float(np.percentile(centred, 99.95))
    if not hi > 1e-6:
        hi = float(centred.max())
    return bg, hi


def apply_norm(raw, stats: tuple[np.ndarray, float]) -> np.ndarray:
    """Apply :func:`norm_stats` to (a crop of) the volume: float32, clipped to [-0.5, 4]."""
    bg, hi = stats
    a = np.asarray(raw, dtype=np.float32)
    if not hi > 1e-6:
        return np.zeros_like(a)
    out = (a - bg[:, None, None, None]) / hi
    np.clip(out, -0.5, 4.0, out=out)
    return out


def normalize(raw: np.ndarray) -> np.ndarray:
    """(3,Z,Y,X) any dtype → float32 with background ≈ 0 and bright neurite ≈ 1.

    Documented conversion for every dtype (uint8, uint16, float): the per-channel median is taken
    as background and subtracted, and all channels are divided by one common scale (the 99.95th
    percentile over all channels), so the colour ratios between channels are kept (no per-channel
    stretching). Values are clipped to [-0.5, 4]. A constant volume gives all zeros.
    """
    return apply_norm(raw, norm_stats(raw))
