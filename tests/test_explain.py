"""Reasons: vectorised top-k, TreeSHAP agreement with shap, additivity, sentences."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

import serving.explain as explain
from engage.config import load_params
from serving.explain import Explainer, TreeShap, top_k_indices, typical_values
from serving.sentences import phrases, reason_eligible
from training.fit import fit_calibrator
from training.model import EngageModel


@pytest.mark.parametrize("k", [1, 3, 7, 10, 15])
def test_top_k_matches_a_full_sort(k):
    rng = np.random.default_rng(k)
    contrib = rng.normal(size=(500, 10))
    got = top_k_indices(contrib, k)
    want = np.argsort(-np.abs(contrib), axis=1)[:, : min(k, 10)]
    np.testing.assert_array_equal(got, want)


def test_top_k_edge_cases():
    assert top_k_indices(np.ones((4, 3)), 0).shape == (4, 0)
    assert top_k_indices(np.ones((0, 3)), 2).shape == (0, 2)
    assert top_k_indices(np.ones((2, 3)), 5).shape == (2, 3)
    # Negative contributions count by their size.
    assert top_k_indices(np.array([[0.1, -5.0, 2.0]]), 2).tolist() == [[1, 2]]


PARAMS = load_params()

# (feature, contact's value, typical value) -> the sentence, written by hand. Whole days,
# amounts to the unit with the currency, rates and changes in whole percent, no "n/a".
SENTENCES = [
    # Cohort-free forms: a count or amount per 30 days of known life, a multiple of the
    # usual gap, a share of the known life (never a percentage of a trend).
    (
        "purchases_per_30_days",
        2.345,
        1.2,
        "2.35 purchases per 30 days of known life (typical customer: 1.20)",
    ),
    (
        "revenue_per_30_days",
        123.4,
        80.0,
        "123 EUR of purchases per 30 days of known life (typical customer: 80 EUR)",
    ),
    ("revenue_per_30_days", 0.0, 80.0, "no purchases so far (typical customer: 80 EUR)"),
    (
        "activity_per_30_days",
        4.0,
        2.0,
        "4 own actions per 30 days of known life (typical customer: 2)",
    ),
    (
        "purchase_overdue_ratio",
        3.2,
        1.0,
        "last purchase 3.20 usual gaps ago (typical customer: 1)",
    ),
    ("purchase_overdue_ratio", np.nan, 1.0, "fewer than two purchases so far, no usual gap yet"),
    (
        "inactive_share_of_tenure",
        0.45,
        0.1,
        "quiet for 45 % of their known life (typical customer: 10 %)",
    ),
    (
        "days_since_last_email_open",
        45.4,
        6.0,
        "hasn't opened an e-mail in 45 days (typical customer: 6 days)",
    ),
    (
        "days_since_last_email_open",
        2.5,
        6.0,
        "last opened an e-mail 3 days ago (typical customer: 6 days)",
    ),
    ("days_since_last_email_open", np.nan, 6.0, "never opened an e-mail"),
    (
        "days_since_last_purchase",
        38.1,
        20.0,
        "hasn't bought in 38 days (typical customer: 20 days)",
    ),
    (
        "days_since_last_event",
        0.2,
        5.0,
        "last active less than a day ago (typical customer: 5 days)",
    ),
    (
        "days_since_last_event",
        61.0,
        5.0,
        "no activity of their own for 61 days (typical customer: 5 days)",
    ),
    (
        "email_open_count_30d",
        12.0,
        3.0,
        "12 e-mails opened in the last 30 days, far more than a typical customer (3)",
    ),
    (
        "email_open_count_30d",
        1.0,
        3.0,
        "1 e-mail opened in the last 30 days, far fewer than a typical customer (3)",
    ),
    (
        "email_open_count_30d",
        0.0,
        3.0,
        "no e-mail opened in the last 30 days (typical customer: 3)",
    ),
    (
        "support_ticket_count_90d",
        2.0,
        0.0,
        "2 support tickets in the last 90 days, when a typical customer has none",
    ),
    (
        "open_rate_30d",
        0.4567,
        0.2,
        "opened 46 % of the e-mails received in the last 30 days (typical customer: 20 %)",
    ),
    ("open_rate_30d", np.nan, 0.2, "no e-mail received in the last 30 days"),
    (
        "click_to_open_90d",
        0.125,
        0.3,
        "clicked in 13 % of the e-mails opened in the last 90 days (typical customer: 30 %)",
    ),
    (
        "web_visit_value_30d",
        754.0,
        1800.0,
        "13 minutes of website visits in the last 30 days (typical customer: 30 minutes)",
    ),
    (
        "web_visit_value_30d",
        45.0,
        1800.0,
        "45 seconds of website visits in the last 30 days (typical customer: 30 minutes)",
    ),
    (
        "revenue_365d",
        1234.5,
        300.0,
        "1,235 EUR of purchases in the last 365 days (typical customer: 300 EUR)",
    ),
    ("avg_order_value", 48.7, 60.0, "average purchase of 49 EUR (typical customer: 60 EUR)"),
    (
        "mean_days_between_purchases",
        30.4,
        60.0,
        "one purchase every 30 days on average (typical customer: 60 days)",
    ),
    ("mean_days_between_purchases", np.nan, 60.0, "fewer than two purchases so far"),
    (
        "email_open_trend_30d",
        -0.5,
        0.0,
        "e-mails opened down 67 % on the 30 days before (typical customer: steady)",
    ),
    (
        "email_open_trend_30d",
        -1.0,
        0.0,
        "no e-mail opened in the last 30 days after some in the 30 days before",
    ),
    ("activity_trend_30d", np.nan, 0.0, "no activity in either of the last two 30-day periods"),
    ("last_nps_response_value", 3.0, 8.0, "last NPS answer: 3 (typical customer: 8)"),
    ("last_nps_response_value", np.nan, 8.0, "never answered the NPS survey"),
    ("cart_abandonment_30d", np.nan, 0.7, "no cart add in the last 30 days"),
    ("tenure_days", 120.2, 200.0, "known for 120 days (typical customer: 200 days)"),
    ("days_since_first_purchase", np.nan, 300.0, "never bought"),
]


@pytest.mark.parametrize(("name", "value", "typical", "text"), SENTENCES)
def test_reason_sentences(name, value, typical, text):
    (phrase,) = phrases([name], np.array([typical]), "customer", PARAMS)
    got = phrase.texts(np.array([value]), np.array([True]), "churn risk")
    assert got.tolist() == [f"{text}; raises the churn risk"]
    assert "n/a" not in got[0] and "-1" not in got[0] and "nan" not in got[0]


def test_sentences_are_worded_per_distinct_value_and_follow_the_direction():
    (phrase,) = phrases(["email_open_count_30d"], np.array([3.0]), "prospect", PARAMS)
    got = phrase.texts(
        np.array([0.0, 7.0, 0.0]), np.array([True, False, False]), "purchase readiness"
    )
    assert got.tolist() == [
        "no e-mail opened in the last 30 days (typical prospect: 3); raises the purchase readiness",
        "7 e-mails opened in the last 30 days, far more than a typical prospect (3); "
        "lowers the purchase readiness",
        "no e-mail opened in the last 30 days (typical prospect: 3); lowers the purchase readiness",
    ]


def test_a_new_event_type_gets_sentences_without_code():
    params = load_params(
        overrides=(
            "data.event_types=[email_sent, email_open, email_click, "
            "web_visit, cart_add, purchase, social_interaction, "
            "support_ticket, nps_response, sales_accepted, app_login]",
        )
    )
    (phrase,) = phrases(["days_since_last_app_login"], np.array([2.0]), "customer", params)
    assert phrase.fact(9.0) == "hasn't had a app login event in 9 days (typical customer: 2 days)"


def test_the_brands_own_sending_and_typical_values_are_never_reasons():
    names = ["email_sent_count_30d", "email_open_count_30d", "days_since_last_web_visit"]
    found = phrases(names, np.zeros(3), "customer", PARAMS)
    assert [p.passive for p in found] == [True, False, False]
    x = np.array([[9.0, 3.3, np.nan], [9.0, 3.6, 4.0], [9.0, np.nan, np.nan]])
    typical = np.array([4.0, 3.0, np.nan])
    got = reason_eligible(x, typical, np.array([True, False, False]), tolerance=0.15)
    # 3.3 is within 15 % of 3 (typical), 3.6 is not; an unknown typical is never "near"
    # a known value, but a missing value with a missing typical value says nothing.
    assert got.tolist() == [[False, False, False], [False, True, True], [False, True, False]]
    both_missing = reason_eligible(np.array([[np.nan]]), np.array([np.nan]), np.array([False]), 0.1)
    assert both_missing.tolist() == [[False]]


def tiny_churn_model() -> tuple[EngageModel, pd.DataFrame]:
    """A model where no recent e-mail open means churn, trained in a fraction of a second."""
    rng = np.random.default_rng(0)
    n = 4000
    X = pd.DataFrame(
        {
            "email_open_count_30d": rng.integers(0, 6, n).astype(float),
            "days_since_last_event": rng.uniform(0, 100, n),
        }
    )
    y = ((X["email_open_count_30d"] == 0) | (rng.random(n) < 0.05)).astype(int).to_numpy()
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 4, "seed": 0, "num_threads": 1},
        lgb.Dataset(X, label=y),
        num_boost_round=20,
    )
    margin = booster.predict(X, raw_score=True)
    model = EngageModel(
        name="churn",
        features=list(X.columns),
        booster=booster,
        calibrator=fit_calibrator("sigmoid", margin, y),
        trained_for={"feature_service": "churn_v1"},
    )
    return model, X


def test_reason_records_hold_the_numbers_and_the_sentence():
    model, X = tiny_churn_model()
    params = load_params()
    explainer = Explainer(model, params, {"email_open_count_30d": 3.0})
    row = pd.DataFrame({"days_since_last_event": [12.5], "email_open_count_30d": [0.0]})
    reasons = explainer.reasons(row, 1)
    (rec,) = reasons.records()[0]
    assert rec["feature"] == "email_open_count_30d"
    assert rec["value"] == 0.0 and rec["typical"] == 3.0
    assert rec["direction"] == "raises" and rec["contribution"] > 0
    assert rec["text"] == (
        "no e-mail opened in the last 30 days (typical customer: 3); raises the churn risk"
    )
    # A feature without a typical value has no typical clause; an engaged row lowers the risk.
    engaged = pd.DataFrame({"days_since_last_event": [1.0], "email_open_count_30d": [5.0]})
    rec = explainer.reasons(engaged, 2).records()[0]
    assert rec[0]["direction"] == "lowers" and rec[0]["text"].endswith("lowers the churn risk")
    assert rec[1]["text"] == f"last active 1 day ago; {rec[1]['direction']} the churn risk"


def test_a_typical_value_is_skipped_for_the_next_reason():
    model, _ = tiny_churn_model()
    explainer = Explainer(model, load_params(), {"email_open_count_30d": 0.0})
    row = pd.DataFrame({"days_since_last_event": [12.5], "email_open_count_30d": [0.0]})
    contrib = explainer.contributions(row)
    assert abs(contrib[0, 0]) > abs(contrib[0, 1])  # opens would come first...
    (only,) = explainer.reasons(row, 2).records()[0]  # ...but 0 is the typical value
    assert only["feature"] == "days_since_last_event"
    arrow = explainer.reasons(row, 2).to_arrow().to_pylist()
    assert [[r["feature"] for r in row] for row in arrow] == [["days_since_last_event"]]


def test_arrow_and_record_forms_agree():
    model, X = tiny_churn_model()
    explainer = Explainer(
        model, load_params(), dict(zip(X.columns, typical_values(X, list(X)), strict=True))
    )
    reasons = explainer.reasons(X.head(50), 2)
    arrow = reasons.to_arrow().to_pylist()
    assert arrow == reasons.records()
    # Two reasons, fewer when a candidate sits at its typical value (medians here).
    x = X.head(50)[explainer.names].to_numpy()
    near = np.abs(x - explainer.typical) <= 0.15 * np.abs(explainer.typical)
    assert [len(r) for r in arrow] == (2 - near.sum(axis=1)).tolist()
    # Rows may be picked for lazy sentences.
    assert reasons.records([3, 7]) == [arrow[3], arrow[7]]


@pytest.mark.parametrize("fast", [True, False])
def test_reasons_matrix_equals_reasons_on_the_frame(fast):
    model, X = tiny_churn_model()
    explainer = Explainer(
        model,
        load_params(),
        dict(zip(X.columns, typical_values(X, list(X)), strict=True)),
        fast=fast,
    )
    rows = X.head(40)[list(reversed(X.columns))]  # another column order: reasons() picks
    x = rows[explainer.names].to_numpy(dtype="float64")
    assert explainer.reasons_matrix(x, 2).records() == explainer.reasons(rows, 2).records()
    with pytest.raises(ValueError, match=r"expected \(rows, 2\), got \(40, 1\)"):
        explainer.reasons_matrix(x[:, :1], 2)


def messy_data(n: int = 3000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Features with NaNs, exact zeros and ties, and a label that needs deep paths."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 6)), columns=[f"f{i}" for i in range(6)])
    X.iloc[:, :3] = X.iloc[:, :3].mask(rng.random((n, 3)) < 0.3)
    X["f3"] = X["f3"].where(rng.random(n) < 0.5, 0.0)
    X["f4"] = X["f4"].round(0)
    logit = np.nan_to_num(X["f0"]) * 2 - np.isnan(X["f1"]) + X["f3"] * X["f4"] + X["f5"] ** 2
    return X, (logit + rng.normal(size=n) > 0.5).astype(int).to_numpy()


@pytest.mark.parametrize(
    "extra",
    [
        {},  # NaN-aware splits (missing_type NaN)
        {"zero_as_missing": True},  # missing_type Zero: ~0 and NaN go the default way
        {"use_missing": False},  # missing_type None: NaN is treated as 0
        {"num_leaves": 63, "max_depth": 10, "min_data_in_leaf": 5},  # long paths, repeats
        {"min_data_in_leaf": 2500},  # no split possible: single-leaf trees only
    ],
)
def test_tree_shap_equals_lightgbm_pred_contrib(extra):
    X, y = messy_data()
    params = {"objective": "binary", "verbose": -1, "seed": 1, "num_leaves": 15, "num_threads": 1}
    params.update(extra)
    booster = lgb.train(params, lgb.Dataset(X, label=y), num_boost_round=30)
    fast = TreeShap.compile(booster)
    assert fast is not None
    want = booster.predict(X, pred_contrib=True)
    got = fast.contributions(X.to_numpy())
    np.testing.assert_allclose(got, want[:, :-1], atol=1e-9, rtol=0)
    assert fast.expected_value == pytest.approx(want[0, -1], abs=1e-9)
    assert fast.contributions(X.to_numpy()[:0]).shape == (0, 6)
    with pytest.raises(ValueError, match="expected rows x 6 features"):
        fast.contributions(X.to_numpy()[:, :5])


def test_unsupported_models_fall_back_to_pred_contrib(monkeypatch):
    X, _ = messy_data()
    codes = np.random.default_rng(0).integers(0, 5, len(X))
    X["cat"] = pd.Categorical(codes)
    y = np.isin(codes, [1, 3]).astype(int)  # only a categorical split separates these
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "min_data_per_group": 5, "num_threads": 1},
        lgb.Dataset(X, label=y),
        num_boost_round=10,
    )
    assert "'decision_type': '=='" in str(booster.dump_model())
    assert TreeShap.compile(booster) is None
    model, _ = tiny_churn_model()
    monkeypatch.setattr(explain, "MAX_PATH_FEATURES", 1)
    slow = Explainer(model, load_params(), {})
    assert slow.tree_shap is None  # too many features on a path for the tables
    rows = pd.DataFrame({"days_since_last_event": [1.0, 50.0], "email_open_count_30d": [0, 4]})
    np.testing.assert_allclose(slow.contributions(rows), model.contributions(rows)[0])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["churn", "appetence"])
def test_contributions_are_additive_and_agree_with_shap(pipeline, name):
    import shap

    from features.snapshots import pick_snapshot
    from training.labels import population_rule

    model = pipeline.results[name].engage_model
    frame = pd.read_parquet(pick_snapshot(pipeline.paths.features_dir).path)
    rows = frame.sample(min(1000, len(frame)), random_state=1)
    contrib, base = model.contributions(rows)
    margin = model.margin(rows)
    assert len(rows) == 1000
    assert np.abs(base + contrib.sum(axis=1) - margin).max() < 1e-6

    # shap.TreeExplainer on a LightGBM booster just calls pred_contrib; forcing its own
    # C++ TreeSHAP ("internal") makes this an independent check of the same values.
    # Compared on rows of the model's population: shap's own tree reader routes a NaN
    # through a split whose feature had no missing value in training by the default
    # child, where LightGBM reads it as 0 (e.g. the activity trend of a lapsed customer:
    # never missing among active ones), and its values then do not even add up to the
    # model's margin. The compiled tables below follow LightGBM on every row.
    explainer = shap.TreeExplainer(model.booster)
    explainer.model.model_type = "internal"
    in_population = np.ones(len(rows), bool)
    rule = population_rule(model.trained_for)
    if rule is not None:
        columns, days = rule
        in_population = (rows["has_purchased"] == 1).to_numpy() & (
            (rows[columns] <= days).any(axis=1).to_numpy()
        )
    scored = np.flatnonzero(in_population)[:200]
    assert len(scored) == 200
    sample = model.inputs_frame(rows.iloc[scored])  # features and BG/NBD inputs
    values = explainer.shap_values(sample)
    np.testing.assert_allclose(values, contrib[scored], atol=1e-9)
    assert explainer.expected_value == pytest.approx(base[0], abs=1e-9)

    # The compiled tables give the same values, and so the same additivity.
    explainer = Explainer(model, pipeline.params, {})
    assert explainer.tree_shap is not None
    fast = explainer.contributions(rows)
    np.testing.assert_allclose(fast, contrib, atol=1e-9, rtol=0)
    assert np.abs(explainer.tree_shap.expected_value + fast.sum(axis=1) - margin).max() < 1e-6

    # The top reasons are the largest |contribution| among the eligible features (not
    # the brand's own sending, not a typical value) and keep its sign.
    explained = explainer.reasons(rows, 3)
    x = model.inputs_matrix(model.frame(rows).to_numpy(dtype="float64"))
    tolerance = pipeline.params.scoring.reason_typical_tolerance
    ok = reason_eligible(x, explainer.typical, explainer.passive, tolerance) & (contrib != 0)
    biggest = np.sort(np.where(ok, np.abs(contrib), -1.0), axis=1)[:, ::-1][:, :3]
    shown = np.where(explained.valid, np.abs(explained.contributions), -1.0)
    np.testing.assert_allclose(np.maximum(shown, -1.0), np.maximum(biggest, -1.0))
    assert explained.features.shape == (1000, 3)
    sent = [j for j, n in enumerate(explainer.names) if n.startswith("email_sent_")]
    assert sent and not np.isin(explained.features[explained.valid], sent).any()
