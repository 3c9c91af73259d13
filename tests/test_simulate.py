"""The demo data simulator: schema, determinism, time bounds, behaviour and rates."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engage.config import load_params
from engage.data.simulate import (
    EVENT_TYPES,
    compute_rates,
    simulate_chunk,
    simulate_tables,
    simulate_to_parquet,
)
from engage.schema import CUSTOMERS_SCHEMA, EVENTS_SCHEMA

CUSTOMERS, DAYS, SEED = 3000, 180, 7
WEEK = pd.Timedelta(weeks=1)


@pytest.fixture(scope="module")
def params():
    return load_params()


@pytest.fixture(scope="module")
def small(params):
    """3,000 contacts over 180 days: the run the rates are asserted on."""
    return simulate_tables(params.simulate, params.data, customers=CUSTOMERS, days=DAYS, seed=SEED)


@pytest.fixture(scope="module")
def year(params):
    """A full year, long enough to see contacts leave and the year-end peak."""
    return simulate_tables(params.simulate, params.data, customers=4000, days=365, seed=11)


def _start(params) -> pd.Timestamp:
    return pd.Timestamp(params.simulate.start, tz="UTC")


# ----------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_frames(params, small):
    events, customers = simulate_tables(
        params.simulate, params.data, customers=CUSTOMERS, days=DAYS, seed=SEED
    )
    pd.testing.assert_frame_equal(events, small[0])
    pd.testing.assert_frame_equal(customers, small[1])


def test_another_seed_gives_other_data(params, small):
    events, customers = simulate_tables(
        params.simulate, params.data, customers=CUSTOMERS, days=DAYS, seed=SEED + 1
    )
    assert not events.equals(small[0])
    assert not customers["first_seen"].equals(small[1]["first_seen"])


def test_parquet_output_is_byte_identical_and_atomic(params, tmp_path):
    sim = params.simulate.model_copy(update={"chunk_customers": 700})
    done: list[int] = []
    outputs = []
    for run in ("a", "b"):
        events_path = tmp_path / run / "nested" / "events.parquet"
        customers_path = tmp_path / run / "nested" / "customers.parquet"
        summary = simulate_to_parquet(
            sim,
            params.data,
            events_path,
            customers_path,
            customers=1500,
            days=60,
            seed=3,
            progress=done.append,
        )
        outputs.append((events_path.read_bytes(), customers_path.read_bytes()))
        # No temporary file left: the tables, the store's write log and its lock folder.
        assert sorted(p.name for p in events_path.parent.iterdir()) == [
            ".locks",
            "customers.parquet",
            "events.parquet",
            "events_log.json",
        ]
        assert summary.customers == 1500
        assert summary.events == pq.read_metadata(events_path).num_rows
        assert pq.read_metadata(customers_path).num_rows == 1500
        assert pq.read_schema(events_path).equals(EVENTS_SCHEMA)
        assert set(summary.rates) == {
            "open_rate",
            "ctr",
            "click_to_open",
            "conversion_rate",
            "monthly_churn",
            "cart_abandonment",
        }
        assert summary.seconds > 0
        assert summary.latent["prospects"] > summary.latent["converted"] > 0
    assert outputs[0] == outputs[1]
    assert done == [700, 700, 100, 700, 700, 100]


# ------------------------------------------------------------------------- schema


def test_chunk_tables_follow_the_schemas(params):
    events, customers = simulate_chunk(params.simulate, params.data, 0, 0, 200, 60, 1, 0)
    assert events.schema.equals(EVENTS_SCHEMA)
    assert customers.schema.equals(CUSTOMERS_SCHEMA)
    assert customers.num_rows == 200
    assert customers["customer_id"][0].as_py() == "C0000001"


def test_frames_have_the_schema_columns_and_types(small):
    events, customers = small
    assert list(events.columns) == EVENTS_SCHEMA.names
    assert list(customers.columns) == CUSTOMERS_SCHEMA.names
    assert str(events["event_time"].dtype) == "datetime64[us, UTC]"
    assert str(customers["first_seen"].dtype) == "datetime64[us, UTC]"
    assert events["value"].dtype == np.float64
    assert events[["event_id", "customer_id", "event_time", "event_type"]].notna().all().all()


def test_ids_are_unique_and_well_formed(small):
    events, customers = small
    assert events["event_id"].is_unique
    assert customers["customer_id"].is_unique
    assert customers["customer_id"].str.fullmatch(r"C\d{7}").all()
    assert set(events["customer_id"]) <= set(customers["customer_id"])


def test_chunks_share_no_event_or_customer_id(params):
    sim = params.simulate.model_copy(update={"chunk_customers": 1000})
    events, customers = simulate_tables(sim, params.data, customers=2500, days=60, seed=5)
    assert events["event_id"].is_unique
    assert events["event_id"].astype(int).min() == 1
    assert list(customers["customer_id"]) == [f"C{i:07d}" for i in range(1, 2501)]


def test_events_are_sorted_by_contact_then_time_within_a_chunk(small):
    events = small[0]
    keys = pd.MultiIndex.from_frame(events[["customer_id", "event_time"]])
    assert keys.is_monotonic_increasing


# --------------------------------------------------------------------------- time


def test_events_fall_inside_the_period_and_after_first_seen(params, small):
    events, customers = small
    start = _start(params)
    assert events["event_time"].min() >= start
    assert events["event_time"].max() < start + pd.Timedelta(days=DAYS)
    joined = events.merge(customers, on="customer_id")
    assert (joined["event_time"] >= joined["first_seen"]).all()


def test_contacts_are_old_customers_known_prospects_and_newcomers(params, small):
    customers = small[1]
    start = _start(params)
    before = customers["first_seen"] < start
    # Existing customers plus known prospects were there before the start ...
    assert 0.4 < before.mean() < 0.7
    # ... and newcomers sign up all along the period, not in a burst.
    arrivals = customers.loc[~before, "first_seen"]
    by_month = arrivals.dt.month.value_counts()
    assert by_month.min() > 0.6 * by_month.max()


def test_no_event_after_the_wall_clock(params):
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(days=20)).date().isoformat()
    sim = params.simulate.model_copy(update={"start": start})
    events, customers = simulate_tables(sim, params.data, customers=300, days=365, seed=1)
    now = pd.Timestamp.now(tz="UTC")
    assert events["event_time"].max() <= now
    assert customers["first_seen"].max() <= now


def test_a_period_in_the_future_is_refused(params):
    sim = params.simulate.model_copy(update={"start": "2999-01-01"})
    with pytest.raises(ValueError, match="future"):
        simulate_tables(sim, params.data, customers=10, days=10)


# ---------------------------------------------------------------------- behaviour


def test_every_event_type_is_present_with_its_channel_and_value(params, small):
    events = small[0]
    assert set(events["event_type"]) == set(EVENT_TYPES)
    assert set(EVENT_TYPES) <= set(params.data.event_types)
    has_value = events["event_type"].isin(params.data.value_event_types)
    assert events.loc[has_value, "value"].notna().all()
    assert events.loc[~has_value, "value"].isna().all()
    assert events["channel"].notna().all()
    email = events["event_type"].str.startswith("email_")
    assert events.loc[email, "campaign_id"].notna().all()
    assert (events.loc[email, "channel"] == "email").all()


def test_values_have_their_meaning(small):
    events = small[0]
    nps = events.loc[events["event_type"] == "nps_response", "value"]
    assert nps.between(0, 10).all() and (nps == nps.round()).all()
    amounts = events.loc[events["event_type"] == "purchase", "value"]
    assert (amounts > 0).all()
    assert 30 < amounts.median() < 80  # log-normal around exp(3.9) ~ 49
    sessions = events.loc[events["event_type"] == "web_visit", "value"]
    assert (sessions >= 1).all() and 30 < sessions.median() < 600


def test_opens_and_clicks_follow_their_email(small):
    events = small[0]
    key = ["customer_id", "campaign_id"]
    sent = events[events["event_type"] == "email_sent"].set_index(key)["event_time"]
    opened = events[events["event_type"] == "email_open"].set_index(key)["event_time"]
    clicked = events[events["event_type"] == "email_click"].set_index(key)["event_time"]
    assert sent.index.is_unique
    assert (opened > sent.reindex(opened.index)).all()
    assert (clicked > opened.reindex(clicked.index)).all()
    # Campaigns go out on the configured weekday (Tuesday by default).
    assert set(sent.dt.dayofweek) == {1}


def test_a_campaign_has_one_appeal_across_chunks(params, small):
    sim = params.simulate.model_copy(update={"chunk_customers": 500})
    events = simulate_tables(sim, params.data, customers=CUSTOMERS, days=DAYS, seed=SEED)[0]

    def open_rates(ev: pd.DataFrame) -> pd.Series:
        by_type = ev.groupby(["campaign_id", "event_type"]).size().unstack()
        return by_type["email_open"] / by_type["email_sent"]

    assert open_rates(events).corr(open_rates(small[0])) > 0.7


def test_engagement_ties_opens_visits_and_nps(small):
    events = small[0]
    per = events.pivot_table(
        index="customer_id", columns="event_type", values="event_id", aggfunc="count"
    ).fillna(0)
    # The latent engagement drives every channel: opens and visits move together.
    assert per["email_open"].corr(per["web_visit"]) > 0.3
    nps = events[events["event_type"] == "nps_response"].groupby("customer_id")["value"].mean()
    opens_per_mail = (per["email_open"] / per["email_sent"].clip(lower=1)).reindex(nps.index)
    assert nps.corr(opens_per_mail) > 0.1
    # NPS answers come more from buyers than from prospects.
    buyer = per["purchase"] > 0
    answers = per["nps_response"] > 0
    assert answers[buyer].mean() > 1.5 * answers[~buyer].mean()


def test_leavers_fade_out_before_their_last_activity(params, year):
    """The Exit stage is visible: activity falls in the 8 weeks before the last event."""
    events = year[0]
    start = _start(params)
    end = start + pd.Timedelta(days=365)
    buyers = set(events.loc[events["event_type"] == "purchase", "customer_id"])
    activity = events[(events["event_type"] != "email_sent") & events["customer_id"].isin(buyers)]
    last = activity.groupby("customer_id")["event_time"].max().rename("last")

    def trend(ids: pd.Index) -> float:
        rows = activity[activity["customer_id"].isin(ids)].join(last, on="customer_id")
        age = rows["last"] - rows["event_time"]
        recent = ((age > pd.Timedelta(0)) & (age <= 8 * WEEK)).sum() / 8
        before = ((age > 8 * WEEK) & (age <= 20 * WEEK)).sum() / 12
        return recent / before

    gone = last[(last < end - pd.Timedelta(days=60)) & (last > start + 20 * WEEK)].index
    still_here = last[last > end - pd.Timedelta(days=7)].index
    assert len(gone) >= 50
    assert trend(gone) < 0.8
    # Anyone's last 8 weeks contain their last event; only leavers slow down before it.
    assert trend(still_here) > 1.0


def test_shopping_peaks_at_year_end_and_visits_have_a_weekly_pattern(year):
    events = year[0]
    purchases = events[events["event_type"] == "purchase"]["event_time"]
    per_month = purchases.dt.month.value_counts()
    assert per_month[12] > 1.3 * per_month[[9, 10]].mean()
    visits = events[events["event_type"] == "web_visit"]["event_time"].dt.dayofweek
    by_day = visits.value_counts()
    assert by_day[6] > 1.15 * by_day[5]  # Sunday browsing beats Saturday
    tickets = events[events["event_type"] == "support_ticket"]["event_time"].dt.dayofweek
    assert (tickets >= 5).mean() < 0.15  # support is a weekday thing


# -------------------------------------------------------------------------- rates


def test_rates_are_plausible(small):
    rates = compute_rates(small[0])
    assert 0.15 <= rates["open_rate"] <= 0.35
    assert 0.01 <= rates["ctr"] <= 0.06
    assert 0.05 <= rates["click_to_open"] <= 0.20
    assert 0.02 <= rates["monthly_churn"] <= 0.12
    assert 0.03 <= rates["conversion_rate"] <= 0.20
    assert 0.50 <= rates["cart_abandonment"] <= 0.85


def test_rates_are_the_same_from_a_frame_a_table_and_a_file(small, tmp_path):
    events = small[0]
    table = pa.Table.from_pandas(events, schema=EVENTS_SCHEMA, preserve_index=False)
    path = tmp_path / "events.parquet"
    pq.write_table(table, path)
    from_frame = compute_rates(events)
    assert compute_rates(table) == pytest.approx(from_frame)
    assert compute_rates(path) == pytest.approx(from_frame)
    assert compute_rates(str(path)) == pytest.approx(from_frame)


def test_rates_on_a_toy_log_follow_their_definitions():
    t0 = pd.Timestamp("2025-01-01", tz="UTC")
    day = pd.Timedelta(days=1)
    rows = [
        # A buyer active in month 0 who goes silent in month 1: one churn of one.
        ("A", t0, "purchase"),
        ("A", t0 + 2 * day, "email_sent"),
        ("A", t0 + 2 * day, "email_open"),
        ("A", t0 + 2 * day, "email_click"),
        ("A", t0 + 3 * day, "cart_add"),  # both carts bought by the purchase below
        ("A", t0 + 4 * day, "cart_add"),
        ("A", t0 + 4 * day + pd.Timedelta(hours=1), "purchase"),
        ("B", t0 + 5 * day, "email_sent"),
        ("B", t0 + 10 * day, "cart_add"),  # abandoned: B never buys
        ("B", t0 + 89 * day, "web_visit"),  # keeps the data running to day 89
        # A newcomer (first seen after day 28) who buys, and one who does not.
        ("C", t0 + 40 * day, "purchase"),
        ("D", t0 + 41 * day, "web_visit"),
    ]
    events = pd.DataFrame(rows, columns=["customer_id", "event_time", "event_type"])
    rates = compute_rates(events)
    assert rates["open_rate"] == pytest.approx(0.5)
    assert rates["ctr"] == pytest.approx(0.5)
    assert rates["click_to_open"] == pytest.approx(1.0)
    assert rates["conversion_rate"] == pytest.approx(0.5)
    assert rates["cart_abandonment"] == pytest.approx(1 / 3)
    assert rates["monthly_churn"] == pytest.approx(1.0)
