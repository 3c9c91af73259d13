"""The Feast feature store: configuration, apply, materialize and retrieval.

The repo definitions live in ``feature_repo/`` (split by object kind); this module holds
what they share (field lists from the catalog, the snapshot path) and the calls the
pipeline makes. The store config is ``feature_repo/feature_store.yaml`` with the registry
and online store moved under the data directory, so ``$ENGAGE_DATA_DIR`` moves them too.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pandas as pd
import yaml

from engage.config import Params, Paths, load_params, resolve_paths
from features.aggregates import TABLE_DIR, to_utc
from features.catalog import ENTITY_KEY, TIMESTAMP, VIEWS, feature_specs

os.environ.setdefault("FEAST_USAGE", "False")  # no usage telemetry: everything runs offline

MODEL_SERVICES = {"churn": "churn_v1", "appetence": "appetence_v1"}


def _context() -> tuple[Params, Paths]:
    params = load_params()
    return params, resolve_paths(params)


def snapshot_glob(paths: Paths | None = None) -> str:
    """Absolute glob of the snapshot files, the path of the Feast source."""
    paths = paths or _context()[1]
    return str(paths.features_dir / TABLE_DIR / "*.parquet")


def view_fields(view: str, params: Params | None = None) -> list:
    """Feast ``Field`` list of one feature view, from the catalog."""
    from feast import Field
    from feast.types import Float64, Int64

    params = params or _context()[0]
    return [
        Field(name=s.name, dtype=Int64 if s.dtype == "int" else Float64, description=s.description)
        for s in feature_specs(params)
        if s.view == view
    ]


def view_settings(params: Params | None = None) -> tuple[int, dict[str, str]]:
    """TTL in days and the description of each view."""
    params = params or _context()[0]
    return params.features.ttl_days, dict(VIEWS)


def repo_config(paths: Paths):
    """The Feast RepoConfig: feature_store.yaml with data paths under ``paths.data_dir``."""
    from feast.repo_config import RepoConfig

    raw = yaml.safe_load((paths.feature_repo / "feature_store.yaml").read_text())
    paths.feast_dir.mkdir(parents=True, exist_ok=True)
    raw["project"] = paths.params.feast.project
    raw["registry"]["path"] = str(paths.feast_dir / "registry.db")
    raw["online_store"]["path"] = str(paths.feast_dir / "online_store.db")
    # A copy for the Feast CLI when the data dir is not the default one (feast -f FILE).
    (paths.feast_dir / "feature_store.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    config = RepoConfig(**raw)
    config.repo_path = paths.feature_repo
    return config


def get_store(paths: Paths):
    """A FeatureStore on the project's repo and data directory."""
    from feast import FeatureStore

    return FeatureStore(repo_path=str(paths.feature_repo), config=repo_config(paths))


@contextlib.contextmanager
def _data_dir_env(paths: Paths):
    # The repo files resolve the snapshot path through engage.config: make them see
    # the same data directory as the caller even if it came from a profile.
    old = os.environ.get("ENGAGE_DATA_DIR")
    os.environ["ENGAGE_DATA_DIR"] = str(paths.data_dir)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ENGAGE_DATA_DIR", None)
        else:
            os.environ["ENGAGE_DATA_DIR"] = old


def apply_repo(paths: Paths) -> str:
    """Run the equivalent of ``feast apply`` on ``feature_repo/``; returns Feast's output."""
    from feast.repo_operations import apply_total

    config = repo_config(paths)
    out = io.StringIO()
    repo = str(paths.feature_repo)
    # Feast imports the repo files as top-level modules named relative to the current
    # directory, exactly as `feast -c feature_repo apply` does.
    added = repo not in sys.path
    if added:
        sys.path.append(repo)
    try:
        with (
            _data_dir_env(paths),
            contextlib.chdir(repo),
            contextlib.redirect_stdout(out),
        ):
            apply_total(config, paths.feature_repo, skip_source_validation=True)
    finally:
        if added:
            sys.path.remove(repo)
    return out.getvalue()


def materialize_snapshot(store, as_of: pd.Timestamp) -> None:
    """Load the snapshot at ``as_of`` into the online store (rerun = overwrite, per key)."""
    as_of = to_utc(as_of).to_pydatetime()
    with contextlib.redirect_stdout(io.StringIO()):
        store.materialize(
            start_date=as_of - timedelta(seconds=1), end_date=as_of + timedelta(seconds=1)
        )


def historical_features(store, entity_df: pd.DataFrame, model: str) -> pd.DataFrame:
    """Point-in-time features for ``entity_df`` (customer_id, event_timestamp, ...).

    Returns one row per entity row, in the input order, with the extra input columns
    (labels) kept. Rows without any snapshot inside the TTL get nulls, never dropped.

    Raises:
        ValueError: an entity row was lost or duplicated by the retrieval.

    """
    missing = {ENTITY_KEY, TIMESTAMP} - set(entity_df.columns)
    if missing:
        raise ValueError(f"entity_df: missing columns {sorted(missing)}")
    frame = entity_df.reset_index(drop=True).copy()
    frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True)
    frame["_row"] = range(len(frame))
    service = store.get_feature_service(MODEL_SERVICES[model])
    out = store.get_historical_features(entity_df=frame, features=service).to_df()
    out = out.sort_values("_row").reset_index(drop=True)
    if len(out) != len(frame) or not (out["_row"].to_numpy() == frame["_row"].to_numpy()).all():
        raise ValueError(
            f"historical retrieval returned {len(out)} rows for {len(frame)} entity rows"
        )
    return out.drop(columns="_row")


def online_features(store, customer_ids: Sequence[str], model: str) -> pd.DataFrame:
    """Latest materialized features of ``customer_ids`` (nulls for unknown ids)."""
    service = store.get_feature_service(MODEL_SERVICES[model])
    rows = [{ENTITY_KEY: str(c)} for c in customer_ids]
    return store.get_online_features(features=service, entity_rows=rows).to_df()


def feast_dir_for_cli(paths: Paths) -> Path:
    """The feature_store.yaml to pass to ``feast -f`` for a non-default data dir."""
    return paths.feast_dir / "feature_store.yaml"


__all__ = [
    "MODEL_SERVICES",
    "apply_repo",
    "get_store",
    "historical_features",
    "materialize_snapshot",
    "online_features",
    "snapshot_glob",
    "view_fields",
]
