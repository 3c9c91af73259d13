"""Batch scoring: every known contact of a snapshot through the champion models.

Each contact of the feature snapshot (the latest, or the last at/before ``as_of``) goes
through the decision core (:func:`serving.decision.decide`): ``p_purchase``,
``p_churn`` (customers only), stage, engagement score, dial position, segment, CLV,
value at risk and the top-k reasons, with the run id and the model versions used. This
module is the Arrow/Parquet adapter around it: it reads the snapshot in batches of
``scoring.batch_rows`` (bounded memory at 1M contacts) and streams the rows to a run
file (:mod:`serving.runs`, atomic: a killed run leaves nothing under the final name).

Each contact's stage in the previous run (the latest stored run before this snapshot,
read through :func:`serving.runs.previous_stages`) goes into the decision core, which
applies the stability rule of the index (hysteresis, minimum dwell) and counts the runs
each contact has spent in its stage (``stage_runs``).

With ``compute.engine: spark`` the same per-batch code (:func:`decide_frame`) runs on
Spark partitions (:func:`serving.spark_scoring.write_run_on_spark`), the previous
stages are joined there, and the rows reach the same run file in the same order with
the same id and metadata.

Features are read in bulk from the offline snapshot file, the very rows Feast
materialises into the online store for the latest snapshot, so batch and online scores
agree. The default run id is the snapshot date and a hash of what decides the scores
(as-of time, model versions, index/segment/value parameters, the hazard models' content
and horizons), so rescoring the same thing replaces the same run.

With hazard champions (:mod:`serving.timing`) every row also gets the horizon-named
time-to-event columns (``p_purchase_30d``, ``p_churn_7d``, ``days_to_churn``, ...) from
:func:`serving.timing.timing_columns`, the function ``/predict`` calls too; the run's
metadata records the decision horizon of ``p_purchase`` / ``p_churn`` and what it holds
of the hazard models.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engage.config import Params, Paths
from engage.specs import MODEL_SPECS
from features.catalog import ENTITY_KEY, TIMESTAMP
from features.snapshots import features_lock, pick_snapshot, to_utc
from serving.champions import Champions, load_champions, make_explainers, typical_by_half
from serving.decision import HALF, Decisions, Layout, decidable_rows, decide
from serving.explain import REASON_TYPE, Explainer
from serving.index import STAGES
from serving.runs import SCHEMA, check_run_id, previous_stages, run_path, run_schema, run_writer
from serving.runs import previous_run as run_before
from serving.segments import SEGMENTS
from serving.timing import Timing, load_timing, timing_columns

Progress = Callable[[int, int], None]
logger = logging.getLogger(__name__)


def empty_reasons(n: int) -> pa.ListArray:
    """``n`` empty reason lists (a run scored without reasons)."""
    return pa.ListArray.from_arrays(
        pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], type=REASON_TYPE)
    )


def _reasons_column(d: Decisions) -> pa.ListArray:
    n = len(d)
    if d.reasons is None:
        return empty_reasons(n)
    parts, order = [], []
    for rows, reasons in d.reasons.values():
        parts.append(reasons.to_arrow())
        order.append(rows)
    # Rows were explained per deciding model; put them back in input order.
    where = np.empty(n, dtype=np.int64)
    where[np.concatenate(order)] = np.arange(n)
    return pa.concat_arrays(parts).take(pa.array(where))


def to_arrow(
    d: Decisions,
    ids: np.ndarray,
    as_of: pd.Series,
    run_id: str,
    versions: dict[str, str],
    timing: pd.DataFrame | None = None,
) -> pa.Table:
    """The decisions of a batch as a table of the run schema (:func:`serving.runs.run_schema`).

    ``timing`` (the same rows, :func:`serving.timing.timing_columns`) adds its columns
    after the fixed ones.
    """
    n = len(d)

    def text(values: np.ndarray) -> pa.Array:
        return pa.array(np.asarray(values, dtype=object), type=pa.string())

    def const(value: str) -> pa.Array:
        return pa.array([value] * n, type=pa.string())

    columns = {
        ENTITY_KEY: pa.array(np.asarray(ids).astype(str), type=pa.string()),
        "as_of": pa.array(pd.to_datetime(as_of, utc=True), SCHEMA.field("as_of").type),
        "has_purchased": pa.array(d.has_purchased),
        "p_purchase": pa.array(d.probabilities["p_purchase"], type=pa.float64(), from_pandas=True),
        "p_churn": pa.array(d.probabilities["p_churn"], type=pa.float64(), from_pandas=True),
        "stage": text(np.asarray(STAGES, dtype=object)[d.stage]),
        "engagement_score": pa.array(d.engagement_score),
        "dial_position": pa.array(d.dial_position),
        "segment": text(np.asarray(SEGMENTS, dtype=object)[d.segment]),
        "clv": pa.array(d.clv),
        "value_at_risk": pa.array(d.value_at_risk),
        "lapsed": pa.array(d.lapsed if d.lapsed is not None else np.zeros(n, dtype=bool)),
        "reasons": _reasons_column(d),
        "run_id": const(run_id),
        "churn_version": const(versions.get("churn", "")),
        "appetence_version": const(versions.get("appetence", "")),
        "stage_runs": pa.array(
            np.ones(n, dtype="int32") if d.stage_runs is None else d.stage_runs, pa.int32()
        ),
    }
    if timing is None or timing.shape[1] == 0:
        return pa.table(columns, schema=SCHEMA)
    for name in timing.columns:
        columns[name] = pa.array(timing[name].to_numpy(dtype="float64"), from_pandas=True)
    return pa.table(columns, schema=run_schema(list(timing.columns)))


def score_batch(
    features: pd.DataFrame,
    champions: Champions,
    params: Params,
    explainers: dict[str, Explainer] | None = None,
    run_id: str = "",
    layout: Layout | None = None,
    timing: Timing | None = None,
) -> pa.Table:
    """Score one frame of snapshot rows; returns an Arrow table of the run schema.

    Args:
        features: snapshot rows (``customer_id``, ``event_timestamp`` and the features).
        champions: the models.
        params: the parsed params.yaml.
        explainers: per-model explainers; None or ``scoring.top_k_reasons = 0`` gives
            empty reason lists.
        run_id: written in the ``run_id`` column.
        layout: the decision matrix layout (default: :meth:`Layout.of` the champions).
        timing: hazard champions; their columns at ``hazard.horizons_days`` follow.

    Raises:
        ValueError: missing features or invalid probabilities.

    """
    if len(features) == 0:
        return run_schema(timing.columns() if timing else []).empty_table()
    layout = layout or Layout.of(champions)
    missing = [c for c in layout.inputs if c not in features.columns]
    if missing:
        raise ValueError(f"scoring: missing feature column(s) {missing[:10]}")
    X = features[layout.inputs].to_numpy(dtype="float64", na_value=np.nan)
    d = decide(X, layout, champions, params, explainers, params.scoring.top_k_reasons)
    extra = timing_columns(features, timing) if timing is not None else None
    return to_arrow(
        d, features[ENTITY_KEY].to_numpy(), features[TIMESTAMP], run_id, champions.versions, extra
    )


def decide_frame(
    frame: pd.DataFrame,
    champions: Champions,
    params: Params,
    explainers: dict[str, Explainer] | None,
    layout: Layout,
    run_id: str,
    previous_stage: np.ndarray,
    previous_runs: np.ndarray,
    timing: Timing | None = None,
) -> tuple[Decisions, pa.Table, np.ndarray, np.ndarray]:
    """Decide one batch of snapshot rows of a run, as ``engage score`` does on any engine.

    Rows of a half without its deciding model are left out (counted, never written
    with a made-up stage); the others go through :func:`serving.decision.decide` with
    their previous stage (the stability rule).

    Args:
        frame: snapshot rows (``customer_id``, ``event_timestamp``, ``layout.inputs``).
        champions: the models.
        params: the parsed params.yaml.
        explainers: per-model explainers, or None (no reasons).
        layout: :meth:`Layout.of` the champions.
        run_id: written in the ``run_id`` column.
        previous_stage: each row's stage code in the previous run (-1: unknown).
        previous_runs: runs spent in that stage (0: unknown).
        timing: hazard models whose columns (:func:`serving.timing.timing_columns`) the
            table gets; None or none loaded: no such columns.

    Returns:
        The decisions, their table of the run schema, the decided rows' matrix (for
        :class:`RangeCheck`) and the mask of the decided rows among ``frame``'s.

    """
    X = frame[layout.inputs].to_numpy(dtype="float64", na_value=np.nan)
    keep = np.ones(len(frame), dtype=bool)
    if champions.missing:
        keep = decidable_rows(X, layout, champions)
        frame, X = frame[keep], X[keep]
        previous_stage, previous_runs = previous_stage[keep], previous_runs[keep]
    d = decide(
        X,
        layout,
        champions,
        params,
        explainers,
        params.scoring.top_k_reasons,
        previous_stage=previous_stage,
        previous_runs=previous_runs,
    )
    table = to_arrow(
        d,
        frame[ENTITY_KEY].to_numpy(),
        frame[TIMESTAMP],
        run_id,
        champions.versions,
        timing_columns(frame, timing) if timing is not None and timing.models else None,
    )
    return d, table, X, keep


def score_frame(
    features: pd.DataFrame,
    champions: Champions,
    params: Params,
    explainers: dict[str, Explainer] | None = None,
    timing: Timing | None = None,
) -> pd.DataFrame:
    """:func:`score_batch` as a pandas frame (reasons as lists of dicts)."""
    return score_batch(features, champions, params, explainers, timing=timing).to_pandas()


def decision_horizons(champions: Champions) -> dict[str, int]:
    """The horizon (days) of each fixed probability column: ``{"p_churn": 30, ...}``."""
    return {
        MODEL_SPECS[m].probability: int(model.horizon_days) for m, model in champions.models.items()
    }


def default_run_id(
    as_of: pd.Timestamp,
    models: dict[str, str],
    params: Params,
    previous_run: str | None = None,
    timing: dict | None = None,
) -> str:
    """``<as-of date>-<hash>``: the same snapshot, models, rules and previous run give the same id.

    ``models`` is :attr:`serving.champions.Champions.identity` (version, horizon and a
    digest of each model's content), so a model that answers differently, or for another
    horizon, gives another run id even under the same version number. The previous run
    counts because the stability rule reads its stages. ``timing`` is
    :func:`timing_identity` of the hazard champions (versions, digests, horizons), when
    any is present.
    """
    decided_by = {
        "as_of": to_utc(as_of).isoformat(),
        "models": models,
        "index": params.index.model_dump(),
        "segments": params.segments.model_dump(),
        "value": params.value.model_dump(),
        "top_k": params.scoring.top_k_reasons,
        "reason_tolerance": params.scoring.reason_typical_tolerance,
        "previous_run": previous_run,
    }
    if timing:
        # Only with hazard champions: runs without them keep the ids they always had.
        decided_by["timing"] = timing
    digest = hashlib.sha1(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()[:8]
    return f"{to_utc(as_of):%Y%m%d}-{digest}"


def timing_identity(timing: Timing | None) -> dict | None:
    """What of the hazard champions decides the run id: identities and horizons (None: none)."""
    if timing is None or not timing.models:
        return None
    return {"models": timing.identity, "horizons_days": list(timing.horizons_days)}


def planned_run_id(
    paths: Paths,
    params: Params,
    as_of: pd.Timestamp,
    models: dict[str, str],
    timing: Timing | None = None,
) -> str:
    """The default run id :func:`score` gives the snapshot at ``as_of`` with these models.

    It includes the previous stored run (the stability rule reads its stages), so a
    caller can tell whether that exact run is already stored before scoring; ``timing``
    must be the hazard champions :func:`score` is given.
    """
    previous = run_before(paths, to_utc(as_of))
    return default_run_id(
        as_of, models, params, previous.run_id if previous else None, timing_identity(timing)
    )


@dataclass
class ScoreRun:
    """What a scoring run wrote.

    Attributes:
        lapsed: customers outside the churn model's population (win-back list).
        out_of_range: per model, the scored rows outside each feature's training range
            (features with at least one such row).
        scored: per model, the rows it scored.
        warnings: one line per model and feature whose out-of-range share reaches
            ``scoring.range_warning_share`` (also logged and kept in the run's metadata).
        timing: what the run holds of the hazard models
            (:meth:`serving.timing.Timing.describe`: horizons, columns, missing ones).
        missing: the models with no champion (their half of the index is not decided).
        undecided: the snapshot's contacts of that half, left out of the run (counted
            in its metadata, never written with a made-up stage).

    """

    run_id: str
    path: Path
    as_of: pd.Timestamp
    scored_at: pd.Timestamp
    rows: int
    versions: dict[str, str]
    seconds: float
    stages: dict[str, int] = field(default_factory=dict)
    segments: dict[str, int] = field(default_factory=dict)
    previous_run: str | None = None
    lapsed: int = 0
    out_of_range: dict[str, dict[str, int]] = field(default_factory=dict)
    scored: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    undecided: int = 0
    timing: dict = field(default_factory=dict)


class RangeCheck:
    """Counts, per model and feature, the scored rows outside the training range.

    Trees do not extrapolate: a row beyond the range a LightGBM model was fitted on gets
    the prediction of the range's edge (e.g. the tenure of a cohort older than any it was
    trained on), so such rows are counted and the largest shares reported.
    """

    def __init__(self, champions: Champions, layout: Layout) -> None:
        self.champions, self.layout = champions, layout
        self.counts: dict[str, dict[str, int]] = {name: {} for name in champions.models}
        self.rows: dict[str, int] = dict.fromkeys(champions.models, 0)

    def add(self, X: np.ndarray) -> None:
        """Count the rows of one batch (the decision matrix) in each model's population."""
        half = X[:, self.layout.columns[HALF]]
        for name, model in self.champions.models.items():
            spec = MODEL_SPECS[name]
            rows = np.ones(len(X), dtype=bool) if spec.scores_everyone else half == spec.half
            population = self.layout.populations.get(name)
            if population is not None:
                # Rows outside the model's population (lapsed customers) are outside its
                # training range by definition: not a sign of extrapolation.
                cols, days = population
                with np.errstate(invalid="ignore"):
                    rows &= (X[:, cols] <= days).any(axis=1)
            x = X[np.ix_(rows, self.layout.model_columns[name])]
            self.rows[name] += len(x)
            for feature, n in model.out_of_range(x).items():
                self.counts[name][feature] = self.counts[name].get(feature, 0) + n

    def merge(self, counts: dict[str, dict[str, int]], rows: dict[str, int]) -> None:
        """Add the counts of another :class:`RangeCheck` (e.g. one per Spark partition)."""
        for name, by_feature in counts.items():
            mine = self.counts.setdefault(name, {})
            for feature, n in by_feature.items():
                mine[feature] = mine.get(feature, 0) + int(n)
        for name, n in rows.items():
            self.rows[name] = self.rows.get(name, 0) + int(n)

    def warnings(self, share: float) -> list[str]:
        """One line per model: the features whose out-of-range share reaches ``share``."""
        out = []
        for name, counts in self.counts.items():
            total = max(self.rows[name], 1)
            ranges = self.champions[name].feature_ranges()
            hot = sorted(((n, f) for f, n in counts.items() if n / total >= share), reverse=True)
            if not hot:
                continue
            parts = [
                f"{f} {n:,} rows ({n / total:.1%}; trained on {_num(ranges[f][0])}.."
                f"{_num(ranges[f][1])})"
                for n, f in hot[:8]
            ]
            more = f" and {len(hot) - 8} more" if len(hot) > 8 else ""
            out.append(
                f"{name}: scored rows outside the training range of {len(hot)} feature(s): "
                + ", ".join(parts)
                + more
            )
        return out


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 or v == round(v) else f"{v:.3g}"


def score(
    paths: Paths,
    params: Params,
    as_of: pd.Timestamp | str | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
    champions: Champions | None = None,
    timing: Timing | None = None,
    session: object | None = None,
) -> ScoreRun:
    """Score every contact of a snapshot and write ``scores/run=<run_id>.parquet``.

    ``params.compute.engine`` picks where the rows are decided: on this host, or on
    Spark partitions (:func:`serving.spark_scoring.write_run_on_spark`); both write the
    same run (rows, order, run id, metadata).

    Args:
        paths: resolved locations.
        params: the parsed params.yaml.
        as_of: use the latest snapshot at or before this time (default: the latest).
        run_id: the run id (default: :func:`default_run_id`); an existing run with this
            id is replaced.
        progress: called with (rows done, total rows) after each batch.
        champions: models to use (default: the registry's champions).
        timing: hazard models to use (default: the registry's hazard champions, if any):
            their columns at ``hazard.horizons_days`` are added to the run (not yet on
            the Spark engine).
        session: the SparkSession when the engine is Spark (default: the active one, or
            one at ``spark.master``, stopped at the end).

    Returns:
        The run's id, path, as-of time, row count, model versions and stage / segment
        counts.

    Raises:
        FileNotFoundError: no snapshot.
        LookupError: no champion model at all (with only some, the half of the index
            they decide is scored and :attr:`ScoreRun.missing` names the others).
        ValueError: a bad run id, missing features, invalid probabilities, or params
            that contradict what a champion was trained for.
        engage.locks.StoreBusyError: a features build, or another run with this id,
            held its lock for longer than ``data.lock_timeout_s``.

    """
    start = time.perf_counter()
    if run_id is not None:
        check_run_id(run_id)
    timeout = params.data.lock_timeout_s
    # Shared: no features build replaces the snapshot while it is read.
    with features_lock(paths.features_dir, timeout=timeout, shared=True):
        return _score(paths, params, as_of, run_id, progress, champions, timing, start, session)


def _score(
    paths: Paths,
    params: Params,
    as_of: pd.Timestamp | str | None,
    run_id: str | None,
    progress: Progress | None,
    champions: Champions | None,
    timing: Timing | None,
    start: float,
    session: object | None = None,
) -> ScoreRun:
    snap = pick_snapshot(paths.features_dir, as_of)
    if champions is None:
        from training.registry import relocate_artifacts

        # A batch command may write: a copied or moved store follows its folder first.
        relocate_artifacts(paths)
        champions = load_champions(paths, params, allow_missing=True)
    if params.compute.engine == "spark":
        # The Spark scorer does not compute the hazard columns yet: the run names both
        # hazard models missing rather than writing a partial schema.
        timing = Timing.of({}, params)
    elif timing is None:
        timing = load_timing(paths, params)
    # The stability rule compares with the latest run before this snapshot (its stages
    # are read below, on this host or on Spark).
    before_run = run_before(paths, snap.as_of)
    previous_id = before_run.run_id if before_run else None
    run_id = run_id or default_run_id(
        snap.as_of, champions.identity, params, previous_id, timing_identity(timing)
    )
    scored_at = pd.Timestamp.now(tz="UTC")
    explainers = typical = None
    if params.scoring.top_k_reasons > 0:
        typical = typical_by_half(snap.path, champions.features)
        explainers = make_explainers(champions, params, typical)
    layout = Layout.of(champions)
    columns = list(dict.fromkeys([ENTITY_KEY, TIMESTAMP, *layout.inputs, *timing.features]))
    schema = run_schema(timing.columns())
    source = pq.ParquetFile(snap.path)
    missing = [c for c in columns if c not in source.schema_arrow.names]
    if missing:
        raise ValueError(f"snapshot {snap.path.name}: missing column(s) {missing[:10]}")
    total = source.metadata.num_rows
    meta = {
        "run_id": run_id,
        "as_of": snap.as_of.isoformat(),
        "scored_at": scored_at.isoformat(),
        "versions": champions.versions,
        "features_file": snap.path.name,
        "rows": total,
        "top_k_reasons": params.scoring.top_k_reasons,
        # What the models answer (horizon, label rule): the monitor labels the run with it.
        "trained_for": {m: model.trained_for for m, model in champions.models.items()},
        "previous_run": previous_id,
        "missing_models": list(champions.missing),
        # Every probability names its horizon: the fixed ones here, the hazard models'
        # in their column names (p_purchase_30d), listed under "timing".
        "decision_horizon_days": decision_horizons(champions),
        "timing": timing.describe(),
    }
    stage_counts = np.zeros(len(STAGES), dtype=np.int64)
    segment_counts = np.zeros(len(SEGMENTS), dtype=np.int64)
    done = lapsed = undecided = 0
    check = RangeCheck(champions, layout)

    def extra_meta() -> dict:
        # Written into the file's metadata once every batch is counted.
        return {
            "lapsed": lapsed,
            "undecided": undecided,
            "out_of_range": check.counts,
            "scored": check.rows,
            "warnings": check.warnings(params.scoring.range_warning_share),
        }

    with run_writer(
        paths, run_id, meta, extra_meta, timeout=params.data.lock_timeout_s, schema=schema
    ) as write:
        if params.compute.engine == "spark":
            from serving.spark_scoring import write_run_on_spark

            tally = write_run_on_spark(
                paths, params, snap, champions, run_id, typical, write, progress, session
            )
            stage_counts += tally.stages
            segment_counts += tally.segments
            lapsed, done, undecided = tally.lapsed, tally.rows, tally.undecided
            check.merge(tally.out_of_range, tally.scored)
        else:
            previous = previous_stages(paths, snap.as_of)
            for batch in source.iter_batches(batch_size=params.scoring.batch_rows, columns=columns):
                frame = batch.to_pandas()
                before, before_runs = previous.lookup(frame[ENTITY_KEY].to_numpy())
                d, table, X, kept = decide_frame(
                    frame,
                    champions,
                    params,
                    explainers,
                    layout,
                    run_id,
                    before,
                    before_runs,
                    timing,
                )
                write(table)
                check.add(X)
                stage_counts += np.bincount(d.stage, minlength=len(STAGES))
                segment_counts += np.bincount(d.segment, minlength=len(SEGMENTS))
                lapsed += int(d.lapsed.sum())
                undecided += int((~kept).sum())
                done += len(table)
                if progress:
                    progress(done + undecided, total)
    warnings = check.warnings(params.scoring.range_warning_share)
    for line in warnings:
        logger.warning("run %s: %s", run_id, line)
    return ScoreRun(
        run_id=run_id,
        path=run_path(paths, run_id),
        as_of=snap.as_of,
        scored_at=scored_at,
        rows=done,
        versions=dict(champions.versions),
        seconds=time.perf_counter() - start,
        stages=dict(zip(STAGES, stage_counts.tolist(), strict=True)),
        segments=dict(zip(SEGMENTS, segment_counts.tolist(), strict=True)),
        previous_run=previous_id,
        lapsed=lapsed,
        out_of_range=check.counts,
        scored=check.rows,
        warnings=warnings,
        missing=list(champions.missing),
        undecided=undecided,
        timing=timing.describe(),
    )
