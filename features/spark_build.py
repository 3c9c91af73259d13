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

How it runs: the events are joined to the as-of times (``event_time < as_of``) and
grouped by as-of time and contact, giving one row of statistics per contact and time;
every known contact (first seen before the as-of time) gets a row, zero-filled where it
did nothing, and the feature expressions turn it into the snapshot. Spark writes the
result partitioned by as-of time under a staging folder next to the features; each
snapshot is then read back one at a time (so the driver holds one snapshot, never the
events), sorted by ``customer_id`` like the DuckDB build, cast to the same Arrow schema
and handed to :class:`features.snapshots.SnapshotSet`, which owns the files.

Not yet: the join repeats each event once per later as-of time, so the work grows with
``events x snapshots``; the DuckDB build folds the all-time statistics forward instead.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engage.config import Params, SparkParams
from features.aggregates import TOTAL_STATS, _window, check_stats, snapshot_times
from features.catalog import (
    CREATED,
    DAY_US,
    ENTITY_KEY,
    FIRST_SEEN_US,
    SNAPSHOT_TIME,
    TIMESTAMP,
    FeatureSpec,
    feature_specs,
    stat_columns,
)
from features.snapshots import to_utc

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

AS_OF_US = "as_of_us"
CREATED_US = "created_us"
_STAT_REF = re.compile(r'"([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)"')
_STAGING = ".spark_staging"


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


def stat_aggregate(t: str, stat: str) -> str:
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
        return f"max(CASE WHEN {_valued(t)} THEN named_struct('ts', ts, 'v', value) END).v"
    window = _window(stat)
    if window is None:
        raise ValueError(f'features: "{t}.{stat}" reads an unknown statistic')
    kind, days = window
    recent = f"ts >= {AS_OF_US} - {days * DAY_US}"
    if kind == "n":
        return f"count_if({of_t} AND {recent})"
    return f"sum(CASE WHEN {of_t} AND {recent} THEN {clean} ELSE 0D END)"


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
    for s in specs:
        expr = spark_expression(s.sql)
        if s.name == SNAPSHOT_TIME:
            cols.append(f"({AS_OF_US} / 1e6)::DOUBLE AS {SNAPSHOT_TIME}")
        elif s.dtype == "int":
            cols.append(f"coalesce({expr}, 0)::BIGINT AS {s.name}")
        elif s.zero:
            cols.append(f"coalesce({expr}, 0)::DOUBLE AS {s.name}")
        else:
            cols.append(f"({expr})::DOUBLE AS {s.name}")
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

    """

    params: Params
    events_path: Path
    customers_path: Path | None
    staging_dir: Path
    session: SparkSession | None = None
    _owns_session: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.specs = feature_specs(self.params)
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
        [row] = ev.selectExpr("min(ts) AS lo", "max(ts) AS hi", "count(*) AS n").collect()
        if not row["n"]:
            raise ValueError(f"events: {self.events_path} holds no rows")
        self.first_event = pd.Timestamp(row["lo"], unit="us", tz="UTC")
        self.last_event = pd.Timestamp(row["hi"], unit="us", tz="UTC")
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
        self.n_events = int(
            ev.where(ev.event_type.isin(list(self.params.data.event_types))).count()
        )

    def snapshot_times(self, now: pd.Timestamp | None = None) -> list[pd.Timestamp]:
        """Default as-of times for these events (see :func:`snapshot_times`)."""
        fp = self.params.features
        return snapshot_times(
            self.first_event,
            self.last_event,
            fp.snapshot_every_days,
            fp.max_snapshots,
            now,
            self.params.labels.horizon_days,
            fp.min_labelled_snapshots,
        )

    def frame(self, times: Sequence[pd.Timestamp], created: pd.Timestamp) -> DataFrame:
        """Every snapshot of ``times`` as one Spark DataFrame (column ``as_of_us``)."""
        spark = self.session
        as_of = [int(to_utc(t).value // 1000) for t in times]
        snaps = spark.createDataFrame([(t,) for t in as_of], f"{AS_OF_US} long")
        created_us = int(to_utc(created).value // 1000)
        aggs = [
            f"{stat_aggregate(t, stat)} AS `{t}.{stat}`"
            for t, stat in self._columns
            if stat in TOTAL_STATS or _window(stat)
        ]
        joined = self._events.join(snaps.hint("broadcast"), self._events.ts < snaps[AS_OF_US])
        stats = joined.groupBy(AS_OF_US, ENTITY_KEY).agg(
            *[_expr(a) for a in aggs]  # one pass over the joined events
        )
        rows = self._known.crossJoin(snaps.hint("broadcast")).where(f"{FIRST_SEEN_US} < {AS_OF_US}")
        wide = rows.join(stats, [AS_OF_US, ENTITY_KEY], "left")
        fill = [
            f"coalesce(`{t}.{s}`, 0) AS `{t}.{s}`" if _zero_filled(s) else f"`{t}.{s}`"
            for t, s in self._columns
        ]
        wide = wide.selectExpr(
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
