"""Leaderboard aggregation over a set of samples (as the FISBe benchmark reports it).

Per set (completely or partly labelled): per threshold 0.1..0.9 the F1 of the *pooled* counts
``2ΣTP / (2ΣTP + ΣFP + ΣFN)``, avF1 their mean, C the mean over all GT coverages of the set,
S = 0.5·avF1 + 0.5·C, tp = ΣTP@0.5 / ΣnGT, clDice_TP the mean over all TP pairs, FS and FM sums.
Combined (both kinds present): S, avF1, C and the per-threshold F1 are the means of the two
sets, tp is pooled, FS and FM are summed, clDice_TP pools all TP pairs (the 2026 code;
``clDice_TP_set_mean`` is the mean of the two set values, as in the paper's tables).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

F1_THRESHOLDS = ("0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9")


def _mean32(values: list) -> float:
    arr = np.asarray(values, dtype=np.float32)
    return float(np.mean(arr)) if arr.size else 0.0


def summarize_set(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pooled numbers of one set of per-sample results (from :func:`evaluate`)."""
    per_th: dict[str, dict[str, Any]] = {}
    fscores = []
    for th in F1_THRESHOLDS:
        tp = sum(int(r["per_threshold"][th]["tp"]) for r in results)
        fp = sum(int(r["per_threshold"][th]["fp"]) for r in results)
        fn = sum(int(r["per_threshold"][th]["fn"]) for r in results)
        denom = 2 * tp + fp + fn
        f1 = 2 * tp / denom if denom > 0 else 0.0
        fscores.append(f1)
        per_th[th] = {"tp": tp, "fp": fp, "fn": fn, "f1": f1}
    covs = [c for r in results for c in r["gt_coverage"]]
    C = _mean32(covs)
    avF1 = float(np.mean(fscores))
    n_gt = sum(int(r["n_gt"]) for r in results)
    tp05 = sum(int(r["TP_05"]) for r in results)
    cl = [c for r in results for c in r["tp_cldice"]]
    dim_n = sum(int(r["dim"]["n"]) for r in results)
    dim_tp = sum(int(r["dim"]["TP_05"]) for r in results)
    ov_n = sum(int(r["overlap"]["n"]) for r in results)
    ov_tp = sum(int(r["overlap"]["TP_05"]) for r in results)
    return {
        "n_samples": len(results),
        "S": 0.5 * avF1 + 0.5 * C,
        "avF1": avF1,
        "C": C,
        "clDice_TP": _mean32(cl) if tp05 > 0 else 0.0,
        "tp": tp05 / n_gt if n_gt else 0.0,
        "FS": sum(int(r["FS"]) for r in results),
        "FM": sum(int(r["FM"]) for r in results),
        "n_gt": n_gt,
        "n_pred": sum(int(r["n_pred"]) for r in results),
        "TP_05": tp05,
        "per_threshold": per_th,
        "gt_coverage": [float(c) for c in covs],
        "tp_cldice": [float(c) for c in cl],
        "dim": {"n": dim_n, "TP_05": dim_tp, "tp": dim_tp / dim_n if dim_n else 0.0,
                "C": _mean32([c for r in results for c in r["dim"]["gt_coverage"]])},
        "overlap": {"n": ov_n, "TP_05": ov_tp, "tp": ov_tp / ov_n if ov_n else 0.0,
                    "C": _mean32([c for r in results for c in r["overlap"]["gt_coverage"]])},
    }


def combine_sets(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's combined numbers from a completely (``a``) and a partly (``b``) set."""
    n_gt = a["n_gt"] + b["n_gt"]
    tp05 = a["TP_05"] + b["TP_05"]
    cl = list(a["tp_cldice"]) + list(b["tp_cldice"])
    per_th = {
        th: {
            "tp": a["per_threshold"][th]["tp"] + b["per_threshold"][th]["tp"],
            "fp": a["per_threshold"][th]["fp"] + b["per_threshold"][th]["fp"],
            "fn": a["per_threshold"][th]["fn"] + b["per_threshold"][th]["fn"],
            "f1": float(np.mean([a["per_threshold"][th]["f1"], b["per_threshold"][th]["f1"]])),
        }
        for th in F1_THRESHOLDS
    }
    return {
        "n_samples": a["n_samples"] + b["n_samples"],
        "S": float(np.mean([a["S"], b["S"]])),
        "avF1": float(np.mean([a["avF1"], b["avF1"]])),
        "C": float(np.mean([a["C"], b["C"]])),
        "clDice_TP": _mean32(cl) if tp05 > 0 else 0.0,
        "clDice_TP_set_mean": float(np.mean([a["clDice_TP"], b["clDice_TP"]])),
        "tp": tp05 / n_gt if n_gt else 0.0,
        "FS": a["FS"] + b["FS"],
        "FM": a["FM"] + b["FM"],
        "n_gt": n_gt,
        "n_pred": a["n_pred"] + b["n_pred"],
        "TP_05": tp05,
        "per_threshold": per_th,
    }


def aggregate(
    results: Sequence[dict[str, Any]], partly_flags: Sequence[bool] | None = None
) -> dict[str, Any]:
    """Leaderboard numbers of a set of samples.

    ``partly_flags[i]`` says whether sample ``i`` is partly labelled (default: each result's own
    ``partly``). Returns ``{"completely": ..., "partly": ..., "combined": ...}`` (``None`` for a
    missing kind; with one kind only, ``combined`` is that set's numbers).
    """
    if partly_flags is None:
        partly_flags = [bool(r.get("partly", False)) for r in results]
    if len(partly_flags) != len(results):
        raise ValueError("partly_flags must have one entry per result")
    cpt = [r for r, f in zip(results, partly_flags) if not f]
    prt = [r for r, f in zip(results, partly_flags) if f]
    a = summarize_set(cpt) if cpt else None
    b = summarize_set(prt) if prt else None
    if a is not None and b is not None:
        comb = combine_sets(a, b)
    else:
        comb = a if a is not None else b
    return {"completely": a, "partly": b, "combined": comb}
