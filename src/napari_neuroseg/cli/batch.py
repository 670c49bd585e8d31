"""``neuroseg batch TASK INPUTS... -o OUTDIR``: run a task over files or huge volumes.

Examples::

    neuroseg batch nuclei data/*.tif -o out/
    neuroseg batch neurons big.zarr -o out/ --format ome-zarr --block-shape 128 256 256
    neuroseg batch threshold folder/ -o out/ --scheduler tcp://10.0.0.5:8786 --resume
    neuroseg batch evaluate preds/ -o metrics/ --gt fisbe/gt/
    neuroseg batch custom mypkg.tasks:MyTask folder/ -o out/ -p sigma=2
"""

from __future__ import annotations

import argparse
import sys

from napari_neuroseg.cli._flags import add_flag
from napari_neuroseg.cli._progress import ProgressPrinter

_TASKS = ("threshold", "nuclei", "neurons", "evaluate")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or glob patterns (quote globs)")
    add_flag(p, "-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--format", default="tif", choices=("tif", "zarr", "ome-zarr"), help="label output format (default tif; blockwise needs zarr/ome-zarr)")
    p.add_argument("--block-shape", nargs=3, type=int, metavar=("Z", "Y", "X"), help="process blockwise with this block shape")
    p.add_argument("--halo", nargs=3, type=int, metavar=("Z", "Y", "X"), help="voxels of context around each block (default: the task's)")
    p.add_argument("--scheduler", default=None, metavar="ADDR", help="where jobs run: tcp://HOST:PORT (a Dask scheduler), sync (this thread), threads (a thread pool here) or processes (a local Dask cluster) (default: threads, sync for one worker)")
    p.add_argument("--workers", type=int, default=None, help="embedded workers/threads (default: min(4, CPUs))")
    p.add_argument("--resume", action="store_true", help="skip inputs (and blocks) finished by a previous run")
    p.add_argument("--key", default=None, help="array key inside Zarr/HDF5 inputs")
    p.add_argument("--memory-limit", type=float, default=2.0, metavar="GB", help="inputs larger than this run blockwise (default 2 GB)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="a task parameter (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary")


def register(sub: argparse._SubParsersAction) -> None:
    from napari_neuroseg.batch.tasks import get_task

    p = sub.add_parser("batch", help="run a segmenter or the metrics over many files or huge volumes (Dask)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    for name in _TASKS:
        task = get_task(name) if name == "threshold" else None
        if task is None:
            # adapters import nothing heavy at module level
            from napari_neuroseg.batch.adapters import EvaluateTask, NeuronsTask, NucleiTask

            task = {"nuclei": NucleiTask, "neurons": NeuronsTask, "evaluate": EvaluateTask}[name]()
        tp = tasks.add_parser(name, help=task.description)
        _common(tp)
        group = tp.add_argument_group(f"{name} parameters")
        for prm in task.params:
            kw: dict = {"dest": f"task_{prm.name}", "default": None, "help": f"{prm.help} (default: {prm.default})"}
            if prm.choices:
                kw["choices"] = prm.choices
            if prm.name == "voxel_size":  # three numbers, as on `neuroseg nuclei` / `neurons`
                kw.update(nargs=3, type=float, metavar=("Z", "Y", "X"),
                          help="voxel size in µm; the volume is resampled to the model's scale (default: as it is)")
                group.add_argument(prm.flag, **kw)
                continue
            if prm.type is bool:
                kw["action"] = argparse.BooleanOptionalAction
            else:
                kw["type"] = prm.type
            add_flag(group, prm.flag, **kw)  # --n-tiles also as --tiles
        tp.set_defaults(func=run, task_name=name)
    cp = tasks.add_parser("custom", help="your own Task subclass, given as module:Class")
    cp.add_argument("task_class", metavar="MODULE:CLASS")
    _common(cp)
    cp.set_defaults(func=run, task_name=None)


def run(args: argparse.Namespace) -> int:
    from napari_neuroseg.batch import get_task, run_batch
    from napari_neuroseg.errors import NeurosegError
    from napari_neuroseg.runtime.progress import run_to_completion

    task = get_task(args.task_name or args.task_class)
    params: dict = {}
    for item in args.param:
        if "=" not in item:
            raise NeurosegError(f"bad --param {item!r}", fix="write KEY=VALUE")
        k, v = item.split("=", 1)
        params[k.strip()] = v
    for prm in task.params:
        v = getattr(args, f"task_{prm.name}", None)
        if v is not None:
            params[prm.name] = ",".join(map(str, v)) if prm.name == "voxel_size" else v
    gen = run_batch(
        task, args.inputs, args.output, params=params, fmt=args.format,
        block_shape=tuple(args.block_shape) if args.block_shape else None,
        halo=tuple(args.halo) if args.halo else None, scheduler=args.scheduler, workers=args.workers,
        resume=args.resume, key=args.key, memory_limit=int(args.memory_limit * 1024**3),
        debug=bool(getattr(args, "debug", False)),
    )
    if getattr(args, "debug", False):  # the full traceback of every failed file
        import logging

        handler = logging.StreamHandler(sys.stderr)
        log = logging.getLogger("napari_neuroseg.batch.runner")
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)
    # a log line per finished file (its record), else at most every 2 s
    show = ProgressPrinter(quiet=args.quiet, in_place=False, one_per_step=False, min_gap=2.0)
    try:
        result = run_to_completion(gen, show)
    except KeyboardInterrupt:
        gen.close()
        print("neuroseg batch: cancelled; rerun with --resume to continue", file=sys.stderr)
        return 130
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items()))
    print(f"neuroseg batch {task.name}: {counts}; summary: {result.summary_csv}; manifest: {result.manifest}")
    for r in result.records:
        if r["status"] == "failed":  # one line per failed file: the file, the problem, the fix
            print(f"  failed: {' '.join(str(r['error']).split())}", file=sys.stderr)
    return 0 if result.ok else 1
