"""Monitoring results in MLflow: the ``monitoring.experiment`` experiment and its runs.

This module owns that layout. One MLflow run per evaluated (model, scoring run, window
state), named ``<model> v<version> @ <as-of date> (<status>)``, tagged with the model
name, the model version, the scoring run id, the as-of time, the window status and the
observed share, and linked to the version's MLflow model (``model_id``), so the model
page lists its realised quality. Metrics are logged with ``step`` = the as-of time in
days since 1970-01-01 and the as-of time as timestamp: in the MLflow UI, the chart view
of the experiment plots realised ROC-AUC, Brier, hit rate, ... over time.

One run per invocation also records the drift: feature PSI per model (``psi.<model>.
<feature>``), score and stage PSI of the latest pair of runs, and the alert count.

Each run carries a ``monitor_key``; a key already logged is not logged again, so a
second ``engage monitor`` (or ``engage retrain``) on unchanged data adds nothing, and a
partial window logged last week gets a new run once it is complete.
"""

from __future__ import annotations

import hashlib
import json
import time

import pandas as pd

from engage.config import Params, Paths
from monitoring.monitor import MonitorReport
from monitoring.outcomes import PENDING, ModelOutcome

KEY_TAG = "monitor_key"
_DAY_MS = 86_400_000


def _step(as_of: pd.Timestamp) -> tuple[int, int]:
    ms = int(as_of.value // 1_000_000)
    return ms // _DAY_MS, ms


def outcome_key(o: ModelOutcome) -> str:
    """What identifies a logged outcome: model, version, scoring run and observed days."""
    return f"outcome:{o.model}:v{o.version}:{o.run_id}:{o.status}:{o.window.observed_days}"


def outcome_metrics(o: ModelOutcome) -> dict[str, float]:
    """The numbers of an outcome as MLflow metrics (NaN and non-numbers left out)."""
    values: dict[str, float] = {
        "observed_share": o.window.observed_share,
        "population": o.population,
        "evaluated": o.evaluated,
        "unscored": o.unscored,
        "predicted_rate": o.predicted_rate,
        "realised_rate": o.realised_rate,
        **o.metrics,
        **{f"at_risk_{k}": v for k, v in o.at_risk.items()},
        **{f"stage_{k}": v for k, v in o.stages.items()},
    }
    out = {}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or v != v:
            continue
        out[k] = float(v)
    return out


def drift_key(report: MonitorReport) -> str:
    """What identifies a drift record: the latest snapshot, run, champions and PSI values."""
    doc = {
        "observed_until": report.observed_until.isoformat(),
        "runs": [r.run_id for r in report.runs],
        "champions": report.champions,
        "features": [
            (d.model, d.version, d.reference, str(d.current)) for d in report.feature_drift
        ],
    }
    return "drift:" + hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _logged_keys(client, experiment: str) -> set[str]:
    keys, token = set(), None
    while True:
        page = client.search_runs([experiment], max_results=1000, page_token=token)
        keys |= {r.data.tags.get(KEY_TAG) for r in page}
        token = page.token
        if not token:
            return keys - {None}


def log_report(paths: Paths, params: Params, report: MonitorReport) -> list[str]:
    """Log what is new in ``report`` to MLflow; returns the ids of the runs created."""
    from mlflow.entities import Metric, RunTag

    from training.registry import experiment_id, setup_mlflow, version_run

    client = setup_mlflow(paths)
    exp = experiment_id(client, paths, params.monitoring.experiment)
    logged = _logged_keys(client, exp)
    model_ids: dict[tuple[str, str], str | None] = {}
    created = []
    for o in report.outcomes:
        key = outcome_key(o)
        if o.status == PENDING or key in logged:
            continue
        if (o.model, o.version) not in model_ids:
            try:
                model_ids[(o.model, o.version)] = version_run(paths, o.model, o.version).model_id
            except LookupError:
                model_ids[(o.model, o.version)] = None
        model_id = model_ids[(o.model, o.version)]
        tags = {
            KEY_TAG: key,
            "kind": "outcome",
            "model": o.model,
            "model_version": o.version,
            "scoring_run_id": o.run_id,
            "as_of": o.as_of.isoformat(),
            "status": o.status,
            "final": str(o.window.final).lower(),
            "horizon_days": str(o.window.horizon_days),
            "observed_until": report.observed_until.isoformat(),
            "note": o.note[:5000],
        }
        run = client.create_run(
            exp, tags=tags, run_name=f"{o.model} v{o.version} @ {o.as_of:%Y-%m-%d} ({o.status})"
        )
        step, ts = _step(o.as_of)
        metrics = [Metric(k, v, ts, step, model_id=model_id) for k, v in outcome_metrics(o).items()]
        client.log_batch(run.info.run_id, metrics=metrics)
        client.set_terminated(run.info.run_id)
        created.append(run.info.run_id)
    key = drift_key(report)
    if key not in logged and (report.feature_drift or not report.score_drift.empty):
        created.append(_log_drift(client, exp, key, report, RunTag, Metric))
    return created


def _log_drift(client, exp: str, key: str, report: MonitorReport, RunTag, Metric) -> str:
    latest = report.runs[-1]
    step, ts = _step(latest.as_of)
    values: dict[str, float] = {
        "alerts": sum(a.level == "alert" for a in report.alerts),
        "warnings": sum(a.level == "warn" for a in report.alerts),
    }
    for d in report.feature_drift:
        if d.table.empty:
            continue
        values[f"psi_max.{d.model}"] = float(d.table["psi"].max())
        for r in d.table.itertuples(index=False):
            values[f"psi.{d.model}.{r.feature}"] = float(r.psi)
    for frame, prefix in ((report.score_drift, "score_psi"), (report.stage_drift, "stage_psi")):
        if frame.empty:
            continue
        last = frame[frame["to_run"] == frame["to_run"].iloc[-1]]
        for r in last.itertuples(index=False):
            name = f"{prefix}.{r.score}" if prefix == "score_psi" else prefix
            if r.psi == r.psi:
                values[name] = float(r.psi)
    tags = {
        KEY_TAG: key,
        "kind": "drift",
        "scoring_run_id": latest.run_id,
        "observed_until": report.observed_until.isoformat(),
        **{f"champion.{m}": v for m, v in report.champions.items()},
    }
    run = client.create_run(exp, tags=tags, run_name=f"drift @ {latest.as_of:%Y-%m-%d}")
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, float(v), ts, step) for k, v in values.items()],
        tags=[RunTag("alert_lines", "\n".join(a.message for a in report.alerts)[:5000])],
    )
    client.set_terminated(run.info.run_id, end_time=int(time.time() * 1000))
    return run.info.run_id
