"""A store without amounts (``--no-amounts``): money is unknown, never a made-up zero.

The same simulated events go into two stores, once with their purchase amounts and once
without (a clickstream's purchases); the money features, CLV and value at risk of the
second are unknown (null / NaN) while every other feature is the same, and the at-risk
list still ranks such customers, by churn probability.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engage.config import load_params
from engage.data.ingest import ingest_events
from engage.data.io import read_events
from engage.data.simulate import simulate_to_parquet
from features.aggregates import build_features
from features.catalog import money_features
from serving.value import rank_by_value_at_risk, value_arrays


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory):
    """Feature snapshots of the same events, with and without purchase amounts."""
    params = load_params(overrides=("simulate.customers=150", "simulate.days=90"))
    root = tmp_path_factory.mktemp("amounts")
    sim = root / "sim"
    simulate_to_parquet(params.simulate, params.data, sim / "e.parquet", sim / "c.parquet")
    events = read_events(sim / "e.parquet")
    now = events["event_time"].max() + pd.Timedelta(days=1)
    as_of = [events["event_time"].min() + pd.Timedelta(days=d) for d in (45, 80)]
    out = {}
    for name, amounts in (("with", True), ("without", False)):
        df = events.copy()
        if not amounts:
            df.loc[df["event_type"] == params.data.conversion_event, "value"] = np.nan
        d = root / name
        report = ingest_events(
            df,
            params.data,
            d / "events.parquet",
            d / "quarantine.parquet",
            now=now,
            amounts=amounts,
            customers_path=d / "customers.parquet",
        )
        assert report.bad_rows == 0, report.to_text()
        summary = build_features(params, d / "events.parquet", None, d / "features", as_of=as_of)
        snaps = sorted(summary.directory.glob("*.parquet"))
        out[name] = (summary, pd.concat([pd.read_parquet(p) for p in snaps], ignore_index=True))
    return params, out


def test_money_features_are_unknown_and_the_rest_unchanged(two_stores):
    params, out = two_stores
    (with_summary, valued), (without_summary, unvalued) = out["with"], out["without"]
    assert not with_summary.unknown_money and without_summary.unknown_money
    money = money_features(params)
    assert {"revenue_total", "avg_order_value", "revenue_30d", "revenue_365d"} <= set(money)
    assert "purchases_total" not in money and "days_since_last_purchase" not in money
    buyers = valued["has_purchased"] == 1
    assert buyers.any() and (valued.loc[buyers, "revenue_total"] > 0).all()
    # Unknown, not zero, for every contact (buyers included).
    assert unvalued[money].isna().all().all()
    rest = [c for c in valued.columns if c not in money and c != "created_timestamp"]
    pd.testing.assert_frame_equal(valued[rest], unvalued[rest])


def test_clv_and_value_at_risk_are_unknown_for_customers_of_unknown_value():
    params = load_params().value
    features = pd.DataFrame(
        {
            "has_purchased": [1.0, 1.0, 0.0],
            "avg_order_value": [100.0, np.nan, np.nan],
            "purchases_365d": [12.0, 3.0, 0.0],
            "mean_days_between_purchases": [30.0, 40.0, np.nan],
        }
    )
    p_churn = np.array([0.5, 0.9, np.nan])
    clv, at_risk = value_arrays(lambda c: features[c].to_numpy(), p_churn, params)
    per_year = 12.0 if params.frequency == "purchases_365d" else 365.25 / 30.0
    assert clv[0] == pytest.approx(100.0 * per_year * params.lifespan_years)
    assert at_risk[0] == pytest.approx(0.5 * clv[0])
    # The customer without a known order value: unknown; the prospect: 0 as always.
    assert np.isnan(clv[1]) and np.isnan(at_risk[1])
    assert clv[2] == 0.0 and at_risk[2] == 0.0


def test_the_at_risk_order_puts_unknown_values_last_by_churn_probability():
    customers = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d", "e"],
            "value_at_risk": [np.nan, 50.0, np.nan, 50.0, 80.0],
            "p_churn": [0.2, 0.1, 0.9, 0.3, 0.5],
        }
    )
    ranked = rank_by_value_at_risk(customers)
    # Known values first (ties keep their order), then the unknown ones by p_churn.
    assert ranked["customer_id"].tolist() == ["e", "b", "d", "c", "a"]
    only_unknown = rank_by_value_at_risk(customers[customers["value_at_risk"].isna()])
    assert only_unknown["customer_id"].tolist() == ["c", "a"]
