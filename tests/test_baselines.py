"""Baselines are servable models: same interface, exact reasons, stored as JSON, decided."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from engage.config import load_params
from serving.champions import Champions
from serving.decision import Layout, decide
from serving.explain import Explainer
from training.baselines import (
    fit_bgnbd_model,
    fit_logistic,
    fit_rfm,
    linear_from_pipeline,
    logistic_baseline,
    rfm_score,
)
from training.fit import fit_calibrator
from training.fit_evaluate import choose
from training.labels import label_definition
from training.model import MODEL_JSON, ModelFormatError, read_model_dir, write_model_dir

PARAMS = load_params()


def _contacts(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Snapshot-like rows: recency drives churn, with missing values where nothing happened."""
    rng = np.random.default_rng(seed)
    tenure = rng.uniform(5, 400, n)
    bought = rng.random(n) < 0.6
    purchases = np.where(bought, rng.poisson(3, n) + 1, 0).astype(float)
    last_buy = np.where(bought, rng.uniform(0, 1, n) * tenure, np.nan)
    last_event = np.where(rng.random(n) < 0.9, rng.exponential(20, n), np.nan)
    return pd.DataFrame(
        {
            "days_since_last_event": last_event,
            "days_since_last_purchase": last_buy,
            "purchases_365d": purchases,
            "purchases_total": purchases,
            "revenue_365d": purchases * rng.lognormal(3.9, 0.6, n),
            "tenure_days": tenure,
            "email_open_count_30d": rng.poisson(2, n).astype(float),
            "has_purchased": bought.astype(float),
        }
    )


def _churn(X: pd.DataFrame, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    days = X["days_since_last_event"].fillna(200).to_numpy()
    return (rng.random(len(X)) < 1 / (1 + np.exp(-(days - 30) / 8))).astype(int)


def _roundtrip(model, tmp_path):
    return read_model_dir(write_model_dir(model, tmp_path / model.kind))


def test_stored_logistic_equals_the_sklearn_pipeline(tmp_path):
    X = _contacts()
    X.loc[::7, "email_open_count_30d"] = np.nan
    y = _churn(X)
    features = list(X.columns)
    pipe = logistic_baseline(0).fit(X, y)
    linear = linear_from_pipeline(pipe, X)
    np.testing.assert_allclose(
        linear.margin(X.to_numpy()), pipe.decision_function(X), rtol=0, atol=1e-10
    )
    model = fit_logistic("churn", features, X, y, 0, label_definition(PARAMS, "churn"))
    model.calibrator = fit_calibrator("sigmoid", model.margin(X), y)
    again = _roundtrip(model, tmp_path)
    assert again.kind == "logistic" and again.booster is None
    assert sorted(p.name for p in (tmp_path / "logistic").iterdir()) == [MODEL_JSON]
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))
    # Exact linear SHAP: contributions + base = margin; each is coef x (term - mean term).
    contrib, base = again.contributions(X)
    np.testing.assert_allclose(contrib.sum(axis=1) + base, again.margin(X), atol=1e-10)
    np.testing.assert_allclose(contrib.mean(axis=0), 0.0, atol=1e-10)  # training rows


def test_recency_alone_is_monotone_and_its_single_reason_is_recency():
    X = _contacts()
    y = _churn(X)
    model = fit_logistic(
        "churn", ["days_since_last_event"], X, y, 0, label_definition(PARAMS, "churn")
    )
    model.calibrator = fit_calibrator("sigmoid", model.margin(X), y)
    days = pd.DataFrame({"days_since_last_event": np.linspace(0, 500, 400)})
    p = model.predict_proba(days)
    assert (np.diff(p) > 0).all()  # more days since the last action, more churn
    reasons = Explainer(model, PARAMS, {"days_since_last_event": 12.0}).reasons(X.head(5), 3)
    assert reasons.k == 1 and {r[0]["feature"] for r in reasons.records()} == {
        "days_since_last_event"
    }


def test_rfm_model_ranks_like_the_rfm_score_and_explains_exactly(tmp_path):
    X = _contacts()
    for target in ("appetence", "churn"):
        model = fit_rfm(target, X, target, label_definition(PARAMS, target))
        margin = _roundtrip(model, tmp_path).margin(X)
        # On its own training rows the stored CDFs are the percentile ranks (mid-ranks,
        # interpolated between at most 512 grid points).
        want = rfm_score(X, target)
        np.testing.assert_allclose(margin, want, atol=5e-3)
        assert pd.Series(margin).corr(pd.Series(want), method="spearman") > 0.999
        contrib, base = model.contributions(X)
        np.testing.assert_allclose(contrib.sum(axis=1) + base, margin, atol=1e-10)
    # A contact who bought yesterday, often and a lot is more engaged than one who never did.
    best = pd.DataFrame(
        {
            "days_since_last_purchase": [1.0, np.nan],
            "purchases_365d": [20.0, 0.0],
            "revenue_365d": [5000.0, 0.0],
            "days_since_last_event": [1.0, np.nan],
        }
    )
    m = fit_rfm("appetence", X, "appetence", {})
    assert m.margin(best)[0] > m.margin(best)[1]


def test_bgnbd_model_shapley_reasons_add_up(tmp_path):
    X = _contacts()
    model = fit_bgnbd_model("appetence", X, 30, 0, label_definition(PARAMS, "appetence"))
    again = _roundtrip(model, tmp_path)
    p = again.predict_proba(X)
    assert ((p > 0) & (p < 1)).all()
    contrib, base = again.contributions(X.head(200))
    np.testing.assert_allclose(
        contrib.sum(axis=1) + base, again.margin(X.head(200)), rtol=0, atol=1e-9
    )
    # The base is the reference contact's margin; a feature at its reference value adds 0.
    ref = pd.DataFrame([dict(zip(again.features, again.reference, strict=True))])
    np.testing.assert_allclose(again.contributions(ref)[0], 0.0, atol=1e-12)
    assert base[0] == pytest.approx(again.margin(ref)[0])


def test_stored_baseline_fields_are_checked(tmp_path):
    X = _contacts()
    model = fit_logistic("churn", list(X.columns), X, _churn(X), 0, {})
    folder = write_model_dir(model, tmp_path / "m")
    doc = json.loads((folder / MODEL_JSON).read_text())
    bad_coef = json.loads(json.dumps(doc))
    bad_coef["linear"]["terms"][2]["coef"] = "x"
    bad_transform = json.loads(json.dumps(doc))
    bad_transform["linear"]["terms"][0]["transform"] = "exec"
    bad_feature = json.loads(json.dumps(doc))
    bad_feature["linear"]["terms"][0]["feature"] = 99
    no_terms = json.loads(json.dumps(doc))
    no_terms["linear"]["terms"] = []
    cases = [
        (bad_coef, r"linear.terms\[2\].coef: must be a finite number"),
        (bad_transform, r"linear.terms\[0\].transform: must be one of"),
        (bad_feature, r"linear.terms\[0\].feature: must be a feature index"),
        (no_terms, "linear.terms: must be a non-empty list"),
        ({**doc, "kind": "bgnbd"}, "btyd: the bgnbd model needs BG/NBD parameters"),
    ]
    for bad, message in cases:
        (folder / MODEL_JSON).write_text(json.dumps(bad))
        with pytest.raises(ModelFormatError, match=message):
            read_model_dir(folder)
    bg = fit_bgnbd_model("appetence", X, 30, 0, {})
    folder = write_model_dir(bg, tmp_path / "bg")
    doc = json.loads((folder / MODEL_JSON).read_text())
    doc["btyd"]["a"] = -1.0
    (folder / MODEL_JSON).write_text(json.dumps(doc))
    with pytest.raises(ModelFormatError, match="btyd.a: must be positive"):
        read_model_dir(folder)


def test_choose_serves_lightgbm_only_when_it_beats_the_best_baseline():
    metrics = {
        "model": {"roc_auc": 0.70},
        "recency": {"roc_auc": 0.78},
        "rfm": {"roc_auc": 0.73},
        "logreg": {"roc_auc": 0.60},
    }
    chosen, best, why = choose(metrics, "roc_auc", 0.0)
    assert (chosen, best) == ("recency", "recency")
    assert "0.7000 does not beat the best baseline, recency alone (0.7800)" in why
    assert "(-0.0800): the recency alone baseline is registered and served" in why
    metrics["model"]["roc_auc"] = 0.79
    chosen, best, why = choose(metrics, "roc_auc", 0.0)
    assert (chosen, best) == ("model", "recency") and "by +0.0100: LightGBM is served" in why
    # A tie, or a win smaller than the margin, serves the baseline.
    assert choose(metrics, "roc_auc", 0.02)[0] == "recency"
    metrics["model"]["roc_auc"] = 0.78
    assert choose(metrics, "roc_auc", 0.0)[0] == "recency"


def test_baseline_champions_are_decided_with_reasons_and_lapsed_customers_flagged():
    X = _contacts()
    churn_rows = X[X["has_purchased"] == 1]
    churn = fit_logistic(
        "churn",
        ["days_since_last_event", "email_open_count_30d"],
        churn_rows,
        _churn(churn_rows),
        0,
        label_definition(PARAMS, "churn"),
    )
    churn.calibrator = fit_calibrator("sigmoid", churn.margin(churn_rows), _churn(churn_rows))
    appetence = fit_rfm("appetence", X, "appetence", label_definition(PARAMS, "appetence"))
    y_app = (X["purchases_total"] > 3).astype(int).to_numpy()
    appetence.calibrator = fit_calibrator("sigmoid", appetence.margin(X), y_app)
    champions = Champions(
        {"churn": churn, "appetence": appetence}, {"churn": "1", "appetence": "1"}
    )
    layout = Layout.of(champions)
    # The churn population rule (activity within 30 days) brings its recency columns.
    assert {"days_since_last_email_open", "days_since_last_web_visit"} <= set(layout.inputs)
    rows = pd.DataFrame(
        {
            "has_purchased": [1.0, 1.0, 1.0, 0.0],
            # opened an e-mail 10 days ago | visited exactly 30 days ago | quiet 45 days
            "days_since_last_email_open": [10.0, np.nan, 45.0, np.nan],
            "days_since_last_web_visit": [np.nan, 30.0, 80.0, 50.0],
            "days_since_last_event": [5.0, 30.0, 45.0, 50.0],
        }
    )
    frame = pd.DataFrame(np.nan, index=rows.index, columns=layout.inputs)
    frame.update(rows)
    for c in ("purchases_365d", "revenue_365d", "email_open_count_30d", "purchases_total"):
        frame[c] = 1.0
    X_in = frame[layout.inputs].to_numpy(dtype="float64")
    explainers = {n: Explainer(m, PARAMS, {}) for n, m in champions.models.items()}
    d = decide(X_in, layout, champions, PARAMS, explainers, top_k=2)
    assert d.lapsed.tolist() == [False, False, True, False]  # a prospect is never lapsed
    assert np.isfinite(d.probabilities["p_churn"][:3]).all()  # lapsed ones are still scored
    rows_c, reasons = d.reasons["churn"]
    assert rows_c.tolist() == [0, 1, 2] and reasons.k == 2
    assert reasons.records()[2][0]["text"].endswith("churn risk")
