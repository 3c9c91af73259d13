"""Customer lifetime value and the value at risk of churn.

    CLV = average order value x purchases per year x value.lifespan_years
    value at risk = p_churn x CLV            (0 for a prospect)

Purchases per year (``value.frequency``):

- ``purchases_365d`` (default): the purchases of the last 365 days, as observed;
- ``mean_gap``: 365.25 / mean days between two purchases, falling back to
  ``purchases_365d`` for a customer with a single purchase (no gap yet).

A prospect (no purchase) has no observed value: CLV 0, value at risk 0. A customer
whose average order value is unknown (a store ingested with ``--no-amounts``: the money
features are null) has an unknown CLV and value at risk: NaN, never a made-up 0. The worked
example of docs/DOMAIN.md#customer-lifetime-value-clv-and-value-at-risk: 100 $ a
purchase, 12 purchases a year, 1 year gives 1,200 $ (tests/test_docs.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from engage.config import ValueParams

DAYS_PER_YEAR = 365.25
REQUIRED = ("has_purchased", "avg_order_value", "purchases_365d", "mean_days_between_purchases")


def _frame_column(features: pd.DataFrame) -> Callable[[str], np.ndarray]:
    missing = [c for c in REQUIRED if c not in features.columns]
    if missing:
        raise ValueError(f"value: missing feature column(s) {missing}")
    return lambda name: features[name].to_numpy(dtype="float64", na_value=np.nan)


def _frequency(col: Callable[[str], np.ndarray], params: ValueParams) -> np.ndarray:
    per_year = np.nan_to_num(col("purchases_365d"), nan=0.0)
    if params.frequency == "mean_gap":
        gap = col("mean_days_between_purchases")
        with np.errstate(divide="ignore", invalid="ignore"):
            from_gap = DAYS_PER_YEAR / gap
        # A zero gap (two purchases at the same instant) would give an infinite rate.
        usable = np.isfinite(from_gap) & (gap > 0)
        per_year = np.where(usable, from_gap, per_year)
    return per_year


def purchase_frequency(features: pd.DataFrame, params: ValueParams) -> np.ndarray:
    """Purchases per year of each row (see the module docstring for the methods)."""
    return _frequency(_frame_column(features), params)


def value_arrays(
    col: Callable[[str], np.ndarray], p_churn: np.ndarray, params: ValueParams
) -> tuple[np.ndarray, np.ndarray]:
    """CLV and value at risk per row (0 for prospects, NaN for a customer of unknown value).

    Args:
        col: gives the float64 values (NaN = missing) of a column of :data:`REQUIRED`.
        p_churn: churn probability per row (NaN allowed for prospects).
        params: ``value`` section of params.yaml.

    Raises:
        ValueError: lengths differ.

    """
    customer = col("has_purchased") == 1.0
    q = np.asarray(p_churn, dtype="float64").reshape(-1)
    if len(q) != len(customer):
        raise ValueError(f"value: {len(customer)} feature rows but {len(q)} p_churn values")
    # NaN average order value = unknown amounts: the customer's value stays unknown.
    aov = col("avg_order_value")
    clv = np.where(customer, aov * _frequency(col, params) * params.lifespan_years, 0.0)
    at_risk = np.where(customer, np.nan_to_num(q, nan=0.0) * clv, 0.0)
    return clv, at_risk


def customer_value(
    features: pd.DataFrame, p_churn: np.ndarray | pd.Series, params: ValueParams
) -> pd.DataFrame:
    """CLV and value at risk of each contact.

    Args:
        features: one row per contact with the columns in :data:`REQUIRED`.
        p_churn: churn probability per row (NaN allowed for prospects).
        params: ``value`` section of params.yaml.

    Returns:
        A frame with columns ``clv`` and ``value_at_risk`` (0 for prospects, NaN for a
        customer whose order value is unknown).

    Raises:
        ValueError: a required column is missing, or lengths differ.

    """
    clv, at_risk = value_arrays(_frame_column(features), p_churn, params)
    return pd.DataFrame({"clv": clv, "value_at_risk": at_risk}, index=features.index)


def rank_by_value_at_risk(customers: pd.DataFrame) -> pd.DataFrame:
    """``customers`` ordered for an at-risk list: value at risk, highest first.

    Customers whose value is unknown (NaN: data without amounts) follow the valued ones,
    by ``p_churn`` highest first, so a store without amounts still gets a list by risk.
    Ties keep the input order (stable), so the list is the same on every call.
    """
    unknown = customers["value_at_risk"].isna()
    known = customers.loc[~unknown].sort_values("value_at_risk", ascending=False, kind="stable")
    rest = customers.loc[unknown].sort_values("p_churn", ascending=False, kind="stable")
    return pd.concat([known, rest]) if len(rest) else known
