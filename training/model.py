"""The trained model: a LightGBM booster, a probability calibrator and its feature list.

:class:`EngageModel` is what MLflow stores (inside a pyfunc wrapper whose ``predict``
returns calibrated probabilities, not labels) and what scoring and serving load. Inputs
are reindexed to the stored feature list, so column order does not matter, and a
missing feature is an error that names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from engage.config import LightGBMParams, TrainingParams


class FeatureMismatchError(ValueError):
    """The input lacks features the model was trained on (or they are not numeric)."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Calibrator:
    """Maps the booster's raw margin to a calibrated probability.

    ``isotonic`` fits a monotone step function on the raw probability; ``sigmoid`` (Platt)
    fits a logistic regression on the margin. Both are fitted on held-out rows.
    """

    method: str
    _iso: IsotonicRegression | None = None
    _platt: LogisticRegression | None = None

    def fit(self, margin: np.ndarray, y: np.ndarray) -> Calibrator:
        if self.method == "isotonic":
            self._iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
            self._iso.fit(_sigmoid(margin), y)
        elif self.method == "sigmoid":
            self._platt = LogisticRegression(C=1e6).fit(margin.reshape(-1, 1), y)
        else:
            raise ValueError(f"training.calibration: unknown method {self.method!r}")
        return self

    def transform(self, margin: np.ndarray) -> np.ndarray:
        if self._iso is not None:
            return np.clip(self._iso.predict(_sigmoid(margin)), 0.0, 1.0)
        if self._platt is not None:
            # LogisticRegression.predict_proba on one column, without sklearn's input
            # validation: a third of the service's scoring time for one contact.
            z = np.asarray(margin, dtype="float64") * self._platt.coef_[0, 0]
            return expit(z + self._platt.intercept_[0])
        raise RuntimeError("calibrator is not fitted")


@dataclass
class EngageModel:
    """A calibrated LightGBM binary classifier over a fixed, named feature list."""

    name: str
    features: list[str]
    booster: lgb.Booster
    calibrator: Calibrator
    feature_service: str
    metadata: dict = field(default_factory=dict)

    def frame(self, X: pd.DataFrame) -> pd.DataFrame:
        """The inputs in the stored feature order, as float64.

        Raises:
            FeatureMismatchError: a feature is missing or not numeric.
        """
        missing = [f for f in self.features if f not in X.columns]
        if missing:
            raise FeatureMismatchError(
                f"{self.name} model: {len(missing)} missing feature(s): {missing[:10]}"
            )
        out = X[self.features]
        try:
            return out.astype("float64")
        except (TypeError, ValueError):
            bad = [f for f in self.features if not pd.api.types.is_numeric_dtype(out[f])]
            raise FeatureMismatchError(
                f"{self.name} model: non-numeric feature(s): {bad[:10]}"
            ) from None

    def margin(self, X: pd.DataFrame) -> np.ndarray:
        """Raw log-odds of the booster (what SHAP contributions add up to)."""
        return self.booster.predict(self.frame(X), raw_score=True)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated probability of the positive class, in [0, 1]."""
        return self.calibrator.transform(self.margin(X))

    def contributions(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """TreeSHAP contributions (rows x features) and the base value per row.

        LightGBM's ``pred_contrib`` is the TreeSHAP algorithm (the same code shap's
        TreeExplainer calls); each row's contributions plus its base value equal the
        margin.
        """
        out = self.booster.predict(self.frame(X), pred_contrib=True)
        return out[:, :-1], out[:, -1]


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
        callbacks=[lgb.early_stopping(params.early_stopping_rounds, verbose=False)],
    )
    # Keep only the trees up to the best iteration, so every later predict (pickled,
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
    feature_service: str,
    metadata: dict | None = None,
) -> EngageModel:
    """LightGBM with early stopping on the validation rows, then calibrated on them."""
    Xtr, Xva = train_X[features].astype(float), valid_X[features].astype(float)
    booster = fit_booster(Xtr, train_y, Xva, valid_y, params.lightgbm, params.seed)
    calibrator = Calibrator(params.calibration).fit(booster.predict(Xva, raw_score=True), valid_y)
    return EngageModel(
        name=name,
        features=features,
        booster=booster,
        calibrator=calibrator,
        feature_service=feature_service,
        metadata=metadata or {},
    )
