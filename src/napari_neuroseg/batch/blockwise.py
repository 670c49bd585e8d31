"""Blockwise segmentation of volumes larger than memory, written to a chunked Zarr/OME-Zarr.

:func:`segment_blockwise` is a progress generator:

1. ``prepare``: the task resolves data-dependent parameters once (e.g. Otsu on a strided sample);
2. pass 1: every block is read with its halo (decoded input chunks are shared between
   neighbouring blocks through a small LRU cache), segmented, and its local result stored
   uncompressed (``.npy``, smallest dtype) in the run's work folder
   (``OUTDIR/.neuroseg-work/<output name>/``) with a completion marker;
3. stitching: ``faces`` — pairs of ids touching across block faces → global union-find (ids in
   the order of first appearance, global size filter); ``overlap`` — pairs of ids sharing ≥ half
   of the smaller one's voxels where neighbouring halo'd blocks overlap → the same union-find;
   ``centre`` — id offsets per block;
4. pass 2: each output chunk (the output's chunk grid is the block grid) is remapped in place
   (``fastremap``; identity maps skipped) and encoded once, with a marker;
5. the finished store is renamed onto the target and the work folder removed.

Only one block (plus its halo) is in memory per worker at a time. An interrupted run resumes
from the markers (same parameters, block shape and input), giving the same output.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg import __version__
from napari_neuroseg.batch import chunkcache, jobs
from napari_neuroseg.batch.blocks import (
    Block,
    check_block_plan,
    forward_neighbours,
    grid_shape,
    plan_blocks,
    union_find_mapping,
)
from napari_neuroseg.batch.engine import Engine
from napari_neuroseg.batch.lock import RunLock
from napari_neuroseg.batch.sources import InputSpec, open_input
from napari_neuroseg.batch.tasks import Task
from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io.atomic import atomic_write_json, replace_path
from napari_neuroseg.io.zarr_io import create_label_store
from napari_neuroseg.runtime.progress import Progress

WORK_DIR = ".neuroseg-work"


def work_dir_for(target: Path) -> Path:
    return target.parent / WORK_DIR / target.name


def blockwise_units(n_blocks: int, mode: str) -> int:
    """Progress steps of a blockwise run (pass 1, matching for ``faces``/``overlap``, pass 2)."""
    return n_blocks * (3 if mode in ("faces", "overlap") else 2)


def _input_fingerprint(spec: InputSpec) -> dict[str, Any]:
    p = Path(spec.path)
    if not p.exists():
        return {"path": spec.path}
    st = p.stat()
    if p.is_dir():  # a Zarr store: its metadata files change when it is rewritten
        metas = [m for m in (".zarray", ".zgroup", "zarr.json", ".zattrs") if (p / m).exists()]
        st_m = max((os.stat(p / m).st_mtime_ns for m in metas), default=st.st_mtime_ns)
        return {"path": str(p.resolve()), "mtime": st_m}
    return {"path": str(p.resolve()), "mtime": st.st_mtime_ns, "size": st.st_size}


def segment_blockwise(
    spec: InputSpec,
    task: Task,
    params: dict[str, Any],
    target: str | Path,
    fmt: str = "zarr",
    *,
    block_shape: tuple[int, int, int],
    halo: tuple[int, int, int] | None = None,
    engine: Engine | None = None,
    resume: bool = True,
    resources: dict[str, float] | None = None,
) -> Generator[Progress, None, dict[str, Any]]:
    """Segment ``spec`` block by block into the chunked store ``target`` (progress generator).

    Returns a dict with ``n_objects``, ``shape``, ``blocks``, ``truncated`` and timings.
    ``resume=False`` discards a previous unfinished run of the same target.
    """
    t0 = time.perf_counter()
    target = Path(target)
    mode = task.stitch
    if mode not in ("faces", "centre", "overlap"):
        raise NeurosegError(f"task {task.name} has unknown stitch mode {mode!r}", fix="use 'faces', 'overlap' or 'centre'")
    if fmt not in ("zarr", "ome-zarr"):
        raise NeurosegError(
            f"blockwise output cannot be written as {fmt!r}", path=target,
            fix="use --format zarr or --format ome-zarr for blockwise runs",
        )
    # One run per target: a second run of the same input into the same folder would share the
    # work folder (refused here, clearly, instead of failing later with a misleading message).
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = RunLock(target.parent / f".{target.name}.lock", what="blockwise run", folder=target)
    lock.acquire()
    own_engine = engine is None
    engine = engine or Engine("sync")
    try:
        return (yield from _segment_blockwise(
            spec, task, params, target, fmt, block_shape, halo, engine, resume, resources, t0, mode,
        ))
    finally:
        if own_engine:
            engine.close()
        lock.release()


@dataclass
class _Run:
    """One blockwise run: the plan (fixed before any block is read) and where it stands."""

    spec: InputSpec
    task: Task
    params: dict[str, Any]
    target: Path
    fmt: str
    mode: str
    engine: Engine
    resources: dict[str, float] | None
    shape: tuple[int, int, int]
    scale: tuple[float, float, float]
    resolved: dict[str, Any]
    block_shape: tuple[int, int, int]
    halo: tuple[int, int, int]
    blocks: list[Block]
    cache_bytes: int
    work: Path = Path()
    final: Path = Path()
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    step: int = 0

    @property
    def n(self) -> int:
        return len(self.blocks)

    @property
    def total(self) -> int:
        return blockwise_units(self.n, self.mode)

    def advance(self, k: int, message: str | None = None) -> Progress | None:
        self.step += k
        return None if message is None else Progress(self.step, self.total, message)


def _segment_blockwise(
    spec: InputSpec, task: Task, params: dict[str, Any], target: Path, fmt: str,
    block_shape: tuple[int, int, int], halo: tuple[int, int, int] | None, engine: Engine, resume: bool,
    resources: dict[str, float] | None, t0: float, mode: str,
) -> Generator[Progress, None, dict[str, Any]]:
    run = _plan(spec, task, params, target, fmt, mode, block_shape, halo, engine, resources)
    _prepare_work_folder(run, resume)
    try:
        p1 = yield from _pass1(run)
        counts = np.array([p1[b.index]["n"] for b in run.blocks], np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        mapping, n_objects = yield from _stitch(run, p1, counts, starts)
        yield from _pass2(run, mapping, counts, starts)
        _finish(run)
        return {
            "seconds": time.perf_counter() - t0,
            "shape": list(run.shape),
            "n_objects": n_objects,
            "blocks": run.n,
            "block_shape": list(run.block_shape),
            "halo": list(run.halo),
            "stitch": mode,
            "truncated": int(sum(p1[b.index].get("truncated", 0) for b in run.blocks)),
            "resolved_params": {k: v for k, v in run.resolved.items() if params.get(k) != v},
        }
    finally:
        chunkcache.clear()
        if run.cache_bytes:
            engine.run_on_workers(chunkcache.clear)


def _plan(
    spec: InputSpec, task: Task, params: dict[str, Any], target: Path, fmt: str, mode: str,
    block_shape: tuple[int, int, int], halo: tuple[int, int, int] | None, engine: Engine,
    resources: dict[str, float] | None,
) -> _Run:
    """Open the input once: check the plan, let the task resolve its parameters (and the file's
    voxel size), choose the halo and the blocks, and size the chunk cache."""
    with open_input(spec) as inp:
        shape = inp.spatial_shape
        # Refuse absurd plans before the task reads anything (a tiny store may declare 10^15 voxels).
        check_block_plan(shape, block_shape, path=spec.path, dtype=inp.data.dtype)
        resolved = jobs.prepare_task(task, inp.data, inp.axes, dict(params), spec, source=inp)
        halo = tuple(int(h) for h in (halo if halo is not None else task.halo_for(resolved)))  # type: ignore[assignment]
        block_shape = tuple(max(1, min(int(b), s)) for b, s in zip(block_shape, shape))  # type: ignore[assignment]
        if mode == "overlap" and min(halo) < 1:
            raise NeurosegError(
                f"task {task.name} matches objects where blocks overlap, which needs a halo of at least "
                f"1 voxel on every axis (got {list(halo)})", path=spec.path, fix="give --halo Z Y X with values >= 1",
            )
        blocks = plan_blocks(shape, block_shape, halo)
        # Halos reach into the neighbours' input chunks: keep decoded chunks in a small LRU cache
        # (twice the chunks one block touches: bounded by the block size, not the volume).
        cache_bytes = 0
        if any(halo):
            sample = [b for b in blocks if max(b.grid) <= 2]
            cache_bytes = 2 * max(inp.chunk_bytes_touched(b.outer) for b in sample)
        scale = inp.scale
    return _Run(spec, task, params, target, fmt, mode, engine, resources, shape, scale, resolved,
                block_shape, halo, blocks, cache_bytes)  # type: ignore[arg-type]


def _block_params(run: _Run) -> tuple[dict[str, Any], int]:
    """The parameters each block runs with, and the global size filter applied after stitching.

    The size filter runs on whole (stitched) objects. In faces mode blocks run without it (an
    object is cut exactly at the block faces, its pieces may be small); in overlap mode each
    block sees the objects through its halo and keeps the parameter, which a segmenter may also
    use to absorb small fragments into their neighbours (the neuron model does).
    """
    params = dict(run.resolved)
    name = run.task.min_size_param
    if run.mode not in ("faces", "overlap") or not name or name not in params:
        return params, 0
    min_size = int(params[name] or 0)
    if run.mode == "faces":
        params[name] = 0
    return params, min_size


def _prepare_work_folder(run: _Run, resume: bool) -> None:
    """``OUTDIR/.neuroseg-work/<output name>/``: kept when it holds an unfinished run with the same
    state (version, task, parameters, blocks, input), else emptied and the output store created."""
    run.work = work = work_dir_for(run.target)
    run.final = work / ("final.ome.zarr" if run.fmt == "ome-zarr" else "final.zarr")
    state = {
        "version": __version__, "layout": 2, "task": run.task.name, "params": run.resolved, "mode": run.mode,
        "format": run.fmt, "block_shape": list(run.block_shape), "halo": list(run.halo),
        "input": _input_fingerprint(run.spec),
    }
    state_hash = hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()
    state_file = work / "state.json"
    fresh = True
    if resume and state_file.exists():
        try:
            fresh = json.loads(state_file.read_text()).get("hash") != state_hash
        except (OSError, ValueError):
            fresh = True
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
        for sub in ("p1", "p2", "blocks", "faces"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        create_label_store(run.final, run.shape, run.block_shape, run.fmt, scale=run.scale, name=run.target.name)
        atomic_write_json(state_file, {"hash": state_hash, "state": state})


def _done(run: _Run, phase: str) -> dict[int, dict]:
    """The completion markers of ``phase`` (``p1``/``p2``) found in the work folder, by block index."""
    out = {}
    for b in run.blocks:
        m = run.work / phase / f"{b.index}.json"
        if m.exists():
            try:
                out[b.index] = json.loads(m.read_text())
            except ValueError:  # a torn marker (should not happen: markers are atomic)
                pass
    return out


def _pass1(run: _Run) -> Generator[Progress, None, dict[int, dict]]:
    """Segment every block not done yet (with its halo); one progress step per block."""
    p1 = _done(run, "p1")
    if p1:
        yield run.advance(len(p1), f"resuming: {len(p1)}/{run.n} blocks already segmented")
    todo = [b for b in run.blocks if b.index not in p1]
    block_params, _ = _block_params(run)
    args = [(run.spec, run.task, block_params, b, run.mode, run.shape, str(run.work), run.run_id, run.cache_bytes)
            for b in todo]
    for i, res, err in run.engine.map(jobs.pass1_block_job, args, resources=run.resources, label="block"):
        b = todo[i]
        if isinstance(err, NeurosegError):
            raise NeurosegError(
                f"block {b.index} ({_fmt_slices(b.core)}): {err.problem}", path=err.path or run.spec.path,
                fix=f"{err.fix or 'fix the cause'}, then rerun with --resume (finished blocks are kept)",
            ) from err
        if err is not None:
            raise NeurosegError(
                f"block {b.index} ({_fmt_slices(b.core)}) failed: {type(err).__name__}: {jobs.one_line(err)}",
                path=run.spec.path, fix="fix the cause and rerun with --resume (finished blocks are kept; "
                "--debug shows the traceback)",
            ) from err
        p1[b.index] = res
        yield run.advance(1, f"segmented block {len(p1)}/{run.n}")
    return p1


def _stitch(
    run: _Run, p1: dict[int, dict], counts: np.ndarray, starts: np.ndarray
) -> Generator[Progress, None, tuple[np.ndarray | None, int]]:
    """``faces``/``overlap``: match ids across block faces or in the overlaps (one step per block),
    then one global union-find with the size filter; ``centre`` needs no matching.
    Returns ``(mapping from pass-1 global ids to final ids or None, number of objects)``."""
    n_total = int(counts.sum())
    if run.mode not in ("faces", "overlap"):
        return None, n_total
    work, blocks = str(run.work), run.blocks
    if run.mode == "faces":
        offsets = starts.reshape(grid_shape(run.shape, run.block_shape))
        connectivity = int(run.resolved.get("connectivity", 26))
        match_job, what = jobs.match_block_job, "faces"
        margs = [(work, b, run.shape, run.block_shape, offsets, connectivity) for b in blocks]
    else:
        by_grid = {b.grid: b for b in blocks}
        match_job, what = jobs.match_overlap_job, "overlaps"
        margs = [
            (work, b, [(nb, int(starts[nb.index])) for nb in forward_neighbours(b, by_grid)],
             int(starts[b.index]), float(run.task.overlap_fraction))
            for b in blocks
        ]
    pairs = [np.zeros((0, 2), np.int64)]
    for i, res, err in run.engine.map(match_job, margs, label="match"):
        if err is not None:
            raise NeurosegError(
                f"matching block {i} failed ({type(err).__name__}: {jobs.one_line(err)})", path=run.spec.path,
                fix="rerun with --resume",
            ) from err
        pairs.append(res)
        yield run.advance(1, f"matched {what} of block {len(pairs) - 1}/{run.n}")
    sizes = np.zeros(n_total + 1, np.int64)
    for b, s0 in zip(blocks, starts):
        sz = p1[b.index].get("sizes", [])
        sizes[s0 + 1 : s0 + 1 + len(sz)] = sz
    _, min_size = _block_params(run)
    mapping = union_find_mapping(n_total, np.concatenate(pairs), sizes, min_size)
    return mapping, int(mapping.max()) if mapping.size else 0


def _centre_neighbours(run: _Run, b: Block, counts: np.ndarray, starts: np.ndarray) -> list[tuple[Block, int]]:
    """The blocks (with their id offsets) whose halo'd region can reach into ``b``'s core, in block order."""
    reach = [-(-h // bs) for h, bs in zip(run.halo, run.block_shape)]
    gshape = grid_shape(run.shape, run.block_shape)
    by_grid = {x.grid: x for x in run.blocks}
    nbs = []
    for d in itertools.product(*(range(-r, r + 1) for r in reach)):
        g = tuple(gi + di for gi, di in zip(b.grid, d))
        if all(0 <= gi < gs for gi, gs in zip(g, gshape)):
            nb = by_grid[g]
            if counts[nb.index]:
                nbs.append((nb, int(starts[nb.index])))
    return sorted(nbs, key=lambda t: t[0].index)


def _pass2(
    run: _Run, mapping: np.ndarray | None, counts: np.ndarray, starts: np.ndarray
) -> Generator[Progress, None, None]:
    """Write every output chunk not written yet (the output's chunk grid is the block grid):
    remapped to the final ids, or (``centre``) pasted from the blocks owning its objects."""
    p2 = _done(run, "p2")
    run.advance(len(p2))
    todo = [b for b in run.blocks if b.index not in p2]
    work, final = str(run.work), str(run.final)
    if mapping is not None:
        stored = "core" if run.mode == "faces" else "outer"
        args = [
            (work, b, np.concatenate([[0], mapping[starts[b.index] + 1 : starts[b.index] + 1 + counts[b.index]]])
             .astype(np.uint32), final, run.fmt, run.shape, stored)
            for b in todo
        ]
        fn = jobs.pass2_faces_job
    else:
        args = [(work, b, _centre_neighbours(run, b, counts, starts), final, run.fmt, run.shape) for b in todo]
        fn = jobs.pass2_centre_job
    for i, _res, err in run.engine.map(fn, args, label="write"):
        if err is not None:
            raise NeurosegError(
                f"writing block {todo[i].index} failed ({type(err).__name__}: {jobs.one_line(err)})",
                path=run.target, fix="check the free disk space and that nothing else writes to this output, "
                "then rerun with --resume",
            ) from err
        p2[todo[i].index] = {}
        yield run.advance(1, f"wrote block {len(p2)}/{run.n}")


def _finish(run: _Run) -> None:
    """Move the finished store onto the target and remove the work folder."""
    run.target.parent.mkdir(parents=True, exist_ok=True)
    replace_path(run.final, run.target)
    shutil.rmtree(run.work, ignore_errors=True)
    with contextlib.suppress(OSError):
        run.work.parent.rmdir()


def _fmt_slices(sl: tuple[slice, ...]) -> str:
    return ", ".join(f"{s.start}:{s.stop}" for s in sl)

