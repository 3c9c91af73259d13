"""Fixtures and helpers of the service reliability tests; modules import them explicitly.

(Not a ``conftest.py``: the batch reliability tests live in the same folder.)

``store_copy`` is a self-contained copy of the session's trained ``pipeline`` data dir
(the MLflow paths rewritten to the copy), so a test may break a store without touching
the data the other service tests read. ``served`` is one ``bentoml serve`` worker on it,
shared by the abuse and readiness modules, with short body and header timeouts.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from features.catalog import ENTITY_KEY
from features.snapshots import pick_snapshot
from serving.local_server import LocalServer

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240
# Short enough to keep the tests quick, long enough for a loaded 2-core machine.
BODY_TIMEOUT_S = 1.5
HEADER_TIMEOUT_S = 3.0


def copy_store(source: Path, dest: Path) -> Path:
    """Copy a data dir with its MLflow store, pointing the store's paths at the copy.

    The registry keeps absolute artifact locations; rewriting them makes the copy's
    models its own (deleting a model file of the copy leaves the original intact).
    """
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("bentoml", "reports"))
    db = dest / "mlruns" / "mlflow.db"
    con = sqlite3.connect(db)
    try:
        old, new = source.as_uri(), dest.as_uri()
        for table, column in (
            ("model_versions", "storage_location"),
            ("model_versions", "source"),
            ("experiments", "artifact_location"),
            ("runs", "artifact_uri"),
        ):
            con.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new))
        con.commit()
    finally:
        con.close()
    return dest


def overlay(path: Path, overrides: dict[str, object]) -> Path:
    """A partial params file from ``{"section.key": value}``."""
    doc: dict = {}
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        doc.setdefault(section, {})[key] = value
    path.write_text(yaml.safe_dump(doc))
    return path


def service_env(
    data_dir: Path,
    workers: int = 1,
    params_file: Path | None = None,
    mlruns_dir: Path | None = None,
) -> dict[str, str]:
    """The environment of a ``bentoml serve`` (or ``engage serve``) on ``data_dir``."""
    env = dict(os.environ)
    for var in ("ENGAGE_API_KEY", "ENGAGE_SERVING_NOW", "ENGAGE_PROFILE", "BENTOML_HOME"):
        env.pop(var, None)
    env.update(
        ENGAGE_DATA_DIR=str(data_dir),
        ENGAGE_MLRUNS_DIR=str(mlruns_dir or data_dir / "mlruns"),
        BENTOML_CONFIG_OVERRIDES=json.dumps({"services": {"engage": {"workers": workers}}}),
        MLFLOW_DISABLE_TELEMETRY="true",
        BENTOML_DO_NOT_TRACK="true",
        FEAST_USAGE="False",
    )
    if params_file is not None:
        env["ENGAGE_PARAMS"] = str(params_file)
    else:
        env.pop("ENGAGE_PARAMS", None)
    return env


def start(env: dict[str, str], log: Path) -> LocalServer:
    """A server on a free loopback port, once ``/readyz`` answers (stopped on failure)."""
    server = LocalServer(env, log, ROOT)
    try:
        server.wait_ready(time.monotonic() + START_TIMEOUT_S)
    except RuntimeError:
        server.stop()
        raise
    return server


def paths_of(data_dir: Path):
    """The resolved paths of a data dir (its MLflow store inside), the environment intact."""
    from engage.config import load_params, resolve_paths

    saved = {k: os.environ.get(k) for k in ("ENGAGE_DATA_DIR", "ENGAGE_MLRUNS_DIR")}
    os.environ["ENGAGE_DATA_DIR"] = str(data_dir)
    os.environ.pop("ENGAGE_MLRUNS_DIR", None)
    try:
        return resolve_paths(load_params())
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def known_ids(data_dir: Path, n: int = 10) -> dict[str, list[str]]:
    """``n`` customers and ``n`` prospects of the latest snapshot."""
    frame = pd.read_parquet(
        pick_snapshot(data_dir / "features").path, columns=[ENTITY_KEY, "has_purchased"]
    )
    return {
        "customers": frame.loc[frame["has_purchased"] == 1, ENTITY_KEY].head(n).tolist(),
        "prospects": frame.loc[frame["has_purchased"] == 0, ENTITY_KEY].head(n).tolist(),
    }


@pytest.fixture(scope="session")
def store_copy(pipeline, tmp_path_factory) -> Path:
    """A private copy of the trained pipeline's data dir (stores and models included)."""
    return copy_store(pipeline.data_dir, tmp_path_factory.mktemp("served") / "data")


@pytest.fixture(scope="session")
def served(store_copy, tmp_path_factory):
    """One worker serving ``store_copy`` with short body and header timeouts."""
    folder = tmp_path_factory.mktemp("served-logs")
    params = overlay(
        folder / "params.yaml",
        {"serving.body_timeout_s": BODY_TIMEOUT_S, "serving.header_timeout_s": HEADER_TIMEOUT_S},
    )
    server = start(service_env(store_copy, params_file=params), folder / "server.log")
    try:
        yield server
    finally:
        server.stop()


__all__ = [
    "BODY_TIMEOUT_S",
    "HEADER_TIMEOUT_S",
    "ROOT",
    "copy_store",
    "known_ids",
    "overlay",
    "paths_of",
    "served",
    "service_env",
    "start",
    "store_copy",
]
