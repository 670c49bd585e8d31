"""The :class:`Volume` returned by :func:`read_image`, and axis handling shared by all readers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg.errors import NeurosegError

__all__ = ["Volume", "check_scale", "guess_axes", "normalize_axes", "spatial_scale", "MAX_GUESS_CHANNELS"]

#: An axis of at most this many entries next to Z may be guessed to be the channel axis.
MAX_GUESS_CHANNELS = 16

_KNOWN = set("TCZYX")


@dataclass
class Volume:
    """An image volume with its axes and voxel size.

    ``data`` is a numpy array, or a dask array when read with ``lazy=True``.
    ``axes`` is one of ``"ZYX"``, ``"CZYX"`` (channels always first), or ``"YX"``/``"CYX"``
    for 2D inputs. ``scale`` is the voxel size of the spatial axes in the order they appear in
    ``axes`` (``(z, y, x)`` for 3D), in ``meta["unit"]`` (micrometre by default), 1.0 where
    unknown. ``meta`` holds ``source_axes`` (the axes as stored), ``axes_guessed`` (True when
    no metadata said which axis is which), ``format`` and reader-specific entries.
    """

    data: Any
    axes: str
    scale: tuple[float, ...]
    name: str
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def ndim(self) -> int:
        return len(self.axes)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def channel_axis(self) -> int | None:
        return self.axes.index("C") if "C" in self.axes else None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(s for s, a in zip(self.shape, self.axes) if a in "ZYX")


def guess_axes(shape: tuple[int, ...], path: str | Path | None = None) -> str:
    """Guess axes from a shape alone (no metadata). The rules (documented in docs/io.md):

    - 2D → ``YX``; 3D → ``ZYX``;
    - 4D → the first or second axis is the channel axis: whichever is smaller and has at most
      ``MAX_GUESS_CHANNELS`` entries (a tie goes to the first: ``CZYX``; ``ZCYX`` otherwise);
    - 5D → ``TCZYX`` (OME order); anything else is refused.
    """
    n = len(shape)
    if n == 2:
        return "YX"
    if n == 3:
        return "ZYX"
    if n == 4:
        a, b = shape[0], shape[1]
        if a <= b and a <= MAX_GUESS_CHANNELS:
            return "CZYX"
        if b <= MAX_GUESS_CHANNELS:
            return "ZCYX"
        raise NeurosegError(
            f"cannot tell which axis holds the channels in a 4D array of shape {tuple(shape)}",
            path=path,
            fix="say which axis is which, e.g. --axes CZYX (Python: axes='CZYX')",
        )
    if n == 5:
        return "TCZYX"
    raise NeurosegError(
        f"a {n}D array of shape {tuple(shape)} is not an image volume",
        path=path,
        fix="use a 2D-5D array (YX, ZYX, CZYX, ZCYX or TCZYX) or pass --axes",
    )


def normalize_axes(data: Any, axes: str, path: str | Path | None = None) -> tuple[Any, str]:
    """Reorder ``data`` to channels-first, drop singleton T, and return ``(data, axes)``.

    ``axes`` is validated (letters from TCZYX, each once, length = ndim); ``S`` (RGB samples)
    is read as ``C``. A time axis longer than 1 is refused (pick one time point).
    """
    axes = axes.upper().replace("S", "C")
    if len(axes) != data.ndim or len(set(axes)) != len(axes) or not set(axes) <= _KNOWN:
        raise NeurosegError(
            f"axes {axes!r} do not fit a {data.ndim}D array of shape {tuple(data.shape)}",
            path=path,
            fix=f"give one letter per axis, each once, from T, C, Z, Y, X (e.g. {guess_axes_safe(data.shape)})",
        )
    if "Y" not in axes or "X" not in axes:
        raise NeurosegError(
            f"axes {axes!r} have no Y and X", path=path, fix="the last two axes of an image are usually YX"
        )
    if "T" in axes:
        t = axes.index("T")
        if data.shape[t] != 1:
            raise NeurosegError(
                f"the data has {data.shape[t]} time points (axes {axes}); time series are not supported",
                path=path,
                fix="save a single time point as its own file",
            )
        index = tuple(0 if i == t else slice(None) for i in range(data.ndim))
        data = data[index]
        axes = axes.replace("T", "")
    target = "".join(a for a in "CZYX" if a in axes)
    if axes != target:
        order = [axes.index(a) for a in target]
        data = data.transpose(order)
    return data, target


def guess_axes_safe(shape: tuple[int, ...]) -> str:
    try:
        return guess_axes(shape)
    except NeurosegError:
        return "CZYX"


def spatial_scale(axes: str, scale_by_axis: dict[str, float] | None) -> tuple[float, ...]:
    """The voxel sizes for the spatial axes of ``axes`` (Z, Y, X order), 1.0 where unknown."""
    scale_by_axis = scale_by_axis or {}
    out = []
    for a in axes:
        if a in "ZYX":
            v = scale_by_axis.get(a)
            try:
                v = float(v) if v is not None else 1.0
            except (TypeError, ValueError):
                v = 1.0
            out.append(v if np.isfinite(v) and v > 0 else 1.0)
    return tuple(out)


def check_scale(scale: Any, spatial: str, path: str | Path | None = None) -> tuple[float, ...]:
    """A writer's voxel size for the ``spatial`` axes (e.g. ``"ZYX"``): one positive finite number
    per axis (``None``: 1.0 each), else a NeurosegError naming the file."""
    if scale is None:
        return (1.0,) * len(spatial)
    try:
        out = tuple(float(s) for s in scale)
    except (TypeError, ValueError):
        out = ()
    if len(out) != len(spatial) or any(not np.isfinite(s) or s <= 0 for s in out):
        raise NeurosegError(
            f"scale {tuple(scale) if hasattr(scale, '__iter__') else scale} does not fit the spatial axes {spatial}",
            path=path,
            fix=f"give {len(spatial)} positive voxel sizes in {spatial} order",
        )
    return out
