"""Shared fixtures: a small end-to-end pipeline run once per test session.

``pipeline`` simulates a small demo data set in a temporary data directory
(``ENGAGE_DATA_DIR``), builds the features into Feast and trains both models, so the
tests of training, scoring, serving and reporting share one realistic, fast setup.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("FEAST_USAGE", "False")
# LightGBM's OpenMP threads spin while they wait; on a shared 2-core machine that made
# every boosting round up to 8x slower. Passive waiting must be set before libgomp loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SMALL = ("simulate.customers=2500", "simulate.days=300")


@dataclass
class Pipeline:
    data_dir: Path
    params: object
    paths: object
    features: object  # features.aggregates.BuildSummary
    results: dict  # model name -> training.train.TrainResult


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Pipeline:
    from engage.config import load_params, resolve_paths
    from engage.data.simulate import simulate_to_parquet
    from features.aggregates import build_features
    from features.store import apply_repo, get_store, materialize_snapshot
    from training.train import train_model

    data_dir = tmp_path_factory.mktemp("pipeline")
    old = os.environ.get("ENGAGE_DATA_DIR")
    os.environ["ENGAGE_DATA_DIR"] = str(data_dir)
    try:
        params = load_params(overrides=SMALL)
        paths = resolve_paths(params)
        simulate_to_parquet(params.simulate, params.data, paths.events, paths.customers)
        summary = build_features(params, paths.events, paths.customers, paths.features_dir)
        apply_repo(paths)
        materialize_snapshot(get_store(paths), max(summary.snapshots))
        results = {m: train_model(paths, params, m) for m in ("churn", "appetence")}
        yield Pipeline(data_dir, params, paths, summary, results)
    finally:
        if old is None:
            os.environ.pop("ENGAGE_DATA_DIR", None)
        else:
            os.environ["ENGAGE_DATA_DIR"] = old


@pytest.fixture()
def scratch(pipeline, tmp_path):
    """A copy of the pipeline's data dir (``ENGAGE_DATA_DIR`` points at it meanwhile).

    For tests that register new versions, drop champions or otherwise change stores
    that the other tests share.
    """
    import shutil

    target = tmp_path / "data"
    shutil.copytree(pipeline.data_dir, target)
    old = os.environ["ENGAGE_DATA_DIR"]
    os.environ["ENGAGE_DATA_DIR"] = str(target)
    yield target
    os.environ["ENGAGE_DATA_DIR"] = old


def pytest_collection_modifyitems(config, items):
    """Every test that needs the trained pipeline is ``slow``, whatever its file says.

    ``make test-fast`` (``-m "not slow"``) then never trains; a new test that asks for the
    ``pipeline`` fixture, directly or through another fixture, cannot slip into it.
    """
    for item in items:
        if "pipeline" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
        # Spark and redis-server tests are `scale`, so `-m "not scale"` leaves them out.
        if {"spark", "redis_server"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.scale)


def _java_problem() -> str | None:
    """Why Spark cannot start here (no Java 17+ runtime), or None."""
    import re
    import shutil
    import subprocess

    if shutil.which("java") is None:
        return "no java on PATH: Spark needs a Java 17+ runtime (make install-dev installs it)"
    out = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    m = re.search(r'version "(?:1\.)?(\d+)', out)
    if not m or int(m.group(1)) < 17:
        return f"Spark 4 needs Java 17+, found: {out.splitlines()[:1]}"
    return None


@pytest.fixture(scope="session")
def spark():
    """One local SparkSession for every `scale` test: 2 cores, small shuffles, UTC.

    Skips (with the reason) when pyspark (the `scale` extra) or Java 17+ is missing.
    """
    pytest.importorskip("pyspark", reason='pyspark missing: pip install -e ".[scale]"')
    problem = _java_problem()
    if problem:
        pytest.skip(problem)
    from engage.config import load_params
    from features.spark_build import spark_session

    params = load_params(
        overrides=(
            "spark.master='local[2]'",
            # Small data: two shuffle partitions, and no whole-stage code generation
            # (compiling it costs more than running these queries).
            "spark.conf={spark.sql.shuffle.partitions: 2, spark.default.parallelism: 2, "
            "spark.ui.enabled: false, spark.ui.showConsoleProgress: false, "
            "spark.driver.memory: 1g, spark.sql.codegen.wholeStage: false}",
        )
    )
    session = spark_session(params.spark, app_name="engage-tests")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port for the session; stopped after.

    Yields ``"127.0.0.1:<port>"`` (Feast's connection string). Skips with the reason when
    redis-server (Debian package, installed by make install-dev) or the redis client
    (the `scale` extra) is missing. Nothing is saved to disk.
    """
    import shutil
    import socket
    import subprocess
    import time

    redis = pytest.importorskip("redis", reason='redis client missing: pip install -e ".[scale]"')
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed (apt-get install redis-server; make install-dev)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            exe,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start on 127.0.0.1:{port}")
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
