"""Baselines: simple models fitted and scored on the same rows as LightGBM, in the same run.

Each baseline is a servable :class:`training.model.EngageModel` (text and JSON, the same
``proba_matrix`` / ``contributions`` interface), so the promotion gate can register and
serve it when LightGBM does not beat it (:mod:`training.fit_evaluate`):

- ``recency``: recency alone, a one-feature logistic regression on
  ``days_since_last_event`` (signed log, median imputation plus a "never acted"
  indicator): monotone in the days by construction.
- ``rfm``: the classic recency / frequency / monetary ranking, no learning beyond the
  empirical distributions of the training rows (kind ``rfm``).
- ``logreg``: a regularised logistic regression on every feature (signed log, median
  imputation with missing-value indicators, scaling).
- ``bgnbd`` (purchase targets only): BG/NBD's probability of at least one purchase within
  the horizon, fitted on one snapshot of the training window (kind ``bgnbd``).

Each is calibrated on the validation rows like LightGBM (:func:`training.fit.fit_calibrator`).
:func:`rfm_score` and :func:`logistic_baseline` keep their signatures for the backtests.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from training.btyd import fit_on_snapshot
from training.model import BGNBD, BTYD_FEATURES, Calibrator, EngageModel, Linear, LinearTerm

RECENCY_FEATURE = "days_since_last_event"
# (feature, value of a contact who never did it, +1 = "higher is more engaged")
RFM_PARTS = (
    ("days_since_last_purchase", 1e9, -1.0),
    ("purchases_365d", 0.0, +1.0),
    ("revenue_365d", 0.0, +1.0),
)
RFM_TIE = (RECENCY_FEATURE, 1e9, -1.0, 1e-3)  # the last activity breaks ties
ECDF_POINTS = 512  # grid points of a stored empirical CDF
# The methods a run compares with LightGBM, per label rule; ``bgnbd`` needs a purchase target.
BASELINES = {
    "purchase_in_window": ("recency", "rfm", "logreg", "bgnbd"),
    "quiet_in_window": ("recency", "rfm", "logreg"),
}


def rfm_score(X: pd.DataFrame, model: str) -> np.ndarray:
    """Higher = more likely positive. Mean percentile rank of R, F and M.

    Engagement = recent last purchase + many purchases + high revenue over 365 days
    (contacts who never bought rank lowest on recency; the last activity breaks ties).
    Appetence follows engagement; churn is its opposite.
    """
    recency = -X["days_since_last_purchase"].fillna(1e9)
    freq = X["purchases_365d"]
    money = X["revenue_365d"].fillna(0.0)  # unknown amounts rank like none, as in fit_rfm
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


def linear_from_pipeline(pipeline: Pipeline, X: pd.DataFrame) -> Linear:
    """The fitted :func:`logistic_baseline` as a stored linear margin (same decision values).

    Args:
        pipeline: the fitted pipeline.
        X: the rows it was fitted on (for each term's mean, the SHAP reference).

    """
    _, imputer, scaler, lr = (step for _, step in pipeline.steps)
    n = X.shape[1]
    coef, mean, scale = lr.coef_[0], scaler.mean_, scaler.scale_
    indicators = (
        {}
        if imputer.indicator_ is None
        else {int(j): n + i for i, j in enumerate(imputer.indicator_.features_)}
    )
    terms = []
    x = X.to_numpy(dtype="float64")
    for j in range(n):
        m = indicators.get(j)
        term = LinearTerm(
            feature=j,
            transform="slog",
            fill=float(imputer.statistics_[j]),
            coef=float(coef[j]),
            mean=float(mean[j]),
            scale=float(scale[j]),
            missing_coef=0.0 if m is None else float(coef[m]),
            missing_mean=0.0 if m is None else float(mean[m]),
            missing_scale=1.0 if m is None else float(scale[m]),
        )
        terms.append(_with_mean(term, x[:, j]))
    return Linear(intercept=float(lr.intercept_[0]), terms=tuple(terms))


def _with_mean(term: LinearTerm, column: np.ndarray) -> LinearTerm:
    values = term.values(column)
    return replace(term, term_mean=float(values.mean()) if len(values) else 0.0)


def _identity_calibrator() -> Calibrator:
    return Calibrator("sigmoid", coef=1.0, intercept=0.0)


def fit_logistic(
    name: str,
    features: list[str],
    X: pd.DataFrame,
    y: np.ndarray,
    seed: int,
    trained_for: dict[str, Any],
) -> EngageModel:
    """A logistic regression on ``features`` (kind ``logistic``), not yet calibrated."""
    frame = X[features].astype("float64")
    pipeline = logistic_baseline(seed).fit(frame, y)
    return EngageModel(
        name=name,
        features=list(features),
        booster=None,
        calibrator=_identity_calibrator(),
        trained_for=dict(trained_for),
        kind="logistic",
        linear=linear_from_pipeline(pipeline, frame),
    )


def ecdf_grid(values: np.ndarray, points: int = ECDF_POINTS) -> tuple[list[float], list[float]]:
    """Grid of a mid-rank empirical CDF: ``F(v) = (#{< v} + #{<= v}) / (2 n)``.

    At most ``points`` grid values (quantiles when there are more distinct values); the
    CDF between them is interpolated. Mid-ranks are what a percentile rank with ties
    averaged gives (``pandas.Series.rank(pct=True)`` up to 1 / (2 n)).
    """
    v = np.sort(np.asarray(values, dtype="float64"))
    grid = np.unique(v)
    if len(grid) > points:
        grid = np.unique(np.quantile(v, np.linspace(0.0, 1.0, points)))
    below = np.searchsorted(v, grid, side="left")
    upto = np.searchsorted(v, grid, side="right")
    return grid.tolist(), ((below + upto) / (2.0 * len(v))).tolist()


def fit_rfm(name: str, X: pd.DataFrame, model: str, trained_for: dict[str, Any]) -> EngageModel:
    """The RFM heuristic as a model (kind ``rfm``), not yet calibrated.

    score = mean of the percentile ranks of recency (of the last purchase), frequency and
    revenue over 365 days, plus 1e-3 x the rank of the last activity; ranks come from
    the training rows' empirical CDFs, so a new contact is placed against them. The
    score's sign follows the target: engagement for appetence, its opposite for churn.
    """
    sign = 1.0 if model == "appetence" else -1.0
    parts = [(f, fill, d, 1.0 / len(RFM_PARTS)) for f, fill, d in RFM_PARTS] + [RFM_TIE]
    features = [p[0] for p in parts]
    terms, intercept = [], 0.0
    for j, (feature, fill, direction, weight) in enumerate(parts):
        column = X[feature].to_numpy(dtype="float64")
        gx, gy = ecdf_grid(np.where(np.isnan(column), fill, column))
        # A rank of "-days" is 1 - F(days): the 1 goes to the intercept.
        coef = sign * weight * direction
        if direction < 0:
            intercept += sign * weight
        term = LinearTerm(
            feature=j, transform="ecdf", fill=fill, coef=coef, grid_x=tuple(gx), grid_y=tuple(gy)
        )
        terms.append(_with_mean(term, column))
    return EngageModel(
        name=name,
        features=features,
        booster=None,
        calibrator=_identity_calibrator(),
        trained_for=dict(trained_for),
        kind="rfm",
        linear=Linear(intercept=intercept, terms=tuple(terms)),
    )


def fit_bgnbd_model(
    name: str,
    snapshot: pd.DataFrame,
    horizon_days: int,
    seed: int,
    trained_for: dict[str, Any],
    fitted: BGNBD | None = None,
) -> EngageModel:
    """BG/NBD's P(at least one purchase within the horizon) as a model (kind ``bgnbd``).

    Args:
        name: registry name.
        snapshot: one row per contact (an as-of time of the training window) to fit on.
        horizon_days: the label horizon.
        seed: sample of contacts for large snapshots.
        trained_for: what the labels mean.
        fitted: parameters already fitted on ``snapshot`` (skips the fit).

    """
    params = fitted or fit_on_snapshot(snapshot, horizon_days, seed)
    reference = snapshot[list(BTYD_FEATURES)].astype("float64").median().fillna(0.0)
    return EngageModel(
        name=name,
        features=list(BTYD_FEATURES),
        booster=None,
        calibrator=_identity_calibrator(),
        trained_for=dict(trained_for),
        kind="bgnbd",
        btyd=params,
        reference=[float(v) for v in reference],
    )
