"""A Feast online store on SQLite with one row per contact and feature view.

Feast's own SQLite online store keeps one row per contact *and feature* and writes them
one ``execute`` at a time, after turning every value into a protobuf object: for a million
contacts and ~75 features that is 75 M rows, ~25 minutes and a 17 GB file. The features
here are all numbers (the catalog types them Int64 or Float64), so this store packs the
values of one feature view into one float64 blob per contact:

- ``write_frame`` writes a snapshot chunk straight from a DataFrame (vectorised; no
  protobuf objects), which is what ``features.store.materialize_snapshot`` uses;
- ``online_write_batch`` accepts Feast's protobuf rows, so ``feast materialize`` and
  ``FeatureStore.write_to_online_store`` keep working;
- ``online_read`` gives Feast its usual ``ValueProto`` dict, built only for the contacts
  and features asked, so ``get_online_features`` and the service need no change.

Nulls are stored as NaN and read back as nulls: LightGBM treats both as missing. An
Int64 value is stored exactly as long as it is below 2**53 in magnitude (checked on write).

A full reload (``features.store.materialize_snapshot``) never shows a reader half of
it: :meth:`PackedSqliteOnlineStore.begin_rebuild` creates one staging table per view
(named after the process), the chunks go there, and
:meth:`~PackedSqliteOnlineStore.commit_rebuild` swaps every view's table in one SQLite
transaction. In WAL mode a reader sees the tables before or after that transaction:
one read (``read_columns``, ``online_read``) is never a mix, and
:meth:`~PackedSqliteOnlineStore.read_views` reads several views in one read
transaction, so one request is never a mix of two builds either. A killed rebuild leaves
only its staging tables, dropped by the next one; the live tables are untouched.
Feast selects the store from ``feature_store.yaml``::

    online_store:
      type: features.online_store.PackedSqliteOnlineStore
      path: ../data/feast/online_store.db

With ``read_only: true`` (what the prediction service sets in code) the file is opened
with SQLite's ``mode=ro``: a missing file is an :class:`OnlineStoreUnavailable` error
naming it, never a new empty store, nothing is written, and a file replaced on disk is
reopened on the next read. :meth:`PackedSqliteOnlineStore.probe` is the service's cheap
readiness read.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from feast import Entity, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.online_store import OnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from feast.types import Float64, Int64
from pydantic import StrictBool, StrictStr

from engage.locks import pid_alive
from engage.readonly import readonly_sqlite

MAX_EXACT_INT = 2**53  # float64 holds every integer below this exactly
_LAYOUT = "_engage_layout"  # table name -> JSON list of [feature, "int"|"float"]
_STAGING = "__staging_"  # <table>__staging_<pid>: a rebuild in progress
_STAGING_RE = re.compile(rf"^(?P<table>.+){_STAGING}(?P<pid>\d+)$")
_TABLE_SQL = "(entity_key BLOB PRIMARY KEY, event_ts INTEGER, created_ts INTEGER, vals BLOB)"


class PackedSqliteOnlineStoreConfig(FeastConfigBaseModel):
    """``online_store`` section of feature_store.yaml for :class:`PackedSqliteOnlineStore`."""

    type: Literal["features.online_store.PackedSqliteOnlineStore"] = (
        "features.online_store.PackedSqliteOnlineStore"
    )
    path: StrictStr = "data/online_store.db"
    """SQLite file; a relative path resolves against the feature repo."""
    read_only: StrictBool = False
    """Open the file read-only: never create it, its tables or its journal mode."""


class OnlineStoreUnavailable(RuntimeError):
    """The online store cannot be read: missing, not a database, or without its tables.

    The message names the file and the command that rebuilds it.
    """


def view_layout(view: FeatureView, store: str = "PackedSqliteOnlineStore") -> list[tuple[str, str]]:
    """(feature, ``int`` | ``float``) of each feature of ``view``, in order.

    The direct paths (this store, the Redis reader) handle Int64 and Float64 only.

    Raises:
        TypeError: another type; the message names the view, the feature and ``store``.

    """
    layout = []
    for field in view.features:
        if field.dtype == Int64:
            layout.append((field.name, "int"))
        elif field.dtype == Float64:
            layout.append((field.name, "float"))
        else:
            raise TypeError(
                f"feature view {view.name!r}: feature {field.name!r} is {field.dtype}; "
                f"{store} handles Int64 and Float64 features only"
            )
    return layout


def _epoch_us(ts: Any) -> int | None:
    if ts is None or ts is pd.NaT:
        return None
    stamp = pd.Timestamp(ts)
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return int(stamp.value // 1000)


def _column_us(column: pd.Series) -> list[int]:
    # Epoch µs whatever the column's unit: a Parquet snapshot reads back as
    # datetime64[us], where astype("int64") is already µs (not ns).
    return pd.to_datetime(column, utc=True).dt.as_unit("us").astype("int64").tolist()


def _utc(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, tz=UTC)


def _missing(path: str) -> str:
    return f"online store {path} is missing: build it with `engage features build`"


def _unreadable(path: str, err: Exception) -> str:
    return f"online store {path} cannot be read ({err}): rebuild it with `engage features build`"


def entity_key_bytes(join_key: str, values: Sequence[str], version: int = 3) -> list[bytes]:
    """Feast's serialized entity keys of one string join key (what the store indexes on)."""
    out = []
    for value in values:
        key = EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(string_val=value)])
        out.append(serialize_entity_key(key, entity_key_serialization_version=version))
    return out


class PackedSqliteOnlineStore(OnlineStore):
    """Feast online store: SQLite, one row (key, times, float64 blob) per contact and view."""

    _conn: sqlite3.Connection | None = None
    _conn_path: str | None = None
    _conn_ident: tuple[int, int] | None = None
    # Layouts as last read, valid while SQLite's schema_version is unchanged: any apply
    # that changes a layout drops or creates a table, which bumps it (in any process).
    _layouts: dict[str, list[tuple[str, str]]] | None = None
    _schema_version: int | None = None
    _verified: dict[str, tuple[FeatureView, list[tuple[str, str]]]] | None = None

    # ------------------------------------------------------------------ plumbing
    @staticmethod
    def db_path(config: RepoConfig) -> str:
        """Absolute path of the SQLite file (relative paths resolve against the repo)."""
        path = Path(config.online_store.path)
        if config.repo_path and not path.is_absolute():
            path = Path(config.repo_path) / path
        return str(path)

    def _connect(self, config: RepoConfig) -> sqlite3.Connection:
        path = self.db_path(config)
        if getattr(config.online_store, "read_only", False):
            return self._connect_read_only(path)
        if self._conn is None or self._conn_path != path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, check_same_thread=False)
            self._conn_path = path
            # WAL: readers (the service) are not blocked by a materialization.
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS {_LAYOUT} (tbl TEXT PRIMARY KEY, layout TEXT)"
            )
        return self._conn

    def _connect_read_only(self, path: str) -> sqlite3.Connection:
        # A stat per read (microseconds): a deleted file is reported instead of being read
        # from the unlinked inode forever, and a replaced file is reopened.
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise OnlineStoreUnavailable(_missing(path)) from None
        ident = (st.st_dev, st.st_ino)
        if self._conn is None or self._conn_path != path or self._conn_ident != ident:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            try:
                self._conn = readonly_sqlite(Path(path))
            except (FileNotFoundError, sqlite3.Error) as err:
                raise OnlineStoreUnavailable(_unreadable(path, err)) from None
            self._conn_path, self._conn_ident = path, ident
            self._layouts = self._schema_version = None
        return self._conn

    def probe(self, config: RepoConfig, views: Sequence[FeatureView]) -> None:
        """A cheap real read of the store: a fresh connection, each view's layout and row.

        A fresh read-only connection sees the file as it is on disk now (an open one
        could answer from its cache). Used by the service's readiness check.

        Raises:
            OnlineStoreUnavailable: the file is missing, unreadable, or lacks a view's
                table or layout (the message names the file and the command to run).

        """
        path = self.db_path(config)
        if not os.path.isfile(path):
            raise OnlineStoreUnavailable(_missing(path))
        try:
            conn = readonly_sqlite(Path(path))
        except (FileNotFoundError, sqlite3.Error) as err:
            raise OnlineStoreUnavailable(_unreadable(path, err)) from None
        try:
            layouts = self._read_layouts(conn)
            for view in views:
                table = self.table_name(config, view)
                if layouts.get(table) != view_layout(view):
                    raise OnlineStoreUnavailable(
                        f"online store {path}: no current table for feature view "
                        f"{view.name!r}: rebuild it with `engage features build`"
                    )
                conn.execute(f'SELECT entity_key, vals FROM "{table}" LIMIT 1').fetchall()
        except sqlite3.Error as err:
            raise OnlineStoreUnavailable(_unreadable(path, err)) from None
        finally:
            conn.close()

    @staticmethod
    def table_name(config: RepoConfig, view: FeatureView) -> str:
        """SQLite table of one feature view (project-qualified, like Feast's stores)."""
        return f"{config.project}_{view.name}"

    @staticmethod
    def _read_layouts(conn: sqlite3.Connection) -> dict[str, list[tuple[str, str]]]:
        rows = conn.execute(f"SELECT tbl, layout FROM {_LAYOUT}").fetchall()
        return {t: [tuple(x) for x in json.loads(js)] for t, js in rows}

    def _checked_layout(
        self, conn: sqlite3.Connection, config: RepoConfig, view: FeatureView
    ) -> tuple[str, list[tuple[str, str]]]:
        table = self.table_name(config, view)
        version = conn.execute("PRAGMA schema_version").fetchone()[0]
        if self._layouts is None or version != self._schema_version:
            self._layouts = self._read_layouts(conn)
            self._schema_version = version
            self._verified = {}
        # The same view object checked against the same layouts: skip the comparison of
        # every feature's type (most of a one-contact read otherwise).
        verified = self._verified.get(table) if self._verified is not None else None
        if verified is not None and verified[0] is view:
            return table, verified[1]
        stored = self._layouts.get(table)
        if stored is None:
            raise OnlineStoreUnavailable(
                f"online store {self.db_path(config)} has no table for feature view "
                f"{view.name!r}: run `feast apply` (or `engage features build`) first"
            )
        if stored != view_layout(view):
            raise OnlineStoreUnavailable(
                f"feature view {view.name!r} changed since the online table was created: "
                "run `feast apply` (or `engage features build`) again"
            )
        if self._verified is not None:
            self._verified[table] = (view, stored)
        return table, stored

    # ------------------------------------------------------------------ Feast API
    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ) -> None:
        """Create a table per kept view (recreated if its features changed); drop the rest."""
        conn = self._connect(config)
        with conn:
            stored = self._read_layouts(conn)
            for view in tables_to_keep:
                table, layout = self.table_name(config, view), view_layout(view)
                if stored.get(table) != layout:
                    # Packed values are positional: a new feature list invalidates them.
                    conn.execute(f'DROP TABLE IF EXISTS "{table}"')
                conn.execute(f'CREATE TABLE IF NOT EXISTS "{table}" {_TABLE_SQL} WITHOUT ROWID')
                conn.execute(
                    f"INSERT OR REPLACE INTO {_LAYOUT} VALUES (?, ?)", (table, json.dumps(layout))
                )
            for view in tables_to_delete:
                table = self.table_name(config, view)
                conn.execute(f'DROP TABLE IF EXISTS "{table}"')
                conn.execute(f"DELETE FROM {_LAYOUT} WHERE tbl = ?", (table,))

    def teardown(
        self, config: RepoConfig, tables: Sequence[FeatureView], entities: Sequence[Entity]
    ) -> None:
        """Drop the views' tables (``feast teardown``)."""
        self.update(config, tables, [], entities, [], partial=False)

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Write Feast's protobuf rows (``feast materialize``, ``write_to_online_store``)."""
        conn = self._connect(config)
        name, layout = self._checked_layout(conn, config, table)
        values = np.full((len(data), len(layout)), np.nan)
        for i, (_, features, _, _) in enumerate(data):
            for j, (feature, _) in enumerate(layout):
                proto = features.get(feature)
                kind = proto.WhichOneof("val") if proto is not None else None
                if kind is not None:
                    values[i, j] = getattr(proto, kind)
        version = config.entity_key_serialization_version
        keys = [serialize_entity_key(k, entity_key_serialization_version=version) for k, *_ in data]
        events = [_epoch_us(e) for _, _, e, _ in data]
        created = [_epoch_us(c) for _, _, _, c in data]
        self._insert(conn, name, layout, keys, events, created, values)
        if progress:
            progress(len(data))

    def write_frame(
        self,
        config: RepoConfig,
        view: FeatureView,
        frame: pd.DataFrame,
        keys: list[bytes],
        event_column: str,
        created_column: str | None = None,
        into: str | None = None,
    ) -> int:
        """Write one DataFrame chunk of a view (upsert per contact); returns the row count.

        Args:
            config: the repo config.
            view: the feature view; ``frame`` holds a column per feature of it.
            frame: the rows, aligned with ``keys``.
            keys: serialized entity keys (see :func:`entity_key_bytes`), one per row.
            event_column: the event timestamp column.
            created_column: the created timestamp column, if any.
            into: a staging table of :meth:`begin_rebuild` instead of the live table.
        """
        if len(keys) != len(frame):
            raise ValueError(f"write_frame: {len(keys)} keys for {len(frame)} rows")
        conn = self._connect(config)
        name, layout = self._checked_layout(conn, config, view)
        missing = [f for f, _ in layout if f not in frame.columns]
        if missing:
            raise ValueError(f"write_frame: view {view.name!r} columns missing: {missing}")
        values = frame[[f for f, _ in layout]].to_numpy(dtype="float64", na_value=np.nan)
        events = _column_us(frame[event_column])
        created = _column_us(frame[created_column]) if created_column else [None] * len(frame)
        self._insert(conn, into or name, layout, keys, events, created, values)
        return len(frame)

    # ------------------------------------------------------------------ full reloads
    def begin_rebuild(self, config: RepoConfig, views: Sequence[FeatureView]) -> dict[str, str]:
        """Create an empty staging table per view; returns ``{view name: staging table}``.

        Staging tables of processes that died (a killed build) are dropped first. Fill
        them with :meth:`write_frame` (``into=``), then call :meth:`commit_rebuild`.
        """
        conn = self._connect(config)
        self.drop_stale_staging(config)
        staging = {}
        with conn:
            for view in views:
                table, _ = self._checked_layout(conn, config, view)
                name = f"{table}{_STAGING}{os.getpid()}"
                conn.execute(f'DROP TABLE IF EXISTS "{name}"')
                conn.execute(f'CREATE TABLE "{name}" {_TABLE_SQL} WITHOUT ROWID')
                staging[view.name] = name
        return staging

    def commit_rebuild(
        self, config: RepoConfig, views: Sequence[FeatureView], staging: dict[str, str]
    ) -> None:
        """Swap every staging table in for its view's live table, in one transaction.

        Raises:
            RuntimeError: a view's layout changed since :meth:`begin_rebuild` (an apply
                ran in between); nothing is swapped.
        """
        conn = self._connect(config)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for view in views:
                table, _ = self._checked_layout(conn, config, view)
                conn.execute(f'DROP TABLE IF EXISTS "{table}"')
                conn.execute(f'ALTER TABLE "{staging[view.name]}" RENAME TO "{table}"')
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def drop_staging(self, config: RepoConfig, staging: dict[str, str]) -> None:
        """Drop the staging tables of an abandoned rebuild (:meth:`begin_rebuild`)."""
        conn = self._connect(config)
        with conn:
            for name in staging.values():
                conn.execute(f'DROP TABLE IF EXISTS "{name}"')

    def drop_stale_staging(self, config: RepoConfig) -> list[str]:
        """Drop the staging tables of rebuilds whose process is gone; returns their names."""
        conn = self._connect(config)
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        stale = []
        for name in names:
            match = _STAGING_RE.match(name)
            if match and not pid_alive(int(match.group("pid"))):
                stale.append(name)
        with conn:
            for name in stale:
                conn.execute(f'DROP TABLE IF EXISTS "{name}"')
        return stale

    @staticmethod
    def _insert(conn, name, layout, keys, events, created, values: np.ndarray) -> None:
        ints = [j for j, (_, kind) in enumerate(layout) if kind == "int"]
        if ints:
            big = np.abs(values[:, ints]) >= MAX_EXACT_INT
            if big.any():
                cols = [layout[ints[j]][0] for j in np.flatnonzero(big.any(axis=0))]
                raise ValueError(
                    f"Int64 features {cols}: {int(big.any(axis=1).sum())} rows hold values of "
                    f"2**53 or more, which the packed online store cannot keep exactly"
                )
        blobs = [row.tobytes() for row in np.ascontiguousarray(values)]
        with conn:
            conn.executemany(
                f'INSERT OR REPLACE INTO "{name}" VALUES (?, ?, ?, ?)',
                zip(keys, events, created, blobs, strict=True),
            )

    @staticmethod
    def _fetch(conn: sqlite3.Connection, name: str, keys: list[bytes]) -> dict:
        found: dict[bytes, tuple[int, bytes]] = {}
        # SQLite caps the number of bound parameters: read in slices.
        for start in range(0, len(keys), 900):
            part = keys[start : start + 900]
            rows = conn.execute(
                f'SELECT entity_key, event_ts, vals FROM "{name}" '
                f"WHERE entity_key IN ({','.join('?' * len(part))})",
                part,
            ).fetchall()
            found.update((k, (ts, blob)) for k, ts, blob in rows)
        return found

    def read_columns(
        self, config: RepoConfig, view: FeatureView, keys: list[bytes], features: list[str]
    ) -> np.ndarray:
        """Values of ``features`` for serialized ``keys`` as floats, without protobuf.

        The service's hot path (``serving.online``): what ``online_read`` returns, as a
        (keys x features) float64 matrix with NaN for a null or an unknown key. The
        read is one transaction: never half of a rebuild.

        Raises:
            KeyError: a feature is not in the view.
            OnlineStoreUnavailable: the store cannot be read.
        """
        return self.read_views(config, [(view, features)], keys)[0]

    def _read_matrix(
        self,
        conn: sqlite3.Connection,
        config: RepoConfig,
        view: FeatureView,
        keys: list[bytes],
        features: list[str],
    ) -> np.ndarray:
        name, layout = self._checked_layout(conn, config, view)
        position = {feature: j for j, (feature, _) in enumerate(layout)}
        missing = [f for f in features if f not in position]
        if missing:
            raise KeyError(f"feature view {view.name!r} has no features {missing}")
        found = self._fetch(conn, name, keys)
        cols = np.array([position[f] for f in features], dtype=np.intp)
        out = np.full((len(keys), len(features)), np.nan)
        for i, key in enumerate(keys):
            hit = found.get(key)
            if hit is not None:
                out[i] = np.frombuffer(hit[1], dtype="float64")[cols]
        return out

    def read_views(
        self,
        config: RepoConfig,
        plan: Sequence[tuple[FeatureView, list[str]]],
        keys: list[bytes],
    ) -> list[np.ndarray]:
        """:meth:`read_columns` of several views in one read transaction.

        Every matrix comes from the same state of the store, so a request that needs
        features of several views never mixes two builds, even while
        :meth:`commit_rebuild` swaps the tables. Uses a connection of the calling
        thread (a transaction must not span threads).

        Args:
            config: the repo config.
            plan: ``(view, features)`` pairs.
            keys: serialized entity keys.

        Returns:
            One (keys x features) float64 matrix per pair, NaN for null or unknown.

        Raises:
            KeyError: a feature is not in its view.
            OnlineStoreUnavailable: the store cannot be read.
        """
        try:
            conn = self._thread_connection(config)
            conn.execute("BEGIN")
            try:
                out = [self._read_matrix(conn, config, view, keys, f) for view, f in plan]
            finally:
                conn.execute("COMMIT")
        except sqlite3.DatabaseError as err:
            raise OnlineStoreUnavailable(_unreadable(self.db_path(config), err)) from None
        return out

    def _thread_connection(self, config: RepoConfig) -> sqlite3.Connection:
        local = self.__dict__.setdefault("_local", threading.local())
        path = self.db_path(config)
        if getattr(config.online_store, "read_only", False):
            # A stat per read (microseconds): a deleted file is reported instead of being
            # read from the unlinked inode forever, and a replaced file is reopened.
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise OnlineStoreUnavailable(_missing(path)) from None
            ident = (st.st_dev, st.st_ino)
            conn = getattr(local, "conn", None)
            if conn is None or getattr(local, "path", None) != path or local.ident != ident:
                if conn is not None:
                    conn.close()
                try:
                    conn = readonly_sqlite(Path(path))
                except (FileNotFoundError, sqlite3.Error) as err:
                    raise OnlineStoreUnavailable(_unreadable(path, err)) from None
                conn.isolation_level = None
                local.conn, local.path, local.ident = conn, path, ident
                self._layouts = self._schema_version = None
            return conn
        conn = getattr(local, "conn", None)
        if conn is None or getattr(local, "path", None) != path:
            self._connect(config)  # creates the file, WAL mode and the layout table
            conn = sqlite3.connect(path, isolation_level=None)
            local.conn, local.path, local.ident = conn, path, None
        return conn

    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[tuple[datetime | None, dict[str, ValueProto] | None]]:
        """Feast's read: per entity key, (event time, {feature: ValueProto}) or (None, None)."""
        conn = self._thread_connection(config)
        version = config.entity_key_serialization_version
        keys = [
            serialize_entity_key(k, entity_key_serialization_version=version) for k in entity_keys
        ]
        # One read transaction: the key slices of _fetch all see the same build.
        conn.execute("BEGIN")
        try:
            name, layout = self._checked_layout(conn, config, table)
            found = self._fetch(conn, name, keys)
        finally:
            conn.execute("COMMIT")
        wanted = set(requested_features) if requested_features else None
        columns = [
            (j, feature, kind)
            for j, (feature, kind) in enumerate(layout)
            if wanted is None or feature in wanted
        ]
        out: list[tuple[datetime | None, dict[str, ValueProto] | None]] = []
        for key in keys:
            hit = found.get(key)
            if hit is None:
                out.append((None, None))
                continue
            ts, blob = hit
            vals = np.frombuffer(blob, dtype="float64")
            result = {}
            for j, feature, kind in columns:
                v = vals[j]
                if np.isnan(v):
                    result[feature] = ValueProto()
                elif kind == "int":
                    result[feature] = ValueProto(int64_val=int(v))
                else:
                    result[feature] = ValueProto(double_val=float(v))
            out.append((_utc(ts), result))
        return out


__all__ = [
    "OnlineStoreUnavailable",
    "PackedSqliteOnlineStore",
    "PackedSqliteOnlineStoreConfig",
    "entity_key_bytes",
]
