"""Tiled prediction on the network's divisor grid, exact w.r.t. untiled prediction.

A fully convolutional network whose input must be a multiple of ``divisor`` (the product of its
poolings/strides) gives the same output for a voxel whether it sees the whole volume or a tile,
as long as

* the tile boundaries lie on the divisor grid (so every pooling/stride window is the same), and
* the tile extends at least the network's receptive field (``overlap``, in input voxels) beyond
  the part of its output that is kept (the *core*).

:func:`plan_tiles` plans such tiles (the whole volume is first reflect-padded at the end of each
axis to a multiple of ``divisor``, exactly as StarDist does); :func:`predict_tiled` runs a forward
function over them as a progress generator and assembles outputs of shape
``(K, ceil(Z/gz), ceil(Y/gy), ceil(X/gx))``. :func:`auto_tiles` picks the number of tiles from the
free memory and :func:`predict_tiled_auto` retries with more tiles after a GPU out-of-memory error.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.runtime.progress import Progress, ProgressGenerator

__all__ = [
    "Tile",
    "auto_tiles",
    "available_memory",
    "is_oom_error",
    "iter_tiles",
    "more_tiles",
    "normalize_n_tiles",
    "pad_to_divisor",
    "plan_tiles",
    "predict_tiled",
    "predict_tiled_auto",
]

Forward = Callable[[np.ndarray], "Sequence[np.ndarray] | np.ndarray"]


@dataclass(frozen=True)
class Tile:
    """One tile of a plan (all slices are spatial, i.e. over (Z, Y, X)).

    ``src``: the region of the *padded* input the network reads.
    ``dst``: the region of the (padded) output, at grid resolution, this tile is responsible for.
    ``crop``: the same region within the tile's own output.
    ``index``: the tile's position in the tile grid; ``first``/``last``: per axis, whether the
    tile touches the start/end of the (padded) volume.
    """

    index: tuple[int, ...]
    src: tuple[slice, ...]
    dst: tuple[slice, ...]
    crop: tuple[slice, ...]
    first: tuple[bool, ...]
    last: tuple[bool, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the input region read by this tile."""
        return tuple(s.stop - s.start for s in self.src)


def _per_axis(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    if np.isscalar(value):
        return (int(value),) * ndim
    value = tuple(int(v) for v in value)  # type: ignore[union-attr]
    if len(value) != ndim:
        raise NeurosegError(f"{name} must have {ndim} values, got {len(value)}", fix=f"pass one {name} per spatial axis")
    return value


def padded_shape(shape: Sequence[int], divisor: int | Sequence[int]) -> tuple[int, ...]:
    """``shape`` rounded up to a multiple of ``divisor`` on every axis."""
    div = _per_axis(divisor, len(shape), "divisor")
    return tuple(int(math.ceil(s / d) * d) for s, d in zip(shape, div))


def pad_to_divisor(image: np.ndarray, divisor: int | Sequence[int], mode: str = "reflect") -> np.ndarray:
    """Pad the spatial (last 3) axes of ``image`` at their end to a multiple of ``divisor``
    (``reflect``, as StarDist). Returns ``image`` itself when nothing needs padding."""
    spatial = image.shape[-3:]
    target = padded_shape(spatial, divisor)
    pads = [(0, 0)] * (image.ndim - 3) + [(0, t - s) for s, t in zip(spatial, target)]
    if all(p == (0, 0) for p in pads):
        return image
    return np.pad(image, pads, mode=mode)


def normalize_n_tiles(n_tiles: int | Sequence[int] | None, shape: Sequence[int]) -> tuple[int, ...]:
    """Tiles per axis from ``None`` (1 per axis), a tuple, or a total count (split along the
    largest axes first)."""
    ndim = len(shape)
    if n_tiles is None:
        return (1,) * ndim
    if np.isscalar(n_tiles):
        total = int(n_tiles)  # type: ignore[arg-type]
        if total < 1:
            raise NeurosegError(f"n_tiles must be >= 1, got {total}", fix="use a positive number of tiles")
        tiles = [1] * ndim
        while math.prod(tiles) < total:
            ax = int(np.argmax([s / t for s, t in zip(shape, tiles)]))
            tiles[ax] *= 2
        return tuple(tiles)
    tiles = tuple(int(t) for t in n_tiles)  # type: ignore[union-attr]
    if len(tiles) != ndim or any(t < 1 for t in tiles):
        raise NeurosegError(
            f"n_tiles must be {ndim} integers >= 1, got {tuple(n_tiles)}",  # type: ignore[arg-type]
            fix="pass one tile count per spatial axis, e.g. (1, 2, 2)",
        )
    return tiles


def _plan_1d(n: int, n_tiles: int, div: int, grid: int, overlap: int):
    n_blocks = n // div
    n_tiles = max(1, min(n_tiles, n_blocks))
    o = int(math.ceil(overlap / div)) if overlap > 0 else 0
    edges = [(i * n_blocks) // n_tiles for i in range(n_tiles + 1)]
    out = []
    for i in range(n_tiles):
        c0, c1 = edges[i], edges[i + 1]
        s0, s1 = max(0, c0 - o), min(n_blocks, c1 + o)
        src = slice(s0 * div, s1 * div)
        dst = slice(c0 * div // grid, c1 * div // grid)
        crop = slice((c0 - s0) * div // grid, (c1 - s0) * div // grid)
        out.append((src, dst, crop, c0 == 0, c1 == n_blocks))
    return out


def plan_tiles(
    shape: Sequence[int],
    n_tiles: int | Sequence[int] | None,
    divisor: int | Sequence[int],
    overlap: int | Sequence[int],
    grid: int | Sequence[int] = 1,
) -> list[Tile]:
    """Plan tiles for a spatial ``shape`` (planned on ``shape`` padded to a multiple of
    ``divisor``).

    Tile boundaries lie on the divisor grid; each tile reads at least ``overlap`` voxels (rounded up
    to whole divisor blocks) beyond its core on every inner side. ``grid`` is the output
    subsampling (must divide ``divisor``). Tiles per axis are capped at the number of blocks.
    """
    ndim = len(shape)
    div = _per_axis(divisor, ndim, "divisor")
    ovl = _per_axis(overlap, ndim, "overlap")
    grd = _per_axis(grid, ndim, "grid")
    if any(d < 1 for d in div) or any(g < 1 or d % g for d, g in zip(div, grd)):
        raise NeurosegError(f"divisor {div} must be a positive multiple of grid {grd}", fix="check the model's grid")
    if any(s < 1 for s in shape):
        raise NeurosegError(f"cannot tile an empty volume of shape {tuple(shape)}", fix="pass a non-empty image")
    tiles = normalize_n_tiles(n_tiles, shape)
    padded = padded_shape(shape, div)
    axes = [_plan_1d(n, t, d, g, o) for n, t, d, g, o in zip(padded, tiles, div, grd, ovl)]
    plan = []
    for idx in itertools.product(*(range(len(a)) for a in axes)):
        parts = [axes[ax][i] for ax, i in enumerate(idx)]
        plan.append(
            Tile(
                index=tuple(idx),
                src=tuple(p[0] for p in parts),
                dst=tuple(p[1] for p in parts),
                crop=tuple(p[2] for p in parts),
                first=tuple(p[3] for p in parts),
                last=tuple(p[4] for p in parts),
            )
        )
    return plan


def _as_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr[np.newaxis]
    if arr.ndim != 4:
        raise NeurosegError(
            f"expected a (C, Z, Y, X) or (Z, Y, X) image, got shape {arr.shape}", fix="pass a 3D volume"
        )
    return arr if arr.dtype == np.float32 else arr.astype(np.float32)


def _as_outputs(out) -> tuple[np.ndarray, ...]:
    if isinstance(out, np.ndarray) or hasattr(out, "shape"):
        out = (out,)
    return tuple(np.asarray(o) for o in out)


def iter_tiles(
    forward: Forward,
    image: np.ndarray,
    *,
    n_tiles: int | Sequence[int] | None,
    divisor: int | Sequence[int],
    overlap: int | Sequence[int],
    grid: int | Sequence[int] = 1,
) -> Iterator[tuple[Tile, int, tuple[np.ndarray, ...]]]:
    """Yield ``(tile, n_total, outputs)`` for each planned tile, where ``outputs`` are the tile's
    forward outputs already cropped to its core (``tile.dst``, in padded output coordinates).

    Lower-level than :func:`predict_tiled`; use it to aggregate outputs sparsely.
    """
    x = _as_image(image)
    plan = plan_tiles(x.shape[1:], n_tiles, divisor, overlap, grid)
    xp = pad_to_divisor(x, divisor)
    for tile in plan:
        src = (slice(None),) + tile.src
        tile_in = np.ascontiguousarray(xp[src])
        outs = _as_outputs(forward(tile_in))
        crop = (slice(None),) + tile.crop
        yield tile, len(plan), tuple(o[crop] for o in outs)


def predict_tiled(
    forward: Forward,
    image: np.ndarray,
    *,
    n_tiles: int | Sequence[int] | None,
    divisor: int | Sequence[int],
    overlap: int | Sequence[int],
    grid: int | Sequence[int] = (1, 1, 1),
) -> ProgressGenerator[tuple[np.ndarray, ...]]:
    """Run ``forward`` over tiles of ``image`` (C, Z, Y, X) and assemble its outputs.

    ``forward`` takes a float32 (C, z, y, x) tile whose spatial size is a multiple of ``divisor``
    and returns one array or a tuple of arrays shaped (K, z/gz, y/gy, x/gx). The generator yields a
    :class:`Progress` per tile and returns the assembled outputs, each (K, ceil(Z/gz), ceil(Y/gy),
    ceil(X/gx)); with ``overlap`` ≥ the receptive field they equal the untiled outputs.
    """
    x = _as_image(image)
    grd = _per_axis(grid, 3, "grid")
    out_shape = tuple(int(math.ceil(s / g)) for s, g in zip(x.shape[1:], grd))
    outputs: list[np.ndarray] | None = None
    for i, (tile, total, outs) in enumerate(
        iter_tiles(forward, x, n_tiles=n_tiles, divisor=divisor, overlap=overlap, grid=grd)
    ):
        if outputs is None:
            outputs = [np.empty((o.shape[0],) + out_shape, dtype=o.dtype) for o in outs]
        dst = tuple(slice(d.start, min(d.stop, n)) for d, n in zip(tile.dst, out_shape))
        keep = tuple(slice(0, d.stop - d.start) for d in dst)
        for full, part in zip(outputs, outs):
            if part.shape[1:] != tuple(d.stop - d.start for d in tile.dst):
                raise NeurosegError(
                    f"forward returned spatial shape {part.shape[1:]} for tile core "
                    f"{tuple(d.stop - d.start for d in tile.dst)}",
                    fix="the forward function must return (K, z/gz, y/gy, x/gx) arrays",
                )
            full[(slice(None),) + dst] = part[(slice(None),) + keep]
        yield Progress(i + 1, total, f"tile {i + 1}/{total}")
    assert outputs is not None
    return tuple(outputs)


# ---------------------------------------------------------------------------------------------
# memory: automatic tile count and out-of-memory retry


def available_memory(device=None) -> int:
    """Free memory in bytes on ``device`` (a torch device or name; ``None`` = CPU RAM).

    CUDA: free device memory plus what PyTorch's caching allocator holds but does not use.
    CPU/MPS: ``psutil.virtual_memory().available`` (MPS shares system memory).
    """
    dev_type = getattr(device, "type", None) or (str(device).split(":")[0] if device is not None else "cpu")
    if dev_type == "cuda":
        import torch

        dev = torch.device(device)
        free, _total = torch.cuda.mem_get_info(dev)
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return int(free + max(cached, 0))
    import psutil

    return int(psutil.virtual_memory().available)


def _tile_extent(n: int, t: int, d: int, o: int) -> int:
    n_blocks = n // d
    t = max(1, min(t, n_blocks))
    core = int(math.ceil(n_blocks / t))
    ob = int(math.ceil(o / d)) if o > 0 else 0
    ext = core + (2 * ob if t > 2 else ob if t == 2 else 0)
    return min(n_blocks, ext) * d


def tile_input_shape(shape, n_tiles, divisor, overlap) -> tuple[int, ...]:
    """The largest tile input shape :func:`plan_tiles` produces (without planning)."""
    div = _per_axis(divisor, len(shape), "divisor")
    ovl = _per_axis(overlap, len(shape), "overlap")
    tiles = normalize_n_tiles(n_tiles, shape)
    return tuple(
        _tile_extent(n, t, d, o) for n, t, d, o in zip(padded_shape(shape, div), tiles, div, ovl)
    )


def more_tiles(
    n_tiles: Sequence[int], shape: Sequence[int], divisor: int | Sequence[int], overlap: int | Sequence[int] = 0
) -> tuple[int, ...] | None:
    """Double the tiles along the axis whose tiles are largest; ``None`` if no axis can be split
    further (every tile is a single divisor block)."""
    div = _per_axis(divisor, len(shape), "divisor")
    padded = padded_shape(shape, div)
    tiles = list(n_tiles)
    order = np.argsort([-p / t for p, t in zip(padded, tiles)], kind="stable")
    for ax in order:
        n_blocks = padded[ax] // div[ax]
        if tiles[ax] < n_blocks:
            tiles[ax] = min(n_blocks, tiles[ax] * 2)
            return tuple(tiles)
    return None


def auto_tiles(
    shape: Sequence[int],
    *,
    divisor: int | Sequence[int],
    overlap: int | Sequence[int],
    bytes_per_voxel: float,
    device=None,
    memory: int | None = None,
    fraction: float = 0.5,
) -> tuple[int, ...]:
    """Fewest tiles (doubling along the largest tile axis) whose largest tile needs at most
    ``fraction`` of the free memory on ``device``, given the model's peak ``bytes_per_voxel`` of
    tile input. ``memory`` overrides the measured free memory (bytes)."""
    budget = fraction * (available_memory(device) if memory is None else memory)
    tiles: tuple[int, ...] | None = (1,) * len(shape)
    best = tiles
    while tiles is not None:
        best = tiles
        need = math.prod(tile_input_shape(shape, tiles, divisor, overlap)) * bytes_per_voxel
        if need <= budget:
            return tiles
        tiles = more_tiles(tiles, shape, divisor, overlap)
    return best


def is_oom_error(err: BaseException) -> bool:
    """True for a device out-of-memory error (CUDA, MPS or a CPU allocation failure)."""
    if isinstance(err, MemoryError):
        return True
    try:
        import torch

        if isinstance(err, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _free_cache(device) -> None:
    try:
        import gc

        import torch

        gc.collect()
        if getattr(device, "type", str(device)).startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()
        elif str(getattr(device, "type", device)) == "mps" and hasattr(torch, "mps"):
            torch.mps.empty_cache()
    except Exception:  # pragma: no cover - best effort
        pass


def predict_tiled_auto(
    forward: Forward,
    image: np.ndarray,
    *,
    divisor: int | Sequence[int],
    overlap: int | Sequence[int],
    grid: int | Sequence[int] = (1, 1, 1),
    n_tiles: int | Sequence[int] | None = None,
    bytes_per_voxel: float | None = None,
    device=None,
    max_retries: int = 8,
    run: Callable[..., ProgressGenerator] | None = None,
) -> ProgressGenerator:
    """:func:`predict_tiled` with automatic tiles and out-of-memory retry.

    ``n_tiles=None`` picks tiles with :func:`auto_tiles` (needs ``bytes_per_voxel``; else one
    tile). On an out-of-memory error the run restarts with :func:`more_tiles` (up to
    ``max_retries`` times). ``run`` replaces :func:`predict_tiled` (same keyword arguments), e.g.
    a sparse variant. Returns whatever ``run`` returns.
    """
    x = _as_image(image)
    shape = x.shape[1:]
    run = predict_tiled if run is None else run
    if n_tiles is None:
        tiles = (
            auto_tiles(shape, divisor=divisor, overlap=overlap, bytes_per_voxel=bytes_per_voxel, device=device)
            if bytes_per_voxel
            else (1,) * len(shape)
        )
    else:
        tiles = normalize_n_tiles(n_tiles, shape)
    for attempt in range(max_retries + 1):
        try:
            return (yield from run(forward, x, n_tiles=tiles, divisor=divisor, overlap=overlap, grid=grid))
        except Exception as err:  # noqa: BLE001 - filtered below
            if not is_oom_error(err):
                raise
            _free_cache(device)
            nxt = more_tiles(tiles, shape, divisor, overlap)
            if nxt is None or attempt == max_retries:
                raise NeurosegError(
                    f"out of memory even with {tiles} tiles on {device or 'cpu'}",
                    fix="use a smaller image, free memory, or run on the CPU (--device cpu)",
                ) from err
            tiles = nxt
            yield Progress(0, math.prod(tiles), f"out of memory: retrying with {tiles} tiles")
    raise AssertionError("unreachable")  # pragma: no cover
