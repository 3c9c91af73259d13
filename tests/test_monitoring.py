"""Monitoring without a trained pipeline: PSI against hand-computed values, label windows,
the comparison of a run with its realised labels, the retrain decision, fingerprints."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from engage.config import ConfigError, load_params
from engage.specs import MODEL_SPECS
from monitoring.drift import (
    EPSILON,
    bin_shares,
    categorical_psi,
    feature_psi,
    level,
    psi,
    quantile_edges,
)
from monitoring.monitor import ALERT_EXIT_CODE, Alert, MonitorReport, label_params
from monitoring.outcomes import (
    COMPLETE,
    PARTIAL,
    PENDING,
    at_risk_hits,
    evaluate_run,
    label_window,
    stage_contrast,
)
from monitoring.retrain import compare
from training.fingerprint import DATA_TAG, PARAMS_TAG, params_fingerprint

T0 = pd.Timestamp("2025-03-04", tz="UTC")

# ------------------------------------------------------------------------------ PSI

# Hand computations (natural log):
#  A: reference 1..10, 2 bins -> cut at the median 5.5, shares (0.5, 0.5); current
#     (1 x8, 9, 10) -> (0.8, 0.2): 0.3 ln(0.8/0.5) + (-0.3) ln(0.2/0.5)
#     = 0.3 x 0.4700036 + 0.3 x 0.9162907 = 0.4158883
#  B: the same sample -> 0
#  C: reference (1, 2, 3, 4), cut 2.5, shares (0.5, 0.5, missing 0); current (1, 2, NaN, NaN)
#     -> (0.5, 0, 0.5): the empty bins count as 1e-4:
#     (1e-4 - 0.5) ln(1e-4 / 0.5) + (0.5 - 1e-4) ln(0.5 / 1e-4) = 2 x 0.4999 x ln(5000)
#     = 0.9998 x 8.5171932 = 8.5154897
#  D: reference 1..10, 2 bins, current (6 x5, 1 x5): the shares stay (0.5, 0.5) -> 0
PSI_TABLE = [
    (list(range(1, 11)), [1] * 8 + [9, 10], 2, 0.4158883),
    (list(range(1, 11)), list(range(1, 11)), 2, 0.0),
    ([1, 2, 3, 4], [1, 2, np.nan, np.nan], 2, 8.5154897),
    (list(range(1, 11)), [6] * 5 + [1] * 5, 2, 0.0),
]


@pytest.mark.parametrize(("reference", "current", "bins", "expected"), PSI_TABLE)
def test_psi_against_hand_computed_values(reference, current, bins, expected):
    assert psi(reference, current, bins) == pytest.approx(expected, abs=1e-6)


def test_psi_is_the_same_for_a_count_table():
    # The case A above as counts of two categories.
    assert categorical_psi({"Nurture": 50, "Exit": 50}, {"Nurture": 80, "Exit": 20}) == (
        pytest.approx(0.4158883, abs=1e-6)
    )
    # A category absent on one side counts as EPSILON there.
    got = categorical_psi({"a": 1}, {"a": 1, "b": 1})
    want = (0.5 - 1) * math.log(0.5 / 1) + (0.5 - EPSILON) * math.log(0.5 / EPSILON)
    assert got == pytest.approx(want)


def test_quantile_edges_merge_ties_and_bins_are_left_closed():
    # 60 % zeros: the 25 % and 50 % quantiles are both 0; the 75 % one is 1 + 0.75 = 1.75.
    ref = np.array([0] * 6 + [1, 2, 3, 4], dtype=float)
    edges = quantile_edges(ref, 4)
    np.testing.assert_allclose(edges, [0.0, 1.75])
    # bins (-inf, 0), [0, 1.75), [1.75, inf), missing
    np.testing.assert_allclose(bin_shares(ref, edges), [0.0, 0.7, 0.3, 0.0])
    np.testing.assert_allclose(bin_shares(np.array([-1, 1.75, np.nan, 0]), edges), [0.25] * 4)


def test_psi_grows_with_the_shift_and_is_not_symmetric():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 20_000)
    small, large = psi(ref, rng.normal(0.1, 1, 20_000)), psi(ref, rng.normal(1.0, 1, 20_000))
    assert 0 < small < 0.1 < 0.25 < large


@pytest.mark.parametrize(
    ("reference", "current", "bins", "message"),
    [
        ([], [1.0], 10, "the reference sample is empty"),
        ([1.0], [], 10, "the current sample is empty"),
        ([1.0, np.inf], [1.0], 10, r"reference: 1 infinite value\(s\)"),
        ([1.0], ["a"], 10, "current: not numeric"),
        ([1.0, 2.0], [1.0], 1, "bins must be at least 2, got 1"),
    ],
)
def test_psi_refuses_bad_samples(reference, current, bins, message):
    with pytest.raises(ValueError, match=message):
        psi(reference, current, bins)


def test_level_boundaries():
    assert [level(v, 0.1, 0.25) for v in (0.0999, 0.1, 0.2499, 0.25, np.nan, None)] == [
        "ok",
        "warn",
        "warn",
        "alert",
        "ok",
        "ok",
    ]


def test_feature_psi_table_and_its_errors():
    ref = pd.DataFrame({"a": np.arange(1.0, 11.0), "b": np.arange(1.0, 11.0)})
    cur = pd.DataFrame({"a": [1.0] * 8 + [9.0, 10.0], "b": np.arange(1.0, 11.0)})
    table = feature_psi(ref, cur, ["b", "a"], 2, 0.1, 0.25)
    assert table["feature"].tolist() == ["a", "b"]  # most shifted first
    assert table["psi"].tolist() == pytest.approx([0.4158883, 0.0], abs=1e-6)
    assert table["level"].tolist() == ["alert", "ok"]
    assert table.loc[0, "cur_median"] == 1.0
    with pytest.raises(ValueError, match=r"1 feature\(s\) not in the current: \['c'\]"):
        feature_psi(ref.assign(c=1.0), cur, ["a", "c"], 2, 0.1, 0.25)
    with pytest.raises(ValueError, match="the reference has no row"):
        feature_psi(ref.iloc[:0], cur, ["a"], 2, 0.1, 0.25)


# ----------------------------------------------------------------------- label windows


def test_label_window_states():
    end = T0 + pd.Timedelta(days=30)
    assert label_window(T0, 30, end).status == COMPLETE  # exactly the horizon: complete
    w = label_window(T0, 30, T0 + pd.Timedelta(days=12, hours=20))
    assert (w.status, w.observed_days, w.observed_share, w.final) == (PARTIAL, 12, 0.4, False)
    w = label_window(T0, 30, T0 + pd.Timedelta(hours=23))
    assert (w.status, w.observed_days, w.final) == (PENDING, 0, False)
    assert label_window(T0, 30, T0 - pd.Timedelta(days=3)).status == PENDING  # data ends before
    with pytest.raises(ValueError, match="horizon_days must be at least 1, got 0"):
        label_window(T0, 0, end)


def _run(n: int = 8) -> pd.DataFrame:
    # Four customers (right half) and four prospects.
    return pd.DataFrame(
        {
            "customer_id": [f"C{i}" for i in range(n)],
            "has_purchased": [1, 1, 1, 1, 0, 0, 0, 0],
            "p_purchase": [0.1, 0.2, 0.1, 0.3, 0.6, 0.4, 0.05, 0.1],
            "p_churn": [0.9, 0.7, 0.2, 0.1, np.nan, np.nan, np.nan, np.nan],
            "stage": ["Exit", "Exit", "Retention", "Retention"]
            + ["Purchase", "Purchase", "Nurture", "Nurture"],
            "segment": ["At risk", "Repeat", "Repeat", "Hero", "Lead", "Lead", "Ghost", "Ghost"],
            "clv": [100.0, 1000.0, 50.0, 400.0, 0, 0, 0, 0],
            "value_at_risk": [90.0, 700.0, 10.0, 40.0, 0, 0, 0, 0],
        }
    )


def test_a_run_is_compared_with_its_realised_labels():
    scores = _run()
    # Churn labels for three of the four customers (C3 is outside the population).
    labels = pd.DataFrame({"customer_id": ["C0", "C1", "C2"], "label": [1, 0, 0]})
    window = label_window(T0, 30, T0 + pd.Timedelta(days=40))
    o = evaluate_run(
        scores,
        labels,
        MODEL_SPECS["churn"],
        window,
        version="3",
        run_id="r1",
        min_rows=3,
        at_risk_top=2,
        ece_bins=10,
        other_stage="Retention",
    )
    assert (o.status, o.population, o.evaluated, o.unscored) == (COMPLETE, 3, 3, 0)
    # y = (1, 0, 0), p = (0.9, 0.7, 0.2): the positive ranks first -> AUC 1.
    assert o.metrics["roc_auc"] == 1.0
    assert o.metrics["brier"] == pytest.approx((0.1**2 + 0.7**2 + 0.2**2) / 3)
    assert o.predicted_rate == pytest.approx(0.6) and o.realised_rate == pytest.approx(1 / 3)
    exit_row = o.by_stage.set_index("stage").loc["Exit"]
    assert (exit_row["n"], exit_row["predicted"], exit_row["realised"]) == (2, 0.8, 0.5)
    # The top 2 by value at risk: C1 (700, stayed) and C0 (90, churned, CLV 100).
    assert o.at_risk["listed"] == 2 and o.at_risk["labelled"] == 2
    assert o.at_risk["churned"] == 1 and o.at_risk["hit_rate"] == 0.5
    assert o.at_risk["value_at_risk_listed"] == 790.0 and o.at_risk["clv_churned"] == 100.0
    assert o.at_risk["lift"] == pytest.approx(0.5 / (1 / 3))
    # Exit 1 of 2 churned, Retention 0 of 1.
    assert o.stages["rate_exit"] == 0.5 and o.stages["rate_retention"] == 0.0


def test_at_risk_list_members_without_a_label_are_counted_apart():
    hits = at_risk_hits(_run(), pd.DataFrame({"customer_id": ["C0"], "label": [1]}), 3)
    # Top 3: C1, C0, C3; only C0 has a label.
    assert (hits["listed"], hits["labelled"], hits["outside_population"]) == (3, 1, 2)
    assert hits["hit_rate"] == 1.0 and hits["churned"] == 1
    with pytest.raises(ValueError, match="at-risk top must be at least 1, got 0"):
        at_risk_hits(_run(), pd.DataFrame({"customer_id": [], "label": []}), 0)


def test_purchase_rate_of_purchase_against_nurture():
    joined = _run().assign(label=[0, 0, 0, 0, 1, 0, 0, 0])
    out = stage_contrast(joined, 0, "Purchase", "Nurture")
    assert out == {
        "n_purchase": 2,
        "rate_purchase": 0.5,
        "n_nurture": 2,
        "rate_nurture": 0.0,
        "lift": out["lift"],
    }
    assert math.isnan(out["lift"])  # no purchase in Nurture: undefined, not infinite


def test_canary_a_window_not_yet_observed_is_never_final():
    scores = _run()
    labels = pd.DataFrame({"customer_id": ["C0", "C1", "C2", "C3"], "label": [1, 1, 0, 0]})
    kw = {"version": "1", "run_id": "r", "min_rows": 1, "at_risk_top": 2, "ece_bins": 10}
    spec = MODEL_SPECS["churn"]
    pending = evaluate_run(scores, labels, spec, label_window(T0, 30, T0), **kw)
    assert pending.status == PENDING and not pending.window.final
    assert pending.metrics == {} and pending.evaluated == 0
    partial = evaluate_run(
        scores, labels, spec, label_window(T0, 30, T0 + pd.Timedelta(days=9)), **kw
    )
    # Figures are computed on what is observed, but the outcome says so and is not final.
    assert partial.status == PARTIAL and not partial.window.final
    assert partial.metrics and partial.window.observed_share == pytest.approx(0.3)
    assert partial.note.startswith("partial: 9 of 30 days observed (30%); not final")


def test_too_few_rows_or_one_class_give_no_metric_and_bad_input_is_named():
    kw = {"version": "1", "run_id": "r9", "at_risk_top": 2, "ece_bins": 10}
    window = label_window(T0, 30, T0 + pd.Timedelta(days=31))
    spec = MODEL_SPECS["churn"]
    labels = pd.DataFrame({"customer_id": ["C0", "C1"], "label": [1, 1]})
    o = evaluate_run(_run(), labels, spec, window, min_rows=5, **kw)
    assert o.metrics == {} and "fewer than monitoring.min_rows=5" in o.note
    o = evaluate_run(_run(), labels, spec, window, min_rows=1, **kw)
    assert o.metrics == {} and "a single class" in o.note
    with pytest.raises(ValueError, match=r"scoring run r9: missing column\(s\) \['clv'\]"):
        evaluate_run(_run().drop(columns="clv"), labels, spec, window, min_rows=1, **kw)
    twice = pd.DataFrame({"customer_id": ["C0", "C0"], "label": [1, 0]})
    with pytest.raises(ValueError, match=r"labels of run r9: 1 contact\(s\) labelled twice"):
        evaluate_run(_run(), twice, spec, window, min_rows=1, **kw)


# ---------------------------------------------------------- label definition and alerts


def test_label_params_take_the_definition_the_model_was_trained_for():
    params = load_params()
    p = label_params(
        params,
        {
            "horizon_days": 91,
            "active_within_days": 365,
            "conversion_event": "cart_add",
            "label_rule": "quiet_in_window",
            "model": "churn",
        },
    )
    assert p.labels.horizon_days == 91 and p.labels.active_within_days == 365
    assert p.data.conversion_event == "cart_add"
    assert params.labels.horizon_days == 30  # the caller's parameters are untouched
    with pytest.raises(ValueError, match="stored label definition is invalid"):
        label_params(params, {"horizon_days": 0})


def test_exit_code_is_three_on_an_alert_only():
    empty = pd.DataFrame()
    report = MonitorReport(pd.Timestamp("2025-01-01", tz="UTC"), [], [], [], empty, empty)
    assert report.exit_code == 0 == ALERT_EXIT_CODE - 3
    report.alerts = [Alert("warn", "score_drift", "", "p_churn", 0.12, 0.1, "m")]
    assert report.exit_code == 0
    report.alerts.append(Alert("alert", "performance", "churn", "roc_auc", 0.08, 0.05, "m"))
    assert report.exit_code == 3


def test_monitoring_parameters_are_checked():
    with pytest.raises(ConfigError, match=r"monitoring\.psi_warn: must be at most monitoring"):
        load_params(overrides=("monitoring.psi_warn=0.5", "monitoring.psi_alert=0.2"))
    with pytest.raises(ConfigError, match=r"monitoring\.reference_window: Input should be"):
        load_params(overrides=("monitoring.reference_window=valid",))


# ------------------------------------------------------------ retrain decision, fingerprints


def test_params_fingerprint_follows_what_training_reads_only():
    base = params_fingerprint(load_params())
    assert params_fingerprint(load_params()) == base
    for changed in (
        "training.lightgbm.learning_rate=0.07",
        "labels.horizon_days=28",
        "features.windows_days=[7,30]",
    ):
        assert params_fingerprint(load_params(overrides=(changed,))) != base, changed
    for same in (
        "index.tau_churn=0.4",
        "data.dir=elsewhere",
        "features.dir=feats",
        "monitoring.psi_alert=0.5",
        "simulate.customers=10",
    ):
        assert params_fingerprint(load_params(overrides=(same,))) == base, same


def test_retrain_compares_both_fingerprints():
    tags = {DATA_TAG: "d1", PARAMS_TAG: "p1"}
    assert compare(tags, "d1", "p1") is None
    assert compare(tags, "d2", "p1") == "the events changed"
    assert compare(tags, "d1", "p2") == "the training parameters changed"
    assert compare({DATA_TAG: "d1"}, "d1", "p1") == "its parameters were not recorded"
