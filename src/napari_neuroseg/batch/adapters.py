"""Thin batch adapters around the project's segmenters and metrics (imported lazily).

* ``nuclei``  → :mod:`napari_neuroseg.models.stardist3d` (``StarDist3D.predict_instances``);
  stitched by centre ownership (nuclei are smaller than the halo).
* ``neurons`` → :mod:`napari_neuroseg.models.neurons` (``predict.predict``); neurons span many
  blocks: labels of neighbouring blocks that overlap in their shared halo region are joined with a
  global union-find (touching neurons stay apart); the size filter runs globally.
* ``evaluate`` → :func:`napari_neuroseg.metrics.evaluate` on prediction files against ground
  truth found by name in ``--gt`` (a folder, or one file for a single input).

Learned models see every block normalised with statistics of the whole volume, computed once in
``prepare`` (StarDist: 1/99.8 percentiles; neurons: ``preprocess.norm_stats``), so blocks get the
contrast of the whole-volume run. Nothing heavy (torch, models) is imported until a task actually
runs, so listing tasks and the CLI ``--help`` stay fast.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg.batch.tasks import Param, Task
from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.models.stardist3d.config import NORM_PERCENTILES


def _require(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise NeurosegError(
            f"the {what} is not available ({err})",
            fix="update napari-neuroseg; use the 'threshold' task meanwhile",
        ) from err


#: StarDist's percentile normalisation (csbdeep defaults)
PERCENTILES = NORM_PERCENTILES  # the StarDist models' normalisation


def _device_needs_gpu(device: str | None) -> bool:
    return bool(device) and str(device).startswith("cuda")


class NucleiTask(Task):
    """StarDist-3D nuclei; blockwise with centre ownership (as StarDist's big-image mode)."""

    name = "nuclei"
    description = "StarDist-3D nuclei (PyTorch)"
    stitch = "centre"
    default_halo = (16, 32, 32)
    params = (
        Param("model", str, None, "StarDist-3D model folder or name (default: the shipped model)"),
        Param("prob_thresh", float, None, "object probability threshold (0-1): higher = fewer, surer nuclei "
                                            "(default: the model's)"),
        Param("nms_thresh", float, None, "NMS overlap threshold (0-1, fraction of the smaller nucleus): "
                                           "higher = more touching nuclei kept (default: the model's)"),
        Param("n_tiles", str, None, "tiles per axis inside a block/volume, e.g. '1,2,2' (default: auto)"),
        Param("device", str, "auto", "torch device: auto, cpu, cuda, cuda:1, mps"),
        Param("channel", int, 0, "index (from 0) of the channel segmented when the input has several"),
        Param("voxel_size", str, None, "voxel size 'Z,Y,X' in µm: the volume is resampled to the model's scale"),
        Param("object_size", str, None, "nucleus diameter: '3.2um', '25vox' or 'auto' (estimated once per volume)"),
    )

    def uses_gpu(self, params: dict) -> bool:
        return _device_needs_gpu(params.get("device"))

    def model_info(self, params: dict) -> dict:
        return {"name": "stardist3d", "model": params.get("model") or "default"}

    def halo_for(self, params: dict) -> tuple[int, int, int]:
        """Room for a nucleus (``default_halo``) plus half the network's receptive field, so the
        probabilities and distances of an owned nucleus do not see the block's edge."""
        model = self._model({**params, "device": "cpu"})
        rf = getattr(model, "receptive_field", None)
        if rf is None:
            return self.default_halo
        halo = [int(d) + -(-int(r) // 2) for d, r in zip(self.default_halo, rf)]
        f = params.get("_factors")
        if f is None and (params.get("voxel_size") or params.get("object_size")) \
                and str(params.get("object_size")).strip().lower() != "auto":
            from napari_neuroseg.runtime.scale import plan_scale

            f = plan_scale(getattr(model, "scale", None), voxel_size=params.get("voxel_size"),
                           object_size=params.get("object_size")).factors
        if f is not None:  # the halo is needed at the model's scale: more input voxels when shrinking
            halo = [int(np.ceil(h / min(1.0, float(v)))) for h, v in zip(halo, f)]
        return tuple(halo)  # type: ignore[return-value]

    def _model(self, params: dict) -> Any:
        mod = _require("napari_neuroseg.models.stardist3d", "StarDist-3D nuclei segmenter")
        load = getattr(mod, "load_model", None)
        if load is None:
            raise NeurosegError("napari_neuroseg.models.stardist3d has no load_model yet", fix="use the 'threshold' task meanwhile")
        device = None if params.get("device") in (None, "auto") else params["device"]
        return load(params.get("model"), device=device)  # cached per (file, device) by the package

    def prepare(self, image: Any, axes: str, params: dict) -> dict:
        """The (1, 99.8) percentiles of the whole volume (channel ``channel``), once per input:
        exact for in-memory volumes, from a bounded sample of lazily read ones. Every block is
        then normalised with them (``_norm``), as StarDist normalises a whole image."""
        from napari_neuroseg.batch.normalize import percentile_stats

        if axes not in ("ZYX", "CZYX") or params.get("_norm") is not None:
            return params
        stats = percentile_stats(image, axes, PERCENTILES)
        c = int(params.get("channel", 0)) if axes == "CZYX" else 0
        if not 0 <= c < len(stats):
            raise NeurosegError(f"channel {c} does not exist (the input has {len(stats)})", fix="give a valid --channel")
        out = {**params, "_norm": stats[c]}
        if params.get("voxel_size") or params.get("object_size"):
            out["_factors"] = self._scale_factors(image, axes, params)
        return out

    def _scale_factors(self, image: Any, axes: str, params: dict) -> list[float]:
        """The resampling factors of the whole volume (:func:`~napari_neuroseg.runtime.scale.plan_scale`),
        decided once so every block is resampled alike; ``auto`` looks at a central crop."""
        from napari_neuroseg.runtime.scale import parse_object_size, plan_scale

        obj = parse_object_size(params.get("object_size"))
        crop = None
        if obj is not None and obj.auto:
            shape = image.shape[-3:]
            sl = tuple(slice(max(0, (n - m) // 2), max(0, (n - m) // 2) + m) for n, m in zip(shape, (96, 192, 192)))
            crop = np.asarray(image[((int(params.get("channel", 0)),) if axes == "CZYX" else ()) + sl])
        plan = plan_scale(getattr(self._model({**params, "device": "cpu"}), "scale", None),
                          voxel_size=params.get("voxel_size"), object_size=obj, image=crop)
        return [float(f) for f in plan.factors]

    def segment(self, image: np.ndarray, axes: str, params: dict) -> np.ndarray:
        img = image if axes == "ZYX" else image[int(params.get("channel", 0))]
        kw: dict[str, Any] = {}
        for k in ("prob_thresh", "nms_thresh"):
            if params.get(k) is not None:
                kw[k] = params[k]
        if params.get("n_tiles"):
            kw["n_tiles"] = tuple(int(t) for t in str(params["n_tiles"]).split(","))
        if params.get("_factors") is not None:
            kw["scale_factors"] = tuple(params["_factors"])
        elif params.get("voxel_size") or params.get("object_size"):  # segment() without prepare()
            kw["voxel_size"], kw["object_size"] = params.get("voxel_size"), params.get("object_size")
        norm = params.get("_norm")
        if norm is not None:  # the volume's percentiles, not this block's
            from napari_neuroseg.batch.normalize import apply_percentiles

            img = apply_percentiles(img, *norm)
            if img.size and img.min() == img.max():  # a blank block of a volume that is not blank
                return np.zeros(img.shape, np.uint32)
            kw["normalize"] = False
        model = self._model(params)
        out = model.predict_instances(img, **kw)
        labels = out[0] if isinstance(out, tuple) else getattr(out, "labels", out)
        return np.asarray(labels)


class NeuronsTask(Task):
    """The FISBe neuron segmenter; blockwise with overlap matching in the halos + global union-find
    (two neurons that touch at a block face are not merged)."""

    name = "neurons"
    description = "FISBe neuron instance segmentation"
    stitch = "overlap"
    default_halo = (32, 32, 32)
    min_size_param = "min_size"
    params = (
        Param("model", str, None, "neuron model file (default: the shipped model)"),
        Param("device", str, "auto", "torch device: auto, cpu, cuda, cuda:1, mps"),
        Param("fg_threshold", float, None, "foreground probability threshold (0-1): voxels below it are "
                                             "background; higher = thinner, fewer neurons (default: the model's)"),
        Param("aff_threshold", float, None, "affinity threshold (0-1): neighbour voxels with a lower "
                                              "affinity are not joined; higher = more, smaller fragments "
                                              "(default: the model's)"),
        Param("min_size", int, None, "remove neurons smaller than this many voxels (applied globally; default: "
                                     "the model's, e.g. the value a fine-tune chose)"),
        Param("voxel_size", str, None, "voxel size 'Z,Y,X' in µm: the volume is resampled to the model's scale"),
        Param("object_size", str, None, "neurite thickness: '1.3um' or '4vox' (Y/X voxels); the volume is rescaled "
                                        "to the model's typical thickness ('auto' is not available for neurons)"),
    )

    def uses_gpu(self, params: dict) -> bool:
        return _device_needs_gpu(params.get("device"))

    def resolve(self, params: dict | None = None) -> dict:
        """As :meth:`Task.resolve`; a ``min_size`` not given is the model's own (its stored
        post-processing: a fine-tuned model keeps the size its search chose), so the blockwise
        size filter on stitched neurons uses the same value as a whole-volume run."""
        out = super().resolve(params)
        if out.get("min_size") is None:
            pred_mod = _require("napari_neuroseg.models.neurons.predict", "neuron segmenter")
            try:
                out["min_size"] = int(pred_mod.cached_load_model(out.get("model"), "cpu").params.min_size)
            except NeurosegError:
                pass  # a model that cannot be read fails per file, with its own message, when it is used
        return out

    def model_info(self, params: dict) -> dict:
        return {"name": "neurons", "model": params.get("model") or "default"}

    def halo_for(self, params: dict) -> tuple[int, int, int]:
        """At least the context the network needs (``predict.tile_overlap``, 56 voxels for the
        default 4-level U-Net), so the core of each block is predicted as in the whole volume."""
        pred_mod = _require("napari_neuroseg.models.neurons.predict", "neuron segmenter")
        overlap = getattr(pred_mod, "tile_overlap", None)
        if overlap is None:
            return self.default_halo
        model = pred_mod.cached_load_model(params.get("model"), "cpu")
        h = int(overlap(model.config.levels))
        return tuple(max(d, h) for d in self.default_halo)  # type: ignore[return-value]

    def prepare(self, image: Any, axes: str, params: dict) -> dict:
        """The model's normalisation statistics (``preprocess.norm_stats``: background per channel,
        one common scale) of the whole volume, once per input — from the in-memory volume as
        ``predict`` computes them, or from a bounded sample of a lazily read one. Every block is
        normalised with them (``_norm``)."""
        if axes != "CZYX" or params.get("_norm") is not None:
            return params
        pre = _require("napari_neuroseg.models.neurons.preprocess", "neuron segmenter")
        if isinstance(image, np.ndarray) and not isinstance(image, np.memmap):
            bg, hi = pre.norm_stats(image)
        else:
            from napari_neuroseg.batch.normalize import sample_values

            sample = sample_values(image, axes)
            bg, hi = pre.norm_stats(sample.reshape(sample.shape[0], -1, 1, 1))
        return {**params, "_norm": {"bg": [float(b) for b in bg], "hi": float(hi)}}

    def segment(self, image: np.ndarray, axes: str, params: dict) -> np.ndarray:
        import inspect

        if axes != "CZYX":
            raise NeurosegError("the neuron segmenter needs a multicolour (3,Z,Y,X) volume", fix="give the FISBe raw volume")
        pred_mod = _require("napari_neuroseg.models.neurons.predict", "neuron segmenter")
        post = {k: params[k] for k in ("fg_threshold", "aff_threshold", "min_size") if params.get(k) is not None}
        device = None if params.get("device") in (None, "auto") else params["device"]
        kw: dict[str, Any] = {}
        norm = params.get("_norm")
        if norm is not None and "norm_stats" in inspect.signature(pred_mod.predict_iter).parameters:
            kw["norm_stats"] = (np.asarray(norm["bg"], np.float32), float(norm["hi"]))
        if params.get("voxel_size"):
            kw["voxel_size"] = params["voxel_size"]
        if params.get("object_size"):  # a given size: the same factors for every block (no estimate)
            kw["object_size"] = params["object_size"]
        res = pred_mod.predict(image, params.get("model"), device=device, params=post, **kw)
        return np.asarray(res.labels)


class EvaluateTask(Task):
    """FISBe metrics of prediction files against ground truth matched by file name."""

    name = "evaluate"
    description = "FISBe metrics (avF1, C, S, clDice, FS, FM) of predictions vs ground truth"
    output = "metrics"
    params = (
        Param("gt", str, None, "ground-truth folder (matched by name) or file"),
        Param("gt_key", str, None, "array key inside ground-truth containers (default: auto)"),
        Param("pred_key", str, None, "array key inside prediction containers (default: auto)"),
        Param("partly", bool, False, "ground truth is partly labelled (FISBe 'partly' set)"),
    )
    _ROW = ("avF1", "C", "S", "clDice_TP", "tp", "FS", "FM", "n_gt", "n_pred")

    def model_info(self, params: dict) -> dict:
        return {"name": "fisbe-metrics", "gt": params.get("gt")}

    def find_gt(self, pred_path: str, params: dict) -> Path:
        from napari_neuroseg.batch.sources import classify
        from napari_neuroseg.io.formats import file_stem

        gt = params.get("gt")
        if not gt:
            raise NeurosegError("the evaluate task needs ground truth", fix="give --gt FOLDER (or FILE)")
        g = Path(gt)
        if not g.is_dir() or classify(g) is not None:
            return g
        stem = file_stem(pred_path)
        cands = [c for c in sorted(g.iterdir()) if classify(c) is not None and (file_stem(c) == stem or stem.startswith(file_stem(c)))]
        if not cands:
            raise NeurosegError(f"no ground truth named like {stem!r} in {g}", path=pred_path, fix="name GT and prediction files alike")
        return max(cands, key=lambda c: len(file_stem(c)))

    def evaluate_file(self, path: str, key: str | None, params: dict) -> dict:
        from napari_neuroseg.batch.sources import InputSpec, classify, open_input

        metrics = _require("napari_neuroseg.metrics", "FISBe metrics package")
        evaluate = getattr(metrics, "evaluate", None)
        if evaluate is None:
            raise NeurosegError("napari_neuroseg.metrics has no evaluate() yet", fix="update napari-neuroseg")
        gt_path = self.find_gt(path, params)
        gspec = InputSpec(str(gt_path), classify(gt_path) or "unknown", gt_path.name, params.get("gt_key"))
        pspec = InputSpec(path, classify(path) or "unknown", Path(path).name, params.get("pred_key") or key)
        # evaluate() reads Zarr/HDF5 arrays in slabs: pass the lazy arrays, not numpy copies
        with open_input(gspec, role="labels") as g, open_input(pspec, role="labels") as p:
            res = evaluate(g.data, p.data, partly=bool(params.get("partly")))
        return {"gt": str(gt_path), "prediction": path, **res}

    def summary_row(self, result: dict) -> dict:
        return {k: result.get(k) for k in self._ROW if k in result}

