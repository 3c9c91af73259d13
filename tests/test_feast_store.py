"""The Feast store over the snapshots: point-in-time retrieval, TTL, online/offline parity.

One small simulated data set (1,200 contacts x 150 days, weekly snapshots) is built into a
temporary ``ENGAGE_DATA_DIR`` once for the module, applied to Feast and its latest
snapshot materialized. Every retrieval is checked against the snapshot files read
directly, with pandas as the reference for the point-in-time join.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engage.config import Params, Paths, load_params, resolve_paths
from engage.data.simulate import simulate_to_parquet
from features.aggregates import FeatureBuilder, build_features
from features.catalog import ENTITY_KEY, SNAPSHOT_TIME, TIMESTAMP, VIEWS, feature_names
from features.reference import reference_snapshot
from features.snapshots import read_snapshots
from features.store import (
    apply_repo,
    get_store,
    historical_features,
    materialize_snapshot,
    online_features,
)

CUSTOMERS, DAYS = 1200, 150
SMALL = (f"simulate.customers={CUSTOMERS}", f"simulate.days={DAYS}")
US = pd.Timedelta(microseconds=1)


@dataclass
class Built:
    params: Params
    paths: Paths
    snapshots: list[pd.Timestamp]

    @property
    def store(self):
        return get_store(self.paths)

    def features(self) -> pd.DataFrame:
        return read_snapshots(self.paths.features_dir)


def _build_apply_materialize(params: Params, paths: Paths) -> list[pd.Timestamp]:
    summary = build_features(params, paths.events, paths.customers, paths.features_dir)
    apply_repo(paths)
    materialize_snapshot(get_store(paths), max(summary.snapshots))
    return summary.snapshots


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("feast_store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGAGE_DATA_DIR", str(data_dir))
        params = load_params(overrides=SMALL)
        paths = resolve_paths(params)
        simulate_to_parquet(params.simulate, params.data, paths.events, paths.customers)
        snapshots = _build_apply_materialize(params, paths)
        yield Built(params, paths, sorted(snapshots))


def _numeric(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    # Feast returns an int feature as float (or object) once a row is null: compare values.
    return frame[names].apply(pd.to_numeric, errors="raise").astype(float).to_numpy()


def _assert_same_features(got: pd.DataFrame, want: pd.DataFrame, names: list[str]) -> None:
    assert len(got) == len(want)
    a, b = _numeric(got, names), _numeric(want, names)
    for j, name in enumerate(names):
        # assert_allclose counts NaN == NaN: a null must stay null and nothing else.
        np.testing.assert_allclose(a[:, j], b[:, j], rtol=1e-12, atol=0, err_msg=name)


def _point_in_time_reference(
    entity: pd.DataFrame, snapshots: pd.DataFrame, ttl: pd.Timedelta
) -> pd.DataFrame:
    """Per entity row: the customer's latest snapshot at or before its time, within TTL."""
    left = entity.assign(_row=np.arange(len(entity)))
    left[TIMESTAMP] = pd.to_datetime(left[TIMESTAMP], utc=True).astype("datetime64[us, UTC]")
    right = snapshots.rename(columns={TIMESTAMP: "_snap_time"}).sort_values("_snap_time")
    right["_snap_time"] = right["_snap_time"].astype("datetime64[us, UTC]")
    merged = pd.merge_asof(
        left.sort_values(TIMESTAMP),
        right,
        left_on=TIMESTAMP,
        right_on="_snap_time",
        by=ENTITY_KEY,
        direction="backward",  # at or before: never a later snapshot
        allow_exact_matches=True,
    )
    # Feast serves a snapshot while snapshot time + TTL >= entity time (inclusive).
    stale = merged[TIMESTAMP] - merged["_snap_time"] > ttl
    names = [c for c in snapshots.columns if c not in (ENTITY_KEY, TIMESTAMP)]
    merged.loc[stale, names] = np.nan
    return merged.sort_values("_row").reset_index(drop=True)


def _entity_rows(built: Built, n_customers: int, seed: int) -> pd.DataFrame:
    """Customers at random times, at snapshots, a µs around them, before and after all."""
    rng = np.random.default_rng(seed)
    snaps = built.snapshots
    ids = sorted(built.features()[ENTITY_KEY].unique())
    first, last = snaps[0], snaps[-1]
    span_us = int((last - first) / US)
    times = [first + US * int(u) for u in rng.integers(0, span_us, 6)]
    times += [snaps[1], snaps[len(snaps) // 2], last]  # exactly at a snapshot
    times += [snaps[2] - US, snaps[2] + US]  # a microsecond either side of one
    times += [first - pd.Timedelta(days=3), first - US]  # before any snapshot
    times += [last + US, last + pd.Timedelta(days=9)]  # after the last one
    customers = rng.choice(ids, size=n_customers, replace=False)
    rows = [(c, t) for c in customers for t in times]
    order = rng.permutation(len(rows))  # the retrieval must keep any input order
    frame = pd.DataFrame([rows[i] for i in order], columns=[ENTITY_KEY, TIMESTAMP])
    frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True)
    return frame


def test_historical_features_are_the_latest_snapshot_at_or_before_each_time(built):
    entity = _entity_rows(built, n_customers=120, seed=1)
    got = historical_features(built.store, entity, "churn_v1")
    names = feature_names(built.params)
    ttl = pd.Timedelta(days=built.params.features.ttl_days)
    want = _point_in_time_reference(entity, built.features(), ttl)

    assert list(got[ENTITY_KEY]) == list(entity[ENTITY_KEY])
    assert (got[TIMESTAMP] == entity[TIMESTAMP]).all()
    _assert_same_features(got, want, names)
    # Never a snapshot from after the entity time, and every row with one got it.
    served = got[SNAPSHOT_TIME].notna()
    assert (
        got.loc[served, SNAPSHOT_TIME] <= entity.loc[served, TIMESTAMP].map(pd.Timestamp.timestamp)
    ).all()
    before_all = entity[TIMESTAMP] < built.snapshots[0]
    assert before_all.any() and got.loc[before_all, names].isna().all().all()
    # A row exactly at a snapshot gets that snapshot; a µs earlier, the one before.
    at = entity[TIMESTAMP] == built.snapshots[2]
    just_before = entity[TIMESTAMP] == built.snapshots[2] - US
    assert (got.loc[at & served, SNAPSHOT_TIME] == built.snapshots[2].timestamp()).all()
    assert (got.loc[just_before & served, SNAPSHOT_TIME] == built.snapshots[1].timestamp()).all()


def test_rows_older_than_the_ttl_get_nulls(built):
    ttl_days = 10
    params = load_params(overrides=(*SMALL, f"features.ttl_days={ttl_days}"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGAGE_DATA_DIR", str(built.paths.data_dir))
        paths = resolve_paths(params)
        apply_repo(paths)  # the views now carry the 10-day TTL
        try:
            store = get_store(paths)
            assert store.get_feature_view("customer_rfm").ttl == pd.Timedelta(days=ttl_days)
            last = built.snapshots[-1]
            entity = _entity_rows(built, n_customers=60, seed=2)
            # Exactly at the TTL boundary (still served) and just past it (null).
            extra = entity[ENTITY_KEY].drop_duplicates().head(20)
            edge = pd.DataFrame(
                {
                    ENTITY_KEY: np.repeat(extra.to_numpy(), 3),
                    TIMESTAMP: [
                        last + pd.Timedelta(days=d) + k
                        for _ in range(len(extra))
                        for d, k in ((ttl_days, 0 * US), (ttl_days, US), (30, 0 * US))
                    ],
                }
            )
            entity = pd.concat([entity, edge], ignore_index=True)
            entity[TIMESTAMP] = pd.to_datetime(entity[TIMESTAMP], utc=True)
            got = historical_features(store, entity, "churn_v1")
            want = _point_in_time_reference(entity, built.features(), pd.Timedelta(days=ttl_days))
            _assert_same_features(got, want, feature_names(params))
            late = entity[TIMESTAMP] > last + pd.Timedelta(days=ttl_days)
            assert late.sum() >= 40 and got.loc[late, SNAPSHOT_TIME].isna().all()
            on_edge = entity[TIMESTAMP] == last + pd.Timedelta(days=ttl_days)
            assert (got.loc[on_edge, SNAPSHOT_TIME] == last.timestamp()).all()
        finally:
            apply_repo(built.paths)  # back to the module's TTL for the other tests
    assert built.store.get_feature_view("customer_rfm").ttl == pd.Timedelta(
        days=built.params.features.ttl_days
    )


def test_one_row_per_entity_row_in_input_order_with_unknown_and_duplicate_rows(built):
    snaps = built.snapshots
    feats = built.features()
    ids = sorted(feats.loc[feats[TIMESTAMP] == snaps[3], ENTITY_KEY])  # known since snaps[3]
    entity = pd.DataFrame(
        {
            ENTITY_KEY: [ids[5], "C9999999", ids[0], ids[5], "nobody", ids[0], ids[5]],
            TIMESTAMP: [
                snaps[-1],
                snaps[-1],
                snaps[3] + US,
                snaps[-1],
                snaps[2],
                snaps[3] + US,
                snaps[4],
            ],
            "label": [1, 0, 1, 1, 0, 1, 0],  # extra columns travel with their row
        }
    )
    got = historical_features(built.store, entity, "churn_v1")
    names = feature_names(built.params)

    assert len(got) == len(entity)
    assert list(got[ENTITY_KEY]) == list(entity[ENTITY_KEY])
    assert list(got["label"]) == list(entity["label"])
    unknown = got[ENTITY_KEY].isin(["C9999999", "nobody"])
    assert got.loc[unknown, names].isna().all().all()
    assert got.loc[~unknown, SNAPSHOT_TIME].notna().all()
    for a, b in ((0, 3), (2, 5)):  # duplicated entity rows get identical features
        _assert_same_features(got.iloc[[a]], got.iloc[[b]], names)
    assert got.loc[6, SNAPSHOT_TIME] == snaps[4].timestamp()
    with pytest.raises(ValueError, match="missing columns"):
        historical_features(built.store, entity.drop(columns=TIMESTAMP), "churn_v1")


def test_timezone_forms_of_entity_times_give_identical_features(built):
    base = _entity_rows(built, n_customers=30, seed=3)
    utc = base[TIMESTAMP]
    forms = {
        "naive": utc.dt.tz_localize(None),
        "aware": utc,
        "plus2": utc.dt.tz_convert("Etc/GMT-2"),  # +02:00
    }
    results = {
        name: historical_features(built.store, base.assign(**{TIMESTAMP: times}), "churn_v1")
        for name, times in forms.items()
    }
    assert str(forms["plus2"].iloc[0])[-6:] == "+02:00"
    pd.testing.assert_frame_equal(results["naive"], results["aware"])
    pd.testing.assert_frame_equal(results["plus2"], results["aware"])
    assert results["aware"][SNAPSHOT_TIME].notna().sum() > len(base) // 2


def _latest_snapshot(built: Built) -> pd.DataFrame:
    feats = built.features()
    latest = feats[feats[TIMESTAMP] == built.snapshots[-1]]
    return latest.set_index(ENTITY_KEY).sort_index()


def test_online_features_equal_the_latest_offline_snapshot(built):
    latest = _latest_snapshot(built)
    ids = list(np.random.default_rng(4).choice(latest.index, size=1000, replace=False))
    online = online_features(built.store, ids, "churn_v1")
    names = feature_names(built.params)

    assert list(online[ENTITY_KEY]) == ids
    _assert_same_features(online, latest.loc[ids].reset_index(), names)
    assert (online[SNAPSHOT_TIME] == built.snapshots[-1].timestamp()).all()
    unknown = online_features(built.store, ["C9999999"], "appetence_v1")
    assert unknown[names].isna().all().all()


def test_feast_materialize_writes_what_the_fast_path_writes(built):
    # `feast materialize` goes through Feast's protobuf rows (online_write_batch) instead
    # of the DataFrame path of materialize_snapshot: the online values must not change.
    latest = _latest_snapshot(built)
    ids = list(latest.index[:500])
    store = built.store
    before = online_features(store, ids, "churn_v1")
    store.materialize(built.snapshots[-1] - US, built.snapshots[-1] + US)
    after = online_features(store, ids, "churn_v1")
    names = feature_names(built.params)
    _assert_same_features(after, before, names)
    _assert_same_features(after, latest.loc[ids].reset_index(), names)


def test_rebuild_apply_materialize_is_idempotent(built):
    before_rows = len(built.features())
    ids = list(_latest_snapshot(built).index[:300])
    before = online_features(built.store, ids, "churn_v1")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGAGE_DATA_DIR", str(built.paths.data_dir))
        for _ in range(2):
            snapshots = _build_apply_materialize(built.params, built.paths)
    after = built.features()
    assert sorted(snapshots) == built.snapshots
    assert len(after) == before_rows
    assert not after.duplicated([ENTITY_KEY, TIMESTAMP]).any()
    online = online_features(built.store, ids, "churn_v1")
    _assert_same_features(online, before, feature_names(built.params))


def test_feast_cli_lists_the_views_from_any_directory(built, tmp_path):
    feast = Path(sys.executable).parent / "feast"
    config = built.paths.feast_dir / "feature_store.yaml"  # written by store.repo_config
    env = {**os.environ, "ENGAGE_DATA_DIR": str(built.paths.data_dir), "FEAST_USAGE": "False"}
    result = subprocess.run(
        [
            str(feast),
            "-c",
            str(built.paths.feature_repo),
            "-f",
            str(config),
            "feature-views",
            "list",
        ],
        cwd=tmp_path,  # not the project: the repo path must not depend on the cwd
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines()[1:] if line.strip()}
    assert set(VIEWS) <= listed


def test_snapshots_do_not_depend_on_the_order_they_are_built_in(built):
    # The builder carries all-time statistics from one snapshot to the next: a series
    # must equal snapshots computed alone, also at times inside a day (not midnights).
    snaps = built.snapshots
    times = [snaps[3], snaps[3] + pd.Timedelta(hours=13, microseconds=7), snaps[9], snaps[-1]]
    created = pd.Timestamp("2030-01-01", tz="UTC")
    paths = built.paths
    series = FeatureBuilder(built.params, paths.events, paths.customers)
    try:
        chained = {t: series.snapshot(t, created).to_pandas() for t in times}
        backwards = series.snapshot(times[1], created).to_pandas()
    finally:
        series.close()
    for t in times:
        alone = FeatureBuilder(built.params, paths.events, paths.customers)
        try:
            pd.testing.assert_frame_equal(chained[t], alone.snapshot(t, created).to_pandas())
        finally:
            alone.close()
    pd.testing.assert_frame_equal(backwards, chained[times[1]])
    stored = built.features()
    stored = stored[stored[TIMESTAMP] == snaps[9]].reset_index(drop=True)
    names = feature_names(built.params)
    _assert_same_features(chained[snaps[9]], stored, names)


def test_snapshots_inside_a_day_match_the_pandas_reference(built, tmp_path):
    # As-of times off midnight make the builder order that day's events by time; one is
    # exactly an event's time (the event must not count). Two NPS answers at the same
    # time: the larger one is the last answer, whatever the file order.
    events = pd.read_parquet(built.paths.events)
    customers = pd.read_parquet(built.paths.customers)
    nps = events[events["event_type"] == "nps_response"].iloc[0]
    tie = nps.copy()
    tie["event_id"], tie["value"] = "tie", nps["value"] + 1.5
    events = pd.concat([tie.to_frame().T, events], ignore_index=True).astype(events.dtypes)
    events.to_parquet(tmp_path / "events.parquet")
    at_event = events["event_time"].iloc[len(events) // 2]
    times = [built.snapshots[5] + pd.Timedelta(hours=13, microseconds=7), at_event]
    times.append(nps["event_time"] + US)
    builder = FeatureBuilder(built.params, tmp_path / "events.parquet", built.paths.customers)
    got = {}
    try:
        for t in sorted(times):
            got[t] = builder.snapshot(t).to_pandas().set_index(ENTITY_KEY)
            want = reference_snapshot(events, customers, t, built.params)
            assert list(got[t].index) == list(want.index), t
            _assert_same_features(got[t], want, feature_names(built.params))
    finally:
        builder.close()
    after_tie = got[nps["event_time"] + US].loc[nps[ENTITY_KEY]]
    assert after_tie["last_nps_response_value"] == nps["value"] + 1.5
