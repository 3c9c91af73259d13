"""Real-data evaluation on CDNOW: who buys again in the 39-week holdout?

The classic split of Fader, Hardie & Lee (2005): 23,570 customers who first bought in
1997-01..03, a 39-week calibration period (1997-01-01 .. 1997-09-30) and a 39-week
holdout (1997-10-01 .. 1998-06-30). Every method sees the calibration period only and
predicts, for every customer, the probability of at least one purchase in the holdout.

The features are as of ``1997-10-01 00:00 UTC``: CDNOW events are stamped at 00:00 UTC
of their date and features use events strictly before the as-of time, so this as-of
includes all of 1997-09-30 and nothing of the holdout.

No peeking: the pipeline (features, labels, training, calibration, BG/NBD) runs on a copy
of the events cut at the end of the calibration period, so holdout events are not even
on disk where it looks; they are read back only to score the predictions.

Methods, all on the same customers:

- ``model``: our pipeline's time-to-event model. Features by
  :func:`features.aggregates.build_features`, retrieved point-in-time through Feast; a
  LightGBM discrete-time hazard model (:func:`evaluation.hazard.fit_purchase_hazard`)
  on weekly person-period rows of the as-of times before the calibration end (periods
  after it censored), calibrated on held-out customers. A 39-week label window cannot be
  observed inside the 39-week calibration period; the hazard model needs none: its
  probability of a purchase within 39 weeks is read off its own survival curve
  (:func:`fit_holdout_hazard`). The fixed-horizon LightGBM on "at least one purchase in
  the next 13 weeks" (the product's appetence recipe) is kept as a reference, as is
  and chained over the holdout.
- ``bgnbd``: BG/NBD (``lifetimes.BetaGeoFitter``) on the calibration summary; its
  probability of at least one holdout purchase is exact under the model (see
  :func:`bgnbd_prob_any`), and its expected number of holdout purchases is compared
  with the actual count.
- ``frequency``: the number of repeat purchase days in the calibration period (a rank).
- ``rfm``: the pipeline's RFM heuristic (:func:`training.baselines.rfm_score`, a rank).

A dress rehearsal runs the same methods inside the calibration period (calibration end
1997-07-02, 13-week holdout, 30-day labels for the fixed-horizon references) without
touching the real holdout.

    engage bench cdnow [--customers N]     (python -m benchmarks.bench_cdnow records it)
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import resource
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engage.config import DATA_DIR_ENV, PROJECT_ROOT, Params, Paths, load_params
from engage.data.cdnow import load_cdnow
from engage.data.io import write_customers, write_events
from engage.schema import CUSTOMER_ID, EVENT_TIME, FIRST_SEEN
from engage.specs import model_spec
from features.aggregates import build_features, snapshot_times
from features.catalog import ENTITY_KEY, SNAPSHOT_TIME, TIMESTAMP, model_feature_names
from features.snapshots import snapshot_glob
from features.store import apply_repo, get_store, historical_features
from training.baselines import rfm_score
from training.dataset import audit_against_events, check_feature_times, training_frame
from training.evaluate import probability_metrics, ranking_metrics
from training.fit import fit_booster, fit_engage_model
from training.hazard import HazardModel, prob_within
from training.labels import LABEL, label_definition
from training.model import EngageModel

MODEL = "appetence"
DAY = pd.Timedelta(days=1)
METHODS = ("model", "bgnbd", "frequency", "rfm")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Split:
    """A calibration / holdout split and the training horizon used inside it.

    Attributes:
        name: short key, also the sub-folder of the data directory.
        as_of: end of the calibration period, exclusive (features use events before it).
        holdout_days: the holdout is ``[as_of, as_of + holdout_days)``.
        horizon_days: label window of the training rows, ``(t, t + H]`` with
            ``t + H <= as_of``.

    """

    name: str
    as_of: pd.Timestamp
    holdout_days: int
    horizon_days: int

    @property
    def holdout_end(self) -> pd.Timestamp:
        return self.as_of + pd.Timedelta(days=self.holdout_days)

    @property
    def steps(self) -> float:
        """How many training horizons the holdout spans (3.0 on the real split)."""
        return self.holdout_days / self.horizon_days

    def step_times(self) -> list[pd.Timestamp]:
        """As-of times of the chained horizons: the calibration end, then every H days."""
        n = math.ceil(self.steps - 1e-9)
        return [self.as_of + pd.Timedelta(days=k * self.horizon_days) for k in range(n)]

    def step_weights(self) -> list[float]:
        """Exponent of each step's survival: 1 for full horizons, the fraction for the last."""
        n = len(self.step_times())
        return [1.0] * (n - 1) + [self.steps - (n - 1)]


# 39 weeks each: 1997-01-01 + 273 d = 1997-10-01, and 1997-10-01 + 273 d = 1998-07-01.
REAL = Split("holdout", pd.Timestamp("1997-10-01", tz="UTC"), 273, 91)
# Same shape inside the calibration period: holdout = 3 training horizons.
REHEARSAL = Split("rehearsal", pd.Timestamp("1997-07-02", tz="UTC"), 91, 30)


# ------------------------------------------------------------------------------ data


def sample_customers(
    events: pd.DataFrame, customers: pd.DataFrame, n: int | None, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A random subset of ``n`` customers with all their events (all when ``n`` is None)."""
    if n is None or n >= len(customers):
        return events, customers
    keep = customers.sample(n=n, random_state=seed)[CUSTOMER_ID]
    ev = events[events[CUSTOMER_ID].isin(keep)].reset_index(drop=True)
    cu = customers[customers[CUSTOMER_ID].isin(keep)].reset_index(drop=True)
    return ev, cu


def calibration_paths(data_dir: Path, params: Params) -> Paths:
    """Locations of the pipeline files of one split (events, features, Feast)."""
    # Absolute: Feast resolves relative registry paths against feature_repo/.
    data_dir = Path(data_dir).expanduser().resolve()
    return Paths(
        root=PROJECT_ROOT, data_dir=data_dir, mlruns_dir=data_dir / "mlruns", params=params
    )


def write_calibration_events(
    events: pd.DataFrame, as_of: pd.Timestamp, paths: Paths
) -> pd.DataFrame:
    """Write the events before ``as_of`` and the customers they define; returns the events.

    Customers are derived from these events only, so nothing about the holdout (not even
    who appears in it) reaches the pipeline.
    """
    cal = events[events[EVENT_TIME] < as_of].reset_index(drop=True)
    customers = (
        cal.groupby(CUSTOMER_ID, as_index=False)[EVENT_TIME]
        .min()
        .rename(columns={EVENT_TIME: FIRST_SEEN})
    )
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    write_events(cal, paths.events)
    write_customers(customers, paths.customers)
    return cal


def window_truth(
    events: pd.DataFrame, ids: pd.Index, start: pd.Timestamp, end: pd.Timestamp
) -> pd.DataFrame:
    """Per customer, in ``[start, end)``: bought (0/1), purchase days and purchase lines.

    Purchase days count a customer's lines of one date once, as BG/NBD does.
    """
    t = events[EVENT_TIME]
    window = events[(t >= start) & (t < end)]
    g = window.groupby(CUSTOMER_ID)
    out = pd.DataFrame(index=ids)
    out["days"] = g[EVENT_TIME].nunique().reindex(ids).fillna(0).astype(int)
    out["lines"] = g.size().reindex(ids).fillna(0).astype(int)
    out["bought"] = (out["days"] > 0).astype(int)
    return out


# ---------------------------------------------------------------------------- BG/NBD


def bgnbd_summary(
    events: pd.DataFrame, as_of: pd.Timestamp, ids: pd.Index, freq: str = "D"
) -> pd.DataFrame:
    """``frequency`` (repeat purchase periods), ``recency`` and ``T`` at ``as_of``.

    Built by ``lifetimes.utils.summary_data_from_transaction_data`` on the events before
    ``as_of``, the observation period ending on the day before ``as_of`` (the last
    calibration day); with ``freq="D"`` the lines of one customer and date are one
    purchase, as in the BG/NBD papers.
    """
    from lifetimes.utils import summary_data_from_transaction_data

    cal = events.loc[events[EVENT_TIME] < as_of, [CUSTOMER_ID, EVENT_TIME]]
    # lifetimes 0.11.3 predates pandas 2 and warns when it turns timezone-aware times
    # into periods: it gets naive UTC times instead.
    naive = cal.assign(**{EVENT_TIME: cal[EVENT_TIME].dt.tz_convert(None)})
    end = (as_of - DAY).tz_convert(None)
    summary = summary_data_from_transaction_data(
        naive, CUSTOMER_ID, EVENT_TIME, observation_period_end=end, freq=freq
    )
    return summary.reindex(ids)


def fit_bgnbd(summary: pd.DataFrame, penalizers: tuple[float, ...] = (0.0, 1e-3, 1e-2, 0.1)):
    """A ``lifetimes.BetaGeoFitter`` fitted on a calibration summary.

    The unpenalised fit comes first; when it does not converge (a small sample), the next
    penalizer in ``penalizers`` is tried.

    Raises:
        lifetimes.utils.ConvergenceError: no penalizer converged.

    """
    from lifetimes import BetaGeoFitter

    return fit_btyd(BetaGeoFitter, summary, penalizers)


def fit_btyd(fitter_class, summary: pd.DataFrame, penalizers: tuple[float, ...]):
    """A lifetimes fitter (BG/NBD, Pareto/NBD) on a calibration summary, penalizer fallback.

    Raises:
        lifetimes.utils.ConvergenceError: no penalizer converged.
        ValueError: ``penalizers`` is empty.

    """
    from lifetimes.utils import ConvergenceError

    for i, penalizer in enumerate(penalizers):
        try:
            # lifetimes prints scipy's whole result before raising on non-convergence;
            # autograd / scipy warn about overflows while the optimiser explores.
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore", RuntimeWarning)
                return fitter_class(penalizer_coef=penalizer).fit(
                    summary["frequency"], summary["recency"], summary["T"]
                )
        except ConvergenceError:
            if i == len(penalizers) - 1:
                raise
    raise ValueError("penalizers: empty")


def bgnbd_prob_any(fitter, summary: pd.DataFrame, periods: float) -> np.ndarray:
    """P(at least one purchase in the next ``periods`` | x, t_x, T) under BG/NBD.

    A customer buys only while alive and can only drop out right after a purchase, so
    no purchase in ``(T, T + t]`` means dead, or alive without a Poisson event. Given
    alive, the posterior purchase rate is Gamma(r + x, alpha + T), whose Laplace
    transform gives ``P(0 | alive) = ((alpha + T) / (alpha + T + t)) ** (r + x)``; hence
    ``P(>= 1) = P(alive) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x))``.
    (lifetimes 0.11.3 has no conditional probability of n purchases for BG/NBD.)
    """
    r, alpha = fitter.params_["r"], fitter.params_["alpha"]
    x, tx, big_t = (summary[c].to_numpy(float) for c in ("frequency", "recency", "T"))
    alive = np.asarray(fitter.conditional_probability_alive(x, tx, big_t), float)
    none_if_alive = ((alpha + big_t) / (alpha + big_t + periods)) ** (r + x)
    return alive * (1.0 - none_if_alive)


def bgnbd_expected(fitter, summary: pd.DataFrame, periods: float) -> np.ndarray:
    """Expected number of purchases (purchase periods) in the next ``periods``."""
    return np.asarray(
        fitter.conditional_expected_number_of_purchases_up_to_time(
            periods, summary["frequency"], summary["recency"], summary["T"]
        ),
        float,
    )


# ----------------------------------------------------------------------------- model


def _with_horizon(params: Params, days: int) -> Params:
    return params.model_copy(
        update={"labels": params.labels.model_copy(update={"horizon_days": days})}
    )


def valid_customers(ids: pd.Series, share: float, seed: int) -> pd.Series:
    # A stable hash per customer id: a customer is wholly in train or in valid, so the
    # overlapping label windows of one customer never straddle the two.
    h = pd.util.hash_pandas_object(ids.astype(str) + f"#{seed}", index=False).to_numpy()
    return pd.Series((h % 10_000) < share * 10_000, index=ids.index)


@dataclass
class TrainedHorizonModel:
    model: EngageModel
    train_rows: int
    valid_rows: int
    audited_rows: int
    label_as_of: list[pd.Timestamp]
    window_end_max: pd.Timestamp
    positive_rate: float
    best_iteration: int


def train_horizon_model(
    paths: Paths, params: Params, store, split: Split, valid_share: float = 0.25
) -> TrainedHorizonModel:
    """LightGBM + calibrator on "purchase in the next H days" inside the calibration period.

    Labels come from :func:`training.labels.make_labels` (through
    :func:`training.dataset.training_frame`) on the calibration-only events, so a label
    window ``(t, t + H]`` is kept only if it ends by the calibration end. A quarter of the
    customers (by a hash of their id) are held out: their rows at the last
    ``training.valid_snapshots`` as-of times, the nearest to the scoring date, stop the
    boosting and fit the calibrator; the other customers' rows at every as-of time train.

    Raises:
        training.dataset.LeakageError: a feature comes from at or after its as-of time.
        ValueError: a label window ends after the calibration end, or a class is missing.

    """
    tp = params.training
    frame = training_frame(paths, params, MODEL, store)
    check_feature_times(frame)
    features = model_feature_names(params)
    audited = audit_against_events(
        frame, paths.events, paths.customers, params, features, seed=tp.seed
    )
    horizon = pd.Timedelta(days=params.labels.horizon_days)
    times = sorted(pd.Timestamp(t) for t in frame[TIMESTAMP].unique())
    window_end = times[-1] + horizon
    if window_end > split.as_of:
        raise ValueError(f"a label window ends {window_end}, after {split.as_of}")
    in_valid = valid_customers(frame[ENTITY_KEY], valid_share, tp.seed)
    late = frame[TIMESTAMP].isin(times[-tp.valid_snapshots :])
    train, valid = frame[~in_valid], frame[in_valid & late]
    ytr, yva = train[LABEL].to_numpy(), valid[LABEL].to_numpy()
    for name, y in (("train", ytr), ("valid", yva)):
        if len(np.unique(y)) < 2:
            raise ValueError(f"cdnow {split.name}: the {name} rows have a single class")
    model = fit_engage_model(
        MODEL,
        features,
        train,
        ytr,
        valid,
        yva,
        tp,
        trained_for=label_definition(params, MODEL),
    )
    return TrainedHorizonModel(
        model=model,
        train_rows=len(train),
        valid_rows=len(valid),
        audited_rows=audited,
        label_as_of=times,
        window_end_max=window_end,
        positive_rate=float(frame[LABEL].mean()),
        best_iteration=model.booster.current_iteration(),
    )


def chained_probability(
    model: EngageModel, step_frames: list[pd.DataFrame], weights: list[float]
) -> np.ndarray:
    """P(at least one purchase over all steps), by the chain rule of survival.

    ``step_frames[k]`` holds the features at the k-th step's as-of time of a customer
    who has not bought since the calibration end (snapshots of the calibration events
    at later dates); the last step's survival is raised to its fraction of a horizon.
    """
    survival = np.ones(len(step_frames[0]))
    for frame, w in zip(step_frames, weights, strict=True):
        survival *= (1.0 - np.clip(model.predict_proba(frame), 0.0, 1.0)) ** w
    return 1.0 - survival


def label_ceiling(
    X: pd.DataFrame, y: np.ndarray, params: Params, folds: int = 5
) -> dict[str, float]:
    """Out-of-fold LightGBM trained on the holdout labels themselves: a ceiling, not a method.

    It peeks by design: it shows how well the calibration-period features can rank the
    holdout buyers at best, so a method's ROC-AUC can be read against it.
    """
    tp = params.training
    X = X.astype(float).reset_index(drop=True)

    def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        cut = int(len(train) * 0.8)
        fit, stop = train[:cut], train[cut:]
        booster = fit_booster(X.iloc[fit], y[fit], X.iloc[stop], y[stop], tp.lightgbm, tp.seed)
        return booster.predict(X.iloc[test])

    return ranking_metrics(y, _out_of_fold(X, y, fit_predict, tp.seed, folds))


def _out_of_fold(X: pd.DataFrame, y: np.ndarray, fit_predict, seed: int, folds: int) -> np.ndarray:
    """Stratified k-fold predictions: ``fit_predict(train_idx, test_idx)`` per fold."""
    from sklearn.model_selection import StratifiedKFold

    oof = np.zeros(len(y))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y):
        oof[test] = fit_predict(train, test)
    return oof


def history_matrix(cal: pd.DataFrame, ids: pd.Index, as_of: pd.Timestamp) -> pd.DataFrame:
    """A customer's whole calibration history, week by week, plus its BG/NBD summary.

    Columns: purchase days (``n_w<k>``) and spend (``v_w<k>``) in each week ``k`` counted
    back from ``as_of`` (week 0 = the 7 days before it), then ``x`` (repeat purchase
    days), ``t_x`` (days from first to last purchase day), ``T`` (days from the first to
    ``as_of``), ``recency`` (days since the last), ``spend``. Only events before ``as_of``.
    """
    from engage.schema import VALUE

    cal = cal[cal[EVENT_TIME] < as_of]
    day = cal[EVENT_TIME].dt.floor("D")
    days = (
        cal.assign(_day=day, _v=cal[VALUE].fillna(0.0))
        .groupby([CUSTOMER_ID, "_day"], as_index=False)["_v"]
        .sum()
    )
    age = (as_of - days["_day"]).dt.days
    days["_week"] = (age - 1).clip(lower=0) // 7
    count = days.pivot_table(index=CUSTOMER_ID, columns="_week", values="_v", aggfunc="size")
    spend = days.pivot_table(index=CUSTOMER_ID, columns="_week", values="_v", aggfunc="sum")
    weeks = range(int(days["_week"].max()) + 1 if len(days) else 0)
    count = count.reindex(index=ids, columns=weeks).fillna(0)
    spend = spend.reindex(index=ids, columns=weeks).fillna(0.0)
    count.columns = [f"n_w{k}" for k in weeks]
    spend.columns = [f"v_w{k}" for k in weeks]
    g = days.assign(_age=age).groupby(CUSTOMER_ID)["_age"]
    summary = pd.DataFrame(
        {
            "x": g.size() - 1,
            "t_x": g.max() - g.min(),
            "T": g.max(),
            "recency": g.min(),
            "spend": days.groupby(CUSTOMER_ID)["_v"].sum(),
        }
    ).reindex(ids)
    return pd.concat([count, spend, summary], axis=1)


def history_ceiling(
    history: pd.DataFrame, y: np.ndarray, seed: int, folds: int = 5
) -> dict[str, dict[str, float]]:
    """Out-of-fold rankers on the whole weekly history, fitted on the holdout labels.

    Like :func:`label_ceiling` it peeks by design, but it does not depend on the feature
    catalog: LightGBM sees every week's purchases and spend, and a spline logistic
    regression the BG/NBD summary (x, t_x, T, recency, log spend). If neither ranks the
    holdout buyers much better than the pipeline, the information is not in the history.
    """
    import lightgbm as lgb
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import SplineTransformer

    X = history.fillna(0.0).astype(float)
    summary = X[["x", "t_x", "T", "recency"]].assign(log_spend=np.log1p(X["spend"].clip(0)))
    learners = {
        "gbm": (
            X,
            lambda: lgb.LGBMClassifier(
                n_estimators=300,
                learning_rate=0.03,
                num_leaves=15,
                min_child_samples=100,
                subsample=0.8,
                subsample_freq=1,
                colsample_bytree=0.8,
                random_state=seed,
                verbose=-1,
            ),
        ),
        "spline_logit": (
            summary,
            lambda: make_pipeline(
                SplineTransformer(n_knots=6, degree=3), LogisticRegression(max_iter=2000)
            ),
        ),
    }
    out = {}
    for name, (data, make) in learners.items():

        def fit_predict(train, test, data=data, make=make):
            return make().fit(data.iloc[train], y[train]).predict_proba(data.iloc[test])[:, 1]

        out[name] = ranking_metrics(y, _out_of_fold(data, y, fit_predict, seed, folds))
    return out


# ------------------------------------------------------------------------- one split


def apply_feast(paths: Paths):
    # A second apply in one process (rehearsal, then holdout) must point the data source
    # at this split's snapshots: check the path.
    apply_repo(paths)
    store = get_store(paths)
    source = store.get_data_source("customer_features_source")
    if source.path != snapshot_glob(paths.features_dir):
        raise RuntimeError(
            f"Feast source reads {source.path}, not {snapshot_glob(paths.features_dir)}"
        )
    return store


def _step_frames(store, ids: pd.Index, split: Split) -> list[pd.DataFrame]:
    times = split.step_times()
    entity = pd.DataFrame(
        {
            ENTITY_KEY: np.tile(ids.to_numpy(), len(times)),
            TIMESTAMP: np.repeat(pd.DatetimeIndex(times), len(ids)),
        }
    )
    feats = historical_features(store, entity, model_spec(MODEL).feature_service)
    check_feature_times(feats)
    return [
        feats[feats[TIMESTAMP] == t].set_index(ENTITY_KEY).reindex(ids).reset_index() for t in times
    ]


def _prob_row(y: np.ndarray, p: np.ndarray, bins: int) -> dict[str, float]:
    return {
        **probability_metrics(y, p, bins),
        "predicted_share": float(np.mean(p)),
        "observed_share": float(np.mean(y)),
    }


def _as_float32(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    out = frame.copy()
    out[features] = out[features].astype("float32")
    return out


def fit_holdout_hazard(
    paths: Paths,
    params: Params,
    store: Any,
    cal: pd.DataFrame,
    split: Split,
    say: Progress,
) -> HazardModel:
    """The purchase hazard model of the calibration period: every horizon from one fit.

    Trained on the weekly as-of times before the calibration end with the ``hazard``
    parameters of the profile (weekly periods; a period that ends after the calibration
    end is censored, never a negative), so P(purchase within the holdout) comes from
    the model's own curve, with nothing borrowed from BG/NBD.

    Raises:
        ValueError: the holdout is longer than the model follows (``hazard.h_max_periods``
            x ``hazard.period_days``).

    """
    from evaluation.hazard import fit_purchase_hazard

    hp = params.hazard
    if split.holdout_days > hp.period_days * hp.h_max_periods:
        raise ValueError(
            f"hazard: the {split.name} holdout ({split.holdout_days} days) is longer than "
            f"hazard.h_max_periods x hazard.period_days ({hp.h_max_periods} x "
            f"{hp.period_days} days)"
        )
    hparams = params.model_copy(
        update={
            "labels": params.labels.model_copy(update={"horizon_days": hp.period_days}),
            "training": params.training.model_copy(
                update={"max_rows_per_snapshot": hp.max_rows_per_snapshot}
            ),
        }
    )
    frame = training_frame(paths, hparams, MODEL, store)
    check_feature_times(frame)
    frame = frame[frame[TIMESTAMP] < split.as_of].reset_index(drop=True)
    frame = _as_float32(frame, model_feature_names(hparams))
    events = cal[[CUSTOMER_ID, "event_type", EVENT_TIME]]
    model, _ = fit_purchase_hazard(frame, events, split.as_of, hparams, say)
    return model


def run_split(
    events: pd.DataFrame,
    params: Params,
    data_dir: Path,
    split: Split,
    say: Progress,
    ceiling: bool = False,
) -> dict[str, Any]:
    """Every method on one split; returns metrics, predictions and the leakage facts.

    Args:
        events: all CDNOW events (the holdout is read only to score predictions).
        params: the parsed params.yaml (the ``cdnow`` profile).
        data_dir: the benchmark's own folder; ``<data_dir>/<split.name>`` is replaced.
        split: the calibration / holdout split.
        say: progress messages.
        ceiling: also fit the label-peeking ceiling (:func:`label_ceiling`).

    """
    started = time.perf_counter()
    hparams = _with_horizon(params, split.horizon_days)
    paths = calibration_paths(data_dir / split.name, hparams)
    # This folder is the benchmark's own: stale snapshots of another sample or split
    # would otherwise be read back as training as-of times.
    shutil.rmtree(paths.data_dir, ignore_errors=True)
    say(f"{split.name}: events before {split.as_of:%Y-%m-%d %H:%M} UTC")
    # Every method below sees `cal` (or files written from it); `events` is read again
    # only to score the predictions.
    cal = write_calibration_events(events, split.as_of, paths)
    cal_last = cal[EVENT_TIME].max()

    # Weekly as-of times up to the calibration end for training, then the chained steps
    # (same calibration-only events: the features of a customer who has not bought since).
    weekly = snapshot_times(cal[EVENT_TIME].min(), cal_last, 7, 10_000, now=split.as_of)
    as_of_times = sorted({*weekly, *split.step_times()})
    say(f"{split.name}: {len(as_of_times)} feature snapshots, Feast")
    build_features(hparams, paths.events, paths.customers, paths.features_dir, as_of=as_of_times)
    store = apply_feast(paths)

    say(f"{split.name}: LightGBM on {split.horizon_days}-day labels")
    trained = train_horizon_model(paths, hparams, store, split)
    ids = pd.Index(pd.read_parquet(paths.customers)[CUSTOMER_ID].sort_values(), name=ENTITY_KEY)
    frames = _step_frames(store, ids, split)
    p_short = trained.model.predict_proba(frames[0])
    p_chain = chained_probability(trained.model, frames, split.step_weights())

    say(f"{split.name}: hazard model (one fit, every horizon up to the holdout)")
    hazard = fit_holdout_hazard(paths, params, store, cal, split, say)
    H = hazard.hazards(_as_float32(frames[0], hazard.features))
    p_model = prob_within(H, split.holdout_days, hazard.period_days)
    p_model_first = prob_within(H, split.horizon_days, hazard.period_days)

    say(f"{split.name}: BG/NBD")
    summary = bgnbd_summary(cal, split.as_of, ids)
    fitter = fit_bgnbd(summary)
    p_bg = bgnbd_prob_any(fitter, summary, split.holdout_days)
    e_bg = bgnbd_expected(fitter, summary, split.holdout_days)
    weekly_summary = bgnbd_summary(cal, split.as_of, ids, freq="W")
    weekly_fitter = fit_bgnbd(weekly_summary)
    weeks = split.holdout_days / 7
    p_bg_week = bgnbd_prob_any(weekly_fitter, weekly_summary, weeks)
    e_bg_week = bgnbd_expected(weekly_fitter, weekly_summary, weeks)
    freq = summary["frequency"].to_numpy(float)
    rfm = rfm_score(frames[0], MODEL)

    # Only now are the holdout events read.
    truth = window_truth(events, ids, split.as_of, split.holdout_end)
    first = window_truth(
        events, ids, split.as_of, split.as_of + pd.Timedelta(days=split.horizon_days)
    )
    y = truth["bought"].to_numpy()
    bins = params.training.ece_bins
    metrics = {
        "model": _prob_row(y, p_model, bins),
        "bgnbd": {
            **_prob_row(y, p_bg, bins),
            "predicted_purchases": float(e_bg.sum()),
            "actual_purchases": float(truth["days"].sum()),
        },
        "frequency": {**ranking_metrics(y, freq), "observed_share": float(y.mean())},
        "rfm": {**ranking_metrics(y, rfm), "observed_share": float(y.mean())},
    }
    variants = {
        "model_first_window": _prob_row(first["bought"].to_numpy(), p_model_first, bins),
        "model_short_as_is": _prob_row(y, p_short, bins),
        "model_short_on_first_window": _prob_row(first["bought"].to_numpy(), p_short, bins),
        "model_chain": _prob_row(y, p_chain, bins),
        "bgnbd_expected_rank": ranking_metrics(y, e_bg),
        # The unit of the BG/NBD papers; counts in weeks are not comparable, so no totals.
        "bgnbd_weekly": _prob_row(y, p_bg_week, bins),
        "bgnbd_weekly_expected_rank": ranking_metrics(y, e_bg_week),
    }
    if ceiling:
        say(f"{split.name}: label-peeking ceiling")
        variants["ceiling"] = label_ceiling(frames[0][trained.model.features], y, hparams)
        history = history_ceiling(history_matrix(cal, ids, split.as_of), y, hparams.training.seed)
        variants["ceiling_history_gbm"] = history["gbm"]
        variants["ceiling_history_logit"] = history["spline_logit"]
    return {
        "split": split,
        "customers": len(ids),
        "calibration_events": len(cal),
        "calibration_last_event": cal_last,
        "metrics": metrics,
        "variants": variants,
        "bgnbd_params": {k: float(v) for k, v in fitter.params_.items()},
        "training": {
            "horizon_days": split.horizon_days,
            "train_rows": trained.train_rows,
            "valid_rows": trained.valid_rows,
            "audited_rows": trained.audited_rows,
            "label_as_of": trained.label_as_of,
            "label_window_end_max": trained.window_end_max,
            "positive_rate": trained.positive_rate,
            "best_iteration": trained.best_iteration,
            "valid_as_of": trained.label_as_of[-hparams.training.valid_snapshots :],
            "calibration": hparams.training.calibration,
        },
        "hazard": {
            **hazard.training,
            "period_days": hazard.period_days,
            "periods": hazard.periods,
        },
        "scored_as_of": split.as_of,
        "scored_snapshot_times": sorted(
            pd.Timestamp(s, unit="s", tz="UTC") for s in frames[0][SNAPSHOT_TIME].unique()
        ),
        "scored_features": frames[0],
        "predictions": pd.DataFrame(
            {
                "p_model": p_model,
                "p_model_first": p_model_first,
                "p_model_short": p_short,
                "p_model_chain": p_chain,
                "p_bgnbd": p_bg,
                "e_bgnbd": e_bg,
                "frequency": freq,
                "bought": y,
                "purchase_days": truth["days"].to_numpy(),
            },
            index=ids,
        ),
        "seconds": time.perf_counter() - started,
    }


# ------------------------------------------------------------------------- benchmark


def default_data_dir() -> Path:
    """``<ENGAGE_DATA_DIR or data>/bench_cdnow``: the benchmark's own folder."""
    base = os.environ.get(DATA_DIR_ENV)
    return (Path(base).expanduser() if base else PROJECT_ROOT / "data") / "bench_cdnow"


def run_cdnow_benchmark(
    data_dir: Path,
    customers: int | None = None,
    seed: int = 42,
    params: Params | None = None,
    rehearsal: bool = True,
    ceiling: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run every method on the CDNOW 39-week holdout (and the rehearsal split).

    Args:
        data_dir: the benchmark's own folder; its ``holdout`` and ``rehearsal``
            sub-folders are replaced (events cut at the calibration end, features,
            Feast registry). Nothing is registered in MLflow.
        customers: a random sample of this many customers (all 23,570 when None).
        seed: the sampling seed.
        params: parameters; default: ``params.yaml`` with the ``cdnow`` profile.
        rehearsal: also run the recipe inside the calibration period.
        ceiling: also fit the label-peeking ceiling on the real holdout.
        progress: called with a short message at each stage.

    Returns:
        ``holdout`` and ``rehearsal`` (None when skipped): the results of
        :func:`run_split`; ``customers``, ``seconds`` and ``peak_rss_mb`` of the run.

    Raises:
        FileNotFoundError: ``lifetimes`` (which ships the data) is not installed.

    """
    say = progress or (lambda _m: None)
    params = params or load_params(profile="cdnow")
    data_dir = Path(data_dir).expanduser().resolve()

    def run() -> dict[str, Any]:
        all_events, all_customers = load_cdnow()
        events, custs = sample_customers(all_events, all_customers, customers, seed)
        out: dict[str, Any] = {
            "customers": len(custs),
            "sampled": len(custs) < len(all_customers),
        }
        out["rehearsal"] = (
            run_split(events, params, data_dir, REHEARSAL, say) if rehearsal else None
        )
        out["holdout"] = run_split(events, params, data_dir, REAL, say, ceiling=ceiling)
        return out

    began = time.perf_counter()
    result = run()
    result["seconds"] = time.perf_counter() - began
    # The process's peak resident memory so far (Linux reports KiB).
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["profile"] = params.profile
    return result


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _row(name: str, m: dict[str, float], counts: bool = True) -> str:
    cells = [
        name,
        _num(m.get("roc_auc")),
        _num(m.get("pr_auc")),
        _num(m.get("brier")),
        _num(m.get("ece")),
        _num(m.get("predicted_share"), ".1%"),
        _num(m.get("observed_share"), ".1%"),
    ]
    if counts:
        cells += [
            _num(m.get("predicted_purchases"), ",.0f"),
            _num(m.get("actual_purchases"), ",.0f"),
        ]
    return "| " + " | ".join(cells) + " |"


_HEAD = (
    "| method | ROC-AUC | PR-AUC | Brier | ECE | predicted buyers | actual buyers |"
    " predicted purchases | actual purchases |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)
_HEAD_SHORT = (
    "| variant | ROC-AUC | PR-AUC | Brier | ECE | predicted buyers | actual buyers |\n"
    "|---|---:|---:|---:|---:|---:|---:|"
)
_NAMES = {
    "model": "**our model**: LightGBM hazard, one fit, every horizon",
    "bgnbd": "BG/NBD P(≥1) (lifetimes, daily)",
    "frequency": "calibration repeat frequency (rank)",
    "rfm": "RFM heuristic (rank)",
}


def report_markdown(result: dict[str, Any]) -> str:
    """The BENCHMARKS.md section body: tables, method, verdict and notes."""
    h = result["holdout"]
    m, v, tr = h["metrics"], h["variants"], h["training"]
    split: Split = h["split"]
    hw = split.horizon_days // 7
    lines = [
        f"{h['customers']:,} customers"
        + (" (a random sample)" if result["sampled"] else "")
        + f", {h['calibration_events']:,} calibration purchase lines. Features as of "
        f"{split.as_of:%Y-%m-%d %H:%M} UTC, i.e. every event up to and including "
        f"{split.as_of - DAY:%Y-%m-%d}; label: at least one purchase from "
        f"{split.as_of:%Y-%m-%d} to {split.holdout_end - DAY:%Y-%m-%d} "
        f"({m['model']['observed_share']:.1%} of the customers). Purchases are purchase "
        "days (a customer's lines of one date count once, as in BG/NBD).",
        "",
        _HEAD,
        *(_row(_NAMES[k], m[k]) for k in METHODS),
        "",
        "Variants and references (same customers and labels):",
        "",
        _HEAD_SHORT,
        _row(
            f"hazard model, P(within {hw} w) vs the first {hw} holdout weeks",
            v["model_first_window"],
            False,
        ),
        _row(f"fixed-horizon LightGBM, {hw}-w probability as is", v["model_short_as_is"], False),
        _row(
            f"fixed-horizon LightGBM {hw}-w probability vs the first {hw} holdout weeks",
            v["model_short_on_first_window"],
            False,
        ),
        _row(f"fixed-horizon LightGBM chained 3 × {hw} w", v["model_chain"], False),
        _row("BG/NBD ranked by expected purchases", v["bgnbd_expected_rank"], False),
        _row("BG/NBD with weekly periods", v["bgnbd_weekly"], False),
        _row("BG/NBD weekly, ranked by expected purchases", v["bgnbd_weekly_expected_rank"], False),
    ]
    if "ceiling" in v:
        lines.append(
            _row(
                "ceiling: LightGBM, 5-fold CV **on the holdout labels** (peeks)",
                v["ceiling"],
                False,
            )
        )
    if "ceiling_history_gbm" in v:
        lines += [
            _row(
                "ceiling: LightGBM on the raw weekly history (purchases + spend per week), "
                "5-fold CV on the holdout labels (peeks)",
                v["ceiling_history_gbm"],
                False,
            ),
            _row(
                "ceiling: spline logistic regression on x, t_x, T, recency, log spend, "
                "5-fold CV on the holdout labels (peeks)",
                v["ceiling_history_logit"],
                False,
            ),
        ]
    r = result.get("rehearsal")
    if r is not None:
        rs: Split = r["split"]
        rm, rv = r["metrics"], r["variants"]
        lines += [
            "",
            f"Dress rehearsal inside the calibration period (calibration end "
            f"{rs.as_of:%Y-%m-%d}, holdout to {rs.holdout_end - DAY:%Y-%m-%d}, "
            f"{rs.horizon_days}-day labels for the fixed-horizon references):",
            "",
            _HEAD,
            *(_row(_NAMES[k], rm[k]) for k in METHODS),
            _row(
                f"fixed-horizon LightGBM {rs.horizon_days}-d probability as is",
                rv["model_short_as_is"],
            ),
            _row(
                f"fixed-horizon LightGBM chained {rs.steps:.2f} × {rs.horizon_days} d",
                rv["model_chain"],
            ),
        ]
    lines += ["", _verdict(h)]
    lines += [
        "",
        f"**Method.** {method_paragraph(split, h['hazard'])}",
        "",
        "**No peeking.** The pipeline runs on a copy of the events cut at "
        f"{split.as_of:%Y-%m-%d %H:%M} UTC (last event {h['calibration_last_event']:%Y-%m-%d}). "
        f"Training labels: {len(tr['label_as_of'])} weekly as-of times "
        f"{tr['label_as_of'][0]:%Y-%m-%d} .. {tr['label_as_of'][-1]:%Y-%m-%d}, the last label "
        f"window ending {tr['label_window_end_max']:%Y-%m-%d %H:%M} UTC; "
        f"{tr['train_rows']:,} training rows, {tr['valid_rows']:,} calibration rows (a quarter "
        f"of the customers at the last {len(tr['valid_as_of'])} as-of times), "
        f"{tr['best_iteration']} trees; {tr['audited_rows']} rows re-computed from raw "
        "events by the leakage audit. BG/NBD is fitted on the calibration summary only "
        f"(r={h['bgnbd_params']['r']:.3f}, alpha={h['bgnbd_params']['alpha']:.2f}, "
        f"a={h['bgnbd_params']['a']:.3f}, b={h['bgnbd_params']['b']:.3f}).",
        "",
        "**lifetimes 0.11.3 with pandas 2.3 / numpy 2.4 / scipy 1.17.** It works, with "
        "three workarounds in `benchmarks/bench_cdnow.py`: `summary_data_from_transaction_data` "
        "warns when it drops the timezone of aware times, so it gets naive UTC times; "
        "`BetaGeoFitter.fit` prints scipy's whole result before raising on "
        "non-convergence (silenced, with a penalizer fallback for small samples); and it "
        "has no conditional P(n purchases) for BG/NBD, so P(at least one) is computed in "
        "closed form from its fitted parameters and `conditional_probability_alive`.",
        "",
        f"Runtime: {result['seconds']:.0f} s for the whole run "
        + (
            f"(rehearsal {r['seconds']:.0f} s, holdout {h['seconds']:.0f} s)"
            if r is not None
            else f"(holdout {h['seconds']:.0f} s)"
        )
        + f", peak RSS {result['peak_rss_mb']:,.0f} MB.",
    ]
    return "\n".join(lines)


_CEILINGS = ("ceiling", "ceiling_history_gbm", "ceiling_history_logit")


def _verdict(h: dict[str, Any], target: float = 0.79) -> str:
    # The baselines as the issue states them (BG/NBD ranked by expected purchases) and
    # as probabilities; every number comes from this run.
    m, v, split, pred = h["metrics"], h["variants"], h["split"], h["predictions"]
    hw = split.horizon_days // 7
    once = pred[pred["frequency"] == 0]
    auc = m["model"]["roc_auc"]
    refs = {
        "BG/NBD ranked by expected purchases": v["bgnbd_expected_rank"]["roc_auc"],
        "BG/NBD's P(≥1)": m["bgnbd"]["roc_auc"],
        "repeat frequency": m["frequency"]["roc_auc"],
    }
    text = (
        f"**Verdict.** Our model ranks the holdout buyers at ROC-AUC {auc:.3f}: "
        + ", ".join(f"{auc - x:+.3f} against {name} ({x:.3f})" for name, x in refs.items())
        + f"; the RFM heuristic ranks at {m['rfm']['roc_auc']:.3f} and weekly BG/NBD by "
        f"expected purchases at {v['bgnbd_weekly_expected_rank']['roc_auc']:.3f}. "
    )
    ceilings = [v[k]["roc_auc"] for k in _CEILINGS if k in v]
    ceiling = max(ceilings) if ceilings else None
    if auc >= target:
        text += f"The issue's target of {target} is reached. "
    else:
        text += f"The issue's target of {target} is **not** reached"
        if ceiling is not None:
            text += (
                f": models trained by 5-fold cross-validation on the holdout labels "
                f"themselves reach at best {ceiling:.3f} (LightGBM on the pipeline's "
                "features, LightGBM on the raw weekly purchase and spend history, a spline "
                f"logistic regression on the BG/NBD summary), so CDNOW's calibration history "
                f"does not hold the information for {target}. Our model is "
                + (f"{ceiling - auc:.3f} below" if ceiling - auc >= 5e-4 else "level with")
                + " that ceiling and the best baselines are about as close: on this split no "
                "method can show a clear ranking margin. "
            )
        else:
            text += ". "
    text += (
        f"Its {split.holdout_days // 7}-week probability comes from its own curve (no "
        f"horizon borrowed from BG/NBD): {m['model']['predicted_share']:.1%} predicted "
        f"buyers for {m['model']['observed_share']:.1%} actual (BG/NBD "
        f"{m['bgnbd']['predicted_share']:.1%}), Brier {m['model']['brier']:.3f} vs "
        f"{m['bgnbd']['brier']:.3f}, ECE {m['model']['ece']:.3f} vs {m['bgnbd']['ece']:.3f}; "
        f"on the first {hw} holdout weeks its ECE is "
        f"{v['model_first_window']['ece']:.3f}. Among the {len(once):,} customers without a "
        f"repeat purchase it predicts {once['p_model'].mean():.1%} buyers for "
        f"{once['bought'].mean():.1%} actual."
    )
    return text


def method_paragraph(split: Split = REAL, hazard: dict[str, Any] | None = None) -> str:
    """How the model gives a holdout probability: its own survival curve."""
    hazard = hazard or {}
    hw, ho = split.horizon_days // 7, split.holdout_days // 7
    period = hazard.get("period_days", 7)
    periods = hazard.get("periods", ho)
    calibration = hazard.get("calibration", "sigmoid")
    calibrator = {"sigmoid": "Platt (sigmoid)", "isotonic": "isotonic"}.get(
        calibration, calibration
    )
    return (
        f"A {ho}-week label window cannot fit inside the {ho}-week calibration period "
        "behind the as-of time, so the model is a discrete-time hazard model "
        "(`training/hazard.py`): at every weekly as-of time before the calibration end "
        f"each customer is followed for up to {periods} periods of {period} days, one row "
        "per period at risk with the period index as a feature, labelled 1 in the period of "
        "the first purchase; a period that ends after the calibration end is censored (no "
        "row, never a negative). One LightGBM is trained on three quarters of the customers "
        f"and a {calibrator} calibrator of the hazard is fitted on the other quarter; "
        f"P(purchase within {ho} weeks) = 1 − Π(1 − h_k) over the holdout's periods. No "
        "horizon is borrowed from BG/NBD. The references: a fixed-horizon LightGBM on "
        f'"at least one purchase in the next {hw} weeks" (the product\'s appetence recipe), '
        f"as is and chained {ho // hw} × {hw} weeks on the features a customer would have "
        "without buying."
    )
