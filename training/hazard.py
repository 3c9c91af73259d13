"""Discrete-time hazard models: one LightGBM fit answers every horizon up to ``H_max``.

A training row (contact, as-of time, features strictly before it) is followed for
``hazard.h_max_periods`` periods of ``hazard.period_days`` days: period ``k`` is
``[as_of + (k - 1) P, as_of + k P)`` (the label window of :mod:`training.labels` starts
at the as-of time too, so features and labels never share an event). The
*person-period* frame has one row per contact, as-of time and period at risk, with the
period index ``k`` as one more feature:

- label 1 in the period of the first target event, 0 in the periods before it, and no
  row after it (the contact is no longer at risk of a *first* event);
- a period that ends after the observed end of the data is **censored**: it has no row
  at all, never a negative (we do not know whether the event happens in it), and
  neither do the periods after it.

The target event is the conversion event (purchase) for ``appetence`` and any event of
``labels.churn_activity_types`` for ``churn``, on the same populations as the
fixed-horizon models (:func:`training.labels.make_labels`). A LightGBM binary classifier
on these rows estimates the hazard ``h_k = P(event in period k | none before, x)``;
from it:

- survival ``S(k) = prod_{j <= k} (1 - h_j)``, non-increasing by construction;
- ``P(event within t days) = 1 - S(t / P)``, with a constant hazard inside a period for
  a horizon that is not a whole number of periods: ``S(k + f) = S(k) (1 - h_{k+1})^f``
  (exact at whole periods, monotone in ``t``);
- appetence at horizon t is ``P(purchase within t)``; churn at horizon t is
  ``S_activity(t)`` = no activity of the churn types within t, the fixed-horizon label;
- the median time to the event: the ``t`` where ``S(t) = 0.5`` on that same curve, or
  None ("not within ``H_max``") when ``S(H_max) > 0.5``.

The expected **number** of purchases within ``t`` comes from a second LightGBM with a
Poisson objective on the count frame (:func:`count_frame`): the same rows, periods and
censoring, but every period until the end of follow-up is kept (repeat purchases) and its
label is the number of purchase days in the period. ``E[N(t)] = sum_{k <= t/P} mu_k``
(the last period pro rata). A purchase day counts a contact's events of one date once,
as BG/NBD does.

The hazard booster's margin is Platt-calibrated on the validation person-period rows
(``training.calibration``, as the fixed-horizon models); the count model's rates are
scaled by observed / predicted event days on its validation rows. A fitted model is
stored as text and JSON (:func:`write_hazard_model`: ``model.json`` records the period,
``H_max`` and the horizons; the boosters are LightGBM text), and
:func:`horizon_columns` gives score columns that name their horizon
(``p_purchase_30d``, ``p_churn_90d``, ``expected_purchases_30d``, ``days_to_purchase``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from engage.config import HazardParams, LightGBMParams, Params, TrainingParams
from engage.schema import CUSTOMER_ID, EVENT_TIME, EVENT_TYPE
from engage.specs import MODEL_NAMES, model_spec
from features.catalog import ENTITY_KEY, TIMESTAMP
from training.fit import adapt_to_rows, fit_booster, fit_calibrator, lightgbm_params
from training.model import BGNBD, BTYD_FEATURES, Calibrator, ModelFormatError, btyd_summary
from training.progress import lightgbm_callbacks

PERIOD = "period"  # the period index k (1-based): a model input
# With ``training.btyd_inputs``: BG/NBD's expected purchases in period k and P(alive), two
# more inputs (as the fixed-horizon models get BG/NBD's probability and expectation).
BTYD_PERIOD = "btyd_period_expected"
BTYD_ALIVE = "btyd_p_alive"
BTYD_INPUTS = (BTYD_PERIOD, BTYD_ALIVE)
LABEL = "label"
FIRST_EVENT = "first_event_time"
DAY = pd.Timedelta(days=1)


# ------------------------------------------------------------------------------ targets


def target_event_types(params: Params, model: str) -> list[str]:
    """The event types whose first occurrence the hazard of ``model`` is about.

    ``appetence``: the conversion event; ``churn``: ``labels.churn_activity_types`` (the
    churn label of a horizon is "none of them within it", i.e. the survival).

    Raises:
        ValueError: unknown model.

    """
    rule = model_spec(model).label_rule
    if rule == "purchase_in_window":
        return [params.data.conversion_event]
    return list(params.labels.churn_activity_types)


def first_event_times(
    rows: pd.DataFrame, events: pd.DataFrame, event_types: Sequence[str]
) -> pd.Series:
    """Per row, the time of the contact's first event of ``event_types`` at or after as-of.

    Args:
        rows: ``customer_id`` and ``event_timestamp`` (the as-of time, UTC).
        events: ``customer_id``, ``event_type``, ``event_time`` (UTC).
        event_types: the target types.

    Returns:
        A Series aligned with ``rows`` (NaT when there is none in the events).

    Raises:
        ValueError: a required column is missing (named, with the frame).

    """
    _require(rows, (ENTITY_KEY, TIMESTAMP), "rows")
    _require(events, (CUSTOMER_ID, EVENT_TYPE, EVENT_TIME), "events")
    ev = events.loc[events[EVENT_TYPE].isin(list(event_types)), [CUSTOMER_ID, EVENT_TIME]]
    ev = ev.rename(columns={CUSTOMER_ID: ENTITY_KEY, EVENT_TIME: FIRST_EVENT})
    ev[FIRST_EVENT] = pd.to_datetime(ev[FIRST_EVENT], utc=True).astype("datetime64[ns, UTC]")
    left = rows[[ENTITY_KEY, TIMESTAMP]].copy()
    left[TIMESTAMP] = pd.to_datetime(left[TIMESTAMP], utc=True).astype("datetime64[ns, UTC]")
    left["_row"] = np.arange(len(left))
    # merge_asof "forward" finds the first event at or after the as-of time (an event at
    # the as-of time itself is a label input: features use events strictly before it).
    merged = pd.merge_asof(
        left.sort_values(TIMESTAMP),
        ev.sort_values(FIRST_EVENT),
        left_on=TIMESTAMP,
        right_on=FIRST_EVENT,
        by=ENTITY_KEY,
        direction="forward",
        allow_exact_matches=True,
    ).sort_values("_row")
    return pd.Series(merged[FIRST_EVENT].to_numpy(), index=rows.index, name=FIRST_EVENT)


def _require(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing columns {missing} ({len(frame)} rows)")


def _check_hazard_params(hp: HazardParams) -> None:
    if hp.period_days <= 0 or hp.h_max_periods <= 0:
        raise ValueError(
            f"hazard.period_days={hp.period_days}, hazard.h_max_periods={hp.h_max_periods}: "
            "both must be positive"
        )


# ------------------------------------------------------------------------------- frames


def person_period(
    rows: pd.DataFrame, first_event: pd.Series, end: pd.Timestamp, hp: HazardParams
) -> pd.DataFrame:
    """One row per (contact, as-of time, period at risk) with the first-event label.

    Args:
        rows: training rows: ``customer_id``, ``event_timestamp`` (as-of) and features.
        first_event: per row, the first target event at or after as-of (NaT: none
            observed), e.g. from :func:`first_event_times`.
        end: end of the observed data (exclusive), e.g.
            :func:`training.labels.observed_until`.
        hp: the ``hazard`` parameters.

    Returns:
        The columns of ``rows`` plus ``period`` (1..K) and ``label`` (0/1); rows ordered
        by input row, then period. Periods after the first event and periods ending
        after ``end`` (censored) have no row.

    Raises:
        ValueError: ``first_event`` not aligned with ``rows``, or an event before its
            as-of time (the count of rows is given).

    """
    _check_hazard_params(hp)
    as_of, first = _aligned(rows, first_event)
    end = _utc(end)
    p_ns = hp.period_days * DAY.value
    k = np.arange(1, hp.h_max_periods + 1)
    start_ns = as_of.asi8[:, None] + (k[None, :] - 1) * p_ns
    stop_ns = start_ns + p_ns
    has = ~pd.isna(first)
    first_ns = np.where(has, first.asi8, np.iinfo(np.int64).max)[:, None]
    # Observed: the whole period is before the end of the data. At risk: no event before
    # the period starts. The event period itself is observed once the event is seen,
    # but a period cut by the end of data would be kept only when it holds the event
    # (a positive) and never when it does not: that biases the hazard up, so it is
    # censored whatever it holds.
    observed = stop_ns <= end.value
    at_risk = first_ns >= start_ns
    keep = observed & at_risk
    label = (first_ns < stop_ns).astype(np.int8)
    r, c = np.nonzero(keep)
    out = rows.iloc[r].reset_index(drop=True)
    out[PERIOD] = k[c].astype(np.int16)
    out[LABEL] = label[r, c]
    return out


def count_frame(
    rows: pd.DataFrame, events: pd.DataFrame, end: pd.Timestamp, hp: HazardParams, event_type: str
) -> pd.DataFrame:
    """One row per (contact, as-of time, observed period) with the number of event days.

    Like :func:`person_period` but periods after an event are kept (repeat purchases) and
    ``label`` is the number of distinct UTC dates with an ``event_type`` event in the
    period. Censored periods (ending after ``end``) have no row.

    Raises:
        ValueError: a required column is missing.

    """
    _check_hazard_params(hp)
    _require(rows, (ENTITY_KEY, TIMESTAMP), "rows")
    _require(events, (CUSTOMER_ID, EVENT_TYPE, EVENT_TIME), "events")
    end = _utc(end)
    p_ns = hp.period_days * DAY.value
    K = hp.h_max_periods
    as_of = _ns(rows[TIMESTAMP])
    n_obs = np.clip((end.value - as_of.asi8) // p_ns, 0, K).astype(int)
    # Purchase days: a contact's events of one UTC date in one period count once (as
    # BG/NBD counts), and only those at or after the as-of time.
    ev = events.loc[events[EVENT_TYPE] == event_type, [CUSTOMER_ID, EVENT_TIME]]
    t = _ns(ev[EVENT_TIME])
    times = pd.DataFrame(
        {ENTITY_KEY: ev[CUSTOMER_ID].to_numpy(), "_t": t.asi8, "_day": t.floor("D").asi8}
    )
    left = pd.DataFrame({ENTITY_KEY: rows[ENTITY_KEY].to_numpy(), "_asof": as_of.asi8})
    left["_row"] = np.arange(len(rows))
    j = left.merge(times, on=ENTITY_KEY, how="inner")
    delta = j["_t"].to_numpy() - j["_asof"].to_numpy()
    kk = delta // p_ns  # 0-based period of the event
    ok = (delta >= 0) & (kk < n_obs[j["_row"].to_numpy()])
    hit = pd.DataFrame(
        {"r": j["_row"].to_numpy()[ok], "k": kk[ok], "d": j["_day"].to_numpy()[ok]}
    ).drop_duplicates()
    counts = np.zeros((len(rows), K), dtype=np.int32)
    np.add.at(counts, (hit["r"].to_numpy(), hit["k"].to_numpy().astype(int)), 1)
    mask = np.arange(K)[None, :] < n_obs[:, None]
    r, c = np.nonzero(mask)
    out = rows.iloc[r].reset_index(drop=True)
    out[PERIOD] = (c + 1).astype(np.int16)
    out[LABEL] = counts[r, c]
    return out


def expand_periods(rows: pd.DataFrame, features: Sequence[str], periods: int) -> pd.DataFrame:
    """The model inputs of every row at periods 1..``periods`` (row-major), for scoring."""
    X = rows[list(features)]
    out = X.iloc[np.repeat(np.arange(len(X)), periods)].reset_index(drop=True)
    out[PERIOD] = np.tile(np.arange(1, periods + 1, dtype=np.int16), len(X))
    return out


def add_btyd_inputs(pp: pd.DataFrame, bg: BGNBD, period_days: int) -> pd.DataFrame:
    """``pp`` (rows with ``period`` and the BG/NBD snapshot features) plus BG/NBD's inputs.

    ``btyd_period_expected`` = E[N(k P)] - E[N((k - 1) P)], the purchases BG/NBD expects in
    period k from the contact's (x, t_x, T) at its as-of time; ``btyd_p_alive``. A
    non-finite expectation (the series diverges for extreme parameters) stays NaN, which
    LightGBM treats as missing.

    Raises:
        ValueError: a BG/NBD snapshot feature or ``period`` is missing.

    """
    _require(pp, [*BTYD_FEATURES, PERIOD], "person-period rows")
    x, t_x, big_t = btyd_summary(*(pp[f].to_numpy(dtype="float64") for f in BTYD_FEATURES))
    k = pp[PERIOD].to_numpy(dtype="float64")
    # BGNBD.expected reads its horizon in numpy expressions: an array gives each row its own.
    upto = replace(bg, horizon_days=k * period_days).expected(x, t_x, big_t)
    before = replace(bg, horizon_days=(k - 1) * period_days).expected(x, t_x, big_t)
    out = pp.copy()
    out[BTYD_PERIOD] = (upto - before).astype("float32")
    out[BTYD_ALIVE] = bg.p_alive(x, t_x, big_t).astype("float32")
    return out


def _utc(t: pd.Timestamp) -> pd.Timestamp:
    t = pd.Timestamp(t).as_unit("ns")
    return t.tz_convert("UTC") if t.tz is not None else t.tz_localize("UTC")


def _ns(values: Any) -> pd.DatetimeIndex:
    # Nanoseconds whatever the unit of the input (Feast frames carry seconds): the
    # period arithmetic below works on integer nanoseconds.
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).as_unit("ns")


def _aligned(rows: pd.DataFrame, first_event: pd.Series) -> tuple[pd.DatetimeIndex, Any]:
    _require(rows, (ENTITY_KEY, TIMESTAMP), "rows")
    if len(first_event) != len(rows):
        raise ValueError(
            f"first_event: {len(first_event)} values for {len(rows)} rows; one per row"
        )
    as_of = _ns(rows[TIMESTAMP])
    first = _ns(pd.Series(first_event).to_numpy())
    early = (~pd.isna(first)) & (first.asi8 < as_of.asi8)
    if early.any():
        raise ValueError(
            f"first_event: {int(early.sum())} rows have their first event before their "
            "as-of time (the label window starts at the as-of time)"
        )
    return as_of, first


# ------------------------------------------------------------------------ curve algebra


def survival(hazards: np.ndarray) -> np.ndarray:
    """``S(k) = prod_{j <= k} (1 - h_j)`` per row (n x K); non-increasing in k.

    Raises:
        ValueError: a hazard outside [0, 1] or NaN (the count is given).

    """
    h = _hazards(hazards)
    return np.cumprod(1.0 - h, axis=1)


def _hazards(hazards: np.ndarray) -> np.ndarray:
    h = np.atleast_2d(np.asarray(hazards, dtype="float64"))
    bad = np.isnan(h) | (h < 0) | (h > 1)
    if bad.any():
        raise ValueError(f"hazards: {int(bad.sum())} values outside [0, 1] or NaN")
    return h


def _periods(horizon_days: float, period_days: int, K: int) -> float:
    m = float(horizon_days) / period_days
    if not (0 < m <= K + 1e-9):
        raise ValueError(
            f"horizon_days={horizon_days}: must be in (0, period_days x periods = "
            f"{period_days} x {K} = {period_days * K}] days"
        )
    return min(m, float(K))


def survival_at(hazards: np.ndarray, horizon_days: float, period_days: int) -> np.ndarray:
    """``S(t)`` at ``t = horizon_days`` per row, constant hazard inside a period.

    Raises:
        ValueError: a horizon beyond the periods of ``hazards``, or a bad hazard.

    """
    h = _hazards(hazards)
    m = _periods(horizon_days, period_days, h.shape[1])
    full = int(np.floor(m + 1e-9))
    frac = m - full if m - full > 1e-9 else 0.0
    s = np.cumprod(1.0 - h, axis=1)
    base = s[:, full - 1] if full > 0 else np.ones(len(h))
    if frac > 0:
        base = base * (1.0 - h[:, full]) ** frac
    return base


def prob_within(hazards: np.ndarray, horizon_days: float, period_days: int) -> np.ndarray:
    """``P(event within horizon_days) = 1 - S(horizon_days)`` per row."""
    return 1.0 - survival_at(hazards, horizon_days, period_days)


def median_days(hazards: np.ndarray, period_days: int) -> np.ndarray:
    """Days from the as-of time to the median of the predicted time to event, per row.

    On the curve of :func:`survival_at`: the ``t`` with ``S(t) = 0.5``, so
    ``prob_within(hazards, median) == 0.5``. NaN when ``S(H_max) > 0.5``: the event is
    not expected within ``H_max`` ("not within H_max").
    """
    h = _hazards(hazards)
    s = np.cumprod(1.0 - h, axis=1)
    n, K = h.shape
    crossed = s <= 0.5
    out = np.full(n, np.nan)
    rows = np.nonzero(crossed.any(axis=1))[0]
    k = crossed[rows].argmax(axis=1)  # 0-based index of the first period with S <= 0.5
    s_prev = np.where(k > 0, s[rows, np.maximum(k - 1, 0)], 1.0)
    hk = h[rows, k]
    # Inside period k: s_prev * (1 - h_k)^f = 0.5  =>  f = ln(0.5 / s_prev) / ln(1 - h_k).
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(hk >= 1.0, 0.0, np.log(0.5 / s_prev) / np.log1p(-np.minimum(hk, 1 - 1e-15)))
    f = np.where(hk >= 1.0, 0.0, np.clip(f, 0.0, 1.0))
    out[rows] = (k + f) * period_days
    return out


def expected_count(rates: np.ndarray, horizon_days: float, period_days: int) -> np.ndarray:
    """``E[N(t)] = sum_{k <= t / P} mu_k`` per row, the last period pro rata.

    Raises:
        ValueError: a negative or NaN rate, or a horizon beyond the periods.

    """
    mu = np.atleast_2d(np.asarray(rates, dtype="float64"))
    bad = np.isnan(mu) | (mu < 0)
    if bad.any():
        raise ValueError(f"rates: {int(bad.sum())} values negative or NaN")
    m = _periods(horizon_days, period_days, mu.shape[1])
    full = int(np.floor(m + 1e-9))
    frac = m - full if m - full > 1e-9 else 0.0
    out = mu[:, :full].sum(axis=1)
    if frac > 0:
        out = out + frac * mu[:, full]
    return out


# ---------------------------------------------------------------------------- the model


@dataclass
class HazardModel:
    """A fitted hazard model (and optional count model) of one product model.

    Attributes:
        name: ``appetence`` or ``churn``.
        features: input columns of a training row (``period`` is added).
        period_days: length of a period.
        periods: ``H_max`` in periods.
        horizons_days: the horizons scored by default (``hazard.horizons_days``).
        booster: LightGBM binary classifier of the first-event hazard.
        count_booster: LightGBM Poisson model of event days per period (None: not fitted).
        calibrator: maps the hazard booster's raw margin to the hazard (fitted on the
            validation person-period rows, like the fixed-horizon models' calibrator; a
            monotone map per period, so the survival curve stays monotone).
        count_scale: multiplies the count model's rates: observed / predicted event days
            on the validation rows.
        btyd: BG/NBD parameters behind the two BG/NBD inputs (None: no such inputs).
        training: facts of the fit (rows, trees).

    """

    name: str
    features: list[str]
    period_days: int
    periods: int
    horizons_days: tuple[int, ...]
    booster: lgb.Booster
    count_booster: lgb.Booster | None = None
    calibrator: Calibrator | None = None
    count_scale: float = 1.0
    btyd: BGNBD | None = None
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        """The boosters' input columns: the features, the period, BG/NBD's inputs."""
        return [*self.features, PERIOD, *(BTYD_INPUTS if self.btyd is not None else ())]

    @property
    def h_max_days(self) -> int:
        return self.period_days * self.periods

    def digest(self) -> str:
        """A hash of what decides the model's answers (not of its training facts).

        Name, features, period, ``H_max``, horizons, calibrator, count scale, BG/NBD
        inputs and both boosters: two models that answer alike have the same digest
        whatever their registry versions (as :meth:`training.model.EngageModel.digest`),
        so a scoring run id can follow the content.
        """
        doc = {
            "format": HAZARD_FORMAT,
            "name": self.name,
            "features": list(self.features),
            "period_days": self.period_days,
            "periods": self.periods,
            "horizons_days": list(self.horizons_days),
            "calibrator": self.calibrator.to_dict() if self.calibrator is not None else None,
            "count_scale": self.count_scale,
            "btyd": self.btyd.to_dict() if self.btyd is not None else None,
        }
        h = hashlib.sha1(json.dumps(doc, sort_keys=True, default=str).encode())
        h.update(self.booster.model_to_string().encode())
        if self.count_booster is not None:
            h.update(b"\0count\0" + self.count_booster.model_to_string().encode())
        return h.hexdigest()[:12]

    def _predict(
        self, booster: lgb.Booster, rows: pd.DataFrame, chunk: int, raw: bool = False
    ) -> np.ndarray:
        _require(rows, self.features, "rows")
        out = np.empty((len(rows), self.periods))
        for i in range(0, len(rows), chunk):
            part = rows.iloc[i : i + chunk]
            X = expand_periods(part, self.features, self.periods)
            if self.btyd is not None:
                X = add_btyd_inputs(X, self.btyd, self.period_days)
            pred = booster.predict(X[self.input_names], raw_score=raw)
            out[i : i + len(part)] = pred.reshape(len(part), self.periods)
        return out

    def hazards(self, rows: pd.DataFrame, chunk: int = 20_000) -> np.ndarray:
        """Hazard of every row at periods 1..K (n x K), calibrated when a calibrator is set."""
        if self.calibrator is None:
            return np.clip(self._predict(self.booster, rows, chunk), 0.0, 1.0)
        margin = self._predict(self.booster, rows, chunk, raw=True)
        return np.clip(self.calibrator.transform(margin), 0.0, 1.0)

    def rates(self, rows: pd.DataFrame, chunk: int = 20_000) -> np.ndarray:
        """Expected event days of every row in periods 1..K (n x K).

        Raises:
            ValueError: no count model was fitted.

        """
        if self.count_booster is None:
            raise ValueError(f"{self.name}: no count model (fit with counts)")
        return self.count_scale * self._predict(self.count_booster, rows, chunk)

    def event_probabilities(
        self, rows: pd.DataFrame, horizons_days: Sequence[float]
    ) -> dict[float, np.ndarray]:
        """``P(first target event within h)`` per horizon (appetence: purchase)."""
        h = self.hazards(rows)
        return {t: prob_within(h, t, self.period_days) for t in horizons_days}


def fit_hazard_booster(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    features: Sequence[str],
    tp: TrainingParams,
    objective: str = "binary",
    extra: Sequence[str] = (),
) -> lgb.Booster:
    """LightGBM on person-period (or count) rows, early-stopped on the valid rows.

    Uses :func:`training.fit.fit_booster` (same parameters and determinism as the
    fixed-horizon models); ``objective="poisson"`` fits the count model.

    Raises:
        ValueError: an unknown objective, or train / valid rows without a label or with
            a single class (binary).

    """
    if objective not in ("binary", "poisson"):
        raise ValueError(f"objective: must be 'binary' or 'poisson', got {objective!r}")
    cols = [*features, PERIOD, *extra]
    for name, part in (("train", train), ("valid", valid)):
        _require(part, [*cols, LABEL], f"{name} person-period rows")
        if objective == "binary" and part[LABEL].nunique() < 2:
            raise ValueError(
                f"{name} person-period rows: a single class in {len(part)} rows; "
                "need events and non-events"
            )
    ytr, yva = train[LABEL].to_numpy(), valid[LABEL].to_numpy()
    lgb_params = tp.lightgbm
    if objective == "binary" and tp.adapt_to_rows:
        lgb_params = adapt_to_rows(lgb_params, ytr)
    if objective == "binary":
        return fit_booster(train[cols], ytr, valid[cols], yva, lgb_params, tp.seed)
    return _fit_poisson(train[cols], ytr, valid[cols], yva, lgb_params, tp.seed)


def _fit_poisson(Xtr, ytr, Xva, yva, lgb_params: LightGBMParams, seed: int) -> lgb.Booster:
    # fit_booster's recipe (same parameters, determinism, trimmed to the best iteration)
    # with the Poisson objective and its deviance for early stopping.
    params = lightgbm_params(lgb_params, seed, None)
    params.update(objective="poisson", metric="poisson")
    tr = lgb.Dataset(Xtr, label=ytr, free_raw_data=False)
    va = lgb.Dataset(Xva, label=yva, reference=tr, free_raw_data=False)
    booster = lgb.train(
        params,
        tr,
        num_boost_round=lgb_params.n_estimators,
        valid_sets=[va],
        callbacks=[
            lgb.early_stopping(lgb_params.early_stopping_rounds, verbose=False),
            *lightgbm_callbacks(),
        ],
    )
    best = booster.best_iteration or booster.current_iteration()
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=best))


def btyd_inputs_fit(train_rows: pd.DataFrame, hp: HazardParams, tp: TrainingParams) -> BGNBD | None:
    """BG/NBD behind the two BG/NBD inputs, as the fixed models get it.

    One fit on the snapshot rows of the last training as-of time, over ``H_max``; None
    when ``training.btyd_inputs`` is off.
    """
    if not tp.btyd_inputs:
        return None
    from training.btyd import fit_on_snapshot
    from training.fit_evaluate import last_time_rows

    return fit_on_snapshot(last_time_rows(train_rows), hp.period_days * hp.h_max_periods, tp.seed)


def fit_hazard_model(
    name: str,
    features: Sequence[str],
    train_pp: pd.DataFrame,
    valid_pp: pd.DataFrame,
    hp: HazardParams,
    tp: TrainingParams,
    train_counts: pd.DataFrame | None = None,
    valid_counts: pd.DataFrame | None = None,
    btyd: BGNBD | None = None,
) -> HazardModel:
    """The hazard model (and the count model when count frames are given).

    Args:
        name: ``appetence`` or ``churn``.
        features: the feature columns of the rows.
        train_pp: person-period rows of the training as-of times (:func:`person_period`).
        valid_pp: person-period rows of the validation as-of times (early stopping).
        hp: ``hazard`` parameters.
        tp: ``training`` parameters (LightGBM, seed).
        train_counts: count rows of the training times (:func:`count_frame`), optional.
        valid_counts: count rows of the validation times.
        btyd: BG/NBD fitted on data before the validation times (e.g. by
            :func:`training.btyd.fit_on_snapshot` on the last training as-of time): its
            per-period expectation and P(alive) become two more inputs.

    Raises:
        ValueError: see :func:`fit_hazard_booster`; only one of the count frames given.

    """
    model_spec(name)
    if (train_counts is None) != (valid_counts is None):
        raise ValueError("train_counts / valid_counts: give both or neither")
    extra: tuple[str, ...] = ()
    if btyd is not None:
        extra = BTYD_INPUTS
        train_pp, valid_pp = (
            add_btyd_inputs(f, btyd, hp.period_days) for f in (train_pp, valid_pp)
        )
        if train_counts is not None:
            train_counts, valid_counts = (
                add_btyd_inputs(f, btyd, hp.period_days) for f in (train_counts, valid_counts)
            )
    booster = fit_hazard_booster(train_pp, valid_pp, features, tp, extra=extra)
    cols = [*features, PERIOD, *extra]
    calibrator = fit_calibrator(
        tp.calibration, booster.predict(valid_pp[cols], raw_score=True), valid_pp[LABEL]
    )
    count_booster, scale = None, 1.0
    if train_counts is not None:
        count_booster = fit_hazard_booster(
            train_counts, valid_counts, features, tp, objective="poisson", extra=extra
        )
        predicted = float(count_booster.predict(valid_counts[cols]).sum())
        if predicted > 0:
            scale = float(valid_counts[LABEL].sum()) / predicted
    return HazardModel(
        name=name,
        features=list(features),
        period_days=hp.period_days,
        periods=hp.h_max_periods,
        horizons_days=tuple(hp.horizons_days),
        booster=booster,
        count_booster=count_booster,
        calibrator=calibrator,
        count_scale=scale,
        btyd=btyd,
        training={
            "train_rows": len(train_pp),
            "valid_rows": len(valid_pp),
            "trees": booster.num_trees(),
            "count_trees": count_booster.num_trees() if count_booster is not None else None,
            "event_rate_per_period": float(train_pp[LABEL].mean()),
            "calibration": tp.calibration,
            "count_scale": scale,
        },
    )


# ------------------------------------------------------------------ scores and storage

HAZARD_FORMAT = "engage-hazard/1"
HAZARD_JSON = "model.json"
HAZARD_BOOSTER = "hazard_booster.txt"
COUNT_BOOSTER = "count_booster.txt"


def horizon_columns(
    model: HazardModel, rows: pd.DataFrame, horizons_days: Sequence[int] | None = None
) -> pd.DataFrame:
    """Score columns that name their horizon, one row per input row.

    appetence: ``p_purchase_<h>d`` (a purchase within h days), ``days_to_purchase``
    (median predicted time; NaN = not within ``H_max``) and, with a count model,
    ``expected_purchases_<h>d``. churn: ``p_churn_<h>d`` (no activity within h days) and
    ``days_to_activity`` (median time to the next activity of the churn types).

    Raises:
        ValueError: a horizon beyond ``H_max``, or rows without the model's features.

    """
    spec = model_spec(model.name)
    horizons = list(horizons_days or model.horizons_days)
    H = model.hazards(rows)
    out = pd.DataFrame(index=rows.index)
    for h in horizons:
        p_event = prob_within(H, h, model.period_days)
        out[f"{spec.probability}_{h}d"] = p_event if model.name != "churn" else 1.0 - p_event
    event = "purchase" if spec.label_rule == "purchase_in_window" else "activity"
    out[f"days_to_{event}"] = median_days(H, model.period_days)
    if model.count_booster is not None:
        R = model.rates(rows)
        for h in horizons:
            out[f"expected_purchases_{h}d"] = expected_count(R, h, model.period_days)
    return out


def write_hazard_model(model: HazardModel, folder: Path) -> Path:
    """Write ``model.json`` and the boosters as LightGBM text into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": HAZARD_FORMAT,
        "name": model.name,
        "features": list(model.features),
        "period_days": model.period_days,
        "periods": model.periods,
        "h_max_days": model.h_max_days,
        "horizons_days": list(model.horizons_days),
        "calibrator": model.calibrator.to_dict() if model.calibrator is not None else None,
        "count_scale": model.count_scale,
        "btyd": model.btyd.to_dict() if model.btyd is not None else None,
        "training": model.training,
    }
    (folder / HAZARD_BOOSTER).write_text(model.booster.model_to_string())
    if model.count_booster is not None:
        (folder / COUNT_BOOSTER).write_text(model.count_booster.model_to_string())
    (folder / HAZARD_JSON).write_text(json.dumps(doc, indent=2, sort_keys=True, allow_nan=False))
    return folder


def read_hazard_model(folder: Path) -> HazardModel:
    """Read a folder written by :func:`write_hazard_model` (text and JSON only).

    Raises:
        ModelFormatError: a file is missing, the format is unknown or a field is invalid
            (the message names the file and the field).

    """
    folder = Path(folder)
    path = folder / HAZARD_JSON
    if not path.is_file():
        raise ModelFormatError(f"{path}: missing (not a hazard model folder)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFormatError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != HAZARD_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ModelFormatError(f"{path}: format must be {HAZARD_FORMAT!r}, got {got!r}")
    features = doc.get("features")
    if (
        not isinstance(features, list)
        or not features
        or not all(isinstance(f, str) for f in features)
    ):
        raise ModelFormatError(f"{path}: features must be a non-empty list of names")
    ints = {}
    for key in ("period_days", "periods"):
        v = doc.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ModelFormatError(f"{path}: {key} must be a positive integer, got {v!r}")
        ints[key] = v
    horizons = doc.get("horizons_days")
    h_max = ints["period_days"] * ints["periods"]
    if (
        not isinstance(horizons, list)
        or not horizons
        or not all(isinstance(h, int) and 0 < h <= h_max for h in horizons)
    ):
        raise ModelFormatError(
            f"{path}: horizons_days must be a non-empty list of days in 1..{h_max}, "
            f"got {horizons!r}"
        )
    name = doc.get("name")
    if name not in MODEL_NAMES:
        raise ModelFormatError(f"{path}: name must be one of {list(MODEL_NAMES)}, got {name!r}")
    scale = doc.get("count_scale", 1.0)
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise ModelFormatError(f"{path}: count_scale must be a finite number >= 0")
    try:
        calibrator = (
            Calibrator.from_dict(doc["calibrator"]) if doc.get("calibrator") is not None else None
        )
        btyd = BGNBD.from_dict(doc["btyd"], "btyd") if doc.get("btyd") is not None else None
    except ModelFormatError as err:
        raise ModelFormatError(f"{path}: {err}") from None
    boosters = {}
    for key, fname, required in (("hazard", HAZARD_BOOSTER, True), ("count", COUNT_BOOSTER, False)):
        bpath = folder / fname
        if not bpath.is_file():
            if required:
                raise ModelFormatError(f"{bpath}: missing")
            boosters[key] = None
            continue
        try:
            booster = lgb.Booster(model_str=bpath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, lgb.basic.LightGBMError) as err:
            raise ModelFormatError(f"{bpath}: not a LightGBM text model ({err})") from None
        inputs = [*features, PERIOD, *(BTYD_INPUTS if btyd is not None else ())]
        if booster.feature_name() != inputs:
            raise ModelFormatError(f"{bpath}: its features differ from those of {path.name}")
        boosters[key] = booster
    return HazardModel(
        name=name,
        features=features,
        period_days=ints["period_days"],
        periods=ints["periods"],
        horizons_days=tuple(horizons),
        booster=boosters["hazard"],
        count_booster=boosters["count"],
        calibrator=calibrator,
        count_scale=float(scale),
        btyd=btyd,
        training=dict(doc.get("training") or {}),
    )
