"""A review queue: the objects a proofreader should look at, with their status, saved as JSON.

Built from the FISBe metrics' error lists (false merges, false splits, false positives, missed
neurons: ``napari_neuroseg.metrics.evaluate(gt, pred)["errors"]``) or from simple checks (tiny
objects, objects touching the border, the largest objects). Each item has the label id, its
kind, centroid and bounding box (voxels) and a status (todo / fixed / ignored). The queue is
saved next to the labels file as ``<labels>.review.json`` and resumes where it was left.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generator, Iterable, Sequence

import numpy as np

from napari_neuroseg.errors import NeurosegError
from napari_neuroseg.io.atomic import atomic_write_json
from napari_neuroseg.runtime.progress import Progress, run_to_completion

from .edit import iter_slabs, read_block

STATUSES = ("todo", "fixed", "ignored")
KIND_TITLES = {
    "false_merge": "false merge",
    "false_split": "false split",
    "false_positive": "false positive",
    "missed_gt": "missed GT object",
    "tiny": "tiny object",
    "border": "touches the border",
    "largest": "large object",
}
#: the ground-truth object of each metrics task, in the queue's words ("missed nucleus")
TASK_OBJECTS = {"nuclei": "nucleus", "neurons": "neuron"}
FORMAT_VERSION = 1


@dataclass
class ReviewItem:
    """One object to review. ``source`` says which array ``id`` refers to ("pred": the labels
    being proofread, "gt": the ground truth); ``related`` lists the other side's ids."""

    kind: str
    id: int
    centroid: list[float]
    bbox: list[list[int]]
    size: int = 0
    source: str = "pred"
    related: list[int] = field(default_factory=list)
    status: str = "todo"
    note: str = ""

    @property
    def select_id(self) -> int:
        """The label to select in the proofread layer (0: none, e.g. a missed neuron)."""
        if self.source == "pred":
            return int(self.id)
        return int(self.related[0]) if self.related else 0

    def describe(self, task: str | None = None) -> str:
        """One line for the item; ``task`` ("nuclei", "neurons": the queue's ``meta["task"]``)
        names the ground-truth objects ("missed nucleus", "GT neuron 4")."""
        rel = ""
        if self.related:
            other = "GT" if self.source == "pred" else "pred"
            rel = f" ({other} {', '.join(map(str, self.related))})"
        obj = TASK_OBJECTS.get(task or "")
        who = "label" if self.source == "pred" else f"GT {obj or 'object'}"
        kind = f"missed {obj}" if self.kind == "missed_gt" and obj else KIND_TITLES.get(self.kind, self.kind)
        return f"{kind}: {who} {self.id}{rel}, {self.size} voxels [{self.status}]"


def object_stats(labels: Any, ids: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
    """Voxel count, bounding box and centroid of each nonzero label (one streaming pass).

    ``labels`` is a ZYX label array (numpy, zarr, dask) or an (N, Z, Y, X) FISBe stack (channel
    i = id i + 1; only the channels of ``ids`` are read)."""
    import cc3d
    import fastremap

    if len(labels.shape) == 4:
        out: dict[int, dict[str, Any]] = {}
        want = range(1, labels.shape[0] + 1) if ids is None else [int(i) for i in ids]
        for i in want:
            if 1 <= i <= labels.shape[0]:
                out.update(object_stats(labels[i - 1] if isinstance(labels, np.ndarray) else _Channel(labels, i - 1)))
        return {k: v for k, v in out.items() if ids is None or k in set(int(i) for i in ids)}
    nd = len(labels.shape)
    keep = None if ids is None else np.array(sorted({int(i) for i in ids}), np.int64)
    acc: dict[int, list] = {}
    for slab in iter_slabs(labels.shape, getattr(labels, "chunks", None)):
        block = np.ascontiguousarray(read_block(labels, slab))
        nz = np.flatnonzero(block)
        if nz.size == 0:
            continue
        z0 = slab[0].start
        if nz.size < block.size // 20 or keep is not None:
            # sparse (e.g. FISBe neurons, 0.2% foreground) or a few ids: work on the voxels
            vals = block.reshape(-1)[nz].astype(np.int64)
            if keep is not None:
                sel = np.isin(vals, keep)
                nz, vals = nz[sel], vals[sel]
                if nz.size == 0:
                    continue
            coords = np.stack(np.unravel_index(nz, block.shape), 1)
            coords[:, 0] += z0
            order = np.argsort(vals, kind="stable")
            vals, coords = vals[order], coords[order]
            starts = np.flatnonzero(np.r_[True, vals[1:] != vals[:-1]])
            counts = np.diff(np.r_[starts, vals.size])
            sums = np.add.reduceat(coords, starts, axis=0).astype(float)
            los = np.minimum.reduceat(coords, starts, axis=0)
            his = np.maximum.reduceat(coords, starts, axis=0) + 1
            entries = zip(vals[starts].tolist(), counts.tolist(), los.tolist(), his.tolist(), sums)
        else:
            ren, mapping = fastremap.renumber(block, preserve_zero=True, in_place=False)
            st = cc3d.statistics(ren)
            entries = []
            for orig, j in mapping.items():
                n = int(st["voxel_counts"][j]) if orig != 0 else 0
                if n == 0:
                    continue
                box = st["bounding_boxes"][j]
                lo = [s_.start for s_ in box]
                hi = [s_.stop for s_ in box]
                lo[0] += z0
                hi[0] += z0
                c = np.asarray(st["centroids"][j], float)
                c[0] += z0
                entries.append((int(orig), n, lo, hi, c * n))
        for orig, n, lo, hi, csum in entries:
            a = acc.get(int(orig))
            if a is None:
                acc[int(orig)] = [n, list(lo), list(hi), np.asarray(csum, float)]
            else:
                a[0] += n
                a[1] = [min(x, y) for x, y in zip(a[1], lo)]
                a[2] = [max(x, y) for x, y in zip(a[2], hi)]
                a[3] = a[3] + csum
    return {
        k: {"size": int(a[0]), "bbox": [[int(l), int(h)] for l, h in zip(a[1], a[2])],
            "centroid": (a[3] / a[0]).round(2).tolist()}
        for k, a in acc.items()
    } if nd else {}


class _Channel:
    """One channel of a lazy (N, Z, Y, X) stack, as a ZYX array-like."""

    def __init__(self, stack: Any, i: int):
        self._s, self._i = stack, i
        self.shape = tuple(stack.shape[1:])
        self.dtype = stack.dtype
        ch = getattr(stack, "chunks", None)
        self.chunks = tuple(ch[1:]) if ch is not None and not isinstance(ch[0], tuple) else None

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._s[(self._i,) + tuple(key)])


def review_path(labels_path: str | Path) -> Path:
    """Where the queue of ``labels_path`` lives: ``<labels_path>.review.json`` beside it."""
    p = Path(labels_path)
    return p.parent / (p.name.rstrip("/") + ".review.json")


class ReviewQueue:
    """An ordered list of :class:`ReviewItem` with a current position."""

    def __init__(self, items: Sequence[ReviewItem] = (), *, position: int = -1, locked: Iterable[int] = (), meta: dict | None = None):
        self.items = list(items)
        self.position = int(position)
        self.locked = sorted({int(i) for i in locked})
        self.meta = dict(meta or {})

    # -- building -----------------------------------------------------------------------------
    @classmethod
    def from_errors(cls, errors: dict, pred: Any, gt: Any = None, **meta: Any) -> "ReviewQueue":
        """Items for the metrics' error lists: false merges, false splits, false positives,
        missed neurons (in that order; largest first within a kind). ``pred`` is the label
        volume being proofread; ``gt`` (ZYX or the FISBe stack) places missed neurons and splits."""
        merges = [(int(e["pred"]), [int(g) for g in e.get("gts", [])]) for e in errors.get("false_merge", [])]
        splits = [(int(e["gt"]), [int(p) for p in e.get("preds", [])]) for e in errors.get("false_split", [])]
        fps = [int(p) for p in errors.get("false_positive", [])]
        missed = [int(g) for g in errors.get("missed_gt", [])]
        pred_ids = {p for p, _ in merges} | set(fps) | {p for _, ps in splits for p in ps}
        pstats = object_stats(pred, pred_ids) if pred_ids else {}
        gt_ids = set(missed) | {g for g, _ in splits}
        gstats = object_stats(gt, gt_ids) if gt is not None and gt_ids else {}
        items: list[ReviewItem] = []

        def add(kind: str, i: int, source: str, related: list[int], stats: dict) -> None:
            s = stats.get(i)
            if s is None and source == "gt" and related:
                # no GT array given: place a false split on its predictions
                parts = [pstats[p] for p in related if p in pstats]
                if parts:
                    s = _merge_stats(parts)
            if s is None:
                return
            items.append(ReviewItem(kind, i, s["centroid"], s["bbox"], s["size"], source, related))

        for kind, entries, source, stats in (
            ("false_merge", merges, "pred", pstats),
            ("false_split", splits, "gt", gstats),
            ("false_positive", [(p, []) for p in fps], "pred", pstats),
            ("missed_gt", [(g, []) for g in missed], "gt", gstats),
        ):
            start = len(items)
            for i, rel in entries:
                add(kind, i, source, rel, stats)
            items[start:] = sorted(items[start:], key=lambda it: -it.size)
        return cls(items, meta={"source": "metrics", **meta})

    @classmethod
    def from_metrics_iter(cls, gt: Any, pred: Any, *, partly: bool = False, task: str = "auto", **opts: Any) -> Generator[Progress, None, "ReviewQueue"]:
        """Run the metrics of ``task`` (a progress generator) and build the queue from their errors.

        ``task``: ``"neurons"`` (FISBe preset: false merges/splits, false positives, missed GT;
        predictions <= 800 voxels are dropped first), ``"nuclei"`` (unmatched GT / unmatched
        predictions at IoU 0.5, every object counts) or ``"auto"`` (guessed from ``gt``: an instance
        stack or thin objects are neurons, compact objects nuclei); the queue's meta records it.
        """
        from napari_neuroseg.metrics.nuclei import evaluate_task_iter

        result = yield from evaluate_task_iter(task, gt, pred, partly=partly, **opts)
        yield Progress(0, 1, "placing review items")
        queue = cls.from_errors(result["errors"], pred, gt, avF1=result.get("avF1"), f1=result.get("f1"),
                                partly=partly, task=result.get("task"), rule=result.get("error_rule"))
        yield Progress(1, 1, "review queue ready")
        return queue

    @classmethod
    def from_metrics(cls, gt: Any, pred: Any, *, partly: bool = False, **opts: Any) -> "ReviewQueue":
        return run_to_completion(cls.from_metrics_iter(gt, pred, partly=partly, **opts))

    @classmethod
    def from_checks(
        cls, labels: Any, *, tiny: int | None = 100, border: bool = True, largest: int = 0,
    ) -> "ReviewQueue":
        """Items from simple checks: objects of at most ``tiny`` voxels, objects touching the
        volume border, and the ``largest`` biggest objects (each object once, first check wins)."""
        for name, v in (("tiny", tiny), ("largest", largest)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0):
                raise NeurosegError(f"{name}={v!r} must be a whole number >= 0", fix=f"give {name} as a voxel count")
        stats = object_stats(labels)
        shape = labels.shape
        items: list[ReviewItem] = []
        seen: set[int] = set()

        def add(kind: str, i: int) -> None:
            if i in seen:
                return
            seen.add(i)
            s = stats[i]
            items.append(ReviewItem(kind, i, s["centroid"], s["bbox"], s["size"]))

        if tiny:
            for i in sorted((i for i in stats if stats[i]["size"] <= tiny), key=lambda i: stats[i]["size"]):
                add("tiny", i)
        if border:
            for i in sorted(stats):
                b = stats[i]["bbox"]
                if any(lo == 0 or hi == n for (lo, hi), n in zip(b, shape)):
                    add("border", i)
        if largest:
            for i in sorted(stats, key=lambda i: -stats[i]["size"])[: int(largest)]:
                add("largest", i)
        return cls(items, meta={"source": "checks", "tiny": tiny, "border": border, "largest": largest})

    # -- walking ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    @property
    def current(self) -> ReviewItem | None:
        return self.items[self.position] if 0 <= self.position < len(self.items) else None

    def _step(self, direction: int, skip_done: bool) -> ReviewItem | None:
        pos = self.position
        for _ in range(len(self.items)):
            pos += direction
            if not 0 <= pos < len(self.items):
                return None
            if not skip_done or self.items[pos].status == "todo":
                self.position = pos
                return self.items[pos]
        return None

    def next(self, skip_done: bool = True) -> ReviewItem | None:
        """Move to the next item (the next still to do, by default); None at the end."""
        return self._step(+1, skip_done)

    def previous(self, skip_done: bool = False) -> ReviewItem | None:
        """Move to the previous item (any status, by default); None at the start."""
        return self._step(-1, skip_done)

    def mark(self, status: str, note: str | None = None) -> ReviewItem:
        """Set the status of the current item ("todo", "fixed" or "ignored")."""
        if status not in STATUSES:
            raise NeurosegError(f"unknown review status {status!r}", fix=f"use one of {', '.join(STATUSES)}")
        item = self.current
        if item is None:
            raise NeurosegError("no current review item", fix="go to an item first (next)")
        item.status = status
        if note is not None:
            item.note = note
        return item

    @property
    def task(self) -> str | None:
        """The metrics task the queue was built for ("nuclei" / "neurons"), if known."""
        task = self.meta.get("task")
        return task if isinstance(task, str) else None

    def describe(self, item: ReviewItem | None = None) -> str:
        """:meth:`ReviewItem.describe` of ``item`` (default: the current one) in the task's words."""
        item = self.current if item is None else item
        return "" if item is None else item.describe(self.task)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for it in self.items:
            out[it.status] = out.get(it.status, 0) + 1
        return out

    # -- persistence --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": "napari-neuroseg review queue",
            "version": FORMAT_VERSION,
            "position": self.position,
            "locked": self.locked,
            "meta": self.meta,
            "items": [asdict(it) for it in self.items],
        }

    @classmethod
    def from_dict(cls, d: dict, path: str | Path | None = None) -> "ReviewQueue":
        if not isinstance(d, dict) or "items" not in d:
            raise NeurosegError("not a review queue file", path=path, fix="pick a *.review.json written by napari-neuroseg")
        if int(d.get("version", 1)) > FORMAT_VERSION:
            raise NeurosegError(
                f"review queue format {d.get('version')} is newer than this napari-neuroseg ({FORMAT_VERSION})",
                path=path, fix="update napari-neuroseg",
            )
        if not isinstance(d["items"], list):
            raise NeurosegError("the review queue's items are not a list", path=path, fix="rebuild the queue")
        try:
            items = [_checked_item(ReviewItem(**it)) for it in d["items"]]
            position = int(d.get("position", -1))
            locked = [int(i) for i in d.get("locked", ())]
        except (TypeError, ValueError) as err:
            raise NeurosegError(f"a review item is malformed ({err})", path=path, fix="rebuild the queue") from err
        meta = d.get("meta", {})
        return cls(items, position=max(-1, min(position, len(items) - 1)), locked=locked,
                   meta=meta if isinstance(meta, dict) else {})

    def save(self, path: str | Path) -> Path:
        """Write the queue as JSON (atomically: temp file, then rename)."""
        return atomic_write_json(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | Path) -> "ReviewQueue":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError as err:
            raise NeurosegError("no review queue here", path=p, fix="build a queue first") from err
        except json.JSONDecodeError as err:
            raise NeurosegError(f"review queue is not valid JSON ({err})", path=p, fix="rebuild the queue") from err
        return cls.from_dict(d, p)


def _checked_item(it: ReviewItem) -> ReviewItem:
    """A loaded item with sane fields (a hand-edited file must not break the widget later)."""
    if not isinstance(it.kind, str) or it.status not in STATUSES or it.source not in ("pred", "gt"):
        raise ValueError(f"kind/status/source of item {it.id!r} are not valid")
    it.id = int(it.id)
    if it.id < 0:
        raise ValueError(f"item id {it.id} is negative")
    it.size = int(it.size)
    it.centroid = [float(c) for c in it.centroid]
    it.bbox = [[int(lo), int(hi)] for lo, hi in it.bbox]
    if any(lo < 0 or hi < lo for lo, hi in it.bbox):
        raise ValueError(f"item {it.id} has an invalid box {it.bbox}")
    it.related = [int(r) for r in it.related]
    it.note = str(it.note)
    return it


def _merge_stats(parts: list[dict]) -> dict:
    n = sum(p["size"] for p in parts)
    c = np.sum([np.asarray(p["centroid"]) * p["size"] for p in parts], axis=0) / max(n, 1)
    nd = len(parts[0]["bbox"])
    box = [[min(p["bbox"][a][0] for p in parts), max(p["bbox"][a][1] for p in parts)] for a in range(nd)]
    return {"size": n, "bbox": box, "centroid": c.round(2).tolist()}
