"""Lifecycle segments: one per contact, from its features and ``params.segments``.

What each segment means and the action it calls for: docs/DOMAIN.md#lifecycle-segments.

The rules are evaluated in a fixed priority order and the first that holds wins, so each
contact gets exactly one segment; the last rule of each half is a catch-all, so none is
left out. Thresholds are keys of the ``segments`` section of params.yaml.

========  ==========  ===================================================================
order     segment     rule (first match wins)
========  ==========  ===================================================================
1         Waiting     cart added in the last ``waiting_cart_days`` days and no purchase
                      since (an abandoned cart)
2         New         known for less than ``new_max_tenure_days`` days
3         Lost        inactive for ``lost_inactive_days`` days or more
4         At risk     inactive for ``at_risk_inactive_days`` days or more
5         Hero        customer with ``revenue_365d >= hero_min_value`` and
                      ``purchases_90d >= hero_min_purchases_90d``
6         Repeat      customer with ``purchases_365d >= repeat_min_purchases_365d``
7         Occasional  any other customer
8         Lead        prospect with ``email_click_count_30d >= lead_min_clicks_30d`` or
                      ``cart_add_count_30d >= lead_min_cart_adds_30d``
9         Ghost       any other prospect
========  ==========  ===================================================================

*Inactive* counts days since the last action of the contact (``days_since_last_event``;
e-mails we sent do not count); a contact that never acted counts from its first sighting
(``tenure_days``). A missing value never satisfies a rule, so it falls through to the
catch-alls.

*Ghost* ("interacts, but anonymously"): the events carry no anonymous flag, so a Ghost
is a prospect that is still active (not At risk or Lost) but whose recent activity has
no identifying, intent-revealing action - no e-mail click and no cart add in 30 days,
only web visits, social interactions or e-mail opens (tracked by a pixel, often fired
automatically by mail clients). They are the prospects to identify first, e.g. with a
personalised pop-up on their next visit.

*Waiting* comes first because an abandoned cart is the most time-sensitive trigger; the
contact returns to its lasting segment (Hero, Lead, ...) once the window passes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from engage.config import SegmentsParams

WAITING, NEW, LOST, AT_RISK = "Waiting", "New", "Lost", "At risk"
HERO, REPEAT, OCCASIONAL, LEAD, GHOST = "Hero", "Repeat", "Occasional", "Lead", "Ghost"
# Priority order: the first rule that holds wins.
SEGMENTS: tuple[str, ...] = (WAITING, NEW, LOST, AT_RISK, HERO, REPEAT, OCCASIONAL, LEAD, GHOST)

REQUIRED = (
    "has_purchased",
    "tenure_days",
    "days_since_last_event",
    "days_since_last_purchase",
    "days_since_last_cart_add",
    "cart_add_count_30d",
    "email_click_count_30d",
    "purchases_90d",
    "purchases_365d",
    "revenue_365d",
)


def segment_rules(params: SegmentsParams) -> list[tuple[str, str]]:
    """Each segment with its rule in plain language, in priority order."""
    p = params
    return [
        (WAITING, f"cart added in the last {p.waiting_cart_days} days, no purchase since"),
        (NEW, f"known for less than {p.new_max_tenure_days} days"),
        (LOST, f"no action for {p.lost_inactive_days} days or more"),
        (AT_RISK, f"no action for {p.at_risk_inactive_days} days or more"),
        (
            HERO,
            f"customer, revenue over 365 days >= {p.hero_min_value:g} and "
            f">= {p.hero_min_purchases_90d} purchases in 90 days",
        ),
        (REPEAT, f"customer, >= {p.repeat_min_purchases_365d} purchases in 365 days"),
        (OCCASIONAL, "any other customer"),
        (
            LEAD,
            f"prospect, >= {p.lead_min_clicks_30d} e-mail click(s) or "
            f">= {p.lead_min_cart_adds_30d} cart add(s) in 30 days",
        ),
        (GHOST, "any other prospect (active, but no click or cart add in 30 days)"),
    ]


def normalise_segment(name: str) -> str:
    """The canonical segment name for ``name`` ("at-risk", "AT RISK" -> "At risk").

    Raises:
        ValueError: not a segment; the message lists the valid ones.

    """
    key = name.strip().lower().replace("-", " ").replace("_", " ")
    for s in SEGMENTS:
        if s.lower() == key:
            return s
    raise ValueError(f"unknown segment {name!r}: valid segments are {', '.join(SEGMENTS)}")


def _frame_column(features: pd.DataFrame) -> Callable[[str], np.ndarray]:
    missing = [c for c in REQUIRED if c not in features.columns]
    if missing:
        raise ValueError(f"segments: missing feature column(s) {missing}")
    return lambda name: features[name].to_numpy(dtype="float64", na_value=np.nan)


def segment_codes(col: Callable[[str], np.ndarray], params: SegmentsParams) -> np.ndarray:
    """The segment of each row as an index into :data:`SEGMENTS` (int8).

    Args:
        col: gives the float64 values (NaN = missing) of a column of :data:`REQUIRED`.
        params: ``segments`` section of params.yaml.

    """
    p = params
    customer = col("has_purchased") == 1.0
    last_event = col("days_since_last_event")
    inactive = np.where(np.isnan(last_event), col("tenure_days"), last_event)
    cart, bought = col("days_since_last_cart_add"), col("days_since_last_purchase")
    with np.errstate(invalid="ignore"):
        # NaN compares False everywhere, so a missing value never satisfies a rule.
        abandoned = (cart <= p.waiting_cart_days) & ~(bought <= cart)
        rules = [
            abandoned,
            col("tenure_days") < p.new_max_tenure_days,
            inactive >= p.lost_inactive_days,
            inactive >= p.at_risk_inactive_days,
            customer
            & (col("revenue_365d") >= p.hero_min_value)
            & (col("purchases_90d") >= p.hero_min_purchases_90d),
            customer & (col("purchases_365d") >= p.repeat_min_purchases_365d),
            customer,
            (col("email_click_count_30d") >= p.lead_min_clicks_30d)
            | (col("cart_add_count_30d") >= p.lead_min_cart_adds_30d),
        ]
    # argmax of the first True rule; the catch-all Ghost is the index after the last.
    stacked = np.column_stack([*rules, np.ones(len(customer), dtype=bool)])
    return stacked.argmax(axis=1).astype("int8")


def assign_segments(features: pd.DataFrame, params: SegmentsParams) -> pd.Categorical:
    """The lifecycle segment of each row of ``features`` (see the module docstring).

    Args:
        features: one row per contact with the columns in :data:`REQUIRED`.
        params: ``segments`` section of params.yaml.

    Returns:
        A categorical with the categories of :data:`SEGMENTS`, one value per row.

    Raises:
        ValueError: a required column is missing.

    """
    codes = segment_codes(_frame_column(features), params)
    return pd.Categorical.from_codes(codes, categories=list(SEGMENTS))
