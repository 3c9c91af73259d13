"""Customer lifetime value and the value at risk of churn.

    CLV = average order value x purchases per year x value.lifespan_years
    value at risk = p_churn x CLV            (0 for a prospect)

Purchases per year (``value.frequency``):

- ``purchases_365d`` (default): the purchases of the last 365 days, as observed;
- ``mean_gap``: 365.25 / mean days between two purchases, falling back to
  ``purchases_365d`` for a customer with a single purchase (no gap yet).

A prospect (no purchase) has no observed value: CLV 0, value at risk 0. The worked
example of docs/DOMAIN.md#customer-lifetime-value-clv-and-value-at-risk: 100 $ a
purchase, 12 purchases a year, 1 year gives 1,200 $ (tests/test_docs.py checks it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from engage.config import ValueParams

DAYS_PER_YEAR = 365.25
REQUIRED = ("has_purchased", "avg_order_value", "purchases_365d", "mean_days_between_purchases")


def _col(features: pd.DataFrame, name: str) -> np.ndarray:
    return features[name].to_numpy(dtype="float64", na_value=np.nan)


def purchase_frequency(features: pd.DataFrame, params: ValueParams) -> np.ndarray:
    """Purchases per year of each row (see the module docstring for the methods)."""
    per_year = np.nan_to_num(_col(features, "purchases_365d"), nan=0.0)
    if params.frequency == "mean_gap":
        gap = _col(features, "mean_days_between_purchases")
        with np.errstate(divide="ignore", invalid="ignore"):
            from_gap = DAYS_PER_YEAR / gap
        # A zero gap (two purchases at the same instant) would give an infinite rate.
        usable = np.isfinite(from_gap) & (gap > 0)
        per_year = np.where(usable, from_gap, per_year)
    return per_year


def customer_value(
    features: pd.DataFrame, p_churn: np.ndarray | pd.Series, params: ValueParams
) -> pd.DataFrame:
    """CLV and value at risk of each contact.

    Args:
        features: one row per contact with the columns in :data:`REQUIRED`.
        p_churn: churn probability per row (NaN allowed for prospects).
        params: ``value`` section of params.yaml.

    Returns:
        A frame with columns ``clv`` and ``value_at_risk`` (0 for prospects, never NaN).

    Raises:
        ValueError: a required column is missing, or lengths differ.

    """
    missing = [c for c in REQUIRED if c not in features.columns]
    if missing:
        raise ValueError(f"value: missing feature column(s) {missing}")
    q = np.asarray(p_churn, dtype="float64").reshape(-1)
    if len(q) != len(features):
        raise ValueError(f"value: {len(features)} feature rows but {len(q)} p_churn values")
    customer = _col(features, "has_purchased") == 1.0
    aov = np.nan_to_num(_col(features, "avg_order_value"), nan=0.0)
    clv = np.where(customer, aov * purchase_frequency(features, params) * params.lifespan_years, 0)
    at_risk = np.where(customer, np.nan_to_num(q, nan=0.0) * clv, 0.0)
    return pd.DataFrame({"clv": clv, "value_at_risk": at_risk}, index=features.index)
