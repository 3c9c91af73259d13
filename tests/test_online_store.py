"""The packed SQLite online store: both write paths, nulls, integers, schema changes.

The parity of the online store with the offline snapshots on a real build is checked in
test_feast_store.py; here the store is driven directly with small hand-made rows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.types import Float64, Int64, String

from features.online_store import PackedSqliteOnlineStore, entity_key_bytes

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def config(tmp_path):
    return RepoConfig(
        project="t",
        provider="local",
        registry=str(tmp_path / "registry.db"),
        online_store={
            "type": "features.online_store.PackedSqliteOnlineStore",
            "path": str(tmp_path / "online.db"),
        },
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
    )


def _view(*fields: Field, name: str = "v") -> FeatureView:
    source = FileSource(path="unused.parquet", timestamp_field="event_timestamp")
    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
    return FeatureView(name=name, entities=[customer], schema=list(fields), source=source)


def _key(cid: str) -> EntityKeyProto:
    return EntityKeyProto(join_keys=["customer_id"], entity_values=[ValueProto(string_val=cid)])


def _read(store, config, view, ids, features=None):
    return store.online_read(config, view, [_key(i) for i in ids], features)


def _applied(config, view) -> PackedSqliteOnlineStore:
    store = PackedSqliteOnlineStore()
    store.update(config, [], [view], [], [], partial=False)
    return store


VIEW = _view(Field(name="n", dtype=Int64), Field(name="x", dtype=Float64))


def test_frame_write_reads_back_typed_values_nulls_and_times(config):
    store = _applied(config, VIEW)
    frame = pd.DataFrame(
        {
            "customer_id": ["a", "b"],
            "event_timestamp": [T0, T0 + timedelta(days=1)],
            "created": [T0, T0],
            "n": pd.array([3, None], dtype="Int64"),
            "x": [0.25, np.nan],
        }
    )
    keys = entity_key_bytes("customer_id", frame["customer_id"])
    assert store.write_frame(config, VIEW, frame, keys, "event_timestamp", "created") == 2

    (ts_a, a), (ts_b, b), (ts_c, c) = _read(store, config, VIEW, ["a", "b", "c"])
    assert a["n"] == ValueProto(int64_val=3) and a["x"] == ValueProto(double_val=0.25)
    assert b["n"].WhichOneof("val") is None and b["x"].WhichOneof("val") is None
    assert (ts_a, ts_b) == (T0, T0 + timedelta(days=1))
    assert (ts_c, c) == (None, None)
    # Only the features asked for are built.
    assert set(_read(store, config, VIEW, ["a"], ["x"])[0][1]) == {"x"}


def test_protobuf_write_path_equals_the_frame_path_and_upserts(config):
    store = _applied(config, VIEW)
    rows = [
        (_key("a"), {"n": ValueProto(int64_val=7), "x": ValueProto(double_val=1.5)}, T0, T0),
        (_key("b"), {"n": ValueProto()}, T0, None),  # x absent: stored as null
    ]
    done = []
    store.online_write_batch(config, VIEW, rows, progress=done.append)
    assert done == [2]
    (_, a), (_, b) = _read(store, config, VIEW, ["a", "b"])
    assert a == {"n": ValueProto(int64_val=7), "x": ValueProto(double_val=1.5)}
    assert b == {"n": ValueProto(), "x": ValueProto()}

    # A second write of the same key replaces its row (one row per contact and view).
    later = T0 + timedelta(days=7)
    store.online_write_batch(
        config, VIEW, [(_key("a"), {"n": ValueProto(int64_val=8)}, later, later)], None
    )
    ts, a = _read(store, config, VIEW, ["a"])[0]
    assert ts == later and a["n"].int64_val == 8 and a["x"].WhichOneof("val") is None
    conn = store._connect(config)
    assert conn.execute('SELECT COUNT(*) FROM "t_v"').fetchone()[0] == 2


def test_reads_more_keys_than_sqlite_binds_at_once(config):
    store = _applied(config, VIEW)
    ids = [f"c{i}" for i in range(2500)]
    frame = pd.DataFrame(
        {"customer_id": ids, "ts": T0, "n": np.arange(2500), "x": np.arange(2500) / 10}
    )
    store.write_frame(config, VIEW, frame, entity_key_bytes("customer_id", ids), "ts")
    got = _read(store, config, VIEW, ids[::-1])
    assert [r[1]["n"].int64_val for r in got] == list(range(2499, -1, -1))


def test_integers_beyond_float64_precision_are_refused_with_the_field_and_count(config):
    store = _applied(config, VIEW)
    frame = pd.DataFrame(
        {"customer_id": ["a", "b", "c"], "ts": T0, "n": [1, 2**53, -(2**60)], "x": 0.0}
    )
    keys = entity_key_bytes("customer_id", ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"Int64 features \['n'\]: 2 rows"):
        store.write_frame(config, VIEW, frame, keys, "ts")
    assert _read(store, config, VIEW, ["a"]) == [(None, None)]  # nothing half-written


def test_non_numeric_features_are_refused_at_apply(config):
    view = _view(Field(name="city", dtype=String))
    with pytest.raises(TypeError, match="feature 'city' is String"):
        _applied(config, view)


def test_a_changed_feature_list_recreates_the_table_and_stale_reads_fail(config):
    store = _applied(config, VIEW)
    frame = pd.DataFrame({"customer_id": ["a"], "ts": T0, "n": [1], "x": [2.0]})
    store.write_frame(config, VIEW, frame, entity_key_bytes("customer_id", ["a"]), "ts")
    wider = _view(*VIEW.features, Field(name="y", dtype=Float64))

    # Reading with the new definition before apply would misplace packed values.
    with pytest.raises(RuntimeError, match="changed since the online table was created"):
        _read(store, config, wider, ["a"])
    store.update(config, [], [wider], [], [], partial=False)
    assert _read(store, config, wider, ["a"]) == [(None, None)]  # old values dropped
    with pytest.raises(RuntimeError, match="changed since the online table was created"):
        _read(store, config, VIEW, ["a"])

    store.teardown(config, [wider], [])
    with pytest.raises(RuntimeError, match="no table for feature view 'v'"):
        _read(store, config, wider, ["a"])


def test_write_frame_checks_its_inputs(config):
    store = _applied(config, VIEW)
    frame = pd.DataFrame({"customer_id": ["a"], "ts": T0, "n": [1]})
    with pytest.raises(ValueError, match="1 keys for 2 rows"):
        store.write_frame(config, VIEW, pd.concat([frame, frame]), [b"k"], "ts")
    with pytest.raises(ValueError, match=r"columns missing: \['x'\]"):
        store.write_frame(config, VIEW, frame, [b"k"], "ts")


def test_a_table_left_by_feasts_stock_sqlite_store_is_replaced_on_apply(config, tmp_path):
    # A data dir from before the packed store: same file, same table name, Feast's layout.
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    stock_config = RepoConfig(
        project="t",
        provider="local",
        registry=str(tmp_path / "registry.db"),
        online_store={"type": "sqlite", "path": config.online_store.path},
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
    )
    stock = SqliteOnlineStore()
    stock.update(stock_config, [], [VIEW], [], [], partial=False)
    stock.online_write_batch(
        stock_config, VIEW, [(_key("a"), {"n": ValueProto(int64_val=1)}, T0, T0)], None
    )
    stock._conn.close()

    store = _applied(config, VIEW)  # what `feast apply` does after the upgrade
    assert _read(store, config, VIEW, ["a"]) == [(None, None)]  # old rows: rematerialize
    frame = pd.DataFrame({"customer_id": ["a"], "ts": T0, "n": [2], "x": [0.5]})
    store.write_frame(config, VIEW, frame, entity_key_bytes("customer_id", ["a"]), "ts")
    assert _read(store, config, VIEW, ["a"])[0][1]["n"].int64_val == 2


@pytest.mark.parametrize("unit", ["ns", "us", "ms"])
def test_frame_times_are_stored_in_microseconds_whatever_the_columns_unit(config, unit):
    # A snapshot read from Parquet gives datetime64[us]: its int64 is already µs.
    store = _applied(config, VIEW)
    when = pd.Timestamp("2025-05-01 12:34:56.789", tz="UTC")
    frame = pd.DataFrame(
        {
            "customer_id": ["a"],
            "event_timestamp": pd.Series([when]).astype(f"datetime64[{unit}, UTC]"),
            "created": pd.Series([when]).astype(f"datetime64[{unit}, UTC]"),
            "n": [1],
            "x": [0.5],
        }
    )
    store.write_frame(
        config, VIEW, frame, entity_key_bytes("customer_id", ["a"]), "event_timestamp", "created"
    )
    [(ts, _)] = _read(store, config, VIEW, ["a"])
    assert ts == when.to_pydatetime()
