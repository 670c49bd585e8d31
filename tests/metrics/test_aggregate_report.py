"""Set aggregation (leaderboard rules) and the TOML/JSON writers."""

from __future__ import annotations

import csv
import json
import tomllib

import numpy as np
import pytest

from napari_neuroseg.metrics import aggregate, evaluate, to_toml, write_json, write_toml
from napari_neuroseg.metrics.report import format_table

from helpers import labels_from, stack_from, three_tubes, tube


def _fake(n_gt, tp05, cov, cl, fs, fm, partly):
    """A per-sample result with the fields aggregation reads."""
    row = {"tp": tp05, "fp": 1, "fn": n_gt - tp05, "f1": 0.0}
    return {
        "n_gt": n_gt, "n_pred": tp05 + 1, "TP_05": tp05, "FS": fs, "FM": fm, "partly": partly,
        "per_threshold": {th: dict(row) for th in
                          ("0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9")},
        "gt_coverage": [cov] * n_gt, "tp_cldice": [cl] * tp05,
        "dim": {"n": 0, "TP_05": 0, "gt_coverage": []},
        "overlap": {"n": 0, "TP_05": 0, "gt_coverage": []},
    }


def test_pooled_counts_not_mean_of_f1():
    a = _fake(1, 1, 1.0, 0.9, 0, 0, False)
    b = _fake(9, 0, 0.0, 0.0, 2, 1, False)
    agg = aggregate([a, b])["combined"]
    # pooled: TP=1, FP=2, FN=9 -> F1 = 2/(2+2+9)
    assert agg["avF1"] == pytest.approx(2 / 13)
    assert agg["C"] == pytest.approx(0.1)  # mean over all 10 GT neurons
    assert agg["tp"] == pytest.approx(0.1) and agg["clDice_TP"] == pytest.approx(0.9)
    assert (agg["FS"], agg["FM"]) == (2, 1)
    assert agg["S"] == pytest.approx(0.5 * 2 / 13 + 0.05)


def test_completely_and_partly_sets_are_averaged():
    res = aggregate([_fake(2, 2, 1.0, 1.0, 0, 0, False), _fake(4, 0, 0.0, 0.0, 3, 0, True)])
    cpt, prt, comb = res["completely"], res["partly"], res["combined"]
    assert comb["C"] == pytest.approx((cpt["C"] + prt["C"]) / 2)
    assert comb["avF1"] == pytest.approx((cpt["avF1"] + prt["avF1"]) / 2)
    assert comb["tp"] == pytest.approx(2 / 6)  # pooled
    assert comb["FS"] == 3
    assert comb["clDice_TP_set_mean"] == pytest.approx(0.5)


@pytest.mark.realdata
def test_set_rules_reproduce_the_authors_summary_csv(fisbe_real_dir):
    """The authors' test-set table (Duan et al.): C, tp, FS, FM and the clDice_TP of the
    combined row follow from the per-sample rows with the benchmark's set rules."""
    path = fisbe_real_dir / "reference" / "summary_brainbow_combined.csv"
    rows = list(csv.reader(open(path), delimiter=";"))
    head, body = rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]
    samples = [r for r in body if r["sample"] not in ("mean", "sum", "avg_inst")]
    want = next(r for r in body if r["sample"] == "avg_inst")
    completely = {"JRC_SS04989-20160318_24_A2", "R14A02-20180905_65_A6", "R54A09-20181019_64_H1",
                  "VT011145-20171222_63_I1", "VT027175-20171031_62_H3",
                  "VT027175-20171031_62_H4", "VT050157-20171110_61_C1"}
    results, flags = [], []
    for r in samples:
        n, t = int(float(r["general Num GT"])), int(float(r["general TP_05"]))
        cl = float(r["general avg_TP_05_cldice"])
        results.append(_fake(n, t, np.float32(float(r["general avg_gt_skel_coverage"])),
                             np.float32(cl) if t else 0.0,
                             int(float(r["general FS"])), int(float(r["general FM"])),
                             r["sample"] not in completely))
        flags.append(r["sample"] not in completely)
    comb = aggregate(results, flags)["combined"]
    assert comb["C"] == pytest.approx(float(want["general avg_gt_skel_coverage"]), abs=1e-6)
    assert comb["tp"] == pytest.approx(float(want["general TP_05_rel"]), abs=1e-9)
    assert comb["FS"] == int(want["general FS"]) and comb["FM"] == int(want["general FM"])
    assert comb["n_gt"] == int(want["general Num GT"])
    assert comb["clDice_TP_set_mean"] == pytest.approx(
        float(want["general avg_TP_05_cldice"]), abs=1e-6)


def test_toml_and_json_writers(tmp_path):
    masks = three_tubes()
    res = evaluate(stack_from(masks), labels_from(masks[:2]), partly=True)
    text = to_toml(res)
    back = tomllib.loads(text)
    assert back == res["official"]
    assert text.startswith("[general]") and '"Num GT" = 3' in text
    assert "[confusion_matrix.th_0_55]" in text and "false_split" in back["confusion_matrix"]["th_0_5"]
    p = write_toml(tmp_path / "out" / "s.toml", res)
    assert tomllib.loads(p.read_text()) == res["official"]
    j = write_json(tmp_path / "s.json", res)
    data = json.loads(j.read_text())
    assert data["clDice_TP"] == pytest.approx(1.0)
    assert set(data["per_threshold"]["0.1"]) >= {"tp", "fp", "fn", "precision", "recall", "f1"}
    assert not list(tmp_path.glob("**/*.tmp"))
    table = format_table({"s": res})
    assert "avF1" in table and "s " in table


def test_json_writes_nan_as_null(tmp_path):
    masks = three_tubes()
    res = evaluate(stack_from(masks), labels_from([tube(z=20, y=44, x0=0, x1=130)]))
    data = json.loads(write_json(tmp_path / "x.json", res).read_text())
    assert data["clDice_TP"] is None
