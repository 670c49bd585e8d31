"""Whole-volume neuron prediction: normalise → tiled network → global post-processing.

The network runs tile by tile through :func:`napari_neuroseg.runtime.tiling.predict_tiled_auto`
(automatic tile count from free memory, out-of-memory retry, progress, cancel by closing the
generator); its outputs are assembled into whole-volume probability maps (uint8) and the
post-processing runs once on the whole volume, so a neuron crossing tile borders keeps one id.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_neuroseg.runtime.progress import Progress, ProgressGenerator, StepClock, relay, run_to_completion

from .model import NeuronModel, cached_load_model
from .postprocess import PostprocessParams, instances_from_outputs_iter
from .preprocess import apply_norm, check_raw, normalize
from .targets import OFFSETS

#: Rough peak memory per input voxel of the network in inference (float32 activations).
BYTES_PER_VOXEL = 600.0


@dataclass
class NeuronPrediction:
    """Result of :func:`predict`: ``labels`` uint32 (Z,Y,X), 0 = background; ``foreground`` and
    ``affinities`` (uint8 probabilities ×255) when ``return_outputs`` was set."""

    labels: np.ndarray
    n_instances: int
    params: PostprocessParams
    n_tiles: tuple[int, ...] | None = None
    foreground: np.ndarray | None = None
    affinities: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def tile_overlap(levels: int) -> int:
    """Context (input voxels) each tile needs on every side so that tiled outputs equal untiled
    ones: half the receptive field of the U-Net (two 3×3×3 convolutions per level on both paths,
    plus the poolings), rounded up to the divisor grid (56 for the default 4-level network)."""
    half = 2 * (2**levels - 1) + 3 * (2 ** (levels - 1) - 1)
    div = 2 ** (levels - 1)
    return int(-(-half // div) * div)


def model_scale(model: NeuronModel):
    """The :class:`~napari_neuroseg.runtime.scale.ModelScale` of a neuron model: a
    ``<model>.scale.json`` sidecar next to the file (the shipped model's), else the checkpoint's
    ``scale`` dict (read without code execution), else None (never resampled)."""
    from napari_neuroseg.runtime.scale import ModelScale

    if "scale" in model.meta:
        return None if model.meta["scale"] is None else ModelScale.from_dict(model.meta["scale"], path=model.path)
    if model.path is None:
        return None
    sc = scale_of_model_file(Path(model.path))
    model.meta["scale"] = None if sc is None else sc.to_dict()
    return sc


def scale_of_model_file(path: Path):
    """The scale of a neuron model file: its ``<model>.scale.json`` sidecar, else the checkpoint's
    ``scale`` dict, else None."""
    from napari_neuroseg.runtime.scale import ModelScale, read_scale_json

    p = Path(path)
    sc = read_scale_json(p.with_name(p.stem + ".scale.json"))
    if sc is None:
        from .model import read_checkpoint

        d = read_checkpoint(p).get("scale")
        sc = None if d is None else ModelScale.from_dict(d, path=p)
    return sc


def _resolve_model(model, device) -> NeuronModel:
    if isinstance(model, NeuronModel):
        return model
    return cached_load_model(None if model is None else Path(model), device)


def network_outputs(model: NeuronModel, image: np.ndarray, *, n_tiles=None, tta: bool = False) -> ProgressGenerator[np.ndarray]:
    """Tiled network outputs for a normalised (3,Z,Y,X) image: uint8 (K,Z,Y,X) probabilities.
    ``tta``: average the probabilities over the 8 flips of each tile (:mod:`napari_neuroseg.runtime.tta`;
    affinity channels shifted back along flipped axes), 8× the network time."""
    import torch

    from napari_neuroseg.runtime.tiling import predict_tiled_auto

    dev = model.device
    net = model.net
    use_cl = dev.type == "cpu"
    if use_cl:
        net = net.to(memory_format=torch.channels_last_3d)

    def probabilities(tile: np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(tile, np.float32))[None].to(dev)
        if use_cl:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        if dev.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                y = net(x)
        else:
            y = net(x)
        return torch.sigmoid(y.float())[0]

    def forward(tile: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return (probabilities(tile) * 255 + 0.5).to(torch.uint8).cpu().numpy()

    if tta:
        from napari_neuroseg.runtime.tta import affinity_unflip, flip_average

        def probs_np(tile: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return probabilities(tile).cpu().numpy()

        offsets = getattr(model.config, "offsets", None) or OFFSETS
        forward = flip_average(probs_np, unflip=affinity_unflip(offsets),
                               finish=lambda outs: (outs[0] * 255 + 0.5).astype(np.uint8))

    outs = yield from predict_tiled_auto(
        forward, image, divisor=model.divisor, overlap=tile_overlap(model.config.levels), n_tiles=n_tiles,
        bytes_per_voxel=BYTES_PER_VOXEL, device=dev)
    return outs[0] if isinstance(outs, tuple) else outs


def predict_iter(
    raw,
    model: NeuronModel | str | Path | None = None,
    *,
    device=None,
    params: PostprocessParams | dict | None = None,
    n_tiles=None,
    channel_axis: int | None = None,
    return_outputs: bool = False,
    norm_stats: tuple | None = None,
    voxel_size=None,
    scale_factors=None,
    tta: bool = False,
    object_size=None,
) -> ProgressGenerator[NeuronPrediction]:
    """Segment neurons in a (3,Z,Y,X) multicolour volume; a progress generator returning a
    :class:`NeuronPrediction`. ``model``: a loaded model, a model file, or None (shipped default).
    ``params`` overrides post-processing thresholds (dataclass or dict of fields).

    ``voxel_size`` (Z, Y, X µm) or explicit ``scale_factors``: the volume is resampled to the
    model's voxel size (:func:`model_scale`; linear, anti-aliased when shrinking), predicted there,
    and labels (and ``return_outputs`` maps) come back at the input's shape by nearest neighbour;
    ``info["scale_plan"]`` says what was done. ``object_size``: the neurite thickness of the input
    (``"1.3 um"``, ``"4 vox"``: Y/X voxels), which rescales it to the model's typical thickness
    (:func:`~napari_neuroseg.runtime.scale.plan_scale`); ``"auto"`` is refused for neurons (no
    estimator proved reliable on held-out data; docs/neurons.md, "Object size").

    ``tta``: flip averaging, the network's probabilities averaged over the 8 flips of Z/Y/X
    (8× the network time; off by default: see ``docs/neurons.md``, "Test-time flip averaging")."""
    a = check_raw(raw, channel_axis=channel_axis)
    m = _resolve_model(model, device)
    plan = None
    in_shape = tuple(int(s) for s in a.shape[1:])
    if voxel_size is not None or scale_factors is not None or object_size is not None:
        a, plan = yield from _to_model_scale_iter(a, m, voxel_size=voxel_size, object_size=object_size,
                                                  scale_factors=scale_factors)
    p = _params_of(m, params)
    yield Progress(0, 3, "normalising")
    # norm_stats: precomputed preprocess.norm_stats of the whole volume (batch runs of blocks)
    image = normalize(a) if norm_stats is None else apply_norm(a, norm_stats)
    shape = image.shape[1:]
    if not image.any():  # a constant (e.g. all-zero) volume has no signal: no neurons, no network run
        yield Progress(3, 3, "constant volume: no neurons")
        return NeuronPrediction(labels=np.zeros(in_shape, np.uint32), n_instances=0, params=p,
                                info={"model": m.path, "device": str(m.device), "empty": True})
    n_out = 0
    # the bar: each network tile one unit, the post-processing one more, in hundredths (its steps,
    # weighted by their measured share of its time: postprocess.STEPS)

    def network_step(pr: Progress) -> Progress:
        nonlocal n_out
        n_out = pr.total
        return Progress(100 * pr.step, 100 * (pr.total + 1), f"network: {pr.message}")

    outs = yield from relay(network_outputs(m, image, n_tiles=n_tiles, tta=tta), network_step)
    outs = outs[(slice(None),) + tuple(slice(0, s) for s in shape)]
    clock = StepClock().start()

    def post_step(pr: Progress) -> Progress:
        return Progress(100 * n_out + pr.step, 100 * (n_out + 1),
                        "post-processing: " + clock.describe(pr.message, pr.step, pr.total))

    labels = yield from relay(instances_from_outputs_iter(outs[0], outs[1:], image, p), post_step)
    n_inst = int(labels.max())
    yield Progress(100 * (n_out + 1), 100 * (n_out + 1), f"{n_inst} neurons")
    info = {"model": m.path, "device": str(m.device), "tta": bool(tta)}
    if plan is not None:
        info["scale_plan"] = plan.to_dict()
        if tuple(labels.shape) != in_shape:
            from napari_neuroseg.runtime.scale import restore_nearest

            labels = restore_nearest(labels, in_shape)
            outs = restore_nearest(outs, in_shape) if return_outputs else outs
    return NeuronPrediction(
        labels=labels, n_instances=n_inst, params=p,
        foreground=outs[0] if return_outputs else None,
        affinities=outs[1:] if return_outputs else None,
        info=info,
    )


def _to_model_scale_iter(a: np.ndarray, m: NeuronModel, *, voxel_size, object_size,
                         scale_factors) -> ProgressGenerator[tuple]:
    """``(a resampled to the model's voxel size, the ScalePlan)`` (``a`` as it is when the plan
    is the identity); see :func:`~napari_neuroseg.runtime.scale.plan_scale`."""
    from napari_neuroseg.runtime.scale import check_growth, plan_scale, resample_image

    plan = plan_scale(model_scale(m), voxel_size=voxel_size, object_size=object_size, factors=scale_factors)
    if not plan.identity:
        check_growth(tuple(int(s) for s in a.shape[1:]), plan.factors)
        yield Progress(0, 3, f"rescaling: {plan.describe()}")
        a = resample_image(a, plan.factors, channel_axis=0)
    return a, plan


def _params_of(m: NeuronModel, params: PostprocessParams | dict | None) -> PostprocessParams:
    """The post-processing parameters: the model's, with the fields of a ``params`` dict
    replaced, or ``params`` itself when it is a :class:`PostprocessParams`."""
    if isinstance(params, dict):
        return replace(m.params, **params)
    return m.params if params is None else params


def predict(raw, model=None, **kwargs) -> NeuronPrediction:
    """:func:`predict_iter` run to completion."""
    return run_to_completion(predict_iter(raw, model, **kwargs))
