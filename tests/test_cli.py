"""Smoke tests of the command line: each pipeline step as a user runs it, in a fresh data dir."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app

# The refit for serving is tested on the pipeline fixture; here the held-out fits are served.
SMALL = [
    "--set",
    "simulate.customers=1500",
    "--set",
    "simulate.days=280",
    "--set",
    "training.refit=false",
]


@pytest.fixture()
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGAGE_DATA_DIR", str(tmp_path))
    return CliRunner()


def _ok(result) -> str:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


def test_help_lists_every_command_group():
    out = _ok(CliRunner().invoke(app, ["--help"]))
    for name in ("data", "features", "train", "score", "at-risk", "report", "run", "serve"):
        assert name in out


def test_data_commands_and_their_errors(runner, tmp_path):
    out = _ok(
        runner.invoke(app, [*SMALL, "data", "simulate", "--customers", "200", "--days", "60"])
    )
    assert "events for 200 contacts" in out
    assert (tmp_path / "events.parquet").exists()
    out = _ok(runner.invoke(app, ["data", "validate", "--strict"]))
    assert "rows" in out
    csv = tmp_path / "mine.csv"
    pd.DataFrame(
        {
            "id": ["x1", "x2"],
            "user": ["u1", "u2"],
            "ts": ["2025-01-05T10:00:00Z", "2025-01-06T10:00:00Z"],
            "event_type": ["web_visit", "teleport"],
        }
    ).to_csv(csv, index=False)
    result = runner.invoke(
        app,
        [
            "data",
            "ingest",
            str(csv),
            "--map",
            "id=event_id",
            "--map",
            "user=customer_id",
            "--map",
            "ts=event_time",
        ],
    )
    assert "unknown_event_type" in result.output and "Traceback" not in result.output
    # A bad parameter is named with its dotted path, exit status 2.
    result = runner.invoke(app, ["--set", "labels.horizon_dayz=3", "data", "validate"])
    assert result.exit_code == 2 and "horizon_dayz" in result.output


# Heavy lane (the suite's 10-minute budget): the same commands run in make test through the
# README walk-through (tests/test_own_data.py), `engage run` (tests/test_cli_output.py) and
# the fresh clone's `make run` (tests/reliability/test_service_fresh_clone.py).
@pytest.mark.reliability_heavy
@pytest.mark.slow
def test_features_train_score_report_then_run(runner, tmp_path):
    _ok(runner.invoke(app, [*SMALL, "data", "simulate"]))
    out = _ok(runner.invoke(app, [*SMALL, "features", "build"]))
    assert "snapshots" in out and "online store: latest snapshot" in out
    out = _ok(runner.invoke(app, [*SMALL, "train"]))
    assert "churn v1 -> @champion" in out and "appetence v1 -> @champion" in out
    out = _ok(runner.invoke(app, [*SMALL, "score"]))
    assert "1,500 contacts" in out and "scores" in out
    out = _ok(runner.invoke(app, [*SMALL, "report"]))
    assert (tmp_path / "reports" / "report.html").exists()
    # `run` on the stored events: every step again, ending with the report path.
    out = _ok(runner.invoke(app, [*SMALL, "run"]))
    assert "using existing events" in out and "pipeline done" in out and "report:" in out
    result = runner.invoke(app, [*SMALL, "train", "--model", "ltv"])
    assert (
        result.exit_code == 1
        and "--model must be churn, appetence, churn_hazard, appetence_hazard or all"
        in result.output
    )


def test_train_refuses_an_unknown_model_before_touching_anything(runner, tmp_path):
    result = runner.invoke(app, ["train", "--model", "ltv"])
    assert (
        result.exit_code == 1
        and "--model must be churn, appetence, churn_hazard, appetence_hazard or all"
        in result.output
    )
