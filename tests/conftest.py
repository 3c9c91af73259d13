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
