"""Lifecycle segments (priority rules) and customer value (CLV, value at risk)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engage.config import load_params
from serving.segments import REQUIRED, SEGMENTS, assign_segments, normalise_segment, segment_rules
from serving.value import customer_value, purchase_frequency

P = load_params().segments  # the defaults of params.yaml
NAN = np.nan


def _with(section: str, changes: dict):
    return getattr(
        load_params(overrides=tuple(f"{section}.{k}={v}" for k, v in changes.items())), section
    )


def segments_with(**changes):
    return _with("segments", changes)


def value_with(**changes):
    return _with("value", changes)


# An active, established prospect that matches no specific rule (a Ghost).
BASE = {
    "has_purchased": 0,
    "tenure_days": 200.0,
    "days_since_last_event": 3.0,
    "days_since_last_purchase": NAN,
    "days_since_last_cart_add": NAN,
    "cart_add_count_30d": 0,
    "email_click_count_30d": 0,
    "purchases_90d": 0,
    "purchases_365d": 0,
    "revenue_365d": 0.0,
}
CUSTOMER = {
    **BASE,
    "has_purchased": 1,
    "days_since_last_purchase": 20.0,
    "purchases_90d": 1,
    "purchases_365d": 1,
    "revenue_365d": 50.0,
}


def seg(**changes) -> str:
    row = {**BASE, **changes}
    return str(assign_segments(pd.DataFrame([row]), P)[0])


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (BASE, "Ghost"),
        ({**BASE, "email_click_count_30d": 1}, "Lead"),
        ({**BASE, "cart_add_count_30d": 1, "days_since_last_cart_add": 20.0}, "Lead"),
        ({**BASE, "days_since_last_cart_add": 14.0, "cart_add_count_30d": 1}, "Waiting"),
        ({**BASE, "days_since_last_cart_add": 14.01, "cart_add_count_30d": 1}, "Lead"),
        ({**BASE, "tenure_days": 29.9}, "New"),
        ({**BASE, "tenure_days": 30.0}, "Ghost"),
        ({**BASE, "days_since_last_event": 59.9}, "Ghost"),
        ({**BASE, "days_since_last_event": 60.0}, "At risk"),
        ({**BASE, "days_since_last_event": 180.0}, "Lost"),
        # Never acted: inactivity counts from the first sighting.
        ({**BASE, "days_since_last_event": NAN, "tenure_days": 90.0}, "At risk"),
        ({**BASE, "days_since_last_event": NAN, "tenure_days": 400.0}, "Lost"),
        (CUSTOMER, "Occasional"),
        ({**CUSTOMER, "purchases_365d": 3}, "Repeat"),
        ({**CUSTOMER, "purchases_365d": 3, "purchases_90d": 3, "revenue_365d": 500.0}, "Hero"),
        # Hero needs both the value and the frequency.
        ({**CUSTOMER, "purchases_365d": 3, "purchases_90d": 2, "revenue_365d": 900.0}, "Repeat"),
        ({**CUSTOMER, "purchases_365d": 5, "purchases_90d": 3, "revenue_365d": 499.9}, "Repeat"),
        # A customer with clicks is still a customer segment, never Lead.
        ({**CUSTOMER, "email_click_count_30d": 5}, "Occasional"),
        ({**CUSTOMER, "days_since_last_event": 70.0}, "At risk"),
        # Waiting: a cart after the last purchase; a purchase since the cart is not.
        ({**CUSTOMER, "days_since_last_cart_add": 5.0, "days_since_last_purchase": 9.0}, "Waiting"),
        (
            {**CUSTOMER, "days_since_last_cart_add": 5.0, "days_since_last_purchase": 5.0},
            "Occasional",
        ),
        (
            {**CUSTOMER, "days_since_last_cart_add": 5.0, "days_since_last_purchase": 2.0},
            "Occasional",
        ),
    ],
)
def test_each_rule_at_its_boundary(row, expected):
    assert seg(**row) == expected


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        # Priority: Waiting > New > Lost > At risk > Hero > Repeat > Occasional > Lead > Ghost.
        ({**BASE, "tenure_days": 5.0, "days_since_last_cart_add": 1.0}, "Waiting"),
        ({**BASE, "tenure_days": 5.0, "email_click_count_30d": 3}, "New"),
        ({**CUSTOMER, "tenure_days": 10.0, "purchases_90d": 9, "revenue_365d": 1e4}, "New"),
        ({**CUSTOMER, "days_since_last_event": 200.0, "purchases_365d": 9}, "Lost"),
        (
            {
                **CUSTOMER,
                "days_since_last_event": 61.0,
                "purchases_90d": 5,
                "purchases_365d": 5,
                "revenue_365d": 1e4,
            },
            "At risk",
        ),
        (
            {
                **CUSTOMER,
                "days_since_last_cart_add": 2.0,
                "purchases_90d": 5,
                "purchases_365d": 5,
                "revenue_365d": 1e4,
            },
            "Waiting",
        ),
    ],
)
def test_priority_order_decides_overlaps(row, expected):
    assert seg(**row) == expected


def random_features(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "has_purchased": rng.integers(0, 2, n).astype(float),
            "tenure_days": rng.uniform(0, 500, n),
            "days_since_last_event": rng.uniform(0, 400, n),
            "days_since_last_purchase": rng.uniform(0, 400, n),
            "days_since_last_cart_add": rng.uniform(0, 60, n),
            "cart_add_count_30d": rng.integers(0, 3, n).astype(float),
            "email_click_count_30d": rng.integers(0, 3, n).astype(float),
            "purchases_90d": rng.integers(0, 6, n).astype(float),
            "purchases_365d": rng.integers(0, 10, n).astype(float),
            "revenue_365d": rng.uniform(0, 1500, n),
        }
    )
    # Holes everywhere, including in has_purchased (then the row is not a customer).
    return frame.mask(rng.random(frame.shape) < 0.2)


@pytest.mark.parametrize("seed", range(5))
def test_segments_are_exhaustive_and_exclusive(seed):
    frame = random_features(20_000, seed)
    out = assign_segments(frame, P)
    assert len(out) == len(frame)
    assert not pd.isna(out).any()  # exhaustive: every row has a segment
    assert list(out.categories) == list(SEGMENTS)
    # Exclusive: recompute every rule independently; the assigned one must be the first
    # rule that holds, so no row can be claimed by two segments.
    col = {c: frame[c].to_numpy() for c in REQUIRED}
    inactive = np.where(
        np.isnan(col["days_since_last_event"]), col["tenure_days"], col["days_since_last_event"]
    )
    customer = col["has_purchased"] == 1
    with np.errstate(invalid="ignore"):
        holds = {
            "Waiting": (col["days_since_last_cart_add"] <= 14)
            & ~(col["days_since_last_purchase"] <= col["days_since_last_cart_add"]),
            "New": col["tenure_days"] < 30,
            "Lost": inactive >= 180,
            "At risk": inactive >= 60,
            "Hero": customer & (col["revenue_365d"] >= 500) & (col["purchases_90d"] >= 3),
            "Repeat": customer & (col["purchases_365d"] >= 3),
            "Occasional": customer,
            "Lead": (col["email_click_count_30d"] >= 1) | (col["cart_add_count_30d"] >= 1),
            "Ghost": np.ones(len(frame), dtype=bool),
        }
    assigned = np.asarray(out.astype(str))
    for name in SEGMENTS:
        mine = assigned == name
        assert holds[name][mine].all(), f"{name} assigned where its rule fails"
        earlier = SEGMENTS[: SEGMENTS.index(name)]
        for other in earlier:
            assert not holds[other][mine].any(), f"{name} assigned where {other} wins"
    # Every segment occurs on this varied input, and the halves never mix.
    assert set(assigned) == set(SEGMENTS)
    assert not np.isin(assigned[customer], ["Lead", "Ghost"]).any()
    assert not np.isin(assigned[~customer], ["Hero", "Repeat", "Occasional"]).any()


def test_thresholds_come_from_params():
    strict = segments_with(lost_inactive_days=30, at_risk_inactive_days=10)
    row = pd.DataFrame([{**BASE, "days_since_last_event": 31.0}])
    assert str(assign_segments(row, strict)[0]) == "Lost"
    assert str(assign_segments(row, P)[0]) == "Ghost"
    rules = dict(segment_rules(strict))
    assert list(rules) == list(SEGMENTS)
    assert "30 days" in rules["Lost"]


def test_missing_columns_and_segment_names():
    with pytest.raises(ValueError, match=r"segments: missing feature column\(s\) \['tenure_days'"):
        assign_segments(pd.DataFrame([BASE]).drop(columns="tenure_days"), P)
    assert normalise_segment("at-risk") == "At risk"
    assert normalise_segment(" HERO ") == "Hero"
    with pytest.raises(ValueError, match="unknown segment 'vip': valid segments are Waiting, New"):
        normalise_segment("vip")


# ---------------------------------------------------------------------------- value


def value_frame(rows):
    cols = ["has_purchased", "avg_order_value", "purchases_365d", "mean_days_between_purchases"]
    return pd.DataFrame(rows, columns=cols)


def test_clv_matches_the_product_brief_example():
    # 100 $ a purchase, 12 purchases a year, 1 year: 1,200 $; 40 % churn risk: 480 $ at risk.
    frame = value_frame([(1, 100.0, 12, 30.0)])
    out = customer_value(frame, np.array([0.4]), value_with(lifespan_years=1.0))
    assert out["clv"].iloc[0] == pytest.approx(1200.0)
    assert out["value_at_risk"].iloc[0] == pytest.approx(480.0)


def test_clv_by_hand_with_both_frequency_methods():
    frame = value_frame(
        [
            (1, 50.0, 4, 73.05),  # 4 purchases in 365 days; a gap of 73.05 days = 5 a year
            (1, 80.0, 1, NAN),  # a single purchase: no gap, mean_gap falls back to 1 a year
            (1, 20.0, 2, 0.0),  # two purchases at once: zero gap, falls back to 2 a year
            (0, NAN, 0, NAN),  # a prospect: no value, nothing at risk
        ]
    )
    q = np.array([0.5, 0.1, 1.0, NAN])
    by_count = customer_value(frame, q, value_with(lifespan_years=2.0))
    np.testing.assert_allclose(by_count["clv"], [400.0, 160.0, 80.0, 0.0])
    np.testing.assert_allclose(by_count["value_at_risk"], [200.0, 16.0, 80.0, 0.0])
    by_gap = customer_value(frame, q, value_with(lifespan_years=2.0, frequency="mean_gap"))
    np.testing.assert_allclose(by_gap["clv"], [500.0, 160.0, 80.0, 0.0])
    np.testing.assert_allclose(
        purchase_frequency(frame, value_with(frequency="mean_gap")), [5.0, 1.0, 2.0, 0.0]
    )


def test_value_input_errors():
    with pytest.raises(ValueError, match=r"value: missing feature column\(s\) \['avg_order_value'"):
        customer_value(pd.DataFrame({"has_purchased": [1]}), np.array([0.1]), value_with())
    with pytest.raises(ValueError, match="1 feature rows but 2 p_churn values"):
        customer_value(value_frame([(1, 1.0, 1, NAN)]), np.array([0.1, 0.2]), value_with())
