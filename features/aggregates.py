"""Point-in-time behavioural aggregates computed in DuckDB over the Parquet events.

For each as-of time, every customer known before it (first seen, or any event, strictly
before ``as_of``) gets one row of the features listed in :mod:`features.catalog`,
computed only from events with ``event_time < as_of``. Each snapshot is written to its
own Parquet file ``<features dir>/customer_features/as_of=<UTC time>.parquet``, so a
rebuild of a snapshot replaces that file and never duplicates rows; Feast reads the
folder as one source.
"""

from __future__ import annotations

import datetime as dt
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engage.config import Params
from features.catalog import (
    CREATED,
    ENTITY_KEY,
    SNAPSHOT_TIME,
    TIMESTAMP,
    FeatureSpec,
    feature_specs,
    type_stats_sql,
)

TABLE_DIR = "customer_features"
_DAY_US = 86_400_000_000


def to_utc(ts: pd.Timestamp | dt.datetime | str) -> pd.Timestamp:
    """Parse a timestamp; naive means UTC, an offset is converted to UTC."""
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def snapshot_times(
    first_event: pd.Timestamp,
    last_event: pd.Timestamp,
    every_days: int,
    max_snapshots: int,
    now: pd.Timestamp | None = None,
) -> list[pd.Timestamp]:
    """As-of times: "now" and every ``every_days`` before it, oldest first.

    "Now" defaults to the midnight (UTC) after the last event, so the latest snapshot sees
    every event. Snapshots at or before the first event would be empty and are skipped.

    Args:
        first_event: time of the earliest event.
        last_event: time of the latest event.
        every_days: spacing of the snapshots.
        max_snapshots: keep only this many of the most recent ones.
        now: the latest as-of time; defaults as above.

    """
    if every_days <= 0 or max_snapshots <= 0:
        raise ValueError("every_days and max_snapshots must be positive")
    first_event, last_event = to_utc(first_event), to_utc(last_event)
    now = to_utc(now) if now is not None else last_event.floor("D") + pd.Timedelta(days=1)
    times = []
    t = now
    while t > first_event and len(times) < max_snapshots:
        times.append(t)
        t = t - pd.Timedelta(days=every_days)
    return sorted(times)


def build_sql(specs: Sequence[FeatureSpec], type_stats: str) -> str:
    """The per-snapshot query; parameter ``$as_of_us`` is the as-of time in epoch µs.

    It reads the temporary tables ``ev`` (cid, event_type, value, ts) and ``cust`` (cid,
    customer_id, first_seen_us) prepared by :class:`FeatureBuilder`.
    """
    special = ("tenure_days", SNAPSHOT_TIME)
    aggs = ",\n    ".join(f"{s.sql} AS {s.name}" for s in specs if s.name not in special)
    cols = []
    for s in specs:
        if s.name == SNAPSHOT_TIME:
            cols.append(f"($as_of_us / 1e6)::DOUBLE AS {SNAPSHOT_TIME}")
        elif s.name == "tenure_days":
            cols.append(
                "(($as_of_us - least(c.first_seen_us, coalesce(a.first_ts, c.first_seen_us)))"
                f" / {_DAY_US}::DOUBLE) AS tenure_days"
            )
        elif s.dtype == "int":
            cols.append(f"coalesce(a.{s.name}, 0)::BIGINT AS {s.name}")
        elif s.zero:
            cols.append(f"coalesce(a.{s.name}, 0)::DOUBLE AS {s.name}")
        else:
            cols.append(f"a.{s.name}::DOUBLE AS {s.name}")
    return f"""
WITH pt AS (
  SELECT cid, event_type,
    {type_stats}
  FROM (
    SELECT cid, event_type, value, ts, ($as_of_us - ts) / {_DAY_US}::DOUBLE AS age
    FROM ev WHERE ts < $as_of_us
  )
  GROUP BY cid, event_type
), agg AS (
  SELECT cid, min(min_ts) AS first_ts,
    {aggs}
  FROM pt GROUP BY cid
)
SELECT c.customer_id AS {ENTITY_KEY},
  make_timestamptz($as_of_us) AS {TIMESTAMP},
  make_timestamptz($created_us) AS {CREATED},
  {", ".join(cols)}
FROM cust c LEFT JOIN agg a USING (cid)
WHERE c.first_seen_us < $as_of_us OR a.cid IS NOT NULL
ORDER BY c.customer_id
"""


def _epoch_us(ts: pd.Timestamp) -> int:
    return int(to_utc(ts).value // 1000)


def _snapshot_file(directory: Path, as_of: pd.Timestamp) -> Path:
    return directory / f"as_of={to_utc(as_of).strftime('%Y%m%dT%H%M%S')}.parquet"


@dataclass
class FeatureBuilder:
    """Loads the events once into DuckDB, then computes one snapshot per call.

    Args:
        params: the parsed params.yaml.
        events_path: Parquet events (engage.schema.EVENTS_SCHEMA).
        customers_path: Parquet customers, or None to derive first_seen from events.
        memory_limit: DuckDB memory limit (it spills to disk beyond it).

    """

    params: Params
    events_path: Path
    customers_path: Path | None = None
    memory_limit: str = "6GB"

    def __post_init__(self) -> None:
        self.specs = feature_specs(self.params)
        self.sql = build_sql(self.specs, type_stats_sql(self.params))
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute(f"SET memory_limit = '{self.memory_limit}'")
        threads = os.cpu_count() or 2
        self.con.execute(f"SET threads = {threads}")
        self._load()

    def _load(self) -> None:
        events = str(self.events_path)
        if not Path(events).exists():
            raise FileNotFoundError(
                f"events not found at {events}: run `engage data simulate`, "
                "`engage data cdnow` or `engage data ingest` first"
            )
        known = f"SELECT customer_id, min(event_time) AS first_seen FROM read_parquet('{events}') "
        known += "GROUP BY customer_id"
        if self.customers_path is not None and Path(self.customers_path).exists():
            known = (
                f"SELECT customer_id, min(first_seen) AS first_seen FROM ("
                f"SELECT customer_id, first_seen FROM read_parquet('{self.customers_path}') "
                f"UNION ALL {known}) GROUP BY customer_id"
            )
        # Integer customer keys and epoch-µs times keep the in-memory event table small.
        self.con.execute(
            f"CREATE TEMP TABLE cust AS SELECT row_number() OVER (ORDER BY customer_id)::INTEGER "
            f"AS cid, customer_id, epoch_us(first_seen) AS first_seen_us FROM ({known})"
        )
        self.con.execute(
            "CREATE TEMP TABLE ev AS SELECT c.cid, e.event_type, e.value, "
            f"epoch_us(e.event_time) AS ts FROM read_parquet('{events}') e "
            "JOIN cust c USING (customer_id)"
        )
        lo, hi, n = self.con.execute("SELECT min(ts), max(ts), count(*) FROM ev").fetchone()
        if not n:
            raise ValueError(f"events: {events} holds no rows")
        self.first_event = pd.Timestamp(lo, unit="us", tz="UTC")
        self.last_event = pd.Timestamp(hi, unit="us", tz="UTC")
        self.n_events = int(n)

    def snapshot(self, as_of: pd.Timestamp, created: pd.Timestamp | None = None) -> pa.Table:
        """Features of every known customer at ``as_of`` (events strictly before it)."""
        created = created or pd.Timestamp.now(tz="UTC")
        params = {"as_of_us": _epoch_us(as_of), "created_us": _epoch_us(created)}
        with warnings.catch_warnings():
            # DuckDB warns that a prepared statement's Arrow result is copied once; fine.
            warnings.simplefilter("ignore", UserWarning)
            return self.con.execute(self.sql, params).to_arrow_reader().read_all()

    def snapshot_times(self, now: pd.Timestamp | None = None) -> list[pd.Timestamp]:
        """Default as-of times for these events (see :func:`snapshot_times`)."""
        fp = self.params.features
        return snapshot_times(
            self.first_event, self.last_event, fp.snapshot_every_days, fp.max_snapshots, now
        )

    def close(self) -> None:
        self.con.close()


@dataclass(frozen=True)
class BuildSummary:
    snapshots: list[pd.Timestamp]
    rows: int
    events: int
    directory: Path


def build_features(
    params: Params,
    events_path: Path,
    customers_path: Path | None,
    out_dir: Path,
    as_of: Sequence[pd.Timestamp] | None = None,
    progress: Callable[[pd.Timestamp], None] | None = None,
) -> BuildSummary:
    """Compute snapshots and write one Parquet file per as-of time.

    Args:
        params: the parsed params.yaml.
        events_path: Parquet events.
        customers_path: Parquet customers (optional).
        out_dir: the features folder; files go to ``out_dir/customer_features/``.
        as_of: as-of times; default: every ``snapshot_every_days`` up to "now".
        progress: called after each snapshot is written.

    Returns:
        What was written.

    """
    builder = FeatureBuilder(params, events_path, customers_path)
    try:
        times = [to_utc(t) for t in as_of] if as_of else builder.snapshot_times()
        target = out_dir / TABLE_DIR
        target.mkdir(parents=True, exist_ok=True)
        created = pd.Timestamp.now(tz="UTC")
        rows = 0
        for t in times:
            table = builder.snapshot(t, created)
            path = _snapshot_file(target, t)
            tmp = path.with_suffix(".parquet.tmp")
            pq.write_table(table, tmp)
            os.replace(tmp, path)  # a killed build never leaves half a snapshot
            rows += table.num_rows
            if progress:
                progress(t)
        return BuildSummary(times, rows, builder.n_events, target)
    finally:
        builder.close()


def read_features(out_dir: Path) -> pd.DataFrame:
    """All stored snapshots as one frame (for tests, reports and the reference check)."""
    target = out_dir / TABLE_DIR
    files = sorted(target.glob("as_of=*.parquet"))
    if not files:
        raise FileNotFoundError(f"no feature snapshots under {target}: run `engage features build`")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
