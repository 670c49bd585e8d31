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

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg import __version__
from napari_neuroseg.batch import chunkcache, jobs
from napari_neuroseg.batch.blocks import check_block_plan, forward_neighbours, grid_shape, plan_blocks, union_find_mapping
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


def _segment_blockwise(
    spec: InputSpec, task: Task, params: dict[str, Any], target: Path, fmt: str,
    block_shape: tuple[int, int, int], halo: tuple[int, int, int] | None, engine: Engine, resume: bool,
    resources: dict[str, float] | None, t0: float, mode: str,
) -> Generator[Progress, None, dict[str, Any]]:
    with open_input(spec) as inp:
        shape = inp.spatial_shape
        axes, scale = inp.axes, inp.scale
        # Refuse absurd plans before the task reads anything (a tiny store may declare 10^15 voxels).
        check_block_plan(shape, block_shape, path=spec.path, dtype=inp.data.dtype)
        resolved = jobs.prepare_task(task, inp.data, axes, dict(params), spec, source=inp)
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
    run_id = uuid.uuid4().hex
    n = len(blocks)
    total = blockwise_units(n, mode)
    block_params = dict(resolved)
    min_size = 0
    if mode in ("faces", "overlap") and task.min_size_param and task.min_size_param in block_params:
        # The size filter runs on whole (stitched) objects. In faces mode blocks run without it (an
        # object is cut exactly at the block faces, its pieces may be small); in overlap mode each
        # block sees the objects through its halo and keeps the parameter, which a segmenter may
        # also use to absorb small fragments into their neighbours (the neuron model does).
        min_size = int(block_params[task.min_size_param] or 0)
        if mode == "faces":
            block_params[task.min_size_param] = 0
    connectivity = int(resolved.get("connectivity", 26))

    work = work_dir_for(target)
    state = {
        "version": __version__, "layout": 2, "task": task.name, "params": resolved, "mode": mode, "format": fmt,
        "block_shape": list(block_shape), "halo": list(halo), "input": _input_fingerprint(spec),
    }
    state_hash = hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()
    state_file = work / "state.json"
    fresh = True
    if resume and state_file.exists():
        try:
            fresh = json.loads(state_file.read_text()).get("hash") != state_hash
        except (OSError, ValueError):
            fresh = True
    final = work / ("final.ome.zarr" if fmt == "ome-zarr" else "final.zarr")
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
        for sub in ("p1", "p2", "blocks", "faces"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        create_label_store(final, shape, block_shape, fmt, scale=scale, name=target.name)
        atomic_write_json(state_file, {"hash": state_hash, "state": state})

    def done(phase: str) -> dict[int, dict]:
        out = {}
        for b in blocks:
            m = work / phase / f"{b.index}.json"
            if m.exists():
                try:
                    out[b.index] = json.loads(m.read_text())
                except ValueError:  # a torn marker (should not happen: markers are atomic)
                    pass
        return out

    step = 0
    try:
        # -- pass 1 ---------------------------------------------------------------------------
        p1 = done("p1")
        step += len(p1)
        if p1:
            yield Progress(step, total, f"resuming: {len(p1)}/{n} blocks already segmented")
        todo = [b for b in blocks if b.index not in p1]
        jobs_args = [(spec, task, block_params, b, mode, shape, str(work), run_id, cache_bytes) for b in todo]
        for i, res, err in engine.map(jobs.pass1_block_job, jobs_args, resources=resources, label="block"):
            b = todo[i]
            if isinstance(err, NeurosegError):
                raise NeurosegError(
                    f"block {b.index} ({_fmt_slices(b.core)}): {err.problem}", path=err.path or spec.path,
                    fix=f"{err.fix or 'fix the cause'}, then rerun with --resume (finished blocks are kept)",
                ) from err
            if err is not None:
                raise NeurosegError(
                    f"block {b.index} ({_fmt_slices(b.core)}) failed: {type(err).__name__}: {jobs.one_line(err)}",
                    path=spec.path, fix="fix the cause and rerun with --resume (finished blocks are kept; "
                    "--debug shows the traceback)",
                ) from err
            p1[b.index] = res
            step += 1
            yield Progress(step, total, f"segmented block {len(p1)}/{n}")
        counts = np.array([p1[b.index]["n"] for b in blocks], np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        n_total = int(counts.sum())
        truncated = int(sum(p1[b.index].get("truncated", 0) for b in blocks))

        # -- stitching ------------------------------------------------------------------------
        if mode in ("faces", "overlap"):
            if mode == "faces":
                offsets = starts.reshape(grid_shape(shape, block_shape))
                match_job, what = jobs.match_block_job, "faces"
                margs = [(str(work), b, shape, block_shape, offsets, connectivity) for b in blocks]
            else:
                by_grid = {b.grid: b for b in blocks}
                match_job, what = jobs.match_overlap_job, "overlaps"
                margs = [
                    (str(work), b, [(nb, int(starts[nb.index])) for nb in forward_neighbours(b, by_grid)],
                     int(starts[b.index]), float(task.overlap_fraction))
                    for b in blocks
                ]
            pairs = [np.zeros((0, 2), np.int64)]
            for i, res, err in engine.map(match_job, margs, label="match"):
                if err is not None:
                    raise NeurosegError(
                        f"matching block {i} failed ({type(err).__name__}: {jobs.one_line(err)})", path=spec.path,
                        fix="rerun with --resume",
                    ) from err
                pairs.append(res)
                step += 1
                yield Progress(step, total, f"matched {what} of block {len(pairs) - 1}/{n}")
            sizes = np.zeros(n_total + 1, np.int64)
            for b, s0 in zip(blocks, starts):
                sz = p1[b.index].get("sizes", [])
                sizes[s0 + 1 : s0 + 1 + len(sz)] = sz
            mapping = union_find_mapping(n_total, np.concatenate(pairs), sizes, min_size)
            n_objects = int(mapping.max()) if mapping.size else 0
        else:
            mapping = None
            n_objects = n_total

        # -- pass 2 ---------------------------------------------------------------------------
        p2 = done("p2")
        step += len(p2)
        todo = [b for b in blocks if b.index not in p2]
        if mode in ("faces", "overlap"):
            assert mapping is not None
            args2 = [
                (str(work), b, np.concatenate([[0], mapping[starts[b.index] + 1 : starts[b.index] + 1 + counts[b.index]]]).astype(np.uint32),
                 str(final), fmt, shape, "core" if mode == "faces" else "outer")
                for b in todo
            ]
            fn = jobs.pass2_faces_job
        else:
            reach = [-(-h // bs) for h, bs in zip(halo, block_shape)]
            gshape = grid_shape(shape, block_shape)
            by_grid = {b.grid: b for b in blocks}
            args2 = []
            for b in todo:
                nbs = []
                for dz in range(-reach[0], reach[0] + 1):
                    for dy in range(-reach[1], reach[1] + 1):
                        for dx in range(-reach[2], reach[2] + 1):
                            g = (b.grid[0] + dz, b.grid[1] + dy, b.grid[2] + dx)
                            if all(0 <= gi < gs for gi, gs in zip(g, gshape)):
                                nb = by_grid[g]
                                if counts[nb.index]:
                                    nbs.append((nb, int(starts[nb.index])))
                nbs.sort(key=lambda t: t[0].index)
                args2.append((str(work), b, nbs, str(final), fmt, shape))
            fn = jobs.pass2_centre_job
        for i, _res, err in engine.map(fn, args2, label="write"):
            if err is not None:
                raise NeurosegError(
                    f"writing block {todo[i].index} failed ({type(err).__name__}: {jobs.one_line(err)})", path=target,
                    fix="check the free disk space and that nothing else writes to this output, then rerun with --resume",
                ) from err
            p2[todo[i].index] = {}
            step += 1
            yield Progress(step, total, f"wrote block {len(p2)}/{n}")

        # -- finish ---------------------------------------------------------------------------
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_path(final, target)
        shutil.rmtree(work, ignore_errors=True)
        try:
            (work.parent).rmdir()
        except OSError:
            pass
        return {
            "seconds": time.perf_counter() - t0,
            "shape": list(shape),
            "n_objects": n_objects,
            "blocks": n,
            "block_shape": list(block_shape),
            "halo": list(halo),
            "stitch": mode,
            "truncated": truncated,
            "resolved_params": {k: v for k, v in resolved.items() if params.get(k) != v},
        }
    finally:
        chunkcache.clear()
        if cache_bytes:
            engine.run_on_workers(chunkcache.clear)


def _fmt_slices(sl: tuple[slice, ...]) -> str:
    return ", ".join(f"{s.start}:{s.stop}" for s in sl)

