"""``neuroseg nuclei INPUT -o OUTPUT``: segment nuclei with StarDist-3D (PyTorch)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from napari_neuroseg.cli._flags import add_flag
from napari_neuroseg.cli._progress import ProgressPrinter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nuclei",
        help="segment 3D nuclei with StarDist-3D (default: the shipped model)",
        description=(
            "Segment nuclei in a 3D volume with a StarDist-3D model: the bundled 'neuroseg_nuclei' "
            "(default), another bundled name, a model folder (neuroseg or Keras StarDist) or a .pt "
            "file. INPUT: TIFF, Zarr/OME-Zarr, HDF5 (use --key for containers). OUTPUT by extension: "
            ".tif/.tiff, .ome.zarr, .zarr, .h5/.hdf5 (int32 labels, written atomically)."
        ),
    )
    p.add_argument("input", help="3D image (ZYX, or CZYX for multi-channel models)")
    add_flag(p, "-o", "--output", required=True, help="output labels: .tif/.tiff, .zarr, .ome.zarr or .h5")
    p.add_argument("--model", default=None, metavar="NAME_OR_PATH", help="bundled model name, folder, .pt or BioImage.IO package (folder, rdf.yaml or .zip)")
    p.add_argument("--prob-thresh", type=float, default=None, help="probability threshold (default: the model's)")
    p.add_argument("--nms-thresh", type=float, default=None, help="NMS overlap threshold (default: the model's)")
    p.add_argument("--border", type=int, default=None, metavar="N",
                   help="grid voxels at the volume's edge without object centres (default: the model's; stardist: 2)")
    add_flag(p, "--n-tiles", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="tiles per axis (default: chosen from the free memory)")
    p.add_argument("--percentiles", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="normalisation percentiles (default: the model's; 1 99.8 unless a BioImage.IO package "
                        "says otherwise)")
    p.add_argument("--voxel-size", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="voxel size in µm (default: from the file's metadata; none there: the image is used as it is)")
    p.add_argument("--object-size", default=None, metavar="SIZE",
                   help="nucleus diameter: 3.2um, 25vox (Y/X voxels) or auto (estimated from the image; printed); "
                        "overrides the voxel-size rule (see docs/nuclei-model-card.md)")
    p.add_argument("--no-rescale", action="store_true",
                   help="ignore voxel and object sizes: predict on the image as it is")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--tta", action="store_true",
                   help="test-time flip averaging: the network's outputs averaged over the 8 flips of Z/Y/X "
                        "(8x the network time; see docs/stardist3d.md)")
    p.add_argument("--key", default=None, help="array key inside a Zarr/HDF5 input")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run, io_flags=({"INPUT": "input", "--model": "model"}, {"--output": "output"}))


def write_labels(path: Path, labels, scale=None) -> Path:
    """Write a label volume by extension (atomic writers of :mod:`napari_neuroseg.io`)."""
    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.io import write_hdf5, write_ome_zarr, write_tiff, write_zarr

    name = path.name.lower()
    if name.endswith((".tif", ".tiff")):
        return write_tiff(path, labels, axes="ZYX", scale=scale)
    if name.endswith(".ome.zarr"):
        return write_ome_zarr(path, labels, axes="ZYX", scale=scale, is_label=True)
    if name.endswith(".zarr"):
        return write_zarr(path, labels, axes="ZYX", scale=scale)
    if name.endswith((".h5", ".hdf5", ".hdf")):
        return write_hdf5(path, labels, key="labels", scale=scale)
    raise NeurosegError(
        f"unknown output format {path.suffix!r}", path=path, fix="use .tif, .tiff, .zarr, .ome.zarr or .h5"
    )


def scale_args(args: argparse.Namespace, vol) -> tuple:
    """``(voxel_size, object_size)`` from ``--voxel-size`` (else the file's metadata via
    :func:`~napari_neuroseg.runtime.scale.voxel_size_from_volume`; ``vol`` may be None),
    ``--object-size`` and ``--no-rescale``; shared by ``neuroseg nuclei`` and ``neuroseg neurons``."""
    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.runtime.scale import parse_object_size, parse_voxel_size, voxel_size_from_volume

    obj = getattr(args, "object_size", None)
    if getattr(args, "no_rescale", False):
        if args.voxel_size is not None or obj is not None:
            raise NeurosegError("--no-rescale contradicts --voxel-size/--object-size", fix="give only one of them")
        return None, None
    if args.voxel_size is not None:
        vs = parse_voxel_size(args.voxel_size, what="--voxel-size")
    else:
        vs = None if vol is None else voxel_size_from_volume(vol)
    return vs, parse_object_size(obj)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.io import read_image
    from napari_neuroseg.io.checks import require_finite, require_real_image
    from napari_neuroseg.models.stardist3d import load_model
    from napari_neuroseg.runtime.memory import require_volume_fits
    from napari_neuroseg.runtime.progress import run_to_completion

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    inp, out = Path(args.input), Path(args.output)
    if not inp.exists():
        raise NeurosegError("input not found", path=inp, fix="check the path")
    out_name = out.name.lower()
    if not out_name.endswith((".tif", ".tiff", ".zarr", ".h5", ".hdf5", ".hdf")):
        raise NeurosegError(
            f"unknown output format {out.suffix!r}", path=out, fix="use .tif, .tiff, .zarr, .ome.zarr or .h5"
        )
    if out.resolve() == inp.resolve():
        raise NeurosegError("the output would overwrite the input", path=out, fix="choose another output path")
    vol = read_image(inp, key=args.key, lazy=True)
    require_real_image(vol.data, inp)

    def budget(per_voxel: float) -> None:
        require_volume_fits(
            vol.shape, per_voxel, what="segmenting the image", path=inp,
            fix="segment a crop, or the whole volume block by block with 'neuroseg batch' (--block-shape)",
        )

    # whole-volume arrays: the input, its float32 copy, int32 labels (before the model is loaded),
    # then also the probability and distances on the model's grid
    budget(vol.dtype.itemsize + 8)
    model = load_model(args.model, device=args.device)
    voxel_size, object_size = scale_args(args, vol)
    cfg = model.config
    budget(vol.dtype.itemsize + 8 + 4 * (1 + cfg.n_rays) / (cfg.grid[0] * cfg.grid[1] * cfg.grid[2]))
    image = np.asarray(vol.data)
    require_finite(image, inp)
    channel_axis = 0 if image.ndim == 4 and vol.axes.startswith("C") else None
    t0 = time.perf_counter()

    show = ProgressPrinter(quiet=args.quiet)  # logs: one line per step, not per NMS tick

    labels, details = run_to_completion(
        model.predict_instances_iter(
            image, prob_thresh=args.prob_thresh, nms_thresh=args.nms_thresh, border=args.border,
            n_tiles=None if args.n_tiles is None else tuple(args.n_tiles),
            percentiles=None if args.percentiles is None else tuple(args.percentiles), channel_axis=channel_axis,
            voxel_size=voxel_size, object_size=object_size, tta=args.tta,
        ),
        show,
    )
    show.end()
    labels = np.asarray(labels, dtype=np.int32)
    scale = tuple(vol.scale) if getattr(vol, "scale", None) else None
    write_labels(out, labels, scale)
    n = int(len(details["points"]))
    th_p = model.thresholds.prob if args.prob_thresh is None else args.prob_thresh
    th_n = model.thresholds.nms if args.nms_thresh is None else args.nms_thresh
    th_b = model.thresholds.border if args.border is None else args.border
    if "scale_plan" in details:
        print(f"scale: {details['scale_plan']['text']}")
    print(f"{n} objects (model {model.name}, prob {th_p:.3f}, nms {th_n:.3f}, border {th_b}, "
          f"{time.perf_counter() - t0:.1f} s) -> {out}")
    return 0
