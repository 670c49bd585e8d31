"""Evaluating files and folders: lazy reading, name matching, split files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import NeurosegError

LABEL_SUFFIXES = (".zarr", ".ome.zarr", ".tif", ".tiff", ".hdf", ".h5", ".hdf5", ".n5", ".npy")


def sample_name(path: str | Path) -> str:
    """``VT011145-20171222_63_I2.hdf -> VT011145-20171222_63_I2`` (text before the first dot,
    as the official evaluator matches files)."""
    return Path(path).name.split(".")[0]


def open_labels(path: str | Path, key: str | None = None) -> tuple[Any, list[int]]:
    """A lazily read label array (volume or FISBe stack) and its dim neuron ids (FISBe GT)."""
    from ..io import is_fisbe, read_fisbe, read_labels

    p = Path(path)
    if not p.exists():
        raise NeurosegError("file or folder not found", path=p, fix="check the path")
    dim: list[int] = []
    fisbe = is_fisbe(p)
    if fisbe and key in (None, "volumes/gt_instances"):
        arr = _raw_array(p, "volumes/gt_instances", None)
        if arr is not None:
            return arr, _dim_ids(arr)
        sample = read_fisbe(p, lazy=True)
        if sample.gt_instances is None:
            raise NeurosegError("this FISBe sample has no volumes/gt_instances", path=p,
                                fix="pass a file that holds labels or give --gt-key")
        return sample.gt_instances, list(sample.dim_neurons)
    data = _raw_array(p, key, None)
    if data is None:
        data = read_labels(p, key, lazy=True)
    return data, dim


def _dim_ids(arr: Any) -> list[int]:
    try:
        return [int(v) for v in (dict(arr.attrs).get("dim_neurons") or [])]
    except (TypeError, ValueError):
        return []


def _raw_array(p: Path, key: str | None, default: Any) -> Any:
    """The Zarr array / HDF5 dataset itself (for the fast chunk reader), else ``default``."""
    try:
        suffix = p.suffix.lower()
        if p.is_dir() and suffix == ".zarr" and key:
            from ..io.zarr_io import open_zarr

            node = open_zarr(p, key)
            return node if hasattr(node, "shape") else default
        if p.is_file() and suffix in (".h5", ".hdf", ".hdf5"):
            from ..io.hdf5 import open_hdf5_dataset

            dataset, _close = open_hdf5_dataset(p, key, labels=True)  # open while the dataset lives
            return dataset
    except NeurosegError:
        raise
    except Exception:  # noqa: BLE001 - fall back to the io layer
        return default
    return default


def _budget(data: Any, path: str | Path, what: str) -> None:
    """Refuse, from its declared shape, a label volume that could not be held in memory (the
    official evaluator loads both volumes whole; a centre crop of a huge prediction would still
    be planned over all of its chunks)."""
    import numpy as np

    from ..runtime.memory import require_volume_fits

    require_volume_fits(
        tuple(int(s) for s in data.shape), np.dtype(data.dtype).itemsize, what=f"evaluating {what}", path=path,
        fix="evaluate volumes that fit in memory: crop ground truth and prediction to the same region first",
    )


def evaluate_files_iter(
    gt_path: str | Path,
    pred_path: str | Path,
    *,
    gt_key: str | None = None,
    pred_key: str | None = None,
    partly: bool = False,
    **opts: Any,
):
    """Progress generator: evaluate one GT file against one prediction file."""
    from .evaluate import evaluate_iter

    gt, dim = open_labels(gt_path, gt_key)
    pred, _ = open_labels(pred_path, pred_key)
    _budget(gt, gt_path, "the ground truth")
    _budget(pred, pred_path, "the prediction")
    opts.setdefault("dim_ids", dim)
    result = yield from evaluate_iter(gt, pred, partly, **opts)
    result["gt_path"] = str(gt_path)
    result["pred_path"] = str(pred_path)
    return result


def evaluate_files(gt_path, pred_path, **kw: Any) -> dict[str, Any]:
    """Evaluate one GT file against one prediction file (see :func:`evaluate_files_iter`)."""
    from ..runtime.progress import run_to_completion

    return run_to_completion(evaluate_files_iter(gt_path, pred_path, **kw))


def _entries(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() or p.suffix.lower() in (".zarr", ".n5"):
            if p.suffix.lower() in LABEL_SUFFIXES or p.name.lower().endswith(LABEL_SUFFIXES):
                out.setdefault(sample_name(p), p)
    return out


def match_folders(gt_dir: str | Path, pred_dir: str | Path) -> Iterator[tuple[str, Path, Path]]:
    """``(name, gt, pred)`` for every prediction with a GT of the same sample name."""
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    gts, preds = _entries(gt_dir), _entries(pred_dir)
    common = sorted(set(gts) & set(preds))
    if not common:
        raise NeurosegError(
            f"no sample names in common between {gt_dir} ({len(gts)} entries) and {pred_dir} "
            f"({len(preds)} entries)",
            fix="name each prediction like its ground truth (text before the first dot)",
        )
    for name in common:
        yield name, gts[name], preds[name]


def read_split_file(path: str | Path) -> dict[str, bool]:
    """``{sample: partly}`` from a split file.

    Accepts the benchmark's ``sample_list_per_split.txt`` (sections "(1) samples for FlyLight
    completely:" / "(2) samples for FlyLight partly:") or lines ``<sample> completely|partly``.
    """
    p = Path(path)
    if not p.is_file():
        raise NeurosegError("split file not found", path=p, fix="check the path")
    out: dict[str, bool] = {}
    section: bool | None = None
    for raw in p.read_text().splitlines():
        line = raw.strip()
        if not line or line.endswith(":") and not line.startswith("("):
            continue  # blank, or "train:" / "val:" / "test:"
        low = line.lower()
        if line.startswith("("):
            section = "partly" in low
            continue
        parts = line.split()
        if len(parts) >= 2 and parts[-1].lower() in ("partly", "completely"):
            out[parts[0]] = parts[-1].lower() == "partly"
        elif section is not None:
            out[parts[0]] = section
    if not out:
        raise NeurosegError("no samples found in the split file", path=p,
                            fix="use the benchmark's sample_list_per_split.txt layout or "
                                "'<sample> partly|completely' lines")
    return out
