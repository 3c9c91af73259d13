"""Small data and extrapolation: adaptive LightGBM, starved warnings, ranges, denser snapshots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engage.config import load_params
from features.aggregates import snapshot_times
from features.catalog import monotone_directions
from serving.champions import Champions
from serving.decision import Layout
from serving.scoring import RangeCheck
from training.baselines import fit_logistic
from training.fit import adapt_to_rows, fit_engage_model
from training.fit_evaluate import starved_warnings
from training.labels import LABEL
from training.model import feature_ranges

PARAMS = load_params()
T = pd.Timestamp


def test_lightgbm_shrinks_on_small_data_and_keeps_its_settings_on_large():
    lp = PARAMS.training.lightgbm  # 31 leaves, 50 rows per leaf
    # 214 rows, 60 churners: 60 // 20 = 3 -> 5 rows per leaf; 60 // (2 * 5) = 6 leaves.
    small = adapt_to_rows(lp, np.r_[np.ones(60), np.zeros(154)])
    assert (small.num_leaves, small.min_child_samples) == (6, 5)
    # 500 positives: 25 rows per leaf, 500 // 50 = 10 leaves.
    mid = adapt_to_rows(lp, np.r_[np.ones(500), np.zeros(5000)])
    assert (mid.num_leaves, mid.min_child_samples) == (10, 25)
    big = adapt_to_rows(lp, np.r_[np.ones(20_000), np.zeros(80_000)])
    assert (big.num_leaves, big.min_child_samples) == (lp.num_leaves, lp.min_child_samples)
    assert small.learning_rate == lp.learning_rate  # only the two size settings move


def test_a_starved_model_is_named_with_its_rows_positives_and_trees():
    rng = np.random.default_rng(0)
    n = 214
    X = pd.DataFrame({"days_since_last_event": rng.uniform(0, 90, n)})
    y = (rng.random(n) < 0.25).astype(int)  # no signal: early stopping keeps few trees
    Xv = pd.DataFrame({"days_since_last_event": rng.uniform(0, 90, n)})
    yv = (rng.random(n) < 0.25).astype(int)
    model = fit_engage_model(
        "churn", list(X.columns), X, y, Xv, yv, PARAMS.training, trained_for={}
    )
    (warning,) = starved_warnings(model, X.assign(**{LABEL: y}), PARAMS)
    rarer = int(min(y.sum(), n - y.sum()))
    assert f"{n:,} training rows (< training.starved.min_rows=2000)" in warning
    assert f"{rarer:,} rows of the rarer class (< training.starved.min_positives=200)" in warning
    assert f"{model.booster.num_trees()} trees (< training.starved.min_trees=20)" in warning
    lenient = load_params(
        overrides=(
            "training.starved.min_rows=10",
            "training.starved.min_positives=10",
            "training.starved.min_trees=1",
        )
    )
    assert starved_warnings(model, X.assign(**{LABEL: y}), lenient) == []


def test_rows_outside_the_training_range_are_counted_and_reported():
    rng = np.random.default_rng(1)
    train = pd.DataFrame(
        {
            "days_since_last_event": rng.uniform(0, 60, 1000),
            "tenure_days": rng.uniform(10, 200, 1000),
            "has_purchased": np.ones(1000),
        }
    )
    y = (train["days_since_last_event"] > 30).astype(int).to_numpy()
    churn = fit_logistic("churn", ["days_since_last_event", "tenure_days"], train, y, 0, {})
    churn.training["feature_ranges"] = feature_ranges(churn.frame(train))
    lo, hi = churn.feature_ranges()["tenure_days"]
    assert lo == pytest.approx(train["tenure_days"].min()) and hi <= 200
    # A later snapshot of the same cohort: every tenure has grown by 90 days.
    later = train.assign(tenure_days=train["tenure_days"] + 90)
    later.loc[:4, "days_since_last_event"] = [-1.0, 500.0, np.nan, np.nan, 61.0]
    counts = churn.out_of_range(later[churn.features].to_numpy())
    want_tenure = int((later["tenure_days"] > hi).sum())
    assert counts == {"tenure_days": want_tenure, "days_since_last_event": 3}  # NaN is not out
    appetence = fit_logistic("appetence", ["days_since_last_event"], train, y, 0, {})
    champions = Champions(
        {"churn": churn, "appetence": appetence}, {"churn": "1", "appetence": "1"}
    )
    layout = Layout.of(champions)
    check = RangeCheck(champions, layout)
    X = later.reindex(columns=layout.inputs).to_numpy(dtype="float64")
    check.add(X[:500])
    check.add(X[500:])
    assert check.counts["churn"] == counts and check.rows == {"churn": 1000, "appetence": 1000}
    (line,) = check.warnings(0.01)  # appetence has no recorded range: nothing to say
    assert line.startswith("churn: scored rows outside the training range of 1 feature(s):")
    assert f"tenure_days {want_tenure:,} rows ({want_tenure / 1000:.1%}; trained on" in line
    assert check.warnings(0.99) == []
    # A model with an activity rule counts only the rows of its population: here contacts
    # active within 60 days (500, NaN, NaN and 61 days are outside it, -1 is inside).
    layout.populations["churn"] = (np.array([layout.columns["days_since_last_event"]]), 60)
    inside = RangeCheck(champions, layout)
    inside.add(X)
    active = (later["days_since_last_event"] <= 60).to_numpy()
    assert inside.rows["churn"] == int(active.sum()) == 996
    assert inside.counts["churn"] == {
        "days_since_last_event": 1,
        "tenure_days": int((later.loc[active, "tenure_days"] > hi).sum()),
    }


def test_monotone_directions_follow_the_families():
    churn = monotone_directions(PARAMS, "churn")
    appetence = monotone_directions(PARAMS, "appetence")
    # More recent activity never raises churn; more activity never lowers appetence.
    assert churn["days_since_last_email_open"] == +1 and churn["web_visit_count_30d"] == -1
    assert churn["btyd_p_alive"] == -1 and appetence["btyd_expected_purchases"] == +1
    assert appetence["cart_add_count_7d"] == +1 and appetence["days_since_last_web_visit"] == -1
    # Repurchase cycles: a purchase's own recency and short windows are free for appetence.
    assert "days_since_last_purchase" not in appetence and "purchases_30d" not in appetence
    assert appetence["purchases_365d"] == +1 and churn["purchases_30d"] == -1
    # Types that are not activity (tickets, NPS) have no direction.
    assert not any("support_ticket" in f or "nps" in f for f in churn)
    with pytest.raises(ValueError, match="no directions for model 'ltv'"):
        monotone_directions(PARAMS, "ltv")


def test_short_histories_get_denser_snapshots():
    first, last = T("2025-01-01", tz="UTC"), T("2025-04-10 15:00", tz="UTC")  # ~100 days
    weekly = snapshot_times(first, last, 7, 60)
    assert len(weekly) == 15
    # A 30-day horizon leaves 10 weekly times labelled; 24 are wanted: every 3 days gives
    # 34 times, 24 of them labelled (every 4 days would give 17).
    dense = snapshot_times(first, last, 7, 60, horizon_days=30, min_labelled=24)
    now = T("2025-04-11", tz="UTC")
    assert dense[-1] == now and all(
        b - a == pd.Timedelta(days=3) for a, b in zip(dense, dense[1:], strict=False)
    )
    assert sum(t + pd.Timedelta(days=30) <= now for t in dense) == 24
    # Enough history: the configured spacing is kept.
    long = snapshot_times(T("2024-01-01", tz="UTC"), last, 7, 60, horizon_days=30, min_labelled=24)
    assert long == snapshot_times(T("2024-01-01", tz="UTC"), last, 7, 60)


def test_a_run_id_follows_the_models_content_and_horizon_not_only_their_versions():
    from dataclasses import replace

    from serving.scoring import default_run_id

    rng = np.random.default_rng(3)
    train = pd.DataFrame({"days_since_last_event": rng.uniform(0, 60, 300)})
    y = (train["days_since_last_event"] > 30).astype(int).to_numpy()

    def fit(seed_rows: int, horizon: int):
        return fit_logistic(
            "churn", ["days_since_last_event"], train.head(seed_rows), y[:seed_rows], 0,
            {"horizon_days": horizon},
        )  # fmt: skip

    one, same, other_fit, other_horizon = fit(300, 30), fit(300, 30), fit(200, 30), fit(300, 60)
    assert one.digest() == same.digest()  # the same answers, whatever the training facts
    same.training["train_rows"] = 12345
    assert one.digest() == same.digest()
    assert other_fit.digest() != one.digest() and other_horizon.digest() != one.digest()

    as_of = T("2025-06-01", tz="UTC")

    def run_id(model) -> str:
        champions = Champions({"churn": model}, {"churn": "3"})  # one version number
        return default_run_id(as_of, champions.identity, PARAMS)

    assert run_id(one) == run_id(replace(one)) == run_id(same)
    assert run_id(other_fit) != run_id(one) != run_id(other_horizon)
    assert (
        Champions({"churn": other_horizon}, {"churn": "3"}).identity["churn"].startswith("v3 60d ")
    )
