"""When, not only whether: the hazard champions' answers at any horizon, batch and online.

The fixed-horizon champions (:mod:`serving.champions`) decide the engagement index at
one horizon (``labels.horizon_days``, the *decision horizon*). The hazard models
(:mod:`training.hazard`) answer every horizon up to ``H_max`` from one fit. This module
holds the hazard champions that are present (:class:`Timing`: either may be missing, then
its columns are absent and :attr:`Timing.missing` says so) and one pure function,
:func:`timing_columns`, from a feature frame and a list of horizons to the timing
columns. Batch scoring (:mod:`serving.scoring`) and ``POST /predict``
(:mod:`serving.online`) both call it, so a contact gets the same numbers either way.

Columns (``h`` = each horizon in days; every probability names its horizon):

- appetence model, every contact: ``p_purchase_<h>d`` = P(a purchase within h days),
  non-decreasing in h; ``expected_purchases_<h>d`` = expected purchase days within h
  (the count model on the same rows; absent without one); ``days_to_purchase`` = the
  median predicted time to the next purchase (NaN = not within ``H_max``).
- churn model, customers only (NaN for prospects): ``p_churn_<h>d`` = P(no activity of
  ``labels.churn_activity_types`` within h days), the fixed churn label at horizon h,
  hence **non-increasing** in h (a longer window leaves more time to act);
  ``days_to_activity`` = the median predicted time to the next such activity (NaN = not
  within ``H_max``); ``days_to_churn`` (below).

**days_to_churn** (expected days to churn). The product calls a customer *lapsed*
(churned: outside the churn population, no longer on the at-risk list) once its latest
activity of the churn types is more than ``L = labels.churn_active_within_days`` days
old. A reachable customer last active ``r`` days before the as-of time therefore lapses
after ``d0 = L - r`` more days *unless it acts before*. The churn hazard model gives
``S(t)`` = P(no activity within t), so the lapse time ``T`` satisfies ``T >= d0`` always
and ``P(T = d0) = S(d0)``. Hence:

- ``S(d0) >= 1/2``: the median of ``T`` is exactly ``d0``: ``days_to_churn = d0``, the
  days left before the customer lapses, more likely than not without acting first;
- ``S(d0) < 1/2``: the customer is expected to act before its lapse date; the median of
  ``T`` lies beyond ``d0``, where the model (time to the *next* activity only) cannot
  place it: ``days_to_churn`` is NaN ("not expected to lapse at its next lapse date");
- a customer already past the line (lapsed) has ``days_to_churn = 0``;
- ``d0`` beyond ``H_max`` (a window longer than the followed time): NaN.

It is a median on the model's own curve (constant hazard inside a period, as
:func:`training.hazard.survival_at`), so ``S(days_to_churn) >= 1/2`` wherever it is set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from engage.config import Params, Paths
from engage.specs import MODEL_NAMES, model_spec
from features.catalog import recency_feature_of

if TYPE_CHECKING:
    from training.hazard import HazardModel

HALF = "has_purchased"
HORIZONS_FIELD = "horizons_days"


class HorizonError(ValueError):
    """Horizons that cannot be answered (the message names the field and the rule)."""


def check_horizons(horizons: Sequence[int], h_max_days: int) -> tuple[int, ...]:
    """Validate asked horizons: distinct whole days in ``1..h_max_days``, at least one.

    Returns:
        The horizons as a tuple, in the order given.

    Raises:
        HorizonError: names ``horizons_days``, the rule and how many values break it.

    """
    values = list(horizons)
    if not values:
        raise HorizonError(f"{HORIZONS_FIELD}: at least one horizon (0 given)")
    bad_type = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
    if bad_type:
        raise HorizonError(
            f"{HORIZONS_FIELD}: whole numbers of days only ({len(bad_type)} value(s), "
            f"e.g. {bad_type[:3]!r})"
        )
    out = [int(v) for v in values]
    beyond = [v for v in out if not 1 <= v <= h_max_days]
    if beyond:
        raise HorizonError(
            f"{HORIZONS_FIELD}: each must be in 1..{h_max_days} days (H_max, the time the "
            f"hazard models follow); {len(beyond)} value(s) outside: {beyond[:10]}"
        )
    dup = sorted({v for v in out if out.count(v) > 1})
    if dup:
        raise HorizonError(f"{HORIZONS_FIELD}: each horizon once; repeated: {dup[:10]}")
    return tuple(out)


@dataclass(frozen=True)
class Timing:
    """The hazard champions present, their identity and the lapse rule of days_to_churn.

    Attributes:
        models: ``appetence`` and / or ``churn`` -> fitted hazard model (read-only map).
        versions: registry version of each model present.
        digests: content digest of each model present (:meth:`HazardModel.digest`).
        horizons_days: the horizons scored by default (``hazard.horizons_days``).
        lapse_features: recency features of ``labels.churn_activity_types`` (days since
            the last activity of each type), what the lapse rule reads.
        lapse_days: ``labels.churn_active_within_days``.
        config_h_max_days: ``hazard.period_days x hazard.h_max_periods``, the bound of
            the horizons when no model is present.

    """

    models: Mapping[str, HazardModel]
    versions: Mapping[str, str]
    digests: Mapping[str, str]
    horizons_days: tuple[int, ...]
    lapse_features: tuple[str, ...]
    lapse_days: int
    config_h_max_days: int

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in MODEL_NAMES]
        if unknown:
            raise ValueError(f"timing models: must be among {list(MODEL_NAMES)}, got {unknown}")
        for name in ("models", "versions", "digests"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @classmethod
    def of(
        cls,
        models: Mapping[str, HazardModel],
        params: Params,
        versions: Mapping[str, str] | None = None,
    ) -> Timing:
        """The container for ``models`` under ``params`` (versions default to ``"?"``)."""
        labels = params.labels
        lapse = tuple(
            dict.fromkeys(
                recency_feature_of(t, params.data.conversion_event)
                for t in labels.churn_activity_types
            )
        )
        return cls(
            models=dict(models),
            versions={m: str((versions or {}).get(m, "?")) for m in models},
            digests={m: model.digest() for m, model in models.items()},
            horizons_days=tuple(params.hazard.horizons_days),
            lapse_features=lapse,
            lapse_days=int(labels.churn_active_within_days),
            config_h_max_days=params.hazard.period_days * params.hazard.h_max_periods,
        )

    @property
    def missing(self) -> tuple[str, ...]:
        """The hazard models with no champion here (their columns are absent)."""
        return tuple(m for m in MODEL_NAMES if m not in self.models)

    @property
    def identity(self) -> dict[str, str]:
        """Per model present: ``v<version> <period>dx<periods> <digest>`` (run ids hash it)."""
        return {
            m: f"v{self.versions.get(m, '?')} {model.period_days}dx{model.periods} "
            f"{self.digests[m]}"
            for m, model in sorted(self.models.items())
        }

    @property
    def h_max_days(self) -> int:
        """The longest horizon every present model answers (the config's without models)."""
        if not self.models:
            return self.config_h_max_days
        return min(m.h_max_days for m in self.models.values())

    @property
    def features(self) -> list[str]:
        """Every column :func:`timing_columns` reads, in a stable order."""
        cols = [f for m in self.models.values() for f in m.features]
        if "churn" in self.models:
            cols += list(self.lapse_features)
        return list(dict.fromkeys([HALF, *cols]))

    def columns(self, horizons: Sequence[int] | None = None) -> list[str]:
        """The names of the columns :func:`timing_columns` gives for ``horizons``."""
        hs = list(self.horizons_days if horizons is None else horizons)
        return [
            c for m in MODEL_NAMES if m in self.models for c in _model_columns(self.models[m], hs)
        ]

    def describe(self, horizons: Sequence[int] | None = None) -> dict:
        """What a scoring run records about its timing columns (JSON-ready)."""
        return {
            "horizons_days": list(self.horizons_days if horizons is None else horizons),
            "versions": dict(self.versions),
            "identity": self.identity,
            "h_max_days": self.h_max_days if self.models else None,
            "period_days": {m: model.period_days for m, model in self.models.items()},
            "missing": list(self.missing),
            "columns": self.columns(horizons),
            "lapse_days": self.lapse_days,
        }


def survival_at_days(hazards: np.ndarray, days: np.ndarray, period_days: int) -> np.ndarray:
    """``S(t_i)`` of row i at its own ``t_i = days[i]`` (0 <= t_i <= H_max).

    The curve of :func:`training.hazard.survival_at` (constant hazard inside a period),
    with one horizon per row; NaN where ``days`` is NaN.

    Raises:
        ValueError: a day count outside ``[0, H_max]`` or a row count mismatch.

    """
    from training.hazard import survival

    h = np.atleast_2d(np.asarray(hazards, dtype="float64"))
    t = np.asarray(days, dtype="float64")
    n, K = h.shape
    if t.shape != (n,):
        raise ValueError(f"days: {t.shape[0] if t.ndim else 1} values for {n} rows")
    ok = ~np.isnan(t)
    if ((t[ok] < 0) | (t[ok] > K * period_days + 1e-9)).any():
        bad = int(((t[ok] < 0) | (t[ok] > K * period_days + 1e-9)).sum())
        raise ValueError(f"days: {bad} row(s) outside [0, {K * period_days}]")
    s = np.hstack([np.ones((n, 1)), survival(h)])  # S(0)=1, S(1..K)
    m = np.where(ok, np.minimum(t / period_days, K), 0.0)
    full = np.floor(m + 1e-9).astype(int)
    frac = np.where(m - full > 1e-9, m - full, 0.0)
    rows = np.arange(n)
    nxt = h[rows, np.minimum(full, K - 1)]
    out = s[rows, full] * np.where(frac > 0, (1.0 - nxt) ** frac, 1.0)
    return np.where(ok, out, np.nan)


def days_to_churn(
    hazards: np.ndarray, recency: np.ndarray, lapse_days: int, period_days: int
) -> np.ndarray:
    """Median days until a customer lapses, from its activity hazards (module docstring).

    Args:
        hazards: the churn hazard model's hazards (n x K): next activity of the churn types.
        recency: days since the customer's latest activity of those types (NaN: never).
        lapse_days: ``labels.churn_active_within_days``.
        period_days: the hazard model's period.

    Returns:
        ``d0 = lapse_days - recency`` where ``S(d0) >= 1/2``; 0 for a lapsed customer
        (recency beyond the window, or never active); NaN where ``S(d0) < 1/2`` or ``d0``
        is beyond ``H_max``.

    """
    r = np.asarray(recency, dtype="float64")
    h = np.atleast_2d(np.asarray(hazards, dtype="float64"))
    h_max = h.shape[1] * period_days
    lapsed = np.isnan(r) | (r > lapse_days)
    d0 = np.where(lapsed, np.nan, lapse_days - np.where(np.isnan(r), 0.0, r))
    within = ~np.isnan(d0) & (d0 <= h_max + 1e-9)
    s = survival_at_days(h, np.where(within, d0, np.nan), period_days)
    out = np.where(within & (s >= 0.5), d0, np.nan)
    return np.where(lapsed, 0.0, out)


def timing_columns(
    frame: pd.DataFrame, timing: Timing, horizons: Sequence[int] | None = None
) -> pd.DataFrame:
    """The timing columns of every row of ``frame`` (one code path, batch and online).

    Args:
        frame: feature rows: ``has_purchased`` and :attr:`Timing.features`.
        timing: the hazard champions present.
        horizons: horizons in days (default: :attr:`Timing.horizons_days`), checked
            with :func:`check_horizons`.

    Returns:
        A frame aligned with ``frame`` holding :meth:`Timing.columns` (float64, NaN where
        a model does not score the row: churn columns for prospects).

    Raises:
        HorizonError: a horizon beyond ``H_max``, repeated, or not a whole day.
        ValueError: ``frame`` lacks a column (named, with the row count), or
            ``has_purchased`` is not 0 or 1.

    """
    from training.hazard import expected_count, median_days, prob_within

    hs = check_horizons(timing.horizons_days if horizons is None else horizons, timing.h_max_days)
    missing = [c for c in timing.features if c not in frame.columns]
    if missing:
        raise ValueError(f"timing: missing feature column(s) {missing[:10]} ({len(frame)} rows)")
    n = len(frame)
    out: dict[str, np.ndarray] = {}
    half = frame[HALF].to_numpy(dtype="float64", na_value=np.nan)
    bad = int(((half != 0.0) & (half != 1.0)).sum())
    if bad:
        raise ValueError(f"timing: {HALF} must be 0 or 1 ({bad} row(s))")
    for name in MODEL_NAMES:
        model = timing.models.get(name)
        if model is None:
            continue
        spec = model_spec(name)
        rows = np.ones(n, dtype=bool) if spec.scores_everyone else half == spec.half
        cols: dict[str, np.ndarray] = {c: np.full(n, np.nan) for c in _model_columns(model, hs)}
        if rows.any():
            # Only the model's own rows (a copy-free view when it scores them all).
            part = frame if rows.all() else frame.loc[rows]
            H = model.hazards(part)
            if name == "appetence":
                for h in hs:
                    cols[f"p_purchase_{h}d"][rows] = prob_within(H, h, model.period_days)
                if model.count_booster is not None:
                    R = model.rates(part)
                    for h in hs:
                        cols[f"expected_purchases_{h}d"][rows] = expected_count(
                            R, h, model.period_days
                        )
                cols["days_to_purchase"][rows] = median_days(H, model.period_days)
            else:
                for h in hs:
                    cols[f"p_churn_{h}d"][rows] = 1.0 - prob_within(H, h, model.period_days)
                cols["days_to_activity"][rows] = median_days(H, model.period_days)
                # The latest activity of any churn type (NaN recency: never did it).
                recency = part[list(timing.lapse_features)].to_numpy(
                    dtype="float64", na_value=np.nan
                )
                latest = np.where(np.isnan(recency), np.inf, recency).min(axis=1)
                latest[np.isinf(latest)] = np.nan
                cols["days_to_churn"][rows] = days_to_churn(
                    H, latest, timing.lapse_days, model.period_days
                )
        out.update(cols)
    # One frame built at once: inserting columns one by one costs more than the math.
    return pd.DataFrame(out, index=frame.index, columns=timing.columns(hs))


def _model_columns(model: HazardModel, hs: Sequence[int]) -> list[str]:
    if model.name == "appetence":
        cols = [f"p_purchase_{h}d" for h in hs]
        if model.count_booster is not None:
            cols += [f"expected_purchases_{h}d" for h in hs]
        return [*cols, "days_to_purchase"]
    return [*(f"p_churn_{h}d" for h in hs), "days_to_activity", "days_to_churn"]


def load_timing(paths: Paths, params: Params) -> Timing:
    """The hazard champions of the registry (either may be missing).

    The one place that reads hazard models from the registry
    (``training.registry.load_hazard_model``); everything else takes a :class:`Timing`.

    Raises:
        LookupError: the registry cannot be read (a missing champion is not an error:
            :attr:`Timing.missing` names it).

    """
    from training.registry import NoChampion, load_hazard_model

    models, versions = {}, {}
    for name in MODEL_NAMES:
        try:
            model, version = load_hazard_model(paths, name)
        except NoChampion:
            continue
        models[name], versions[name] = model, str(version)
    return Timing.of(models, params, versions)
