"""Proofreading speed and undo memory on a FISBe-sized label volume.

Builds a synthetic 400×700×700 uint32 volume with thousands of labels (a Voronoi partition of
random seeds computed at 1/4 resolution and upsampled, a quarter of the cells left as
background), then times merge, split and undo/redo with :mod:`napari_neuroseg.proofread` (a
``LabelIndex`` built once, edits local to the labels' boxes) against a naive full-volume
implementation (``labels[labels == b] = a``, undo from a full-size mask) in the same run, and
reports the undo-history memory against the changed voxels.

    nice -n 10 python benchmarks/bench_proofread.py            # full size (needs ~3 GiB)
    python benchmarks/bench_proofread.py --shape 100 175 175   # quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from scipy import ndimage

from napari_neuroseg import proofread as pr
import edt  # noqa: F401  (imported before timing: first-call import cost is not an edit)
import skimage.segmentation  # noqa: F401


def make_volume(shape, n_seeds: int, factor: int = 4, background: float = 0.25, seed: int = 0):
    """A Voronoi label volume with ~``n_seeds`` cells (a fraction set to background)."""
    rng = np.random.default_rng(seed)
    low_shape = tuple(max(1, s // factor) for s in shape)
    pts = np.stack([rng.integers(0, s, n_seeds) for s in low_shape], 1)
    markers = np.ones(low_shape, bool)
    markers[tuple(pts.T)] = False
    ids_at = np.zeros(low_shape, np.uint32)
    ids_at[tuple(pts.T)] = np.arange(1, n_seeds + 1, dtype=np.uint32)
    _, nearest = ndimage.distance_transform_edt(markers, return_indices=True)
    low = ids_at[tuple(nearest)]
    drop = rng.random(n_seeds + 1) < background
    drop[0] = True
    low[drop[low]] = 0
    # upsample by nearest neighbour, with a random 1-voxel jitter so boundaries are not all
    # on the coarse grid
    idx = [np.minimum(np.arange(s) // factor, ls - 1) for s, ls in zip(shape, low_shape)]
    labels = low[np.ix_(*idx)]
    return np.ascontiguousarray(labels, dtype=np.uint32), low


def neighbour_pairs(low: np.ndarray, n: int, rng) -> list[tuple[int, int]]:
    pairs = set()
    for ax in range(low.ndim):
        a = np.moveaxis(low, ax, 0)
        x, y = a[:-1].reshape(-1), a[1:].reshape(-1)
        keep = (x != y) & (x > 0) & (y > 0)
        pairs.update(zip(x[keep].tolist(), y[keep].tolist()))
    pairs = sorted(pairs)
    pick = rng.choice(len(pairs), size=min(n, len(pairs)), replace=False)
    return [pairs[i] for i in pick]


def two_seeds(labels: np.ndarray, label_id: int, box) -> list[tuple[int, ...]]:
    """Two voxels of the label far apart along its longest box axis."""
    block = labels[box]
    coords = np.argwhere(block == label_id)
    ax = int(np.argmax(block.shape))
    a, b = coords[np.argmin(coords[:, ax])], coords[np.argmax(coords[:, ax])]
    off = np.array([s.start for s in box])
    return [tuple(int(v) for v in a + off), tuple(int(v) for v in b + off)]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def summary(ts: list[float]) -> dict:
    return {"median_ms": 1000 * statistics.median(ts), "worst_ms": 1000 * max(ts), "n": len(ts)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=(400, 700, 700))
    p.add_argument("--seeds", type=int, default=4000, help="Voronoi cells (3/4 become labels)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--naive-reps", type=int, default=4)
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    rng = np.random.default_rng(1)
    res: dict = {"shape": list(args.shape)}

    t, (labels, low) = timed(lambda: make_volume(tuple(args.shape), args.seeds))
    n_labels = len(np.unique(low)) - 1
    res.update(generate_s=t, n_labels=n_labels, volume_mb=labels.nbytes / 2**20)
    print(f"volume {labels.shape} {labels.dtype}, {n_labels} labels, {labels.nbytes / 2**20:.0f} MiB, made in {t:.1f} s")
    original = labels.copy()

    t, index = timed(lambda: pr.LabelIndex.build(labels))
    res["index_build_s"] = t
    print(f"LabelIndex.build: {t:.2f} s (once; then no full-volume scans)")
    some = int(rng.choice(index.ids))
    t_find = [timed(lambda: pr.find_bbox(labels, some))[0] for _ in range(3)]
    t_max = [timed(lambda: pr.max_label(labels))[0] for _ in range(3)]
    res["find_bbox_one_off"] = summary(t_find)
    res["max_label"] = summary(t_max)
    print(f"one-off find_bbox (streaming scan, no index): median {1000 * statistics.median(t_find):.0f} ms; max_label {1000 * statistics.median(t_max):.0f} ms")

    # -- merge / undo / redo with the index ---------------------------------------------
    pairs = neighbour_pairs(low, args.reps, rng)
    history = pr.EditHistory(max_steps=10**6, max_bytes=1 << 40, index=index)
    tm, tu, tr, changed = [], [], [], 0
    for a, b in pairs:
        t, e = timed(lambda: pr.merge(labels, [a, b], index=index))
        history.push(e)
        tm.append(t)
        changed += e.n_changed
    mem = history.nbytes
    for _ in pairs:
        t, _e = timed(lambda: history.undo(labels))
        tu.append(t)
    for _ in pairs:
        t, _e = timed(lambda: history.redo(labels))
        tr.append(t)
    while history.can_undo:
        history.undo(labels)
    assert np.array_equal(labels, original), "undo did not restore the volume"
    res["merge"], res["merge_undo"], res["merge_redo"] = summary(tm), summary(tu), summary(tr)
    res["merge_history"] = {"bytes": mem, "changed_voxels": changed, "bytes_per_changed_voxel": mem / max(changed, 1)}

    # -- split / undo ---------------------------------------------------------------------
    split_ids = [int(i) for i in rng.choice(index.ids, size=args.reps, replace=False)]
    ts, tsu, schanged, smem = [], [], 0, 0
    for lid in split_ids:
        seeds = two_seeds(labels, lid, index.bbox(lid))
        t, e = timed(lambda: pr.split(labels, lid, seeds, index=index))
        ts.append(t)
        assert labels[seeds[0]] != labels[seeds[1]]
        schanged += e.n_changed
        smem += e.nbytes
        t, _ = timed(lambda: e.undo(labels))
        index.update(e, forward=False)
        tsu.append(t)
    assert np.array_equal(labels, original)
    res["split"], res["split_undo"] = summary(ts), summary(tsu)
    res["split_history"] = {"bytes": smem, "changed_voxels": schanged, "bytes_per_changed_voxel": smem / max(schanged, 1)}

    # -- one-off merge without an index (streaming bbox scan) -----------------------------
    t1 = []
    for a, b in pairs[: args.naive_reps]:
        t, e = timed(lambda: pr.merge(labels, [a, b]))
        t1.append(t)
        e.undo(labels)
    res["merge_no_index"] = summary(t1)

    # -- naive full-volume baseline --------------------------------------------------------
    nm, nu, nmem = [], [], 0
    for a, b in pairs[: args.naive_reps]:
        def naive_merge():
            m = labels == b
            labels[m] = a
            return m

        t, m = timed(naive_merge)
        nm.append(t)
        nmem += m.nbytes  # a full-size mask per undo step (old value is the scalar b)
        t, _ = timed(lambda: labels.__setitem__(m, b))
        nu.append(t)
    assert np.array_equal(labels, original)
    ns = []
    for lid in split_ids[: args.naive_reps]:
        seeds = two_seeds(labels, lid, index.bbox(lid))

        def naive_split():
            from skimage.segmentation import watershed
            import edt

            m = labels == lid
            nz = np.nonzero(m)
            box = tuple(slice(int(c.min()), int(c.max()) + 1) for c in nz)
            sub = m[box]
            mk = np.zeros(sub.shape, np.int32)
            for k, s in enumerate(seeds, 1):
                mk[tuple(np.array(s) - [b.start for b in box])] = k
            ws = watershed(-edt.edt(sub), mk, mask=sub)
            full = np.zeros(labels.shape, bool)
            full[box] = ws > 1
            old = labels[full]
            labels[full] = 10**6
            return full, old

        t, (full, old) = timed(naive_split)
        ns.append(t)
        labels[full] = old
    assert np.array_equal(labels, original)
    res["naive_merge"], res["naive_undo"], res["naive_split"] = summary(nm), summary(nu), summary(ns)
    res["naive_history_bytes_per_edit"] = nmem / max(len(nm), 1)

    # -- report ---------------------------------------------------------------------------
    print(f"\n{'operation':<28}{'median ms':>10}{'worst ms':>10}{'naive median':>14}{'speed-up':>10}")
    rows = [
        ("merge (index)", "merge", "naive_merge"),
        ("undo merge", "merge_undo", "naive_undo"),
        ("redo merge", "merge_redo", "naive_merge"),
        ("split (index)", "split", "naive_split"),
        ("undo split", "split_undo", "naive_undo"),
        ("merge, no index (one-off)", "merge_no_index", "naive_merge"),
    ]
    for name, key, base in rows:
        r, b = res[key], res[base]
        print(f"{name:<28}{r['median_ms']:>10.1f}{r['worst_ms']:>10.1f}{b['median_ms']:>14.1f}{b['median_ms'] / max(r['median_ms'], 1e-6):>9.0f}x")
    mh, sh = res["merge_history"], res["split_history"]
    print(
        f"\nundo memory: merges {mh['bytes'] / 2**20:.2f} MiB for {mh['changed_voxels']:,} changed voxels "
        f"({mh['bytes_per_changed_voxel']:.2f} B/voxel); splits {sh['bytes'] / 2**20:.2f} MiB for "
        f"{sh['changed_voxels']:,} voxels ({sh['bytes_per_changed_voxel']:.2f} B/voxel); naive: "
        f"{res['naive_history_bytes_per_edit'] / 2**20:.0f} MiB per edit"
    )
    ok = all(res[k]["median_ms"] < 300 for k in ("merge", "split", "merge_undo", "split_undo"))
    print(f"target (merge, split, undo median < 300 ms): {'met' if ok else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
