"""Evaluation of the discrete-time hazard models (``training/hazard.py``).

Two parts, each on later time than the fit:

- **demo** (simulated data): churn and appetence. Rows, features and populations are
  those of the fixed-horizon models (:func:`training.dataset.training_frame`, Feast
  point-in-time); the as-of times are split by :func:`training.dataset.split_times` with
  the hazard's longest horizon ``H_max`` as the label window, so no training or
  validation label has seen the test period, and every test row has its whole ``H_max``
  window observed (no censoring in the test). On the test rows, at each horizon of
  ``hazard.horizons_days``: ROC-AUC, Brier and ECE of the hazard model against a
  fixed-horizon LightGBM trained for that horizon on the same rows by the product's
  recipe (:func:`training.fit_evaluate.fit_lightgbm`: monotone constraints, BG/NBD
  inputs when ``training.btyd_inputs``, a calibrator on the validation rows); then
  Harrell's concordance index of the time to the event and the integrated Brier score of
  the survival curve, against the population curve (Kaplan-Meier without censoring in
  the training rows) and the fixed 90-day model's ranking.
- **cdnow** (real data, ``lifetimes``' copy): the 39-week calibration / 39-week
  holdout split of :mod:`evaluation.cdnow` (events cut at the calibration end before
  anything is computed). The hazard and count models are trained on bi-weekly as-of
  times inside the calibration period (periods after its end are censored), with a
  quarter of the customers held out for early stopping, and score every customer at
  the calibration end. Against BG/NBD and Pareto/NBD (``lifetimes``) fitted on the same
  calibration summary, at 13, 26 and 39 weeks: ranking and calibration of "at least one
  purchase within h"; MAE and RMSE of the per-customer number of purchase days; the
  tracking curve (cumulative purchase days per holdout week, all customers) and its
  mean absolute percentage error.

    engage bench hazard [--dataset demo|cdnow|both]   (python -m benchmarks.bench_hazard)
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engage.config import DATA_DIR_ENV, PROJECT_ROOT, Params, load_params
from engage.schema import CUSTOMER_ID, EVENT_TIME
from features.catalog import ENTITY_KEY, TIMESTAMP, model_feature_names
from training import hazard as hz
from training.dataset import split_times
from training.evaluate import probability_metrics
from training.labels import LABEL, label_definition, labelable
from training.survival_metrics import (  # noqa: F401  (re-exported: evaluation's names)
    brier_curve,
    concordance_index,
    horizon_label,
    integrated_brier,
    marginal_hazards,
)

Progress = Callable[[str], None]
DAY = pd.Timedelta(days=1)
MODELS = ("appetence", "churn")


# ------------------------------------------------------------------------- metrics


def mape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Mean absolute percentage error over the points with a non-zero actual value."""
    a, p = np.asarray(actual, float), np.asarray(predicted, float)
    ok = a != 0
    if not ok.any():
        raise ValueError("mape: every actual value is zero")
    return float(np.mean(np.abs(p[ok] - a[ok]) / np.abs(a[ok])))


def count_within(
    rows: pd.DataFrame, events: pd.DataFrame, horizon_days: float, event_type: str
) -> np.ndarray:
    """Per row, the number of distinct UTC dates with ``event_type`` in ``[as_of, as_of + h)``."""
    ev = events.loc[events["event_type"] == event_type, [CUSTOMER_ID, EVENT_TIME]]
    days = pd.DataFrame(
        {
            ENTITY_KEY: ev[CUSTOMER_ID].to_numpy(),
            "_day": pd.to_datetime(ev[EVENT_TIME], utc=True).dt.floor("D").to_numpy(),
        }
    ).drop_duplicates()
    left = pd.DataFrame(
        {
            ENTITY_KEY: rows[ENTITY_KEY].to_numpy(),
            "_asof": pd.to_datetime(rows[TIMESTAMP], utc=True).to_numpy(),
            "_row": np.arange(len(rows)),
        }
    )
    j = left.merge(days, on=ENTITY_KEY, how="inner")
    d = j["_day"] - j["_asof"]
    ok = (d >= pd.Timedelta(0)) & (d < pd.Timedelta(days=horizon_days))
    return np.bincount(j.loc[ok, "_row"].to_numpy(), minlength=len(rows)).astype(float)


def _days_to_event(first_event: pd.Series, as_of: pd.Series) -> np.ndarray:
    delta = pd.to_datetime(first_event, utc=True) - pd.to_datetime(as_of, utc=True)
    return (delta / DAY).to_numpy(float)  # NaN: none observed


def _prob_row(y: np.ndarray, p: np.ndarray, bins: int) -> dict[str, float]:
    return {
        **probability_metrics(y, p, bins),
        "predicted_share": float(np.mean(p)),
        "observed_share": float(np.mean(y)),
    }


# ------------------------------------------------------------------- demo (frames)


def evaluate_frame(
    frame: pd.DataFrame,
    events: pd.DataFrame,
    end: pd.Timestamp,
    params: Params,
    model: str,
    say: Progress | None = None,
) -> dict[str, Any]:
    """Hazard model vs one fixed-horizon LightGBM per horizon, on later time.

    Args:
        frame: training rows of ``model`` (``customer_id``, ``event_timestamp``,
            ``label`` at horizon ``hazard.period_days``, the features), as
            :func:`training.dataset.training_frame` returns them.
        events: the events (``customer_id``, ``event_type``, ``event_time``) of the
            contacts, at least up to ``end``.
        end: end of the observed data.
        params: parameters (``hazard``, ``training``).
        model: ``appetence`` or ``churn``.
        say: progress messages.

    Returns:
        ``metrics`` (horizon -> method -> metrics), ``survival`` (c-index and integrated
        Brier score per method), the split and the fit facts.

    Raises:
        ValueError: the split does not fit the history, a split has one class, or the
            frame's labels disagree with the first-event times (a different rule).

    """
    from training.btyd import fit_on_snapshot
    from training.fit_evaluate import fit_lightgbm, last_time_rows

    say = say or (lambda _m: None)
    hp, tp = params.hazard, params.training
    features = model_feature_names(params)
    h_max = hp.period_days * hp.h_max_periods
    frame = frame.reset_index(drop=True)
    first = hz.first_event_times(frame, events, hz.target_event_types(params, model))
    # The rows' own labels (horizon = one period) must follow from the first events.
    check = horizon_label(first, frame[TIMESTAMP], hp.period_days, model)
    if LABEL in frame.columns and (check != frame[LABEL].to_numpy()).any():
        bad = int((check != frame[LABEL].to_numpy()).sum())
        raise ValueError(
            f"{model}: {bad} rows' labels disagree with the first-event times at "
            f"{hp.period_days} days (another label rule?)"
        )
    times = sorted(pd.Timestamp(t) for t in frame[TIMESTAMP].unique())
    train_t, valid_t, test_t = split_times(labelable(times, h_max, end), h_max, tp)
    ts = frame[TIMESTAMP]
    parts = {
        "train": ts.isin(train_t).to_numpy(),
        "valid": ts.isin(valid_t).to_numpy(),
        "test": ts.isin(test_t).to_numpy(),
    }
    say(f"{model}: person-period rows")
    pp = {k: hz.person_period(frame[m], first[m], end, hp) for k, m in parts.items() if k != "test"}
    counts = None
    if model == "appetence":
        counts = {
            k: hz.count_frame(frame[m], events, end, hp, params.data.conversion_event)
            for k, m in parts.items()
            if k != "test"
        }
    say(f"{model}: hazard model on {len(pp['train']):,} person-period rows")
    began = time.perf_counter()
    hazard_bg = hz.btyd_inputs_fit(frame[parts["train"]], hp, tp)
    hm = hz.fit_hazard_model(
        model,
        features,
        pp["train"],
        pp["valid"],
        hp,
        tp,
        counts["train"] if counts else None,
        counts["valid"] if counts else None,
        btyd=hazard_bg,
    )
    hazard_seconds = time.perf_counter() - began
    test = frame[parts["test"]].reset_index(drop=True)
    first_test = first[parts["test"]].reset_index(drop=True)
    H = hm.hazards(test)
    S = hz.survival(H)
    km = marginal_hazards(pp["train"], hp.h_max_periods)
    bins = tp.ece_bins
    metrics: dict[int, dict[str, dict[str, float]]] = {}
    fixed_p: dict[int, np.ndarray] = {}
    fixed_seconds = 0.0
    for h in hp.horizons_days:
        y_all = horizon_label(first, frame[TIMESTAMP], h, model)
        labelled = frame.assign(**{LABEL: y_all})
        train, valid = labelled[parts["train"]], labelled[parts["valid"]]
        hparams = params.model_copy(
            update={"labels": params.labels.model_copy(update={"horizon_days": int(h)})}
        )
        for name, part in (("train", train), ("valid", valid), ("test", labelled[parts["test"]])):
            if part[LABEL].nunique() < 2:
                raise ValueError(f"{model} at {h} days: the {name} rows have a single class")
        say(f"{model}: fixed-horizon LightGBM at {h} days")
        began = time.perf_counter()
        btyd = fit_on_snapshot(last_time_rows(train), h, tp.seed) if tp.btyd_inputs else None
        fixed = fit_lightgbm(model, train, valid, hparams, label_definition(hparams, model), btyd)
        fixed_seconds += time.perf_counter() - began
        y = horizon_label(first_test, test[TIMESTAMP], h, model)
        p_event = hz.prob_within(H, h, hp.period_days)
        p_hazard = 1.0 - p_event if model == "churn" else p_event
        p_km = hz.prob_within(km[None, :], h, hp.period_days)[0]
        p_km = np.full(len(test), 1.0 - p_km if model == "churn" else p_km)
        fixed_p[h] = fixed.predict_proba(test)
        metrics[h] = {
            "hazard": _prob_row(y, p_hazard, bins),
            "fixed": _prob_row(y, fixed_p[h], bins),
            "population": {
                "brier": float(np.mean((y - p_km) ** 2)),
                "predicted_share": float(p_km[0]),
                "observed_share": float(y.mean()),
            },
        }
    t_days = _days_to_event(first_test, test[TIMESTAMP])
    event = (~np.isnan(t_days)) & (t_days < h_max)
    t_obs = np.where(event, t_days, h_max)
    h_long = max(hp.horizons_days)
    # Risk of the event: the probability of it within H_max; for the fixed models, their
    # longest horizon's probability (of churn = no activity: its complement).
    fixed_risk = 1.0 - fixed_p[h_long] if model == "churn" else fixed_p[h_long]
    F_km = np.broadcast_to(1.0 - np.cumprod(1.0 - km), S.shape)
    survival = {
        "hazard": {
            "c_index": concordance_index(t_obs, event, 1.0 - S[:, -1]),
            "ibs": integrated_brier(1.0 - S, t_days, hp.period_days),
        },
        "fixed": {"c_index": concordance_index(t_obs, event, fixed_risk)},
        "population": {"ibs": integrated_brier(F_km, t_days, hp.period_days)},
    }
    median = hz.median_days(H, hp.period_days)
    out = {
        "model": model,
        "metrics": metrics,
        "survival": survival,
        "fixed_horizon_of_ranking": h_long,
        "split": {
            "train": f"{min(train_t):%Y-%m-%d}..{max(train_t):%Y-%m-%d} ({len(train_t)} as-of)",
            "valid": f"{min(valid_t):%Y-%m-%d}..{max(valid_t):%Y-%m-%d} ({len(valid_t)} as-of)",
            "test": f"{min(test_t):%Y-%m-%d}..{max(test_t):%Y-%m-%d} ({len(test_t)} as-of)",
        },
        "rows": {k: int(m.sum()) for k, m in parts.items()},
        "person_period_rows": {k: len(v) for k, v in pp.items()},
        "events_in_test": int(event.sum()),
        "median_within_h_max": float(np.mean(~np.isnan(median))),
        "fit": {
            **hm.training,
            "hazard_seconds": hazard_seconds,
            "fixed_seconds": fixed_seconds,
            "btyd_inputs": hazard_bg is not None,
        },
    }
    if counts is not None:
        conv = params.data.conversion_event
        n_h = hz.expected_count(hm.rates(test), h_long, hp.period_days)
        actual = count_within(test, events, h_long, conv)
        # Baseline: the product's BG/NBD (fitted on the last training as-of time's
        # snapshot features, as the fixed models' BG/NBD inputs are) read over h.
        from training.model import BTYD_FEATURES, btyd_summary

        train_rows = frame[parts["train"]]
        bg = fit_on_snapshot(last_time_rows(train_rows), h_long, tp.seed)
        x, t_x, big_t = btyd_summary(*(test[f].to_numpy(float) for f in BTYD_FEATURES))
        e_bg = np.nan_to_num(bg.expected(x, t_x, big_t), nan=0.0)
        out["counts"] = {
            "horizon_days": h_long,
            **{
                name: {
                    "predicted": float(pred.sum()),
                    "actual": float(actual.sum()),
                    "mae": float(np.mean(np.abs(pred - actual))),
                    "rmse": float(np.sqrt(np.mean((pred - actual) ** 2))),
                }
                for name, pred in (("hazard", n_h), ("bgnbd", e_bg))
            },
        }
    return out


# --------------------------------------------------------------------- demo (files)


def default_data_dir() -> Path:
    """``<ENGAGE_DATA_DIR or data>/bench_hazard``: the benchmark's own folder."""
    base = os.environ.get(DATA_DIR_ENV)
    return (Path(base).expanduser() if base else PROJECT_ROOT / "data") / "bench_hazard"


DEMO_START = "2024-01-01"  # + 730 days ends in the past: the simulator caps at the clock


def demo_params(
    params: Params, days: int, rows_per_snapshot: int | None, start: str = DEMO_START
) -> Params:
    """The demo run's parameters: the simulated period, training rows at one period.

    The simulator ends its period at the wall clock when ``start + days`` is in the
    future, so a fixed start far enough back keeps the data the same from run to run.
    """
    return params.model_copy(
        update={
            "simulate": params.simulate.model_copy(update={"days": days, "start": start}),
            "labels": params.labels.model_copy(update={"horizon_days": params.hazard.period_days}),
            "training": params.training.model_copy(
                update={"max_rows_per_snapshot": rows_per_snapshot}
            ),
        }
    )


def run_demo(
    data_dir: Path,
    params: Params,
    customers: int,
    days: int,
    seed: int,
    every_days: int,
    rows_per_snapshot: int | None,
    say: Progress,
) -> dict[str, Any]:
    """Simulate, build features every ``every_days``, and evaluate both models."""
    from engage.data.simulate import simulate_to_parquet
    from evaluation.cdnow import apply_feast, calibration_paths
    from features.aggregates import build_features, snapshot_times
    from training.dataset import check_feature_times, training_frame
    from training.labels import observed_until

    began = time.perf_counter()
    dparams = demo_params(params, days, rows_per_snapshot)
    paths = calibration_paths(data_dir / "demo", dparams)
    shutil.rmtree(paths.data_dir, ignore_errors=True)
    say(f"demo: simulating {customers:,} contacts over {days} days")
    simulate_to_parquet(
        dparams.simulate,
        dparams.data,
        paths.events,
        paths.customers,
        customers=customers,
        seed=seed,
    )
    events = pd.read_parquet(paths.events, columns=["customer_id", "event_type", "event_time"])
    events["event_time"] = pd.to_datetime(events["event_time"], utc=True)
    end = observed_until(paths.events)
    times = snapshot_times(events[EVENT_TIME].min(), events[EVENT_TIME].max(), every_days, 10_000)
    say(f"demo: {len(events):,} events, {len(times)} feature snapshots, Feast")
    build_features(dparams, paths.events, paths.customers, paths.features_dir, as_of=times)
    store = apply_feast(paths)
    out: dict[str, Any] = {
        "customers": customers,
        "days": days,
        "events": len(events),
        "snapshots": len(times),
        "every_days": every_days,
        "rows_per_snapshot": rows_per_snapshot,
        "end": end,
        "models": {},
    }
    for model in MODELS:
        say(f"demo: {model} training rows (Feast)")
        frame = training_frame(paths, dparams, model, store)
        check_feature_times(frame)
        out["models"][model] = evaluate_frame(frame, events, end, dparams, model, say)
    out["seconds"] = time.perf_counter() - began
    return out


# -------------------------------------------------------------------------- CDNOW


def fit_pareto(summary: pd.DataFrame, penalizers: tuple[float, ...] = (0.0, 1e-3, 1e-2, 0.1)):
    """A ``lifetimes.ParetoNBDFitter`` on the calibration summary (penalizer fallback).

    Raises:
        lifetimes.utils.ConvergenceError: no penalizer converged.

    """
    from lifetimes import ParetoNBDFitter

    from evaluation.cdnow import fit_btyd

    return fit_btyd(ParetoNBDFitter, summary, penalizers)


def pareto_prob_any(fitter, summary: pd.DataFrame, days: float) -> np.ndarray:
    """P(at least one purchase in the next ``days``) under Pareto/NBD (lifetimes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p0 = fitter.conditional_probability_of_n_purchases_up_to_time(
            0, days, summary["frequency"], summary["recency"], summary["T"]
        )
    return np.clip(1.0 - np.asarray(p0, float), 0.0, 1.0)


def expected_curve(fitter, summary: pd.DataFrame, days: Sequence[float]) -> np.ndarray:
    """Expected purchases by each time in ``days`` (n x len(days)): BG/NBD or Pareto/NBD."""
    cols = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for t in days:
            cols.append(
                np.asarray(
                    fitter.conditional_expected_number_of_purchases_up_to_time(
                        t, summary["frequency"], summary["recency"], summary["T"]
                    ),
                    float,
                )
            )
    return np.stack(cols, axis=1)


def cdnow_tables(
    truth: dict[int, pd.DataFrame],
    probs: dict[str, dict[int, np.ndarray]],
    counts: dict[str, dict[int, np.ndarray]],
    weekly_actual: np.ndarray,
    weekly_predicted: dict[str, np.ndarray],
    bins: int,
) -> dict[str, Any]:
    """Every CDNOW figure from predictions and the holdout truth (pure).

    Args:
        truth: horizon days -> :func:`evaluation.cdnow.window_truth` (``bought``,
            ``days``) of every customer.
        probs: method -> horizon -> P(at least one purchase within it).
        counts: method -> horizon -> expected purchase days within it.
        weekly_actual: cumulative purchase days of all customers by holdout week.
        weekly_predicted: method -> the predicted cumulative curve, same weeks.
        bins: ECE bins.

    Returns:
        ``probability`` (horizon -> method -> metrics), ``counts`` (horizon -> method ->
        MAE, RMSE, totals), ``tracking`` (method -> MAPE) and the curves.

    """
    prob_tab = {
        h: {m: _prob_row(t["bought"].to_numpy(), probs[m][h], bins) for m in probs}
        for h, t in truth.items()
    }
    count_tab = {}
    for h, t in truth.items():
        actual = t["days"].to_numpy(float)
        count_tab[h] = {
            m: {
                "mae": float(np.mean(np.abs(counts[m][h] - actual))),
                "rmse": float(np.sqrt(np.mean((counts[m][h] - actual) ** 2))),
                "predicted": float(counts[m][h].sum()),
                "actual": float(actual.sum()),
            }
            for m in counts
        }
    tracking = {m: mape(weekly_actual, c) for m, c in weekly_predicted.items()}
    return {
        "probability": prob_tab,
        "counts": count_tab,
        "tracking": tracking,
        "weekly_actual": np.asarray(weekly_actual, float),
        "weekly_predicted": {m: np.asarray(c, float) for m, c in weekly_predicted.items()},
    }


def fit_purchase_hazard(
    frame: pd.DataFrame,
    events: pd.DataFrame,
    end: pd.Timestamp,
    params: Params,
    say: Progress | None = None,
) -> tuple[hz.HazardModel, dict[str, dict[str, int]]]:
    """The purchase hazard and count models on a calibration period that ends at ``end``.

    Three quarters of the customers train, the other quarter (every as-of time) stops
    the boosting and fits the calibrator; periods after ``end`` are censored.

    Args:
        frame: training rows (``customer_id``, ``event_timestamp`` before ``end``, the
            appetence features as float32).
        events: the calibration events (``customer_id``, ``event_type``,
            ``event_time``), none at or after ``end``.
        end: end of the observed data (the calibration end).
        params: parameters (``hazard``, ``training``, ``data.conversion_event``).
        say: progress messages.

    Returns:
        The fitted model and the row counts of its person-period and count frames.

    """
    from evaluation.cdnow import valid_customers

    say = say or (lambda _m: None)
    hp, tp = params.hazard, params.training
    conv = params.data.conversion_event
    features = model_feature_names(params)
    first = hz.first_event_times(frame, events, [conv])
    in_valid = valid_customers(frame[ENTITY_KEY], 0.25, tp.seed).to_numpy()
    say(f"person-period rows of {len(frame):,} training rows")
    pp_tr = hz.person_period(frame[~in_valid], first[~in_valid], end, hp)
    pp_va = hz.person_period(frame[in_valid], first[in_valid], end, hp)
    cf_tr = hz.count_frame(frame[~in_valid], events, end, hp, conv)
    cf_va = hz.count_frame(frame[in_valid], events, end, hp, conv)
    say(f"hazard + count LightGBM on {len(pp_tr):,} + {len(cf_tr):,} rows")
    bg = hz.btyd_inputs_fit(frame[~in_valid], hp, tp)
    hm = hz.fit_hazard_model("appetence", features, pp_tr, pp_va, hp, tp, cf_tr, cf_va, btyd=bg)
    rows = {
        "person_period": {"train": len(pp_tr), "valid": len(pp_va)},
        "count": {"train": len(cf_tr), "valid": len(cf_va)},
    }
    return hm, rows


def run_cdnow(
    data_dir: Path,
    params: Params,
    customers: int | None,
    seed: int,
    every_days: int,
    say: Progress,
) -> dict[str, Any]:
    """Hazard + count models vs BG/NBD and Pareto/NBD on the CDNOW holdout."""
    from engage.data.cdnow import load_cdnow
    from evaluation.cdnow import (
        REAL,
        apply_feast,
        bgnbd_prob_any,
        bgnbd_summary,
        calibration_paths,
        fit_bgnbd,
        sample_customers,
        window_truth,
        write_calibration_events,
    )
    from features.aggregates import build_features, snapshot_times
    from features.store import historical_features
    from training.dataset import check_feature_times, training_frame

    began = time.perf_counter()
    hp, tp = params.hazard, params.training
    split = REAL
    as_of = split.as_of
    horizons = list(hp.horizons_days)
    if any(h % 7 for h in horizons):
        raise ValueError(
            f"hazard.horizons_days: {[h for h in horizons if h % 7]} are not whole weeks "
            "(the CDNOW tracking is weekly)"
        )
    if max(horizons) > split.holdout_days:
        raise ValueError(
            f"hazard.horizons_days: {max(horizons)} days is beyond the CDNOW holdout "
            f"({split.holdout_days} days)"
        )
    cparams = params.model_copy(
        update={
            "labels": params.labels.model_copy(update={"horizon_days": hp.period_days}),
            "training": tp.model_copy(update={"max_rows_per_snapshot": hp.max_rows_per_snapshot}),
        }
    )
    all_events, all_customers = load_cdnow()
    events, custs = sample_customers(all_events, all_customers, customers, seed)
    paths = calibration_paths(data_dir / "cdnow", cparams)
    shutil.rmtree(paths.data_dir, ignore_errors=True)
    say(f"cdnow: {len(custs):,} customers; events before {as_of:%Y-%m-%d} only")
    cal = write_calibration_events(events, as_of, paths)
    train_times = snapshot_times(
        cal[EVENT_TIME].min(), cal[EVENT_TIME].max(), every_days, 10_000, now=as_of
    )
    times = sorted({*train_times, as_of})
    say(f"cdnow: {len(times)} feature snapshots, Feast")
    build_features(cparams, paths.events, paths.customers, paths.features_dir, as_of=times)
    store = apply_feast(paths)
    frame = training_frame(paths, cparams, "appetence", store)
    check_feature_times(frame)
    frame = frame[frame[TIMESTAMP] < as_of].reset_index(drop=True)
    features = model_feature_names(cparams)
    frame[features] = frame[features].astype("float32")
    cal_events = cal[[CUSTOMER_ID, "event_type", EVENT_TIME]]
    fit_began = time.perf_counter()
    hm, rows = fit_purchase_hazard(frame, cal_events, as_of, cparams, say)
    fit_seconds = time.perf_counter() - fit_began

    ids = pd.Index(pd.read_parquet(paths.customers)[CUSTOMER_ID].sort_values(), name=ENTITY_KEY)
    entity = pd.DataFrame({ENTITY_KEY: ids.to_numpy(), TIMESTAMP: as_of})
    scored = historical_features(store, entity, "appetence_v1")
    check_feature_times(scored)
    scored = scored.set_index(ENTITY_KEY).reindex(ids).reset_index()
    scored[features] = scored[features].astype("float32")
    H = hm.hazards(scored)
    R = hm.rates(scored)

    say("cdnow: BG/NBD and Pareto/NBD on the calibration summary")
    summary = bgnbd_summary(cal, as_of, ids)
    bg = fit_bgnbd(summary)
    pareto = fit_pareto(summary)
    weeks = np.arange(1, split.holdout_days // 7 + 1)
    week_days = 7.0 * weeks
    probs = {
        "hazard": {h: hz.prob_within(H, h, hp.period_days) for h in horizons},
        "bgnbd": {h: bgnbd_prob_any(bg, summary, h) for h in horizons},
        "pareto": {h: pareto_prob_any(pareto, summary, h) for h in horizons},
    }
    curves = {
        "hazard": np.stack([hz.expected_count(R, d, hp.period_days) for d in week_days], axis=1),
        "bgnbd": expected_curve(bg, summary, week_days),
        "pareto": expected_curve(pareto, summary, week_days),
    }
    counts = {m: {h: c[:, h // 7 - 1] for h in horizons} for m, c in curves.items()}

    # Only now are the holdout events read.
    truth = {h: window_truth(events, ids, as_of, as_of + pd.Timedelta(days=h)) for h in horizons}
    hold = events[(events[EVENT_TIME] >= as_of) & (events[EVENT_TIME] < split.holdout_end)]
    hold = hold[hold[CUSTOMER_ID].isin(ids)]
    day = hold[[CUSTOMER_ID, EVENT_TIME]].drop_duplicates()
    week_of = ((day[EVENT_TIME] - as_of) // pd.Timedelta(days=7)).astype(int).to_numpy()
    weekly_actual = np.cumsum(np.bincount(week_of, minlength=len(weeks))[: len(weeks)])
    tables = cdnow_tables(
        truth,
        probs,
        counts,
        weekly_actual,
        {m: c.sum(axis=0) for m, c in curves.items()},
        tp.ece_bins,
    )
    median = hz.median_days(H, hp.period_days)
    return {
        "customers": len(ids),
        "sampled": len(custs) < len(all_customers),
        "calibration_events": len(cal),
        "as_of": as_of,
        "holdout_end": split.holdout_end,
        "training_as_of": (
            min(frame[TIMESTAMP]),
            max(frame[TIMESTAMP]),
            frame[TIMESTAMP].nunique(),
        ),
        "training_rows": len(frame),
        "person_period_rows": rows["person_period"],
        "count_rows": rows["count"],
        "fit": {**hm.training, "seconds": fit_seconds, "btyd_inputs": hm.btyd is not None},
        "bgnbd_params": {k: float(v) for k, v in bg.params_.items()},
        "pareto_params": {k: float(v) for k, v in pareto.params_.items()},
        "median_within_h_max": float(np.mean(~np.isnan(median))),
        "tables": tables,
        "seconds": time.perf_counter() - began,
    }


def plot_tracking(tables: dict[str, Any], path: Path, as_of: pd.Timestamp) -> Path:
    """The tracking plot: cumulative purchase days per holdout week, predicted vs actual."""
    from training.evaluate import _save, plt

    fig, ax = plt.subplots(figsize=(7, 4))
    actual = tables["weekly_actual"]
    weeks = np.arange(1, len(actual) + 1)
    ax.plot(weeks, actual, "k-", lw=2, label="actual")
    for m, c in tables["weekly_predicted"].items():
        ax.plot(weeks, c, "--", label=f"{NAMES[m]} (MAPE {tables['tracking'][m]:.1%})")
    ax.set(
        xlabel=f"holdout week (from {as_of:%Y-%m-%d})",
        ylabel="cumulative purchase days",
        title="CDNOW holdout: tracking of repeat purchases",
    )
    ax.legend(loc="upper left", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)


# ----------------------------------------------------------------------- benchmark


def run_hazard_benchmark(
    data_dir: Path,
    datasets: Sequence[str] = ("demo", "cdnow"),
    demo_customers: int = 4000,
    demo_days: int = 730,
    demo_every_days: int = 14,
    demo_rows_per_snapshot: int | None = 1500,
    cdnow_customers: int | None = None,
    cdnow_every_days: int = 14,
    seed: int = 42,
    plot: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the demo and / or CDNOW evaluation; the parameters are ``params.yaml``'s.

    The demo uses the default parameters, CDNOW the ``cdnow`` profile (weekly periods,
    39 weeks). Nothing is registered in MLflow; ``data_dir`` is the run's own folder.

    Raises:
        ValueError: an unknown dataset.

    """
    unknown = sorted(set(datasets) - {"demo", "cdnow"})
    if unknown or not datasets:
        raise ValueError(f"datasets: {unknown or 'none'}; use demo and / or cdnow")
    say = progress or (lambda _m: None)
    data_dir = Path(data_dir).expanduser().resolve()
    began = time.perf_counter()
    out: dict[str, Any] = {"demo": None, "cdnow": None}
    if "demo" in datasets:
        out["demo"] = run_demo(
            data_dir,
            load_params(),
            demo_customers,
            demo_days,
            seed,
            demo_every_days,
            demo_rows_per_snapshot,
            say,
        )
        out["demo_params"] = load_params().hazard
    if "cdnow" in datasets:
        cparams = load_params(profile="cdnow")
        out["cdnow"] = run_cdnow(data_dir, cparams, cdnow_customers, seed, cdnow_every_days, say)
        out["cdnow_params"] = cparams.hazard
        if plot is not None:
            out["cdnow"]["plot"] = plot_tracking(
                out["cdnow"]["tables"], plot, out["cdnow"]["as_of"]
            )
    out["seconds"] = time.perf_counter() - began
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# -------------------------------------------------------------------------- report

NAMES = {
    "hazard": "hazard LightGBM (one fit)",
    "fixed": "fixed-horizon LightGBM (one per horizon)",
    "population": "population curve (Kaplan-Meier)",
    "bgnbd": "BG/NBD (lifetimes)",
    "pareto": "Pareto/NBD (lifetimes)",
}


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def demo_markdown(d: dict[str, Any], hp) -> list[str]:
    """The demo tables."""
    lines = [
        f"Simulated demo data: {d['customers']:,} contacts over {d['days']} days "
        f"({d['events']:,} events), feature snapshots every {d['every_days']} days, at most "
        f"{d['rows_per_snapshot'] or 'all'} contacts per as-of time. Periods of "
        f"{hp.period_days} days, H_max = {hp.h_max_periods} periods "
        f"({hp.period_days * hp.h_max_periods} days). Time split by as-of "
        "(`training.dataset.split_times` with the H_max window purged); test rows have their "
        "whole H_max window observed.",
    ]
    for model, r in d["models"].items():
        s = r["split"]
        lines += [
            "",
            f"### demo {model}: train {s['train']}, valid {s['valid']}, test {s['test']}",
            "",
            f"{r['rows']['test']:,} test rows; {r['person_period_rows']['train']:,} training "
            f"person-period rows ({r['fit']['trees']} trees, {r['fit']['hazard_seconds']:.0f} s"
            f" for the hazard fit{' + count fit' if 'counts' in r else ''}; the fixed models "
            f"{r['fit']['fixed_seconds']:.0f} s for {len(r['metrics'])} fits).",
            "",
            "| horizon | method | ROC-AUC | Brier | ECE | predicted | observed |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for h, ms in r["metrics"].items():
            for m in ("hazard", "fixed", "population"):
                x = ms[m]
                lines.append(
                    f"| {h} d | {NAMES[m]} | {_f(x.get('roc_auc'))} | {_f(x['brier'])} | "
                    f"{_f(x.get('ece'))} | {_f(x['predicted_share'], '.1%')} | "
                    f"{_f(x['observed_share'], '.1%')} |"
                )
        deltas = []
        for metric in ("roc_auc", "brier", "ece"):
            ds = [ms["hazard"][metric] - ms["fixed"][metric] for ms in r["metrics"].values()]
            deltas.append(f"{metric} " + " / ".join(f"{d:+.3f}" for d in ds))
        sv = r["survival"]
        lines += [
            "",
            f"Hazard minus fixed-horizon at {' / '.join(f'{h} d' for h in r['metrics'])}: "
            + "; ".join(deltas)
            + ".",
            "",
            f"Time to the first {'activity' if model == 'churn' else 'purchase'} within "
            f"{hp.period_days * hp.h_max_periods} days ({r['events_in_test']:,} events in "
            "the test rows): concordance index "
            f"**{sv['hazard']['c_index']:.3f}** for the hazard model vs "
            f"{sv['fixed']['c_index']:.3f} for the fixed {r['fixed_horizon_of_ranking']}-day "
            f"model's ranking; integrated Brier score **{sv['hazard']['ibs']:.4f}** vs "
            f"{sv['population']['ibs']:.4f} for the population curve. "
            f"{r['median_within_h_max']:.1%} of the test rows get a median time within H_max.",
        ]
        if "counts" in r:
            c = r["counts"]
            lines += [
                "",
                f"Purchase days per test row within {c['horizon_days']} days:",
                "",
                "| method | MAE | RMSE | predicted total | actual total |",
                "|---|---:|---:|---:|---:|",
            ]
            for m, label in (
                ("hazard", "count LightGBM (Poisson, one fit)"),
                ("bgnbd", "BG/NBD (the product's fit on the last training as-of time)"),
            ):
                x = c[m]
                lines.append(
                    f"| {label} | {x['mae']:.3f} | {x['rmse']:.3f} | {x['predicted']:,.0f} | "
                    f"{x['actual']:,.0f} |"
                )
    return lines


def cdnow_markdown(c: dict[str, Any], hp) -> list[str]:
    """The CDNOW tables."""
    t = c["tables"]
    first, last, n_asof = c["training_as_of"]
    lines = [
        f"CDNOW: {c['customers']:,} customers"
        + (" (a random sample)" if c["sampled"] else "")
        + f", {c['calibration_events']:,} calibration purchase lines; features as of "
        f"{c['as_of']:%Y-%m-%d}; holdout to {c['holdout_end'] - DAY:%Y-%m-%d}. "
        f"Hazard and count models: {n_asof} as-of times {first:%Y-%m-%d}..{last:%Y-%m-%d} "
        f"inside the calibration period (at most {hp.max_rows_per_snapshot or 'all'} "
        f"customers each), weekly periods up to {hp.h_max_periods} weeks, periods past the "
        f"calibration end censored; {c['person_period_rows']['train']:,} person-period and "
        f"{c['count_rows']['train']:,} count rows, a quarter of the customers held out for "
        f"early stopping ({c['fit']['trees']} + {c['fit']['count_trees']} trees, "
        f"{c['fit']['seconds']:.0f} s). BG/NBD and Pareto/NBD fitted on the daily "
        "calibration summary of all customers.",
        "",
        "At least one purchase within h (ranking and calibration):",
        "",
        "| h | method | ROC-AUC | PR-AUC | Brier | ECE | predicted buyers | actual buyers |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for h, ms in t["probability"].items():
        for m, x in ms.items():
            lines.append(
                f"| {h // 7} w | {NAMES[m]} | {x['roc_auc']:.3f} | {x['pr_auc']:.3f} | "
                f"{x['brier']:.4f} | {x['ece']:.3f} | {x['predicted_share']:.1%} | "
                f"{x['observed_share']:.1%} |"
            )
    lines += [
        "",
        "Purchase days per customer within h (the hazard model's count part vs the "
        "conditional expectations):",
        "",
        "| h | method | MAE | RMSE | predicted total | actual total |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for h, ms in t["counts"].items():
        for m, x in ms.items():
            lines.append(
                f"| {h // 7} w | {NAMES[m]} | {x['mae']:.4f} | {x['rmse']:.4f} | "
                f"{x['predicted']:,.0f} | {x['actual']:,.0f} |"
            )
    weeks = len(t["weekly_actual"])
    show = [w for w in range(4, weeks + 1, 5)] + ([weeks] if weeks % 5 != 4 else [])
    lines += [
        "",
        "Tracking: cumulative purchase days of all customers by holdout week "
        f"(MAPE over the {weeks} weeks in the last column)"
        + (f"; plot `{_shown(c['plot'])}`" if c.get("plot") else "")
        + ":",
        "",
        "| method | " + " | ".join(f"w{w}" for w in show) + " | MAPE |",
        "|---|" + "---:|" * (len(show) + 1),
        "| actual | " + " | ".join(f"{t['weekly_actual'][w - 1]:,.0f}" for w in show) + " | |",
    ]
    for m, curve in t["weekly_predicted"].items():
        lines.append(
            f"| {NAMES[m]} | "
            + " | ".join(f"{curve[w - 1]:,.0f}" for w in show)
            + f" | {t['tracking'][m]:.1%} |"
        )
    lines += ["", _cdnow_verdict(t)]
    return lines


def _shown(path: Path) -> str:
    path = Path(path)
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def _cdnow_verdict(t: dict[str, Any]) -> str:
    # hazard minus the better of BG/NBD and Pareto/NBD on each figure; differences below
    # the tolerance (half the last printed digit) are ties.
    wins, ties, losses = [], [], []

    def judge(label: str, d: float, higher_better: bool, tol: float, fmt: str) -> None:
        text = f"{label} ({format(d, fmt)})"
        if abs(d) < tol:
            ties.append(text)
        elif (d > 0) == higher_better:
            wins.append(text)
        else:
            losses.append(text)

    for h, ms in t["probability"].items():
        for metric, higher in (("roc_auc", True), ("brier", False), ("ece", False)):
            pick = max if higher else min
            d = ms["hazard"][metric] - pick(ms["bgnbd"][metric], ms["pareto"][metric])
            judge(f"{metric} at {h // 7} w", d, higher, 5e-4 if metric != "brier" else 5e-5, "+.4f")
    for h, ms in t["counts"].items():
        for metric in ("mae", "rmse"):
            d = ms["hazard"][metric] - min(ms["bgnbd"][metric], ms["pareto"][metric])
            judge(f"count {metric} at {h // 7} w", d, False, 5e-5, "+.4f")
    d = t["tracking"]["hazard"] - min(t["tracking"]["bgnbd"], t["tracking"]["pareto"])
    judge("tracking MAPE, points", d * 100, False, 0.05, "+.1f")
    n = len(wins) + len(ties) + len(losses)
    return (
        "**Verdict (CDNOW).** Hazard model minus the better of BG/NBD and Pareto/NBD on each "
        f"of {n} figures: better on {len(wins)}: "
        + (", ".join(wins) or "none")
        + f"; tied on {len(ties)}: "
        + (", ".join(ties) or "none")
        + f"; worse on {len(losses)}: "
        + (", ".join(losses) or "none")
        + "."
    )


def report_markdown(result: dict[str, Any]) -> str:
    """The BENCHMARKS.md section body."""
    lines: list[str] = []
    if result.get("demo"):
        lines += demo_markdown(result["demo"], result["demo_params"])
    if result.get("cdnow"):
        if lines:
            lines.append("")
        lines += ["### CDNOW: hazard model vs BG/NBD and Pareto/NBD", ""]
        lines += cdnow_markdown(result["cdnow"], result["cdnow_params"])
    lines += [
        "",
        "**Method.** One LightGBM binary classifier on person-period rows (contact, as-of "
        "time, period k at risk, k a feature) estimates the hazard of the first target event "
        "(purchase; for churn, any of `labels.churn_activity_types`); P(event within h) = "
        "1 − Π(1 − h_k) for every h ≤ H_max (a constant hazard inside a period between whole "
        "periods), churn within h = no activity = S(h). Periods that end after the observed "
        "data are censored (no row, never a negative). The expected number of purchase days "
        "within h comes from a second LightGBM (Poisson objective) on every observed period "
        "(repeat purchases kept), summed over the periods. The hazard's margin is Platt-"
        "calibrated on the validation person-period rows (one map for every period, so the "
        "curve stays monotone) and the count model's rates are scaled by observed / predicted "
        "purchase days on its validation rows. With `training.btyd_inputs` (on here), the hazard "
        "and count models get two more inputs, as the fixed-horizon models do: BG/NBD's "
        "expected purchases in period k and its P(alive), from one BG/NBD fit on the last "
        "training as-of time's snapshot. "
        "The fixed-horizon baselines are the product's LightGBM recipe (monotone constraints, "
        "BG/NBD inputs, Platt calibration on the validation as-of times) trained on the same "
        "as-of times as the hazard model (purged for H_max, so the 7-day model has fewer "
        "training times than it would in production).",
        "",
        f"Runtime: {result['seconds']:.0f} s, peak RSS {result['peak_rss_mb']:,.0f} MB.",
    ]
    return "\n".join(lines)
