"""Worker-side jobs: plain module-level functions Dask can ship to any worker.

Each job opens what it needs by path (inputs, the run's work folder) so that only small
arguments travel; results are small dicts or pair lists. Every job writes its output before a
completion marker (``atomic_write_json``), so an interrupted job is simply redone on resume.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_neuroseg.batch.blocks import Block, centre_owned, face_pairs, face_regions, overlap_pairs, overlap_region
from napari_neuroseg.batch.outputs import write_labels
from napari_neuroseg.batch.sources import InputSpec, OpenedInput, open_input
from napari_neuroseg.batch.tasks import Task
from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io.atomic import atomic_save_npy, atomic_write_json
from napari_neuroseg.io.npy import read_npy
from napari_neuroseg.io.zarr_io import create_label_store


def as_labels(labels: Any) -> np.ndarray:
    """A task result as a uint32 ZYX label array."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"the task returned a {labels.ndim}D array, expected ZYX labels")
    if labels.dtype != np.uint32:
        if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.uint32).max):
            raise ValueError("label ids must fit in uint32")
        labels = labels.astype(np.uint32)
    return labels


def one_line(err: BaseException | str, limit: int = 300) -> str:
    """An error's text on one line (tracebacks and multi-line messages stay out of the summary)."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_image(inp: Any, spec: InputSpec, spatial: Any = None, **kw: Any) -> np.ndarray:
    """Read (a block of) an opened input; a corrupt or truncated file becomes a NeurosegError."""
    try:
        image = inp.read(spatial, **kw)
    except NeurosegError:
        raise
    except Exception as err:  # noqa: BLE001 - decoders raise all sorts (DeflateError, OSError...)
        raise NeurosegError(
            f"cannot read the image data ({type(err).__name__}: {one_line(err)})", path=spec.path,
            fix="the file is truncated or corrupt: copy or export it again, or remove it from the inputs",
        ) from err
    check_finite(image, spec)
    return image


def check_finite(image: np.ndarray, spec: InputSpec) -> None:
    """Refuse float images with NaN or infinite values (thresholds and models cannot use them)."""
    if image.dtype.kind not in "fc" or image.size == 0:
        return
    finite = np.isfinite(image)
    if finite.all():
        return
    n_nan = int(np.count_nonzero(np.isnan(image)))
    n_inf = int(image.size - np.count_nonzero(finite) - n_nan)
    what = ", ".join(t for t in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else "") if t)
    raise NeurosegError(
        f"the image has {what} values (of {image.size} voxels)", path=spec.path,
        fix="replace them before the batch run (e.g. numpy.nan_to_num, or fill them with the background value)",
    )


def with_file_voxel_size(task: Task, params: dict, inp: OpenedInput) -> dict:
    """``params`` with ``voxel_size`` taken from the input file's metadata (in µm, by
    :func:`~napari_neuroseg.runtime.scale.voxel_size_from_volume`) when the task has that parameter
    and none was given (``--voxel-size`` wins); unchanged when the file gives no length unit."""
    from napari_neuroseg.runtime.scale import voxel_size_from_volume

    if params.get("voxel_size") or "voxel_size" not in {p.name for p in task.params}:
        return params
    vs = voxel_size_from_volume(inp)
    if vs is None:
        return params
    return {**params, "voxel_size": ",".join(f"{v:.6g}" for v in vs)}


def prepare_task(task: Task, image: Any, axes: str, params: dict, spec: InputSpec,
                 source: OpenedInput | None = None) -> dict:
    """``task.prepare`` with its failures (e.g. Otsu on a NaN sample) as a NeurosegError;
    ``source``: the opened input, whose voxel size is used when none was given
    (:func:`with_file_voxel_size`)."""
    if source is not None:
        params = with_file_voxel_size(task, params, source)
    try:
        return task.prepare(image, axes, params)
    except NeurosegError:
        raise
    except Exception as err:  # noqa: BLE001 - reported per file
        raise NeurosegError(
            f"task {task.name} could not resolve its parameters on this image ({type(err).__name__}: {one_line(err)})",
            path=spec.path,
            fix="check the image values (NaN, infinite or constant?) and the task parameters; --debug shows the traceback",
        ) from err


def count_objects(labels: np.ndarray) -> int:
    import fastremap

    u = fastremap.unique(labels)
    return int(np.count_nonzero(u))


# -- whole files ---------------------------------------------------------------------------------
def run_file_job(spec: InputSpec, task: Task, params: dict, target: str, fmt: str) -> dict[str, Any]:
    """Process one whole input and write ``target`` atomically; returns the manifest fields."""
    t0 = time.perf_counter()
    if task.output == "metrics":
        result = task.evaluate_file(spec.path, spec.key, params)
        atomic_write_json(target, result)
        row = task.summary_row(result)
        return {"seconds": time.perf_counter() - t0, "metrics": row, **row}
    with open_input(spec) as inp:
        image = read_image(inp, spec)
        axes, scale = inp.axes, inp.scale
    t_read = time.perf_counter() - t0
    resolved = prepare_task(task, image, axes, params, spec, source=inp)
    labels = as_labels(task.segment(image, axes, resolved))
    del image
    t_seg = time.perf_counter() - t0 - t_read
    write_labels(target, labels, fmt, scale=scale)
    return {
        "seconds": time.perf_counter() - t0,
        "timings": {"read": t_read, "segment": t_seg, "write": time.perf_counter() - t0 - t_read - t_seg},
        "shape": list(labels.shape),
        "n_objects": count_objects(labels),
        "resolved_params": {k: v for k, v in resolved.items() if params.get(k) != v},
    }


# -- blockwise -----------------------------------------------------------------------------------
def _marker(work: Path, phase: str, index: int) -> Path:
    return work / phase / f"{index}.json"


def block_file(work: str | Path, index: int) -> Path:
    """The uncompressed pass-1 result of block ``index`` (``.npy``, smallest unsigned dtype)."""
    return Path(work) / "blocks" / f"{index}.npy"


def smallest_dtype(n: int) -> np.dtype:
    """The smallest unsigned dtype holding ids ``0..n``."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if n <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"{n} ids do not fit in uint32")


def dense_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the (C-contiguous uint32) ``labels`` in place to ``1..n``, keeping the order of ids.

    Returns ``(labels, sizes)`` with ``sizes[i]`` the voxel count of new id ``i + 1``. Labels that
    are already ``1..n`` are not touched (one pass of :func:`fastremap.unique` decides).
    """
    import fastremap

    uniq, counts = fastremap.unique(labels, return_counts=True)
    nz = uniq > 0
    ids, sizes = uniq[nz], counts[nz].astype(np.int64)
    n = int(ids.size)
    if n and int(ids[-1]) != n:
        lut = np.zeros(int(ids[-1]) + 1, np.uint32)
        lut[ids] = np.arange(1, n + 1, dtype=np.uint32)
        fastremap.remap_from_array(labels.reshape(-1), lut, in_place=True)
    return labels, sizes


def apply_lut(local: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``lut[local]`` as uint32 (``local`` is overwritten when it is already C-contiguous uint32);
    an identity ``lut`` costs at most one cast."""
    import fastremap

    out = np.ascontiguousarray(local, dtype=np.uint32)
    if not np.array_equal(lut, np.arange(lut.size, dtype=lut.dtype)):
        fastremap.remap_from_array(out.reshape(-1), np.ascontiguousarray(lut, dtype=np.uint32), in_place=True)
    return out


def pass1_block_job(
    spec: InputSpec, task: Task, params: dict, block: Block, mode: str,
    volume_shape: tuple[int, int, int], work: str, run_id: str | None = None, cache_bytes: int = 0,
) -> dict[str, Any]:
    """Segment one block with its halo and store the local result uncompressed in
    ``blocks/<i>.npy`` (faces: the core with ids ``1..n`` plus its six face planes; centre: the
    objects the block owns, on its outer region); returns the marker written last."""
    import fastremap

    t0 = time.perf_counter()
    w = Path(work)
    with open_input(spec) as inp:
        region = read_image(inp, spec, block.outer, run_id=run_id, cache_bytes=cache_bytes)
        axes = inp.axes
    t_read = time.perf_counter() - t0
    labels = as_labels(task.segment(region, axes, params))
    del region
    t_seg = time.perf_counter() - t0 - t_read
    if labels.shape != block.outer_shape:
        raise ValueError(f"the task returned shape {labels.shape} for a block of shape {block.outer_shape}")
    if mode == "faces":
        core = labels[block.core_in_outer]
        core = np.ascontiguousarray(core) if core.shape != labels.shape else np.ascontiguousarray(labels)
        del labels
        core, sizes = dense_ids(core)
        n = int(sizes.size)
        for ax in range(3):  # the six face planes, for matching without reading the blocks
            for side, pos in (("lo", 0), ("hi", -1)):
                atomic_save_npy(w / "faces" / f"{block.index}_{side}{ax}.npy", np.take(core, pos, axis=ax))
        if n:
            atomic_save_npy(block_file(w, block.index), core.astype(smallest_dtype(n), copy=False))
        info: dict[str, Any] = {"n": n, "sizes": sizes.tolist()}
    elif mode == "overlap":
        # The whole halo'd result is kept (matching compares neighbours in their overlap); ids of
        # objects present in the core become 1..n, objects seen only in the halo become 0.
        labels = np.ascontiguousarray(labels)
        core = np.ascontiguousarray(labels[block.core_in_outer])
        uniq, counts = fastremap.unique(core, return_counts=True)
        nz = uniq > 0
        ids, sizes = uniq[nz], counts[nz].astype(np.int64)
        n = int(ids.size)
        del core
        if n:
            lut = np.zeros(int(labels.max()) + 1, np.uint32)
            lut[ids] = np.arange(1, n + 1, dtype=np.uint32)
            fastremap.remap_from_array(labels.reshape(-1), lut, in_place=True)
            atomic_save_npy(block_file(w, block.index), labels.astype(smallest_dtype(n), copy=False))
        info = {"n": n, "sizes": sizes.tolist()}
    else:
        ids, truncated = centre_owned(labels, block, volume_shape)
        n = int(ids.size)
        if n:
            kept = fastremap.mask_except(labels, ids.tolist(), in_place=True)
            kept, _ = fastremap.renumber(kept, in_place=True)
            atomic_save_npy(block_file(w, block.index), kept.astype(smallest_dtype(n), copy=False))
        info = {"n": n, "truncated": truncated}
    info["seconds"] = time.perf_counter() - t0
    info["timings"] = {"read": round(t_read, 4), "segment": round(t_seg, 4)}
    atomic_write_json(_marker(w, "p1", block.index), info, fsync=False)
    return info


def _plane(work: Path, grid: tuple[int, ...], key: str, cache: dict) -> np.ndarray:
    if (grid, key) not in cache:
        index = cache["index"][grid]
        cache[(grid, key)] = read_npy(work / "faces" / f"{index}_{key}.npy")
    return cache[(grid, key)]


def match_block_job(
    work: str, block: Block, volume_shape: tuple[int, int, int], block_shape: tuple[int, int, int],
    offsets: np.ndarray, connectivity: int,
) -> np.ndarray:
    """Global id pairs that touch across this block's three high faces.

    Reads only the face planes saved by pass 1 (``faces/<i>_<side><axis>.npy``) of this block and of its
    neighbours — a few planes of the block size — never whole blocks.
    """
    w = Path(work)
    gshape = offsets.shape
    cache: dict = {"index": {g: i for i, g in enumerate(np.ndindex(*gshape))}}
    out = [np.zeros((0, 2), np.int64)]
    for axis, region in face_regions(block, volume_shape):
        others = [a for a in range(3) if a != axis]
        planes = []
        for side, ga in (("hi", block.grid[axis]), ("lo", block.grid[axis] + 1)):
            ext = [region[a] for a in others]
            plane = np.zeros([e.stop - e.start for e in ext], np.int64)
            g_ranges = [range(e.start // block_shape[a], (e.stop - 1) // block_shape[a] + 1) for e, a in zip(ext, others)]
            for g1 in g_ranges[0]:
                for g2 in g_ranges[1]:
                    grid = [0, 0, 0]
                    grid[axis], grid[others[0]], grid[others[1]] = ga, g1, g2
                    grid_t = tuple(grid)
                    local = _plane(w, grid_t, f"{side}{axis}", cache)
                    # the neighbour's core start along the two other axes
                    c1, c2 = g1 * block_shape[others[0]], g2 * block_shape[others[1]]
                    r = slice(max(ext[0].start, c1), min(ext[0].stop, c1 + local.shape[0]))
                    c = slice(max(ext[1].start, c2), min(ext[1].stop, c2 + local.shape[1]))
                    part = local[r.start - c1 : r.stop - c1, c.start - c2 : c.stop - c2].astype(np.int64)
                    part[part > 0] += int(offsets[grid_t])
                    plane[r.start - ext[0].start : r.stop - ext[0].start, c.start - ext[1].start : c.stop - ext[1].start] = part
            planes.append(plane)
        if not (planes[0].any() and planes[1].any()):
            continue
        slab = np.stack(planes, axis=axis)
        out.append(face_pairs(slab, axis, connectivity, block, region))
    return np.concatenate(out)


def match_overlap_job(
    work: str, block: Block, neighbours: list[tuple[Block, int]], offset: int, min_fraction: float,
) -> np.ndarray:
    """Global id pairs of this block and its forward neighbours that are the same object: labels
    sharing at least ``min_fraction`` of the smaller one's voxels where the two halo'd regions
    overlap. Reads only those overlap regions of the stored block results (memory-mapped)."""
    w = Path(work)
    out = [np.zeros((0, 2), np.int64)]
    f = block_file(w, block.index)
    if not f.exists():
        return out[0]
    mine = read_npy(f, mmap=True)
    for nb, nb_offset in neighbours:
        g = block_file(w, nb.index)
        if not g.exists():
            continue
        region = overlap_region(block, nb)
        a = np.asarray(mine[tuple(slice(r.start - o.start, r.stop - o.start) for r, o in zip(region, block.outer))])
        other = read_npy(g, mmap=True)
        b = np.asarray(other[tuple(slice(r.start - o.start, r.stop - o.start) for r, o in zip(region, nb.outer))])
        pairs = overlap_pairs(a, b, min_fraction)
        if pairs.size:
            out.append(pairs + np.array([offset, nb_offset], np.int64))
    return np.concatenate(out)


def pass2_faces_job(
    work: str, block: Block, lut: np.ndarray, final: str, fmt: str, volume_shape: tuple[int, int, int],
    stored: str = "core",
) -> dict:
    """Write this block's final ids ``lut[local id]`` (``lut[0] == 0``) into its output chunk.

    ``stored``: the pass-1 file holds the block's ``"core"`` (faces mode) or its halo'd
    ``"outer"`` region (overlap mode). The output's chunk grid equals the block grid, so each
    block is encoded and written once; empty blocks are not written at all (fill value 0).
    """
    w = Path(work)
    f = block_file(w, block.index)
    if f.exists():
        local = read_npy(f, mmap=stored == "outer")
        if stored == "outer":
            local = np.array(local[block.core_in_outer])
        out = apply_lut(local, lut)
        dst = create_label_store(final, volume_shape, (1, 1, 1), fmt, mode="r+")
        dst[block.core] = out
    atomic_write_json(_marker(w, "p2", block.index), {"ok": True}, fsync=False)
    return {"ok": True}


def pass2_centre_job(
    work: str, block: Block, neighbours: list[tuple[Block, int]], final: str, fmt: str,
    volume_shape: tuple[int, int, int],
) -> dict:
    """Paste the owned objects of this block and of its neighbours that reach into its core.

    Neighbours are visited in block order and an object never overwrites an earlier one, so the
    result is deterministic; their ids are offset to be globally unique.
    """
    w = Path(work)
    out = np.zeros(block.core_shape, np.uint32)
    wrote = False
    for nb, offset in neighbours:
        inter = [slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(nb.outer, block.core)]
        if any(s.stop <= s.start for s in inter):
            continue
        src = read_npy(block_file(w, nb.index), mmap=True)
        part = np.asarray(src[tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(inter, nb.outer))])
        view = out[tuple(slice(s.start - c.start, s.stop - c.start) for s, c in zip(inter, block.core))]
        m = (part > 0) & (view == 0)
        if m.any():
            view[m] = part[m].astype(np.uint32) + np.uint32(offset)
            wrote = True
    if wrote:
        dst = create_label_store(final, volume_shape, (1, 1, 1), fmt, mode="r+")
        dst[block.core] = out
    atomic_write_json(_marker(w, "p2", block.index), {"ok": True}, fsync=False)
    return {"ok": True}
