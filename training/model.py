"""The trained model and its stored form: text and JSON only, never a pickle.

:class:`EngageModel` is a LightGBM booster, a probability calibrator, its feature list and
what it was trained for (horizon, label rule and its parameters, FeatureService). It is
stored as a folder of two files:

- ``model.json``: format version, name, kind, features, calibrator, ``trained_for`` and
  training facts;
- ``booster.txt``: the booster as LightGBM's own text model.

Loading (:func:`read_model_dir`) reads these two files and nothing else: no code in the
artifact runs and nothing is unpickled, so a tampered model store cannot execute code in
the scorer or the service. This module imports only numpy, pandas, lightgbm and the
standard library, because MLflow ships it inside every logged model (``code_paths``) for
``mlflow.pyfunc.load_model`` (see ``training/pyfunc_entry.py``). Fitting lives in
:mod:`training.fit`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

FORMAT = "engage-model/1"
MODEL_JSON = "model.json"
BOOSTER_TXT = "booster.txt"
KINDS = ("lightgbm",)
CALIBRATION_METHODS = ("sigmoid", "isotonic")


class ModelFormatError(ValueError):
    """A stored model is missing a file, has an unknown format or an invalid field."""


class FeatureMismatchError(ValueError):
    """The input lacks features the model was trained on (or they are not numeric)."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class Calibrator:
    """Maps a model's raw margin (log-odds) to a calibrated probability.

    ``sigmoid`` (Platt): ``p = sigmoid(coef * margin + intercept)``. ``isotonic``: the
    monotone piecewise-linear map of ``sigmoid(margin)`` through the points ``(x, y)``,
    constant beyond the ends (what scikit-learn's ``IsotonicRegression`` with
    ``out_of_bounds="clip"`` predicts). Fitted by :func:`training.fit.fit_calibrator`.
    """

    method: str
    coef: float = 1.0
    intercept: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def transform(self, margin: np.ndarray) -> np.ndarray:
        """Calibrated probabilities in [0, 1] for raw margins."""
        m = np.asarray(margin, dtype="float64")
        if self.method == "sigmoid":
            return _sigmoid(m * self.coef + self.intercept)
        if self.method == "isotonic":
            return np.clip(np.interp(_sigmoid(m), self.x, self.y), 0.0, 1.0)
        raise ModelFormatError(f"calibrator.method: unknown method {self.method!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        if self.method == "isotonic":
            return {"method": "isotonic", "x": list(self.x), "y": list(self.y)}
        return {"method": self.method, "coef": self.coef, "intercept": self.intercept}

    @classmethod
    def from_dict(cls, doc: Any) -> Calibrator:
        """Read :meth:`to_dict` back, checking every field.

        Raises:
            ModelFormatError: an unknown method or a missing / non-finite number.

        """
        if not isinstance(doc, dict):
            raise ModelFormatError("calibrator: must be an object")
        method = doc.get("method")
        if method == "sigmoid":
            return cls("sigmoid", coef=_number(doc, "coef"), intercept=_number(doc, "intercept"))
        if method == "isotonic":
            x, y = _numbers(doc, "x"), _numbers(doc, "y")
            if not x or len(x) != len(y) or any(b < a for a, b in zip(x, x[1:], strict=False)):
                raise ModelFormatError(
                    "calibrator: isotonic x and y must be non-empty, of equal length, "
                    "x non-decreasing"
                )
            return cls("isotonic", x=tuple(x), y=tuple(y))
        raise ModelFormatError(
            f"calibrator.method: must be one of {list(CALIBRATION_METHODS)}, got {method!r}"
        )


def _number(doc: dict[str, Any], key: str) -> float:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ModelFormatError(f"calibrator.{key}: must be a finite number, got {value!r}")
    return float(value)


def _numbers(doc: dict[str, Any], key: str) -> list[float]:
    values = doc.get(key)
    if not isinstance(values, list):
        raise ModelFormatError(f"calibrator.{key}: must be a list of numbers")
    return [_number({key: v}, key) for v in values]


@dataclass
class EngageModel:
    """A calibrated LightGBM binary classifier over a fixed, named feature list.

    Attributes:
        name: registry name (``churn``, ``appetence``).
        features: the inputs, in the order the booster expects them.
        booster: the LightGBM booster (trees up to the chosen iteration).
        calibrator: margin -> probability.
        trained_for: what the labels meant: ``horizon_days``, ``label_rule`` and its
            parameters, ``feature_service``. Scoring refuses params that contradict it.
        training: facts of the training run (split ranges, rows, trees, ...).
        kind: how it scores (``lightgbm``).

    """

    name: str
    features: list[str]
    booster: lgb.Booster
    calibrator: Calibrator
    trained_for: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    kind: str = "lightgbm"

    @property
    def feature_service(self) -> str:
        """The Feast FeatureService the model reads (training and serving alike)."""
        return str(self.trained_for.get("feature_service", ""))

    @property
    def horizon_days(self) -> int | None:
        """The label horizon the model was trained for (None if not recorded)."""
        h = self.trained_for.get("horizon_days")
        return None if h is None else int(h)

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

    def margin_matrix(self, x: np.ndarray) -> np.ndarray:
        """Raw log-odds for a float matrix whose columns are :attr:`features`, in order."""
        return self.booster.predict(x, raw_score=True)

    def proba_matrix(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for a float matrix whose columns are :attr:`features`."""
        return self.calibrator.transform(self.margin_matrix(x))

    def margin(self, X: pd.DataFrame) -> np.ndarray:
        """Raw log-odds of the booster (what SHAP contributions add up to)."""
        return self.margin_matrix(self.frame(X).to_numpy())

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


def write_model_dir(model: EngageModel, folder: Path) -> Path:
    """Write ``model.json`` and ``booster.txt`` into ``folder``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": FORMAT,
        "name": model.name,
        "kind": model.kind,
        "features": list(model.features),
        "calibrator": model.calibrator.to_dict(),
        "trained_for": model.trained_for,
        "training": model.training,
    }
    (folder / BOOSTER_TXT).write_text(model.booster.model_to_string())
    (folder / MODEL_JSON).write_text(json.dumps(doc, indent=2, sort_keys=True, allow_nan=False))
    return folder


def read_model_dir(folder: Path) -> EngageModel:
    """Read a model folder written by :func:`write_model_dir` (text and JSON only).

    Raises:
        ModelFormatError: a file is missing, the format is unknown, or a field is
            invalid (the message names the file and the field).

    """
    folder = Path(folder)
    path = folder / MODEL_JSON
    if not path.is_file():
        raise ModelFormatError(f"{path}: missing (not a model folder of this product)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFormatError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ModelFormatError(f"{path}: format must be {FORMAT!r}, got {got!r}")
    kind = doc.get("kind")
    if kind not in KINDS:
        raise ModelFormatError(f"{path}: kind must be one of {list(KINDS)}, got {kind!r}")
    features = doc.get("features")
    if (
        not isinstance(features, list)
        or not features
        or not all(isinstance(f, str) for f in features)
    ):
        raise ModelFormatError(f"{path}: features must be a non-empty list of names")
    for key in ("trained_for", "training"):
        if not isinstance(doc.get(key, {}), dict):
            raise ModelFormatError(f"{path}: {key} must be an object")
    booster_path = folder / BOOSTER_TXT
    if not booster_path.is_file():
        raise ModelFormatError(f"{booster_path}: missing")
    try:
        booster = lgb.Booster(model_str=booster_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, lgb.basic.LightGBMError) as err:
        raise ModelFormatError(f"{booster_path}: not a LightGBM text model ({err})") from None
    if booster.feature_name() != features:
        raise ModelFormatError(f"{booster_path}: its features differ from those of {path.name}")
    try:
        calibrator = Calibrator.from_dict(doc.get("calibrator"))
    except ModelFormatError as err:
        raise ModelFormatError(f"{path}: {err}") from None
    return EngageModel(
        name=str(doc.get("name", "")),
        features=features,
        booster=booster,
        calibrator=calibrator,
        trained_for=dict(doc.get("trained_for") or {}),
        training=dict(doc.get("training") or {}),
        kind=kind,
    )
