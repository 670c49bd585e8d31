"""StarDist-3D model configuration (the keys of a Keras ``config.json``), tolerant of unknown keys,
and the ``thresholds.json`` defaults."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from napari_neuroseg.errors import NeurosegError

__all__ = ["BACKBONES", "NORM_PERCENTILES", "StarDistConfig", "Thresholds", "load_thresholds"]

BACKBONES = ("unet", "resnet")
#: the image normalisation of every StarDist-3D model (csbdeep's): per-channel percentiles low/high
#: mapped to 0/1, at training and prediction time alike (a BioImage.IO package may state others)
NORM_PERCENTILES: tuple[float, float] = (1.0, 99.8)
_ACTIVATIONS = ("relu", "linear", "elu", "sigmoid", "tanh", "softplus", "selu", "swish", "gelu", None)


def _triple(value: Any, name: str, cast=int) -> tuple:
    if value is None:
        raise NeurosegError(f"config key {name!r} is missing a value", fix="give three values (Z, Y, X)")
    if isinstance(value, (int, float)):
        value = (value,) * 3
    try:
        out = tuple(cast(v) for v in value)
    except (TypeError, ValueError) as err:
        raise NeurosegError(f"config key {name!r} has a bad value {value!r}", fix="give three numbers (Z, Y, X)") from err
    if len(out) != 3:
        raise NeurosegError(f"config key {name!r} must have 3 values, got {value!r}", fix="give three values (Z, Y, X)")
    return out


@dataclass
class StarDistConfig:
    """The architecture-relevant part of a StarDist-3D ``config.json``; every other key is kept in
    ``extra`` (so newer or training-only keys round-trip untouched)."""

    n_rays: int = 96
    grid: tuple[int, int, int] = (1, 1, 1)
    anisotropy: tuple[float, float, float] | None = None
    backbone: str = "unet"
    n_channel_in: int = 1
    n_classes: int | None = None
    rays_json: dict | None = None
    axes: str = "ZYXC"
    # U-Net
    unet_n_depth: int = 2
    unet_kernel_size: tuple[int, int, int] = (3, 3, 3)
    unet_n_filter_base: int = 32
    unet_n_conv_per_depth: int = 2
    unet_pool: tuple[int, int, int] = (2, 2, 2)
    unet_activation: str = "relu"
    unet_last_activation: str | None = "relu"
    unet_batch_norm: bool = False
    unet_dropout: float = 0.0
    unet_expansion: int = 2
    unet_prefix: str = ""
    net_conv_after_unet: int = 128
    # ResNet
    resnet_n_blocks: int = 4
    resnet_kernel_size: tuple[int, int, int] = (3, 3, 3)
    resnet_n_filter_base: int = 32
    resnet_n_conv_per_block: int = 3
    resnet_activation: str = "relu"
    resnet_batch_norm: bool = False
    net_conv_after_resnet: int = 128
    #: every other key of the file (train_*, keys of newer versions, ...)
    extra: dict[str, Any] = field(default_factory=dict)

    # -- parsing ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], *, path: str | Path | None = None) -> "StarDistConfig":
        """Parse a config dict; unknown keys go to ``extra``; bad values raise NeurosegError."""
        if not isinstance(d, dict):
            raise NeurosegError("config is not a JSON object", path=path, fix="use a StarDist config.json")
        names = {f.name for f in fields(cls)} - {"extra"}
        kw = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        try:
            cfg = cls(**kw, extra=extra)
            cfg._validate()
        except NeurosegError as err:
            if path is not None and err.path is None:
                raise NeurosegError(err.problem, path=path, fix=err.fix) from None
            raise
        except (TypeError, ValueError) as err:
            raise NeurosegError(f"invalid config: {err}", path=path, fix="check config.json") from err
        return cfg

    @classmethod
    def from_json(cls, path: str | Path) -> "StarDistConfig":
        path = Path(path)
        if not path.is_file():
            raise NeurosegError("config.json not found", path=path, fix="point to a StarDist model folder")
        try:
            d = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise NeurosegError(f"config.json is not valid JSON ({err})", path=path, fix="restore the file") from err
        return cls.from_dict(d, path=path)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
        d.update(extra)
        d["n_dim"] = 3
        return d

    def _validate(self) -> None:
        self.backbone = str(self.backbone).lower()
        if self.backbone not in BACKBONES:
            raise NeurosegError(
                f"unknown backbone {self.backbone!r}", fix=f"use one of {', '.join(BACKBONES)} in config.json"
            )
        self.grid = _triple(self.grid, "grid")
        if any(g < 1 or (g & (g - 1)) for g in self.grid):
            raise NeurosegError(f"grid {self.grid} must be powers of 2", fix="fix 'grid' in config.json")
        if self.anisotropy is not None:
            self.anisotropy = _triple(self.anisotropy, "anisotropy", float)
        self.n_rays = int(self.n_rays)
        self.n_channel_in = int(self.n_channel_in)
        if self.n_rays < 4 or self.n_channel_in < 1:
            raise NeurosegError(
                f"n_rays={self.n_rays}, n_channel_in={self.n_channel_in} out of range", fix="check config.json"
            )
        if self.n_classes is not None:
            raise NeurosegError(
                f"multi-class StarDist models (n_classes={self.n_classes}) are not supported",
                fix="use a single-class model",
            )
        self.unet_kernel_size = _triple(self.unet_kernel_size, "unet_kernel_size")
        self.unet_pool = _triple(self.unet_pool, "unet_pool")
        self.resnet_kernel_size = _triple(self.resnet_kernel_size, "resnet_kernel_size")
        for name in ("unet_kernel_size", "resnet_kernel_size"):
            if any(k < 1 for k in getattr(self, name)):
                raise NeurosegError(f"{name} must be positive", fix="check config.json")
        if self.backbone == "unet" and (self.unet_batch_norm or self.unet_n_depth < 0 or self.unet_n_conv_per_depth < 1):
            raise NeurosegError(
                "unsupported U-Net settings (batch norm, or bad depth/conv count)", fix="use a standard StarDist U-Net"
            )
        if self.backbone == "resnet" and (self.resnet_batch_norm or self.resnet_n_conv_per_block < 2):
            raise NeurosegError(
                "unsupported ResNet settings (batch norm, or fewer than 2 convs per block)",
                fix="use a standard StarDist ResNet",
            )
        for name in ("unet_activation", "unet_last_activation", "resnet_activation"):
            if getattr(self, name) not in _ACTIVATIONS:
                raise NeurosegError(f"unsupported activation {getattr(self, name)!r} for {name}", fix="use 'relu'")
        self.check_size()

    def check_size(self, *, training: bool = False) -> int:
        """Refuse a network whose weights do not fit in memory (huge filter counts) before it is
        built: the parameters are counted on torch's ``meta`` device. Returns the count."""
        from napari_neuroseg.models.stardist3d.network import build_network
        from napari_neuroseg.runtime.memory import require_network_fits

        return require_network_fits(
            lambda: build_network(self), what="the StarDist-3D network", training=training,
            fix="use fewer filters (unet_n_filter_base / resnet_n_filter_base, net_conv_after_*, "
                "--n-filter-base, --conv-after) or a smaller depth",
        )

    # -- derived ---------------------------------------------------------------------------
    @property
    def divisor(self) -> tuple[int, int, int]:
        """The input size must be a multiple of this on each axis (grid · pool^depth for U-Net)."""
        if self.backbone == "unet":
            return tuple(p**self.unet_n_depth * g for p, g in zip(self.unet_pool, self.grid))  # type: ignore[return-value]
        return tuple(self.grid)  # type: ignore[return-value]

    @property
    def receptive_field(self) -> tuple[int, int, int]:
        """A conservative per-side receptive field in input voxels (used as the tile overlap)."""
        return tuple(_receptive_field_1d(self, ax) for ax in range(3))  # type: ignore[return-value]


def _receptive_field_1d(cfg: StarDistConfig, ax: int) -> int:
    r, j = 0, 1

    def conv(k: int, s: int = 1) -> None:
        nonlocal r, j
        r += (k // 2 + (1 if s > 1 else 0)) * j
        j *= s

    def pool(p: int) -> None:
        nonlocal r, j
        r += (p - 1) * j
        j *= p

    def up(p: int) -> None:
        nonlocal r, j
        j //= p
        r += (p - 1) * j

    if cfg.backbone == "resnet":
        k = cfg.resnet_kernel_size[ax]
        conv(7)
        conv(3)
        pooled = 1
        for _ in range(cfg.resnet_n_blocks):
            s = 2 if cfg.grid[ax] > pooled else 1
            pooled *= s
            conv(k, s)
            for _ in range(cfg.resnet_n_conv_per_block - 1):
                conv(k)
        if cfg.net_conv_after_resnet > 0:
            conv(k)
    else:
        k = cfg.unet_kernel_size[ax]
        p = cfg.unet_pool[ax]
        # the pre-pooling loop runs log2(max(grid)) times; each time every axis gets the convs
        n_pre = int(round(math.log2(max(cfg.grid))))
        pooled = 1
        for _ in range(n_pre):
            s = 2 if cfg.grid[ax] > pooled else 1
            pooled *= s
            for _ in range(cfg.unet_n_conv_per_depth):
                conv(k)
            pool(s)
        for _ in range(cfg.unet_n_depth):
            for _ in range(cfg.unet_n_conv_per_depth):
                conv(k)
            pool(p)
        for _ in range(cfg.unet_n_conv_per_depth):
            conv(k)
        for _ in range(cfg.unet_n_depth):
            up(p)
            for _ in range(cfg.unet_n_conv_per_depth):
                conv(k)
        if cfg.net_conv_after_unet > 0:
            conv(k)
    return int(r)


@dataclass(frozen=True)
class Thresholds:
    """Post-processing values of a model: probability and NMS thresholds, and ``border``: how many
    grid voxels at the volume's edge hold no object centres (``stardist``'s ``b``, 2; a model
    trained on patches with cut nuclei may do better with 0, chosen on validation data)."""

    prob: float = 0.5
    nms: float = 0.4
    border: int = 2

    def to_dict(self) -> dict:
        """The ``thresholds.json`` content."""
        return {"prob": self.prob, "nms": self.nms, "border": self.border}

    @classmethod
    def from_dict(cls, d: object, *, path: str | Path | None = None) -> "Thresholds":
        """Values from a ``thresholds.json``-like dict. A missing key (or ``null``) gives the
        StarDist default (prob 0.5, nms 0.4, border 2); a value of the wrong type or out of range
        (prob/nms not a number in (0, 1), border not a whole number >= 0) is a NeurosegError
        naming the key, never a silent default. ``None`` (no thresholds stored) gives defaults."""
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise NeurosegError(
                f"the thresholds are a JSON {type(d).__name__}, not an object",
                path=path, fix='write {"prob": 0.5, "nms": 0.4, "border": 2} (or delete the file for the defaults)',
            )

        def _get(key: str, default: float) -> float:
            v = d.get(key)
            if v is None:
                return default
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 < v < 1.0):
                raise NeurosegError(
                    f"thresholds value {key!r} is {v!r}, not a number between 0 and 1",
                    path=path, fix=f"set {key!r} to a number such as {default} (or remove it for the default)",
                )
            return float(v)

        default = cls()  # the field defaults above
        return cls(prob=_get("prob", default.prob), nms=_get("nms", default.nms), border=_border(d.get("border"), path))


def load_thresholds(path: str | Path) -> Thresholds:
    """Read ``thresholds.json``; a missing file or key gives the StarDist defaults (prob 0.5,
    nms 0.4, border 2); an unreadable file or a bad value is a NeurosegError."""
    path = Path(path)
    if not path.is_file():
        return Thresholds()
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NeurosegError(f"thresholds.json is not valid JSON ({err})", path=path,
                            fix="restore the file, or delete it to use the defaults") from err
    return Thresholds.from_dict(d, path=path)


def _border(value: object, path: str | Path | None = None) -> int:
    """A ``border`` value from a file: a non-negative whole number; absent/null gives stardist's 2."""
    if value is None:
        return Thresholds.border
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value >= 0 and value == int(value)):
        raise NeurosegError(
            f"thresholds value 'border' is {value!r}, not a whole number >= 0",
            path=path, fix="set 'border' to 0, 2 or another count of grid voxels (or remove it for 2)",
        )
    return int(value)
