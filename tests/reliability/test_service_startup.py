"""Start-up failures end the service at once with one clear line, never a restart loop.

The probe finding: a worker that failed to load made BentoML restart it without end,
``engage serve`` never exited and ``/livez`` and ``/ready`` hung. Now ``engage serve``
checks and loads in its own process first, ``bentoml serve`` checks the stores before
any worker (``on_deployment``), and a worker that still fails ends the whole server
with exit code 3.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from engage.config import load_params, resolve_paths
from serving.local_server import LocalServer, free_port
from serving.startup import EXIT_STARTUP_FAILED, StartupError, check_stores, preflight
from tests.reliability import service_fixtures as fx
from tests.reliability.service_fixtures import ROOT, copy_store, overlay, service_env

store_copy = fx.store_copy  # a fixture of the shared module

EXIT_WITHIN_S = 60  # a loaded 2-core machine imports the stack in 10-30 s


def _paths(data_dir: Path, monkeypatch):
    monkeypatch.setenv("ENGAGE_DATA_DIR", str(data_dir))
    monkeypatch.delenv("ENGAGE_MLRUNS_DIR", raising=False)
    params = load_params()
    return params, resolve_paths(params)


@contextlib.contextmanager
def _moved(path: Path):
    """``path`` renamed away for the duration (restored after)."""
    away = path.with_name(path.name + ".away")
    path.rename(away)
    try:
        yield
    finally:
        away.rename(path)


@contextlib.contextmanager
def _replaced(path: Path, content: bytes):
    with _moved(path):
        path.write_bytes(content)
        try:
            yield
        finally:
            path.unlink()


@pytest.fixture(scope="module")
def no_champions(store_copy, tmp_path_factory) -> Path:
    """A trained data dir whose registry lost its champion aliases."""
    data = copy_store(store_copy, tmp_path_factory.mktemp("no-champions") / "data")
    con = sqlite3.connect(data / "mlruns" / "mlflow.db")
    con.execute("DELETE FROM registered_model_aliases")
    con.commit()
    con.close()
    before = _fingerprint(data)
    yield data
    # The failed starts wrote nothing into the stores they could not use.
    assert _fingerprint(data) == before


def _fingerprint(data: Path) -> dict[str, bytes]:
    stores = [data / "mlruns" / "mlflow.db", data / "feast" / "registry.db"]
    out = {str(p): p.read_bytes() for p in stores}
    out["mlruns"] = sorted(p.name for p in (data / "mlruns").iterdir())
    out["top"] = sorted(p.name for p in data.iterdir() if p.name != "bentoml")
    return out


def _broken_cases(data: Path, paths) -> list[tuple[str, object, str]]:
    from training.registry import champion_ref, local_model_dir

    snapshots = data / "features" / "customer_features"
    return [
        ("registry file missing", _moved(data / "mlruns" / "mlflow.db"), "no MLflow store at"),
        (
            "registry not a database",
            _replaced(data / "mlruns" / "mlflow.db", b"\x00garbage" * 512),
            "not a readable SQLite database",
        ),
        (
            "a model file missing",
            _moved(local_model_dir(champion_ref(paths, "churn")) / "booster.txt"),
            "booster.txt is missing: train again",
        ),
        ("Feast registry missing", _moved(data / "feast" / "registry.db"), "no Feast registry at"),
        ("online store missing", _moved(data / "feast" / "online_store.db"), "no online store at"),
        (
            "online store corrupt",
            _replaced(data / "feast" / "online_store.db", b"\x00garbage" * 512),
            "cannot be read",
        ),
        ("no snapshot", _moved(snapshots), "no feature snapshots under"),
    ]


def _listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


def test_each_broken_store_is_named_with_the_command_to_run(store_copy, tmp_path, monkeypatch):
    data = copy_store(store_copy, tmp_path / "data")
    # The copy may carry the online store's write-ahead log (a process that built it still
    # had it open); SQLite then reads page 1 from the log and a garbage main file goes
    # unnoticed. Fold the log into the file first, as closing the last writer does.
    con = sqlite3.connect(data / "feast" / "online_store.db")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    params, paths = _paths(data, monkeypatch)
    assert check_stores(paths, params) == []
    for name, broken, message in _broken_cases(data, paths):
        with broken:
            before = _listing(data)
            problems = check_stores(paths, params)
            assert any(message in p for p in problems), (name, problems)
            assert all(("engage " in p) for p in problems), (name, problems)
            with pytest.raises(StartupError, match=message):
                preflight(paths, params)
            # Nothing created or changed in place of what is missing.
            assert _listing(data) == before, name
    assert check_stores(paths, params) == []


def _engage_serve(data: Path, workers: int, log: Path) -> subprocess.Popen:
    env = service_env(data)
    env.pop("ENGAGE_MLRUNS_DIR")  # what a user has: the data dir only
    cmd = [sys.executable, "-m", "cli.main", "serve", "--port", str(free_port())]
    cmd += ["--workers", str(workers)]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _ends_within(proc: subprocess.Popen, seconds: float) -> int:
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        pytest.fail(f"still running after {seconds} s")


@pytest.mark.parametrize(
    "workers", [pytest.param(1, marks=[pytest.mark.reliability_heavy, pytest.mark.slow]), 2]
)
def test_engage_serve_without_champions_exits_at_once(no_champions, tmp_path, workers):
    log = tmp_path / "serve.log"
    began = time.monotonic()
    code = _ends_within(_engage_serve(no_champions, workers, log), EXIT_WITHIN_S)
    took = time.monotonic() - began
    text = log.read_text()
    assert code == EXIT_STARTUP_FAILED, text
    assert took < EXIT_WITHIN_S
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    assert "no 'churn' model with alias 'champion'" in errors[0]
    assert "engage train" in errors[0]
    assert "Traceback" not in text and "serving on http" not in text  # no server started


def _bentoml(data: Path, workers: int, log: Path, params_file: Path | None = None):
    return LocalServer(service_env(data, workers, params_file), log, ROOT)


@pytest.mark.parametrize("workers", [2])
def test_bentoml_serve_checks_the_stores_before_any_worker(no_champions, tmp_path, workers):
    server = _bentoml(no_champions, workers, tmp_path / "bentoml.log")
    try:
        code = _ends_within(server.proc, EXIT_WITHIN_S)
    finally:
        server.stop()
    text = server.log.read_text()
    assert code == EXIT_STARTUP_FAILED, text
    assert "error: the service cannot start: no 'churn' model with alias 'champion'" in text
    assert "entry_service" not in text  # no worker was started
    assert "Traceback" not in text


def _worker_failure(store_copy, tmp_path, workers: int) -> None:
    # Every store is in place (the parent's checks pass) but the champions were trained
    # for another horizon: each worker's load fails.
    params = load_params()
    other = overlay(
        tmp_path / "params.yaml", {"labels.horizon_days": params.labels.horizon_days + 7}
    )
    server = _bentoml(store_copy, workers, tmp_path / "bentoml.log", other)
    began = time.monotonic()
    try:
        code = _ends_within(server.proc, 2 * EXIT_WITHIN_S)
        left = [p for p in psutil.process_iter(["cmdline"]) if _serves(p, server.port)]
    finally:
        server.stop()
    text = server.log.read_text()
    assert code == EXIT_STARTUP_FAILED, text
    assert time.monotonic() - began < 2 * EXIT_WITHIN_S
    assert "cannot start: the champion models were trained for other parameters" in text
    assert text.rstrip().splitlines()[-1].startswith("error: the champion models were trained")
    assert "Traceback" not in text
    # Each worker tried once: no restart loop.
    assert text.count("cannot start:") <= workers
    assert left == []


def _serves(proc: psutil.Process, port: int) -> bool:
    try:
        return "_bentoml_impl.worker" in " ".join(proc.info["cmdline"] or []) and any(
            c.laddr.port == port for c in proc.net_connections()
        )
    except (psutil.Error, OSError):
        return False


def test_a_worker_that_cannot_load_ends_the_server_two_workers(store_copy, tmp_path):
    _worker_failure(store_copy, tmp_path, workers=2)


@pytest.mark.reliability_heavy
@pytest.mark.slow
def test_a_worker_that_cannot_load_ends_the_server_one_worker(store_copy, tmp_path):
    _worker_failure(store_copy, tmp_path, workers=1)


@pytest.mark.reliability_heavy
@pytest.mark.slow
@pytest.mark.parametrize("case", range(7))
def test_engage_serve_names_each_broken_store(store_copy, tmp_path, case, monkeypatch):
    data = copy_store(store_copy, tmp_path / "data")
    _, paths = _paths(data, monkeypatch)
    name, broken, message = _broken_cases(data, paths)[case]
    with broken:
        log = tmp_path / "serve.log"
        code = _ends_within(_engage_serve(data, 2, log), EXIT_WITHIN_S)
    text = log.read_text()
    assert code == EXIT_STARTUP_FAILED, (name, text)
    assert message in text and "Traceback" not in text, (name, text)
