"""The drift scenarios of the simulator: nothing changes before the drift, the right thing after.

The checksums below were computed on the simulator before the drift scenarios existed
(commit 90c78ad), so the default (no drift) is proven to give the very same output.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from engage.config import ConfigError, load_params
from engage.data.simulate import simulate_tables, simulate_to_parquet

DRIFT_DAY = 100
CUSTOMERS, DAYS, SEED = 2000, 200, 5


def _digest(df: pd.DataFrame) -> str:
    h = hashlib.sha256()
    h.update(",".join(f"{c}:{t}" for c, t in df.dtypes.astype(str).items()).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


# (customers, days, seed) -> (events rows, events digest, customers digest), before the change.
BEFORE = {
    (1500, 200, 3): (
        79283,
        "c4da4555c063ca17fb3697a702342468476802bfd7561c3aac285b6d6e3cfb57",
        "ef450bd59af051b4b39c9f19217eb2239fcfa723dbd04347990c248a182b6413",
    ),
    (3000, 180, 7): (
        138805,
        "3b3e14521ff0f8dc02abc73b0403a829476292458af9dd8467a5a50f215f5fed",
        "71f6beeef07891a23b25e793bed573982885d83eddea6935b4ae0510d6450285",
    ),
}


@pytest.mark.parametrize("size", sorted(BEFORE))
def test_no_drift_gives_the_output_of_before_the_drift_scenarios(size):
    params = load_params()
    assert params.simulate.drift_kind is None  # the default is no drift
    n, days, seed = size
    events, customers = simulate_tables(
        params.simulate, params.data, customers=n, days=days, seed=seed
    )
    rows, ev_digest, cu_digest = BEFORE[size]
    assert len(events) == rows
    assert _digest(events) == ev_digest
    assert _digest(customers) == cu_digest


def test_the_drift_parameters_are_inert_without_a_drift_kind():
    base = load_params()
    moved = load_params(overrides=("simulate.drift_start_day=3", "simulate.drift_strength=9"))
    a = simulate_tables(base.simulate, base.data, customers=800, days=120, seed=1)[0]
    b = simulate_tables(moved.simulate, moved.data, customers=800, days=120, seed=1)[0]
    pd.testing.assert_frame_equal(a, b)


def _pair(kind: str, strength: float = 1.5):
    sets = (f"simulate.drift_start_day={DRIFT_DAY}", f"simulate.drift_strength={strength}")
    base = load_params(overrides=sets)
    drift = load_params(overrides=(*sets, f"simulate.drift_kind={kind}"))
    kw = {"customers": CUSTOMERS, "days": DAYS, "seed": SEED}
    return (
        simulate_tables(base.simulate, base.data, **kw),
        simulate_tables(drift.simulate, drift.data, **kw),
        pd.Timestamp(base.simulate.start, tz="UTC") + pd.Timedelta(days=DRIFT_DAY),
    )


@pytest.fixture(scope="module")
def fatigue():
    return _pair("email_fatigue")


@pytest.fixture(scope="module")
def competitor():
    return _pair("competitor")


def _before(events: pd.DataFrame, t: pd.Timestamp) -> pd.DataFrame:
    return events[events["event_time"] < t].reset_index(drop=True)


@pytest.mark.parametrize("scenario", ["fatigue", "competitor"])
def test_nothing_before_the_drift_day_changes(scenario, request):
    (base, _), (drift, customers), t = request.getfixturevalue(scenario)
    # Every event before the drift, ids included, is the same; the contacts too.
    pd.testing.assert_frame_equal(_before(base, t), _before(drift, t))
    pd.testing.assert_frame_equal(request.getfixturevalue(scenario)[0][1], customers)
    # The drift only removes events: what is left is a subset, ids unique.
    assert set(drift["event_id"]) <= set(base["event_id"])
    assert drift["event_id"].is_unique
    assert len(drift) < len(base)


def _counts(events: pd.DataFrame, t: pd.Timestamp) -> pd.Series:
    return events.loc[events["event_time"] >= t, "event_type"].value_counts()


def test_email_fatigue_lowers_opens_and_clicks_from_the_drift_day(fatigue):
    (base, _), (drift, _), t = fatigue
    b, d = _counts(base, t), _counts(drift, t)
    # The same e-mails go out; fewer are opened, fewer clicked.
    assert d["email_sent"] == b["email_sent"]
    open_b, open_d = b["email_open"] / b["email_sent"], d["email_open"] / d["email_sent"]
    # Log-odds lowered by 1.5 at a ~26 % open rate: about 7-8 % remain.
    assert 0.05 < open_d < 0.11 < 0.2 < open_b
    assert d["email_click"] / d["email_open"] < b["email_click"] / b["email_open"]
    # Only e-mail behaviour moves: purchases, carts and tickets are untouched.
    for kind in ("purchase", "cart_add", "support_ticket", "social_interaction"):
        assert d[kind] == b[kind]


def test_competitor_takes_active_customers_and_leaves_the_mailing(competitor):
    (base, customers), (drift, _), t = competitor
    b, d = _counts(base, t), _counts(drift, t)
    assert d["email_sent"] == b["email_sent"]
    assert d["purchase"] < 0.9 * b["purchase"]
    # Who left: customers with activity in the base run and none after some time here.
    after_b = base[(base["event_time"] >= t) & (base["event_type"] != "email_sent")]
    after_d = drift[(drift["event_time"] >= t) & (drift["event_type"] != "email_sent")]
    last_b = after_b.groupby("customer_id")["event_time"].max()
    last_d = after_d.groupby("customer_id")["event_time"].max().reindex(last_b.index)
    gone = last_d.isna() | (last_d < last_b)
    assert gone.sum() > 50
    # Defectors are price-sensitive: their orders before the drift were smaller.
    buys = base[(base["event_type"] == "purchase") & (base["event_time"] < t)]
    aov = buys.groupby("customer_id")["value"].mean()
    left, stayed = gone[gone].index, gone[~gone].index
    assert aov.reindex(left).mean() < aov.reindex(stayed).mean()
    # Prospects who signed up during the period and never bought are not affected.
    buyers = set(base.loc[base["event_type"] == "purchase", "customer_id"])
    start = pd.Timestamp(load_params().simulate.start, tz="UTC")
    new = set(customers.loc[customers["first_seen"] >= start, "customer_id"])
    never = [c for c in last_b.index if c not in buyers and c in new]
    assert len(never) > 100
    assert not gone.reindex(never).any()


def test_a_drift_is_deterministic_and_written_the_same_to_parquet(tmp_path):
    p = load_params(overrides=("simulate.drift_kind=competitor", "simulate.drift_start_day=60"))
    kw = {"customers": 600, "days": 120, "seed": 2}
    events, customers = simulate_tables(p.simulate, p.data, **kw)
    again, _ = simulate_tables(p.simulate, p.data, **kw)
    pd.testing.assert_frame_equal(events, again)
    summary = simulate_to_parquet(
        p.simulate, p.data, tmp_path / "e.parquet", tmp_path / "c.parquet", **kw
    )
    written = pd.read_parquet(tmp_path / "e.parquet")
    assert summary.events == len(events)
    assert np.array_equal(written["event_id"].to_numpy(), events["event_id"].to_numpy())
    assert summary.latent["defected"] > 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("simulate.drift_kind=hurricane", r"simulate\.drift_kind: Input should be"),
        ("simulate.drift_start_day=-1", r"simulate\.drift_start_day: Input should be greater"),
        ("simulate.drift_strength=11", r"simulate\.drift_strength: Input should be less"),
    ],
)
def test_bad_drift_parameters_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_params(overrides=(override,))
