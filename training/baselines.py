"""Baselines trained and scored on the same rows as the model, in the same run.

- RFM heuristic: the classic recency / frequency / monetary ranking, no learning.
- Logistic regression on the same features (signed log, median imputation, scaling).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler


def rfm_score(X: pd.DataFrame, model: str) -> np.ndarray:
    """Higher = more likely positive. Mean percentile rank of R, F and M.

    Engagement = recent last purchase + many purchases + high revenue over 365 days
    (contacts who never bought rank lowest on recency; the last activity breaks ties).
    Appetence follows engagement; churn is its opposite.
    """
    recency = -X["days_since_last_purchase"].fillna(1e9)
    freq = X["purchases_365d"]
    money = X["revenue_365d"]
    tie = -X["days_since_last_event"].fillna(1e9)
    ranks = [s.rank(pct=True).to_numpy() for s in (recency, freq, money)]
    engaged = np.mean(ranks, axis=0) + 1e-3 * tie.rank(pct=True).to_numpy()
    return engaged if model == "appetence" else -engaged


def _signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def logistic_baseline(seed: int) -> Pipeline:
    """A regularised logistic regression pipeline that accepts missing values."""
    return make_pipeline(
        FunctionTransformer(_signed_log),
        SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(C=0.1, max_iter=300, tol=1e-3, random_state=seed),
    )
