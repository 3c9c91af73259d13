"""Monitoring on the small trained pipeline: the same labels as training, exit codes of
``engage monitor``, an idempotent ``engage retrain``, the report section.

The scoring runs of these tests go to their own folder (``scoring.dir``) and the MLflow
results to their own experiment, so the other tests of the session see no change.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import SMALL

SETS = ("scoring.dir=scores_monitor_test", "monitoring.experiment=monitoring_test")


def _args(*extra: str) -> list[str]:
    out = []
    for s in (*SMALL, *SETS, *extra):
        out += ["--set", s]
    return out


@pytest.fixture(scope="module")
def mon(pipeline):
    from engage.config import load_params, resolve_paths
    from serving.scoring import score
    from training.registry import held_out_predictions

    params = load_params(overrides=(*SMALL, *SETS))
    paths = resolve_paths(params)
    held, version = held_out_predictions(paths, "churn")
    t = sorted(held["event_timestamp"].unique())[0]  # a held-out as-of time of the champion
    run = score(paths, params, as_of=t)
    latest = score(paths, params)  # the latest snapshot: its window is not observed yet
    return params, paths, run, latest, held, version


def test_realised_labels_of_a_past_run_are_the_training_labels(mon):
    from monitoring.monitor import monitor

    params, paths, run, latest, held, version = mon
    report = monitor(paths, params)
    o = next(o for o in report.outcomes if o.run_id == run.run_id and o.model == "churn")
    assert o.status == "complete" and o.version == version
    # The champion's held-out rows at that as-of time: same contacts, same labels
    # (make_labels). The scores are the run's own p_churn: the served model was refitted
    # on every labelled as-of time, so it differs from the held-out fit's predictions.
    from features.catalog import ENTITY_KEY
    from serving.runs import read_run
    from training.evaluate import probability_metrics

    held_t = held[held["event_timestamp"] == run.as_of]
    y = held_t["label"].to_numpy()
    assert o.population == len(held_t) == o.evaluated
    assert o.realised_rate == pytest.approx(y.mean())
    _, scored = read_run(paths, run.run_id)
    p = scored.set_index(ENTITY_KEY).loc[held_t[ENTITY_KEY], "p_churn"].to_numpy()
    want = probability_metrics(y, p, params.training.ece_bins)
    assert o.metrics["roc_auc"] == pytest.approx(want["roc_auc"], abs=1e-9)
    assert o.metrics["brier"] == pytest.approx(want["brier"], abs=1e-9)
    # Canary: the latest run's window is not observed: pending, never final, no metric.
    last = [x for x in report.outcomes if x.run_id == latest.run_id]
    assert last and all(x.status == "pending" and not x.metrics for x in last)
    # Runs store what the models were trained for.
    info = next(r for r in report.runs if r.run_id == run.run_id)
    assert info.horizons == {"churn": 30, "appetence": 30}


def test_monitor_exit_codes(mon):
    runner = CliRunner()
    quiet = _args(
        "monitoring.psi_warn=1000",
        "monitoring.psi_alert=1000",
        "monitoring.auc_drop_warn=1",
        "monitoring.auc_drop_alert=1",
    )
    ok = runner.invoke(app, [*quiet, "monitor", "--no-log"])
    assert ok.exit_code == 0, ok.output
    assert "no alert threshold crossed (exit 0)" in ok.output
    alert = runner.invoke(
        app, [*_args("monitoring.psi_warn=0", "monitoring.psi_alert=0"), "monitor", "--no-log"]
    )
    assert alert.exit_code == 3, alert.output
    assert "alert threshold crossed (exit 3)" in alert.output
    empty = runner.invoke(app, [*_args("scoring.dir=no_runs_here"), "monitor", "--no-log"])
    assert empty.exit_code == 1
    assert "error: no scoring run under" in empty.output and "Traceback" not in empty.output
    bad = runner.invoke(
        app, [*_args("monitoring.psi_warn=0.5", "monitoring.psi_alert=0.1"), "monitor"]
    )
    assert bad.exit_code == 2 and "monitoring.psi_warn: must be at most" in bad.output
    fmt = runner.invoke(app, [*quiet, "monitor", "--no-log", "--format", "xml"])
    assert fmt.exit_code == 1 and "--format must be one of table, json" in fmt.output


def test_monitor_json_and_mlflow_runs_are_logged_once(mon):
    import json

    from mlflow import MlflowClient

    params, paths, run, *_ = mon
    runner = CliRunner()
    quiet = _args("monitoring.psi_warn=1000", "monitoring.psi_alert=1000")
    first = runner.invoke(app, [*quiet, "monitor", "--format", "json"])
    doc = json.loads(first.output)
    assert doc["exit_code"] == first.exit_code
    assert {o["run_id"] for o in doc["outcomes"]} >= {run.run_id}
    client = MlflowClient(paths.tracking_uri)
    exp = client.get_experiment_by_name("monitoring_test")
    logged = client.search_runs([exp.experiment_id])
    outcome = [
        r
        for r in logged
        if r.data.tags.get("scoring_run_id") == run.run_id and r.data.tags.get("model") == "churn"
    ]
    assert len(outcome) == 1
    tags = outcome[0].data.tags
    assert tags["status"] == "complete" and tags["final"] == "true"
    assert tags["model_version"] == doc["champions"]["churn"]
    assert outcome[0].data.metrics["roc_auc"] > 0.5
    history = client.get_metric_history(outcome[0].info.run_id, "roc_auc")
    assert history[0].step == int(run.as_of.value // 86_400_000_000_000)
    # A second monitor on unchanged data logs nothing new.
    runner.invoke(app, [*quiet, "monitor", "--format", "json"])
    assert len(client.search_runs([exp.experiment_id])) == len(logged)


def test_retrain_is_idempotent(mon):
    from mlflow import MlflowClient

    params, paths, *_ = mon
    client = MlflowClient(paths.tracking_uri)

    def versions():
        return {
            m: sorted(int(v.version) for v in client.search_model_versions(f"name='{m}'"))
            for m in ("churn", "appetence")
        }

    before = versions()
    runner = CliRunner()
    quiet = _args(
        "monitoring.psi_warn=1000",
        "monitoring.psi_alert=1000",
        "monitoring.auc_drop_warn=1",
        "monitoring.auc_drop_alert=1",
    )
    first = runner.invoke(app, [*quiet, "retrain"])
    assert first.exit_code == 0, first.output
    # The pipeline's models were trained on these events with these parameters.
    assert "churn: not retrained: v" in first.output
    runs_dir = paths.data_dir / "scores_monitor_test"
    files = sorted(p.name for p in runs_dir.glob("run=*.parquet"))
    second = runner.invoke(app, [*quiet, "retrain"])
    assert second.exit_code == 0, second.output
    assert "already scored" in second.output
    assert versions() == before
    assert sorted(p.name for p in runs_dir.glob("run=*.parquet")) == files
    # Another training parameter: retrain would train (the plan says why).
    from engage.config import load_params
    from monitoring.retrain import training_plan

    changed = load_params(overrides=(*SMALL, *SETS, "training.lightgbm.learning_rate=0.07"))
    plan = training_plan(paths, changed)
    assert all(d.train and "the training parameters changed" in d.reason for d in plan)
    assert not any(d.train for d in training_plan(paths, params))


def test_report_has_the_did_it_come_true_section(mon):
    from reporting.monitoring_section import monitoring_section, monthly

    params, paths, run, *_ = mon
    html = monitoring_section(paths, params)
    assert "Realised against predicted, per month" in html
    assert "The at-risk list: how many of them left?" in html
    assert "Has the data moved since the models were trained?" in html
    frame = pd.DataFrame(
        {
            "status": ["complete", "complete", "partial"],
            "as_of": pd.to_datetime(["2025-03-04", "2025-03-25", "2025-04-01"], utc=True),
            "model": ["churn"] * 3,
            "run_id": ["a", "b", "c"],
            "evaluated": [100, 300, 50],
            "predicted_rate": [0.1, 0.2, 0.9],
            "realised_rate": [0.2, 0.2, 0.9],
            "roc_auc": [0.8, 0.7, np.nan],
        }
    )
    m = monthly(frame)  # the partial run is left out
    assert m.to_dict("records") == [
        {
            "model": "churn",
            "month": "2025-03",
            "runs": 2,
            "contacts": 400,
            "predicted": pytest.approx(0.15),
            "realised": pytest.approx(0.2),
            "roc_auc": pytest.approx(0.75),
        }
    ]
