"""Golden point-in-time test: a hand-made event log, DuckDB SQL vs a naive pandas reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engage.config import load_params
from features.aggregates import build_features, snapshot_times
from features.catalog import feature_names, feature_specs
from features.reference import reference_snapshot
from features.snapshots import read_snapshots

T = pd.Timestamp


def _events() -> pd.DataFrame:
    rows = [
        # A: a customer; purchases, opens, clicks, visits, NPS
        ("A", "2025-01-02 10:00", "email_sent", None),
        ("A", "2025-01-02 11:00", "email_open", None),
        ("A", "2025-01-02 11:05", "email_click", None),
        ("A", "2025-01-05 09:00", "purchase", 40.0),
        ("A", "2025-01-20 09:00", "web_visit", 120.0),
        ("A", "2025-02-01 00:00", "purchase", 60.0),  # exactly at an as-of: excluded there
        ("A", "2025-02-03 08:00", "email_click", None),
        ("A", "2025-02-10 12:00", "nps_response", 9.0),
        ("A", "2025-02-20 12:00", "nps_response", 4.0),
        ("A", "2025-03-01 00:00", "cart_add", None),  # exactly 30 days before 2025-03-31
        # B: a prospect who browses and abandons carts, then goes quiet
        ("B", "2025-01-10 15:00", "web_visit", 300.0),
        ("B", "2025-01-10 15:10", "cart_add", None),
        ("B", "2025-01-11 15:10", "cart_add", None),
        ("B", "2025-01-12 08:00", "email_sent", None),
        ("B", "2025-01-12 09:00", "email_open", None),
        ("B", "2025-02-15 10:00", "social_interaction", None),
        # C: e-mails only, never opens; one support ticket
        ("C", "2025-01-05 10:00", "email_sent", None),
        ("C", "2025-01-12 10:00", "email_sent", None),
        ("C", "2025-01-19 10:00", "email_sent", None),
        ("C", "2025-03-02 10:00", "support_ticket", None),
        ("C", "2025-03-20 10:00", "purchase", 25.5),
    ]
    df = pd.DataFrame(rows, columns=["customer_id", "event_time", "event_type", "value"])
    df["event_time"] = pd.to_datetime(df["event_time"]).dt.tz_localize("UTC")
    df["event_id"] = [f"e{i}" for i in range(len(df))]
    return df


def _customers() -> pd.DataFrame:
    # D was met (first_seen) but has no event at all; E is first seen after every as-of.
    return pd.DataFrame(
        {
            "customer_id": ["A", "B", "C", "D", "E"],
            "first_seen": pd.to_datetime(
                ["2024-12-01", "2025-01-10", "2025-01-05", "2025-01-15", "2025-06-01"]
            ).tz_localize("UTC"),
        }
    )


AS_OF = [T("2025-02-01", tz="UTC"), T("2025-03-03", tz="UTC"), T("2025-03-31", tz="UTC")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("golden")
    ev, cu = _events(), _customers()
    for col in ("event_time",):
        ev[col] = ev[col].astype("datetime64[us, UTC]")
    cu["first_seen"] = cu["first_seen"].astype("datetime64[us, UTC]")
    ev.to_parquet(tmp / "events.parquet")
    cu.to_parquet(tmp / "customers.parquet")
    params = load_params()
    build_features(params, tmp / "events.parquet", tmp / "customers.parquet", tmp, AS_OF)
    return params, read_snapshots(tmp), ev, cu


def test_every_feature_matches_pandas_reference(built):
    params, got, ev, cu = built
    names = feature_names(params)
    for as_of in AS_OF:
        ref = reference_snapshot(ev, cu, as_of, params)
        snap = got[got["event_timestamp"] == as_of].set_index("customer_id").sort_index()
        assert list(snap.index) == list(ref.index), as_of
        for name in names:
            a, b = snap[name].astype(float).to_numpy(), ref[name].astype(float).to_numpy()
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=f"{name} @ {as_of}")


def test_hand_computed_edges(built):
    _, got, _, _ = built
    f = got.set_index(["customer_id", "event_timestamp"])
    a1 = f.loc[("A", AS_OF[0])]
    # The purchase exactly at 2025-02-01 00:00 is not visible at that as-of.
    assert a1["purchases_total"] == 1
    assert a1["revenue_total"] == pytest.approx(40.0)
    assert a1["days_since_last_purchase"] == pytest.approx(27 - 9 / 24)
    a2 = f.loc[("A", AS_OF[1])]
    assert a2["purchases_total"] == 2 and a2["avg_order_value"] == pytest.approx(50.0)
    assert a2["mean_days_between_purchases"] == pytest.approx(26 + 15 / 24)
    assert a2["last_nps_response_value"] == 4.0  # the latest answer, not the best
    a3 = f.loc[("A", AS_OF[2])]
    # cart_add at exactly as_of - 30 days is inside the 30-day window.
    assert a3["cart_add_count_30d"] == 1 and a3["cart_add_count_7d"] == 0
    b1 = f.loc[("B", AS_OF[0])]
    assert b1["has_purchased"] == 0 and b1["cart_abandonment_30d"] == 1.0
    assert b1["open_rate_30d"] == 1.0 and np.isnan(b1["ctr_7d"])
    c3 = f.loc[("C", AS_OF[2])]
    assert c3["has_purchased"] == 1 and c3["email_open_count_90d"] == 0
    assert c3["open_rate_90d"] == 0.0
    # Sent e-mails are not activity: C's last own action at 2025-03-03 is the ticket.
    assert f.loc[("C", AS_OF[1]), "days_since_last_event"] == pytest.approx(14 / 24)


def test_cohort_free_rates_and_ratios_by_hand(built):
    _, got, _, _ = built
    f = got.set_index(["customer_id", "event_timestamp"])
    a2 = f.loc[("A", AS_OF[1])]  # 2025-03-03; A first seen 2024-12-01: 92 days of life
    assert a2["tenure_days"] == pytest.approx(92.0)
    assert a2["purchases_per_30_days"] == pytest.approx(2 * 30 / 92)
    assert a2["revenue_per_30_days"] == pytest.approx(100 * 30 / 92)
    # Last purchase 2025-02-01 00:00 (30 days), usual gap 26 days 15 h: 1.13 gaps overdue.
    assert a2["purchase_overdue_ratio"] == pytest.approx(30 / (26 + 15 / 24))
    # Last own action: the cart at 2025-03-01 00:00, 2 of 92 days ago.
    assert a2["inactive_share_of_tenure"] == pytest.approx(2 / 92)
    # Own actions before 2025-03-03: open, 2 clicks, visit, 2 purchases, 2 NPS, cart = 9.
    assert a2["activity_per_30_days"] == pytest.approx(9 * 30 / 92)
    # D: 17 days of life and nothing done: zero rates, no ratio.
    d1 = f.loc[("D", AS_OF[0])]
    assert d1["purchases_per_30_days"] == 0 and d1["activity_per_30_days"] == 0
    assert np.isnan(d1["inactive_share_of_tenure"]) and np.isnan(d1["purchase_overdue_ratio"])
    # One purchase: no usual gap yet, so no overdue ratio.
    assert np.isnan(f.loc[("A", AS_OF[0]), "purchase_overdue_ratio"])


def test_customer_without_events_gets_zeros_and_nulls(built):
    _, got, _, _ = built
    d = got[got["customer_id"] == "D"].set_index("event_timestamp")
    assert len(d) == len(AS_OF)
    row = d.loc[AS_OF[0]]
    assert row["purchases_total"] == 0 and row["has_purchased"] == 0
    assert np.isnan(row["days_since_last_event"])
    assert row["tenure_days"] == pytest.approx(17.0)
    # E is first seen after every as-of time: it must not appear yet.
    assert "E" not in set(got["customer_id"])


def test_one_row_per_customer_and_snapshot_and_rebuild_replaces(built, tmp_path):
    params, got, ev, cu = built
    assert not got.duplicated(["customer_id", "event_timestamp"]).any()
    ev.to_parquet(tmp_path / "events.parquet")
    build_features(params, tmp_path / "events.parquet", None, tmp_path, AS_OF[:1])
    build_features(params, tmp_path / "events.parquet", None, tmp_path, AS_OF[:1])
    again = read_snapshots(tmp_path)
    assert len(again) == 3  # A, B, C at the first as-of: a rerun replaced, not appended


def test_timezone_forms_give_identical_features(tmp_path):
    params = load_params()
    ev = _events()
    variants = {
        "naive": ev["event_time"].dt.tz_localize(None),
        "aware": ev["event_time"],
        "plus2": ev["event_time"].dt.tz_convert("Etc/GMT-2"),  # = +02:00
    }
    results = []
    for name, times in variants.items():
        e = ev.copy()
        e["event_time"] = times
        # Storage always normalises to UTC microseconds, whatever the input form.
        e["event_time"] = pd.to_datetime(e["event_time"], utc=True).astype("datetime64[us, UTC]")
        e.to_parquet(tmp_path / f"{name}.parquet")
        out = tmp_path / name
        as_of = ["2025-03-03T02:00:00+02:00"] if name == "plus2" else ["2025-03-03"]
        build_features(params, tmp_path / f"{name}.parquet", None, out, as_of)
        results.append(read_snapshots(out).drop(columns=["created_timestamp"]))
    pd.testing.assert_frame_equal(results[0], results[1])
    pd.testing.assert_frame_equal(results[0], results[2])


def test_snapshot_times_are_anchored_on_now_and_bounded():
    times = snapshot_times(T("2025-01-01 05:00", tz="UTC"), T("2025-03-10 13:00", tz="UTC"), 7, 4)
    assert times[-1] == T("2025-03-11", tz="UTC")
    assert len(times) == 4 and all(
        b - a == pd.Timedelta(days=7) for a, b in zip(times, times[1:], strict=False)
    )
    with pytest.raises(ValueError, match="positive"):
        snapshot_times(times[0], times[1], 0, 4)


def test_new_event_type_needs_no_code():
    from engage.config import parse_params

    raw = __import__("yaml").safe_load(
        open(load_params.__globals__["PROJECT_ROOT"] / "params.yaml")
    )
    raw["data"]["event_types"] = [*raw["data"]["event_types"], "app_login"]
    params = parse_params(raw)
    names = {s.name for s in feature_specs(params)}
    assert {"app_login_count_7d", "days_since_last_app_login", "app_login_trend_30d"} <= names
