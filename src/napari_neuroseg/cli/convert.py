"""``neuroseg convert IN OUT``: between TIFF, Zarr/OME-Zarr, the FISBe layout and HDF5."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert volumes between TIFF, Zarr/OME-Zarr, the FISBe layout and HDF5",
        description=(
            "Convert IN to OUT. The output format comes from OUT's name (.tif/.tiff, .ome.zarr, "
            ".zarr = FISBe when IN is a FISBe sample else OME-Zarr, .h5/.hdf5) or --format. "
            "Writes are atomic: OUT appears only when complete."
        ),
    )
    p.add_argument("input", metavar="IN", help="input file or folder (TIFF, .zarr, FISBe sample, .h5/.hdf)")
    p.add_argument("output", metavar="OUT", help="output path")
    p.add_argument("--key", help="array/dataset inside IN (Zarr path, HDF5 dataset, TIFF series)")
    p.add_argument("--axes", help="axes of IN when metadata is missing or wrong, e.g. ZCYX or CZYX")
    p.add_argument("--format", dest="fmt", choices=("tiff", "zarr", "ome-zarr", "fisbe", "hdf5"),
                   help="output format (default: from OUT's extension)")
    p.add_argument("--labels", action="store_true",
                   help="treat IN as labels (FISBe: the gt_instances stack, overlaps kept in TIFF/FISBe)")
    p.add_argument("--scale", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel size to write (default: from IN's metadata)")
    p.add_argument("--levels", type=int, default=1, help="OME-Zarr pyramid levels (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run, io_flags=({"IN": "input"}, {"OUT": "output"}))


def run(args: argparse.Namespace) -> int:
    from napari_neuroseg.io.convert import convert

    res = convert(
        args.input,
        args.output,
        key=args.key,
        axes=args.axes,
        fmt=args.fmt,
        labels=args.labels,
        scale=tuple(args.scale) if args.scale else None,
        n_levels=args.levels,
        overwrite=args.overwrite,
    )
    for w in res.warnings:
        print(f"neuroseg convert: warning: {w}", file=sys.stderr)
    print(f"wrote {res.format} {res.path} shape={res.shape} dtype={res.dtype}")
    return 0
