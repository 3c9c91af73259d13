"""The Spark feature build writes the same snapshots as the DuckDB build.

Equality on the golden event log (every edge of tests/test_features_golden.py) and on a
small simulation: the same files, rows, column types and nulls, values within 1e-9
relative. The Spark tests share one local[2] session (tests/conftest.py:spark) and skip
with the reason when pyspark or Java is missing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from engage.config import load_params
from features.aggregates import build_features
from features.catalog import CREATED, ENTITY_KEY, TIMESTAMP, feature_specs
from features.snapshots import list_snapshots
from tests.test_features_golden import AS_OF, _customers, _events

T = pd.Timestamp


# ------------------------------------------------------- the translation (no Spark needed)


def test_every_catalog_expression_translates_mechanically():
    from features.spark_build import spark_expression

    for spec in feature_specs(load_params()):
        out = spark_expression(spec.sql)
        assert '"' not in out and "$" not in out, spec.name
        # Only the statistic quotes and the parameter change: undoing them gives the input.
        back = out.replace("as_of_us", "$as_of_us")
        back = __import__("re").sub(r"`([a-z0-9_.]+)`", r'"\1"', back)
        assert back == spec.sql, spec.name


def test_the_translation_refuses_an_unknown_parameter():
    from features.spark_build import spark_expression

    with pytest.raises(ValueError, match=r"unknown parameter in the expression '\$now_us - 1'"):
        spark_expression("$now_us - 1")


def test_an_unknown_statistic_is_refused():
    from features.spark_build import stat_aggregate

    with pytest.raises(ValueError, match=r'"purchase\.median" reads an unknown statistic'):
        stat_aggregate("purchase", "median")


# ------------------------------------------------------------------ equality with DuckDB


def _build_both(tmp, spark, events, customers, as_of, params=None):
    params = params or load_params()
    duck, sp = tmp / "duckdb", tmp / "spark"
    build_features(params, events, customers, duck, as_of)
    engine = load_params(overrides=("compute.engine=spark",)).compute
    spark_params = params.model_copy(update={"compute": engine})
    summary = build_features(spark_params, events, customers, sp, as_of, session=spark)
    return duck, sp, summary


def assert_same_snapshots(duck, sp, rtol=1e-9):
    a, b = list_snapshots(duck), list_snapshots(sp)
    assert [s.as_of for s in a] == [s.as_of for s in b]
    assert [s.path.name for s in a] == [s.path.name for s in b]
    for x, y in zip(a, b, strict=True):
        assert_same_tables(pq.read_table(x.path), pq.read_table(y.path), x, rtol)


def assert_same_tables(ta, tb, x, rtol=1e-9):
    assert ta.schema.names == tb.schema.names, x.path.name
    assert [f.type for f in ta.schema] == [f.type for f in tb.schema], x.path.name
    assert ta.num_rows == tb.num_rows, x.path.name
    assert ta.column(ENTITY_KEY).to_pylist() == tb.column(ENTITY_KEY).to_pylist()
    assert ta.column(TIMESTAMP).equals(tb.column(TIMESTAMP))
    # One creation time per build, the same on every row.
    assert len(set(tb.column(CREATED).to_pylist())) <= 1
    for name in ta.schema.names[3:]:
        ca, cb = ta.column(name), tb.column(name)
        assert ca.null_count == cb.null_count, f"{name} @ {x.as_of}"
        va = ca.to_numpy(zero_copy_only=False).astype(float)
        vb = cb.to_numpy(zero_copy_only=False).astype(float)
        assert np.array_equal(np.isnan(va), np.isnan(vb)), f"{name} @ {x.as_of}"
        np.testing.assert_allclose(vb, va, rtol=rtol, atol=0, err_msg=f"{name} @ {x.as_of}")


def _golden_files(tmp_path):
    ev, cu = _events(), _customers()
    ev["event_time"] = ev["event_time"].astype("datetime64[us, UTC]")
    cu["first_seen"] = cu["first_seen"].astype("datetime64[us, UTC]")
    ev.to_parquet(tmp_path / "events.parquet")
    cu.to_parquet(tmp_path / "customers.parquet")
    return tmp_path / "events.parquet", tmp_path / "customers.parquet"


@pytest.mark.scale
def test_a_store_without_amounts_gives_the_same_null_money_features(tmp_path, spark):
    from features.aggregates import FeatureBuilder
    from features.catalog import money_features
    from features.snapshots import Snapshot, snapshot_path
    from features.spark_build import SparkFeatureBuilder

    params = load_params()
    events, customers = _golden_files(tmp_path)
    created = T("2025-04-01", tz="UTC")
    duck = FeatureBuilder(params, events, customers, unknown_money=True)
    sp = SparkFeatureBuilder(
        params, events, customers, tmp_path / "stage", spark, unknown_money=True
    )
    try:
        want = dict(duck.tables(AS_OF, created))
        got = dict(sp.tables(AS_OF, created))
    finally:
        duck.close()
        sp.close()
    money = money_features(params)
    assert money
    for t in AS_OF:
        assert_same_tables(want[t], got[t], Snapshot(t, snapshot_path(tmp_path, t)))
        assert all(got[t].column(m).null_count == got[t].num_rows for m in money)


@pytest.mark.scale
def test_spark_build_equals_duckdb_on_the_golden_event_log(tmp_path, spark):
    ev, cu = _events(), _customers()
    # F is known only through an event of a type outside the vocabulary: a row of zeros
    # and nulls in both builds, and the event is not counted. G's visit and purchase lie
    # exactly at the start of their type's longest window (90 and 365 days) before the
    # last as-of time: inside it.
    odd = pd.DataFrame(
        {
            "customer_id": ["F", "G", "G"],
            "event_time": [
                T("2025-02-20 08:00", tz="UTC"),
                AS_OF[-1] - pd.Timedelta(days=90),
                AS_OF[-1] - pd.Timedelta(days=365),
            ],
            "event_type": ["retired_type", "web_visit", "purchase"],
            "value": [1.0, 30.0, 12.5],
            "event_id": ["odd1", "odd2", "odd3"],
        }
    )
    ev = pd.concat([ev, odd], ignore_index=True)
    ev["event_time"] = ev["event_time"].astype("datetime64[us, UTC]")
    cu["first_seen"] = cu["first_seen"].astype("datetime64[us, UTC]")
    ev.to_parquet(tmp_path / "events.parquet")
    cu.to_parquet(tmp_path / "customers.parquet")
    # The golden times plus one before anybody is known (an empty snapshot) and one that
    # is not a midnight (window starts inside a day).
    as_of = [T("2024-11-01", tz="UTC"), *AS_OF, T("2025-03-02 10:00", tz="UTC")]
    duck, sp, summary = _build_both(
        tmp_path, spark, tmp_path / "events.parquet", tmp_path / "customers.parquet", as_of
    )
    assert summary.events == len(ev) - 1
    assert_same_snapshots(duck, sp)
    # A hand-computed value read from the Spark files (tests/test_features_golden.py).
    got = pd.read_parquet(sp / "customer_features").set_index([ENTITY_KEY, TIMESTAMP])
    a = got.loc[("A", AS_OF[0])]
    assert (a["purchases_total"], a["revenue_total"]) == (1, 40.0)
    assert a["days_since_last_purchase"] == pytest.approx(27 - 9 / 24)
    assert ("E", AS_OF[-1]) not in got.index  # first seen after every as-of time
    f = got.loc[("F", AS_OF[-1])]
    assert (f["purchases_total"], f["revenue_total"]) == (0, 0.0)
    assert np.isnan(f["days_since_last_event"]) and f["tenure_days"] > 0
    g = got.loc[("G", AS_OF[-1])]
    assert (g["web_visit_count_90d"], g["web_visit_value_90d"]) == (1, 30.0)
    assert (g["purchases_365d"], g["revenue_365d"]) == (1, 12.5)
    assert not (sp / ".spark_staging").exists()


@pytest.mark.scale
def test_spark_build_equals_duckdb_on_a_simulation(tmp_path, spark):
    from engage.data.simulate import simulate_to_parquet

    params = load_params(overrides=("simulate.customers=2000", "simulate.days=150"))
    events, customers = tmp_path / "events.parquet", tmp_path / "customers.parquet"
    simulate_to_parquet(params.simulate, params.data, events, customers)
    last = pd.read_parquet(events, columns=["event_time"])["event_time"].max()
    now = last.floor("D") + pd.Timedelta(days=1)
    # Six weekly times and one mid-day one: every window, trend and recency is exercised.
    as_of = [now - pd.Timedelta(days=7 * k) for k in range(6)] + [now - pd.Timedelta(hours=30)]
    duck, sp, summary = _build_both(tmp_path, spark, events, customers, as_of, params)
    assert summary.rows > 2000
    assert_same_snapshots(duck, sp)
