"""The engagement index: which half, which stage, the engagement score and the dial.

What the halves and stages mean: docs/DOMAIN.md#the-engagement-index.

Pure, vectorised functions on arrays; batch scoring and the prediction endpoint both
call :func:`engagement_index`.

A contact's half comes from ``has_purchased`` (the conversion event happened before the
as-of time). Each half is decided by one calibrated probability and one threshold from
``params.yaml`` (``index.tau_purchase`` = tau_p, ``index.tau_churn`` = tau_c):

=========  ==================  ============================  ===========================
half       stage               rule                          dial position (0-100)
=========  ==================  ============================  ===========================
prospect   Nurture             p_purchase < tau_p            25 * p / tau_p
prospect   Purchase            p_purchase >= tau_p           25 + 25 * (p - tau_p) / (1 - tau_p)
customer   Retention           p_churn < tau_c               50 + 25 * q / tau_c
customer   Exit                p_churn >= tau_c              75 + 25 * (q - tau_c) / (1 - tau_c)
=========  ==================  ============================  ===========================

(p = p_purchase, q = p_churn.) The dial runs Nurture, Purchase, Retention, Exit, one
quarter each, so a prospect moves right as its purchase readiness grows and a customer
drifts right, towards Exit, as its churn risk grows. The position is continuous at both
thresholds and monotone in the deciding probability within a half; the left half spans
[0, 50] and the right half [50, 100] (50 itself is reached by a prospect only at
p_purchase = 1 exactly). When a threshold is 1 the upper quarter shrinks to its left
edge (25 or 75), so there is no division by zero.

The engagement score (0-100, higher = more engaged) is ``100 * p_purchase`` for a
prospect and ``100 * (1 - p_churn)`` for a customer.

Only the deciding probability must be present: a prospect's ``p_churn`` and a
customer's ``p_purchase`` may be NaN (the churn model only scores customers). A
deciding probability that is NaN, or any probability outside [0, 1], is a
``ValueError`` naming the field and the number of rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pandas as pd

from engage.config import IndexParams

NURTURE, PURCHASE, RETENTION, EXIT = "Nurture", "Purchase", "Retention", "Exit"
STAGES: tuple[str, ...] = (NURTURE, PURCHASE, RETENTION, EXIT)


def _as_float(values: Sequence[float] | np.ndarray | pd.Series, field: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype="float64").reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: not numeric") from None


def check_halves(has_purchased: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    """``has_purchased`` as a boolean array (True = customer, right half).

    Raises:
        ValueError: a value is NaN or not 0/1 (the message gives the count).

    """
    h = _as_float(has_purchased, "has_purchased")
    bad = ~np.isin(h, (0.0, 1.0))
    if bad.any():
        raise ValueError(f"has_purchased: {int(bad.sum())} row(s) not 0 or 1 (or missing)")
    return h == 1.0


def check_probability(
    values: Sequence[float] | np.ndarray | pd.Series,
    field: str,
    required: np.ndarray | None = None,
) -> np.ndarray:
    """Validate a probability column; returns it as float64.

    Args:
        values: the probabilities.
        field: column name used in the error message.
        required: boolean mask of the rows where a value must be present (NaN is an
            error there); None means every row.

    Raises:
        ValueError: values outside [0, 1], or missing where required; the message names
            the field and the number of rows.

    """
    p = _as_float(values, field)
    nan = np.isnan(p)
    missing = nan if required is None else nan & required
    if missing.any():
        raise ValueError(f"{field}: {int(missing.sum())} row(s) missing (NaN)")
    with np.errstate(invalid="ignore"):
        out = ~nan & ((p < 0.0) | (p > 1.0))
    if out.any():
        raise ValueError(f"{field}: {int(out.sum())} row(s) outside [0, 1]")
    return p


def _upper(p: np.ndarray, tau: float) -> np.ndarray:
    # (p - tau) / (1 - tau), with tau = 1 mapping the only reachable p (= 1) to 0.
    if tau >= 1.0:
        return np.zeros_like(p)
    return (p - tau) / (1.0 - tau)


def _lower(p: np.ndarray, tau: float) -> np.ndarray:
    # p / tau; with tau = 0 the lower quarter is empty, so the value is never used.
    if tau <= 0.0:
        return np.zeros_like(p)
    return p / tau


def index_arrays(
    has_purchased: Sequence[float] | np.ndarray | pd.Series,
    p_purchase: Sequence[float] | np.ndarray | pd.Series,
    p_churn: Sequence[float] | np.ndarray | pd.Series,
    params: IndexParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage codes (index into :data:`STAGES`), engagement scores and dial positions.

    The numpy form of :func:`engagement_index` (same arguments, same checks), for the
    decision core where building a frame would cost more than one contact's rules.
    """
    customer = check_halves(has_purchased)
    n = len(customer)
    p = check_probability(p_purchase, "p_purchase", required=~customer)
    q = check_probability(p_churn, "p_churn", required=customer)
    if len(p) != n or len(q) != n:
        raise ValueError(
            f"lengths differ: has_purchased {n}, p_purchase {len(p)}, p_churn {len(q)}"
        )
    tp, tc = float(params.tau_purchase), float(params.tau_churn)
    buy = ~customer & (p >= tp)
    leave = customer & (q >= tc)
    code = np.where(customer, np.where(leave, 3, 2), np.where(buy, 1, 0)).astype("int8")
    with np.errstate(invalid="ignore"):
        dial = np.select(
            [code == 0, code == 1, code == 2],
            [25.0 * _lower(p, tp), 25.0 + 25.0 * _upper(p, tp), 50.0 + 25.0 * _lower(q, tc)],
            default=75.0 + 25.0 * _upper(q, tc),
        )
        score = np.where(customer, 100.0 * (1.0 - q), 100.0 * p)
    return code, score, dial


def engagement_index(
    has_purchased: Sequence[float] | np.ndarray | pd.Series,
    p_purchase: Sequence[float] | np.ndarray | pd.Series,
    p_churn: Sequence[float] | np.ndarray | pd.Series,
    params: IndexParams,
) -> pd.DataFrame:
    """Stage, engagement score and dial position of each contact.

    Args:
        has_purchased: 1 for a customer (right half), 0 for a prospect.
        p_purchase: calibrated purchase probability (required for prospects).
        p_churn: calibrated churn probability (required for customers).
        params: ``index`` section of params.yaml (the two thresholds).

    Returns:
        A frame with one row per input row and columns ``stage`` (categorical, in dial
        order), ``engagement_score`` and ``dial_position`` (both 0-100).

    Raises:
        ValueError: inputs of different lengths, a bad ``has_purchased`` or a bad
            probability (see :func:`check_probability`).

    """
    code, score, dial = index_arrays(has_purchased, p_purchase, p_churn, params)
    stage = pd.Categorical.from_codes(code, categories=list(STAGES))
    return pd.DataFrame({"stage": stage, "engagement_score": score, "dial_position": dial})


def purchase_threshold_at(tau: float, stated_days: int, horizon_days: int) -> float:
    """A threshold on P(purchase within the horizon), carried from ``stated_days``.

    At a constant daily purchase hazard, P(purchase within h) = 1 - (1 - P_s)^(h / s)
    for P_s the probability within s days; the threshold moves the same way, so a
    contact at the threshold has the same daily intent at either horizon.
    """
    return 1.0 - (1.0 - float(tau)) ** (horizon_days / stated_days)


def churn_threshold_at(tau: float, stated_days: int, horizon_days: int) -> float:
    """A threshold on P(quiet throughout the horizon), carried from ``stated_days``.

    At a constant daily activity hazard, P(quiet throughout h) = P_s^(h / s).
    """
    return float(tau) ** (horizon_days / stated_days)


@lru_cache(maxsize=64)
def thresholds_at(index: IndexParams, horizon_days: int) -> IndexParams:
    """The ``index`` parameters with both thresholds carried to ``horizon_days``.

    ``index.tau_purchase`` and ``index.tau_churn`` are stated for
    ``index.stated_horizon_days``; models trained for another label horizon
    (``labels.horizon_days``) decide with the converted thresholds (see
    :func:`purchase_threshold_at`, :func:`churn_threshold_at`). At the stated horizon
    they are returned unchanged; 0 and 1 stay 0 and 1.

    Raises:
        ValueError: ``horizon_days`` is not a positive number of days.

    """
    if not horizon_days or horizon_days <= 0:
        raise ValueError(f"horizon_days must be a positive number of days, got {horizon_days!r}")
    s = index.stated_horizon_days
    if horizon_days == s:
        return index
    return index.model_copy(
        update={
            "tau_purchase": purchase_threshold_at(index.tau_purchase, s, horizon_days),
            "tau_churn": churn_threshold_at(index.tau_churn, s, horizon_days),
        }
    )


UNKNOWN = -1  # previous stage code of a contact absent from the previous run


def stabilise(
    code: np.ndarray,
    has_purchased: np.ndarray,
    p_purchase: np.ndarray,
    p_churn: np.ndarray,
    params: IndexParams,
    previous: np.ndarray,
    previous_runs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the stability rule against each contact's previous stage.

    Within its half a contact keeps its previous stage unless the deciding probability
    crosses the threshold by the margin h = ``index.hysteresis``: from the lower stage
    (Nurture, Retention) it moves up only when ``p >= tau + h``; from the upper stage
    (Purchase, Exit) it moves down only when ``p < tau - h`` (both bounds clipped to
    [0, 1]; h = 0 is the plain threshold rule). Then, with ``index.min_dwell_runs`` = m
    > 1, a contact that has spent fewer than m runs in its previous stage stays there.
    A contact with no previous stage (new, or no previous run) or whose half changed (a
    first purchase is a fact, not noise) gets the plain stage of :func:`index_arrays`.

    Args:
        code: the plain stage codes (index into :data:`STAGES`) from :func:`index_arrays`.
        has_purchased: 1 for a customer, 0 for a prospect.
        p_purchase: the deciding probability of prospects.
        p_churn: the deciding probability of customers.
        params: ``index`` section (thresholds, hysteresis, minimum dwell).
        previous: each contact's stage code in the previous run, :data:`UNKNOWN` (-1) if
            absent.
        previous_runs: consecutive runs the contact had spent in that stage, up to and
            including the previous run (0 = unknown: the dwell rule does not hold it).

    Returns:
        The stage codes after the rule, and the consecutive runs spent in that stage up to
        and including this one (1 for a stage just entered).

    Raises:
        ValueError: inputs of different lengths, or a previous code outside -1..3.

    """
    code = np.asarray(code, dtype="int8")
    n = len(code)
    prev = np.asarray(previous, dtype="int64").reshape(-1)
    runs = np.zeros(n, dtype="int64") if previous_runs is None else np.asarray(previous_runs)
    runs = runs.astype("int64").reshape(-1)
    if len(prev) != n or len(runs) != n:
        raise ValueError(
            f"lengths differ: stages {n}, previous stages {len(prev)}, previous runs {len(runs)}"
        )
    bad = (prev < UNKNOWN) | (prev >= len(STAGES))
    if bad.any():
        raise ValueError(f"previous stage: {int(bad.sum())} row(s) not a stage code (-1..3)")
    customer = np.asarray(has_purchased).reshape(-1) == 1
    lower = np.where(customer, 2, 0)
    prob = np.where(customer, p_churn, p_purchase)
    tau = np.where(customer, float(params.tau_churn), float(params.tau_purchase))
    h = float(params.hysteresis)
    # Only a known previous stage of the same half anchors the contact.
    anchored = (prev >= 0) & ((prev >= 2) == customer)
    was_upper = prev == lower + 1
    with np.errstate(invalid="ignore"):
        up = prob >= np.minimum(tau + h, 1.0)
        stay_up = ~(prob < np.maximum(tau - h, 0.0))
    sticky = np.where(was_upper, stay_up, up)
    out = np.where(anchored, lower + sticky, code).astype("int8")
    if params.min_dwell_runs > 1:
        held = anchored & (out != prev) & (runs > 0) & (runs < params.min_dwell_runs)
        out = np.where(held, prev, out).astype("int8")
    same = anchored & (out == prev)
    stage_runs = np.where(same, np.maximum(runs, 0) + 1, 1)
    # A count of 0 (unknown) that stays becomes 1: the run is at least its own.
    return out, np.minimum(stage_runs, np.iinfo("int32").max).astype("int32")


def dial_in_quadrant(code: np.ndarray, dial: np.ndarray) -> np.ndarray:
    """Clip each dial position to the quadrant of its stage.

    A contact held in its stage by :func:`stabilise` has a probability on the other side
    of the threshold; its dial then sits on the edge of its own quadrant (25, 50 or 75)
    rather than in the neighbouring one.
    """
    code = np.asarray(code, dtype="int64")
    return np.clip(dial, 25.0 * code, 25.0 * (code + 1))
