"""A build owns its set of snapshots: committed together, stale ones removed, crash-safe."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from engage.config import load_params
from features import snapshots as snap
from features.aggregates import build_features


def _table(n: int, as_of: str) -> pa.Table:
    return pa.table(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "event_timestamp": pa.array([pd.Timestamp(as_of, tz="UTC")] * n),
            "x": list(range(n)),
        }
    )


def _commit(folder, times):
    build = snap.SnapshotSet(folder)
    for t in times:
        build.write(_table(3, t), pd.Timestamp(t, tz="UTC"), [])
    return build.commit(events="e.parquet")


def test_a_commit_replaces_the_whole_set(tmp_path):
    _commit(tmp_path, ["2025-01-01", "2025-01-08", "2025-01-15"])
    _commit(tmp_path, ["2025-01-15", "2025-01-22"])
    listed = [s.as_of.strftime("%Y-%m-%d") for s in snap.list_snapshots(tmp_path)]
    assert listed == ["2025-01-15", "2025-01-22"]
    files = sorted(p.name for p in snap.snapshot_dir(tmp_path).iterdir())
    assert files == ["as_of=20250115T000000.parquet", "as_of=20250122T000000.parquet"]
    manifest = snap.read_manifest(tmp_path)
    assert manifest["as_of"] == ["2025-01-15T00:00:00+00:00", "2025-01-22T00:00:00+00:00"]
    assert manifest["rows"]["2025-01-22T00:00:00+00:00"] == 3


def test_a_stray_file_is_not_a_snapshot(tmp_path):
    _commit(tmp_path, ["2025-01-01"])
    stray = snap.snapshot_path(tmp_path, "2024-06-01")
    _table(2, "2024-06-01").to_pandas().to_parquet(stray)
    assert [s.path for s in snap.list_snapshots(tmp_path)] == [
        snap.snapshot_path(tmp_path, "2025-01-01")
    ]
    # ...and the next build removes it from the folder Feast reads.
    _commit(tmp_path, ["2025-01-08"])
    assert not stray.exists()


def test_an_abandoned_build_leaves_the_old_set(tmp_path):
    _commit(tmp_path, ["2025-01-01"])
    build = snap.SnapshotSet(tmp_path)
    build.write(_table(5, "2025-02-01"), pd.Timestamp("2025-02-01", tz="UTC"), [])
    build.discard()
    assert [s.as_of.month for s in snap.list_snapshots(tmp_path)] == [1]
    assert sorted(p.name for p in snap.snapshot_dir(tmp_path).iterdir()) == [
        "as_of=20250101T000000.parquet"
    ]


def test_a_commit_cut_short_is_finished_by_the_next_lock(tmp_path, monkeypatch):
    _commit(tmp_path, ["2025-01-01", "2025-01-08"])

    class Crash(BaseException):
        pass

    def crash(name):
        if name == "features:mid_commit":
            raise Crash

    monkeypatch.setattr("engage.journal.fault_point", crash)
    with pytest.raises(Crash):
        _commit(tmp_path, ["2025-02-01", "2025-02-08"])
    monkeypatch.undo()
    assert snap.journal_path(tmp_path).exists()
    # A reader's shared lock first finishes the commit under the exclusive one.
    with snap.features_lock(tmp_path, timeout=5, shared=True):
        listed = [s.as_of.strftime("%m-%d") for s in snap.list_snapshots(tmp_path)]
    assert listed == ["02-01", "02-08"] and not snap.journal_path(tmp_path).exists()
    assert len(list(snap.snapshot_dir(tmp_path).iterdir())) == 2


def test_a_rebuild_on_replaced_events_drops_the_old_snapshots(tmp_path):
    """The probe: after ingest --replace, the old data's snapshots stayed and were read."""
    params = load_params()
    times = pd.date_range("2025-01-01", periods=40, freq="D", tz="UTC")
    for start, name in (("2025-01-01", "old"), ("2025-03-01", "new")):
        events = pd.DataFrame(
            {
                "event_id": [f"{name}{i}" for i in range(40)],
                "customer_id": [f"{name}c{i % 4}" for i in range(40)],
                "event_time": (times + (pd.Timestamp(start, tz="UTC") - times[0])).astype(
                    "datetime64[us, UTC]"
                ),
                "event_type": "web_visit",
                "value": 10.0,
                "channel": None,
                "campaign_id": None,
            }
        )
        events.to_parquet(tmp_path / "events.parquet")
        summary = build_features(params, tmp_path / "events.parquet", None, tmp_path)
    listed = snap.list_snapshots(tmp_path)
    assert [s.as_of for s in listed] == summary.snapshots
    assert sorted(p.name for p in snap.snapshot_dir(tmp_path).glob("*.parquet")) == sorted(
        s.path.name for s in listed
    )
    ids = set(snap.read_snapshots(tmp_path)["customer_id"])
    assert ids == {f"newc{i}" for i in range(4)}
