"""The two real FISBe samples against the official evaluator's TOML files (every number)."""

from __future__ import annotations

import math

import numpy as np
import pytest

REAL_SAMPLES = ("R14A02-20180905_65_A6", "VT011145-20171222_63_I2")

pytestmark = pytest.mark.realdata


def _flat(d, pre=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, pre + k + ".")
        else:
            yield pre + k, v


@pytest.mark.parametrize("name", sorted(REAL_SAMPLES))
def test_every_reference_number_matches(real_results, name):
    res, ref, _ = real_results[name]
    mine = dict(_flat(res["official"]))
    refd = dict(_flat(ref))
    assert set(mine) == set(refd), (set(mine) ^ set(refd))
    for key, want in refd.items():
        got = mine[key]
        if isinstance(want, list):
            assert isinstance(got, list) and len(got) == len(want), key
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=key)
        elif isinstance(want, float) and math.isnan(want):
            assert math.isnan(got), key
        else:
            assert got == pytest.approx(want, abs=1e-6), key
            assert type(got) is type(want), key  # ints stay ints, floats floats


@pytest.mark.parametrize("name", sorted(REAL_SAMPLES))
def test_summary_keys_agree_with_official_layout(real_results, name):
    res, ref, partly = real_results[name]
    gen, cm = ref["general"], ref["confusion_matrix"]
    assert res["avF1"] == pytest.approx(cm["avFscore19"], abs=1e-6)
    assert res["C"] == pytest.approx(gen["avg_gt_skel_coverage"], abs=1e-6)
    assert res["S"] == pytest.approx(gen["avg_f1_cov_score"], abs=1e-6)
    assert res["clDice_TP"] == pytest.approx(gen["avg_TP_05_cldice"], abs=1e-6)
    assert res["tp"] == pytest.approx(gen["TP_05_rel"], abs=1e-6)
    assert (res["FS"], res["FM"]) == (gen["FS"], gen["FM"])
    assert (res["n_gt"], res["n_pred"]) == (gen["Num GT"], gen["Num Pred"])
    for th in ("0.1", "0.5", "0.9"):
        row, tbl = res["per_threshold"][th], cm["th_" + th.replace(".", "_")]
        assert (row["tp"], row["fp"], row["fn"]) == (tbl["AP_TP"], tbl["AP_FP"], tbl["AP_FN"])
        assert row["f1"] == pytest.approx(tbl["fscore"], abs=1e-12)
    assert res["partly"] is partly
    assert res["warnings"] == []


def test_error_lists_use_original_ids(real_results):
    res, ref, _ = real_results["VT011145-20171222_63_I2"]
    err = res["errors"]
    n_gt = ref["general"]["Num GT"]
    assert len(err["missed_gt"]) == n_gt - ref["general"]["TP_05"]
    assert len(err["false_positive"]) == ref["confusion_matrix"]["th_0_5"]["AP_FP"]
    assert sum(len(s["preds"]) - 1 for s in err["false_split"]) == ref["general"]["FS"]
    assert sum(len(m["gts"]) - 1 for m in err["false_merge"]) == ref["general"]["FM"]
    # prediction ids are the label values of the .hdf file (1..11 there, small ones removed)
    assert set(err["false_positive"]) <= set(res["pred_ids"])
    assert all(i in range(1, n_gt + 1) for i in err["missed_gt"])
    assert res["removed_small_pred_ids"], "the FlyLight preset removes ids with <= 800 voxels"
    assert not set(res["removed_small_pred_ids"]) & set(res["pred_ids"])
