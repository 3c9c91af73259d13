"""The trained model and its stored form: text and JSON only, never a pickle.

:class:`EngageModel` maps a fixed, named list of snapshot features to a raw margin and,
through a calibrator, to a probability. Four kinds share that interface
(:meth:`EngageModel.proba_matrix`, :meth:`EngageModel.contributions_matrix`):

- ``lightgbm``: a LightGBM booster, optionally fed two model-side inputs computed from the
  snapshot features by BG/NBD (``btyd``: P(alive) and expected purchases over the
  horizon). Reasons: exact TreeSHAP.
- ``logistic``: a linear model of transformed features (signed log, median imputation
  with missing-value indicators, standardisation): the logistic regression baseline, and
  "recency alone" with a single feature. Reasons: exact linear SHAP,
  ``coef * (term(x) - mean term)``.
- ``rfm``: the RFM heuristic as a model: the mean of the percentile ranks of recency,
  frequency and monetary value against the training rows (stored empirical CDFs), a
  linear score, so its reasons are exact linear SHAP too.
- ``bgnbd``: BG/NBD's probability of at least one purchase within the horizon, from its
  four parameters and the contact's frequency, recency and age derived from the snapshot
  (:func:`btyd_summary`). Reasons: exact Shapley values of its three inputs against a
  reference contact (the training medians), 8 evaluations per row.

A model is stored as a folder: ``model.json`` (format, name, kind, features, calibrator,
the kind's parameters, ``trained_for`` and training facts) and, for ``lightgbm`` only,
``booster.txt`` (LightGBM's own text model). Loading (:func:`read_model_dir`) reads these
files and nothing else: no code in the artifact runs and nothing is unpickled, so a
tampered model store cannot execute code in the scorer or the service. This module
imports only numpy, pandas, scipy, lightgbm and the standard library, because MLflow
ships it inside every logged model (``code_paths``) for ``mlflow.pyfunc.load_model``
(see ``training/pyfunc_entry.py``). Fitting lives in :mod:`training.fit`,
:mod:`training.baselines` and :mod:`training.btyd`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.special import expit, hyp2f1

FORMAT = "engage-model/1"
MODEL_JSON = "model.json"
BOOSTER_TXT = "booster.txt"
KINDS = ("lightgbm", "logistic", "rfm", "bgnbd")
CALIBRATION_METHODS = ("sigmoid", "isotonic")
TRANSFORMS = ("slog", "ecdf", "identity")
# The snapshot features BG/NBD reads: frequency, recency and age (see btyd_summary).
BTYD_FEATURES = ("purchases_total", "days_since_last_purchase", "tenure_days")
_MARGIN_CLIP = 1e-12  # probabilities are clipped this far from 0 and 1 before a logit


class ModelFormatError(ValueError):
    """A stored model is missing a file, has an unknown format or an invalid field."""


class FeatureMismatchError(ValueError):
    """The input lacks features the model was trained on (or they are not numeric)."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _MARGIN_CLIP, 1.0 - _MARGIN_CLIP)
    return np.log(p) - np.log1p(-p)


# ----------------------------------------------------------------------------- checks


def _number(doc: dict[str, Any], key: str, where: str = "calibrator") -> float:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ModelFormatError(f"{where}.{key}: must be a finite number, got {value!r}")
    return float(value)


def _numbers(doc: dict[str, Any], key: str, where: str = "calibrator") -> list[float]:
    values = doc.get(key)
    if not isinstance(values, list):
        raise ModelFormatError(f"{where}.{key}: must be a list of numbers")
    return [_number({key: v}, key, where) for v in values]


def _positive(doc: dict[str, Any], key: str, where: str) -> float:
    value = _number(doc, key, where)
    if value <= 0:
        raise ModelFormatError(f"{where}.{key}: must be positive, got {value!r}")
    return value


# ------------------------------------------------------------------------- calibrator


@dataclass(frozen=True)
class Calibrator:
    """Maps a model's raw margin to a calibrated probability.

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


# ----------------------------------------------------------------------------- BG/NBD


@dataclass(frozen=True)
class BGNBD:
    """BG/NBD parameters (Fader, Hardie & Lee 2005) and the horizon they are read over.

    Time is in days. ``r, alpha``: the Gamma prior of the purchase rate; ``a, b``: the
    Beta prior of the drop-out probability after each purchase. Fitted by
    :func:`training.btyd.fit_bgnbd`.
    """

    r: float
    alpha: float
    a: float
    b: float
    horizon_days: float

    def p_alive(self, x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray) -> np.ndarray:
        """P(still alive | x repeat purchases, last at t_x, observed for T days).

        ``1 / (1 + [x > 0] * a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x))``,
        in logs so that long histories do not overflow.
        """
        x, t_x, big_t = (np.asarray(v, dtype="float64") for v in (x, t_x, big_t))
        bought = x > 0
        safe_b = np.where(bought, self.b + x - 1.0, 1.0)
        log_odds_dead = (
            np.log(self.a)
            - np.log(safe_b)
            + (self.r + x) * (np.log(self.alpha + big_t) - np.log(self.alpha + t_x))
        )
        return np.where(bought, expit(-log_odds_dead), 1.0)

    def prob_any(self, x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray) -> np.ndarray:
        """P(at least one purchase in the next ``horizon_days`` | x, t_x, T).

        A contact buys only while alive and can drop out only right after a purchase, so
        no purchase in ``(T, T + t]`` means dead, or alive without a Poisson event. Given
        alive, the purchase rate is Gamma(r + x, alpha + T), whose Laplace transform gives
        ``P(0 | alive) = ((alpha + T) / (alpha + T + t)) ** (r + x)``.
        """
        x, big_t = np.asarray(x, dtype="float64"), np.asarray(big_t, dtype="float64")
        none = np.exp(
            (self.r + x)
            * (np.log(self.alpha + big_t) - np.log(self.alpha + big_t + self.horizon_days))
        )
        return self.p_alive(x, t_x, big_t) * (1.0 - none)

    def expected(self, x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray) -> np.ndarray:
        """Expected purchases in the next ``horizon_days`` | x, t_x, T (BG/NBD eq. 10).

        ``(a + b + x - 1) / (a - 1) * [1 - ((alpha + T) / (alpha + T + t)) ** (r + x) *
        2F1(r + x, b + x; a + b + x - 1; t / (alpha + T + t))] * P(alive)``; a
        non-finite value (the series diverges for extreme parameters) becomes NaN, which
        LightGBM treats as missing.
        """
        x, t_x, big_t = (np.asarray(v, dtype="float64") for v in (x, t_x, big_t))
        t = self.horizon_days
        a = self.a if abs(self.a - 1.0) > 1e-9 else 1.0 + 1e-9
        c = a + self.b + x - 1.0
        ratio = np.exp((self.r + x) * (np.log(self.alpha + big_t) - np.log(self.alpha + big_t + t)))
        with np.errstate(all="ignore"):
            f = hyp2f1(self.r + x, self.b + x, c, t / (self.alpha + big_t + t))
            out = c / (a - 1.0) * (1.0 - ratio * f) * self.p_alive(x, t_x, big_t)
        return np.where(np.isfinite(out), out, np.nan)

    def to_dict(self) -> dict[str, float]:
        """JSON-ready form."""
        return {
            "r": self.r,
            "alpha": self.alpha,
            "a": self.a,
            "b": self.b,
            "horizon_days": self.horizon_days,
        }

    @classmethod
    def from_dict(cls, doc: Any, where: str = "bgnbd") -> BGNBD:
        """Read :meth:`to_dict` back; every parameter must be a positive finite number.

        Raises:
            ModelFormatError: a missing, non-finite or non-positive parameter.

        """
        if not isinstance(doc, dict):
            raise ModelFormatError(f"{where}: must be an object")
        keys = ("r", "alpha", "a", "b", "horizon_days")
        return cls(**{k: _positive(doc, k, where) for k in keys})


def btyd_summary(
    purchases_total: np.ndarray, days_since_last_purchase: np.ndarray, tenure_days: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BG/NBD's (x, t_x, T) of each contact from its snapshot features, in days.

    The clock starts when the contact is first seen (``tenure_days`` = T), so prospects
    and customers share one model: x = purchases so far (0 for a prospect), t_x = the age
    at the last purchase (``T - days_since_last_purchase``, 0 without a purchase). A
    missing tenure counts as 0 days and a missing purchase count as 0.
    """
    x = np.nan_to_num(np.asarray(purchases_total, dtype="float64"), nan=0.0).clip(min=0.0)
    big_t = np.nan_to_num(np.asarray(tenure_days, dtype="float64"), nan=0.0).clip(min=0.0)
    since = np.asarray(days_since_last_purchase, dtype="float64")
    t_x = np.where((x > 0) & ~np.isnan(since), np.clip(big_t - since, 0.0, big_t), 0.0)
    return x, t_x, big_t


# ----------------------------------------------------------------------------- linear


@dataclass(frozen=True)
class LinearTerm:
    """One feature's additive term of a linear margin.

    The value ``v`` is transformed (``slog``: sign(v) log(1 + |v|); ``ecdf``: the
    training empirical CDF through the points ``(grid_x, grid_y)``, clamped at the ends;
    ``identity``), a missing value replaced by ``fill`` (after the transform for
    ``slog``/``identity``, before it for ``ecdf``), then
    ``term = coef * (z - mean) / scale + missing_coef * (isnan(v) - missing_mean) /
    missing_scale``. ``term_mean`` is the term's mean over the training rows (the SHAP
    reference).
    """

    feature: int
    transform: str
    fill: float
    coef: float
    mean: float = 0.0
    scale: float = 1.0
    missing_coef: float = 0.0
    missing_mean: float = 0.0
    missing_scale: float = 1.0
    term_mean: float = 0.0
    grid_x: tuple[float, ...] = ()
    grid_y: tuple[float, ...] = ()

    def values(self, v: np.ndarray) -> np.ndarray:
        """The term for a column of raw values."""
        v = np.asarray(v, dtype="float64")
        missing = np.isnan(v)
        if self.transform == "ecdf":
            z = np.interp(np.where(missing, self.fill, v), self.grid_x, self.grid_y)
        else:
            z = np.sign(v) * np.log1p(np.abs(v)) if self.transform == "slog" else v
            z = np.where(missing, self.fill, z)
        out = self.coef * (z - self.mean) / self.scale
        if self.missing_coef:
            out = out + self.missing_coef * (missing - self.missing_mean) / self.missing_scale
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        doc = {
            "feature": self.feature,
            "transform": self.transform,
            "fill": self.fill,
            "coef": self.coef,
            "mean": self.mean,
            "scale": self.scale,
            "missing_coef": self.missing_coef,
            "missing_mean": self.missing_mean,
            "missing_scale": self.missing_scale,
            "term_mean": self.term_mean,
        }
        if self.transform == "ecdf":
            doc.update(grid_x=list(self.grid_x), grid_y=list(self.grid_y))
        return doc

    @classmethod
    def from_dict(cls, doc: Any, n_features: int, where: str) -> LinearTerm:
        """Read :meth:`to_dict` back, checking every field.

        Raises:
            ModelFormatError: names the term and the field.

        """
        if not isinstance(doc, dict):
            raise ModelFormatError(f"{where}: must be an object")
        feature = doc.get("feature")
        if (
            isinstance(feature, bool)
            or not isinstance(feature, int)
            or not (0 <= feature < n_features)
        ):
            raise ModelFormatError(
                f"{where}.feature: must be a feature index in [0, {n_features}), got {feature!r}"
            )
        transform = doc.get("transform")
        if transform not in TRANSFORMS:
            raise ModelFormatError(
                f"{where}.transform: must be one of {list(TRANSFORMS)}, got {transform!r}"
            )
        numbers = {
            k: _number(doc, k, where)
            for k in (
                "fill",
                "coef",
                "mean",
                "scale",
                "missing_coef",
                "missing_mean",
                "missing_scale",
                "term_mean",
            )
        }
        for k in ("scale", "missing_scale"):
            if numbers[k] == 0:
                raise ModelFormatError(f"{where}.{k}: must not be 0")
        grid_x: list[float] = []
        grid_y: list[float] = []
        if transform == "ecdf":
            grid_x, grid_y = _numbers(doc, "grid_x", where), _numbers(doc, "grid_y", where)
            if (
                not grid_x
                or len(grid_x) != len(grid_y)
                or any(b <= a for a, b in zip(grid_x, grid_x[1:], strict=False))
                or any(b < a for a, b in zip(grid_y, grid_y[1:], strict=False))
            ):
                raise ModelFormatError(
                    f"{where}: grid_x and grid_y must be non-empty, of equal length, grid_x "
                    "increasing and grid_y non-decreasing"
                )
        return cls(
            feature=feature,
            transform=transform,
            grid_x=tuple(grid_x),
            grid_y=tuple(grid_y),
            **numbers,
        )


@dataclass(frozen=True)
class Linear:
    """A margin that is a sum of one-feature terms: ``intercept + sum of terms``."""

    intercept: float
    terms: tuple[LinearTerm, ...]

    def term_matrix(self, x: np.ndarray, n_features: int) -> np.ndarray:
        """Each feature's summed terms (rows x features); features without a term are 0."""
        out = np.zeros((x.shape[0], n_features))
        for term in self.terms:
            out[:, term.feature] += term.values(x[:, term.feature])
        return out

    def term_means(self, n_features: int) -> np.ndarray:
        """Each feature's summed term means (the SHAP reference)."""
        out = np.zeros(n_features)
        for term in self.terms:
            out[term.feature] += term.term_mean
        return out

    def margin(self, x: np.ndarray) -> np.ndarray:
        """The margin of each row of ``x`` (columns: the model's features)."""
        out = np.full(x.shape[0], self.intercept)
        for term in self.terms:
            out += term.values(x[:, term.feature])
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"intercept": self.intercept, "terms": [t.to_dict() for t in self.terms]}

    @classmethod
    def from_dict(cls, doc: Any, n_features: int, where: str = "linear") -> Linear:
        """Read :meth:`to_dict` back, checking every term.

        Raises:
            ModelFormatError: names the field.

        """
        if not isinstance(doc, dict):
            raise ModelFormatError(f"{where}: must be an object")
        terms = doc.get("terms")
        if not isinstance(terms, list) or not terms:
            raise ModelFormatError(f"{where}.terms: must be a non-empty list")
        return cls(
            intercept=_number(doc, "intercept", where),
            terms=tuple(
                LinearTerm.from_dict(t, n_features, f"{where}.terms[{i}]")
                for i, t in enumerate(terms)
            ),
        )


# ------------------------------------------------------------------------------ model


@dataclass
class EngageModel:
    """A calibrated binary classifier over a fixed, named list of snapshot features.

    Attributes:
        name: registry name (``churn``, ``appetence``).
        features: the snapshot features it reads, in order (the columns of the matrices
            :meth:`proba_matrix` and :meth:`contributions_matrix` take).
        booster: the LightGBM booster (kind ``lightgbm``; trees up to the chosen
            iteration), else None.
        calibrator: margin -> probability.
        trained_for: what the labels meant: ``horizon_days``, ``label_rule`` and its
            parameters, ``population``, ``feature_service``. Scoring refuses params that
            contradict it.
        training: facts of the training run (split ranges, rows, trees, refit, feature
            ranges, ...).
        kind: ``lightgbm``, ``logistic``, ``rfm`` or ``bgnbd``.
        linear: the linear margin (kinds ``logistic`` and ``rfm``).
        btyd: BG/NBD parameters: the model itself (kind ``bgnbd``) or the source of two
            model-side inputs of a ``lightgbm`` booster (see :attr:`derived`).
        derived: names of the model-side inputs appended after :attr:`features` for the
            booster (BG/NBD P(alive) and expected purchases), empty without them.
        reference: the reference contact of a ``bgnbd`` model's Shapley reasons (one
            value per feature).

    """

    name: str
    features: list[str]
    booster: lgb.Booster | None
    calibrator: Calibrator
    trained_for: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    kind: str = "lightgbm"
    linear: Linear | None = None
    btyd: BGNBD | None = None
    derived: list[str] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)

    @property
    def feature_service(self) -> str:
        """The Feast FeatureService the model reads (training and serving alike)."""
        return str(self.trained_for.get("feature_service", ""))

    def digest(self) -> str:
        """A hash of what decides the model's answers (not of its training facts).

        Kind, features, trees, calibrator, linear and BG/NBD parts, and what it was
        trained for (horizon, label rule): two models that answer alike have the same
        digest whatever their registry versions; a change in any of these changes it.
        """
        doc = {
            "kind": self.kind,
            "features": list(self.features),
            "calibrator": self.calibrator.to_dict(),
            "trained_for": self.trained_for,
            "linear": self.linear.to_dict() if self.linear is not None else None,
            "btyd": self.btyd.to_dict() if self.btyd is not None else None,
            "derived": list(self.derived),
            "reference": list(self.reference),
        }
        h = hashlib.sha1(json.dumps(doc, sort_keys=True, default=str).encode())
        if self.booster is not None:
            h.update(self.booster.model_to_string().encode())
        return h.hexdigest()[:12]

    @property
    def horizon_days(self) -> int | None:
        """The label horizon the model was trained for (None if not recorded)."""
        h = self.trained_for.get("horizon_days")
        return None if h is None else int(h)

    @property
    def input_names(self) -> list[str]:
        """What the contributions are over: the features, then the derived inputs."""
        return [*self.features, *self.derived]

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

    def _btyd_columns(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = [self.features.index(f) for f in BTYD_FEATURES]
        return btyd_summary(x[:, idx[0]], x[:, idx[1]], x[:, idx[2]])

    def inputs_matrix(self, x: np.ndarray) -> np.ndarray:
        """``x`` (columns: :attr:`features`) with the derived inputs appended."""
        if not self.derived:
            return x
        summary = self._btyd_columns(x)
        extra = np.column_stack([self.btyd.p_alive(*summary), self.btyd.expected(*summary)])
        return np.hstack([x, extra])

    def inputs_frame(self, X: pd.DataFrame) -> pd.DataFrame:
        """:meth:`inputs_matrix` of a frame, as a frame named by :attr:`input_names`."""
        x = self.frame(X).to_numpy(dtype="float64")
        return pd.DataFrame(self.inputs_matrix(x), columns=self.input_names, index=X.index)

    def margin_matrix(self, x: np.ndarray) -> np.ndarray:
        """Raw margin for a float matrix whose columns are :attr:`features`, in order."""
        x = np.asarray(x, dtype="float64")
        if self.kind == "lightgbm":
            return self.booster.predict(self.inputs_matrix(x), raw_score=True)
        if self.kind in ("logistic", "rfm"):
            return self.linear.margin(x)
        if self.kind == "bgnbd":
            return _logit(self.btyd.prob_any(*self._btyd_columns(x)))
        raise ModelFormatError(f"kind: unknown kind {self.kind!r}")

    def proba_matrix(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for a float matrix whose columns are :attr:`features`."""
        return self.calibrator.transform(self.margin_matrix(x))

    def margin(self, X: pd.DataFrame) -> np.ndarray:
        """Raw margin (what the contributions add up to with the base value)."""
        return self.margin_matrix(self.frame(X).to_numpy())

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated probability of the positive class, in [0, 1]."""
        return self.calibrator.transform(self.margin(X))

    def contributions_matrix(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact SHAP contributions (rows x :attr:`input_names`) and the base value per row.

        Each row's contributions plus its base value equal its margin: TreeSHAP
        (LightGBM's ``pred_contrib``) for ``lightgbm``; ``term - mean term`` for the
        linear kinds (exact for a sum of one-feature terms); for ``bgnbd``, Shapley values
        of its three inputs against :attr:`reference`, computed over all 8 coalitions.
        """
        x = np.asarray(x, dtype="float64")
        n, k = x.shape[0], len(self.features)
        if self.kind == "lightgbm":
            out = self.booster.predict(self.inputs_matrix(x), pred_contrib=True)
            return out[:, :-1], out[:, -1]
        if self.kind in ("logistic", "rfm"):
            means = self.linear.term_means(k)
            contrib = self.linear.term_matrix(x, k) - means
            return contrib, np.full(n, self.linear.intercept + means.sum())
        if self.kind == "bgnbd":
            return self._shapley(x)
        raise ModelFormatError(f"kind: unknown kind {self.kind!r}")

    def _shapley(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = len(self.features)
        ref = np.asarray(self.reference, dtype="float64")
        values: dict[frozenset, np.ndarray] = {}
        for size in range(k + 1):
            for subset in combinations(range(k), size):
                mixed = np.repeat(ref[None, :], len(x), axis=0)
                mixed[:, list(subset)] = x[:, list(subset)]
                values[frozenset(subset)] = self.margin_matrix(mixed)
        contrib = np.zeros_like(x)
        for i in range(k):
            others = [j for j in range(k) if j != i]
            for size in range(k):
                weight = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
                for subset in combinations(others, size):
                    s = frozenset(subset)
                    contrib[:, i] += weight * (values[s | {i}] - values[s])
        return contrib, values[frozenset()]

    def contributions(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`contributions_matrix` of the rows of a frame (any column order)."""
        return self.contributions_matrix(self.frame(X).to_numpy())

    def feature_ranges(self) -> dict[str, tuple[float, float]]:
        """The [min, max] of each feature over the rows it was fitted on (if recorded)."""
        ranges = self.training.get("feature_ranges") or {}
        return {f: (float(lo), float(hi)) for f, (lo, hi) in ranges.items() if f in self.features}

    def out_of_range(self, x: np.ndarray) -> dict[str, int]:
        """Rows of ``x`` (columns: :attr:`features`) outside each feature's training range.

        Only features with at least one such row are returned; missing values are never
        out of range.
        """
        out = {}
        x = np.asarray(x, dtype="float64")
        for name, (lo, hi) in self.feature_ranges().items():
            col = x[:, self.features.index(name)]
            with np.errstate(invalid="ignore"):
                n = int(np.count_nonzero((col < lo) | (col > hi)))
            if n:
                out[name] = n
        return out


def feature_ranges(x: pd.DataFrame) -> dict[str, list[float]]:
    """[min, max] of each column's finite values (columns without any are left out)."""
    out = {}
    for name in x.columns:
        col = x[name].to_numpy(dtype="float64")
        col = col[np.isfinite(col)]
        if len(col):
            out[name] = [float(col.min()), float(col.max())]
    return out


# ---------------------------------------------------------------------------- storage


def write_model_dir(model: EngageModel, folder: Path) -> Path:
    """Write ``model.json`` (and ``booster.txt`` for LightGBM) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "name": model.name,
        "kind": model.kind,
        "features": list(model.features),
        "calibrator": model.calibrator.to_dict(),
        "trained_for": model.trained_for,
        "training": model.training,
    }
    if model.linear is not None:
        doc["linear"] = model.linear.to_dict()
    if model.btyd is not None:
        doc["btyd"] = model.btyd.to_dict()
    if model.derived:
        doc["derived"] = list(model.derived)
    if model.reference:
        doc["reference"] = list(model.reference)
    if model.kind == "lightgbm":
        (folder / BOOSTER_TXT).write_text(model.booster.model_to_string())
    (folder / MODEL_JSON).write_text(json.dumps(doc, indent=2, sort_keys=True, allow_nan=False))
    return folder


def _names(value: Any, label: str, path: Path, allow_empty: bool = False) -> list[str]:
    if (
        not isinstance(value, list)
        or (not value and not allow_empty)
        or not all(isinstance(f, str) for f in value)
    ):
        kind = "a list" if allow_empty else "a non-empty list"
        raise ModelFormatError(f"{path}: {label} must be {kind} of names")
    return value


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
    features = _names(doc.get("features"), "features", path)
    derived = _names(doc.get("derived", []), "derived", path, allow_empty=True)
    for key in ("trained_for", "training"):
        if not isinstance(doc.get(key, {}), dict):
            raise ModelFormatError(f"{path}: {key} must be an object")
    try:
        calibrator = Calibrator.from_dict(doc.get("calibrator"))
        btyd = BGNBD.from_dict(doc["btyd"], "btyd") if doc.get("btyd") is not None else None
        linear = (
            Linear.from_dict(doc["linear"], len(features)) if kind in ("logistic", "rfm") else None
        )
    except (ModelFormatError, KeyError) as err:
        raise ModelFormatError(f"{path}: {err}") from None
    if (kind == "bgnbd" or derived) and btyd is None:
        raise ModelFormatError(f"{path}: btyd: the {kind} model needs BG/NBD parameters")
    if (kind == "bgnbd" or derived) and not set(BTYD_FEATURES) <= set(features):
        raise ModelFormatError(f"{path}: features: BG/NBD needs {list(BTYD_FEATURES)}")
    if derived and len(derived) != 2:
        raise ModelFormatError(f"{path}: derived: BG/NBD gives 2 inputs, got {len(derived)}")
    reference: list[float] = []
    if kind == "bgnbd":
        try:
            reference = _numbers(doc, "reference", "reference")
        except ModelFormatError as err:
            raise ModelFormatError(f"{path}: {err}") from None
        if len(reference) != len(features):
            raise ModelFormatError(f"{path}: reference must hold one value per feature")
    booster = None
    if kind == "lightgbm":
        booster_path = folder / BOOSTER_TXT
        if not booster_path.is_file():
            raise ModelFormatError(f"{booster_path}: missing")
        try:
            booster = lgb.Booster(model_str=booster_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, lgb.basic.LightGBMError) as err:
            raise ModelFormatError(f"{booster_path}: not a LightGBM text model ({err})") from None
        if booster.feature_name() != [*features, *derived]:
            raise ModelFormatError(f"{booster_path}: its features differ from those of {path.name}")
    return EngageModel(
        name=str(doc.get("name", "")),
        features=features,
        booster=booster,
        calibrator=calibrator,
        trained_for=dict(doc.get("trained_for") or {}),
        training=dict(doc.get("training") or {}),
        kind=kind,
        linear=linear,
        btyd=btyd,
        derived=list(derived),
        reference=reference,
    )
