"""Memory budget checks made *before* work starts (the one place for them).

Every reader→compute entry (``neuroseg evaluate``, ``nuclei``, ``neurons``, ``convert``,
``train``) asks here whether what it is about to allocate fits in the free memory, using only
declared shapes (a lazy input is never read to find out). A too-large request is refused at once
with a :class:`~napari_neuroseg.errors.NeurosegError` that names the size, the free memory and the
option that makes it fit, instead of a raw ``MemoryError``, minutes of swapping or a crash in C++.

Importing this module is cheap: psutil and torch are imported inside the functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_neuroseg.errors import NeurosegError

__all__ = [
    "BUDGET_FRACTION",
    "available_bytes",
    "format_bytes",
    "network_parameter_count",
    "require_memory",
    "require_network_fits",
    "require_volume_fits",
]

#: Share of the available system memory one request may take.
BUDGET_FRACTION = 0.8


def available_bytes() -> int:
    """Free system memory in bytes (``psutil.virtual_memory().available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``, up to EiB (huge declared shapes read as such)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def require_memory(
    nbytes: float,
    *,
    what: str,
    fix: str,
    path: str | Path | None = None,
    available: int | None = None,
    fraction: float = BUDGET_FRACTION,
) -> None:
    """Raise a :class:`NeurosegError` when ``nbytes`` exceed ``fraction`` of the free memory.

    ``what`` says what needs the memory (e.g. ``"the image (100000, 100000, 100000) uint16"``),
    ``fix`` what to do (a smaller ``--patch-size``, ``--n-tiles``, a crop...).
    """
    free = available_bytes() if available is None else int(available)
    if not math.isfinite(float(nbytes)) or nbytes > fraction * free:
        raise NeurosegError(
            f"{what} needs about {format_bytes(nbytes)} of memory but only {format_bytes(free)} is free",
            path=path,
            fix=fix,
        )


def require_volume_fits(
    shape: Sequence[int],
    bytes_per_voxel: float,
    *,
    what: str,
    fix: str,
    path: str | Path | None = None,
    available: int | None = None,
) -> int:
    """Check a volume of the declared ``shape`` at ``bytes_per_voxel`` (all arrays a step keeps
    per voxel) against the free memory; returns the estimate in bytes.

    Python integers are used, so a declared shape of ``(10**5,) * 3`` cannot overflow.
    """
    n = 1
    for s in shape:
        n *= max(0, int(s))
    nbytes = n * float(bytes_per_voxel)
    require_memory(nbytes, what=f"{what} of shape {tuple(int(s) for s in shape)}", fix=fix, path=path,
                   available=available)
    return int(nbytes)


def network_parameter_count(build: Callable[[], Any]) -> int:
    """Parameters of the torch module ``build()`` makes, counted on the ``meta`` device (no
    memory is allocated for the weights, so a config with huge filter counts is safe to ask)."""
    import torch

    with torch.device("meta"):
        net = build()
    return int(sum(p.numel() for p in net.parameters()))


def require_network_fits(
    build: Callable[[], Any],
    *,
    what: str,
    fix: str,
    training: bool = False,
    path: str | Path | None = None,
    available: int | None = None,
) -> int:
    """Refuse a network whose float32 weights do not fit in memory before building it for real.

    ``training`` counts four copies (weights, gradients and Adam's two moments). Returns the
    parameter count.
    """
    n = network_parameter_count(build)
    copies = 4 if training else 1
    require_memory(n * 4 * copies, what=f"{what} ({n:,} parameters)", fix=fix, path=path, available=available)
    return n
