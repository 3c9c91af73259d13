"""A reader polling the online store during a full reload sees the old or the new build.

The reader uses its own store object (its own SQLite connections), as the service does
in its own process; the writer fills the staging tables chunk by chunk and swaps them in
(``begin_rebuild`` / ``write_frame(into=)`` / ``commit_rebuild``, what
``features.store.materialize_snapshot`` runs).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.types import Float64, Int64

from features.online_store import PackedSqliteOnlineStore, entity_key_bytes

N = 3_000
CHUNK = 300
SOURCE = FileSource(path="unused.parquet", timestamp_field="event_timestamp")
CUSTOMER = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
VIEWS = [
    FeatureView(
        name=name,
        entities=[CUSTOMER],
        schema=[Field(name=f"{name}_n", dtype=Int64), Field(name=f"{name}_x", dtype=Float64)],
        source=SOURCE,
    )
    for name in ("rfm", "activity")
]


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


def _frame(ids: list[str], generation: int) -> pd.DataFrame:
    n = len(ids)
    frame = {
        "customer_id": ids,
        "event_timestamp": [datetime(2026, 1, generation, tzinfo=UTC)] * n,
        "created": [datetime(2026, 1, generation, tzinfo=UTC)] * n,
    }
    for view in VIEWS:
        frame[f"{view.name}_n"] = np.full(n, generation, dtype="int64")
        frame[f"{view.name}_x"] = np.full(n, float(generation))
    return pd.DataFrame(frame)


def _rebuild(store, config, ids, generation, between_chunks=None):
    staging = store.begin_rebuild(config, VIEWS)
    keys = entity_key_bytes("customer_id", ids)
    for start in range(0, len(ids), CHUNK):
        part = _frame(ids[start : start + CHUNK], generation)
        for view in VIEWS:
            store.write_frame(
                config,
                view,
                part,
                keys[start : start + CHUNK],
                "event_timestamp",
                "created",
                into=staging[view.name],
            )
        if between_chunks:
            between_chunks()
    store.commit_rebuild(config, VIEWS, staging)


def test_a_reader_never_sees_a_mix_of_two_builds(config):
    writer = PackedSqliteOnlineStore()
    writer.update(config, [], VIEWS, [], [], partial=False)
    ids = [f"c{i}" for i in range(N)]
    _rebuild(writer, config, ids, generation=1)

    reader = PackedSqliteOnlineStore()
    # Keys spread over every chunk, so a half-done reload would show up in one read.
    sample = ids[::97]
    keys = entity_key_bytes("customer_id", sample)
    plan = [(v, [f"{v.name}_n", f"{v.name}_x"]) for v in VIEWS]
    seen: list[set[float]] = []
    errors: list[BaseException] = []
    stop, polled = threading.Event(), threading.Event()

    def poll() -> None:
        try:
            while not stop.is_set():
                matrices = reader.read_views(config, plan, keys)
                seen.append(set(np.unique(np.concatenate([m.ravel() for m in matrices]))))
                one = reader.read_columns(config, VIEWS[0], keys, ["rfm_x"])
                seen.append(set(np.unique(one)))
                protos = reader.online_read(
                    config,
                    VIEWS[1],
                    [
                        EntityKeyProto(
                            join_keys=["customer_id"], entity_values=[ValueProto(string_val=c)]
                        )
                        for c in sample
                    ],
                )
                seen.append({p["activity_x"].double_val for _, p in protos})
                polled.set()
                time.sleep(0.002)  # leave the writer some of the GIL
        except BaseException as err:  # noqa: BLE001 - reported by the test
            errors.append(err)

    thread = threading.Thread(target=poll)
    thread.start()
    assert polled.wait(30)
    polls_during: list[int] = []
    try:
        for generation in (2, 3):
            _rebuild(
                writer,
                config,
                ids,
                generation,
                between_chunks=lambda: polls_during.append(len(seen)),
            )
        done = len(seen)
        deadline = time.monotonic() + 30
        while len(seen) < done + 6 and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    # The reader really read while the chunks were being written...
    assert polls_during[-1] > polls_during[0]
    # ...and every single read saw one build only.
    assert all(len(values) == 1 for values in seen), [v for v in seen if len(v) != 1][:3]
    assert {next(iter(v)) for v in seen} >= {1.0, 3.0}


def test_a_reload_drops_contacts_not_in_the_snapshot_and_a_dead_rebuild(config):
    store = PackedSqliteOnlineStore()
    store.update(config, [], VIEWS, [], [], partial=False)
    _rebuild(store, config, ["a", "b", "c"], generation=1)
    # A rebuild killed half-way: its staging table (named after a dead pid) remains.
    conn = store._connect(config)
    conn.execute('CREATE TABLE "t_rfm__staging_999999999" (entity_key BLOB PRIMARY KEY)')
    _rebuild(store, config, ["a", "b"], generation=2)
    keys = entity_key_bytes("customer_id", ["a", "b", "c"])
    got = store.read_columns(config, VIEWS[0], keys, ["rfm_n"])
    assert got[:2, 0].tolist() == [2.0, 2.0] and np.isnan(got[2, 0])
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert not [t for t in tables if "__staging_" in t]
