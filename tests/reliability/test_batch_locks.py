"""Two commands on one store: both succeed correctly, or one waits or fails clearly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from engage.data.io import read_customers, read_events
from engage.locks import EVENTS, StoreBusyError, holders, store_lock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _events(prefix: str, n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": [f"{prefix}{i}" for i in range(n)],
            "customer_id": [f"{prefix}c{i % 50}" for i in range(n)],
            "event_time": pd.date_range("2025-03-01", periods=n, freq="min", tz="UTC").map(
                lambda t: t.isoformat()
            ),
            "event_type": "web_visit",
            "value": "30",
        }
    )


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGAGE_DATA_DIR", str(tmp_path))
    return tmp_path


def _held_in_thread(folder, name, shared=False):
    """Hold a lock from another thread until the returned event is set."""
    got, release = threading.Event(), threading.Event()

    def hold():
        with store_lock(folder, name, timeout=5, shared=shared):
            got.set()
            release.wait(30)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert got.wait(10)
    return release, thread


@pytest.mark.slow
def test_two_ingests_at_once_both_keep_their_rows(data_dir):
    """The probe: two ingests into one data dir used to keep only the last writer's rows."""
    files = []
    for prefix in ("a", "b"):
        path = data_dir / f"{prefix}.csv"
        _events(prefix, 20_000).to_csv(path, index=False)
        files.append(path)
    env = {**os.environ, "ENGAGE_DATA_DIR": str(data_dir)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cli.main", "data", "ingest", str(f)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for f in files
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for out in outputs:
        assert "20000 rows = 20000 good + 0 bad" in out
    events = read_events(data_dir / "events.parquet")
    assert len(events) == 40_000 and events["event_id"].is_unique
    assert set(read_customers(data_dir / "customers.parquet")["customer_id"]) == set(
        events["customer_id"]
    )
    assert not [p for p in data_dir.iterdir() if p.name.endswith(".tmp")]


def test_a_busy_store_fails_after_the_timeout_naming_the_holder(data_dir):
    csv = data_dir / "a.csv"
    _events("a", 10).to_csv(csv, index=False)
    release, thread = _held_in_thread(data_dir, EVENTS)
    try:
        began = time.monotonic()
        result = CliRunner().invoke(
            app, ["--set", "data.lock_timeout_s=0.5", "data", "ingest", str(csv)]
        )
        waited = time.monotonic() - began
    finally:
        release.set()
        thread.join()
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert text.startswith("error: the events store") and "is busy: locked by pid" in text
    assert f"pid {os.getpid()}" in text and "exclusive" in text and "gave up after 0.5 s" in text
    assert "Traceback" not in result.output and waited >= 0.5
    assert not (data_dir / "events.parquet").exists()
    # Once the holder is gone the same command goes through.
    assert CliRunner().invoke(app, ["data", "ingest", str(csv)]).exit_code == 0


def test_a_waiting_command_goes_on_when_the_holder_finishes(data_dir):
    csv = data_dir / "a.csv"
    _events("a", 10).to_csv(csv, index=False)
    release, thread = _held_in_thread(data_dir, EVENTS)
    threading.Timer(0.5, release.set).start()
    args = ["--set", "data.lock_timeout_s=30", "data", "ingest", str(csv)]
    result = CliRunner().invoke(app, args)
    thread.join()
    assert result.exit_code == 0, result.output
    assert len(read_events(data_dir / "events.parquet")) == 10


def test_shared_holders_coexist_and_exclude_a_writer(tmp_path):
    release, thread = _held_in_thread(tmp_path, "x", shared=True)
    try:
        with store_lock(tmp_path, "x", timeout=1, shared=True):
            assert {h["mode"] for h in holders(tmp_path, "x")} == {"shared"}
        with pytest.raises(StoreBusyError, match=r"the x store .* locked by pid \d+ .*shared"):
            with store_lock(tmp_path, "x", timeout=0.2):
                pass
    finally:
        release.set()
        thread.join()
    with store_lock(tmp_path, "x", timeout=0):
        pass


def test_the_lock_is_reentrant_in_a_thread_and_refuses_an_upgrade(tmp_path):
    with store_lock(tmp_path, "x", timeout=0):
        with store_lock(tmp_path, "x", timeout=0, shared=True):
            with store_lock(tmp_path, "x", timeout=0):
                pass
    with store_lock(tmp_path, "x", timeout=0, shared=True):
        with pytest.raises(RuntimeError, match="cannot upgrade"):
            with store_lock(tmp_path, "x", timeout=0):
                pass
    assert holders(tmp_path, "x") == []


def test_a_killed_holder_frees_the_lock_and_its_holder_file_is_dropped(tmp_path):
    code = (
        "import sys, time; from engage.locks import store_lock\n"
        f"with store_lock({str(tmp_path)!r}, 'x', timeout=5):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(StoreBusyError, match=f"pid {proc.pid} "):
            with store_lock(tmp_path, "x", timeout=0):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The kernel dropped the flock with the process: no stale lock, no wait.
    with store_lock(tmp_path, "x", timeout=0):
        assert [h["pid"] for h in holders(tmp_path, "x")] == [os.getpid()]
    assert not list((tmp_path / ".locks").glob(f"x.{proc.pid}.*"))


@pytest.mark.slow
def test_two_scores_with_one_run_id_take_turns(pipeline, tmp_path):
    """Same run id at once: the second waits for the lock, then replaces the file whole."""
    from serving.runs import run_path
    from serving.scoring import score

    params = pipeline.params
    release, thread = _held_in_thread(pipeline.paths.scores_dir, "run=twin")
    try:
        with pytest.raises(StoreBusyError, match=r"the run=twin store .* locked by pid"):
            score(
                pipeline.paths,
                params.model_copy(
                    update={"data": params.data.model_copy(update={"lock_timeout_s": 0.2})}
                ),
                run_id="twin",
            )
    finally:
        release.set()
        thread.join()
    assert not run_path(pipeline.paths, "twin").exists()
    results = []

    def one() -> None:
        results.append(score(pipeline.paths, params, run_id="twin"))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and all(r.rows == results[0].rows for r in results)
    frame = pd.read_parquet(run_path(pipeline.paths, "twin"))
    assert len(frame) == results[0].rows and frame["customer_id"].is_unique
    assert not list(pipeline.paths.scores_dir.glob(".*.tmp"))
