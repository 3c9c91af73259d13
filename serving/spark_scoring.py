"""Batch scoring distributed over Spark partitions, with the decision code of one host.

:func:`score_on_spark` reads a feature snapshot with Spark and runs
:func:`serving.scoring.score_batch` (probabilities, stage, segment, value, reasons, via
:func:`serving.decision.decide`) on each partition's Arrow batches
(``DataFrame.mapInArrow``: the ``reasons`` column is a list of structs, which Arrow
carries as it is). The champions travel to the executors as their text and JSON files
(:func:`training.model.write_model_dir`, shipped with ``SparkContext.addFile``) and are
read back there with :func:`training.model.read_model_dir`: nothing is unpickled.

It returns a Spark DataFrame of the run schema (:data:`serving.runs.SCHEMA`), equal to
:func:`~serving.scoring.score_batch` on the same rows (``tests/test_spark_scoring.py``).

``engage score`` on the Spark engine goes through :func:`write_run_on_spark`: the
previous run's stages are joined to the snapshot on Spark (the stability rule), each
partition decides its rows with :func:`serving.scoring.decide_frame` (the code of the
local scorer), Spark writes the rows in snapshot order to a staging folder, and the
driver streams them into the run file of :mod:`serving.runs` (atomic, same id, same
metadata), one batch at a time: the driver never holds the run.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engage.config import Params, Paths
from features.catalog import ENTITY_KEY, TIMESTAMP
from serving.champions import Champions
from serving.decision import Layout
from serving.index import STAGES
from serving.runs import RUN_PREFIX, SCHEMA, previous_run
from serving.segments import SEGMENTS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from features.snapshots import Snapshot


def score_on_spark(
    session: SparkSession,
    snapshot: Path,
    champions: Champions,
    params: Params,
    staging_dir: Path,
    run_id: str = "",
    typical: dict[str, dict[str, float]] | None = None,
) -> DataFrame:
    """Score every row of a snapshot file on Spark; a lazy DataFrame of the run schema.

    Args:
        session: the SparkSession.
        snapshot: a snapshot Parquet file (``features.snapshots``).
        champions: the models (e.g. :func:`serving.champions.load_champions`).
        params: the parsed params.yaml.
        staging_dir: a folder for the model files shipped to the executors.
        run_id: written in the ``run_id`` column.
        typical: the explainers' typical values
            (:func:`serving.champions.typical_by_half`); None gives no reasons.

    Raises:
        ValueError: the snapshot lacks a model input.

    """
    from pyspark.sql.pandas.types import from_arrow_schema

    inputs = Layout.of(champions).inputs
    df = session.read.parquet(str(Path(snapshot).resolve()))
    missing = [c for c in [ENTITY_KEY, TIMESTAMP, *inputs] if c not in df.columns]
    if missing:
        raise ValueError(f"snapshot {Path(snapshot).name}: missing column(s) {missing[:10]}")
    shipped = _ship(
        session, champions, Path(staging_dir) / f"engage-models-{uuid.uuid4().hex[:12]}"
    )

    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from serving.champions import make_explainers
        from serving.scoring import score_batch

        models = shipped.load()
        layout = Layout.of(models)
        explainers = make_explainers(models, params, typical) if typical is not None else None
        for batch in batches:
            table = score_batch(batch.to_pandas(), models, params, explainers, run_id, layout)
            yield from table.to_batches()

    columns = df.select(ENTITY_KEY, TIMESTAMP, *inputs)
    return columns.mapInArrow(score_partition, from_arrow_schema(SCHEMA))


@dataclass(frozen=True)
class _Shipped:
    """Champions shipped to the executors as their text and JSON model folders."""

    folder: str
    names: tuple[str, ...]
    versions: dict[str, str]

    def load(self) -> Champions:
        """On an executor: the models read back from the shipped files (nothing unpickled)."""
        from pyspark import SparkFiles

        from training.model import read_model_dir

        root = Path(SparkFiles.get(self.folder))
        return Champions({n: read_model_dir(root / n) for n in self.names}, self.versions)


def _ship(session: SparkSession, champions: Champions, folder: Path) -> _Shipped:
    # A folder per call: addFile refuses a second, different file under the same name.
    from training.model import write_model_dir

    for name in champions.models:
        write_model_dir(champions[name], folder / name)
    session.sparkContext.addFile(str(folder), recursive=True)
    return _Shipped(folder.name, tuple(champions.models), dict(champions.versions))


def remove_shipped_models(staging_dir: Path) -> None:
    """Delete the model folders :func:`score_on_spark` wrote under ``staging_dir``."""
    for folder in Path(staging_dir).glob("engage-models-*"):
        shutil.rmtree(folder, ignore_errors=True)


ROW = "_row"  # the snapshot row number: the run keeps the snapshot's order
PREV_CODE = "_prev_stage"
PREV_RUNS = "_prev_runs"


@dataclass
class SparkTally:
    """What the driver counted while streaming a Spark run into its file.

    ``stages`` and ``segments`` are counts in the order of :data:`serving.index.STAGES`
    and :data:`serving.segments.SEGMENTS`; ``out_of_range`` and ``scored`` are the
    summed :class:`serving.scoring.RangeCheck` counts of the partitions.
    """

    rows: int
    undecided: int
    lapsed: int
    stages: np.ndarray
    segments: np.ndarray
    out_of_range: dict[str, dict[str, int]]
    scored: dict[str, int]


@contextlib.contextmanager
def _session_scope(params: Params, session: SparkSession | None) -> Iterator[SparkSession]:
    # A session given or already active (a notebook, the tests) is the caller's to
    # stop; one started here is stopped here.
    if session is not None:
        yield session
        return
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    from features.spark_build import spark_session

    started = spark_session(params.spark, app_name="engage-score")
    try:
        yield started
    finally:
        started.stop()


def _previous_stages(session: SparkSession, paths: Paths, as_of) -> DataFrame | None:
    """The previous run's stage code and runs in stage per contact, or None.

    Checked like :func:`serving.runs.previous_stages`, but on Spark: the previous run
    never reaches the driver.

    Raises:
        ValueError: a stage name that is not a stage, or a contact twice.

    """
    from pyspark.sql import functions as F

    info = previous_run(paths, as_of)
    if info is None:
        return None
    prev = session.read.parquet(str(info.path.resolve()))
    runs = F.col("stage_runs") if "stage_runs" in prev.columns else F.lit(0)
    codes = F.when(F.lit(False), F.lit(None))
    for code, name in enumerate(STAGES):
        codes = codes.when(F.col("stage") == name, F.lit(code))
    prev = prev.select(
        F.col(ENTITY_KEY).cast("string").alias(ENTITY_KEY),
        codes.cast("byte").alias(PREV_CODE),
        F.coalesce(runs, F.lit(0)).cast("int").alias(PREV_RUNS),
    )
    [row] = prev.agg(
        F.count_if(F.col(PREV_CODE).isNull()).alias("unknown"),
        F.count(F.lit(1)).alias("rows"),
        F.countDistinct(ENTITY_KEY).alias("ids"),
    ).collect()
    if row["unknown"]:
        raise ValueError(
            f"run {info.run_id}: stage: {row['unknown']} row(s) not one of {list(STAGES)}"
        )
    if row["rows"] != row["ids"]:
        raise ValueError(
            f"run {info.run_id}: customer_id: {row['rows'] - row['ids']} duplicated row(s)"
        )
    return prev


def write_run_on_spark(
    paths: Paths,
    params: Params,
    snapshot: Snapshot,
    champions: Champions,
    run_id: str,
    typical: dict[str, dict[str, float]] | None,
    write: Callable[[pa.Table], None],
    progress: Callable[[int, int], None] | None = None,
    session: SparkSession | None = None,
) -> SparkTally:
    """Decide every row of ``snapshot`` on Spark and stream the run into ``write``.

    The caller (:func:`serving.scoring.score`) holds the run's lock and writer
    (:func:`serving.runs.run_writer`) and has fixed the run id and metadata exactly
    as for the local engine; this function replaces only the loop over the rows.

    Args:
        paths: resolved locations (the previous run is read from the scores folder).
        params: the parsed params.yaml.
        snapshot: the snapshot being scored (:func:`features.snapshots.pick_snapshot`).
        champions: the models.
        run_id: the run id (written in every row).
        typical: the explainers' typical values; None gives no reasons.
        write: the run writer's ``write(table)``.
        progress: called with (rows done, total rows) after each batch written.
        session: a SparkSession (default: the active one, or one at ``spark.master``).

    Returns:
        The counts the run summary and metadata need.

    Raises:
        ValueError: the previous run holds an unknown stage or a contact twice, or the
            snapshot lacks a model input.

    """
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    layout = Layout.of(champions)
    inputs = layout.inputs
    # Under the run's lock: a killed run's leftovers of the same id are ours to clear.
    staging = paths.scores_dir / f".spark_staging-{RUN_PREFIX}{run_id}"
    shutil.rmtree(staging, ignore_errors=True)
    rows_dir = staging / "rows"
    with _session_scope(params, session) as spark:
        try:
            snap = spark.read.parquet(str(snapshot.path.resolve()))
            missing = [c for c in [ENTITY_KEY, TIMESTAMP, *inputs] if c not in snap.columns]
            if missing:
                raise ValueError(f"snapshot {snapshot.path.name}: missing column(s) {missing[:10]}")
            frame = snap.select(
                ENTITY_KEY, TIMESTAMP, *inputs, F.col("_metadata.row_index").alias(ROW)
            )
            prev = _previous_stages(spark, paths, snapshot.as_of)
            if prev is not None:
                frame = frame.join(prev, ENTITY_KEY, "left")
            else:
                frame = frame.select(
                    "*",
                    F.lit(None).cast("byte").alias(PREV_CODE),
                    F.lit(None).cast("int").alias(PREV_RUNS),
                )
            shipped = _ship(spark, champions, staging / f"models-{uuid.uuid4().hex[:12]}")
            top_k = params.scoring.top_k_reasons

            def decide_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
                from serving.champions import make_explainers
                from serving.scoring import decide_frame

                models = shipped.load()
                here = Layout.of(models)
                explainers = (
                    make_explainers(models, params, typical)
                    if typical is not None and top_k > 0
                    else None
                )
                for batch in batches:
                    rows = batch.to_pandas()
                    before = rows[PREV_CODE].fillna(-1).to_numpy(dtype="int8")
                    before_runs = rows[PREV_RUNS].fillna(0).to_numpy(dtype="int32")
                    _, table, _, kept = decide_frame(
                        rows, models, params, explainers, here, run_id, before, before_runs
                    )
                    order = rows[ROW].to_numpy()[kept]
                    yield from table.append_column(ROW, pa.array(order, pa.int64())).to_batches()

            def check_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
                # The run's metadata counts (rows outside the training ranges, rows left
                # out): one small row per partition, summed on the driver.
                from serving.decision import decidable_rows
                from serving.scoring import RangeCheck

                models = shipped.load()
                here = Layout.of(models)
                check = RangeCheck(models, here)
                left_out = 0
                for batch in batches:
                    X = batch.to_pandas()[here.inputs].to_numpy(dtype="float64", na_value=np.nan)
                    if models.missing:
                        keep = decidable_rows(X, here, models)
                        left_out += int((~keep).sum())
                        X = X[keep]
                    check.add(X)
                counts = {"counts": check.counts, "rows": check.rows, "left_out": left_out}
                yield pa.record_batch([pa.array([json.dumps(counts)])], names=["counts"])

            out_schema = from_arrow_schema(SCHEMA.append(pa.field(ROW, pa.int64())))
            scored = frame.mapInArrow(decide_partition, out_schema)
            # Sorted by snapshot row: Spark's range partitions come out as part files in
            # order, so the run holds the rows in the order the local scorer writes them.
            scored.orderBy(ROW).write.mode("overwrite").parquet(str(rows_dir))
            parts = snap.select(*inputs).mapInArrow(check_partition, "counts string").collect()
            return _stream(rows_dir, params, write, progress, parts)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _stream(
    rows_dir: Path,
    params: Params,
    write: Callable[[pa.Table], None],
    progress: Callable[[int, int], None] | None,
    parts: list,
) -> SparkTally:
    """Copy Spark's part files, in order, into the run writer; count as the local run."""
    counts: dict[str, dict[str, int]] = {}
    scored: dict[str, int] = {}
    undecided = 0
    for part in parts:
        got = json.loads(part["counts"])
        undecided += got["left_out"]
        for name, by_feature in got["counts"].items():
            mine = counts.setdefault(name, {})
            for feature, n in by_feature.items():
                mine[feature] = mine.get(feature, 0) + n
        for name, n in got["rows"].items():
            scored[name] = scored.get(name, 0) + n
    files = sorted(rows_dir.glob("part-*.parquet"))
    total = sum(pq.read_metadata(f).num_rows for f in files) + undecided
    stages = np.zeros(len(STAGES), dtype=np.int64)
    segments = np.zeros(len(SEGMENTS), dtype=np.int64)
    done = lapsed = 0
    last = -1
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=params.scoring.batch_rows):
            table = pa.Table.from_batches([batch])
            order = table.column(ROW).to_numpy()
            if len(order) and (order[0] <= last or np.any(np.diff(order) <= 0)):
                raise RuntimeError(f"{rows_dir}: Spark's part files are out of order at {f.name}")
            last = int(order[-1]) if len(order) else last
            table = table.select(SCHEMA.names).cast(SCHEMA)
            write(table)
            stages += _counts(table.column("stage"), STAGES)
            segments += _counts(table.column("segment"), SEGMENTS)
            lapsed += int(pc.sum(table.column("lapsed")).as_py() or 0)
            done += table.num_rows
            if progress:
                progress(done + undecided, total)
    return SparkTally(done, undecided, lapsed, stages, segments, counts, scored)


def _counts(column: pa.ChunkedArray, names: tuple[str, ...] | list[str]) -> np.ndarray:
    out = np.zeros(len(names), dtype=np.int64)
    for item in pc.value_counts(column).to_pylist():
        out[list(names).index(item["values"])] += item["counts"]
    return out
