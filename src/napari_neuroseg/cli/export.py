"""``neuroseg export MODEL OUT.zip``: a BioImage.IO model package (see docs/bioimageio.md)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a BioImage.IO model package (.zip) of a nuclei or neuron model",
        description="Write a BioImage.IO Model Zoo package (format 0.5: PyTorch state dict + TorchScript weights, "
                    "test tensors, cover, README, post-processing parameters), validated with bioimageio.spec. "
                    "Needs: pip install 'napari-neuroseg[bioimageio]'.",
    )
    p.add_argument("model", help="neuroseg_nuclei, neurons (the shipped models), a StarDist folder/.pt/package "
                                 "or a neuron model .pt")
    p.add_argument("output", help="the package to write (.zip)")
    p.add_argument("--name", default=None, help="model name in the package (default: from the model)")
    p.add_argument("--author", action="append", default=None, metavar="NAME",
                   help="author (repeat for several; default: napari-neuroseg developers)")
    p.add_argument("--license", default="BSD-3-Clause", help="SPDX licence identifier (default: BSD-3-Clause)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--test", action="store_true",
                   help="also run bioimageio.core's model test on the written package (reproduces the test outputs)")
    p.set_defaults(func=run, io_flags=({"MODEL": "model"}, {"OUTPUT": "output"}))


def run(args: argparse.Namespace) -> int:
    import sys

    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.models.bioimageio.export import export_package

    out = export_package(args.model, args.output, name=args.name, authors=args.author, license=args.license,
                         overwrite=args.overwrite)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    if args.test:
        try:
            from bioimageio.core import test_model
        except ImportError as err:
            raise NeurosegError("--test needs bioimageio.core", fix="pip install 'napari-neuroseg[bioimageio]'") from err
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = test_model(out)
        for d in summary.details:
            if d.status != "passed":
                print(f"  {d.status}: {d.name}: {'; '.join(e.msg for e in d.errors)[:300]}", file=sys.stderr)
        print(f"bioimageio.core test: {summary.status}", file=sys.stderr)
        return 0 if summary.status == "passed" else 1
    return 0
