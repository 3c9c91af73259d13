"""Fitting a model: LightGBM with early stopping, then a probability calibrator.

Pure functions of training and validation rows; the result is a
:class:`training.model.EngageModel`, stored and loaded by :mod:`training.model`.
"""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from engage.config import LightGBMParams, TrainingParams
from training.model import CALIBRATION_METHODS, Calibrator, EngageModel
from training.progress import lightgbm_callbacks


def fit_calibrator(method: str, margin: np.ndarray, y: np.ndarray) -> Calibrator:
    """Fit a calibrator of the raw margin on held-out rows.

    ``sigmoid`` (Platt) fits a logistic regression on the margin and keeps the ranking;
    ``isotonic`` fits a monotone step function on ``sigmoid(margin)``.

    Raises:
        ValueError: an unknown method.

    """
    margin = np.asarray(margin, dtype="float64")
    if method == "sigmoid":
        platt = LogisticRegression(C=1e6).fit(margin.reshape(-1, 1), y)
        return Calibrator("sigmoid", float(platt.coef_[0, 0]), float(platt.intercept_[0]))
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
        iso.fit(1.0 / (1.0 + np.exp(-margin)), y)
        return Calibrator(
            "isotonic",
            x=tuple(float(v) for v in iso.X_thresholds_),
            y=tuple(float(v) for v in iso.y_thresholds_),
        )
    raise ValueError(
        f"training.calibration: unknown method {method!r} (use one of {list(CALIBRATION_METHODS)})"
    )


def fit_booster(
    train_X: pd.DataFrame,
    train_y: np.ndarray,
    valid_X: pd.DataFrame,
    valid_y: np.ndarray,
    params: LightGBMParams,
    seed: int,
) -> lgb.Booster:
    """Train LightGBM with early stopping on the validation rows (deterministic)."""
    lgb_params = params.model_dump(exclude={"n_estimators", "early_stopping_rounds"})
    lgb_params.update(
        seed=seed,
        deterministic=True,
        force_col_wise=True,
        verbose=-1,
        metric="binary_logloss",
    )
    train = lgb.Dataset(train_X, label=train_y, free_raw_data=False)
    valid = lgb.Dataset(valid_X, label=valid_y, reference=train, free_raw_data=False)
    booster = lgb.train(
        lgb_params,
        train,
        num_boost_round=params.n_estimators,
        valid_sets=[valid],
        callbacks=[
            lgb.early_stopping(params.early_stopping_rounds, verbose=False),
            *lightgbm_callbacks(),
        ],
    )
    # Keep only the trees up to the best iteration, so every later predict (stored,
    # served, explained) uses the same model without remembering best_iteration.
    best = booster.best_iteration or booster.current_iteration()
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=best))


def fit_engage_model(
    name: str,
    features: list[str],
    train_X: pd.DataFrame,
    train_y: np.ndarray,
    valid_X: pd.DataFrame,
    valid_y: np.ndarray,
    params: TrainingParams,
    trained_for: dict[str, Any],
    training: dict[str, Any] | None = None,
) -> EngageModel:
    """LightGBM with early stopping on the validation rows, then calibrated on them.

    Args:
        name: the model's registry name.
        features: input columns, in order.
        train_X: training rows.
        train_y: training labels (0/1).
        valid_X: validation rows (early stopping and calibration).
        valid_y: validation labels.
        params: ``training`` section of params.yaml.
        trained_for: what the labels meant (see :func:`training.labels.label_definition`).
        training: facts of the run to store with the model.

    """
    Xtr, Xva = train_X[features].astype(float), valid_X[features].astype(float)
    booster = fit_booster(Xtr, train_y, Xva, valid_y, params.lightgbm, params.seed)
    calibrator = fit_calibrator(params.calibration, booster.predict(Xva, raw_score=True), valid_y)
    return EngageModel(
        name=name,
        features=list(features),
        booster=booster,
        calibrator=calibrator,
        trained_for=dict(trained_for),
        training={"trees": booster.num_trees(), **(training or {})},
    )
