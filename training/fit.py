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
from training.model import BGNBD, CALIBRATION_METHODS, Calibrator, EngageModel
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


def adapt_to_rows(params: LightGBMParams, y: np.ndarray) -> LightGBMParams:
    """LightGBM parameters scaled down to a small training set (``training.adapt_to_rows``).

    With ``m`` rows of the rarer class: ``min_child_samples = min(configured,
    max(5, m // 20))`` (a leaf may not need more rows than a twentieth of the rarer
    class) and ``num_leaves = min(configured, max(4, m // (2 * min_child_samples)))``
    (enough rarer-class rows for every leaf twice over). Large training sets keep the
    configured values; 60 churners give 5 rows per leaf and 6 leaves instead of 50 and 31.
    """
    y = np.asarray(y)
    m = int(min((y == 1).sum(), (y == 0).sum()))
    mcs = min(params.min_child_samples, max(5, m // 20))
    leaves = min(params.num_leaves, max(4, m // (2 * mcs)))
    return params.model_copy(update={"min_child_samples": mcs, "num_leaves": leaves})


def lightgbm_params(
    params: LightGBMParams, seed: int, monotone: list[int] | None
) -> dict[str, Any]:
    """LightGBM's parameter dict of the product's recipe (deterministic, seeded, quiet).

    Shared by the fixed-horizon boosters, the hazard and count boosters and the
    evaluations, so every LightGBM of a run is fitted the same way.
    """
    out = params.model_dump(exclude={"n_estimators", "early_stopping_rounds"})
    out.update(
        seed=seed,
        deterministic=True,
        force_col_wise=True,
        verbose=-1,
        metric="binary_logloss",
    )
    if monotone is not None and any(monotone):
        # "intermediate" loses less accuracy than "basic" for the same guarantee.
        out.update(monotone_constraints=list(monotone), monotone_constraints_method="intermediate")
    return out


def fit_booster(
    train_X: pd.DataFrame,
    train_y: np.ndarray,
    valid_X: pd.DataFrame,
    valid_y: np.ndarray,
    params: LightGBMParams,
    seed: int,
    monotone: list[int] | None = None,
) -> lgb.Booster:
    """Train LightGBM with early stopping on the validation rows (deterministic).

    Args:
        train_X: training rows.
        train_y: training labels.
        valid_X: validation rows (early stopping).
        valid_y: validation labels.
        params: LightGBM parameters.
        seed: the random seed.
        monotone: +1 / -1 / 0 per column of ``train_X`` (LightGBM ``monotone_constraints``).

    """
    train = lgb.Dataset(train_X, label=train_y, free_raw_data=False)
    valid = lgb.Dataset(valid_X, label=valid_y, reference=train, free_raw_data=False)
    booster = lgb.train(
        lightgbm_params(params, seed, monotone),
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


def fit_booster_rounds(
    X: pd.DataFrame,
    y: np.ndarray,
    params: LightGBMParams,
    seed: int,
    rounds: int,
    monotone: list[int] | None = None,
) -> lgb.Booster:
    """Train LightGBM for a fixed number of rounds (the refit: no validation rows left)."""
    train = lgb.Dataset(X, label=y, free_raw_data=False)
    return lgb.train(
        lightgbm_params(params, seed, monotone),
        train,
        num_boost_round=max(1, rounds),
        callbacks=lightgbm_callbacks(),
    )


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
    *,
    btyd: BGNBD | None = None,
    derived: list[str] | None = None,
    monotone: dict[str, int] | None = None,
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
        btyd: BG/NBD parameters whose P(alive) and expected purchases become two more
            booster inputs, named ``derived``.
        derived: names of those inputs (required with ``btyd``).
        monotone: known direction (+1 / -1) per input name; others are free.

    """
    lgb_params = (
        adapt_to_rows(params.lightgbm, train_y) if params.adapt_to_rows else (params.lightgbm)
    )
    shell = EngageModel(
        name=name,
        features=list(features),
        booster=None,
        calibrator=Calibrator("sigmoid"),
        trained_for=dict(trained_for),
        btyd=btyd,
        derived=list(derived or []) if btyd is not None else [],
    )
    Xtr, Xva = shell.inputs_frame(train_X), shell.inputs_frame(valid_X)
    constraints = [int((monotone or {}).get(c, 0)) for c in shell.input_names]
    booster = fit_booster(Xtr, train_y, Xva, valid_y, lgb_params, params.seed, constraints)
    shell.booster = booster
    shell.calibrator = fit_calibrator(
        params.calibration, booster.predict(Xva, raw_score=True), valid_y
    )
    shell.training = {
        "trees": booster.num_trees(),
        "num_leaves": lgb_params.num_leaves,
        "min_child_samples": lgb_params.min_child_samples,
        "monotone": {c: d for c, d in zip(shell.input_names, constraints, strict=True) if d},
        **(training or {}),
    }
    return shell
