"""The feature build on Apache Spark (``compute.engine: spark``).

It writes the same snapshot files as the DuckDB build (:mod:`features.aggregates`), from
the same definitions:

* the features are the catalog's own SQL expressions (:mod:`features.catalog`), run by
  Spark SQL after a mechanical translation of the two places where the dialects differ
  (:func:`spark_expression`): a statistic column ``"<type>.<stat>"`` becomes
  a backquoted name, and the parameter ``$as_of_us`` becomes a column, because
  one query computes every as-of time at once;
* the statistics those expressions read (``features.aggregates.STATS``) are generated
  per ``(event type, stat)`` pair that the catalog uses (:func:`stat_aggregate`), as
  conditional aggregates over the events before each as-of time.

The DuckDB build computes the statistics with numpy (its fast path); the two are tested
equal on the golden event log and on a simulation (``tests/test_features_spark.py``).

How it runs: every known contact (first seen before the as-of time) gets a row per
as-of time with its statistics (zero-filled where it did nothing), and the feature
expressions turn it into the snapshot. Spark writes the
result partitioned by as-of time under a staging folder next to the features; each
snapshot is then read back one at a time (so the driver holds one snapshot, never the
events), sorted by ``customer_id`` like the DuckDB build, cast to the same Arrow schema
and handed to :class:`features.snapshots.SnapshotSet`, which owns the files.

The work grows with the events times the as-of times inside one window (plus the
output rows), not with the whole history times the as-of times: see
:meth:`SparkFeatureBuilder.frame`.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engage.config import Params, SparkParams
from features.aggregates import (
    TOTAL_STATS,
    _window,
    build_specs,
    check_stats,
    default_snapshot_times,
    typed_column,
)
from features.catalog import (
    CREATED,
    DAY_US,
    ENTITY_KEY,
    FIRST_SEEN_US,
    TIMESTAMP,
    FeatureSpec,
    stat_columns,
)
from features.snapshots import to_utc

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

AS_OF_US = "as_of_us"
CREATED_US = "created_us"
_STAT_REF = re.compile(r'"([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)"')
_STAGING = ".spark_staging"
_PREV_US = "prev_as_of_us"  # the previous as-of time: an interval is [prev, as_of)
_LONG_MIN = -(2**63)


def spark_session(spark: SparkParams, app_name: str = "engage") -> SparkSession:
    """The SparkSession at ``spark.master`` with ``spark.conf``, in UTC.

    Raises:
        ImportError: pyspark is not installed (the ``scale`` extra).

    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as err:  # the message says what to install
        raise ImportError(
            'compute.engine is spark but pyspark is not installed: pip install -e ".[scale]" '
            "(Spark also needs a Java 17+ runtime)"
        ) from err
    builder = SparkSession.builder.master(spark.master).appName(app_name)
    if spark.master.startswith("local") and "PYSPARK_PYTHON" not in os.environ:
        # Local Python workers (batch scoring) must run this interpreter, which has the
        # project installed, not the first python3 on PATH; PySpark reads only this
        # variable, when the context starts. A cluster sets its own.
        os.environ["PYSPARK_PYTHON"] = sys.executable
    for key, value in spark.conf.items():
        builder = builder.config(key, value)
    # Every stored time is UTC; the session zone decides how timestamps become µs.
    return builder.config("spark.sql.session.timeZone", "UTC").getOrCreate()


def spark_expression(sql: str) -> str:
    """A catalog expression (DuckDB SQL) as Spark SQL over the statistics table.

    The translation is mechanical and total: only statistic references and the as-of
    parameter change; every function the catalog uses (``coalesce``, ``nullif``,
    ``least`` and ``greatest``, which skip nulls in both, ``CASE``, ``CAST`` and the
    ``::DOUBLE`` cast of Spark 4) means the same in both dialects.

    Raises:
        ValueError: the expression holds a ``$`` parameter other than ``$as_of_us``.

    """
    out = _STAT_REF.sub(lambda m: f"`{m.group(1)}`", sql).replace("$as_of_us", AS_OF_US)
    if "$" in out:
        raise ValueError(f"features: unknown parameter in the expression {sql!r}")
    return out


def _valued(t: str) -> str:
    # A value counts when it is neither null nor NaN (the numpy build reads null as NaN).
    return f"(event_type = '{t}' AND value IS NOT NULL AND NOT isnan(value))"


def stat_aggregate(t: str, stat: str, running: bool = False) -> str:
    """The Spark aggregate of one statistic (``features.aggregates.STATS``) of type ``t``.

    It runs per (as-of time, contact) group over the events with ``ts < as_of_us``; a
    contact without any such event has no group, and the snapshot query fills its
    counts and sums with 0 and leaves the rest null, as the DuckDB build does.
    """
    of_t = f"event_type = '{t}'"
    clean = f"CASE WHEN {_valued(t)} THEN value ELSE 0D END"
    if stat == "n_all":
        return f"count_if({of_t})"
    if stat == "n_val":
        return f"count_if({_valued(t)})"
    if stat == "s_all":
        return f"sum({clean})"
    if stat == "min_ts":
        return f"min(CASE WHEN {of_t} THEN ts END)"
    if stat == "max_ts":
        return f"max(CASE WHEN {of_t} THEN ts END)"
    if stat == "last_value":
        # Latest time first, then the larger value on a tie: the order of the numpy build.
        # Per interval (running=True) the pair is kept, for running_total to compare.
        latest = f"max(CASE WHEN {_valued(t)} THEN named_struct('ts', ts, 'v', value) END)"
        return latest if running else f"{latest}.v"
    window = _window(stat)
    if window is None:
        raise ValueError(f'features: "{t}.{stat}" reads an unknown statistic')
    kind, days = window
    recent = f"ts >= {AS_OF_US} - {days * DAY_US}"
    if kind == "n":
        return f"count_if({of_t} AND {recent})"
    return f"sum(CASE WHEN {of_t} AND {recent} THEN {clean} ELSE 0D END)"


def running_total(t: str, stat: str, over: str) -> str:
    """An all-time statistic at each as-of time, from its per-interval parts.

    ``over`` is the window of the contact's intervals so far, oldest first.
    """
    col = f"`{t}.{stat}`"
    if stat in ("n_all", "n_val", "s_all"):
        return f"sum({col}) {over}"
    if stat == "min_ts":
        return f"min({col}) {over}"
    if stat == "max_ts":
        return f"max({col}) {over}"
    if stat == "last_value":
        return f"(max({col}) {over}).v"
    raise ValueError(f'features: "{t}.{stat}" is not an all-time statistic')


def _zero_filled(stat: str) -> bool:
    # Counts and sums are 0 when nothing happened; times and the last value stay null.
    return stat not in ("min_ts", "max_ts", "last_value")


def feature_select(specs: Sequence[FeatureSpec]) -> list[str]:
    """The output columns of a snapshot, as in ``features.aggregates.build_sql``."""
    cols = [
        ENTITY_KEY,
        AS_OF_US,
        f"timestamp_micros({AS_OF_US}) AS {TIMESTAMP}",
        f"timestamp_micros({CREATED_US}) AS {CREATED}",
    ]
    cols += [typed_column(s, spark_expression(s.sql), AS_OF_US) for s in specs]
    return cols


def output_schema(specs: Sequence[FeatureSpec]) -> pa.Schema:
    """The Arrow schema of a snapshot file, as the DuckDB build writes it."""
    ts = pa.timestamp("us", tz="UTC")
    fields = [pa.field(ENTITY_KEY, pa.string()), pa.field(TIMESTAMP, ts), pa.field(CREATED, ts)]
    fields += [pa.field(s.name, pa.int64() if s.dtype == "int" else pa.float64()) for s in specs]
    return pa.schema(fields)


@dataclass
class SparkFeatureBuilder:
    """Reads the events with Spark and writes every snapshot of a build in one job.

    The interface of :class:`features.aggregates.FeatureBuilder` that
    :func:`features.aggregates.build_features` uses: ``first_event``, ``last_event``,
    ``n_events``, :meth:`snapshot_times`, :meth:`tables` and :meth:`close`.

    Args:
        params: the parsed params.yaml (``spark`` gives the session).
        events_path: Parquet events (engage.schema.EVENTS_SCHEMA).
        customers_path: Parquet customers, or None to derive first_seen from events.
        staging_dir: where Spark writes the snapshots before they are committed (a
            folder the driver can read; removed by :meth:`close`).
        session: an existing SparkSession (tests share one); default: from ``params``.
        unknown_money: the store has no amounts: money features null (as in DuckDB).

    """

    params: Params
    events_path: Path
    customers_path: Path | None
    staging_dir: Path
    session: SparkSession | None = None
    unknown_money: bool = False
    _owns_session: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.specs = build_specs(self.params, self.unknown_money)
        self._columns = stat_columns(self.specs)
        check_stats(self._columns, self.params.data.event_types)
        if not Path(self.events_path).exists():
            raise FileNotFoundError(
                f"events not found at {self.events_path}: run `engage data simulate`, "
                "`engage data cdnow` or `engage data ingest` first"
            )
        if self.session is None:
            self.session = spark_session(self.params.spark)
            self._owns_session = True
        spark = self.session
        ev = spark.read.parquet(str(Path(self.events_path).resolve()))
        ev = ev.selectExpr(
            ENTITY_KEY,
            "event_type",
            "unix_micros(event_time) AS ts",
            "CAST(value AS DOUBLE) AS value",
        )
        # Like the DuckDB build: the times and count of the events of the vocabulary.
        vocab = ev.where(ev.event_type.isin(list(self.params.data.event_types)))
        [row] = vocab.selectExpr("min(ts) AS lo", "max(ts) AS hi", "count(*) AS n").collect()
        if not row["n"]:
            raise ValueError(f"events: {self.events_path} holds no rows")
        self.first_event = pd.Timestamp(row["lo"], unit="us", tz="UTC")
        self.last_event = pd.Timestamp(row["hi"], unit="us", tz="UTC")
        self.n_events = int(row["n"])
        known = ev.groupBy(ENTITY_KEY).agg({"ts": "min"}).withColumnRenamed("min(ts)", "fs")
        if self.customers_path is not None and Path(self.customers_path).exists():
            cust = spark.read.parquet(str(Path(self.customers_path).resolve()))
            known = known.unionByName(cust.selectExpr(ENTITY_KEY, "unix_micros(first_seen) AS fs"))
        self._known = known.groupBy(ENTITY_KEY).agg({"fs": "min"})
        self._known = self._known.withColumnRenamed("min(fs)", FIRST_SEEN_US)
        # An event of a type outside the vocabulary feeds no feature (first_seen has it),
        # and one of a type no feature reads is never grouped.
        used = sorted({t for t, _ in self._columns})
        self._events = ev.where(ev.event_type.isin(used))

    def snapshot_times(self, now: pd.Timestamp | None = None) -> list[pd.Timestamp]:
        """Default as-of times for these events (see :func:`snapshot_times`)."""
        return default_snapshot_times(self.params, self.first_event, self.last_event, now)

    def frame(self, times: Sequence[pd.Timestamp], created: pd.Timestamp) -> DataFrame:
        """Every snapshot of ``times`` as one Spark DataFrame (column ``as_of_us``).

        All-time statistics: each event falls in one interval between consecutive as-of
        times; per contact and interval the events are aggregated once, and a running
        aggregate over the intervals (a window ordered by as-of time) gives the totals
        at every as-of time, as the DuckDB build folds them forward. Windowed
        statistics: each event joins only the as-of times within the longest window
        its type needs. So the work grows with the events times the snapshots inside
        one window, not with the whole history times the snapshots.
        """
        spark = self.session
        as_of = sorted({int(to_utc(t).value // 1000) for t in times})
        prev = [_LONG_MIN, *as_of[:-1]]
        snaps = spark.createDataFrame(
            list(zip(as_of, prev, strict=True)), f"{AS_OF_US} long, {_PREV_US} long"
        ).hint("broadcast")
        created_us = int(to_utc(created).value // 1000)
        totals = [(t, st) for t, st in self._columns if st in TOTAL_STATS]
        windowed = [(t, st) for t, st in self._columns if st not in TOTAL_STATS]
        ev = self._events

        # The dense grid: every contact known at each as-of time.
        grid = self._known.crossJoin(snaps).where(f"{FIRST_SEEN_US} < {AS_OF_US}")
        if totals:
            in_interval = (ev.ts >= snaps[_PREV_US]) & (ev.ts < snaps[AS_OF_US])
            aggs = [f"{stat_aggregate(t, st, running=True)} AS `{t}.{st}`" for t, st in totals]
            parts = (
                ev.join(snaps, in_interval)
                .groupBy(AS_OF_US, ENTITY_KEY)
                .agg(*[_expr(a) for a in aggs])
            )
            grid = grid.join(parts, [AS_OF_US, ENTITY_KEY], "left")
            so_far = (
                f"OVER (PARTITION BY {ENTITY_KEY} ORDER BY {AS_OF_US} "
                "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
            )
            running = [f"{running_total(t, st, so_far)} AS `{t}.{st}`" for t, st in totals]
            grid = grid.selectExpr(ENTITY_KEY, AS_OF_US, FIRST_SEEN_US, *running)
        if windowed:
            longest: dict[str, int] = {}
            for t, st in windowed:
                longest[t] = max(longest.get(t, 0), _window(st)[1])
            reach = " ".join(f"WHEN '{t}' THEN {d * DAY_US}" for t, d in longest.items())
            recent = ev.where(ev.event_type.isin(list(longest)))
            recent = recent.withColumn("reach", _expr(f"CASE event_type {reach} END"))
            in_reach = (recent.ts < snaps[AS_OF_US]) & (recent.ts >= snaps[AS_OF_US] - recent.reach)
            aggs = [f"{stat_aggregate(t, st)} AS `{t}.{st}`" for t, st in windowed]
            stats = (
                recent.join(snaps, in_reach)
                .groupBy(AS_OF_US, ENTITY_KEY)
                .agg(*[_expr(a) for a in aggs])
            )
            grid = grid.join(stats, [AS_OF_US, ENTITY_KEY], "left")
        fill = [
            f"coalesce(`{t}.{s}`, 0) AS `{t}.{s}`" if _zero_filled(s) else f"`{t}.{s}`"
            for t, s in self._columns
        ]
        wide = grid.selectExpr(
            ENTITY_KEY, AS_OF_US, FIRST_SEEN_US, f"{created_us} AS {CREATED_US}", *fill
        )
        return wide.selectExpr(*feature_select(self.specs))

    def tables(
        self, times: Sequence[pd.Timestamp], created: pd.Timestamp
    ) -> Iterator[tuple[pd.Timestamp, pa.Table]]:
        """Compute every snapshot in one Spark job, then yield them one at a time."""
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        frame = self.frame(times, created)
        frame.write.partitionBy(AS_OF_US).parquet(str(self.staging_dir))
        schema = output_schema(self.specs)
        for t in sorted(to_utc(t) for t in times):
            part = self.staging_dir / f"{AS_OF_US}={int(t.value // 1000)}"
            if part.exists():
                table = pq.read_table(part).sort_by(ENTITY_KEY)
                table = table.select(schema.names).cast(schema)
            else:  # nobody known yet at t: an empty snapshot, as the DuckDB build writes
                table = schema.empty_table()
            yield t, table

    def close(self) -> None:
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        if self._owns_session and self.session is not None:
            self.session.stop()


def _expr(sql: str):  # noqa: ANN202 - a pyspark Column
    from pyspark.sql import functions as F

    return F.expr(sql)
