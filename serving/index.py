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
