"""The Airflow file imports without Airflow and its tasks run the documented commands.

Airflow is not a dependency (it pins much of what the product uses): its DAG objects are
built only where it is installed; the task callables are plain Python and tested here,
once with a recording runner and once against the real ``engage`` command line.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module():
    return importlib.import_module("orchestration.airflow_dag")


class Recorder:
    def __init__(self, code: int = 0) -> None:
        self.code, self.calls = code, []

    def __call__(self, cmd, check=False):
        self.calls.append(list(cmd))
        return subprocess.CompletedProcess(cmd, self.code)


def test_the_file_imports_without_airflow_and_builds_no_dag():
    mod = _module()
    try:
        import airflow  # noqa: F401
    except ImportError:
        assert mod.build_dags() is None
    assert callable(mod.retrain) and callable(mod.monitor)


def test_tasks_call_the_commands_of_the_cron_lines(monkeypatch):
    mod = _module()
    monkeypatch.setenv("ENGAGE_BIN", "/opt/engage/.venv/bin/engage")
    rec = Recorder()
    assert mod.retrain(runner=rec) == 0
    assert mod.monitor(("--profile", "cdnow"), runner=rec) == 0
    assert rec.calls == [
        ["/opt/engage/.venv/bin/engage", "retrain"],
        ["/opt/engage/.venv/bin/engage", "--profile", "cdnow", "monitor"],
    ]
    readme = (ROOT / "README.md").read_text()
    assert "engage retrain" in readme and "engage monitor" in readme


def test_exit_three_is_a_drift_alert_and_other_codes_a_failure():
    mod = _module()
    with pytest.raises(mod.DriftAlert, match=r"engage monitor: alert threshold crossed \(exit 3\)"):
        mod.monitor(runner=Recorder(3))
    with pytest.raises(mod.EngageFailed, match="engage retrain: exit 1"):
        mod.retrain(runner=Recorder(1))


def test_the_task_runs_the_real_command_line(tmp_path, monkeypatch):
    # No events in an empty data dir: the real `engage monitor` exits 1, the task says so.
    mod = _module()
    monkeypatch.setenv("ENGAGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ENGAGE_BIN", str(Path(sys.executable).with_name("engage")))
    with pytest.raises(mod.EngageFailed, match="engage monitor: exit 1"):
        mod.monitor()
