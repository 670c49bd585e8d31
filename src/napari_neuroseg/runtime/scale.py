"""Physical scale: the one home for voxel sizes, object sizes and resampling to a model's scale.

A model is trained at one voxel size and one range of object sizes (:class:`ModelScale`, stored
with the model: ``scale.json`` in a StarDist-3D model folder, a ``scale`` dict in a neuron
checkpoint or a ``<model>.scale.json`` sidecar next to it). An input has its own voxel size
(from the file's metadata, the napari layer's ``scale`` or ``--voxel-size``) and, optionally, a
known or estimated object size (``--object-size 3.2um`` / ``25vox`` / ``auto``). From these,
:func:`plan_scale` computes per-axis *factors* (output shape = input shape × factor): the input
is resampled by :func:`resample_image` (linear, Gaussian anti-aliasing on axes that shrink),
predicted at the model's scale, and the labels come back at the input's shape by
:func:`restore_labels` (nearest neighbour: every input voxel takes the label of the resampled
voxel it falls in).

The factor rule, per axis ``a`` (``v`` voxel sizes, ``d`` object diameters in µm)::

    f_a = (v_input_a / v_model_a) · (d_model / d_input)

- voxel size only: ``d_input = d_model`` (the model's typical object size is assumed);
- object size in µm: ``d_input`` as given;
- object size in voxels (Y/X voxels of the input) or ``auto``: ``d_input = D_vox · v_input_y``;
  without a known input voxel size the model's own anisotropy is assumed, i.e.
  ``f = d_model_vox / D_vox`` on every axis.

An unknown voxel size (a file without metadata: 1.0 on every axis) and no object size means
factors of 1 — the model sees the input as it is (the behaviour before this module existed).

No Qt, no torch: plain numpy/scipy, importable from the CLI, batch workers and widgets.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg.errors import NeurosegError

__all__ = [
    "ModelScale",
    "ObjectSize",
    "ScalePlan",
    "SizeEstimate",
    "estimate_object_diameter",
    "object_diameters_vox",
    "parse_object_size",
    "parse_voxel_size",
    "plan_scale",
    "read_scale_json",
    "resample_image",
    "resampled_shape",
    "restore_labels",
    "restore_nearest",
    "training_data_scale",
    "voxel_size_from_volume",
    "SCALE_FILE",
]

#: File name of a model folder's scale description.
SCALE_FILE = "scale.json"
#: Factors closer to 1 than this on every axis skip resampling.
IDENTITY_TOLERANCE = 0.03
#: A resampled volume may have at most this many times the input's voxels (upsampling guard) ...
MAX_GROWTH = 16.0
#: ... unless it stays below this many voxels.
SMALL_ENOUGH = 256**3

_UNIT_TO_UM = {
    "micrometer": 1.0, "micron": 1.0, "um": 1.0, "µm": 1.0, "\\u00B5m": 1.0, "μm": 1.0,
    "nanometer": 1e-3, "nm": 1e-3, "millimeter": 1e3, "mm": 1e3, "meter": 1e6, "m": 1e6,
    "angstrom": 1e-4,
}


# ---------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ModelScale:
    """The scale a model was trained at (plain JSON values only).

    ``voxel_size``: (Z, Y, X) in µm. ``object_diameter_vox``: the typical object diameter (nucleus
    diameter, neurite thickness) in Y/X voxels of the training data; ``object_diameter_range_vox``
    (lo, hi) the range seen in training. ``nominal``: True when the training data had no physical
    unit (synthetic) and ``voxel_size`` is a stated convention; ``note`` says how it was chosen."""

    voxel_size: tuple[float, float, float]
    object_diameter_vox: float
    object_diameter_range_vox: tuple[float, float] | None = None
    object_name: str = "object"
    nominal: bool = False
    note: str = ""

    @property
    def object_diameter_um(self) -> float:
        return self.object_diameter_vox * self.voxel_size[1]

    @property
    def anisotropy(self) -> float:
        """Z voxel size over Y voxel size."""
        return self.voxel_size[0] / self.voxel_size[1]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "voxel_size": [float(v) for v in self.voxel_size],
            "unit": "micrometer",
            "object_name": self.object_name,
            "object_diameter_vox": float(self.object_diameter_vox),
            "object_diameter_um": round(float(self.object_diameter_um), 4),
            "nominal": bool(self.nominal),
        }
        if self.object_diameter_range_vox is not None:
            d["object_diameter_range_vox"] = [float(v) for v in self.object_diameter_range_vox]
        if self.note:
            d["note"] = self.note
        return d

    @classmethod
    def from_dict(cls, d: Any, *, path: str | Path | None = None) -> "ModelScale":
        """Parse and check a scale dict (from ``scale.json`` or a checkpoint)."""
        fix = "write voxel_size [z, y, x] (µm) and object_diameter_vox (a positive number)"
        if not isinstance(d, dict):
            raise NeurosegError("the model's scale description is not a JSON object", path=path, fix=fix)
        try:
            vs = parse_voxel_size(d["voxel_size"], what="the model's voxel_size")
            unit = str(d.get("unit", "micrometer"))
            if unit not in _UNIT_TO_UM:
                raise NeurosegError(f"unknown unit {unit!r}", fix="use micrometer")
            vs = tuple(v * _UNIT_TO_UM[unit] for v in vs)
            diam = float(d["object_diameter_vox"])
            rng = d.get("object_diameter_range_vox")
            rng_t = None if rng is None else (float(rng[0]), float(rng[1]))
        except NeurosegError as err:
            raise NeurosegError(err.problem, path=path, fix=fix) from None
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise NeurosegError(f"the model's scale description is incomplete ({err!r})", path=path, fix=fix) from None
        if not (math.isfinite(diam) and diam > 0):
            raise NeurosegError(f"object_diameter_vox {diam} is not positive", path=path, fix=fix)
        return cls(vs, diam, rng_t, str(d.get("object_name", "object")), bool(d.get("nominal", False)),
                   str(d.get("note", "")))


def read_scale_json(path: str | Path) -> ModelScale | None:
    """The :class:`ModelScale` in a JSON file, or None when the file does not exist."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise NeurosegError(f"cannot read the model's scale file ({err})", path=p,
                            fix="fix or delete the file (without it the model does not resample)") from None
    return ModelScale.from_dict(d, path=p)


#: contrast stretch of the object-size estimate (a robust min/max; independent of any model's
#: normalisation, although equal to StarDist's)
_CONTRAST_PERCENTILES = (1.0, 99.8)
#: Y/X voxel size (µm) stated for training data without a physical unit (synthetic volumes):
#: the shipped nuclei model's convention (``scale.json``: 0.25 µm per Y/X voxel)
NOMINAL_YX_UM = 0.25


def object_diameters_vox(labels: np.ndarray, anisotropy: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Volume-equivalent sphere diameters, in Y/X voxels, of the objects of a 3D label volume that
    do not touch its border (cut objects would read small; all of them if every object does).
    ``anisotropy``: voxel size (Z, Y, X) relative to each other (only the ratios count)."""
    import fastremap

    lab = np.asarray(labels)
    ids, counts = fastremap.unique(lab, return_counts=True)
    keep = ids != 0
    ids, counts = ids[keep], counts[keep]
    if ids.size == 0:
        return np.zeros(0)
    faces = [lab[0], lab[-1], lab[:, 0], lab[:, -1], lab[:, :, 0], lab[:, :, -1]]
    cut = np.unique(np.concatenate([np.unique(f) for f in faces]))
    inner = ~np.isin(ids, cut)
    if inner.any():
        counts = counts[inner]
    az, ay, ax = (float(a) for a in anisotropy)
    return (6.0 / math.pi * counts * (az / ay) * (ax / ay)) ** (1.0 / 3.0)


def training_data_scale(
    labels: Sequence[np.ndarray],
    voxel_sizes: Sequence[Sequence[float] | None],
    anisotropy: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    object_name: str = "object",
) -> ModelScale:
    """The :class:`ModelScale` of a model trained from scratch on ``labels``: the voxel size of the
    training volumes when all of them have the same known one (``voxel_sizes``), else a nominal
    one (:data:`NOMINAL_YX_UM` per Y/X voxel, ``anisotropy`` for Z/X); the object diameters
    (:func:`object_diameters_vox`) measured on the labels: median as the typical size, the 5th to
    95th percentile as the range."""
    known = {tuple(float(v) for v in vs) for vs in voxel_sizes if vs is not None}
    nominal = not (len(known) == 1 and all(vs is not None for vs in voxel_sizes))
    if nominal:
        az, ay, ax = (float(a) for a in anisotropy)
        vs = (NOMINAL_YX_UM * az / ay, NOMINAL_YX_UM, NOMINAL_YX_UM * ax / ay)
    else:
        vs = known.pop()
    d = np.concatenate([object_diameters_vox(y, vs) for y in labels] or [np.zeros(0)])
    if d.size == 0:
        raise NeurosegError("the training labels hold no objects", fix="give label volumes with annotated objects")
    lo, typ, hi = (float(v) for v in np.percentile(d, [5, 50, 95]))
    note = (f"Measured on the training labels ({d.size} objects away from the volume borders: diameter "
            f"median {typ:.1f}, 5-95% {lo:.1f}-{hi:.1f} Y/X voxels). "
            + (f"The training data had no common physical voxel size: {NOMINAL_YX_UM} um per Y/X voxel is a "
               "convention (give --voxel-size, or --object-size when predicting)." if nominal else
               "Voxel size of the training data."))
    return ModelScale(vs, round(typ, 2), (round(lo, 2), round(hi, 2)), object_name, nominal, note)


# ---------------------------------------------------------------------------------------- input
def parse_voxel_size(value: Any, *, what: str = "voxel size") -> tuple[float, float, float]:
    """Three positive finite numbers (Z, Y, X) from a sequence or a string like ``"0.28 0.13 0.13"``
    (commas allowed); a NeurosegError otherwise."""
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,\s]+", value.strip()) if p]
    else:
        try:
            parts = list(value)
        except TypeError:
            parts = [value]
    try:
        vals = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise NeurosegError(f"{what} {value!r} is not three numbers", fix="give Z Y X in µm, e.g. 0.28 0.127 0.127") from None
    if len(vals) != 3 or not all(math.isfinite(v) and v > 0 for v in vals):
        raise NeurosegError(f"{what} {value!r} must be three positive numbers (Z Y X)",
                            fix="give Z Y X in µm, e.g. 0.28 0.127 0.127")
    return vals  # type: ignore[return-value]


def voxel_size_from_volume(vol: Any) -> tuple[float, float, float] | None:
    """The (Z, Y, X) voxel size in µm of a :class:`~napari_neuroseg.io.Volume`, or None when the
    file does not say (the readers put 1.0 on every axis then) or its unit is not a length."""
    scale = tuple(float(s) for s in (getattr(vol, "scale", None) or ()))
    if len(scale) != 3 or all(s == 1.0 for s in scale):
        return None
    unit = str((getattr(vol, "meta", None) or {}).get("unit", "micrometer")).strip()
    k = _UNIT_TO_UM.get(unit, _UNIT_TO_UM.get(unit.lower()))
    if k is None:
        return None
    return tuple(s * k for s in scale)  # type: ignore[return-value]


def voxel_size_from_layer_scale(scale: Sequence[float], units: Sequence[Any] | None = None,
                                metadata_unit: str | None = None) -> tuple[float, float, float] | None:
    """A napari layer's last three ``scale`` entries as a voxel size in µm, or None when it is not
    a physical size: all 1, or no length unit. The unit is the layer's ``units`` when those are
    lengths, else the file's unit the plugin's readers keep in ``metadata["unit"]``; a scale in
    napari's default ``pixel`` units (e.g. an anisotropy of 2, 1, 1 with no unit) is not a voxel size."""
    s = tuple(float(v) for v in list(scale)[-3:])
    if len(s) != 3 or all(v == 1.0 for v in s) or not all(math.isfinite(v) and v > 0 for v in s):
        return None
    names = [str(u) for u in list(units or [])[-3:]]
    if len(names) == 3 and all(n in _UNIT_TO_UM for n in names):
        factors = [_UNIT_TO_UM[n] for n in names]
    elif metadata_unit is not None and str(metadata_unit).strip() in _UNIT_TO_UM:
        factors = [_UNIT_TO_UM[str(metadata_unit).strip()]] * 3
    else:
        return None
    return tuple(v * k for v, k in zip(s, factors))  # type: ignore[return-value]


@dataclass(frozen=True)
class ObjectSize:
    """A requested object size: ``value`` in ``unit`` (``"um"`` or ``"vox"``: Y/X voxels of the
    input), or ``auto`` (estimate it from the image)."""

    value: float | None
    unit: str = "um"

    @property
    def auto(self) -> bool:
        return self.value is None

    def __str__(self) -> str:
        return "auto" if self.auto else f"{self.value:g} {self.unit}"


def parse_object_size(value: Any) -> ObjectSize | None:
    """``None``/``""``/``"none"`` → None; ``"auto"``; ``"3.2"``/``"3.2 um"``/``"3.2µm"`` (µm);
    ``"25 vox"``/``"25vox"``/``"25 px"`` (Y/X voxels); a sequence ``[VALUE, UNIT]`` (CLI nargs)."""
    if value is None or isinstance(value, ObjectSize):
        return value
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    if isinstance(value, (int, float)):
        value = str(value)
    s = str(value).strip().lower()
    if s in ("", "none", "off"):
        return None
    if s == "auto":
        return ObjectSize(None)
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(um|µm|μm|micron|microns|micrometer|vox|voxel|voxels|px|pixels?)?", s)
    if not m:
        raise NeurosegError(f"object size {value!r} is not understood",
                            fix="give e.g. 'auto', '3.2 um' or '25 vox' (nucleus diameter)")
    v = float(m.group(1))
    unit = "vox" if (m.group(2) or "um").startswith(("vox", "px", "pix")) else "um"
    if not (math.isfinite(v) and v > 0):
        raise NeurosegError(f"object size {value!r} must be positive", fix="give e.g. '3.2 um' or '25 vox'")
    return ObjectSize(v, unit)


# ---------------------------------------------------------------------------------------- plan
@dataclass
class ScalePlan:
    """What :func:`plan_scale` decided: per-axis ``factors`` (output = input × factor; all 1 =
    no resampling), ``reason`` in words, the input voxel size used, the object diameter assumed
    for the input (µm where known, else Y/X voxels) and the auto estimate if one was made."""

    factors: tuple[float, float, float]
    reason: str
    voxel_size: tuple[float, float, float] | None = None
    object_diameter_vox: float | None = None
    estimate: "SizeEstimate | None" = None
    info: dict = field(default_factory=dict)

    @property
    def identity(self) -> bool:
        return all(abs(f - 1.0) <= IDENTITY_TOLERANCE for f in self.factors)

    def describe(self) -> str:
        f = " × ".join(f"{v:.3g}" for v in self.factors)
        parts = [f"scale {f} (Z Y X)" if not self.identity else "no rescaling", self.reason]
        if self.estimate is not None:
            parts.append(f"auto object size {self.estimate.diameter_vox:.1f} vox"
                         + (f" = {self.estimate.diameter_vox * self.voxel_size[1]:.2f} µm" if self.voxel_size else ""))
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "factors": [float(f) for f in self.factors], "reason": self.reason,
            "voxel_size": None if self.voxel_size is None else [float(v) for v in self.voxel_size],
            "object_diameter_vox": self.object_diameter_vox,
            "estimate": None if self.estimate is None else self.estimate.to_dict(),
            "text": self.describe(),
        }


def plan_scale(
    model_scale: ModelScale | None,
    *,
    voxel_size: Sequence[float] | None = None,
    object_size: ObjectSize | str | None = None,
    image: np.ndarray | None = None,
    factors: Sequence[float] | None = None,
) -> ScalePlan:
    """The per-axis resampling factors for an input (see the module docstring for the rule).

    ``image`` (Z, Y, X) is needed only for ``object_size="auto"``. ``factors`` given explicitly
    win over everything (batch blocks reuse the plan of the whole volume)."""
    if factors is not None:
        f = tuple(float(v) for v in factors)
        if len(f) != 3 or not all(math.isfinite(v) and v > 0 for v in f):
            raise NeurosegError(f"resampling factors {factors!r} must be three positive numbers", fix="e.g. 0.5 1 1")
        return ScalePlan(f, "factors given")  # type: ignore[arg-type]
    vs = None if voxel_size is None else parse_voxel_size(voxel_size)
    obj = parse_object_size(object_size)
    if model_scale is None:
        if obj is not None:
            raise NeurosegError("the model does not say at which scale it was trained, so an object size cannot be used",
                                fix="add a scale.json to the model folder (see docs/nuclei-model-card.md) or drop --object-size")
        return ScalePlan((1.0, 1.0, 1.0), "the model has no stored scale", vs)
    vm = model_scale.voxel_size
    if obj is None:
        if vs is None:
            return ScalePlan((1.0, 1.0, 1.0), "voxel size unknown: the image is used as it is", None)
        f = tuple(a / b for a, b in zip(vs, vm))
        return ScalePlan(f, f"voxel size {_fmt3(vs)} µm, model {_fmt3(vm)} µm"  # type: ignore[arg-type]
                         + (" (nominal)" if model_scale.nominal else ""), vs, model_scale.object_diameter_um / vs[1])
    est = None
    if obj.auto and model_scale.object_name == "neurite":
        raise NeurosegError(
            "an automatic neurite thickness is not available: the estimator tried (scale-space tube "
            "detection) was not reliable on volumes it was not tuned on (docs/neurons.md, 'Object size')",
            fix="give the neurite thickness (e.g. '1.3 um' or '3 vox') or only the voxel size")
    if obj.auto:
        if image is None:
            raise NeurosegError("object size 'auto' needs the image", fix="pass the image to plan_scale")
        az = (vs[0] / vs[1]) if vs is not None else model_scale.anisotropy
        est = estimate_object_diameter(image, anisotropy=az)
        d_vox = est.diameter_vox
        how = "estimated"
    elif obj.unit == "vox":
        d_vox = float(obj.value)  # type: ignore[arg-type]
        how = "given"
    else:
        if vs is None:
            raise NeurosegError(f"object size {obj} needs the image's voxel size",
                                fix="give --voxel-size Z Y X (µm) or the object size in voxels ('25 vox')")
        d_vox = float(obj.value) / vs[1]  # type: ignore[arg-type]
        how = "given"
    dm = model_scale.object_diameter_vox
    if vs is None:
        f = (dm / d_vox,) * 3
        why = f"object diameter {d_vox:.1f} vox ({how}), model {dm:.1f} vox; voxel size unknown: model anisotropy assumed"
    else:
        ratio = model_scale.object_diameter_um / (d_vox * vs[1])
        f = tuple(a / b * ratio for a, b in zip(vs, vm))
        why = (f"object diameter {d_vox * vs[1]:.2f} µm ({how}), model {model_scale.object_diameter_um:.2f} µm; "
               f"voxel size {_fmt3(vs)} µm")
    return ScalePlan(f, why, vs, d_vox, est)  # type: ignore[arg-type]


def _fmt3(v: Sequence[float]) -> str:
    return " × ".join(f"{x:.4g}" for x in v)


# ---------------------------------------------------------------------------------------- resampling
def resampled_shape(shape: Sequence[int], factors: Sequence[float]) -> tuple[int, ...]:
    """``round(shape × factor)`` per spatial axis, at least 1."""
    return tuple(max(1, int(round(s * f))) for s, f in zip(shape, factors))


def check_growth(shape: Sequence[int], factors: Sequence[float], *, path: str | None = None) -> None:
    """Refuse upsampling that would blow the volume up beyond :data:`MAX_GROWTH` × (and
    :data:`SMALL_ENOUGH` voxels)."""
    new = resampled_shape(shape, factors)
    n0, n1 = math.prod(shape), math.prod(new)
    if n1 > max(MAX_GROWTH * n0, SMALL_ENOUGH):
        raise NeurosegError(
            f"rescaling to the model's scale (factors {_fmt3(factors)}) would turn {tuple(shape)} into {new} voxels",
            path=path, fix="check the voxel size / object size (the objects look far smaller than the model's)",
        )


def resample_image(image: np.ndarray, factors: Sequence[float], *, channel_axis: int | None = None) -> np.ndarray:
    """Resample a (Z, Y, X) image — or one with a channel axis — by per-axis ``factors`` to
    :func:`resampled_shape`: float32, linear interpolation (``scipy.ndimage.zoom`` order 1,
    ``grid_mode=True`` so voxel *areas* line up, as ``skimage.transform.resize`` does), after a
    Gaussian anti-aliasing blur of σ = (1/f − 1)/2 on every axis that shrinks (skimage's rule)."""
    from scipy import ndimage as ndi

    x = np.asarray(image)
    if channel_axis is not None:
        x = np.moveaxis(x, channel_axis, 0)
        out = np.stack([resample_image(c, factors) for c in x])
        return np.moveaxis(out, 0, channel_axis)
    if x.ndim != 3:
        raise NeurosegError(f"resampling needs a 3D volume, got shape {x.shape}", fix="pass (Z, Y, X)")
    x = x.astype(np.float32, copy=False)
    new = resampled_shape(x.shape, factors)
    if new == x.shape:
        return x
    zoom = [n / s for n, s in zip(new, x.shape)]
    sigma = [max(0.0, (1.0 / z - 1.0) / 2.0) for z in zoom]
    if any(s > 0 for s in sigma):
        x = ndi.gaussian_filter(x, sigma, mode="nearest")
    return ndi.zoom(x, zoom, order=1, mode="nearest", grid_mode=True).astype(np.float32, copy=False)


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """For each of ``n_out`` voxels, the index of the voxel of an ``n_in``-long axis covering the
    same extent whose area holds its centre."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.intp), n_in - 1)


def restore_nearest(arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of the last three axes of ``arr`` to ``shape`` (labels,
    uint8 probability maps): exact ids, no new values, same dtype."""
    a = np.asarray(arr)
    shape = tuple(int(s) for s in shape)
    if a.shape[-3:] == shape:
        return a
    idx = [_nearest_index(n, m) for n, m in zip(shape, a.shape[-3:])]
    lead = (slice(None),) * (a.ndim - 3)
    return np.ascontiguousarray(a[lead + np.ix_(*idx)])


def restore_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Labels predicted on a resampled volume back at the input's ``shape`` (nearest neighbour)."""
    return restore_nearest(labels, shape)


# ---------------------------------------------------------------------------------------- auto size
@dataclass
class SizeEstimate:
    """Result of :func:`estimate_object_diameter`: the median blob diameter in Y/X voxels, the
    number of blobs it is the median of, their 25th/75th percentiles and the crop used."""

    diameter_vox: float
    n_blobs: int
    quartiles: tuple[float, float]
    crop_shape: tuple[int, int, int]
    method: str = "scale-normalised LoG blobs"

    def to_dict(self) -> dict[str, Any]:
        return {"diameter_vox": float(self.diameter_vox), "n_blobs": int(self.n_blobs),
                "quartiles": [float(q) for q in self.quartiles], "crop_shape": list(self.crop_shape),
                "method": self.method}


#: blob diameters are weighted by d**WEIGHT_POWER for the median (see estimate_object_diameter)
WEIGHT_POWER = 3.0
#: diameter of a ball = this × the σ at which its scale-normalised 3D LoG response peaks (2·√3)
LOG_DIAMETER_PER_SIGMA = 2.0 * math.sqrt(3.0)


def _central_crop(x: np.ndarray, anisotropy: float, max_yx: int) -> np.ndarray:
    max_z = max(8, int(round(max_yx / max(anisotropy, 1e-3))))
    sl = []
    for n, m in zip(x.shape, (max_z, max_yx, max_yx)):
        m = min(n, m)
        a = (n - m) // 2
        sl.append(slice(a, a + m))
    return x[tuple(sl)]


def estimate_object_diameter(
    image: np.ndarray,
    *,
    anisotropy: float = 1.0,
    diameters: tuple[float, float] = (5.0, 90.0),
    n_scales: int = 16,
    max_crop_yx: int = 160,
    max_blobs: int = 400,
) -> SizeEstimate:
    """Estimate the typical diameter (Y/X voxels) of bright blobs (nuclei) in a (Z, Y, X) image.

    Method: on a central crop (at most ``max_crop_yx`` Y/X voxels, percentile-normalised), the
    scale-normalised Laplacian of Gaussian ``−Σ σ_a² ∂²_a (G_σ * I)`` is computed at ``n_scales``
    geometric σ (σ_z = σ_y / ``anisotropy``, ``anisotropy`` = Z voxel size / Y voxel size) covering
    ``diameters``; each scale runs on a block-averaged copy (about 2 voxels per σ) so large scales
    stay cheap. Blobs are the voxels that are maxima in space (3×3×3 in that scale's grid) and in
    scale (against both neighbouring scales at the same physical point), away from the crop's
    edge; the strongest ``max_blobs`` above 30 % of the 90th-percentile response are kept. A ball
    of diameter d peaks at σ = d / (2√3), so the estimate is the median of 2√3·σ over the blobs."""
    x = np.asarray(image)
    if x.ndim != 3:
        raise NeurosegError(f"the size estimate needs a 3D volume, got shape {x.shape}", fix="pass (Z, Y, X)")
    x = _central_crop(x, anisotropy, max_crop_yx).astype(np.float32)
    lo, hi = np.percentile(x, _CONTRAST_PERCENTILES)
    if not hi > lo:
        raise NeurosegError("the image is constant: no object size can be estimated",
                            fix="give the object size (e.g. '25 vox') or the voxel size instead")
    x = (x - lo) / (hi - lo)
    d0, d1 = diameters
    d1 = max(d0 * 1.5, min(d1, min(x.shape[1], x.shape[2], x.shape[0] * float(anisotropy)) / 2.0))  # an object fits twice
    sig_y = np.geomspace(d0, d1, n_scales) / LOG_DIAMETER_PER_SIGMA
    az = float(anisotropy)
    resp, grids = _log_responses(x, sig_y, az)
    arr = _scale_space_maxima(resp, grids, sig_y, az, np.array(x.shape, float))
    arr = arr[arr[:, 0] >= 0.3 * np.percentile(arr[:, 0], 90)]  # weak maxima: noise
    arr = arr[np.lexsort((-arr[:, 0], -arr[:, 1]))][:5000]  # larger scale first, then stronger
    arr = _drop_nested_blobs(arr, sig_y, az)
    arr = arr[np.argsort(-arr[:, 0])][:max_blobs]
    d = sig_y[arr[:, 1].astype(int)] * LOG_DIAMETER_PER_SIGMA
    q25, q50, q75 = _volume_weighted_quantiles(d, (0.25, 0.5, 0.75))
    return SizeEstimate(float(q50), int(len(d)), (float(q25), float(q75)), tuple(int(s) for s in x.shape))  # type: ignore[arg-type]


def _log_responses(x: np.ndarray, sig_y: np.ndarray, az: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The scale-normalised LoG response at each σ (σ_z = σ_y / ``az``), each on a block-averaged
    copy of ``x`` (about 2 voxels per σ), with the block size of each."""
    from scipy import ndimage as ndi

    resp, grids = [], []
    for s in sig_y:
        sig = np.array([s / az, s, s])
        q = np.maximum(1, np.floor(sig / 2.0)).astype(int)
        q = np.minimum(q, np.maximum(1, np.array(x.shape) // 8))
        xs = _block_mean(x, q)
        var = np.maximum(sig**2 - (q**2 - 1) / 12.0, 0.25)
        sd = np.sqrt(var) / q  # σ in the block-averaged grid
        r = np.zeros(xs.shape, np.float32)
        for a in range(3):
            order = [0, 0, 0]
            order[a] = 2
            r -= np.float32(sd[a] ** 2) * ndi.gaussian_filter(xs, sd, order=order, mode="reflect")
        resp.append(r)
        grids.append(q)
    return resp, grids


def _scale_space_maxima(resp, grids, sig_y: np.ndarray, az: float, shape: np.ndarray) -> np.ndarray:
    """Rows ``(response, scale index, centre z, y, x in crop voxels)`` of the voxels that are
    maxima in space (3×3×3) and against both neighbouring scales, away from the crop's edge."""
    from scipy import ndimage as ndi

    cands = []
    for i in range(1, len(resp) - 1):  # a scale maximum needs both neighbouring scales
        r, q = resp[i], grids[i]
        peak = (r == ndi.maximum_filter(r, size=3, mode="nearest")) & (r > 0)
        idx = np.argwhere(peak)
        if idx.size == 0:
            continue
        vals = r[tuple(idx.T)]
        centre = (idx + 0.5) * q  # crop-voxel coordinates of the block centres
        sig = np.array([sig_y[i] / az, sig_y[i], sig_y[i]])
        margin = np.minimum(sig, shape / 4)
        keep = np.all((centre >= margin) & (centre <= shape - margin), axis=1)
        for j in (i - 1, i + 1):
            keep &= vals > _sample(resp[j], grids[j], centre)
        for v, c in zip(vals[keep], centre[keep]):
            cands.append((float(v), i, *map(float, c)))
    if not cands:
        raise NeurosegError("no blob-like objects found for the automatic size estimate",
                            fix="give the object size (e.g. '25 vox') or the voxel size instead")
    return np.array(cands)


def _drop_nested_blobs(arr: np.ndarray, sig_y: np.ndarray, az: float) -> np.ndarray:
    """Pruning as skimage's ``blob_log`` does it: of two blobs where one's centre lies inside the
    other (physical units, Y/X voxels), the smaller goes (``arr`` sorted larger scale first):
    chromatin spots and nucleoli inside a nucleus are not objects of their own."""
    phys = arr[:, 2:5] * np.array([az, 1.0, 1.0])
    rad = sig_y[arr[:, 1].astype(int)] * LOG_DIAMETER_PER_SIGMA / 2
    acc: list[int] = []
    for k in range(len(arr)):
        if acc:
            a = np.asarray(acc)
            dist = np.sqrt(((phys[a] - phys[k]) ** 2).sum(1))
            if np.any(dist < rad[a]):
                continue
        acc.append(k)
    return arr[acc]


def _volume_weighted_quantiles(d: np.ndarray, qs: Sequence[float]) -> tuple[float, ...]:
    """Quantiles of the diameters ``d`` weighted by d^WEIGHT_POWER (volume): the diameter of the
    blobs that hold the median blob volume; many small texture/noise maxima barely count."""
    order = np.argsort(d)
    w = np.cumsum(d[order] ** WEIGHT_POWER)
    w /= w[-1]
    return tuple(float(d[order][np.searchsorted(w, q)]) for q in qs)


def _block_mean(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    if np.all(q == 1):
        return x
    from skimage.measure import block_reduce

    return block_reduce(x, tuple(int(v) for v in q), np.mean).astype(np.float32)


def _sample(r: np.ndarray, q: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """``r`` (a grid block-averaged by ``q``) at crop-voxel points, nearest block."""
    idx = np.floor(centre / q).astype(int)
    idx = np.clip(idx, 0, np.array(r.shape) - 1)
    return r[tuple(idx.T)]
