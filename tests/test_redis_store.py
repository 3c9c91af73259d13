"""Feast's Redis online store read and bulk-written directly (features/redis_store.py).

Against a real redis-server on a loopback port (tests/conftest.py:redis_server): reads
from Redis equal reads from the packed SQLite store on 1,000 contacts, and Feast's own
Redis code reads what the bulk path wrote (and the direct reader reads what Feast wrote).
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from feast import FileSource
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.types import Int64
from google.protobuf.timestamp_pb2 import Timestamp

from engage.config import load_params
from features.catalog import CREATED, ENTITY_KEY, TIMESTAMP
from features.feast_objects import customer_entity, feature_views
from features.online_store import (
    OnlineStoreUnavailable,
    PackedSqliteOnlineStore,
    entity_key_bytes,
)

redis_store = pytest.importorskip("features.redis_store", reason="feast/redis missing")
T0 = datetime(2026, 3, 2, tzinfo=UTC)


# ----------------------------------------------------------- encoding (no server needed)


@pytest.mark.parametrize("v", [0, 1, 127, 128, 300, -1, -(2**40), 2**53 - 1, -(2**53 - 1)])
def test_int_values_encode_like_protobuf_and_decode_back(v):
    blob = redis_store.encode_value(float(v), "int")
    assert blob == ValueProto(int64_val=v).SerializeToString()
    assert redis_store._decode(blob) == v


@pytest.mark.parametrize("v", [0.0, -0.0, 0.25, -3.5, 1e300, 5e-324, float("inf")])
def test_float_values_encode_like_protobuf_and_decode_back(v):
    blob = redis_store.encode_value(v, "float")
    assert blob == ValueProto(double_val=v).SerializeToString()
    got = redis_store._decode(blob)
    assert got == v and np.signbit(got) == np.signbit(v)


def test_a_null_is_an_empty_value_and_a_missing_field_reads_as_nan():
    assert redis_store.encode_value(np.nan, "float") == ValueProto().SerializeToString() == b""
    assert np.isnan(redis_store._decode(b"")) and np.isnan(redis_store._decode(None))


@pytest.mark.parametrize(
    "when",
    [
        T0,
        datetime(1970, 1, 1, tzinfo=UTC),
        pd.Timestamp("1969-12-31 23:59:59.5", tz="UTC"),
        pd.Timestamp("2026-03-02 10:11:12.000345", tz="UTC"),
    ],
)
def test_timestamps_encode_like_protobuf(when):
    ts = Timestamp()
    ts.FromDatetime(pd.Timestamp(when).to_pydatetime())
    us = pd.Timestamp(when).value // 1000
    assert redis_store.encode_timestamp(us) == ts.SerializeToString()


# ---------------------------------------------------------------- against a redis-server


def _config(tmp_path, connection: str, project: str) -> RepoConfig:
    return RepoConfig(
        project=project,
        provider="local",
        registry=str(tmp_path / f"registry_{project}.db"),
        online_store={"type": "redis", "connection_string": connection},
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
    )


def _sqlite_config(tmp_path) -> RepoConfig:
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


def _views():
    source = FileSource(path="unused.parquet", timestamp_field=TIMESTAMP)
    return feature_views(load_params(), customer_entity(), source)


def _snapshot(views, n: int, seed: int = 7) -> pd.DataFrame:
    """A snapshot of ``n`` contacts with every catalog feature: nulls, zeros, extremes."""
    rng = np.random.default_rng(seed)
    frame = {
        ENTITY_KEY: [f"c{i:05d}" for i in range(n)],
        TIMESTAMP: pd.Series([T0] * n).astype("datetime64[us, UTC]"),
        CREATED: pd.Series([T0] * n).astype("datetime64[us, UTC]"),
    }
    for view in views:
        for f in view.features:
            if f.dtype == Int64:
                col = rng.integers(0, 50, n).astype("float64")
                col[:3] = (0, 2**53 - 1, 1)
            else:
                col = rng.normal(10, 30, n)
                col[rng.random(n) < 0.2] = np.nan  # nulls
                col[:4] = (0.0, -0.0, 1e300, 5e-324)
            frame[f.name] = col
    return pd.DataFrame(frame)


@pytest.fixture
def flushed(redis_server):
    import redis

    host, port = redis_server.split(":")
    client = redis.Redis(host=host, port=int(port))
    client.flushdb()
    yield client
    client.close()


def test_reads_from_redis_equal_reads_from_the_packed_sqlite_store(tmp_path, redis_server, flushed):
    views = _views()
    frame = _snapshot(views, 1000)
    keys = entity_key_bytes(ENTITY_KEY, frame[ENTITY_KEY])
    sqlite_cfg, redis_cfg = _sqlite_config(tmp_path), _config(tmp_path, redis_server, "engage")
    packed = PackedSqliteOnlineStore()
    packed.update(sqlite_cfg, [], list(views), [], [], partial=False)
    for view in views:
        packed.write_frame(sqlite_cfg, view, frame, keys, TIMESTAMP, CREATED)
        assert redis_store.write_frame(flushed, redis_cfg, view, frame, keys, TIMESTAMP) == 1000
    assert flushed.dbsize() == 1000  # one hash per contact, every view in it

    # Every feature of every view, plus ids that are in neither store.
    ask = [*frame[ENTITY_KEY], "nobody", "c99999"]
    ask_keys = entity_key_bytes(ENTITY_KEY, ask)
    plan = [(v, [f.name for f in v.features]) for v in views]
    reader = redis_store.RedisDirectReader(redis_cfg)
    got = reader.read_views(redis_cfg, plan, ask_keys)
    want = packed.read_views(sqlite_cfg, plan, ask_keys)
    for (view, names), g, w in zip(plan, got, want, strict=True):
        assert g.shape == w.shape == (1002, len(names)), view.name
        np.testing.assert_array_equal(g, w, err_msg=view.name)  # NaN == NaN here
        np.testing.assert_array_equal(np.signbit(g), np.signbit(w), err_msg=view.name)
    assert np.isnan(got[0][-2:]).all()  # unknown ids: all null
    assert np.isnan(got[0]).any() or np.isnan(got[1]).any()  # nulls were exercised
    # A subset of features in another order, one view.
    view, names = plan[1][0], plan[1][1][::-3]
    np.testing.assert_array_equal(
        reader.read_columns(redis_cfg, view, ask_keys[:50], names),
        packed.read_columns(sqlite_cfg, view, ask_keys[:50], names),
    )
    reader.probe(redis_cfg, views)


def test_feasts_own_redis_code_reads_the_bulk_write_and_vice_versa(tmp_path, redis_server, flushed):
    from feast.infra.online_stores.redis import RedisOnlineStore

    views = _views()
    frame = _snapshot(views, 40, seed=3)
    ids = list(frame[ENTITY_KEY])
    keys = entity_key_bytes(ENTITY_KEY, ids)
    bulk_cfg = _config(tmp_path, redis_server, "bulk")
    stock_cfg = _config(tmp_path, redis_server, "stock")
    protos = [
        EntityKeyProto(join_keys=[ENTITY_KEY], entity_values=[ValueProto(string_val=i)])
        for i in ids
    ]
    stock = RedisOnlineStore()
    for view in views:
        redis_store.write_frame(flushed, bulk_cfg, view, frame, keys, TIMESTAMP)
        # Feast's stock path writes the same rows under another project.
        rows = []
        for i, key in enumerate(protos):
            values = {}
            for f in view.features:
                v = frame[f.name].iat[i]
                if np.isnan(v):
                    values[f.name] = ValueProto()
                elif f.dtype == Int64:
                    values[f.name] = ValueProto(int64_val=int(v))
                else:
                    values[f.name] = ValueProto(double_val=float(v))
            rows.append((key, values, T0, T0))
        stock.online_write_batch(stock_cfg, view, rows, None)

    # Byte for byte the same hash, whichever path wrote it.
    project_bulk, project_stock = b"bulk", b"stock"
    for key in keys[:5]:
        assert flushed.hgetall(key + project_bulk) == flushed.hgetall(key + project_stock)

    for view in views:
        names = [f.name for f in view.features]
        read = RedisOnlineStore().online_read(bulk_cfg, view, protos, list(names))
        for i, (ts, values) in enumerate(read):
            assert ts == T0
            for name in names:
                proto = values[name]
                kind = proto.WhichOneof("val")
                v = frame[name].iat[i]
                assert (np.nan if kind is None else getattr(proto, kind)) == v or (
                    kind is None and np.isnan(v)
                ), (view.name, name, i)
        plan = [(view, names)]
        direct = redis_store.RedisDirectReader(stock_cfg).read_views(stock_cfg, plan, keys)[0]
        np.testing.assert_array_equal(direct, frame[names].to_numpy(dtype="float64"))


def test_errors_name_the_problem(tmp_path, redis_server, flushed):
    views = _views()
    cfg = _config(tmp_path, redis_server, "errs")
    frame = _snapshot(views, 5)
    with pytest.raises(ValueError, match=r"write_frame: 2 keys for 5 rows"):
        redis_store.write_frame(flushed, cfg, views[0], frame, [b"a", b"b"], TIMESTAMP)
    bad = frame.copy()
    name = next(f.name for f in views[0].features if f.dtype == Int64)
    bad.loc[3, name] = 2.0**53
    keys = entity_key_bytes(ENTITY_KEY, frame[ENTITY_KEY])
    with pytest.raises(ValueError, match=rf"Int64 features \['{name}'\]: 1 rows hold values"):
        redis_store.write_frame(flushed, cfg, views[0], bad, keys, TIMESTAMP)
    reader = redis_store.RedisDirectReader(cfg)
    with pytest.raises(KeyError, match=r"has no features \['no_such_feature'\]"):
        reader.read_views(cfg, [(views[0], ["no_such_feature"])], keys)
    # Nothing listens on a freshly closed port: unavailable, with the reason.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    down = _config(tmp_path, dead, "down")
    with pytest.raises(OnlineStoreUnavailable, match=r"Redis online store cannot be read"):
        redis_store.RedisDirectReader(down).read_views(down, [(views[0], [name])], keys)
    with pytest.raises(OnlineStoreUnavailable, match=r"Redis online store cannot be reached"):
        redis_store.RedisDirectReader(down).probe(down, views)
    with pytest.raises(OnlineStoreUnavailable, match=r"needs online_store type redis"):
        redis_store.client_for(_sqlite_config(tmp_path))


def test_materialize_into_redis_serves_what_the_packed_store_serves(
    tmp_path, redis_server, flushed
):
    """feast.online_store: redis end to end: build, apply, bulk materialize, SDK and direct."""
    from engage.config import resolve_paths
    from engage.data.simulate import simulate_to_parquet
    from features.aggregates import build_features
    from features.store import apply_repo, get_store, materialize_snapshot, online_features
    from serving.online import _redis_reader

    small = ("simulate.customers=300", "simulate.days=90")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGAGE_DATA_DIR", str(tmp_path / "data"))
        params = load_params(overrides=small)
        paths = resolve_paths(params)
        simulate_to_parquet(params.simulate, params.data, paths.events, paths.customers)
        summary = build_features(params, paths.events, paths.customers, paths.features_dir)
        latest = max(summary.snapshots)
        apply_repo(paths)
        packed = get_store(paths)
        n = materialize_snapshot(packed, latest)

        on_redis = (
            *small,
            "feast.online_store=redis",
            f"feast.redis_connection_string={redis_server}",
        )
        rpaths = resolve_paths(load_params(overrides=on_redis))
        apply_repo(rpaths)
        rstore = get_store(rpaths)
        assert rstore.config.online_store.type == "redis"
        assert materialize_snapshot(rstore, latest) == n
        assert flushed.dbsize() == n

        snap = pd.read_parquet(paths.features_dir / "customer_features")
        ids = [*sorted(snap[ENTITY_KEY].unique())[:150], "nobody"]
        for service in [s.name for s in packed.list_feature_services()]:
            a = online_features(packed, ids, service).set_index(ENTITY_KEY)
            b = online_features(rstore, ids, service).set_index(ENTITY_KEY)
            assert list(a.columns) == list(b.columns)
            np.testing.assert_array_equal(
                a.apply(pd.to_numeric).astype(float).to_numpy(),
                b.apply(pd.to_numeric).astype(float).to_numpy(),
                err_msg=service,
            )
        # The service's direct read (serving/online.py) picks the Redis reader.
        reader = _redis_reader(rstore.config)
        assert isinstance(reader, redis_store.RedisDirectReader)
        assert _redis_reader(packed.config) is None
        views = [v for v in rstore.list_feature_views() if v.online]
        plan = [(v, [f.name for f in v.features]) for v in views]
        keys = entity_key_bytes(ENTITY_KEY, ids)
        packed_online = packed._get_provider().online_store
        for got, want in zip(
            reader.read_views(rstore.config, plan, keys),
            packed_online.read_views(packed.config, plan, keys),
            strict=True,
        ):
            np.testing.assert_array_equal(got, want)


def test_the_vectorised_decode_equals_the_per_value_decode():
    ints = [0, 1, 127, 128, 300, -1, -(2**40), 2**53 - 1, -(2**53 - 1)]
    floats = [0.0, -0.0, 0.25, -3.5, 1e300, 5e-324, float("inf"), float("-inf")]
    blobs = [redis_store.encode_value(float(v), "int") for v in ints]
    blobs += [redis_store.encode_value(v, "float") for v in floats]
    # A null, a missing field, and another protobuf type (decoded by protobuf).
    blobs += [b"", None, ValueProto(int32_val=7).SerializeToString()]
    blobs = blobs[::-1] + blobs  # every neighbour of every kind
    got = redis_store.decode_many(blobs)
    want = np.array([redis_store._decode(b) for b in blobs])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
    assert got[len(blobs) // 2 :][:9].tolist() == ints
    assert redis_store.decode_many([]).shape == (0,)


def test_the_service_reads_redis_directly_with_the_same_answers(pipeline, redis_server, flushed):
    """The online predictor on Redis: the direct reader, same lookups and scores as SQLite."""
    from engage.config import resolve_paths
    from features.store import materialize_snapshot, open_store_read_only
    from serving.champions import load_champions
    from serving.online import OnlinePredictor
    from tests.conftest import SMALL

    on_redis = (*SMALL, "feast.online_store=redis", f"feast.redis_connection_string={redis_server}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGAGE_DATA_DIR", str(pipeline.data_dir))
        rparams = load_params(overrides=on_redis)
        rpaths = resolve_paths(rparams)
    # Read-only: the shared pipeline's registry and files are not touched.
    rstore = open_store_read_only(rpaths)
    assert materialize_snapshot(rstore, max(pipeline.features.snapshots)) > 1000

    champions = load_champions(pipeline.paths, pipeline.params)
    packed = OnlinePredictor(pipeline.paths, pipeline.params, champions)
    served = OnlinePredictor(rpaths, rparams, champions, store=rstore)
    assert isinstance(served._direct[0], redis_store.RedisDirectReader)
    served.probe()

    snap = pd.read_parquet(pipeline.paths.features_dir / "customer_features")
    ids = [*sorted(snap[ENTITY_KEY].unique())[::25], "nobody"]
    (xa, ta), (xb, tb) = packed.lookup(ids), served.lookup(ids)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ta, tb)
    assert (
        packed.predict_ids(ids, explain=True).records()
        == served.predict_ids(ids, explain=True).records()
    )


def test_the_bulk_write_can_set_a_key_ttl_and_surfaces_server_errors(
    tmp_path, redis_server, flushed
):
    views = _views()
    cfg = _config(tmp_path, redis_server, "ttl")
    frame = _snapshot(views, 5)
    keys = entity_key_bytes(ENTITY_KEY, frame[ENTITY_KEY])
    redis_store.write_frame(flushed, cfg, views[0], frame, keys, TIMESTAMP, ttl_seconds=100)
    ttls = [flushed.ttl(k) for k in redis_store.redis_keys(cfg, keys)]
    assert all(0 < t <= 100 for t in ttls), ttls
    # A key holding another type: Redis refuses the HSET, the error reaches the caller,
    # and the connection stays usable (every reply was read).
    flushed.set(redis_store.redis_keys(cfg, keys[:1])[0], b"not a hash")
    with pytest.raises(Exception, match="WRONGTYPE"):
        redis_store.write_frame(flushed, cfg, views[0], frame, keys, TIMESTAMP)
    assert flushed.ping()
    reader = redis_store.RedisDirectReader(cfg)
    with pytest.raises(OnlineStoreUnavailable, match=r"1 of 5 contacts answered an error"):
        reader.read_views(cfg, [(views[0], [views[0].features[0].name])], keys)
    assert flushed.hlen(redis_store.redis_keys(cfg, keys[1:2])[0]) == len(views[0].features) + 1
