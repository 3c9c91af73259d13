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
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import yaml

from engage.config import Params, Paths, load_params, resolve_paths
from features.catalog import CREATED, ENTITY_KEY, TIMESTAMP, VIEWS, feature_specs
from features.snapshots import snapshot_glob as _glob
from features.snapshots import snapshot_path, to_utc

os.environ.setdefault("FEAST_USAGE", "False")  # no usage telemetry: everything runs offline

MATERIALIZE_CHUNK_ROWS = 20_000  # Feast's own write path holds ~0.7 KB per value: ~0.5 GB a chunk
# The parameters and paths of the apply_repo call in progress: the repo files read them
# through _context(), so they follow the caller's profile, --set overrides and data dir.
_applying: tuple[Params, Paths] | None = None


def _context() -> tuple[Params, Paths]:
    if _applying is not None:
        return _applying
    params = load_params()
    return params, resolve_paths(params)


def snapshot_glob(paths: Paths | None = None) -> str:
    """Absolute glob of the snapshot files, the path of the Feast source."""
    paths = paths or _context()[1]
    return _glob(paths.features_dir)


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


def _forget_repo_modules(repo: Path) -> None:
    # Feast imports the repo files with importlib.import_module, which returns the cached
    # module on a second apply in the same process: its source path, TTL and fields would
    # be those of the first apply (another data dir or params). Drop them to re-import.
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().parent == repo.resolve():
            del sys.modules[name]


def apply_repo(paths: Paths) -> str:
    """Run the equivalent of ``feast apply`` on ``feature_repo/``; returns Feast's output.

    The definitions use ``paths.params`` (profile and overrides included) and the
    snapshots under ``paths.data_dir``, even when another apply ran in this process.
    """
    global _applying
    from feast.repo_operations import apply_total

    config = repo_config(paths)
    out = io.StringIO()
    repo = str(paths.feature_repo)
    # Feast imports the repo files as top-level modules named relative to the current
    # directory, exactly as `feast -c feature_repo apply` does.
    added = repo not in sys.path
    if added:
        sys.path.append(repo)
    _forget_repo_modules(paths.feature_repo)
    previous, _applying = _applying, (paths.params, paths)
    try:
        with (
            _data_dir_env(paths),
            contextlib.chdir(repo),
            contextlib.redirect_stdout(out),
        ):
            apply_total(config, paths.feature_repo, skip_source_validation=True)
    finally:
        _applying = previous
        _forget_repo_modules(paths.feature_repo)
        if added:
            sys.path.remove(repo)
    return out.getvalue()


def materialize_snapshot(
    store, as_of: pd.Timestamp, chunk_rows: int = MATERIALIZE_CHUNK_ROWS
) -> int:
    """Load the snapshot at ``as_of`` into the online store (rerun = overwrite, per key).

    The snapshot file is read in chunks of ``chunk_rows`` contacts, so memory stays flat.
    With the project's :class:`~features.online_store.PackedSqliteOnlineStore` each chunk
    goes straight from the DataFrame to SQLite (one row per contact and view, ~60x faster
    than Feast's per-value path); any other online store configured in
    ``feature_store.yaml`` gets the same rows through ``store.write_to_online_store``.
    Unlike ``store.materialize`` this records no materialization interval in the registry
    (only ``feast materialize-incremental`` reads it).

    Returns:
        The number of contacts written.

    Raises:
        FileNotFoundError: no snapshot was built at ``as_of``.

    """
    from features.online_store import PackedSqliteOnlineStore, entity_key_bytes

    online = store._get_provider().online_store
    packed = isinstance(online, PackedSqliteOnlineStore)
    version = store.config.entity_key_serialization_version
    views: dict[Path, list] = {}
    for view in store.list_feature_views():
        if view.online:
            # The source path is the glob of the snapshot files (see snapshot_glob).
            views.setdefault(Path(view.batch_source.path).parent, []).append(view)
    rows = 0
    for directory, group in views.items():
        path = snapshot_path(directory.parent, as_of)
        if not path.exists():
            raise FileNotFoundError(f"no snapshot at {to_utc(as_of)}: {path} is missing")
        file = pq.ParquetFile(path)
        n = file.metadata.num_rows
        # Even chunks: a small last one could be all nulls for a view, which
        # write_to_online_store skips (leaving older values) where materialize writes.
        size = max(1, -(-n // -(-n // chunk_rows))) if n else chunk_rows
        for batch in file.iter_batches(batch_size=size):
            frame = batch.to_pandas()
            if packed:
                # Serialized once per chunk, shared by the views.
                keys = entity_key_bytes(ENTITY_KEY, frame[ENTITY_KEY].astype(str), version)
            for view in group:
                if packed:
                    online.write_frame(store.config, view, frame, keys, TIMESTAMP, CREATED)
                else:
                    names = [ENTITY_KEY, TIMESTAMP, CREATED, *(f.name for f in view.features)]
                    store.write_to_online_store(view.name, frame[names])
            rows += len(frame)
    return rows


def historical_features(store, entity_df: pd.DataFrame, service: str) -> pd.DataFrame:
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
    out = store.get_historical_features(
        entity_df=frame, features=store.get_feature_service(service)
    ).to_df()
    out = out.sort_values("_row").reset_index(drop=True)
    if len(out) != len(frame) or not (out["_row"].to_numpy() == frame["_row"].to_numpy()).all():
        raise ValueError(
            f"historical retrieval returned {len(out)} rows for {len(frame)} entity rows"
        )
    return out.drop(columns="_row")


def online_features(store, customer_ids: Sequence[str], service: str) -> pd.DataFrame:
    """Latest materialized features of ``customer_ids`` (nulls for unknown ids)."""
    service = store.get_feature_service(service)
    rows = [{ENTITY_KEY: str(c)} for c in customer_ids]
    return store.get_online_features(features=service, entity_rows=rows).to_df()


def feast_dir_for_cli(paths: Paths) -> Path:
    """The feature_store.yaml to pass to ``feast -f`` for a non-default data dir."""
    return paths.feast_dir / "feature_store.yaml"


__all__ = [
    "apply_repo",
    "get_store",
    "historical_features",
    "materialize_snapshot",
    "online_features",
    "snapshot_glob",
    "view_fields",
]
