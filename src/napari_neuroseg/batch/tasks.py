"""The task interface of batch runs and the registry of tasks.

A :class:`Task` turns one image (a whole volume or one block of it, with a halo) into a label
volume, or — for metric tasks — one input file into a row of numbers. The batch machinery
(files, blocks, stitching, Dask, manifest) is generic over this interface; the real segmenters
are thin adapters in :mod:`napari_neuroseg.batch.adapters` that import their packages lazily.

Built-in tasks: ``threshold`` (smoothing + a global threshold or Otsu + connected components; a
legitimate tool for bright, well separated blobs and the reference for stitching tests),
``nuclei`` (StarDist-3D), ``neurons`` (FISBe neuron segmenter) and ``evaluate`` (FISBe metrics).
A user task can be named as ``"package.module:ClassName"`` (a :class:`Task` subclass).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from napari_neuroseg.errors import NeurosegError


@dataclass(frozen=True)
class Param:
    """One task parameter, shared by the CLI (``--name``) and the widget."""

    name: str
    type: type
    default: Any
    help: str = ""
    choices: tuple | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def convert(self, value: Any) -> Any:
        """Convert a value (possibly a CLI string) to this parameter's type."""
        if value is None:
            return None
        try:
            if self.type is bool and isinstance(value, str):
                low = value.strip().lower()
                if low not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                    raise ValueError(value)
                out: Any = low in {"1", "true", "yes", "on"}
            elif self.type in (int, float, str, bool):
                out = self.type(value)
            else:
                out = value
        except (TypeError, ValueError):
            raise NeurosegError(
                f"parameter {self.name}={value!r} is not a valid {self.type.__name__}",
                fix=f"give {self.flag} a {self.type.__name__}",
            ) from None
        if self.choices is not None and out not in self.choices:
            raise NeurosegError(
                f"parameter {self.name}={out!r} is not one of {list(self.choices)}",
                fix=f"choose {self.flag} from {', '.join(map(str, self.choices))}",
            )
        return out


class Task:
    """Base class of batch tasks.

    Subclasses set the class attributes and implement :meth:`segment` (``output = "labels"``)
    or :meth:`evaluate_file` (``output = "metrics"``). Instances must be picklable (they are sent
    to Dask workers), so keep state in plain attributes and load models lazily.
    """

    name: ClassVar[str] = "task"
    description: ClassVar[str] = ""
    #: ``"labels"`` (writes a label volume per input) or ``"metrics"`` (a JSON row per input).
    output: ClassVar[str] = "labels"
    #: blockwise stitching: ``"centre"`` (objects smaller than the halo, kept by the block that
    #: owns their centre), ``"faces"`` (objects of any size joined where they touch across block
    #: faces: exact for connected components) or ``"overlap"`` (objects of any size matched by
    #: their overlap where neighbouring halo'd blocks overlap: touching objects stay apart).
    stitch: ClassVar[str] = "faces"
    #: ``overlap`` stitching: the share of the smaller label's voxels in the overlap region that
    #: two labels of neighbouring blocks must have in common to be joined.
    overlap_fraction: ClassVar[float] = 0.5
    #: default halo (Z, Y, X) in voxels added around each block.
    default_halo: ClassVar[tuple[int, int, int]] = (8, 8, 8)
    #: parameter whose size filter must be applied globally after stitching (``faces`` mode).
    min_size_param: ClassVar[str | None] = None
    params: ClassVar[tuple[Param, ...]] = ()

    # -- parameters -------------------------------------------------------------------------
    def resolve(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overlaid with ``params`` (converted); unknown names are an error."""
        known = {p.name: p for p in self.params}
        out = {p.name: p.default for p in self.params}
        for key, value in (params or {}).items():
            key = key.replace("-", "_")
            if key not in known:
                raise NeurosegError(
                    f"task {self.name!r} has no parameter {key!r}",
                    fix=f"use one of: {', '.join(known) or '(none)'}",
                )
            out[key] = known[key].convert(value)
        return out

    def prepare(self, image: Any, axes: str, params: dict[str, Any]) -> dict[str, Any]:
        """Resolve data-dependent parameters once per input before blocks run.

        ``image`` is a lazily sliceable array (Zarr/HDF5/memmap); read only strided or small parts.
        The default returns ``params`` unchanged.
        """
        return params

    def halo_for(self, params: Mapping[str, Any]) -> tuple[int, int, int]:
        """The halo blockwise runs use when none is given (default: ``default_halo``)."""
        return self.default_halo

    def uses_gpu(self, params: Mapping[str, Any]) -> bool:
        """Whether a run with ``params`` needs a GPU (then Dask tasks ask for ``GPU=1``)."""
        return False

    def model_info(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """What the manifest records about the model (name, weights path, version...)."""
        return {"name": self.name}

    # -- work ---------------------------------------------------------------------------------
    def segment(self, image: np.ndarray, axes: str, params: dict[str, Any]) -> np.ndarray:
        """Label ``image`` (axes ``"ZYX"`` or ``"CZYX"``); returns ZYX integer labels."""
        raise NotImplementedError

    def evaluate_file(self, path: str, key: str | None, params: dict[str, Any]) -> dict[str, Any]:
        """For metric tasks: the result dict (JSON-serialisable) for one input file."""
        raise NotImplementedError

    def summary_row(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """The few numbers of a metrics result that go into the summary table."""
        return {}

    def __repr__(self) -> str:
        return f"<batch task {self.name}>"


_REGISTRY: dict[str, str] = {
    "threshold": "napari_neuroseg.batch.tasks:ThresholdTask",
    "nuclei": "napari_neuroseg.batch.adapters:NucleiTask",
    "neurons": "napari_neuroseg.batch.adapters:NeuronsTask",
    "evaluate": "napari_neuroseg.batch.adapters:EvaluateTask",
}


def list_tasks() -> list[str]:
    """Names of the registered tasks."""
    return list(_REGISTRY)


def register_task(name: str, target: str) -> None:
    """Register ``"module:Class"`` under ``name``."""
    _REGISTRY[name] = target


def get_task(task: str | Task) -> Task:
    """A task instance from a registered name, a ``"module:Class"`` path or an instance."""
    if isinstance(task, Task):
        return task
    target = _REGISTRY.get(task, task)
    if ":" not in target:
        raise NeurosegError(
            f"unknown batch task {task!r}",
            fix=f"use one of {', '.join(_REGISTRY)} or 'package.module:TaskClass'",
        )
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise NeurosegError(
            f"cannot load batch task {task!r} ({err})",
            fix="check the module path and that the package is installed",
        ) from err
    inst = cls() if isinstance(cls, type) else cls
    if not isinstance(inst, Task):
        raise NeurosegError(f"{target} is not a napari_neuroseg.batch.Task", fix="subclass Task")
    return inst


def to_zyx(image: np.ndarray, axes: str, reduce: str = "max") -> np.ndarray:
    """Collapse a channel axis (``CZYX`` → ``ZYX``) by ``max`` or ``sum``; ZYX passes through."""
    if axes == "ZYX":
        return image
    if axes == "CZYX":
        return image.max(axis=0) if reduce == "max" else image.sum(axis=0, dtype=np.float32)
    raise NeurosegError(f"unsupported axes {axes!r}", fix="give a ZYX or CZYX volume")


class ThresholdTask(Task):
    """Gaussian smoothing, a global threshold (or Otsu), connected components, size filter.

    For bright, separated blobs (nuclei in a clean stain, beads) this is a fair segmenter.
    Blockwise runs are exact (equal to the whole-volume result up to the order of ids) when the
    threshold is fixed or resolved once per volume (``prepare``), the halo is ≥ 3·sigma and the
    size filter runs globally after stitching.
    """

    name = "threshold"
    description = "smoothing + threshold (Otsu by default) + connected components"
    output = "labels"
    stitch = "faces"
    default_halo = (4, 4, 4)
    min_size_param = "min_size"
    params = (
        Param("threshold", float, None, "intensity threshold, in the image's intensity units (after smoothing): "
                                        "brighter voxels are objects; higher = fewer, smaller objects; default Otsu"),
        Param("sigma", float, 0.0, "Gaussian smoothing sigma in voxels (0 = none): more smoothing joins "
                                   "nearby bright voxels and removes noise"),
        Param("min_size", int, 0, "remove objects smaller than this many voxels"),
        Param("connectivity", int, 26, "which neighbour voxels join one object: 6 = faces, 18 = and edges, "
                                       "26 = and corners (more = fewer, larger objects)", (6, 18, 26)),
        Param("channel_reduce", str, "max", "how a multi-channel input becomes one volume before the threshold: "
                                            "max or sum of its channels", ("max", "sum")),
    )

    def halo_for(self, params: Mapping[str, Any]) -> tuple[int, int, int]:
        """3·sigma voxels (exact smoothing); no halo is needed for the components themselves."""
        h = int(np.ceil(3 * float(params.get("sigma") or 0)))
        return (h, h, h)

    def prepare(self, image: Any, axes: str, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("threshold") is not None:
            return params
        from skimage.filters import threshold_otsu

        sample = _strided_sample(image, axes, max_voxels=2_000_000)
        sample = to_zyx(sample, axes, params["channel_reduce"])
        if params["sigma"] > 0:
            from scipy import ndimage as ndi

            sample = ndi.gaussian_filter(sample.astype(np.float32), params["sigma"])
        if sample.min() == sample.max():
            thr = float(sample.max()) + 1.0  # a constant volume has no foreground
        else:
            thr = float(threshold_otsu(sample))
        return {**params, "threshold": thr}

    def segment(self, image: np.ndarray, axes: str, params: dict[str, Any]) -> np.ndarray:
        import cc3d

        img = to_zyx(np.asarray(image), axes, params["channel_reduce"])
        if params.get("threshold") is None:
            params = self.prepare(img, "ZYX", params)
        if params["sigma"] > 0:
            from scipy import ndimage as ndi

            img = ndi.gaussian_filter(img.astype(np.float32), params["sigma"])
        mask = img > params["threshold"]
        labels = cc3d.connected_components(mask, connectivity=int(params["connectivity"]), out_dtype=np.uint32)
        if params.get("min_size", 0) > 0:
            labels = remove_small(labels, params["min_size"])
        return labels


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero objects smaller than ``min_size`` voxels and renumber the rest 1..N in order."""
    import fastremap

    counts = np.bincount(labels.ravel())
    small = np.flatnonzero(counts < min_size)
    small = small[small > 0]
    if small.size:
        labels = fastremap.mask(labels, small)
    labels, _ = fastremap.renumber(labels, in_place=True)
    return labels.astype(np.uint32, copy=False)


def _strided_sample(image: Any, axes: str, max_voxels: int) -> np.ndarray:
    """A strided subsample of a lazily sliceable array with at most ~``max_voxels`` voxels."""
    spatial = image.shape[-3:]
    n = int(np.prod(spatial))
    step = max(1, int(np.ceil((n / max_voxels) ** (1 / 3))))
    sl = tuple(slice(None, None, step) for _ in range(3))
    if axes == "CZYX":
        sl = (slice(None),) + sl
    return np.asarray(image[sl])
