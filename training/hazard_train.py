"""Train a hazard model (``training/hazard.py``) as the fixed models are: data, fit, gate, MLflow.

:func:`train_hazard_model` trains the time-to-event model of one question
(``appetence``: time to the first purchase, with the count model; ``churn``: time to the
next activity of ``labels.churn_activity_types``) and registers it under its own name
(:data:`engage.specs.HAZARD_NAMES`: ``appetence_hazard``, ``churn_hazard``):

1. **rows**: the training rows of the fixed model of the same question, through Feast
   with the same FeatureService and population (:func:`training.dataset.training_frame`,
   label window one period long so every as-of time with a week after it is a row),
   checked for leakage as the fixed models' are;
2. **split** (:func:`fit_evaluate_hazard`): the as-of times whose whole ``H_max`` window
   is observed, split by :func:`training.dataset.split_times` with ``H_max`` as the
   purge: no training or validation label has seen the test period, and every test row
   has its whole ``H_max`` window observed (no censoring among the test rows);
3. **fit**: person-period rows of the training times (the count rows too for
   appetence), early stopping and Platt calibration on the validation times;
4. **evaluation on the test times**, at each horizon of ``hazard.horizons_days``: the
   hazard model and the baselines of the fixed model (recency alone, RFM, logistic
   regression, BG/NBD for purchases), each fitted on the same training rows with that
   horizon's labels and calibrated on the validation rows, plus the population curve
   (Kaplan-Meier of the training rows: Brier only); then the concordance index and the
   integrated Brier score of the whole curve;
5. **baseline check** on ``hazard.primary_metric`` (e.g. ``roc_auc_30d``): does the
   hazard model beat the strongest baseline at that horizon by more than
   ``training.baseline_margin``? A baseline has no curve and cannot be served in its
   place, so the answer is recorded (tag ``beats_baseline``, the ``selection``
   sentence, the CLI) rather than acted on;
6. **gate**: :func:`training.train.gate_decision` (the fixed models' rule) on the
   primary metric: the champion's own held-out predictions on the rows it shares with
   this run, else the rows after every label it saw;
7. **MLflow**: one run in the experiment of the registry name, metrics per horizon
   (``roc_auc_30d``; ``test_<method>_<metric>_<h>d`` for every method), ``c_index``,
   ``integrated_brier``, plots, the held-out predictions and the model as text + JSON.

With ``training.refit`` the registered model is then refitted on every as-of time
(:func:`refit_hazard`); the test figures and the gate use the held-out fit's predictions.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from engage.config import Params, Paths
from engage.data.store import store_origin
from engage.specs import hazard_name, model_spec
from features.catalog import ENTITY_KEY, TIMESTAMP, model_feature_names
from training import hazard as hz
from training.baselines import BASELINES
from training.btyd import fit_on_snapshot
from training.dataset import sample_per_as_of
from training.evaluate import plot_curves, probability_metrics
from training.fingerprint import PARAMS_TAG, hazard_params_fingerprint
from training.fit_evaluate import DISPLAY, _calibrated, _fit_baseline, last_time_rows
from training.labels import LABEL, label_definition, labelable
from training.registry import (
    CHAMPION,
    HELD_OUT,
    METRICS,
    PLOTS,
    GateDecision,
    alias_version,
    hazard_conflicts,
    held_out_predictions,
    log_hazard_model,
    read_hazard_version,
    setup_mlflow,
)
from training.survival_metrics import (
    concordance_index,
    horizon_label,
    integrated_brier,
    marginal_hazards,
)

Progress = Callable[[str], None]
HAZARD = "hazard"  # the hazard model among the methods (test_hazard_roc_auc_30d)
POPULATION = "population"  # the Kaplan-Meier curve of the training rows
DISPLAY_HAZARD = {**DISPLAY, HAZARD: "hazard LightGBM", POPULATION: "population curve"}
STAGES = ("training set from Feast", "leakage audit", "hazard model and baselines", "MLflow")


@dataclass
class HazardEvaluation:
    """The fitted hazard model, how it and the baselines did on the test times.

    Attributes:
        model: the hazard model (held-out fit) to register.
        test: the test rows (keys and features).
        labels: per horizon (days), the test rows' fixed-horizon labels.
        probs: per horizon, per method, the test probabilities of the question's
            positive class (purchase within h; churn = no activity within h).
        metrics: per method, ``<metric>_<h>d`` (held-out), and for the hazard model
            ``c_index`` and ``integrated_brier``; ``population`` has ``brier_<h>d`` and
            ``integrated_brier``.
        curve: the population survival curve on the test rows per period: ``predicted``
            (mean of the model's S(k)), ``realised`` (share without the event by the
            end of period k), ``days`` (end of each period).
        best_baseline: the baseline with the best primary metric.
        beats_baseline: whether the hazard model beats it by more than the margin.
        selection: the comparison in one sentence, with the figures.
        ranges: as-of range and rows of train / valid / test.
        warnings: data problems worth a user's attention.
        notes: facts of the run a user may want to know (e.g. horizons without a
            baseline in a short history), not problems.

    """

    model: hz.HazardModel
    test: pd.DataFrame = field(repr=False)
    labels: dict[int, np.ndarray] = field(repr=False)
    probs: dict[int, dict[str, np.ndarray]] = field(repr=False)
    metrics: dict[str, dict[str, float]]
    curve: dict[str, list[float]]
    best_baseline: str
    beats_baseline: bool
    selection: str
    ranges: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def primary(self, params: Params) -> tuple[np.ndarray, np.ndarray]:
        """The test labels and the hazard model's probabilities at the primary horizon."""
        h = params.hazard.primary[1]
        return self.labels[h], self.probs[h][HAZARD]


@dataclass
class HazardTrainResult:
    """What :func:`train_hazard_model` registered, and how it compared."""

    model: str  # the registry name
    question: str  # appetence / churn
    version: str
    alias: str
    reason: str
    run_id: str
    evaluation: HazardEvaluation = field(repr=False)

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        return self.evaluation.metrics


def _with_horizon(params: Params, days: int) -> Params:
    return params.model_copy(
        update={"labels": params.labels.model_copy(update={"horizon_days": int(days)})}
    )


def rows_params(params: Params) -> Params:
    """The parameters the hazard rows are read with: a label window of one period.

    :func:`training.dataset.training_frame` keeps the as-of times whose label window is
    observed; one period is the shortest window the hazard uses, so every such time is a
    row (the longer windows are handled by censoring and the ``H_max`` split). No other
    parameter changes but the cap on contacts per as-of time (``hazard.max_rows_per_snapshot``
    when it is the smaller): same FeatureService and population as the fixed model.
    """
    caps = [
        c for c in (params.hazard.max_rows_per_snapshot, params.training.max_rows_per_snapshot) if c
    ]
    # The contacts are sampled per as-of time before the Feast retrieval (bounded cost),
    # by the smaller of the two caps and the training seed.
    out = _with_horizon(params, params.hazard.period_days)
    return out.model_copy(
        update={
            "training": out.training.model_copy(
                update={"max_rows_per_snapshot": min(caps) if caps else None}
            )
        }
    )


def purged_before(
    times: list[pd.Timestamp], test_start: pd.Timestamp, horizon_days: int, tp
) -> tuple[list, list] | None:
    """Train and valid as-of times before ``test_start`` for labels of ``horizon_days``.

    The rule of :func:`training.dataset.split_times`: validation takes the last
    ``training.valid_snapshots`` times whose window ends by ``test_start``, training
    every time whose window ends by the first validation time. None when fewer than
    ``training.min_train_snapshots`` training times (or no validation time) remain.
    """
    h = pd.Timedelta(days=horizon_days)
    valid = [t for t in times if t + h <= test_start][-tp.valid_snapshots :]
    if not valid:
        return None
    train = [t for t in times if t + h <= valid[0]]
    if len(train) < tp.min_train_snapshots:
        return None
    return train, valid


def hazard_split_times(
    times: list[pd.Timestamp], end: pd.Timestamp, params: Params, name: str = "hazard"
) -> tuple[list, list, list]:
    """Train, valid and test as-of times of a hazard model.

    Test: the last ``training.test_snapshots`` times whose whole ``H_max`` window is
    observed by ``end`` (no censoring among the test rows, every horizon scored). Valid
    and train: :func:`purged_before` the first test time with one period as the window;
    their person-periods are then censored at the start of the next part.

    Raises:
        ValueError: too few times (names ``H_max``, the times and the end of the data).

    """
    hp, tp = params.hazard, params.training
    h_max = hp.period_days * hp.h_max_periods
    full = labelable(times, h_max, end)
    parts = None
    if len(full) >= tp.test_snapshots:
        test = full[-tp.test_snapshots :]
        parts = purged_before(times, test[0], hp.period_days, tp)
    if parts is None:
        raise ValueError(
            f"{name}: H_max = hazard.period_days x hazard.h_max_periods = {hp.period_days} x "
            f"{hp.h_max_periods} = {h_max} days; {len(full)} of {len(times)} as-of times have "
            f"it observed (data until {end:%Y-%m-%d}), need training.test_snapshots="
            f"{tp.test_snapshots} of them after training.min_train_snapshots="
            f"{tp.min_train_snapshots} + training.valid_snapshots={tp.valid_snapshots} "
            "earlier times: add history or shorten hazard.h_max_periods"
        )
    return parts[0], parts[1], test


def _span(ts: pd.Series, n: int) -> str:
    return f"{ts.min():%Y-%m-%d}..{ts.max():%Y-%m-%d} ({n:,} rows)"


def fit_evaluate_hazard(
    frame: pd.DataFrame,
    events: pd.DataFrame,
    end: pd.Timestamp,
    params: Params,
    model: str,
    say: Progress | None = None,
) -> HazardEvaluation:
    """Split by as-of time, fit the hazard model, score it and the baselines per horizon.

    Pure: reads nothing, writes nothing (see the module docstring, steps 2 to 5).

    Args:
        frame: rows of ``model`` (``customer_id``, ``event_timestamp``, the features), as
            :func:`training.dataset.training_frame` returns them.
        events: ``customer_id``, ``event_type``, ``event_time`` (UTC) of the contacts, at
            least the target types up to ``end``.
        end: end of the observed data (:func:`training.labels.observed_until`).
        params: the parsed parameters.
        model: ``appetence`` or ``churn``.
        say: progress messages.

    Raises:
        ValueError: the ``H_max`` split does not fit the history (the message names
            ``H_max`` and the times), or a part has a single class at a horizon.

    """
    say = say or (lambda _m: None)
    name = hazard_name(model)
    hp, tp = params.hazard, params.training
    features = model_feature_names(params)
    h_max = hp.period_days * hp.h_max_periods
    frame = sample_per_as_of(frame, hp.max_rows_per_snapshot, tp.seed)
    first = hz.first_event_times(frame, events, hz.target_event_types(params, model))
    times = sorted(pd.Timestamp(t) for t in frame[TIMESTAMP].unique())
    train_t, valid_t, test_t = hazard_split_times(times, end, params, name)
    test_start, valid_start = test_t[0], valid_t[0]
    ts = frame[TIMESTAMP]
    parts = {
        "train": ts.isin(train_t).to_numpy(),
        "valid": ts.isin(valid_t).to_numpy(),
        "test": ts.isin(test_t).to_numpy(),
    }
    ranges = {k: _span(ts[m], int(m.sum())) for k, m in parts.items()}
    # Censored at the start of the next part: a training period ending after the first
    # validation time has no row (nor a validation period ending after the first test
    # time), so no label of the fit has seen the period it is evaluated on.
    cut = {"train": valid_start, "valid": test_start}
    pp = {k: hz.person_period(frame[parts[k]], first[parts[k]], cut[k], hp) for k in cut}
    counts = None
    if model_spec(model).label_rule == "purchase_in_window":
        conv = params.data.conversion_event
        counts = {k: hz.count_frame(frame[parts[k]], events, cut[k], hp, conv) for k in cut}
    say(f"hazard model on {len(pp['train']):,} person-period rows")
    bg = hz.btyd_inputs_fit(frame[parts["train"]], hp, tp)
    hm = hz.fit_hazard_model(
        model,
        features,
        pp["train"],
        pp["valid"],
        hp,
        tp,
        counts["train"] if counts else None,
        counts["valid"] if counts else None,
        btyd=bg,
    )
    test = frame[parts["test"]].reset_index(drop=True)
    first_test = first[parts["test"]].reset_index(drop=True)
    H = hm.hazards(test)
    km = marginal_hazards(pp["train"], hp.h_max_periods)
    churn = model_spec(model).label_rule == "quiet_in_window"
    metrics: dict[str, dict[str, float]] = {}
    labels: dict[int, np.ndarray] = {}
    probs: dict[int, dict[str, np.ndarray]] = {}
    skipped: list[int] = []  # horizons too long for a purged split of the baselines
    for h in hp.horizons_days:
        say(f"baselines at {h} days")
        y_all = horizon_label(first, frame[TIMESTAMP], h, model)
        labelled = frame.assign(**{LABEL: y_all})
        if labelled.loc[parts["test"], LABEL].nunique() < 2:
            raise ValueError(
                f"{name}: the test rows have a single class at {h} days "
                f"({int(parts['test'].sum()):,} rows); more data needed"
            )
        y = y_all[parts["test"]]
        p_event = hz.prob_within(H, h, hp.period_days)
        by_method = {HAZARD: 1.0 - p_event if churn else p_event}
        hparams = _with_horizon(params, h)
        trained_for = label_definition(hparams, model)
        # The baselines' own purged split at this horizon (the fixed models' rule), with
        # the same test times: complete h-day labels that end before the next part.
        split_h = purged_before(times, test_start, h, tp)
        if split_h is None:
            skipped.append(h)
            methods_h = ()
        else:
            train_h = labelled[ts.isin(split_h[0]).to_numpy()]
            valid_h = labelled[ts.isin(split_h[1]).to_numpy()]
            methods_h = BASELINES[model_spec(model).label_rule]
            if train_h[LABEL].nunique() < 2 or valid_h[LABEL].nunique() < 2:
                skipped.append(h)
                methods_h = ()
        for method in methods_h:
            fitted = _calibrated(
                # BG/NBD (None): fitted by the baseline on its own last training time,
                # as the fixed model's split would.
                _fit_baseline(method, model, train_h, hparams, trained_for, None),
                tp.calibration,
                valid_h,
            )
            by_method[method] = fitted.predict_proba(test)
        for method, p in by_method.items():
            m = probability_metrics(y, p, tp.ece_bins)
            metrics.setdefault(method, {}).update({f"{k}_{h}d": v for k, v in m.items()})
        p_km = float(hz.prob_within(km[None, :], h, hp.period_days)[0])
        p_km = 1.0 - p_km if churn else p_km
        metrics.setdefault(POPULATION, {})[f"brier_{h}d"] = float(np.mean((y - p_km) ** 2))
        labels[h], probs[h] = y, by_method
    # The whole curve: time to the event within H_max (no test row is censored).
    t_days = (pd.to_datetime(first_test, utc=True) - test[TIMESTAMP]) / pd.Timedelta(days=1)
    t_days = t_days.to_numpy(float)
    event = (~np.isnan(t_days)) & (t_days < h_max)
    S = hz.survival(H)
    F_km = np.broadcast_to(1.0 - np.cumprod(1.0 - km), S.shape)
    metrics[HAZARD]["integrated_brier"] = integrated_brier(1.0 - S, t_days, hp.period_days)
    metrics[POPULATION]["integrated_brier"] = integrated_brier(F_km, t_days, hp.period_days)
    if event.any() and not event.all():
        metrics[HAZARD]["c_index"] = concordance_index(
            np.where(event, t_days, h_max), event, 1.0 - S[:, -1]
        )
    ends = hp.period_days * np.arange(1, hp.h_max_periods + 1)
    realised = [float(np.mean(~(np.nan_to_num(t_days, nan=np.inf) < e))) for e in ends]
    curve = {
        "days": [int(e) for e in ends],
        "predicted": [float(v) for v in S.mean(axis=0)],
        "realised": realised,
        "population": [float(v) for v in np.cumprod(1.0 - km)],
    }
    if hp.primary[1] in skipped:
        raise ValueError(
            f"{name}: no purged split of the baselines at the primary horizon "
            f"({hp.primary_metric}): too little history before the test times "
            f"({test_start:%Y-%m-%d}); add history or choose a shorter hazard.primary_metric"
        )
    best, beats, sentence = _versus_baselines(metrics, params)
    warnings = []
    if not beats:
        warnings.append(f"{name}: {sentence}")
    notes = []
    if skipped:
        # Expected on a short history, and the primary horizon has its baselines (checked
        # above): a fact of the run, not a problem.
        notes.append(
            f"{name}: no baseline at {skipped} days: the history before the test times is "
            "too short for their purged split (the hazard model is still scored there)"
        )
    served = hm
    if tp.refit:
        say("refit on every as-of time")
        served = refit_hazard(hm, frame, first, events, end, params)
    else:
        served.training.update(refit=False, labels_seen_until=test_start.isoformat())
    served.training.update(
        {
            "as_of_train": ranges["train"],
            "as_of_valid": ranges["valid"],
            "as_of_test": ranges["test"],
            "heldout_trees": hm.booster.num_trees(),
            "best_baseline": best,
            "beats_baseline": beats,
            "selection": sentence,
            "feature_service": model_spec(model).feature_service,
            "profile": params.profile or "default",
        }
    )
    return HazardEvaluation(
        model=served,
        test=test,
        labels=labels,
        probs=probs,
        metrics=metrics,
        curve=curve,
        best_baseline=best,
        beats_baseline=beats,
        selection=sentence,
        ranges=ranges,
        warnings=warnings,
        notes=notes,
    )


def refit_hazard(
    heldout: hz.HazardModel,
    frame: pd.DataFrame,
    first: pd.Series,
    events: pd.DataFrame,
    end: pd.Timestamp,
    params: Params,
) -> hz.HazardModel:
    """The hazard (and count) model refitted on every as-of time, censored at ``end``.

    As the fixed models' refit (``training.refit``): the held-out fit's number of trees
    (leaf settings adapted to these rows), BG/NBD inputs refitted on the last as-of time, the
    held-out fit's calibrator and count scale (no later time is left to fit new ones
    out of sample; the fixed models keep theirs the same way when no twin fits). The
    served model then has seen the most recent periods; its test figures are the
    held-out fit's.
    """
    import lightgbm as lgb

    from training.fit import adapt_to_rows, lightgbm_params

    hp, tp = params.hazard, params.training
    h_max = hp.period_days * hp.h_max_periods
    pp = hz.person_period(frame, first, end, hp)
    bg = fit_on_snapshot(last_time_rows(frame), h_max, tp.seed) if heldout.btyd else None
    cols = [*heldout.features, hz.PERIOD, *(hz.BTYD_INPUTS if bg is not None else ())]

    def inputs(rows: pd.DataFrame) -> pd.DataFrame:
        return (hz.add_btyd_inputs(rows, bg, hp.period_days) if bg is not None else rows)[cols]

    def rounds(X, y, objective: str, trees: int) -> lgb.Booster:
        settings = (
            adapt_to_rows(tp.lightgbm, y)
            if objective == "binary" and tp.adapt_to_rows
            else tp.lightgbm
        )
        booster_params = lightgbm_params(settings, tp.seed, None)
        if objective == "poisson":
            booster_params.update(objective="poisson", metric="poisson")
        data = lgb.Dataset(X, label=y, free_raw_data=False)
        return lgb.train(booster_params, data, num_boost_round=max(1, trees))

    y = pp[hz.LABEL].to_numpy()
    booster = rounds(inputs(pp), y, "binary", heldout.booster.num_trees())
    count_booster = None
    if heldout.count_booster is not None:
        cf = hz.count_frame(frame, events, end, hp, params.data.conversion_event)
        count_booster = rounds(
            inputs(cf), cf[hz.LABEL].to_numpy(), "poisson", heldout.count_booster.num_trees()
        )
    ts = frame[TIMESTAMP]
    return replace(
        heldout,
        booster=booster,
        count_booster=count_booster,
        btyd=bg,
        training={
            **heldout.training,
            "refit": True,
            "refit_rows": len(pp),
            "refit_as_of": _span(ts, len(frame)),
            "trees": booster.num_trees(),
            "count_trees": count_booster.num_trees() if count_booster is not None else None,
            "calibration": f"{heldout.training.get('calibration')}: the held-out fit's",
            # Periods ending by the end of the data: every label it saw ends by then.
            "labels_seen_until": pd.Timestamp(end).isoformat(),
        },
    )


def _versus_baselines(
    metrics: dict[str, dict[str, float]], params: Params
) -> tuple[str, bool, str]:
    """(best baseline, beats it, sentence) on ``hazard.primary_metric``."""
    key = params.hazard.primary_metric
    margin = params.training.baseline_margin
    baselines = [m for m in metrics if m not in (HAZARD, POPULATION)]
    best = max(baselines, key=lambda m: (metrics[m][key], -baselines.index(m)))
    ours, theirs = metrics[HAZARD][key], metrics[best][key]
    gap = ours - theirs
    if gap > margin:
        return (
            best,
            True,
            f"hazard {key} {ours:.4f} beats the best baseline, {DISPLAY[best]} ({theirs:.4f}), "
            f"by {gap:+.4f}",
        )
    need = f" by more than {margin:g}" if margin else ""
    return (
        best,
        False,
        f"hazard {key} {ours:.4f} does NOT beat the best baseline, {DISPLAY[best]} "
        f"({theirs:.4f}){need} ({gap:+.4f}); it is registered anyway: a baseline gives one "
        "horizon, not a curve",
    )


def load_events(paths: Paths, event_types: list[str]) -> pd.DataFrame:
    """``customer_id``, ``event_type``, ``event_time`` (UTC) of the given types only."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        types = pd.DataFrame({"event_type": sorted(set(event_types))})
        con.register("types", types)
        ev = con.execute(
            "SELECT customer_id, event_type, event_time FROM read_parquet(?) "
            "SEMI JOIN types USING (event_type)",
            [str(paths.events)],
        ).df()
    finally:
        con.close()
    ev["event_time"] = pd.to_datetime(ev["event_time"], utc=True)
    return ev


def hazard_gate(
    paths: Paths, name: str, model: str, ev: HazardEvaluation, params: Params
) -> GateDecision:
    """:func:`training.train.gate_decision` on ``hazard.primary_metric``.

    The champion's held-out predictions at the primary horizon (``p_<h>d`` of its run),
    else its probabilities on the test rows after every label it saw. A champion whose
    period, ``H_max`` or horizons differ from the parameters answers another question and
    is replaced.
    """
    from training.train import ChampionView, gate_decision

    metric, h = params.hazard.primary
    key = params.hazard.primary_metric
    version = alias_version(setup_mlflow(paths), name, CHAMPION)
    churn = model_spec(model).label_rule == "quiet_in_window"

    def champion() -> ChampionView:
        # Loaded without the parameter check: a contradiction is a reason to replace it.
        champ, _ = read_hazard_version(paths, model)

        def held() -> pd.DataFrame | None:
            try:
                frame = held_out_predictions(paths, name)[0]
            except LookupError:
                return None
            col = f"p_{h}d"
            return frame.assign(p=frame[col]) if col in frame.columns else None

        def predict(rows: pd.DataFrame) -> np.ndarray:
            p = hz.prob_within(champ.hazards(rows), h, champ.period_days)
            return 1.0 - p if churn else p

        return ChampionView(
            store_origin=champ.training.get("store_origin"),
            conflicts=hazard_conflicts(champ, params.hazard),
            held_out=held,
            labels_seen_until=champ.training.get("labels_seen_until"),
            predict=predict,
        )

    y, p = ev.primary(params)
    return gate_decision(
        metric,
        params.training.promotion_tolerance,
        version,
        lambda: (ev.test, y, p),
        ev.metrics[HAZARD][key],
        ev.model.training.get("store_origin"),
        champion,
        label=key,
    )


def plot_calibration_by_horizon(ev: HazardEvaluation, path: Path, title: str) -> Path:
    """One reliability diagram per horizon: the hazard model and the best baseline."""
    from training.evaluate import _save, plt

    hs = sorted(ev.labels)
    fig, axes = plt.subplots(1, len(hs), figsize=(4 * len(hs), 4), squeeze=False)
    for ax, h in zip(axes[0], hs, strict=True):
        y = ev.labels[h]
        for method in (HAZARD, ev.best_baseline):
            if method not in ev.probs[h]:
                continue  # no baseline at this horizon (too little history)
            p = ev.probs[h][method]
            q = np.unique(np.quantile(p, np.linspace(0, 1, 11)))
            idx = np.clip(np.searchsorted(q, p, side="right") - 1, 0, max(len(q) - 2, 0))
            mp = [p[idx == b].mean() for b in np.unique(idx)]
            my = [y[idx == b].mean() for b in np.unique(idx)]
            ax.plot(mp, my, "o-", ms=3, label=DISPLAY_HAZARD[method])
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set(xlabel="predicted", ylabel="observed", title=f"{h} days")
        ax.legend(loc="upper left", fontsize=7)
    fig.suptitle(f"{title}: calibration per horizon (test rows)")
    return _save(fig, path)


def plot_survival(ev: HazardEvaluation, path: Path, title: str, event: str) -> Path:
    """The population survival curve of the test rows: predicted vs realised."""
    from training.evaluate import _save, plt

    c = ev.curve
    days = [0, *c["days"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(days, [1.0, *c["realised"]], "ko-", ms=4, lw=2, label="realised (end of period)")
    ax.plot(days, [1.0, *c["predicted"]], "o--", ms=3, label="hazard model (mean S)")
    ax.plot(days, [1.0, *c["population"]], ":", label="population curve (training rows)")
    ax.set(
        xlabel="days after the as-of time",
        ylabel=f"share without {event}",
        title=f"{title}: survival, test rows",
    )
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def log_and_register_hazard(
    paths: Paths, params: Params, model: str, ev: HazardEvaluation
) -> HazardTrainResult:
    """Gate, log the run to MLflow, register the hazard model and set its alias."""
    import mlflow

    from training.train import _requirements, data_fingerprint, git_commit

    name = hazard_name(model)
    hp, tp = params.hazard, params.training
    hm = ev.model
    client = setup_mlflow(paths)
    decision = hazard_gate(paths, name, model, ev, params)
    active = mlflow.active_run()
    running = nullcontext(active) if active else mlflow.start_run()
    with running as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(
            {
                **{f"hazard.{k}": v for k, v in hp.model_dump().items()},
                **{f"lgbm.{k}": v for k, v in tp.lightgbm.model_dump().items()},
                "calibration": tp.calibration,
                "seed": tp.seed,
                "n_features": len(hm.features),
                "btyd_inputs": hm.btyd is not None,
                "baseline_margin": tp.baseline_margin,
                "promotion_tolerance": tp.promotion_tolerance,
            }
        )
        # The hazard model's metrics under their own names (roc_auc_30d: what
        # hazard.primary_metric names), and every method's as test_<method>_<metric>.
        mlflow.log_metrics(ev.metrics[HAZARD])
        for who, m in ev.metrics.items():
            mlflow.log_metrics({f"test_{who}_{k}": v for k, v in m.items()})
        mlflow.log_metrics(
            {
                "train_person_period_rows": hm.training["train_rows"],
                "valid_person_period_rows": hm.training["valid_rows"],
                "test_rows": len(ev.test),
                "trees": hm.training["trees"],
                **(
                    {"count_trees": hm.training["count_trees"]}
                    if hm.training.get("count_trees") is not None
                    else {}
                ),
            }
        )
        tags = {
            "git_commit": git_commit(paths.root),
            "data_fingerprint": data_fingerprint(paths.events),
            PARAMS_TAG: hazard_params_fingerprint(params),
            "feature_service": model_spec(model).feature_service,
            "question": model,
            "as_of_train": ev.ranges["train"],
            "as_of_valid": ev.ranges["valid"],
            "as_of_test": ev.ranges["test"],
            "profile": params.profile or "default",
            "gate": decision.reason,
            "primary_metric": hp.primary_metric,
            "selection": ev.selection,
            "served_method": HAZARD,
            "champion_kind": HAZARD,
            "best_baseline": ev.best_baseline,
            "beats_baseline": str(ev.beats_baseline).lower(),
        }
        if ev.warnings:
            tags["warnings"] = " | ".join(ev.warnings)
        if ev.notes:
            tags["notes"] = " | ".join(ev.notes)
        mlflow.set_tags(tags)
        out = Path(tmp)
        title = name
        event = "a purchase" if model_spec(model).label_rule == "purchase_in_window" else "activity"
        plots = [
            plot_calibration_by_horizon(ev, out / "calibration_by_horizon.png", title),
            plot_survival(ev, out / "survival_curve.png", title, event),
        ]
        y, _ = ev.primary(params)
        h = hp.primary[1]
        scores = {DISPLAY_HAZARD[m]: p for m, p in ev.probs[h].items()}
        plots += plot_curves(y, scores, out / "primary", f"{title} at {h} days")
        for path in plots:
            mlflow.log_artifact(str(path), PLOTS)
        (out / METRICS).write_text(
            json.dumps(
                {
                    **ev.metrics,
                    "survival_curve": ev.curve,
                    "selection": {
                        "primary_metric": hp.primary_metric,
                        "best_baseline": ev.best_baseline,
                        "beats_baseline": ev.beats_baseline,
                        "why": ev.selection,
                    },
                },
                indent=2,
            )
        )
        mlflow.log_artifact(str(out / METRICS))
        # The test rows and held-out probabilities at every horizon (the next run's gate
        # reads p_<h>d); `label` and `p` are the primary horizon's.
        held = ev.test[[ENTITY_KEY, TIMESTAMP]].copy()
        held[LABEL], held["p"] = ev.primary(params)
        for hh in sorted(ev.labels):
            held[f"label_{hh}d"] = ev.labels[hh]
            for who, p in ev.probs[hh].items():
                held[f"p_{hh}d" if who == HAZARD else f"p_{who}_{hh}d"] = p
        held.to_parquet(out / HELD_OUT)
        mlflow.log_artifact(str(out / HELD_OUT))
        example = ev.test[hm.features].head(5).astype(float)
        info = log_hazard_model(hm, name, example, _requirements())
        version = str(info.registered_model_version)
        client.set_registered_model_alias(name, decision.alias, version)
        client.set_model_version_tag(name, version, "gate", decision.reason)
        client.set_model_version_tag(name, version, "kind", HAZARD)
        client.set_model_version_tag(name, version, "digest", hm.digest())
        run_id = run.info.run_id
    return HazardTrainResult(
        model=name,
        question=model,
        version=version,
        alias=decision.alias,
        reason=decision.reason,
        run_id=run_id,
        evaluation=ev,
    )


def train_hazard_model(
    paths: Paths,
    params: Params,
    model: str,
    progress: Progress | None = None,
    frame: pd.DataFrame | None = None,
) -> HazardTrainResult:
    """Train, evaluate against the baselines, log, register and gate a hazard model.

    Args:
        paths: resolved locations.
        params: the parsed parameters.
        model: the question, ``appetence`` or ``churn`` (registered as
            ``<model>_hazard``).
        progress: called with a short message at each stage (:data:`STAGES`).
        frame: ready rows (features at every as-of time), else read from Feast.

    Raises:
        ValueError: the ``H_max`` split does not fit the history, or a single class.
        training.dataset.LeakageError: a feature is not point in time.
        FileNotFoundError: no events or no snapshot.

    """
    import mlflow

    from training.dataset import audit_against_events, check_feature_times, training_frame
    from training.labels import observed_until
    from training.mlflow_ui import run_name
    from training.registry import experiment_id

    say = progress or (lambda _m: None)
    name = hazard_name(model)
    rparams = rows_params(params)
    if frame is None:
        say(STAGES[0])
        frame = training_frame(paths, rparams, model)
    check_feature_times(frame)
    say(STAGES[1])
    customers = paths.customers if paths.customers.exists() else None
    audit_against_events(
        frame,
        paths.events,
        customers,
        rparams,
        model_feature_names(params),
        seed=params.training.seed,
    )
    types = [*hz.target_event_types(params, model), params.data.conversion_event]
    events = load_events(paths, types)
    end = observed_until(paths.events)
    exp = experiment_id(setup_mlflow(paths), paths, name)
    with mlflow.start_run(experiment_id=exp, run_name=run_name(name, frame)):
        say(STAGES[2])
        ev = fit_evaluate_hazard(frame, events, end, params, model, say)
        ev.model.training["store_origin"] = store_origin(paths.events)
        say(STAGES[3])
        return log_and_register_hazard(paths, params, model, ev)
