"""``engage monitor``: realised outcomes of past scoring runs, drift, and alerts.

:func:`monitor` reads the stored scoring runs (:mod:`serving.runs`), the events, the
feature snapshots and the registry, and returns a :class:`MonitorReport`:

- **outcomes**: for each run and model, the realised labels computed by
  :func:`training.labels.make_labels` at the run's as-of time with the label definition
  the scoring model was trained for (horizon, rule parameters: from the run's metadata,
  else from the version's ``model.json``), compared with the run's scores
  (:func:`monitoring.outcomes.evaluate_run`); partial windows are labelled as such;
- **feature drift**: PSI of every input of each champion between the snapshots of its
  data window (``monitoring.reference_window``: the as-of range of its ``test`` split,
  the freshest data it was validated on, or of its ``train`` split; sampled to
  ``monitoring.reference_rows``) and the latest snapshot;
- **score and stage drift**: PSI of each probability and of the stage counts between
  consecutive runs;
- **alerts**: PSI at or above ``monitoring.psi_warn`` / ``psi_alert``; a realised
  ROC-AUC of the current champion (complete windows only) below its test ROC-AUC by
  ``monitoring.auc_drop_warn`` / ``auc_drop_alert``. Any alert makes
  :attr:`MonitorReport.exit_code` :data:`ALERT_EXIT_CODE`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from engage.config import LabelsParams, Params, Paths
from engage.specs import MODEL_NAMES, MODEL_SPECS, ModelSpec
from features.catalog import ENTITY_KEY
from features.snapshots import list_snapshots, to_utc
from monitoring.drift import ALERT, OK, WARN, categorical_psi, feature_psi, level, psi
from monitoring.outcomes import (
    COMPLETE,
    PENDING,
    RUN_COLUMNS,
    ModelOutcome,
    evaluate_run,
    label_window,
)
from serving.index import STAGES
from serving.runs import RunInfo, list_runs

ALERT_EXIT_CODE = 3
Progress = Callable[[str], None]
_RANGE = re.compile(r"(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})")


@dataclass(frozen=True)
class Alert:
    """One threshold crossed: ``level`` is ``warn`` or ``alert``."""

    level: str
    kind: str  # feature_drift, score_drift, stage_drift, performance
    model: str
    subject: str
    value: float
    threshold: float
    message: str


@dataclass
class FeatureDrift:
    """PSI of each input of a champion: its training window against the latest snapshot."""

    model: str
    version: str
    reference: str  # the training as-of range
    reference_rows: int
    current: pd.Timestamp | None
    current_rows: int
    table: pd.DataFrame  # monitoring.drift.feature_psi, plus the gain share "importance"
    note: str = ""


@dataclass
class MonitorReport:
    """Everything ``engage monitor`` found; see the module docstring."""

    observed_until: pd.Timestamp
    runs: list[RunInfo]
    outcomes: list[ModelOutcome]
    feature_drift: list[FeatureDrift]
    score_drift: pd.DataFrame
    stage_drift: pd.DataFrame
    alerts: list[Alert] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    champions: dict[str, str] = field(default_factory=dict)
    test_auc: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """:data:`ALERT_EXIT_CODE` if any alert, else 0 (warnings do not count)."""
        return ALERT_EXIT_CODE if any(a.level == ALERT for a in self.alerts) else 0

    def outcome_frame(self) -> pd.DataFrame:
        """One row per run and model: window, rates, metrics, at-risk and stage figures."""
        rows = []
        for o in self.outcomes:
            row: dict[str, Any] = {
                "model": o.model,
                "version": o.version,
                "run_id": o.run_id,
                "as_of": o.as_of,
                "status": o.status,
                "observed_share": o.window.observed_share,
                "population": o.population,
                "evaluated": o.evaluated,
                "unscored": o.unscored,
                "predicted_rate": o.predicted_rate,
                "realised_rate": o.realised_rate,
                "test_roc_auc": self.test_auc.get((o.model, o.version), np.nan),
                **{k: o.metrics.get(k, np.nan) for k in ("roc_auc", "pr_auc", "brier", "ece")},
                **{f"at_risk_{k}": v for k, v in o.at_risk.items()},
                **{f"stage_{k}": v for k, v in o.stages.items()},
                "note": o.note,
            }
            rows.append(row)
        return pd.DataFrame(rows)


def label_params(params: Params, trained_for: dict[str, Any]) -> Params:
    """``params`` with the label definition a model was trained for (horizon, rule values).

    Every key of ``trained_for`` that is a ``labels`` parameter replaces it, and
    ``conversion_event`` replaces ``data.conversion_event``; the result is validated.

    Raises:
        ValueError: the stored definition is not a valid set of label parameters.

    """
    labels = params.labels.model_dump()
    labels.update({k: v for k, v in trained_for.items() if k in LabelsParams.model_fields})
    try:
        lp = LabelsParams.model_validate(labels)
    except ValueError as err:
        raise ValueError(f"the model's stored label definition is invalid: {err}") from None
    update: dict[str, Any] = {"labels": lp}
    conv = trained_for.get("conversion_event")
    if conv is not None and conv != params.data.conversion_event:
        update["data"] = params.data.model_copy(update={"conversion_event": conv})
    return params.model_copy(update=update)


def _definition_key(trained_for: dict[str, Any]) -> str:
    return repr(sorted((k, repr(v)) for k, v in trained_for.items() if k != "horizon_days"))


def _other_stage(spec: ModelSpec) -> str:
    pair = STAGES[2 * spec.half : 2 * spec.half + 2]
    return next(s for s in pair if s != spec.positive_stage)


def _population(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """The rows a model scores: every contact, or its own half."""
    if spec.scores_everyone:
        return frame
    return frame[frame["has_purchased"] == spec.half]


class _Registry:
    """Model facts read once per monitor call (definitions, test ROC-AUC, champions)."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._trained_for: dict[tuple[str, str], dict[str, Any]] = {}
        self._test_auc: dict[tuple[str, str], float] = {}

    def trained_for(self, run: RunInfo, model: str) -> dict[str, Any]:
        if model in run.trained_for:
            return run.trained_for[model]
        from training.registry import load_version

        key = (model, run.versions[model])
        if key not in self._trained_for:
            self._trained_for[key] = load_version(self.paths, *key).trained_for
        return self._trained_for[key]

    def test_auc(self, model: str, version: str) -> float:
        from training.registry import version_run

        key = (model, version)
        if key not in self._test_auc:
            try:
                metrics = version_run(self.paths, model, version).metrics
            except LookupError:
                metrics = {}
            self._test_auc[key] = float(metrics.get("test_model_roc_auc", np.nan))
        return self._test_auc[key]


def realised_outcomes(
    paths: Paths,
    params: Params,
    runs: list[RunInfo],
    observed_until: pd.Timestamp,
    registry: _Registry | None = None,
    progress: Progress | None = None,
) -> tuple[list[ModelOutcome], list[str]]:
    """The realised outcome of every run and model (see :mod:`monitoring.outcomes`).

    Labels come from :func:`training.labels.make_labels`, batched per model, label
    definition and observed horizon (one scan of the events each).

    Returns:
        The outcomes (runs in order, models in :data:`engage.specs.MODEL_NAMES` order)
        and notes on what could not be evaluated (a model version gone from the registry).

    """
    from training.labels import make_labels

    say = progress or (lambda _m: None)
    registry = registry or _Registry(paths)
    customers = paths.customers if paths.customers.exists() else None
    mp = params.monitoring
    notes: list[str] = []
    # (model, definition, labelled horizon) -> [(run, window, trained_for)]
    plan: dict[tuple[str, str, int], list] = {}
    pending: list[tuple[RunInfo, str, Any]] = []
    for run in runs:
        for model in MODEL_NAMES:
            if model not in run.versions or not run.versions[model]:
                continue
            try:
                tf = registry.trained_for(run, model)
            except (LookupError, ValueError) as err:
                notes.append(f"run {run.run_id}, {model} v{run.versions[model]}: {err}")
                continue
            horizon = int(tf.get("horizon_days") or params.labels.horizon_days)
            window = label_window(run.as_of, horizon, observed_until)
            if window.status == PENDING:
                pending.append((run, model, window))
                continue
            key = (model, _definition_key(tf), window.observed_days)
            plan.setdefault(key, []).append((run, window, tf))
    labels_of: dict[tuple[str, str], tuple[pd.DataFrame, Any]] = {}
    for (model, _, days), items in plan.items():
        say(f"realised labels: {model}, {len(items)} run(s), {days}-day window")
        p = label_params(params, {**items[0][2], "horizon_days": days})
        times = sorted({run.as_of for run, _, _ in items})
        labels = make_labels(paths.events, customers, times, p, model)
        by_time = dict(tuple(labels.groupby("event_timestamp")))
        for run, window, _ in items:
            rows = by_time.get(run.as_of, labels.iloc[:0])
            labels_of[(run.run_id, model)] = (rows.reset_index(drop=True), window)
    outcomes = []
    for run in runs:
        wanted = [m for m in MODEL_NAMES if (run.run_id, m) in labels_of]
        wanted += [m for r, m, _ in pending if r.run_id == run.run_id]
        if not wanted:
            continue
        say(f"comparing run {run.run_id}")
        scores = pd.read_parquet(run.path, columns=RUN_COLUMNS)
        for model in MODEL_NAMES:
            spec = MODEL_SPECS[model]
            if (run.run_id, model) in labels_of:
                labels, window = labels_of[(run.run_id, model)]
            else:
                match = [w for r, m, w in pending if r.run_id == run.run_id and m == model]
                if not match:
                    continue
                labels, window = pd.DataFrame(columns=[ENTITY_KEY, "label"]), match[0]
            outcomes.append(
                evaluate_run(
                    scores,
                    labels,
                    spec,
                    window,
                    version=run.versions[model],
                    run_id=run.run_id,
                    min_rows=mp.min_rows,
                    at_risk_top=mp.at_risk_top,
                    ece_bins=params.training.ece_bins,
                    other_stage=_other_stage(spec),
                )
            )
    return outcomes, notes


def _training_window(
    training: dict[str, Any], part: str = "test"
) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """The as-of range ``[start, end)`` of a part of the model's split, from its facts."""
    m = _RANGE.search(str(training.get(f"as_of_{part}", "")))
    if not m:
        return None
    lo, hi = (to_utc(x) for x in m.groups())
    return lo, hi + pd.Timedelta(days=1)


def _sample(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    if len(frame) <= n:
        return frame
    return frame.iloc[np.sort(rng.choice(len(frame), size=n, replace=False))]


def feature_drift(paths: Paths, params: Params, progress: Progress | None = None) -> list:
    """PSI of each champion's inputs: its data window against the latest snapshot.

    The window is the as-of range of the champion's ``monitoring.reference_window`` split
    (``as_of_test`` or ``as_of_train`` of its ``model.json``); its snapshots are read for
    the model's rows (every contact, or its own half) and sampled to
    ``monitoring.reference_rows`` in all (seeded), the latest snapshot too. Models
    without a champion are skipped.

    Returns:
        One :class:`FeatureDrift` per champion.

    """
    from training.registry import load_model

    say = progress or (lambda _m: None)
    mp = params.monitoring
    snaps = list_snapshots(paths.features_dir)
    out = []
    for model in MODEL_NAMES:
        spec = MODEL_SPECS[model]
        try:
            champion, version = load_model(paths, model)
        except LookupError:
            continue
        features = list(champion.features)
        importance: dict[str, float] = {}
        if champion.booster is not None:
            # Gains are over the booster's inputs: the features, then derived ones (BG/NBD).
            gains = champion.booster.feature_importance("gain").astype("float64")
            shares = gains / gains.sum() if gains.sum() else gains
            importance = dict(zip(champion.input_names, shares, strict=True))
        window = _training_window(champion.training, mp.reference_window)
        drift = FeatureDrift(model, version, "", 0, None, 0, pd.DataFrame())
        out.append(drift)
        if window is None or not snaps:
            drift.note = "no training window recorded, or no snapshot" if snaps else "no snapshot"
            continue
        lo, hi = window
        drift.reference = f"{lo:%Y-%m-%d}..{hi - pd.Timedelta(days=1):%Y-%m-%d}"
        ref_snaps = [s for s in snaps if lo <= s.as_of < hi]
        if not ref_snaps:
            drift.note = f"no stored snapshot in the reference window {drift.reference}"
            continue
        say(f"feature drift: {model}, {len(ref_snaps)} training snapshots")
        rng = np.random.default_rng(mp.seed)
        per = max(1, -(-mp.reference_rows // len(ref_snaps)))
        columns = ["has_purchased", *[f for f in features if f != "has_purchased"]]
        parts = [
            _sample(_population(pd.read_parquet(s.path, columns=columns), spec), per, rng)
            for s in ref_snaps
        ]
        reference = pd.concat(parts, ignore_index=True)
        latest = snaps[-1]
        current = _sample(
            _population(pd.read_parquet(latest.path, columns=columns), spec), mp.reference_rows, rng
        )
        drift.reference_rows, drift.current, drift.current_rows = (
            len(reference),
            latest.as_of,
            len(current),
        )
        if reference.empty or current.empty:
            drift.note = "no row of the model's population in the reference or the latest snapshot"
            continue
        table = feature_psi(reference, current, features, mp.psi_bins, mp.psi_warn, mp.psi_alert)
        table.insert(3, "importance", table["feature"].map(importance))
        drift.table = table
    return out


def run_drift(
    paths: Paths, params: Params, runs: list[RunInfo]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """PSI of the probabilities and of the stage counts between consecutive runs.

    Returns:
        ``(scores, stages)``: one row per pair of consecutive runs (and probability):
        ``from_run``, ``to_run``, ``to_as_of``, ``models_changed`` (the two runs were
        scored by different versions: a shift is expected), ``psi``, ``level``; the
        stage table adds the share of each stage in the later run.

    """
    mp = params.monitoring
    score_rows, stage_rows = [], []
    cols = ["has_purchased", "stage", *[s.probability for s in MODEL_SPECS.values()]]
    prev: tuple[RunInfo, pd.DataFrame] | None = None
    for run in runs:
        frame = pd.read_parquet(run.path, columns=cols)
        if prev is not None:
            before, old = prev
            changed = before.versions != run.versions
            base = {
                "from_run": before.run_id,
                "to_run": run.run_id,
                "to_as_of": run.as_of,
                "models_changed": changed,
            }
            for spec in MODEL_SPECS.values():
                a = old[spec.probability].dropna()
                b = frame[spec.probability].dropna()
                value = psi(a, b, mp.psi_bins) if len(a) and len(b) else np.nan
                score_rows.append(
                    {
                        **base,
                        "score": spec.probability,
                        "psi": value,
                        "level": level(value, mp.psi_warn, mp.psi_alert),
                    }
                )
            counts_a = old["stage"].value_counts().reindex(STAGES, fill_value=0)
            counts_b = frame["stage"].value_counts().reindex(STAGES, fill_value=0)
            value = categorical_psi(counts_a.to_dict(), counts_b.to_dict())
            stage_rows.append(
                {
                    **base,
                    **{f"share_{s}": counts_b[s] / max(1, counts_b.sum()) for s in STAGES},
                    "psi": value,
                    "level": level(value, mp.psi_warn, mp.psi_alert),
                }
            )
        prev = (run, frame)
    return pd.DataFrame(score_rows), pd.DataFrame(stage_rows)


def _alerts(report: MonitorReport, params: Params) -> list[Alert]:
    mp = params.monitoring
    out: list[Alert] = []
    for d in report.feature_drift:
        for r in d.table.itertuples(index=False) if not d.table.empty else ():
            if r.level != OK:
                threshold = mp.psi_alert if r.level == ALERT else mp.psi_warn
                out.append(
                    Alert(
                        r.level,
                        "feature_drift",
                        d.model,
                        r.feature,
                        r.psi,
                        threshold,
                        f"{d.model} v{d.version}: {r.feature} PSI {r.psi:.3f} (reference "
                        f"{d.reference} -> {d.current:%Y-%m-%d}) >= {threshold}",
                    )
                )
    # Scores and stages: the latest pair of runs only, and only when the same models
    # scored both (a new champion shifts the scores by design).
    for kind, frame in (("score_drift", report.score_drift), ("stage_drift", report.stage_drift)):
        if frame.empty:
            continue
        last = frame[frame["to_run"] == frame["to_run"].iloc[-1]]
        for r in last.itertuples(index=False):
            if r.level == OK or r.models_changed:
                continue
            threshold = mp.psi_alert if r.level == ALERT else mp.psi_warn
            subject = getattr(r, "score", "stages")
            out.append(
                Alert(
                    r.level,
                    kind,
                    "",
                    subject,
                    r.psi,
                    threshold,
                    f"{subject}: PSI {r.psi:.3f} between runs {r.from_run} and {r.to_run} "
                    f">= {threshold}",
                )
            )
    # Realised quality: the latest complete run of each current champion.
    for model, version in report.champions.items():
        done = [
            o
            for o in report.outcomes
            if o.model == model and o.version == version and o.status == COMPLETE and o.metrics
        ]
        if not done:
            continue
        last = max(done, key=lambda o: o.as_of)
        test = report.test_auc.get((model, version), np.nan)
        drop = test - last.metrics["roc_auc"]
        lvl = level(drop, mp.auc_drop_warn, mp.auc_drop_alert)
        if lvl != OK:
            threshold = mp.auc_drop_alert if lvl == ALERT else mp.auc_drop_warn
            out.append(
                Alert(
                    lvl,
                    "performance",
                    model,
                    "roc_auc",
                    drop,
                    threshold,
                    f"{model} v{version}: realised ROC-AUC {last.metrics['roc_auc']:.3f} on run "
                    f"{last.run_id} ({last.as_of:%Y-%m-%d}), {drop:.3f} below its test "
                    f"{test:.3f} (>= {threshold})",
                )
            )
    order = {ALERT: 0, WARN: 1}
    return sorted(out, key=lambda a: (order[a.level], a.kind, -a.value))


def monitor(paths: Paths, params: Params, progress: Progress | None = None) -> MonitorReport:
    """Realised outcomes, drift and alerts over every stored scoring run.

    Raises:
        FileNotFoundError: no events.
        LookupError: no scoring run (run ``engage score``).
        ValueError: unreadable runs or events, or a stored label definition that is not
            valid.

    """
    from training.labels import observed_until
    from training.registry import CHAMPION, alias_version, setup_mlflow

    if not paths.events.exists():
        raise FileNotFoundError(f"no events at {paths.events}: run `engage data simulate`")
    runs = list_runs(paths)
    if not runs:
        raise LookupError(f"no scoring run under {paths.scores_dir}: run `engage score`")
    end = observed_until(paths.events)
    registry = _Registry(paths)
    outcomes, notes = realised_outcomes(paths, params, runs, end, registry, progress)
    client = setup_mlflow(paths)
    champions = {m: v for m in MODEL_NAMES if (v := alias_version(client, m, CHAMPION)) is not None}
    test_auc = {(o.model, o.version): registry.test_auc(o.model, o.version) for o in outcomes}
    test_auc.update({(m, v): registry.test_auc(m, v) for m, v in champions.items()})
    scores, stages = run_drift(paths, params, runs)
    report = MonitorReport(
        observed_until=end,
        runs=runs,
        outcomes=outcomes,
        feature_drift=feature_drift(paths, params, progress),
        score_drift=scores,
        stage_drift=stages,
        notes=notes,
        champions=champions,
        test_auc=test_auc,
    )
    report.alerts = _alerts(report, params)
    return report
