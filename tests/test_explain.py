"""Reasons: vectorised top-k, TreeSHAP agreement with shap, additivity, sentences."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

import serving.explain as explain
from engage.config import load_params
from serving.explain import Explainer, TreeShap, format_value, top_k_indices, typical_values
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


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [
        ("email_open_count_30d", 0.0, "0"),
        ("revenue_365d", 1234.5, "1,234"),
        ("days_since_last_event", 45.25, "45.2"),
        ("open_rate_30d", 0.3333, "0.33"),
        ("days_since_last_purchase", np.nan, "never"),
        ("open_rate_30d", np.nan, "n/a"),
    ],
)
def test_format_value(name, value, text):
    assert format_value(name, value) == text


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


def test_reason_sentences_name_the_feature_value_and_typical_value():
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
        "email open events in the last 30 days: 0 (typical customer: 3); raises the churn risk"
    )
    # A feature without a typical value has no typical clause; an engaged row lowers the risk.
    engaged = pd.DataFrame({"days_since_last_event": [1.0], "email_open_count_30d": [5.0]})
    rec = explainer.reasons(engaged, 2).records()[0]
    assert rec[0]["direction"] == "lowers" and rec[0]["text"].endswith("lowers the churn risk")
    assert rec[1]["text"] == (
        "days since the contact last did anything (sent e-mails excluded): 1; "
        f"{rec[1]['direction']} the churn risk"
    )


def test_arrow_and_record_forms_agree():
    model, X = tiny_churn_model()
    explainer = Explainer(
        model, load_params(), dict(zip(X.columns, typical_values(X, list(X)), strict=True))
    )
    reasons = explainer.reasons(X.head(50), 2)
    arrow = reasons.to_arrow().to_pylist()
    assert arrow == reasons.records()
    assert [len(r) for r in arrow] == [2] * 50
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

    # The top reasons are the largest |contribution| and keep its sign.
    explained = explainer.reasons(rows, 3)
    biggest = np.sort(np.abs(contrib), axis=1)[:, ::-1][:, :3]
    np.testing.assert_allclose(np.abs(explained.contributions), biggest)
    assert explained.features.shape == (1000, 3)
