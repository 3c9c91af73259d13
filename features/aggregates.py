"""Point-in-time behavioural aggregates over the Parquet events.

For each as-of time, every customer known before it (first seen, or any event, strictly
before ``as_of``) gets one row of the features listed in :mod:`features.catalog`,
computed only from events with ``event_time < as_of``. Each snapshot is written to its
own Parquet file ``<features dir>/customer_features/as_of=<UTC time>.parquet``, so a
rebuild of a snapshot replaces that file and never duplicates rows; Feast reads the
folder as one source.

How a snapshot is computed (:class:`FeatureBuilder`):

1. Once per build, DuckDB reads the events, gives each customer a dense integer index
   (in ``customer_id`` order) and hands over, per event type, the times, customer
   indexes and values sorted by time.
2. Per snapshot, numpy derives the few statistics per customer and type that every
   feature is made of (:data:`STATS`). The events of a window are a contiguous slice of
   the time-sorted arrays (two binary searches), and a per-customer count or sum over a
   slice is one ``bincount``, so a snapshot reads only the events of its longest window
   (90 days, a year for purchases) plus, for the all-time statistics, the events since
   the previous snapshot. A GROUP BY over every event per snapshot was ~15x slower.
3. DuckDB evaluates each feature's SQL expression (:mod:`features.catalog`) over one row
   per customer of these statistics.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from engage.config import Params
from features.catalog import (
    CREATED,
    DAY_US,
    ENTITY_KEY,
    FIRST_SEEN_US,
    SNAPSHOT_TIME,
    TIMESTAMP,
    FeatureSpec,
    feature_specs,
    money_features,
    stat_columns,
)
from features.snapshots import SnapshotSet, features_lock, snapshot_dir, to_utc


def snapshot_times(
    first_event: pd.Timestamp,
    last_event: pd.Timestamp,
    every_days: int,
    max_snapshots: int,
    now: pd.Timestamp | None = None,
    horizon_days: int | None = None,
    min_labelled: int = 0,
) -> list[pd.Timestamp]:
    """As-of times: "now" and every ``every_days`` before it, oldest first.

    "Now" defaults to the midnight (UTC) after the last event, so the latest snapshot sees
    every event. Snapshots at or before the first event would be empty and are skipped.
    A short history gets denser snapshots: when fewer than ``min_labelled`` times would
    have a fully observed label window (``t + horizon_days <= now``), the spacing shrinks
    a day at a time (down to one day) until enough do, so a few months of data still
    give a model enough labelled as-of times (consecutive times share most of their
    history, so this adds rows rather than independent evidence).

    Args:
        first_event: time of the earliest event.
        last_event: time of the latest event.
        every_days: spacing of the snapshots.
        max_snapshots: keep only this many of the most recent ones.
        now: the latest as-of time; defaults as above.
        horizon_days: the label horizon (None: never densify).
        min_labelled: the labelled times wanted (``features.min_labelled_snapshots``).

    """
    if every_days <= 0 or max_snapshots <= 0:
        raise ValueError("every_days and max_snapshots must be positive")
    first_event, last_event = to_utc(first_event), to_utc(last_event)
    now = to_utc(now) if now is not None else last_event.floor("D") + pd.Timedelta(days=1)

    def every(step: int) -> list[pd.Timestamp]:
        times, t = [], now
        while t > first_event and len(times) < max_snapshots:
            times.append(t)
            t = t - pd.Timedelta(days=step)
        return sorted(times)

    times = every(every_days)
    if horizon_days is None or min_labelled <= 0:
        return times
    horizon = pd.Timedelta(days=horizon_days)
    for step in range(every_days, 0, -1):
        times = every(step)
        if sum(t + horizon <= now for t in times) >= min_labelled:
            break
    return times


# The statistics a feature expression may read, per event type: column "<type>.<stat>".
# Counts and sums are 0 when nothing happened; the others are null then.
STATS = {
    "n_all": "number of events",
    "s_all": "sum of the non-null values",
    "n_val": "number of events with a value",
    "min_ts": "time of the first event (epoch µs)",
    "max_ts": "time of the last event (epoch µs)",
    "last_value": "latest non-null value (ties on time: the larger value)",
    "n_<w>": "number of events in the last w days (as_of - w days <= time < as_of)",
    "s_<w>": "sum of the values in the last w days",
}
# Statistics over every past event. They only grow with time, so the builder carries them
# from one snapshot to the next and reads only the events in between.
TOTAL_STATS = ("n_all", "s_all", "n_val", "min_ts", "max_ts", "last_value")
_VALUE_STATS = ("s_all", "n_val", "last_value")
# Placeholders of min_ts / max_ts for "no event"; any real time replaces them.
_INT_MAX, _INT_MIN = int(np.iinfo(np.int64).max), int(np.iinfo(np.int64).min)
_WIDE_FIRST_SEEN = FIRST_SEEN_US


def _window(stat: str) -> tuple[str, int] | None:
    """``("n", 30)`` for ``n_30``; None for an all-time statistic."""
    kind, _, days = stat.partition("_")
    return (kind, int(days)) if kind in ("n", "s") and days.isdigit() else None


def build_specs(params: Params, unknown_money: bool = False) -> list[FeatureSpec]:
    """The catalog's features as a build computes them (the DuckDB and Spark builds).

    With ``unknown_money`` (a store ingested with ``--no-amounts``) the money features
    (:func:`features.catalog.money_features`) are null, not 0: a purchase with no
    recorded amount is not a free purchase.
    """
    specs = feature_specs(params)
    if not unknown_money:
        return specs
    money = set(money_features(params))
    return [replace(s, sql="NULL", zero=False) if s.name in money else s for s in specs]


def check_stats(columns: Sequence[tuple[str, str]], event_types: Sequence[str]) -> None:
    """Fail early on a feature expression that reads an unknown type or statistic.

    Raises:
        ValueError: the type is not in ``data.event_types`` or the stat is not in STATS.

    """
    for t, stat in columns:
        if t not in event_types:
            raise ValueError(f'features: "{t}.{stat}" reads an event type not in event_types')
        if stat not in TOTAL_STATS and _window(stat) is None:
            raise ValueError(f'features: "{t}.{stat}" reads an unknown statistic')


def typed_column(spec: FeatureSpec, expr: str, as_of: str) -> str:
    """``expr`` cast as the feature's stored column, with the name of the feature.

    BIGINT counts and flags (0 when nothing happened), DOUBLE otherwise (0 for sums,
    else null), the snapshot time from ``as_of``. One rule for both engines: DuckDB
    (``$as_of_us``) and Spark (its ``as_of_us`` column).
    """
    if spec.name == SNAPSHOT_TIME:
        return f"({as_of} / 1e6)::DOUBLE AS {SNAPSHOT_TIME}"
    if spec.dtype == "int":
        return f"coalesce({expr}, 0)::BIGINT AS {spec.name}"
    if spec.zero:
        return f"coalesce({expr}, 0)::DOUBLE AS {spec.name}"
    return f"({expr})::DOUBLE AS {spec.name}"


def build_sql(specs: Sequence[FeatureSpec]) -> str:
    """The per-snapshot feature query; parameters ``$as_of_us`` and ``$created_us``.

    It reads the table ``wide``: customer_id, first_seen_us and one column
    ``"<type>.<stat>"`` per statistic the features use (see :data:`STATS`).
    """
    cols = [typed_column(s, s.sql, "$as_of_us") for s in specs]
    return f"""
SELECT {ENTITY_KEY},
  make_timestamptz($as_of_us) AS {TIMESTAMP},
  make_timestamptz($created_us) AS {CREATED},
  {", ".join(cols)}
FROM wide
"""


@dataclass
class _TypeEvents:
    """The events of one type, in UTC day order; inside a day, in time order once needed.

    A full sort by time costs twice the sort by day, and most as-of times and window
    starts are midnights, which only need the day order. Since every event of a day
    precedes every event of the next, ``ts >= x`` is false then true along the array for
    any midnight x, and also for any x inside a day once that day is sorted: a binary
    search (searchsorted) finds the first event at or after x.
    """

    ts: np.ndarray  # epoch µs
    cid: np.ndarray  # 0-based customer index
    value: np.ndarray | None  # NaN for null; None when no feature reads the values
    sorted_days: set[int] = field(default_factory=set)

    def index(self, time_us: int) -> int:
        """Position of the first event at or after ``time_us``."""
        if time_us % DAY_US:
            self._sort_day(time_us // DAY_US)
        return int(np.searchsorted(self.ts, time_us, side="left"))

    def _sort_day(self, day: int) -> None:
        if day in self.sorted_days:
            return
        bounds = [max(day * DAY_US, _INT_MIN), min((day + 1) * DAY_US, _INT_MAX)]
        lo, hi = np.searchsorted(self.ts, np.array(bounds, dtype=np.int64), side="left")
        order = np.argsort(self.ts[lo:hi], kind="stable")
        for name in ("ts", "cid", "value"):
            arr = getattr(self, name)
            if arr is None:
                continue
            if not arr.flags.writeable:  # a read-only view of the loaded Arrow data
                arr = arr.copy()
                setattr(self, name, arr)
            arr[lo:hi] = arr[lo:hi][order]
        self.sorted_days.add(day)


def _count(cid: np.ndarray, n: int, weights: np.ndarray | None = None) -> np.ndarray:
    return np.bincount(cid, weights=weights, minlength=n)


def _latest_values(
    cid: np.ndarray, ts: np.ndarray, value: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per customer: has a non-null value, and the value of the latest such event.

    Ties on time go to the larger value, so the result never depends on row order.
    """
    valued = ~np.isnan(value)
    cid, ts, value = cid[valued], ts[valued], value[valued]
    latest_ts = np.full(n, _INT_MIN, dtype=np.int64)
    np.maximum.at(latest_ts, cid, ts)
    at_latest = ts == latest_ts[cid]
    best = np.full(n, -np.inf)
    np.maximum.at(best, cid[at_latest], value[at_latest])
    return latest_ts > _INT_MIN, best


class _Totals:
    """The all-time statistics of every customer at one as-of time, as dense arrays."""

    def __init__(self, columns: Sequence[tuple[str, str]], n_customers: int) -> None:
        self.columns = list(columns)
        self.n = n_customers
        self.as_of_us = _INT_MIN
        fill = {"min_ts": _INT_MAX, "max_ts": _INT_MIN, "last_value": np.nan}
        self.values = {
            f"{t}.{stat}": np.full(
                n_customers,
                fill.get(stat, 0),
                dtype=np.float64 if stat in ("s_all", "last_value") else np.int64,
            )
            for t, stat in self.columns
        }

    def fold(self, events: dict[str, _TypeEvents], as_of_us: int) -> None:
        """Add the events between the current as-of time and a later one."""
        for t, stat in self.columns:
            ev, cur = events[t], self.values[f"{t}.{stat}"]
            start = 0 if self.as_of_us == _INT_MIN else ev.index(self.as_of_us)
            part = slice(start, ev.index(as_of_us))
            cid, ts = ev.cid[part], ev.ts[part]
            value = ev.value[part] if stat in _VALUE_STATS else None
            if stat == "n_all":
                cur += _count(cid, self.n)
            elif stat == "n_val":
                cur += _count(cid[~np.isnan(value)], self.n)
            elif stat == "s_all":
                cur += _count(cid, self.n, np.nan_to_num(value))
            elif stat == "min_ts":
                np.minimum.at(cur, cid, ts)
            elif stat == "max_ts":
                np.maximum.at(cur, cid, ts)
            else:  # last_value: the new events are all later than the folded ones
                seen, latest = _latest_values(cid, ts, value, self.n)
                cur[seen] = latest[seen]
        self.as_of_us = as_of_us


def _window_stats(
    ev: _TypeEvents, stats: Sequence[str], as_of_us: int, n: int
) -> dict[str, np.ndarray]:
    """Windowed counts and sums of one type, from the shortest window to the longest.

    Each event is counted once: the slice between two window starts is added to the
    running totals of the shorter window.
    """
    wanted = [_window(s) for s in stats]
    longest_sum = max((days for kind, days in wanted if kind == "s"), default=0)
    out: dict[str, np.ndarray] = {}
    counts, sums = np.zeros(n, dtype=np.int64), np.zeros(n)
    end = ev.index(as_of_us)
    for w in sorted({days for _, days in wanted}):
        # Window: as_of - w days <= ts < as_of, i.e. an age of at most w days.
        start = ev.index(as_of_us - w * DAY_US)
        cid = ev.cid[start:end]
        counts = counts + _count(cid, n)
        if w <= longest_sum:
            sums = sums + _count(cid, n, np.nan_to_num(ev.value[start:end]))
        out[f"n_{w}"], out[f"s_{w}"] = counts, sums
        end = start
    return {s: out[s] for s in stats}


def _epoch_us(ts: pd.Timestamp) -> int:
    return int(to_utc(ts).value // 1000)


def default_snapshot_times(
    params: Params, first: pd.Timestamp, last: pd.Timestamp, now: pd.Timestamp | None = None
) -> list[pd.Timestamp]:
    """:func:`snapshot_times` of events from ``first`` to ``last`` with the ``features`` params."""
    fp = params.features
    return snapshot_times(
        first,
        last,
        fp.snapshot_every_days,
        fp.max_snapshots,
        now,
        params.labels.horizon_days,
        fp.min_labelled_snapshots,
    )


@dataclass
class FeatureBuilder:
    """Loads the events once, then computes one snapshot per call.

    Snapshots asked in increasing time order are cheapest: the all-time statistics are
    carried over and only the events since the previous snapshot are read for them.

    Args:
        params: the parsed params.yaml.
        events_path: Parquet events (engage.schema.EVENTS_SCHEMA).
        customers_path: Parquet customers, or None to derive first_seen from events.
        memory_limit: DuckDB memory limit (it spills to disk beyond it).
        threads: DuckDB threads; default: every core.
        unknown_money: the store's purchases have no amounts (``--no-amounts``): the
            money features (:func:`features.catalog.money_features`) are null, not 0.

    """

    params: Params
    events_path: Path
    customers_path: Path | None = None
    memory_limit: str = "6GB"
    threads: int | None = None
    unknown_money: bool = False

    def __post_init__(self) -> None:
        self.specs = build_specs(self.params, self.unknown_money)
        self.sql = build_sql(self.specs)
        self._columns = stat_columns(self.specs)
        check_stats(self._columns, self.params.data.event_types)
        # The load gets its own connection: closing it hands DuckDB's memory (the whole
        # event table) back before the snapshots start.
        with self._connect() as con:
            self._load(con)
        self.con = self._connect()
        self._reset_totals()

    def _reset_totals(self) -> None:
        totals = [(t, s) for t, s in self._columns if s in TOTAL_STATS]
        self._totals = _Totals(totals, len(self._first_seen))

    def _connect(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"SET memory_limit = '{self.memory_limit}'")
        # Spill next to the data, never into the caller's current directory.
        spill = Path(self.events_path).resolve().parent / ".duckdb_tmp"
        con.execute(f"SET temp_directory = '{spill}'")
        con.execute(f"SET threads = {self.threads or os.cpu_count() or 2}")
        return con

    def _load(self, con: duckdb.DuckDBPyConnection) -> None:
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
        # Customer index = rank in customer_id order, so the output needs no string sort.
        con.execute(
            "CREATE TEMP TABLE cust AS SELECT (row_number() OVER (ORDER BY customer_id) - 1)"
            f"::INTEGER AS cid, customer_id, epoch_us(first_seen) AS first_seen_us FROM ({known})"
        )
        customers = con.sql(
            "SELECT customer_id, first_seen_us FROM cust ORDER BY cid"
        ).to_arrow_table()
        self._ids = customers.column("customer_id").combine_chunks()
        self._first_seen = customers.column("first_seen_us").to_numpy()
        types = self.params.data.event_types
        codes = ", ".join(f"('{t}', {i})" for i, t in enumerate(types))
        # An event of a type outside the vocabulary feeds no feature (first_seen has it).
        con.execute(
            "CREATE TEMP TABLE ev AS SELECT k.et::UTINYINT AS et, c.cid, "
            f"epoch_us(e.event_time) AS ts, e.value FROM read_parquet('{events}') e "
            f"JOIN cust c USING (customer_id) JOIN (VALUES {codes}) k(event_type, et) "
            "USING (event_type)"
        )
        [(lo, hi, n)] = con.execute("SELECT min(ts), max(ts), count(*) FROM ev").fetchall()
        if not n:
            raise ValueError(f"events: {events} holds no rows")
        self.first_event = pd.Timestamp(lo, unit="us", tz="UTC")
        self.last_event = pd.Timestamp(hi, unit="us", tz="UTC")
        self.n_events = int(n)
        used = {t for t, _ in self._columns}
        valued = {t for t, s in self._columns if s in _VALUE_STATS or s.startswith("s_")}
        sizes = dict(con.execute("SELECT et, count(*) FROM ev GROUP BY et").fetchall())
        # Largest type first: its sort runs while the fewest arrays are held (lower peak).
        order = sorted(range(len(types)), key=lambda i: -sizes.get(i, 0))
        self._events = {
            types[i]: self._type_events(con, i, types[i] in valued)
            for i in order
            if types[i] in used
        }

    def _type_events(
        self, con: duckdb.DuckDBPyConnection, code: int, with_values: bool
    ) -> _TypeEvents:
        cols = "ts, cid" + (", value" if with_values else "")
        # Floored day number (DuckDB's // truncates towards zero before 1970); a 4-byte
        # key sorts twice as fast as the 8-byte time.
        day = f"((ts - ((ts % {DAY_US}) + {DAY_US}) % {DAY_US}) // {DAY_US})::INTEGER"
        table = con.sql(f"SELECT {cols} FROM ev WHERE et = {code} ORDER BY {day}").to_arrow_table()
        value = None
        if with_values:
            value = table.column("value").to_numpy(zero_copy_only=False).astype(np.float64)
        return _TypeEvents(
            ts=table.column("ts").to_numpy(),
            cid=table.column("cid").to_numpy(),
            value=value,
        )

    def _stats(self, as_of_us: int, keep: np.ndarray) -> dict[str, pa.Array]:
        """Every ``"<type>.<stat>"`` column of the customers ``keep`` at ``as_of_us``."""
        if as_of_us < self._totals.as_of_us:  # going back in time: start over
            self._reset_totals()
        self._totals.fold(self._events, as_of_us)
        n = len(self._first_seen)
        columns: dict[str, np.ndarray] = {}
        windowed: dict[str, list[str]] = {}
        for t, stat in self._columns:
            if stat in TOTAL_STATS:
                columns[f"{t}.{stat}"] = self._totals.values[f"{t}.{stat}"]
            else:
                windowed.setdefault(t, []).append(stat)
        for t, stats in windowed.items():
            for stat, values in _window_stats(self._events[t], stats, as_of_us, n).items():
                columns[f"{t}.{stat}"] = values
        out = {}
        for key, values in columns.items():
            picked = values[keep]
            stat = key.rpartition(".")[2]
            if stat in ("min_ts", "max_ts"):
                out[key] = pa.array(picked, mask=(picked == _INT_MAX) | (picked == _INT_MIN))
            elif stat == "last_value":
                out[key] = pa.array(picked, mask=np.isnan(picked))
            else:
                out[key] = pa.array(picked)
        return out

    def snapshot(self, as_of: pd.Timestamp, created: pd.Timestamp | None = None) -> pa.Table:
        """Features of every known customer at ``as_of`` (events strictly before it)."""
        created = created or pd.Timestamp.now(tz="UTC")
        as_of_us = _epoch_us(as_of)
        keep = np.flatnonzero(self._first_seen < as_of_us)
        wide = pa.table(
            {
                ENTITY_KEY: self._ids.take(keep),
                _WIDE_FIRST_SEEN: self._first_seen[keep],
                **self._stats(as_of_us, keep),
            }
        )
        self.con.register("wide", wide)
        try:
            params = {"as_of_us": as_of_us, "created_us": _epoch_us(created)}
            return self.con.sql(self.sql, params=params).to_arrow_table()
        finally:
            self.con.unregister("wide")

    def snapshot_times(self, now: pd.Timestamp | None = None) -> list[pd.Timestamp]:
        """Default as-of times for these events (see :func:`snapshot_times`)."""
        return default_snapshot_times(self.params, self.first_event, self.last_event, now)

    def tables(
        self, times: Sequence[pd.Timestamp], created: pd.Timestamp
    ) -> Iterator[tuple[pd.Timestamp, pa.Table]]:
        """Each snapshot of ``times``, oldest first (the all-time statistics carry over)."""
        for t in sorted(times):
            yield t, self.snapshot(t, created)

    def close(self) -> None:
        self.con.close()


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    # Counts and the two constant times repeat a lot; ids and float features rarely do,
    # and trying a dictionary on them doubled the write time for the same file size.
    return [f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_timestamp(f.type)]


@dataclass(frozen=True)
class BuildSummary:
    snapshots: list[pd.Timestamp]
    rows: int
    events: int
    directory: Path
    unknown_money: bool = False  # built from a store without amounts: money features null


def build_features(
    params: Params,
    events_path: Path,
    customers_path: Path | None,
    out_dir: Path,
    as_of: Sequence[pd.Timestamp] | None = None,
    progress: Callable[[pd.Timestamp], None] | None = None,
    session: object | None = None,
) -> BuildSummary:
    """Compute snapshots and make them the stored set, one Parquet file per as-of time.

    ``params.compute.engine`` picks the engine: DuckDB on this host, or Spark
    (:mod:`features.spark_build`); both write the same files.

    The build owns the set (:class:`features.snapshots.SnapshotSet`): once it
    succeeds, the folder holds exactly the snapshots of ``as_of`` (or of the default
    times) and the ones of earlier builds are gone; if it fails or is killed, the
    previous set stays whole. It holds the features lock throughout and the event
    store's shared lock while it loads the events, so it never reads events and
    customers from two different writes.

    Args:
        params: the parsed params.yaml.
        events_path: Parquet events.
        customers_path: Parquet customers (optional).
        out_dir: the features folder; files go to ``out_dir/customer_features/``.
        as_of: as-of times; default: every ``snapshot_every_days`` up to "now".
        progress: called after each snapshot is written.
        session: the SparkSession to use when the engine is Spark (default: one at
            ``spark.master``, stopped at the end).

    Returns:
        What was written.

    Raises:
        FileNotFoundError: no events.
        engage.locks.StoreBusyError: another command held the events or the features
            for longer than ``data.lock_timeout_s``.

    """
    from engage.data.store import reading, store_flags

    timeout = params.data.lock_timeout_s
    spark = params.compute.engine == "spark"
    with features_lock(out_dir, timeout=timeout), contextlib.ExitStack() as events_lock:
        events_lock.enter_context(reading(events_path, timeout=timeout))
        unknown_money = store_flags(events_path)["no_amounts"]
        if spark:  # Spark reads the events lazily, during the job: keep the lock throughout
            from features.spark_build import SparkFeatureBuilder

            builder = SparkFeatureBuilder(
                params,
                events_path,
                customers_path,
                Path(out_dir) / ".spark_staging",
                session,
                unknown_money=unknown_money,
            )
        else:
            builder = FeatureBuilder(
                params, events_path, customers_path, unknown_money=unknown_money
            )
            events_lock.close()
        snapshots = SnapshotSet(Path(out_dir))
        try:
            times = [to_utc(t) for t in as_of] if as_of else builder.snapshot_times()
            times = sorted(set(times))
            created = pd.Timestamp.now(tz="UTC")
            rows = 0
            for t, table in builder.tables(times, created):
                snapshots.write(table, t, _dictionary_columns(table.schema))
                rows += table.num_rows
                if progress:
                    progress(t)
            snapshots.commit(events=str(events_path), events_count=builder.n_events)
            return BuildSummary(times, rows, builder.n_events, snapshot_dir(out_dir), unknown_money)
        except BaseException:
            snapshots.discard()
            raise
        finally:
            builder.close()
