"""The README's commands, in sequence, on a fresh copy of the repository, default layout.

The probe finding: on a fresh clone ``make run`` succeeded, then ``make serve`` failed to
start (the service looked for the champions in ``data/mlruns``, training had written
``mlruns/``; two workers then raced to create MLflow's tables). The test suite always
set ``$ENGAGE_DATA_DIR``, so it never saw it. Here nothing sets it: a copy of the
tracked files runs a small demo (``engage run``), then ``engage serve`` answers
``/predict`` with real probabilities, ``make mlflow-ui`` shows the models training
registered, and ``engage report`` and ``engage at-risk`` work. The project's virtual
environment is reused by absolute path (nothing is installed), and every server is
started in its own process group on a free loopback port and stopped at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from engage.specs import HAZARD_MODEL_NAMES, MODEL_NAMES
from serving.local_server import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)  # the project's virtual environment (not the base interpreter)
DEMO = ("--set", "simulate.customers=1000", "--set", "simulate.days=250")
RUN_TIMEOUT_S = 900
START_TIMEOUT_S = 300


def _copy_tracked(dest: Path) -> None:
    """The repository as a fresh clone has it: tracked files (and new, unignored ones)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        src = ROOT / name
        if src.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(src.read_bytes())
            target.chmod(src.stat().st_mode)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("fresh") / "engage"
    _copy_tracked(dest)
    assert not (dest / "data").exists() and not (dest / "mlruns" / "mlflow.db").exists()
    return dest


@pytest.fixture(scope="module")
def env(clone) -> dict[str, str]:
    out = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ENGAGE_", "BENTOML_", "MLFLOW_TRACKING", "FEAST_DATA"))
    }
    # The copy's code, the project's installed packages.
    out["PYTHONPATH"] = str(clone)
    out["PATH"] = f"{VENV / 'bin'}{os.pathsep}{out.get('PATH', '')}"
    return out


def _engage(clone, env, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def demo(clone, env) -> Path:
    """``engage run`` on a small demo in the default layout."""
    result = _engage(clone, env, *DEMO, "run", timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert (clone / "mlruns" / "mlflow.db").is_file()  # beside data/, as documented
    assert not (clone / "data" / "mlruns").exists()
    return clone


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C to the process group we started (graceful), then a kill if needed."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _wait_http(proc, url: str, log: Path, ok) -> httpx.Response:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            resp = httpx.get(url, timeout=5)
            if ok(resp):
                return resp
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"not up in {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def test_make_serve_answers_predict_with_the_trained_champions(demo, env, tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    # `make serve` is `engage serve`; one worker keeps the test light.
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--workers", "1"],
        cwd=demo,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        ready = _wait_http(
            proc, f"http://127.0.0.1:{port}/ready", log, lambda r: r.status_code == 200
        ).json()
        snapshot = sorted((demo / "data" / "features" / "customer_features").glob("*.parquet"))[-1]
        frame = pd.read_parquet(snapshot, columns=["customer_id", "has_purchased"])
        ids = [
            str(frame.loc[frame["has_purchased"] == 1, "customer_id"].iloc[0]),
            str(frame.loc[frame["has_purchased"] == 0, "customer_id"].iloc[0]),
        ]
        resp = httpx.post(
            f"http://127.0.0.1:{port}/predict",
            json={"customer_ids": ids, "explain": True},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        customer, prospect = resp.json()["predictions"]
        assert customer["status"] == prospect["status"] == "ok"
        assert 0 < customer["p_churn"] < 1 and 0 < customer["p_purchase"] < 1
        assert 0 < prospect["p_purchase"] < 1 and prospect["p_churn"] is None
        assert customer["reasons"] and prospect["reasons"]
        assert ready["models"]["churn"]["version"] == customer["model_versions"]["churn"]
        # The time-to-event models make run trained answer at every default horizon (the
        # churn one may be skipped on this short demo: then it is named missing).
        assert set(resp.json()["timing_missing"]) <= {"churn"}
        p = [a["p_purchase"] for a in prospect["horizons"]]
        assert [a["horizon_days"] for a in prospect["horizons"]] == [7, 30, 90]
        assert all(0 < x < 1 for x in p) and p == sorted(p)
        if "churn" not in resp.json()["timing_missing"]:
            assert all(0 <= a["p_churn"] <= 1 for a in customer["horizons"])
    finally:
        _stop(proc)
    text = log.read_text()
    assert "Traceback" not in text and "already exists" not in text, text[-3000:]
    assert not (demo / "data" / "mlruns").exists()  # no empty store beside the real one


def test_make_mlflow_ui_shows_the_store_training_wrote(demo, env, tmp_path):
    port = free_port()
    log = tmp_path / "mlflow-ui.log"
    # The project's venv by absolute path; -o: never reinstall into it from the copy.
    proc = subprocess.Popen(
        ["make", f"VENV={VENV}", "-o", f"{VENV}/.installed", "mlflow-ui", f"PORT={port}"],
        cwd=demo,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/search"
        body = _wait_http(proc, url, log, lambda r: r.status_code == 200).json()
        names = {m["name"] for m in body.get("registered_models", [])}
        # make run trains the fixed and the time-to-event (hazard) models; on this small
        # demo (250 days) the churn hazard model may lack rows at risk in its late periods
        # and is then skipped with a warning.
        assert {*MODEL_NAMES, "appetence_hazard"} <= names <= {*MODEL_NAMES, *HAZARD_MODEL_NAMES}
    finally:
        _stop(proc)
    assert f"store {demo / 'mlruns' / 'mlflow.db'}" in log.read_text()


def test_report_and_at_risk_work_after_the_run(demo, env):
    report = _engage(demo, env, "report")
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert (demo / "data" / "reports" / "report.html").stat().st_size > 10_000
    at_risk = _engage(demo, env, "at-risk", "--top", "5", "--format", "csv")
    assert at_risk.returncode == 0, at_risk.stdout[-3000:] + at_risk.stderr[-3000:]
    lines = at_risk.stdout.strip().splitlines()
    assert lines[0].startswith("customer_id,") and len(lines) == 6
