"""Batch runs over many files: :func:`run_batch` (a progress generator).

Per input: skip it when ``resume`` and the manifest says it is complete; otherwise open it (a bad
file is reported and skipped), then process it whole (small volumes, run in parallel on the
engine) or block by block (``block_shape`` given, or larger than ``memory_limit``). Every file's
outcome is recorded in the manifest as it ends; a summary table (CSV + JSON) is written at the end
— also after a cancel or an error, listing what was not done.
"""

from __future__ import annotations

import csv
import io as _io
import logging
import os
import time
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg.batch import jobs
from napari_neuroseg.batch.blockwise import blockwise_units, segment_blockwise
from napari_neuroseg.batch.blocks import check_block_plan
from napari_neuroseg.batch.lock import RunLock
from napari_neuroseg.batch.engine import Engine
from napari_neuroseg.batch.manifest import Manifest, params_hash
from napari_neuroseg.batch.outputs import FORMATS, output_path
from napari_neuroseg.batch.sources import InputSpec, discover_inputs, open_input
from napari_neuroseg.batch.tasks import Task, get_task
from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io.atomic import atomic_write_json, atomic_write_text, clean_temporaries
from napari_neuroseg.io.checks import require_outputs_apart
from napari_neuroseg.runtime.progress import Progress, relay

_log = logging.getLogger(__name__)

#: inputs larger than this many bytes are processed blockwise when no block shape is given
DEFAULT_MEMORY_LIMIT = 2 * 1024**3
DEFAULT_BLOCK_SHAPE = (128, 256, 256)
SUMMARY_FIELDS = ("input", "output", "status", "mode", "seconds", "n_objects", "shape", "blocks", "error")


@dataclass(frozen=True)
class BatchProgress(Progress):
    """A :class:`Progress` with the batch context: current file and overall ETA.

    ``record`` is set on the step that ends a file (its summary row: done, failed or skipped).
    """

    file: str = ""
    file_index: int = 0
    n_files: int = 0
    file_fraction: float = 0.0
    eta_s: float | None = None
    record: dict | None = None


@dataclass
class BatchResult:
    """What :func:`run_batch` returns: one full record per input (manifest fields + status)."""

    records: list[dict[str, Any]]
    outdir: Path
    manifest: Path
    summary_csv: Path
    summary_json: Path
    cancelled: bool = False
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.cancelled and self.counts.get("failed", 0) == 0


def _eta_text(eta: float | None) -> str:
    if eta is None:
        return ""
    eta = int(round(eta))
    return f" — ETA {eta // 3600:d}:{eta % 3600 // 60:02d}:{eta % 60:02d}"


def run_batch(
    task: str | Task,
    inputs: Iterable[str | Path | tuple[str, np.ndarray]],
    outdir: str | Path,
    *,
    params: Mapping[str, Any] | None = None,
    fmt: str = "tif",
    block_shape: tuple[int, int, int] | None = None,
    halo: tuple[int, int, int] | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    resume: bool = False,
    key: str | None = None,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    engine: Engine | None = None,
    debug: bool = False,
) -> Generator[BatchProgress, None, BatchResult]:
    """Run ``task`` over ``inputs`` into ``outdir`` (a progress generator returning a BatchResult).

    ``scheduler``: see :class:`~napari_neuroseg.batch.engine.Engine` (``None`` = embedded,
    ``"tcp://HOST:PORT"`` = an existing Dask cluster). Closing the generator cancels between files
    and blocks; finished outputs stay, and ``resume=True`` continues where the run stopped.

    One run at a time per output folder: the run holds ``OUTDIR/.neuroseg-batch.lock`` (see
    :mod:`~napari_neuroseg.batch.lock`) from its start to its end (also on an error or a cancel);
    a second run into the same folder raises a :class:`NeurosegError` naming the first one.
    Outputs of earlier runs in ``OUTDIR`` (listed in its manifests) are never taken as inputs, and
    an input that a run's output would overwrite is reported as failed, not overwritten.
    ``debug``: let the embedded Dask workers log a traceback per failed job.
    """
    t_start = time.perf_counter()
    task = get_task(task)
    params = task.resolve(params)
    if task.output == "metrics":
        fmt = "json"
    elif fmt not in FORMATS:
        raise NeurosegError(f"unknown output format {fmt!r}", fix=f"use one of {', '.join(FORMATS)}")
    if block_shape is not None:
        block_shape = tuple(int(b) for b in block_shape)  # type: ignore[assignment]
        if len(block_shape) != 3 or min(block_shape) < 1:
            raise NeurosegError(f"bad block shape {block_shape}", fix="give three positive sizes Z Y X")
        if task.output == "labels" and fmt == "tif":
            raise NeurosegError(
                "blockwise runs write chunked stores, not TIFF",
                fix="add --format zarr or --format ome-zarr (or drop --block-shape)",
            )
    specs = discover_inputs(inputs, key=key)
    outdir = Path(outdir)
    # The output folder must not lie inside an input store (a Zarr/FISBe sample would be changed).
    require_outputs_apart({"INPUT": [s.path for s in specs if s.format != "array"]}, {"-o": str(outdir)})
    outdir.mkdir(parents=True, exist_ok=True)
    lock = RunLock.for_folder(outdir).acquire()
    try:
        return (yield from _run_locked(
            task, specs, outdir, params, fmt, block_shape, halo, scheduler, workers, resume,
            memory_limit, engine, debug, t_start,
        ))
    finally:
        lock.release()


@dataclass
class _Batch:
    """What the steps of one locked batch run share: its settings, records and progress count."""

    task: Task
    specs: list[InputSpec]
    outdir: Path
    params: dict[str, Any]
    fmt: str
    block_shape: tuple[int, int, int] | None
    halo: tuple[int, int, int] | None
    resume: bool
    engine: Engine
    manifest: Manifest
    phash: str
    resources: dict[str, float] | None
    records: list[dict[str, Any] | None]
    total: int = 0
    done: int = 0
    t_work: float = field(default_factory=time.perf_counter)

    def progress(self, msg: str, i: int, frac: float, record: dict | None = None) -> BatchProgress:
        """A step of the batch: file ``i`` (``-1``: the batch as a whole) with its message and the ETA."""
        n_files = len(self.specs)
        elapsed = time.perf_counter() - self.t_work
        eta = None if self.done == 0 else elapsed / self.done * max(0, self.total - self.done)
        name = self.specs[i].name if i >= 0 else ""
        return BatchProgress(
            self.done, self.total, f"[{i + 1}/{n_files}] {name}: {msg}{_eta_text(eta)}" if i >= 0 else msg,
            file=name, file_index=i, n_files=n_files, file_fraction=frac, eta_s=eta, record=record,
        )

    def fail_early(self, i: int, base: dict, mode: str, error: str) -> None:
        """Record file ``i`` as failed before it ran (unreadable, or it cannot be processed)."""
        self.records[i] = {**base, "status": "failed", "mode": mode, "error": error}
        self.manifest.record(self.specs[i].name, {**self.records[i], "seconds": 0.0})

    def end_file(self, i: int, rec: dict, *, in_manifest: bool = True) -> BatchProgress:
        """Record how file ``i`` ended (in the manifest too, unless ``in_manifest`` is False and it
        did not fail); the step that carries its summary row."""
        self.records[i] = rec
        failed = rec["status"] == "failed"
        if in_manifest or failed:
            self.manifest.record(self.specs[i].name, rec)
        return self.progress(rec["status"] + (f": {rec['error']}" if failed else ""), i, 1.0, _row(rec))


def _run_locked(
    task: Task, specs: list[InputSpec], outdir: Path, params: dict[str, Any], fmt: str,
    block_shape: tuple[int, int, int] | None, halo: tuple[int, int, int] | None, scheduler: Any,
    workers: int | None, resume: bool, memory_limit: int, engine: Engine | None, debug: bool, t_start: float,
) -> Generator[BatchProgress, None, BatchResult]:
    clean_temporaries(outdir)  # only now: another run's temporaries are not ours to remove
    own = known_outputs(outdir)
    ignored = [s for s in specs if s.format != "array" and _real(s.path) in own]
    specs = [s for s in specs if not (s.format != "array" and _real(s.path) in own)]
    if not specs:
        raise NeurosegError(
            f"every input is an output of an earlier neuroseg batch run in {outdir} ({len(ignored)} ignored)",
            fix="give the original volumes as inputs (or another folder)",
        )
    engine_given = engine is not None
    engine = engine or Engine(scheduler, workers, debug=debug)
    settings = {
        "task": task.name, "params": params, "output_format": fmt,
        "block_shape": list(block_shape) if block_shape else None,
        "halo": list(halo) if halo else None, "model": task.model_info(params),
    }
    phash = params_hash(settings)
    manifest = Manifest.open(outdir, task.name, resume=resume)
    manifest.begin(**settings, params_hash=phash, engine=engine.describe())
    b = _Batch(task, specs, outdir, params, fmt, block_shape, halo, resume, engine, manifest, phash,
               {"GPU": 1} if task.uses_gpu(params) else None, [None] * len(specs))
    input_paths = {_real(s.path) for s in specs if s.format != "array"}
    plans = [pl for i in range(len(specs)) if (pl := _plan_file(b, i, input_paths, memory_limit)) is not None]
    b.total, b.t_work = sum(pl[4] for pl in plans), time.perf_counter()

    if ignored:
        yield b.progress(f"ignored {len(ignored)} output(s) of earlier runs in {outdir} (not inputs)", -1, 0.0)
    # Skipped and unreadable files first (they cost nothing).
    for i, rec in enumerate(b.records):
        if rec is not None:
            yield b.progress(f"{rec['status']} ({rec.get('error', '')})", i, 1.0, _row(rec))

    cancelled = True
    try:
        yield from _run_whole_files(b, [pl for pl in plans if pl[3] == "whole"])
        for pl in (pl for pl in plans if pl[3] == "blockwise"):
            yield from _run_blockwise_file(b, pl)
        cancelled = False
    finally:
        rows = [
            _row(r) if r is not None else {"input": s.path, "output": "", "status": "cancelled" if cancelled else "not run"}
            for r, s in zip(b.records, specs)
        ]
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        result = _write_summary(outdir, task.name, rows, counts, cancelled, time.perf_counter() - t_start, manifest)
        result.records = [dict(r) if r is not None else row for r, row in zip(b.records, rows)]
        if not engine_given:
            engine.close()
    return result


_Plan = tuple[int, InputSpec, Path, str, int]  # (index, spec, target, "whole"/"blockwise", progress units)


def _plan_file(b: _Batch, i: int, input_paths: set[str], memory_limit: int) -> _Plan | None:
    """How file ``i`` runs (whole, or blockwise when ``block_shape`` is given or it is larger than
    ``memory_limit``); None when it does not run (skipped as complete, or failed: recorded)."""
    spec, task, fmt = b.specs[i], b.task, b.fmt
    target = output_path(b.outdir, spec.name, task.name, fmt)
    base = {"input": spec.path, "output": str(target), "params_hash": b.phash}
    try:  # an output never replaces an input (a same-named file, or an input inside an output store)
        require_outputs_apart({"INPUT": list(input_paths)}, {"output": str(target)})
    except NeurosegError as err:
        b.fail_early(i, base, "-", str(NeurosegError(
            f"its output {target} would overwrite or change the input {target if _real(target) in input_paths else err.path} "
            "(an input of this run, not an output of an earlier one)",
            path=spec.path, fix="use another -o (a folder that holds no inputs), or rename that input",
        )))
        return None
    if b.resume and spec.format != "array" and b.manifest.is_complete(spec.name, b.phash, target):
        old = b.manifest.data["entries"][spec.name]
        b.records[i] = {**old, "status": "skipped", "error": "complete in a previous run"}
        return None
    if task.output != "labels":
        return i, spec, target, "whole", 1
    try:
        with open_input(spec) as inp:
            size, shape, dtype = inp.nbytes, inp.spatial_shape, inp.data.dtype
    except NeurosegError as err:
        b.fail_early(i, base, "-", str(err))
        return None
    if b.block_shape is None and size <= memory_limit:
        return i, spec, target, "whole", 1
    if fmt == "tif":
        b.fail_early(i, base, "blockwise", (
            f"{spec.path}: the volume ({size / 1e9:.1f} GB) is larger than the memory limit and "
            "must be processed blockwise. Fix: use --format zarr or ome-zarr."))
        return None
    try:  # counted, not enumerated: a tiny store can declare a 10^15-voxel array
        n_blocks = check_block_plan(shape, b.block_shape or DEFAULT_BLOCK_SHAPE, path=spec.path, dtype=dtype)
    except NeurosegError as err:
        b.fail_early(i, base, "blockwise", str(err))
        return None
    return i, spec, target, "blockwise", blockwise_units(n_blocks, task.stitch)


def _run_whole_files(b: _Batch, whole: list[_Plan]) -> Generator[BatchProgress, None, None]:
    """All whole-volume files at once on the engine; a step as they start and as each ends."""
    if not whole:
        return
    if len(whole) == 1:
        yield b.progress("segmenting the whole volume", whole[0][0], 0.0)
    else:
        names = ", ".join(pl[1].name for pl in whole[:3]) + (", …" if len(whole) > 3 else "")
        yield b.progress(f"segmenting {len(whole)} whole volumes ({names}); each file is listed as it ends", -1, 0.0)
    args = [(spec, b.task, b.params, str(target), b.fmt) for (_i, spec, target, _m, _u) in whole]
    t_submit = time.perf_counter()
    for j, res, err in b.engine.map(jobs.run_file_job, args, resources=b.resources, label="file"):
        i, spec, target = whole[j][0], whole[j][1], whole[j][2]
        base = {"input": spec.path, "output": str(target), "params_hash": b.phash, "mode": "whole"}
        if err is None:
            rec = {**base, "status": "done", **res}
        else:
            _log_failure(spec, err)
            rec = {**base, "status": "failed", "error": _err_text(err, spec), "seconds": time.perf_counter() - t_submit}
        b.done += 1
        yield b.end_file(i, rec, in_manifest=spec.format != "array")  # a layer cannot be resumed


def _run_blockwise_file(b: _Batch, plan: _Plan) -> Generator[BatchProgress, None, None]:
    """One big file block by block (blocks in parallel on the engine): a step per block."""
    i, spec, target, _mode, units = plan
    base = {"input": spec.path, "output": str(target), "params_hash": b.phash, "mode": "blockwise"}
    d0 = b.done
    yield b.progress("opening the volume and planning its blocks", i, 0.0)
    gen = segment_blockwise(
        spec, b.task, b.params, target, b.fmt, block_shape=b.block_shape or DEFAULT_BLOCK_SHAPE,
        halo=b.halo, engine=b.engine, resume=b.resume, resources=b.resources,
    )

    def block_step(p: Progress) -> BatchProgress:  # a block of this file as a step of the batch
        b.done = d0 + min(p.step, units)
        return b.progress(p.message, i, p.fraction)

    try:
        rec = {**base, "status": "done", **(yield from relay(gen, block_step))}
    except Exception as err:  # noqa: BLE001 - one bad file must not stop the batch
        _log_failure(spec, err)
        rec = {**base, "status": "failed", "error": _err_text(err, spec)}
    finally:
        gen.close()
    b.done = d0 + units
    yield b.end_file(i, rec)


def _err_text(err: BaseException, spec: InputSpec) -> str:
    """One line: the file, the problem and the fix."""
    if isinstance(err, NeurosegError):
        text = str(err)
        if err.path is None:
            text = f"{spec.path}: {text}"
        return jobs.one_line(text, limit=1000)
    return (f"{spec.path}: {type(err).__name__}: {jobs.one_line(err)}. Fix: check this input "
            "(or remove it from the inputs); --debug shows the traceback.")


def _log_failure(spec: InputSpec, err: BaseException) -> None:
    """The full traceback of a failed file, at debug level (``neuroseg --debug batch`` shows it)."""
    _log.debug("%s failed", spec.path, exc_info=(type(err), err, err.__traceback__))


def _real(path: str | Path) -> str:
    return os.path.realpath(os.fspath(path))


def known_outputs(outdir: Path) -> set[str]:
    """Real paths of the outputs earlier runs wrote into ``outdir`` (from its manifests)."""
    out: set[str] = set()
    for m in sorted(outdir.glob("neuroseg-batch-*.json")):
        for p in Manifest.outputs_in(m):
            out.add(_real(p))
    return out


def _row(rec: Mapping[str, Any]) -> dict[str, Any]:
    row = {k: rec.get(k, "") for k in SUMMARY_FIELDS}
    if isinstance(row["seconds"], float):
        row["seconds"] = round(row["seconds"], 3)
    if isinstance(row["shape"], (list, tuple)):
        row["shape"] = "x".join(map(str, row["shape"]))
    for k, v in (rec.get("metrics") or {}).items():
        row[k] = v
    return row


def _write_summary(
    outdir: Path, task: str, rows: list[dict], counts: dict[str, int], cancelled: bool, seconds: float, manifest: Manifest,
) -> BatchResult:
    csv_path = outdir / f"summary-{task}.csv"
    json_path = outdir / f"summary-{task}.json"
    fields = list(SUMMARY_FIELDS) + sorted({k for r in rows for k in r} - set(SUMMARY_FIELDS))
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(csv_path, buf.getvalue())
    summary = {"task": task, "cancelled": cancelled, "seconds": round(seconds, 3), "counts": counts, "files": rows}
    atomic_write_json(json_path, summary)
    manifest.finish({"cancelled": cancelled, "seconds": round(seconds, 3), "counts": counts})
    return BatchResult(rows, outdir, manifest.path, csv_path, json_path, cancelled, counts)
