"""The Feast feature store: configuration, apply, materialize and retrieval.

The Feast objects are built in code by :mod:`features.feast_objects` from the caller's
parameters and paths, and :func:`apply_repo` applies them like ``feast apply`` does
(objects no longer defined are deleted). The files in ``feature_repo/`` build the same
objects for the Feast CLI. The store config is ``feature_repo/feature_store.yaml`` with
the registry and online store moved under the data directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import yaml

from engage.config import Paths
from engage.faults import fault_point
from engage.journal import fsync_file, staged_path
from features.catalog import CREATED, ENTITY_KEY, TIMESTAMP
from features.snapshots import snapshot_path, to_utc

REGISTRY_DB = "registry.db"
ONLINE_STORE_DB = "online_store.db"
PACKED_STORE = "features.online_store.PackedSqliteOnlineStore"
_WHAT = {REGISTRY_DB: "registry", ONLINE_STORE_DB: "online store"}
MATERIALIZE_CHUNK_ROWS = 20_000  # Feast's own write path holds ~0.7 KB per value: ~0.5 GB a chunk


def registry_path(paths: Paths) -> Path:
    """The Feast registry file under the data directory."""
    return paths.feast_dir / REGISTRY_DB


def repo_config(paths: Paths, read_only: bool = False, registry: Path | None = None):
    """The Feast RepoConfig: feature_store.yaml with data paths under ``paths.data_dir``.

    Args:
        paths: resolved locations.
        read_only: for readers (the prediction service): create no folder, write no copy
            of the config, and open the packed online store read-only.
        registry: another registry file to use (:func:`apply_repo` applies to a copy);
            the copy of the config written for the Feast CLI always names the real one.

    """
    from feast.repo_config import RepoConfig

    raw = yaml.safe_load((paths.feature_repo / "feature_store.yaml").read_text())
    raw["project"] = paths.params.feast.project
    raw["registry"]["path"] = str(registry_path(paths))
    raw["online_store"]["path"] = str(paths.feast_dir / ONLINE_STORE_DB)
    if uses_redis(paths):
        # Feast's own Redis store (features/redis_store.py reads and bulk-writes it).
        raw["online_store"] = {
            "type": "redis",
            "connection_string": paths.params.feast.redis_connection_string,
        }
    if uses_spark(paths):
        # Feast's Spark offline store: training rows (get_historical_features) are joined
        # on the cluster of spark.master. Feast starts its session from spark_conf when
        # none is active; the session zone is UTC, like every stored time.
        spark = paths.params.spark
        raw["offline_store"] = {
            "type": "spark",
            "spark_conf": {
                "spark.master": spark.master,
                **spark.conf,
                "spark.sql.session.timeZone": "UTC",
            },
        }
    if read_only:
        if raw["online_store"].get("type") == PACKED_STORE:
            raw["online_store"]["read_only"] = True
    else:
        paths.feast_dir.mkdir(parents=True, exist_ok=True)
        # A copy for the Feast CLI when the data dir is not the default one (feast -f FILE).
        cli_copy = paths.feast_dir / "feature_store.yaml"
        text = yaml.safe_dump(raw, sort_keys=False)
        if not cli_copy.exists() or cli_copy.read_text() != text:
            staged = staged_path(cli_copy)
            staged.write_text(text)
            os.replace(staged, cli_copy)
    if registry is not None:
        raw["registry"]["path"] = str(registry)
    config = RepoConfig(**raw)
    config.repo_path = paths.feature_repo
    return config


def uses_spark(paths: Paths) -> bool:
    """Whether Feast's offline store is Spark (``compute.engine: spark``)."""
    return paths.params.compute.engine == "spark"


def uses_redis(paths: Paths) -> bool:
    """Whether the online store is Feast's Redis store (``feast.online_store: redis``)."""
    return paths.params.feast.online_store == "redis"


def get_store(paths: Paths):
    """A FeatureStore on the project's repo and data directory."""
    from feast import FeatureStore

    return FeatureStore(repo_path=str(paths.feature_repo), config=repo_config(paths))


class FeatureStoreUnavailable(LookupError):
    """The Feast registry or online store is missing; the message names it and the fix."""


def open_store_read_only(paths: Paths):
    """A FeatureStore for reading only: the registry and online store must exist.

    Nothing is created: Feast would otherwise answer a wrong data dir with a new empty
    registry, and SQLite with a new empty online store.

    Raises:
        FeatureStoreUnavailable: the registry or the online store file is missing.

    """
    from feast import FeatureStore

    needed = (paths.feast_dir / REGISTRY_DB,)
    if not uses_redis(paths):  # a Redis server is checked by the first read instead
        needed += (paths.feast_dir / ONLINE_STORE_DB,)
    missing = [p for p in needed if not p.is_file()]
    if missing:
        raise FeatureStoreUnavailable(
            f"no Feast {' or '.join(_WHAT[p.name] for p in missing)} at "
            f"{', '.join(str(p) for p in missing)}: build the features first "
            "(`engage features build` or `engage run`)"
        )
    return FeatureStore(repo_path=str(paths.feature_repo), config=repo_config(paths, True))


@dataclass(frozen=True)
class ApplyResult:
    """What an apply did, as ``"<Kind> <name>"`` labels (e.g. ``"FeatureView customer_rfm"``).

    Attributes:
        applied: every object defined (created or updated).
        deleted: objects that were in the registry but are no longer defined.

    """

    applied: tuple[str, ...]
    deleted: tuple[str, ...]


def _kind(obj) -> str:
    # Feature views of every type share one namespace in the registry.
    from feast import Entity, FeatureService
    from feast.base_feature_view import BaseFeatureView
    from feast.data_source import DataSource

    for cls in (Entity, DataSource, BaseFeatureView, FeatureService):
        if isinstance(obj, cls):
            return cls.__name__
    raise TypeError(f"not a Feast object this project defines: {obj!r}")


def _label(obj) -> str:
    return f"{type(obj).__name__} {obj.name}"


def apply_objects(store, objects) -> ApplyResult:
    """Apply ``objects`` (a :class:`~features.feast_objects.FeastObjects`) to ``store``.

    Like ``feast apply``: every defined object is created or updated, and whatever the
    registry holds for the project but is no longer defined is deleted (``partial=False``),
    so the online store drops the tables of deleted views and recreates those whose
    features changed.

    Args:
        store: the FeatureStore to apply to (see :func:`get_store`).
        objects: the definitions, e.g. from ``build_feast_objects``.

    Returns:
        The labels of the objects applied and of those deleted.

    """
    defined = objects.all()
    names = {(_kind(o), o.name) for o in defined}
    registered = [
        *store.list_entities(),
        *store.list_data_sources(),
        *store.list_all_feature_views(),
        *store.list_feature_services(),
    ]
    stale = [o for o in registered if (_kind(o), o.name) not in names]
    store.apply(defined, objects_to_delete=stale, partial=False)
    return ApplyResult(tuple(_label(o) for o in defined), tuple(_label(o) for o in stale))


def apply_repo(paths: Paths) -> ApplyResult:
    """Run the equivalent of ``feast apply`` for ``paths.params`` and ``paths.data_dir``.

    The definitions come from :func:`features.feast_objects.build_feast_objects`, so two
    applies in one process with other parameters or data directories each get their own.

    Feast rewrites its registry file in place (truncate, then write), so a reader could
    see it empty and a crash could leave it cut short. Here the apply runs on a copy,
    which is renamed over the registry when complete: readers see the old or the new
    registry. A registry that cannot be parsed (cut short by an older version) is
    rebuilt from the definitions, which is all it holds.
    """
    from feast import FeatureStore
    from google.protobuf.message import DecodeError

    from features.feast_objects import build_feast_objects

    registry = registry_path(paths)
    staged = staged_path(registry)
    objects = build_feast_objects(paths.params, paths)
    try:
        if registry.exists():
            shutil.copyfile(registry, staged)
        try:
            store = FeatureStore(
                repo_path=str(paths.feature_repo), config=repo_config(paths, registry=staged)
            )
        except DecodeError:
            staged.unlink(missing_ok=True)
            store = FeatureStore(
                repo_path=str(paths.feature_repo), config=repo_config(paths, registry=staged)
            )
        result = apply_objects(store, objects)
        fault_point("features:registry_staged")
        fsync_file(staged)
        os.replace(staged, registry)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return result


def materialize_snapshot(
    store, as_of: pd.Timestamp, chunk_rows: int = MATERIALIZE_CHUNK_ROWS
) -> int:
    """Load the snapshot at ``as_of`` into the online store.

    The snapshot file is read in chunks of ``chunk_rows`` contacts, so memory stays flat.
    With the project's :class:`~features.online_store.PackedSqliteOnlineStore` each chunk
    goes straight from the DataFrame to SQLite (one row per contact and view, ~60x faster
    than Feast's per-value path) into staging tables, swapped in for the live ones in one
    transaction at the end: the online store then holds exactly the snapshot (contacts
    not in it are gone), and a reader sees the old contents or the new, never part of
    each; a killed load leaves the old contents. With Feast's Redis store (single node)
    each chunk is one pipelined bulk write in Feast's own layout
    (:func:`features.redis_store.write_frame`), an upsert per contact like the next
    case. Any other online store configured in
    ``feature_store.yaml`` gets the same rows through ``store.write_to_online_store``
    (an upsert per contact: contacts not in the snapshot keep their old rows there).
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
    redis_client = _redis_bulk_client(store)
    version = store.config.entity_key_serialization_version
    views: dict[Path, list] = {}
    for view in store.list_feature_views():
        if view.online:
            # The source path is the glob of the snapshot files (snapshots.snapshot_glob).
            views.setdefault(Path(view.batch_source.path).parent, []).append(view)
    online_views = [v for group in views.values() for v in group]
    staging = online.begin_rebuild(store.config, online_views) if packed else {}
    try:
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
                if packed or redis_client is not None:
                    # Serialized once per chunk, shared by the views.
                    keys = entity_key_bytes(ENTITY_KEY, frame[ENTITY_KEY].astype(str), version)
                for view in group:
                    if redis_client is not None:
                        from features.redis_store import write_frame

                        write_frame(redis_client, store.config, view, frame, keys, TIMESTAMP)
                    elif packed:
                        online.write_frame(
                            store.config,
                            view,
                            frame,
                            keys,
                            TIMESTAMP,
                            CREATED,
                            into=staging[view.name],
                        )
                    else:
                        names = [ENTITY_KEY, TIMESTAMP, CREATED, *(f.name for f in view.features)]
                        store.write_to_online_store(view.name, frame[names])
                rows += len(frame)
        if packed:
            fault_point("features:online_staged")
            online.commit_rebuild(store.config, online_views, staging)
    except BaseException:
        if packed:
            online.drop_staging(store.config, staging)
        raise
    return rows


def _redis_bulk_client(store):
    """A client for the pipelined bulk write when the store is Feast's Redis, else None."""
    cfg = store.config.online_store
    # A Redis cluster or sentinel keeps Feast's stock write path.
    if getattr(cfg, "type", None) != "redis" or getattr(cfg, "redis_type", None) != "redis":
        return None
    from features.redis_store import client_for

    return client_for(store.config)


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
    with _spark_offline_scope(store):
        out = store.get_historical_features(
            entity_df=frame, features=store.get_feature_service(service)
        ).to_df()
    out = out.sort_values("_row").reset_index(drop=True)
    # Feast's Spark offline store returns the entity times naive (in the session's zone,
    # UTC here) and in ns; the DuckDB store returns them in UTC, in µs. One type for
    # both: what a model records of its training times must not depend on the engine.
    out[TIMESTAMP] = pd.to_datetime(out[TIMESTAMP], utc=True).dt.as_unit("us")
    if len(out) != len(frame) or not (out["_row"].to_numpy() == frame["_row"].to_numpy()).all():
        raise ValueError(
            f"historical retrieval returned {len(out)} rows for {len(frame)} entity rows"
        )
    return out.drop(columns="_row")


@contextlib.contextmanager
def _spark_offline_scope(store) -> Iterator[None]:
    """Undo the session setting Feast's Spark offline store changes for its queries.

    Feast turns on ``spark.sql.parser.quotedRegexColumnNames`` in the shared session, in
    which a back-quoted name is a regex; the feature build's statistics are back-quoted
    names holding a dot (``email_open.n_all``), so the setting is put back afterwards.
    """
    if getattr(store.config.offline_store, "type", None) != "spark":
        yield
        return
    from pyspark.sql import SparkSession

    key = "spark.sql.parser.quotedRegexColumnNames"
    active = SparkSession.getActiveSession()
    before = active.conf.get(key, None) if active is not None else None
    try:
        yield
    finally:
        session = SparkSession.getActiveSession()
        if session is not None:
            if before is None:
                session.conf.unset(key)
            else:
                session.conf.set(key, before)


def online_features(store, customer_ids: Sequence[str], service: str) -> pd.DataFrame:
    """Latest materialized features of ``customer_ids`` (nulls for unknown ids)."""
    service = store.get_feature_service(service)
    rows = [{ENTITY_KEY: str(c)} for c in customer_ids]
    return store.get_online_features(features=service, entity_rows=rows).to_df()


def feast_dir_for_cli(paths: Paths) -> Path:
    """The feature_store.yaml to pass to ``feast -f`` for a non-default data dir."""
    return paths.feast_dir / "feature_store.yaml"


__all__ = [
    "ApplyResult",
    "FeatureStoreUnavailable",
    "apply_objects",
    "apply_repo",
    "get_store",
    "historical_features",
    "materialize_snapshot",
    "online_features",
    "open_store_read_only",
]
