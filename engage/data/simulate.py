"""Demo data simulator: contacts whose engagement rises, holds and falls, week by week.

``engage data simulate`` writes the two input tables of the pipeline (``events`` and
``customers``, see :mod:`engage.schema`) from a behavioural model rather than uniform
noise, so that the engagement index, the churn and appetence labels and the lifecycle
segments all have something real to find.

The behavioural model
---------------------
Every contact has a hidden (latent) **engagement** ``e`` on a logit-like scale:

* a personal level drawn once, ``N(0, 0.65)``, plus 0.4 for contacts who already bought;
* a weekly random walk with step ``simulate.engagement_drift_sd``, so interest wanders
  (an AR(1) with coefficient 0.97: pulled back towards the personal level by 3 % a week,
  so the base as a whole keeps its spread instead of widening year after year);
* +0.3 after a first purchase (the enthusiasm of a new customer);
* for a **decliner**, a linear fall of 2.5 over ``simulate.decline_weeks`` weeks, after
  which the contact **leaves**: no activity at all from then on (the marketer keeps
  mailing them; nobody opens).

Contacts are of three kinds at the start (``simulate.start``):

* **customers** (``simulate.initial_customer_share``) bought before the start; their
  ``first_seen`` is 1 month to 3 years earlier;
* **known prospects** (30 % of the others), first seen in the year before the start;
* **new prospects**, who sign up during the period (``first_seen`` uniform over it, with a
  web visit at that moment).

Every week each prospect may **convert** (a cart add then a first purchase) with
probability ``sigmoid(-6.1 + 1.1 e + 1.5 k)``, ``k`` = 1 if they put something in a cart
this week or last: a cart is intent. Customers then buy on a personal **repurchase
cycle** (log-normal, median 8 weeks): their purchase hazard is low just after a purchase,
peaks when the cycle comes round, settles lower once the habit lapses (so recency acts
non-monotonically, as in real repeat buying), and triples the week after an abandoned
cart. A share ``simulate.decline_share`` of customers starts declining at a random week
after the start (after their first purchase for converts), so the Exit stage is visible
in the events: opens, clicks, visits, carts and purchases thin out over the weeks before
the last activity, while support tickets become 4x more frequent.

Per week, given ``e``, the contact produces (Poisson counts unless stated):

============================  ===========================================================
event (channel)               rate per week / probability
============================  ===========================================================
email_sent (email)            one per weekly campaign on ``simulate.campaign_weekday``,
                              09:00 UTC, to 95 % of the contacts known by then
email_open (email)            ``sigmoid(-1.3 + 0.9 e + a_c)`` per e-mail, hours after
email_click (email)           ``sigmoid(-2.6 + 0.7 e + a_c)`` per open (``a_c`` is the
                              campaign's appeal), followed by a web visit
web_visit (web)               ``0.45 exp(0.8 e)``, x1.3 for customers; value = session
                              seconds, log-normal around ``90 exp(0.25 e)``
social_interaction (social)   ``0.08 exp(0.9 e)``
cart_add (web)                browsing ``0.065 exp(0.9 e)``, x1.5 for customers, never
                              checked out as such; plus the cart of each web purchase
purchase (web 80 %, store)    customers: hazard ``0.06 exp(0.6 e)`` x cycle factor x3
                              after an abandoned cart (at most one a week); value =
                              amount. Prospects: the conversion above
support_ticket (support)      0.008 for customers, 0.002 for prospects, x4 when declining
nps_response (email)          0.012 for customers, 0.003 for prospects; value = score
                              ``round(7.6 + 1.4 e + N(0, 1.3))`` clipped to 0-10
============================  ===========================================================

Amounts are log-normal (``simulate.amount_log_mean``, ``simulate.amount_log_sd``) times a
per-contact basket size. Shopping (visits, carts, purchases) follows a season: a peak
around Black Friday and before Christmas, a dip in early August; each event type has its
weekday profile (more visits on Sundays, tickets on weekdays) and an hour-of-day profile
(UTC). Events of a week are spread over its days with np.repeat, never per event.

With the defaults (20,000 contacts, 365 days) :func:`compute_rates` measures an e-mail
open rate near 25 %, a click-through rate near 3 %, click-to-open near 12 %, a conversion
of new prospects near 12 % over the year, cart abandonment near 71 % and a monthly churn
of active buyers near 3 % (definitions in :func:`compute_rates`), with about 95 events
per contact (40 % of them e-mails sent). Churn follows ``simulate.decline_share``: about
``decline_share / 12`` of the customers leave each month; the rest of the measured churn
is quiet months of buyers who stay.

Drift scenarios
---------------
``simulate.drift_kind`` changes behaviour from ``simulate.drift_start_day`` on, to show the
monitoring loop at work (``engage monitor``, ``engage retrain``):

* ``email_fatigue``: the log-odds of every open fall by ``simulate.drift_strength`` and
  those of a click (given the open) by half of it, for every contact;
* ``competitor``: each active customer may defect each week with hazard
  ``0.03 x drift_strength x sensitivity``, the sensitivity in (0, 2) higher for smaller
  baskets; a defector does nothing any more (the e-mails keep coming).

Both draw from their own random stream and only remove rows the run draws without drift
(thinning), so every event before the drift day, its id included, is the same with and
without the drift; with ``drift_kind: null`` the output is the one of before the scenarios
existed (tests/test_simulate_drift.py holds its checksums).

Implementation
--------------
Contacts are simulated in chunks of ``simulate.chunk_customers`` with
``np.random.default_rng([seed, chunk_index])``, so a seed always gives the same bytes
(as long as the period is over: events past the wall clock are dropped). Campaign appeals
come from a run-level stream, so every chunk sees the same campaigns. ``simulate.start``
is meant as a date (midnight UTC): days, and the hour profiles, count from it.
The latent state is a ``(contacts, weeks)`` matrix; counts are drawn for the whole matrix
at once, turned into rows with ``np.repeat`` and built into Arrow columns with ``take``
(no Python object per row). Each chunk is appended to the Parquet file as row groups, so
memory stays bounded by one chunk. The latent state never reaches the events table; the
returned :class:`SimulationSummary` carries a few latent aggregates for diagnostics.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engage.config import DataParams, SimulateParams
from engage.data.store import writing
from engage.faults import fault_point
from engage.schema import CUSTOMERS_SCHEMA, EVENTS_SCHEMA

_SECOND_US = 1_000_000
_HOUR_US = 3600 * _SECOND_US
_DAY_US = 24 * _HOUR_US
_WEEK_US = 7 * _DAY_US

# Codes of the event types and channels in the generated arrays; names are attached once
# per chunk with take().
EVENT_TYPES = (
    "email_sent",
    "email_open",
    "email_click",
    "web_visit",
    "cart_add",
    "purchase",
    "social_interaction",
    "support_ticket",
    "nps_response",
)
(SENT, OPEN, CLICK, VISIT, CART, PURCHASE, SOCIAL, TICKET, NPS) = range(len(EVENT_TYPES))
CHANNELS = ("email", "web", "social", "store", "support")
(CH_EMAIL, CH_WEB, CH_SOCIAL, CH_STORE, CH_SUPPORT) = range(len(CHANNELS))
_NO_CAMPAIGN = -1
RATE_NAMES = (
    "open_rate",
    "ctr",
    "click_to_open",
    "conversion_rate",
    "monthly_churn",
    "cart_abandonment",
)

# --- Behavioural constants (see the module docstring for the model) -------------------
_BASE_SD = 0.65  # spread of the personal engagement level
_REVERSION = 0.97  # weekly AR(1) coefficient of the drift: half-life ~ 23 weeks
_CUSTOMER_LIFT = 0.4  # existing customers are more engaged on average
_KNOWN_PROSPECT_SHARE = 0.3  # prospects already in the base at the start
_NEW_CUSTOMER_BOOST = 0.3
_DECLINE_DEPTH = 2.5  # engagement lost over a decline: activity falls ~7x by the end
_DECLINE_AFTER_CONVERSION_WEEKS = 4  # a new customer does not start declining at once
_CONV = (-6.1, 1.1)  # weekly conversion logit: intercept, slope on e

_SEND_SHARE = 0.95  # a campaign targets most, not all, of the base
_SEND_HOUR = 9
_SEND_SPREAD_US = 30 * 60 * _SECOND_US  # a campaign leaves the ESP over half an hour
_CAMPAIGN_APPEAL_SD = 0.25
_CAMPAIGN_STREAM = 2**40
_OPEN = (-1.3, 0.9)
_CLICK = (-2.6, 0.7)
_OPEN_DELAY_MEAN_US = 6 * _HOUR_US
_CLICK_DELAY_MEAN_US = 3 * 60 * _SECOND_US

_VISIT = (0.45, 0.8, 1.3)  # base rate per week, slope on e, customer multiplier
_SOCIAL = (0.08, 0.9)
_CART = (0.065, 0.9, 1.5)  # browsing carts: base rate, slope on e, customer multiplier
_CONV_CART = 1.5  # log-odds added to conversion in a week with a cart (this or last week)
_BUY = (0.06, 0.6)  # a customer's weekly purchase hazard: base, slope on e
_CYCLE_MEDIAN_WEEKS, _CYCLE_SD = 8.0, 0.4  # personal repurchase cycle (log-normal)
_RECOVERY = 2.0  # hazard x3 the week after an abandoned cart
_STORE_SHARE = 0.2  # purchases made in a shop, without a web cart
_BURN_IN_WEEKS = 52
_SESSION_MEDIAN_S, _SESSION_SLOPE, _SESSION_SD = 90.0, 0.25, 0.9
_BASKET_SD = 0.25
_TICKET = (0.008, 0.002, 4.0)  # customer rate, prospect rate, multiplier while declining
_NPS_RATE = (0.012, 0.003)
_NPS_SCORE = (7.6, 1.4, 1.3)  # mean, slope on e, noise sd
# Drift scenarios (simulate.drift_kind). Their random draws come from a stream of their
# own, and they only remove rows drawn as without drift, so every event before the drift
# starts is the same with and without it (and no drift gives the same bytes as before).
_DRIFT_STREAM = 2**41
_COMPETITOR_RATE = 0.03  # weekly defection hazard of an average customer, x drift_strength

# Relative activity per weekday, Monday first.
_WEEKDAY = {
    "web": np.array([1.05, 1.0, 1.0, 1.0, 0.9, 0.85, 1.2]),
    "shop": np.array([0.9, 0.9, 0.95, 1.0, 1.05, 1.15, 1.2]),
    "social": np.array([0.9, 0.9, 0.9, 0.95, 1.0, 1.25, 1.3]),
    "office": np.array([1.25, 1.2, 1.15, 1.1, 1.0, 0.35, 0.25]),
}
# Relative activity per hour of the day (UTC): a lunch bump and an evening peak.
_HOURLY = {
    "day": np.array(
        [0.2, 0.1, 0.08, 0.06, 0.06, 0.1, 0.3, 0.6, 0.9, 1.0, 1.0, 1.1]
        + [1.3, 1.2, 1.0, 1.0, 1.0, 1.1, 1.3, 1.5, 1.6, 1.5, 1.0, 0.5]
    ),
    "office": np.array(
        [0.02] * 7 + [0.5, 1.0, 1.2, 1.2, 1.1, 0.9, 1.1, 1.1, 1.0, 0.8, 0.5] + [0.1] * 6
    ),
}


@dataclass(frozen=True)
class SimulationSummary:
    """What :func:`simulate_to_parquet` wrote.

    Attributes:
        customers: contacts written.
        events: events written.
        seconds: wall time of the generation and writing (without computing ``rates``).
        events_path: the events Parquet file.
        customers_path: the customers Parquet file.
        rates: behavioural rates measured on the written events, see
            :func:`compute_rates`.
        latent: diagnostics from the hidden state, never in the tables: ``prospects``,
            ``converted`` (prospects whose first purchase fell in the period),
            ``decliners`` (customers who started declining), ``left`` (who stopped all
            activity before the end).

    """

    customers: int
    events: int
    seconds: float
    events_path: Path
    customers_path: Path
    rates: dict[str, float]
    latent: dict[str, int] = field(default_factory=dict)


@dataclass
class _Chunk:
    """Columns of one chunk before they become Arrow tables (rows sorted)."""

    customer: np.ndarray  # index of the contact inside the chunk
    time_us: np.ndarray
    etype: np.ndarray
    value: np.ndarray  # NaN = null
    channel: np.ndarray
    campaign: np.ndarray  # index into campaign_ids, -1 = null
    campaign_ids: list[str]
    first_seen_us: np.ndarray
    latent: dict[str, int]
    # Position of each row among the rows drawn without drift, and their number: event
    # ids count those, so a drift removes rows without renumbering the others.
    ordinal: np.ndarray
    drawn: int


@dataclass
class _Parts:
    """Accumulates the rows of each event kind before one concatenation."""

    cols: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {k: [] for k in ("c", "t", "e", "v", "ch", "cp", "k")}
    )

    def add(self, c, t, etype, channel, value=None, campaign=None, keep=None) -> None:
        """Rows of one event kind; ``keep`` False marks a row a drift removes."""
        n = len(c)
        self.cols["k"].append(np.ones(n, dtype=bool) if keep is None else keep)
        self.cols["c"].append(np.asarray(c, dtype=np.int64))
        self.cols["t"].append(np.asarray(t, dtype=np.int64))
        self.cols["e"].append(np.full(n, etype, dtype=np.int8))
        self.cols["ch"].append(np.full(n, channel, dtype=np.int8))
        self.cols["v"].append(np.full(n, np.nan) if value is None else value.astype(np.float64))
        cp = np.full(n, _NO_CAMPAIGN, np.int32) if campaign is None else campaign
        self.cols["cp"].append(cp.astype(np.int32))

    def concat(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.cols.items()}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _start_us(sim: SimulateParams) -> int:
    # datetime rather than pd.Timestamp: nanoseconds overflow after 2262.
    start = dt.datetime.fromisoformat(sim.start)
    start = start.replace(tzinfo=dt.UTC) if start.tzinfo is None else start
    return (start - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def _horizon_us(start_us: int, days: int) -> int:
    """End of the period, capped at the wall clock so that no event lies in the future."""
    now_us = time.time_ns() // 1000
    horizon = min(start_us + days * _DAY_US, now_us)
    if horizon <= start_us:
        raise ValueError("simulate.start is in the future: no event could be generated")
    return horizon


def _day_cdf(weekday_weights: np.ndarray, start_weekday: int, days: int, n_weeks: int):
    """Cumulative weights to pick a day inside each simulated week.

    Returns ``(cdf, week_share)``. ``cdf`` is flat, one entry per day since the start,
    and equals ``week + cumulative share`` so that ``searchsorted(cdf, week + u)`` is
    directly the day index. ``week_share`` scales the rate of a week cut by the end of
    the period.
    """
    offsets = np.arange(7)
    w_off = weekday_weights[(start_weekday + offsets) % 7]
    weeks = np.arange(n_weeks)
    valid = weeks[:, None] * 7 + offsets[None, :] < days
    wm = w_off[None, :] * valid
    total = wm.sum(axis=1)
    cum = np.cumsum(wm, axis=1) / total[:, None]
    # Exactly 1.0 from the last valid day on, so a draw never lands on a cut day.
    last_valid = valid.sum(axis=1) - 1
    cum[offsets[None, :] >= last_valid[:, None]] = 1.0
    return (weeks[:, None] + cum).ravel(), total / w_off.sum()


def _hour_cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weights) / weights.sum()
    cdf[-1] = 1.0
    return cdf


def _times(rng, week, day_cdf, hour_cdf, start_us) -> np.ndarray:
    """Event times for rows of the given weeks, per the day and hour profiles."""
    day = np.searchsorted(day_cdf, week + rng.random(len(week)), side="right")
    hour = np.searchsorted(hour_cdf, rng.random(len(week)), side="right")
    return start_us + day * _DAY_US + hour * _HOUR_US + rng.integers(0, _HOUR_US, len(week))


def _rows(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(contact, week) of every event, given a (contacts, weeks) matrix of counts."""
    flat = counts.ravel()
    cells = np.flatnonzero(flat)
    cells = np.repeat(cells, flat[cells])
    return cells // counts.shape[1], cells % counts.shape[1]


def _poisson_rows(rng, rate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(contact, week) of every event when each cell has a Poisson count of them."""
    return _rows(rng.poisson(rate))


def _cycle_factor(weeks_since: np.ndarray, cycle: np.ndarray) -> np.ndarray:
    """Purchase hazard multiplier by weeks since the last purchase.

    Low just after a purchase (the need is met), a peak when the personal cycle comes
    round (replenishment, habit), then a lower plateau once the habit has lapsed. Not
    monotone in recency, as real repeat buying is.
    """
    x = weeks_since / cycle
    return 0.1 + 2.0 * np.exp(-0.5 * ((x - 1.0) / 0.3) ** 2) + 0.5 * _sigmoid((x - 1.0) / 0.15)


def _session_seconds(rng, e: np.ndarray) -> np.ndarray:
    mu = np.log(_SESSION_MEDIAN_S) + _SESSION_SLOPE * e
    return np.clip(np.round(rng.lognormal(mu, _SESSION_SD)), 5, 4 * 3600)


def _order_by_contact_time(contact: np.ndarray, offset_us: np.ndarray, n: int) -> np.ndarray:
    """Permutation sorting rows by (contact, time).

    One argsort of a packed 63-bit key is ~3x faster than np.lexsort on two keys; the
    fallback is for periods too long to pack (over ~4 years with 50,000 contacts).
    """
    shift = int(offset_us.max(initial=0)).bit_length()
    if shift + max(n - 1, 1).bit_length() > 63:
        return np.lexsort((offset_us, contact))
    return np.argsort((contact << shift) | offset_us, kind="stable")


def _email_fatigue(sim, drift_rng, e_c, appeal, after, opened, clicked):
    """Which opens and clicks survive the e-mail fatigue drift, or None without it.

    From the drift on, an open's log-odds fall by ``drift_strength`` and a click's (given
    the open) by half of it. Lowering a probability from p to p' is done by keeping each
    open drawn without drift with probability p' / p (thinning), so the main random stream
    draws exactly what it draws without drift. Returns ``(opens kept, clicks kept)``,
    both (contacts x campaigns) boolean matrices.
    """
    if sim.drift_kind != "email_fatigue":
        return None
    logit_open = _OPEN[0] + _OPEN[1] * e_c + appeal
    logit_click = _CLICK[0] + _CLICK[1] * e_c + appeal
    s = sim.drift_strength
    keep_open = np.where(after[None, :], _sigmoid(logit_open - s) / _sigmoid(logit_open), 1.0)
    keep_click = np.where(
        after[None, :], _sigmoid(logit_click - s / 2) / _sigmoid(logit_click), 1.0
    )
    opens = opened & (drift_rng.random(e_c.shape) < keep_open)
    clicks = clicked & opens & (drift_rng.random(e_c.shape) < keep_click)
    return opens, clicks


def _defections(sim, drift_rng, basket, buyer, week_start_us, drift_us) -> np.ndarray:
    """When each contact defects to the competitor (epoch µs; int64 max = never).

    From the drift on, every active customer may leave each week with hazard
    ``_COMPETITOR_RATE * drift_strength * sensitivity``; the sensitivity, in (0, 2) with
    mean ~1, is higher for smaller baskets (price-sensitive buyers), a trait the events show
    only through the amounts spent, so the churn model has to learn it.
    """
    n, n_weeks = buyer.shape
    sensitivity = 2.0 * _sigmoid(-2.0 * basket / _BASKET_SD)
    hazard = _COMPETITOR_RATE * sim.drift_strength * sensitivity
    week_end = week_start_us + _WEEK_US
    at_risk = buyer & (week_end > drift_us)[None, :]
    leaves = at_risk & (drift_rng.random((n, n_weeks)) < -np.expm1(-hazard)[:, None])
    out = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    who = np.flatnonzero(leaves.any(axis=1))
    week = leaves[who].argmax(axis=1)
    lo = np.maximum(week_start_us[week], drift_us)
    out[who] = lo + (drift_rng.random(len(who)) * (week_end[week] - lo)).astype(np.int64)
    return out


def _generate(sim: SimulateParams, chunk_index: int, n: int, days: int, seed: int) -> _Chunk:
    """Simulate ``n`` contacts; see the module docstring for the model."""
    rng = np.random.default_rng([seed, chunk_index])
    start_us = _start_us(sim)
    horizon_us = _horizon_us(start_us, days)
    start_weekday = int((start_us // _DAY_US + 3) % 7)  # 1970-01-01 was a Thursday
    n_weeks = -(-days // 7)
    weeks = np.arange(n_weeks)
    week_start_us = start_us + weeks * _WEEK_US
    never = np.int64(10 * n_weeks)  # a week index that no comparison reaches
    drift_us = start_us + sim.drift_start_day * _DAY_US
    drift_rng = np.random.default_rng([seed, _DRIFT_STREAM, chunk_index])

    # --- who is who ---------------------------------------------------------------
    is_customer0 = rng.random(n) < sim.initial_customer_share
    known = rng.random(n) < _KNOWN_PROSPECT_SHARE
    before_customer = rng.uniform(30, 3 * 365, n) * _DAY_US
    before_prospect = rng.uniform(1, 365, n) * _DAY_US
    arrival = rng.random(n) * (horizon_us - start_us)
    offset = np.where(is_customer0, -before_customer, np.where(known, -before_prospect, arrival))
    # Whole seconds: first_seen is a sign-up time, not a measurement.
    first_seen_us = start_us + (offset // _SECOND_US).astype(np.int64) * _SECOND_US
    arrives_in_period = first_seen_us >= start_us
    arrival_week = np.clip((first_seen_us - start_us) // _WEEK_US, 0, n_weeks - 1)
    seen = weeks[None, :] >= arrival_week[:, None]

    # --- season and calendar profiles ------------------------------------------------
    mid_week = pd.to_datetime(week_start_us + _WEEK_US // 2, unit="us")
    doy = mid_week.dayofyear.to_numpy().astype(np.float64)

    def bump(centre: float, width: float) -> np.ndarray:
        return np.exp(-0.5 * ((doy - centre) / width) ** 2)

    # Black Friday (late November), the run-up to Christmas, the August holidays.
    shop_season = 1.0 + 0.8 * bump(332, 8) + 0.7 * bump(352, 8) - 0.15 * bump(218, 18)
    web_season = np.sqrt(shop_season)
    cdf = {k: _day_cdf(w, start_weekday, days, n_weeks) for k, w in _WEEKDAY.items()}
    day_hours, office_hours = _hour_cdf(_HOURLY["day"]), _hour_cdf(_HOURLY["office"])
    shop = shop_season * cdf["shop"][1]  # weekly shopping weight, cut weeks scaled down

    # --- latent engagement, conversion, decline -------------------------------------
    base = rng.normal(0.0, _BASE_SD, n) + _CUSTOMER_LIFT * is_customer0
    # A slightly mean-reverting walk: a pure one would widen the spread every week and
    # make the whole base look more (and less) engaged at the end than at the start.
    # Started from its stationary spread, so week 0 looks like any other week.
    steps = rng.normal(0.0, sim.engagement_drift_sd, (n_weeks, n))
    steps[0] /= np.sqrt(1.0 - _REVERSION**2)
    for w in range(1, n_weeks):
        steps[w] += _REVERSION * steps[w - 1]
    e = np.ascontiguousarray(base[:, None] + steps.T)

    # A prospect's carts are intent: a week with one (or the week after) converts more.
    prospect_carts = rng.poisson(_CART[0] * np.exp(_CART[1] * e) * shop[None, :] * seen)
    intent = prospect_carts > 0
    intent[:, 1:] |= intent[:, :-1]
    p_conv = _sigmoid(_CONV[0] + _CONV[1] * e + _CONV_CART * intent)
    converts = (rng.random((n, n_weeks)) < p_conv) & seen & ~is_customer0[:, None]
    conv_week = np.where(converts.any(axis=1), converts.argmax(axis=1), never)
    # The first purchase needs room inside its week (after sign-up, before the horizon).
    lo = np.maximum(week_start_us[np.minimum(conv_week, n_weeks - 1)], first_seen_us)
    hi = np.minimum(week_start_us[np.minimum(conv_week, n_weeks - 1)] + _WEEK_US, horizon_us)
    conv_week = np.where((conv_week < n_weeks) & (hi > lo + _HOUR_US), conv_week, never)
    converted = conv_week < n_weeks

    is_customer = is_customer0[:, None] | (weeks[None, :] > conv_week[:, None])
    decliner = rng.random(n) < sim.decline_share
    draw = rng.integers(0, n_weeks, n)
    decline_start = np.where(is_customer0, draw, conv_week + _DECLINE_AFTER_CONVERSION_WEEKS + draw)
    decline_start = np.where(decliner & (is_customer0 | converted), decline_start, never)
    leave_week = decline_start + sim.decline_weeks
    since = (weeks[None, :] - decline_start[:, None]) / sim.decline_weeks
    decline = np.clip(since, 0.0, 1.0)
    declining = (since >= 0) & (since < 1)
    e = e + _NEW_CUSTOMER_BOOST * (weeks[None, :] > conv_week[:, None]) - _DECLINE_DEPTH * decline
    alive = seen & (weeks[None, :] < leave_week[:, None])
    alive_f = alive.astype(np.float64)
    cust_f = is_customer.astype(np.float64)
    buyer = is_customer & alive

    # --- carts and the repurchase cycle -----------------------------------------------
    customer_carts = rng.poisson(_CART[0] * _CART[2] * np.exp(_CART[1] * e) * shop[None, :] * buyer)
    carts = np.where(is_customer, customer_carts, prospect_carts)
    # Weeks since the last purchase drive a customer's hazard (see _cycle_factor); it is a
    # state carried from week to week, hence the loop over weeks (vectorised over contacts).
    cycle = rng.lognormal(np.log(_CYCLE_MEDIAN_WEEKS), _CYCLE_SD, n)
    hazard = _BUY[0] * np.exp(_BUY[1] * e) * shop[None, :] * buyer
    # Existing customers bought before the start too: run their cycle through a burn-in
    # (no events) so that the first weeks are not a wave of synchronised repurchases.
    weeks_since = rng.uniform(0.0, 1.0, n) * cycle
    warm = _BUY[0] * np.exp(_BUY[1] * e[:, 0])
    for u_w in rng.random((_BURN_IN_WEEKS, n)):
        bought = u_w < -np.expm1(-warm * _cycle_factor(weeks_since, cycle))
        weeks_since = np.where(bought, 0.0, weeks_since + 1.0)
    weeks_since = np.where(is_customer0, weeks_since, 0.0)
    u = rng.random((n_weeks, n))
    buys = np.zeros((n_weeks, n), dtype=bool)
    abandoned = np.zeros(n, dtype=bool)
    for w in range(n_weeks):
        h = hazard[:, w] * _cycle_factor(weeks_since, cycle) * (1.0 + _RECOVERY * abandoned)
        buys[w] = u[w] < -np.expm1(-h)
        weeks_since = np.where(buys[w] | (conv_week == w), 0.0, weeks_since + 1.0)
        abandoned = (carts[:, w] > 0) & ~buys[w]
    parts = _Parts()
    basket = rng.normal(0.0, _BASKET_SD, n)

    def amounts(cust: np.ndarray) -> np.ndarray:
        mu = sim.amount_log_mean + basket[cust]
        return np.round(rng.lognormal(mu, sim.amount_log_sd), 2)

    day_cdf = cdf["shop"][0]
    c, w = _rows(carts)
    parts.add(c, _times(rng, w, day_cdf, day_hours, start_us), CART, CH_WEB)
    w, c = np.nonzero(buys)
    t_buy = _times(rng, w, day_cdf, day_hours, start_us)
    in_store = rng.random(len(c)) < _STORE_SHARE
    parts.add(c[in_store], t_buy[in_store], PURCHASE, CH_STORE, value=amounts(c[in_store]))
    c, t_buy = c[~in_store], t_buy[~in_store]
    # An online purchase is a cart checked out minutes later.
    parts.add(c, t_buy - rng.integers(2 * 60 * _SECOND_US, _HOUR_US, len(c)), CART, CH_WEB)
    parts.add(c, t_buy, PURCHASE, CH_WEB, value=amounts(c))

    # Conversion: a cart then the first purchase, somewhere inside the converting week.
    c = np.flatnonzero(converted)
    wk = conv_week[c]
    lo = np.maximum(week_start_us[wk], first_seen_us[c])
    hi = np.minimum(week_start_us[wk] + _WEEK_US, horizon_us)
    t_first = lo + _HOUR_US + (rng.random(len(c)) * (hi - lo - _HOUR_US)).astype(np.int64)
    t_cart = t_first - rng.integers(5 * 60 * _SECOND_US, _HOUR_US, len(c))
    parts.add(c, t_cart, CART, CH_WEB)
    parts.add(c, t_first, PURCHASE, CH_WEB, value=amounts(c))

    # --- weekly e-mail campaigns -----------------------------------------------------
    first_day = (sim.campaign_weekday - start_weekday) % 7
    campaign_day = np.arange(first_day, days, 7)
    send_us = start_us + campaign_day * _DAY_US + _SEND_HOUR * _HOUR_US
    campaign_week = campaign_day // 7
    # A Python string per campaign (one a week), never per row.
    campaign_ids = [f"CMP-{d:%Y%m%d}" for d in pd.to_datetime(send_us, unit="us")]
    # A campaign's appeal is the same for every contact, so it comes from a stream of the
    # run, not of the chunk (a key no chunk index reaches).
    campaign_rng = np.random.default_rng([seed, _CAMPAIGN_STREAM])
    appeal = campaign_rng.normal(0.0, _CAMPAIGN_APPEAL_SD, len(send_us))
    e_c = e[:, campaign_week]
    sent = (first_seen_us[:, None] <= send_us[None, :]) & (rng.random(e_c.shape) < _SEND_SHARE)
    p_open = _sigmoid(_OPEN[0] + _OPEN[1] * e_c + appeal) * alive[:, campaign_week]
    opened = sent & (rng.random(e_c.shape) < p_open)
    clicked = opened & (rng.random(e_c.shape) < _sigmoid(_CLICK[0] + _CLICK[1] * e_c + appeal))
    # None: every open and click is kept (no e-mail drift).
    fatigue = _email_fatigue(sim, drift_rng, e_c, appeal, send_us >= drift_us, opened, clicked)

    c, k = np.nonzero(sent)
    t_sent = send_us[k] + rng.integers(0, _SEND_SPREAD_US, len(c))
    parts.add(c, t_sent, SENT, CH_EMAIL, campaign=k)
    # Opens and clicks follow their own send time; index the sends of the opened cells.
    sent_rank = np.cumsum(sent.ravel()) - 1
    o_cells = np.flatnonzero(opened.ravel())
    c, k = np.divmod(o_cells, len(send_us))
    t_open = t_sent[sent_rank[o_cells]] + rng.exponential(_OPEN_DELAY_MEAN_US, len(c)).astype(
        np.int64
    )
    is_click = clicked.ravel()[o_cells]
    kept_open = kept_click = None
    if fatigue is not None:
        kept_open = fatigue[0].ravel()[o_cells]
        kept_click = fatigue[1].ravel()[o_cells][is_click]
    parts.add(c, t_open, OPEN, CH_EMAIL, campaign=k, keep=kept_open)
    c, k = c[is_click], k[is_click]
    t_click = (
        t_open[is_click]
        + 5 * _SECOND_US
        + rng.exponential(_CLICK_DELAY_MEAN_US, len(c)).astype(np.int64)
    )
    # The click lands on the site: a visit attributed to the campaign.
    t_visit = t_click + rng.integers(2 * _SECOND_US, 20 * _SECOND_US, len(c))
    dur = _session_seconds(rng, e_c[c, k])
    parts.add(c, t_click, CLICK, CH_EMAIL, campaign=k, keep=kept_click)
    parts.add(c, t_visit, VISIT, CH_WEB, value=dur, campaign=k, keep=kept_click)

    # --- web and social ---------------------------------------------------
    day_cdf, share = cdf["web"]
    rate = (
        _VISIT[0]
        * np.exp(_VISIT[1] * e)
        * (1.0 + (_VISIT[2] - 1.0) * cust_f)
        * (web_season * share)[None, :]
        * alive_f
    )
    c, w = _poisson_rows(rng, rate)
    t = _times(rng, w, day_cdf, day_hours, start_us)
    parts.add(c, t, VISIT, CH_WEB, value=_session_seconds(rng, e[c, w]))
    # Sign-up visit of the new prospects: what makes first_seen observable.
    c = np.flatnonzero(arrives_in_period)
    parts.add(c, first_seen_us[c], VISIT, CH_WEB, value=_session_seconds(rng, base[c]))

    day_cdf, share = cdf["social"]
    rate = _SOCIAL[0] * np.exp(_SOCIAL[1] * e) * (share[None, :] * alive_f)
    c, w = _poisson_rows(rng, rate)
    parts.add(c, _times(rng, w, day_cdf, day_hours, start_us), SOCIAL, CH_SOCIAL)

    # --- support and NPS ---------------------------------------------------------------
    day_cdf, share = cdf["office"]
    rate = (
        (_TICKET[1] + (_TICKET[0] - _TICKET[1]) * cust_f)
        * (1.0 + (_TICKET[2] - 1.0) * declining)
        * (share[None, :] * alive_f)
    )
    c, w = _poisson_rows(rng, rate)
    parts.add(c, _times(rng, w, day_cdf, office_hours, start_us), TICKET, CH_SUPPORT)

    day_cdf, share = cdf["web"]
    rate = (_NPS_RATE[1] + (_NPS_RATE[0] - _NPS_RATE[1]) * cust_f) * (share[None, :] * alive_f)
    c, w = _poisson_rows(rng, rate)
    mean, slope, noise = _NPS_SCORE
    score = np.clip(np.round(mean + slope * e[c, w] + rng.normal(0.0, noise, len(c))), 0, 10)
    parts.add(c, _times(rng, w, day_cdf, day_hours, start_us), NPS, CH_EMAIL, value=score)

    # --- keep what fits the period, sort by contact then time -------------------------------
    cols = parts.concat()
    keep = (cols["t"] >= np.maximum(first_seen_us[cols["c"]], start_us)) & (cols["t"] < horizon_us)
    defect_us = None
    if sim.drift_kind == "competitor":
        defect_us = _defections(sim, drift_rng, basket, buyer, week_start_us, drift_us)
        # A defector does nothing any more; the marketer keeps mailing them.
        cols["k"] &= (cols["t"] < defect_us[cols["c"]]) | (cols["e"] == SENT)
    cols = {k: v[keep] for k, v in cols.items()}
    order = _order_by_contact_time(cols["c"], cols["t"] - start_us, n)
    cols = {k: v[order] for k, v in cols.items()}
    kept = cols.pop("k")
    drawn = len(kept)
    ordinal = np.flatnonzero(kept)
    if len(ordinal) < drawn:
        cols = {k: v[kept] for k, v in cols.items()}

    leave_time = start_us + leave_week * _WEEK_US
    latent = {
        "prospects": int((~is_customer0).sum()),
        "converted": int(converted.sum()),
        "decliners": int((decline_start < n_weeks).sum()),
        "left": int((leave_time < horizon_us).sum()),
    }
    if defect_us is not None:
        latent["defected"] = int((defect_us < horizon_us).sum())
    return _Chunk(
        customer=cols["c"],
        time_us=cols["t"],
        etype=cols["e"],
        value=cols["v"],
        channel=cols["ch"],
        campaign=cols["cp"],
        campaign_ids=campaign_ids,
        first_seen_us=first_seen_us,
        latent=latent,
        ordinal=ordinal,
        drawn=drawn,
    )


def _customer_ids(first_customer: int, n: int) -> pa.Array:
    """``C0000001``-style ids (1-based, at least 7 digits), built without Python strings."""
    numbers = pa.array(np.arange(first_customer + 1, first_customer + n + 1, dtype=np.int64))
    digits = pc.utf8_lpad(pc.cast(numbers, pa.string()), width=7, padding="0")
    return pc.binary_join_element_wise("C", digits, "")


def _nullable_take(values: pa.Array, codes: np.ndarray, null_code: int = -1) -> pa.Array:
    return values.take(pa.array(codes, mask=codes == null_code))


def _to_tables(
    chunk: _Chunk, first_customer: int, event_id_offset: int
) -> tuple[pa.Table, pa.Table]:
    ids = _customer_ids(first_customer, len(chunk.first_seen_us))
    event_ids = pc.cast(pa.array(event_id_offset + 1 + chunk.ordinal.astype(np.int64)), pa.string())
    events = pa.Table.from_arrays(
        [
            event_ids,
            ids.take(pa.array(chunk.customer)),
            pa.array(chunk.time_us, type=EVENTS_SCHEMA.field("event_time").type),
            pa.array(EVENT_TYPES).take(pa.array(chunk.etype)),
            pa.array(chunk.value, mask=np.isnan(chunk.value)),
            _nullable_take(pa.array(CHANNELS), chunk.channel),
            _nullable_take(pa.array(chunk.campaign_ids, pa.string()), chunk.campaign, _NO_CAMPAIGN),
        ],
        schema=EVENTS_SCHEMA,
    )
    customers = pa.Table.from_arrays(
        [ids, pa.array(chunk.first_seen_us, type=CUSTOMERS_SCHEMA.field("first_seen").type)],
        schema=CUSTOMERS_SCHEMA,
    )
    return events, customers


def _check_vocabulary(data: DataParams) -> None:
    missing = sorted(set(EVENT_TYPES) - set(data.event_types))
    if missing:
        raise ValueError(f"data.event_types lacks the simulated types {missing}")


def simulate_chunk(
    sim: SimulateParams,
    data: DataParams,
    chunk_index: int,
    first_customer: int,
    n_customers: int,
    days: int,
    seed: int,
    event_id_offset: int,
) -> tuple[pa.Table, pa.Table]:
    """Simulate one chunk of contacts.

    Args:
        sim: the ``simulate`` parameters (start date, shares, drift, amounts).
        data: the ``data`` parameters; every simulated event type must be in
            ``data.event_types``.
        chunk_index: seeds the chunk's generator with ``[seed, chunk_index]``.
        first_customer: number of contacts in the previous chunks; this chunk's ids
            start at ``C{first_customer + 1:07d}``.
        n_customers: contacts in this chunk.
        days: length of the period from ``sim.start``.
        seed: the run's seed.
        event_id_offset: events in the previous chunks; ids are ``offset + 1`` onwards.

    Returns:
        ``(events, customers)`` with :data:`~engage.schema.EVENTS_SCHEMA` and
        :data:`~engage.schema.CUSTOMERS_SCHEMA`; events sorted by contact then time. With
        a drift scenario, event ids keep the numbers they have without it (gaps where the
        drift removed a row), so the next chunk's offset is the count without drift.

    Raises:
        ValueError: a simulated event type is not in ``data.event_types``, or the
            period starts in the future.

    """
    _check_vocabulary(data)
    chunk = _generate(sim, chunk_index, n_customers, days, seed)
    return _to_tables(chunk, first_customer, event_id_offset)


def _resolve(sim: SimulateParams, customers, days, seed) -> tuple[int, int, int]:
    customers = sim.customers if customers is None else int(customers)
    days = sim.days if days is None else int(days)
    seed = sim.seed if seed is None else int(seed)
    if customers <= 0 or days <= 0:
        raise ValueError("customers and days must be positive")
    return customers, days, seed


def _chunks(total: int, size: int):
    for index, first in enumerate(range(0, total, size)):
        yield index, first, min(size, total - first)


def simulate_tables(
    sim: SimulateParams,
    data: DataParams,
    *,
    customers: int | None = None,
    days: int | None = None,
    seed: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate in memory (tests, notebooks, small data).

    Args:
        sim: the ``simulate`` parameters.
        data: the ``data`` parameters.
        customers: number of contacts; defaults to ``sim.customers``.
        days: length of the period; defaults to ``sim.days``.
        seed: defaults to ``sim.seed``.

    Returns:
        ``(events, customers)`` DataFrames with the columns of the schemas; the same
        arguments always give identical frames.

    """
    customers, days, seed = _resolve(sim, customers, days, seed)
    _check_vocabulary(data)
    events, contacts, offset = [], [], 0
    for index, first, n in _chunks(customers, sim.chunk_customers):
        chunk = _generate(sim, index, n, days, seed)
        ev, cu = _to_tables(chunk, first, offset)
        offset += chunk.drawn
        events.append(ev)
        contacts.append(cu)
    return pa.concat_tables(events).to_pandas(), pa.concat_tables(contacts).to_pandas()


def simulate_to_parquet(
    sim: SimulateParams,
    data: DataParams,
    events_path: Path,
    customers_path: Path,
    *,
    customers: int | None = None,
    days: int | None = None,
    seed: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> SimulationSummary:
    """Simulate chunk by chunk straight into two Parquet files.

    Memory is bounded by one chunk (``sim.chunk_customers`` contacts): each is appended
    to the files as row groups. Both files are written under temporary names and
    committed together under the event store's lock (:mod:`engage.data.store`), so a
    crash never leaves a half-written table nor events without their customers.

    Args:
        sim: the ``simulate`` parameters.
        data: the ``data`` parameters.
        events_path: destination of the events (parent folders are created).
        customers_path: destination of the customers.
        customers: number of contacts; defaults to ``sim.customers``.
        days: length of the period; defaults to ``sim.days``.
        seed: defaults to ``sim.seed``.
        progress: called after each chunk with the number of contacts it held.

    Returns:
        Counts, timing, the rates measured on the written events and latent diagnostics.

    """
    customers, days, seed = _resolve(sim, customers, days, seed)
    _check_vocabulary(data)
    events_path, customers_path = Path(events_path), Path(customers_path)
    began = time.perf_counter()
    n_events, n_drawn, latent = 0, 0, {}
    # Sequential ids and compressible repeats: dictionary-encode only the low-cardinality
    # columns, the others would overflow the dictionary page anyway.
    options = {"compression": "zstd", "write_statistics": True}
    dict_cols = ["customer_id", "event_type", "channel", "campaign_id"]
    # Under the event store's lock, staged and committed together (engage.data.store).
    with writing(events_path, timeout=data.lock_timeout_s, others=(customers_path,)) as write:
        tmp_events, tmp_customers = write.stage(events_path), write.stage(customers_path)
        with (
            pq.ParquetWriter(
                tmp_events, EVENTS_SCHEMA, use_dictionary=dict_cols, **options
            ) as ev_writer,
            pq.ParquetWriter(tmp_customers, CUSTOMERS_SCHEMA, **options) as cu_writer,
        ):
            for index, first, n in _chunks(customers, sim.chunk_customers):
                chunk = _generate(sim, index, n, days, seed)
                for key, count in chunk.latent.items():
                    latent[key] = latent.get(key, 0) + count
                events, contacts = _to_tables(chunk, first, n_drawn)
                n_drawn += chunk.drawn
                del chunk
                ev_writer.write_table(events, row_group_size=1 << 20)
                cu_writer.write_table(contacts)
                n_events += events.num_rows
                del events, contacts
                if progress is not None:
                    progress(n)
        write.stage_log(
            {
                "command": "simulate",
                "at": pd.Timestamp.now(tz="UTC").isoformat(),
                "customers": customers,
                "days": days,
                "seed": seed,
                "total_rows": n_events,
            }
        )
        fault_point("simulate:staged")
        write.commit(fault="simulate")
    seconds = time.perf_counter() - began
    return SimulationSummary(
        customers=customers,
        events=n_events,
        seconds=seconds,
        events_path=events_path,
        customers_path=customers_path,
        rates=compute_rates(events_path),
        latent=latent,
    )


# Four scans of the events rather than one query: a CTE used several times would be
# materialised (GBs for 100M rows) and an inlined one re-planned into slow joins.
_TOTALS_SQL = """
SELECT min(epoch_us(event_time)), max(epoch_us(event_time)),
       count(*) FILTER (WHERE event_type = 'email_sent'),
       count(*) FILTER (WHERE event_type = 'email_open'),
       count(*) FILTER (WHERE event_type = 'email_click')
FROM src
"""
_CONVERSION_SQL = """
SELECT avg(bought::DOUBLE) FROM (
    SELECT min(event_time) AS first_t, bool_or(event_type = 'purchase') AS bought
    FROM src GROUP BY customer_id
) WHERE epoch_us(first_t) >= {t0} + 28 * {day}
"""
# One row per contact and month with activity; a month is followed by churn when the
# contact's next active month is not the next one.
_CHURN_SQL = """
WITH months AS (
    SELECT customer_id, (epoch_us(event_time) - {t0}) // {month} AS m,
           bool_or(event_type = 'purchase') AS bought
    FROM src WHERE event_type <> 'email_sent' GROUP BY ALL
),
flow AS (
    SELECT m,
           bool_or(bought) OVER (PARTITION BY customer_id ORDER BY m) AS buyer,
           lead(m) OVER (PARTITION BY customer_id ORDER BY m) AS next_m
    FROM months
)
SELECT avg((next_m IS NULL OR next_m > m + 1)::DOUBLE) FROM flow
WHERE buyer AND m + 1 < {n_months}
"""
_ABANDONMENT_SQL = """
WITH carts AS (
    SELECT customer_id, event_time AS t FROM src
    WHERE event_type = 'cart_add' AND epoch_us(event_time) <= {t1} - 7 * {day}
),
buys AS (
    SELECT customer_id, event_time AS t_buy FROM src WHERE event_type = 'purchase'
)
SELECT avg((b.t_buy IS NULL OR b.t_buy > c.t + INTERVAL 7 DAY)::DOUBLE)
FROM carts c ASOF LEFT JOIN buys b ON c.customer_id = b.customer_id AND b.t_buy >= c.t
"""


def compute_rates(events: pd.DataFrame | pa.Table | Path | str) -> dict[str, float]:
    """Behavioural rates measured on observed events only (no latent state).

    Definitions (``t0`` is midnight before the first event, "activity" is any event
    but ``email_sent``, which the contact does not cause; months are 30 days from ``t0``):

    * ``open_rate``: ``email_open / email_sent``;
    * ``ctr``: ``email_click / email_sent``;
    * ``click_to_open``: ``email_click / email_open``;
    * ``conversion_rate``: among contacts first observed 28 days or more after ``t0``
      (new contacts, hence prospects: anyone known earlier receives e-mails from the
      first week), the share with at least one purchase;
    * ``monthly_churn``: at each boundary between two complete months, the *active
      buyers* are contacts with a purchase before the boundary and activity in the month
      before it; the rate is the share of them with no activity in the month after it,
      pooled over all boundaries;
    * ``cart_abandonment``: share of ``cart_add`` events not followed by a purchase of
      the same contact within 7 days (carts of the last 7 days are left out).

    Args:
        events: a DataFrame or Arrow table with at least ``customer_id``,
            ``event_type`` and ``event_time``, or the path of a Parquet file (read by
            DuckDB without loading it into memory).

    Returns:
        The six rates; NaN where the denominator is empty.

    """
    con = duckdb.connect()
    try:
        if isinstance(events, str | Path):
            path = str(events).replace("'", "''")
            con.execute(f"CREATE VIEW src AS SELECT * FROM read_parquet('{path}')")
        else:
            con.register("src", events)
        t_min, t1, sent, opens, clicks = con.execute(_TOTALS_SQL).fetchone()
        if t_min is None:
            return dict.fromkeys(RATE_NAMES, float("nan"))
        t0 = t_min - t_min % _DAY_US
        month = 30 * _DAY_US
        fmt = {"t0": t0, "t1": t1, "day": _DAY_US, "month": month, "n_months": (t1 - t0) // month}
        rates = {
            "open_rate": opens / sent if sent else None,
            "ctr": clicks / sent if sent else None,
            "click_to_open": clicks / opens if opens else None,
            "conversion_rate": con.execute(_CONVERSION_SQL.format(**fmt)).fetchone()[0],
            "monthly_churn": con.execute(_CHURN_SQL.format(**fmt)).fetchone()[0],
            "cart_abandonment": con.execute(_ABANDONMENT_SQL.format(**fmt)).fetchone()[0],
        }
    finally:
        con.close()
    return {k: float("nan") if v is None else float(v) for k, v in rates.items()}


__all__ = [
    "EVENT_TYPES",
    "SimulationSummary",
    "compute_rates",
    "simulate_chunk",
    "simulate_tables",
    "simulate_to_parquet",
]
