"""``neuroseg evaluate GT PRED``: FISBe metrics of files or of two folders matched by name."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="FISBe metrics (official FlyLight preset) of a prediction against ground truth",
        description=(
            "Compute avF1, C, S, clDice_TP, tp, FS, FM and the per-threshold table exactly as "
            "the official FISBe evaluator (FlyLight preset). GT and PRED are files (FISBe Zarr, "
            "Zarr, OME-Zarr, TIFF, HDF5) or two folders whose entries are matched by name."
        ),
    )
    p.add_argument("gt", help="ground truth file or folder")
    p.add_argument("pred", help="prediction file or folder")
    p.add_argument("--gt-key", default=None, help="array key inside the GT container")
    p.add_argument("--pred-key", default=None, help="array key inside the prediction container")
    p.add_argument("--partly", action="store_true",
                   help="the ground truth is partly labelled (for folders: all samples)")
    p.add_argument("--split-file", default=None,
                   help="folders: file saying which samples are partly labelled "
                        "(the benchmark's sample_list_per_split.txt)")
    p.add_argument("--json", dest="json_out", default=None, help="write all results as JSON")
    p.add_argument("--toml", dest="toml_out", default=None,
                   help="official TOML layout: a file (one sample) or a folder (one per sample)")
    p.add_argument("--min-size", type=int, default=800,
                   help="remove predicted ids with at most this many voxels (default 800)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run, io_flags=({"GT": "gt", "PRED": "pred", "--split-file": "split_file"},
                                       {"--json": "json_out", "--toml": "toml_out"}))


def run(args: argparse.Namespace) -> int:
    from napari_neuroseg.cli._progress import ProgressPrinter
    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.metrics import aggregate, write_json, write_toml
    from napari_neuroseg.metrics.files import (
        evaluate_files_iter, match_folders, read_split_file,
    )
    from napari_neuroseg.metrics.report import format_table, per_threshold_rows
    from napari_neuroseg.runtime.progress import run_to_completion

    gt, pred = Path(args.gt), Path(args.pred)
    folders = gt.is_dir() and pred.is_dir() and not any(
        s.suffix.lower() in (".zarr", ".n5") for s in (gt, pred))
    split = read_split_file(args.split_file) if args.split_file else None
    cb = ProgressPrinter(quiet=args.quiet)

    def one(g: Path, p: Path, partly: bool) -> dict:
        return run_to_completion(
            evaluate_files_iter(g, p, gt_key=args.gt_key, pred_key=args.pred_key,
                                partly=partly, min_size=args.min_size), cb)

    if not folders:
        if gt.is_dir() != pred.is_dir() and not (gt.suffix or pred.suffix):
            raise NeurosegError("GT and PRED must both be files or both be folders",
                                fix="pass two files or two folders")
        res = one(gt, pred, args.partly)
        cb.end()
        print(format_table({gt.name.split(".")[0]: res}))
        print()
        rows = per_threshold_rows(res)
        w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(c.rjust(x) for c, x in zip(r, w)))
        for wmsg in res["warnings"]:
            print(f"warning: {wmsg}")
        if args.json_out:
            write_json(args.json_out, res)
        if args.toml_out:
            write_toml(args.toml_out, res)
        return 0

    results, names, flags = [], [], []
    for name, g, p in match_folders(gt, pred):
        partly = split.get(name, args.partly) if split is not None else args.partly
        if not args.quiet:
            print(f"{name} ({'partly' if partly else 'completely'})", file=sys.stderr)
        res = one(g, p, partly)
        cb.end()
        results.append(res)
        names.append(name)
        flags.append(partly)
        if args.toml_out:
            kind = "partly" if partly else "completely"
            write_toml(Path(args.toml_out) / f"{name}.{kind}.toml", res)
    sets = aggregate(results, flags)
    table = dict(zip(names, results))
    for key in ("completely", "partly", "combined"):
        if sets[key] is not None and not (key == "combined" and None in (sets["completely"],
                                                                          sets["partly"])):
            table[f"[{key}]"] = sets[key]
    print(format_table(table))
    for name, res in zip(names, results):
        for wmsg in res["warnings"]:
            print(f"warning: {name}: {wmsg}")
    if args.json_out:
        write_json(args.json_out, {"samples": table_samples(names, results, flags),
                                   "sets": sets})
    return 0


def table_samples(names, results, flags) -> dict:
    return {n: {**r, "partly": f} for n, r, f in zip(names, results, flags)}
