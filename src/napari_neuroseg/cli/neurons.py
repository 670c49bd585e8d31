"""``neuroseg neurons INPUT -o OUTPUT``: segment neurons in a FISBe-like multicolour volume."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_neuroseg.cli._flags import add_flag
from napari_neuroseg.cli._progress import ProgressPrinter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "neurons",
        help="segment neurons in a multicolour (MCFO, FISBe-like) volume",
        description=(
            "Segment neurons with the FISBe neuron model (default: the shipped model, trained on "
            "synthetic FISBe-like data). INPUT is a FISBe Zarr (volumes/raw) or a CZYX TIFF/Zarr "
            "with the 3 colour channels first. OUTPUT: .tif/.tiff (uint32 labels), .zarr (labels; "
            "a FISBe-layout Zarr when INPUT is one or with --format fisbe). When INPUT holds "
            "volumes/gt_instances the FISBe scores are printed."
        ),
    )
    p.add_argument("input", help="FISBe Zarr or CZYX TIFF/Zarr")
    add_flag(p, "-o", "--output", required=True, help="output .tif/.tiff or .zarr")
    p.add_argument("--model", default=None,
                   help="neuron model: neuroseg_neurons (the shipped model, default), a registered name, a .pt file "
                        "or a BioImage.IO package exported by neuroseg (folder, rdf.yaml or .zip)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--voxel-size", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="voxel size in µm (default: from the file's metadata; none there, e.g. FISBe: the volume "
                        "is used as it is); the volume is resampled to the model's voxel size")
    p.add_argument("--object-size", default=None, metavar="SIZE",
                   help="neurite thickness of the input, e.g. '1.3um' or '4vox' (Y/X voxels): the volume is "
                        "rescaled so its neurites have the model's typical thickness (see docs/neurons.md, "
                        "'Object size'; 'auto' is not available for neurons)")
    p.add_argument("--no-rescale", action="store_true", help="ignore voxel sizes: predict on the volume as it is")
    p.add_argument("--key", default=None, help="array key inside a Zarr/HDF5 input")
    p.add_argument("--channel-axis", type=int, default=None,
                   help="axis of the 3 colour channels in the stored array, e.g. -1 for ZYXC data")
    p.add_argument("--format", choices=("auto", "tiff", "zarr", "fisbe"), default="auto")
    add_flag(p, "--n-tiles", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="number of tiles per axis (default: from free memory)")
    p.add_argument("--fg-threshold", type=float, default=None, help="foreground probability threshold")
    p.add_argument("--merge-threshold", type=float, default=None, help="colour distance below which fragments merge")
    p.add_argument("--min-size", type=int, default=None, help="smallest neuron kept (voxels)")
    p.add_argument("--tta", action="store_true",
                   help="test-time flip averaging: the network's probabilities averaged over the 8 flips of Z/Y/X "
                        "(8x the network time; see docs/neurons.md)")
    p.add_argument("--partly", action="store_true", help="ground truth is partly labelled (for the scores)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run, io_flags=({"INPUT": "input", "--model": "model"}, {"--output": "output"}))


def _read_input(args):
    import numpy as np

    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.io import is_fisbe, read_fisbe, read_image
    from napari_neuroseg.io.checks import require_finite, require_real_image
    from napari_neuroseg.models.neurons.targets import N_OUTPUTS
    from napari_neuroseg.runtime.memory import require_volume_fits

    path = Path(args.input)
    if not path.exists():
        raise NeurosegError("input not found", path=path, fix="check the path")

    def budget(data) -> None:
        # checked on the declared shape before anything is read: the input, its float32 copy,
        # the network's outputs and the labels (int64 while post-processing)
        require_real_image(data, path)
        shape = tuple(int(s) for s in data.shape)
        n_ch = shape[0] if len(shape) == 4 else 1
        spatial = shape[-3:] if len(shape) >= 3 else shape
        per_voxel = n_ch * (np.dtype(data.dtype).itemsize + 4) + 4 * N_OUTPUTS + 8
        require_volume_fits(spatial, per_voxel, what="segmenting the volume", path=path,
                            fix="segment a crop, or the whole volume block by block with 'neuroseg batch' "
                                "(--block-shape)")

    if is_fisbe(path):
        s = read_fisbe(path, lazy=True)
        if s.raw is None:
            raise NeurosegError("the FISBe sample has no volumes/raw", path=path,
                                fix="segmentation needs the raw multicolour volume")
        budget(s.raw)
        raw = np.asarray(s.raw)
        require_finite(raw, path, what="raw volume")
        return raw, (None if s.gt_instances is None else np.asarray(s.gt_instances)), True
    vol = read_image(path, key=args.key, lazy=True)
    budget(vol.data)
    if args.channel_axis is not None:
        nd = len(vol.meta.get("source_axes") or vol.axes)
        if not -nd <= args.channel_axis < nd:
            raise NeurosegError(
                f"--channel-axis {args.channel_axis} does not exist: the stored array has {nd} axes "
                f"(shape {vol.shape}, read as {vol.axes})",
                path=path, fix=f"give an axis between {-nd} and {nd - 1} (e.g. -1 for ZYXC data), or leave it out",
            )
    data = np.asarray(vol.data)
    require_finite(data, path)
    if args.channel_axis is None and vol.axes == "CZYX":
        return data, None, False
    if args.channel_axis is not None:
        src_axes = vol.meta.get("source_axes")
        if src_axes and src_axes != vol.axes and "C" in vol.axes:
            return data, None, False  # the reader already moved the channels first
        return np.moveaxis(data, args.channel_axis, 0), None, False
    return data, None, False


def _scale_args(args, was_fisbe: bool):
    """``(voxel_size, object_size)``: ``--voxel-size``, else the input file's metadata (FISBe files
    store none), else None; ``--object-size`` parsed."""
    from napari_neuroseg.cli.nuclei import scale_args

    vol = None
    if args.voxel_size is None and not args.no_rescale and not was_fisbe:
        from napari_neuroseg.io import read_image

        vol = read_image(Path(args.input), key=args.key, lazy=True)
    return scale_args(args, vol)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.io import labels_to_instances, write_fisbe, write_tiff, write_zarr
    from napari_neuroseg.models.neurons import predict_iter
    from napari_neuroseg.models.registry import resolve_neuron_model
    from napari_neuroseg.runtime.progress import run_to_completion

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.output)
    fmt = args.format
    suffix = out.suffix.lower()
    if fmt == "auto":
        if suffix in (".tif", ".tiff"):
            fmt = "tiff"
        elif suffix == ".zarr":
            fmt = "zarr"
        else:
            raise NeurosegError(f"unknown output type {suffix!r}", path=out, fix="use .tif, .tiff or .zarr")
    if out.resolve() == Path(args.input).resolve():
        raise NeurosegError("output would overwrite the input", path=out, fix="choose another output path")
    raw, gt, was_fisbe = _read_input(args)
    voxel_size, object_size = _scale_args(args, was_fisbe)
    if fmt == "zarr" and was_fisbe and args.format == "auto":
        fmt = "fisbe"
    params = {k: v for k, v in (("fg_threshold", args.fg_threshold), ("merge_threshold", args.merge_threshold),
                                ("min_size", args.min_size)) if v is not None}

    cb = ProgressPrinter(quiet=args.quiet)

    res = run_to_completion(
        predict_iter(raw, resolve_neuron_model(args.model), device=args.device, params=params or None,
                     n_tiles=tuple(args.n_tiles) if args.n_tiles else None,
                     channel_axis=None, voxel_size=voxel_size, object_size=object_size, tta=args.tta),
        cb,
    )
    cb.end()
    labels = res.labels
    if fmt == "tiff":
        write_tiff(out, labels, axes="ZYX")
    elif fmt == "zarr":
        write_zarr(out, labels, axes="zyx")
    else:
        stack = labels_to_instances(labels) if labels.max() else np.zeros((0,) + labels.shape, np.uint8)
        write_fisbe(out, raw=raw, gt_instances=stack)
    if "scale_plan" in res.info:
        print(f"scale: {res.info['scale_plan']['text']}")
    print(f"{res.n_instances} neurons -> {out}")
    if gt is not None:
        from napari_neuroseg.metrics import evaluate

        r = evaluate(gt, labels, partly=args.partly)
        print("FISBe scores: " + "  ".join(f"{k}={r[k]:.3f}" if isinstance(r[k], float) else f"{k}={r[k]}"
                                           for k in ("avF1", "C", "S", "clDice_TP", "tp", "FS", "FM", "n_gt", "n_pred")))
    return 0
