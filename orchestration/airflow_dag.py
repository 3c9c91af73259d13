"""Airflow DAGs of the monitoring loop: weekly ``engage retrain``, daily ``engage monitor``.

Copy (or symlink) this file into Airflow's ``dags/`` folder on a machine where the project
is installed; set ``ENGAGE_BIN`` to its ``engage`` executable and ``ENGAGE_DATA_DIR`` if
the data is not in the project's ``data/``.

The tasks are plain Python callables (:func:`retrain`, :func:`monitor`) that run the same
commands as the cron lines of the README, so they are tested without Airflow installed
(``tests/test_orchestration.py``); the DAG objects are built only when Airflow can be
imported. Exit code 3 of ``engage monitor`` / ``engage retrain`` (an alert threshold was
crossed) fails the task with :class:`DriftAlert`, so Airflow's failure e-mail or callback
tells the team; any other non-zero code fails it with :class:`EngageFailed`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence

ALERT_EXIT_CODE = 3  # monitoring.monitor.ALERT_EXIT_CODE, without importing the product
RETRAIN = ("retrain",)
MONITOR = ("monitor",)
Runner = Callable[..., subprocess.CompletedProcess]


class DriftAlert(RuntimeError):
    """``engage`` exited 3: a drift or quality alert threshold was crossed."""


class EngageFailed(RuntimeError):
    """``engage`` failed (exit 1: an error, 2: invalid parameters)."""


def engage_bin() -> str:
    """The ``engage`` executable: ``$ENGAGE_BIN``, else the one on PATH."""
    return os.environ.get("ENGAGE_BIN") or shutil.which("engage") or "engage"


def command(args: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """The command line: ``engage [global options] <args>``."""
    return [engage_bin(), *extra, *args]


def run_engage(args: Sequence[str], extra: Sequence[str] = (), runner: Runner = subprocess.run):
    """Run ``engage <args>``; returns its exit code (0), or raises on alert and failure.

    Raises:
        DriftAlert: exit 3.
        EngageFailed: any other non-zero exit.

    """
    done = runner(command(args, extra), check=False)
    if done.returncode == ALERT_EXIT_CODE:
        raise DriftAlert(f"engage {' '.join(args)}: alert threshold crossed (exit 3)")
    if done.returncode != 0:
        raise EngageFailed(f"engage {' '.join(args)}: exit {done.returncode}")
    return done.returncode


def retrain(extra: Sequence[str] = (), runner: Runner = subprocess.run) -> int:
    """The weekly task: ``engage retrain`` (features, train with the gate, score, monitor)."""
    return run_engage(RETRAIN, extra, runner)


def monitor(extra: Sequence[str] = (), runner: Runner = subprocess.run) -> int:
    """The daily task: ``engage monitor`` (realised outcomes, drift, alerts)."""
    return run_engage(MONITOR, extra, runner)


def build_dags():
    """The two Airflow DAGs, or None when Airflow is not installed."""
    try:
        import pendulum
        from airflow import DAG
        from airflow.operators.python import PythonOperator
    except ImportError:
        return None
    start = pendulum.datetime(2025, 1, 1, tz="UTC")
    dags = {}
    for dag_id, schedule, task in (
        ("engage_retrain", "0 6 * * 1", retrain),  # Mondays 06:00 UTC, as the cron line
        ("engage_monitor", "0 7 * * *", monitor),  # every day 07:00 UTC
    ):
        with DAG(dag_id, schedule=schedule, start_date=start, catchup=False) as dag:
            PythonOperator(task_id=task.__name__, python_callable=task)
        dags[dag_id] = dag
    return dags


_dags = build_dags()
if _dags:  # Airflow discovers DAGs among the module's globals
    globals().update(_dags)
