"""Writing results: the official evaluator's TOML layout, JSON, CSV and a readable table."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_write_text

SUMMARY_KEYS = ("S", "avF1", "C", "clDice_TP", "tp", "FS", "FM", "n_gt", "n_pred", "TP_05")
#: headline numbers of a nuclei result (``metrics.nuclei``; IoU 0.5 unless "mean")
NUCLEI_SUMMARY_KEYS = ("f1", "precision", "recall", "ap", "mean_matched_iou", "panoptic_quality",
                       "mean_f1", "n_gt", "n_pred", "TP_05")


def to_toml(result: dict[str, Any]) -> str:
    """The per-sample TOML text in the official evaluator's layout (``[general]``,
    ``[confusion_matrix]``, ``[confusion_matrix.th_0_1]``, ...)."""
    import tomli_w

    return tomli_w.dumps(result["official"])


def write_toml(path: str | Path, result: dict[str, Any]) -> Path:
    """Write :func:`to_toml` atomically."""
    return atomic_write_text(path, to_toml(result), parents=True)


def jsonable(obj: Any) -> Any:
    """Plain-JSON copy: NaN/inf become ``null``, dict keys strings, numpy scalars Python;
    keys starting with ``_`` (in-memory extras) are left out."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            obj = obj.item()
        except (TypeError, ValueError):
            pass
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically (NaN -> null)."""
    return atomic_write_text(path, json.dumps(jsonable(obj), indent=2) + "\n", parents=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4f}"
    return str(v)


def summary_rows(named: dict[str, dict[str, Any]],
                 keys: tuple[str, ...] = SUMMARY_KEYS) -> list[list[str]]:
    """Header + one row per named result (sample or set) with the leaderboard numbers
    (``keys``: the FISBe ones by default; :data:`NUCLEI_SUMMARY_KEYS` for nuclei results)."""
    rows = [["sample", *keys]]
    for name, r in named.items():
        if r is None:
            continue
        rows.append([name, *[_fmt(r.get(k, float("nan"))) for k in keys]])
    return rows


def format_table(named: dict[str, dict[str, Any]]) -> str:
    """A fixed-width text table of the leaderboard numbers."""
    rows = summary_rows(named)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def per_threshold_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = [["threshold", "tp", "fp", "fn", "precision", "recall", "f1"]]
    for th, r in result["per_threshold"].items():
        rows.append([th, *[_fmt(r[k]) for k in ("tp", "fp", "fn", "precision", "recall", "f1")]])
    return rows


def to_csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def write_csv(path: str | Path, rows: list[list[str]]) -> Path:
    """Write rows as CSV atomically."""
    return atomic_write_text(path, to_csv(rows), parents=True)
