"""Batch scoring: every known contact of a snapshot through both champion models.

Each contact of the feature snapshot (the latest, or the last at/before ``as_of``) gets
``p_purchase`` (appetence model, every contact), ``p_churn`` (churn model, customers
only; null for prospects), its stage, engagement score and dial position
(:mod:`serving.index`), its lifecycle segment (:mod:`serving.segments`), CLV and value at
risk (:mod:`serving.value`) and its top-k reasons (:mod:`serving.explain`), with the run
id and the model versions used.

Features are read in bulk from the offline snapshot file, the very rows Feast
materialises into the online store for the latest snapshot, so batch and online scores
agree. Rows are processed in batches of ``scoring.batch_rows`` (bounded memory at 1M
contacts) and streamed to ``<scores dir>/.run=<id>.parquet.tmp``, renamed to
``run=<id>.parquet`` only when complete: a failed or killed run never leaves a partial
table under the final name, and a rerun with the same run id replaces the file (one copy,
earlier runs kept as history). The default run id is the snapshot date and a hash of
what decides the scores (as-of time, model versions, index/segment/value parameters), so
rescoring the same thing replaces the same run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engage.config import Params, Paths
from features.catalog import ENTITY_KEY, TIMESTAMP
from features.snapshots import pick_snapshot, to_utc
from serving.explain import REASON_TYPE, Explainer
from serving.index import STAGES, engagement_index
from serving.segments import REQUIRED as SEGMENT_COLUMNS
from serving.segments import SEGMENTS, assign_segments
from serving.value import REQUIRED as VALUE_COLUMNS
from serving.value import customer_value
from training.model import EngageModel

MODELS = ("churn", "appetence")
RUN_GLOB = "run=*.parquet"
META_KEY = b"engage.scoring"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

SCHEMA = pa.schema(
    [
        (ENTITY_KEY, pa.string()),
        ("as_of", pa.timestamp("us", tz="UTC")),
        ("has_purchased", pa.int8()),
        ("p_purchase", pa.float64()),
        ("p_churn", pa.float64()),
        ("stage", pa.string()),
        ("engagement_score", pa.float64()),
        ("dial_position", pa.float64()),
        ("segment", pa.string()),
        ("clv", pa.float64()),
        ("value_at_risk", pa.float64()),
        ("reasons", pa.list_(REASON_TYPE)),
        ("run_id", pa.string()),
        ("churn_version", pa.string()),
        ("appetence_version", pa.string()),
    ]
)

Progress = Callable[[int, int], None]


@dataclass
class Champions:
    """The two champion models and their registry versions."""

    churn: EngageModel
    appetence: EngageModel
    versions: dict[str, str]

    @property
    def features(self) -> list[str]:
        """Union of both models' inputs, in a stable order."""
        return list(dict.fromkeys([*self.appetence.features, *self.churn.features]))


def load_champions(paths: Paths) -> Champions:
    """Load ``churn@champion`` and ``appetence@champion`` from the MLflow registry.

    Raises:
        LookupError: a model has no champion (train first).

    """
    from training.registry import load_model

    loaded = {m: load_model(paths, m) for m in MODELS}
    return Champions(
        churn=loaded["churn"][0],
        appetence=loaded["appetence"][0],
        versions={m: str(v) for m, (_, v) in loaded.items()},
    )


def typical_by_half(snapshot: Path, features: list[str]) -> dict[str, dict[str, float]]:
    """Median of each feature among customers (``churn``) and prospects (``appetence``).

    Computed by DuckDB over the snapshot file, so the full table is never in memory.
    """
    cols = ", ".join(f'quantile_cont("{f}", 0.5) AS "{f}"' for f in features)
    source = str(snapshot).replace("'", "''")
    con = duckdb.connect()
    try:
        df = con.execute(
            f"SELECT has_purchased, {cols} FROM read_parquet('{source}') GROUP BY has_purchased"
        ).df()
    finally:
        con.close()
    out: dict[str, dict[str, float]] = {"churn": {}, "appetence": {}}
    for _, row in df.iterrows():
        key = "churn" if row["has_purchased"] == 1 else "appetence"
        out[key] = {f: float(row[f]) if pd.notna(row[f]) else np.nan for f in features}
    return out


def make_explainers(
    champions: Champions, params: Params, typical: dict[str, dict[str, float]]
) -> dict[str, Explainer]:
    """One explainer per model, with the typical values of its half."""
    return {
        "churn": Explainer(champions.churn, params, typical.get("churn", {})),
        "appetence": Explainer(champions.appetence, params, typical.get("appetence", {})),
    }


def _empty_reasons(n: int) -> pa.ListArray:
    return pa.ListArray.from_arrays(
        pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], type=REASON_TYPE)
    )


def score_batch(
    features: pd.DataFrame,
    champions: Champions,
    params: Params,
    explainers: dict[str, Explainer] | None = None,
    run_id: str = "",
) -> pa.Table:
    """Score one frame of snapshot rows; returns an Arrow table with :data:`SCHEMA`.

    Args:
        features: snapshot rows (``customer_id``, ``event_timestamp`` and the features).
        champions: the models.
        params: the parsed params.yaml.
        explainers: per-model explainers; None or ``scoring.top_k_reasons = 0`` gives
            empty reason lists.
        run_id: written in the ``run_id`` column.

    Raises:
        ValueError: missing features or invalid probabilities.

    """
    n = len(features)
    if n == 0:
        return SCHEMA.empty_table()
    customer = features["has_purchased"].to_numpy(dtype="float64", na_value=np.nan) == 1.0
    p_purchase = champions.appetence.predict_proba(features)
    p_churn = np.full(n, np.nan)
    if customer.any():
        p_churn[customer] = champions.churn.predict_proba(features[customer])
    index = engagement_index(customer.astype("int8"), p_purchase, p_churn, params.index)
    segment = assign_segments(features, params.segments)
    value = customer_value(features, p_churn, params.value)

    k = params.scoring.top_k_reasons
    if explainers is None or k == 0:
        reasons = _empty_reasons(n)
    else:
        parts, order = [], []
        for model, mask in (("appetence", ~customer), ("churn", customer)):
            if mask.any():
                parts.append(explainers[model].reasons(features[mask], k).to_arrow())
                order.append(np.flatnonzero(mask))
        # Rows were explained per half; put them back in input order.
        where = np.empty(n, dtype=np.int64)
        where[np.concatenate(order)] = np.arange(n)
        reasons = pa.concat_arrays(parts).take(pa.array(where))

    def text(values) -> pa.Array:
        return pa.array(np.asarray(values, dtype=object), type=pa.string())

    versions = champions.versions
    columns = {
        ENTITY_KEY: pa.array(features[ENTITY_KEY].astype(str).to_numpy(), type=pa.string()),
        "as_of": pa.array(
            pd.to_datetime(features[TIMESTAMP], utc=True), SCHEMA.field("as_of").type
        ),
        "has_purchased": pa.array(customer.astype("int8")),
        "p_purchase": pa.array(p_purchase, type=pa.float64()),
        "p_churn": pa.array(p_churn, type=pa.float64(), from_pandas=True),
        "stage": text(index["stage"].astype(str)),
        "engagement_score": pa.array(index["engagement_score"].to_numpy()),
        "dial_position": pa.array(index["dial_position"].to_numpy()),
        "segment": text(pd.Series(segment).astype(str)),
        "clv": pa.array(value["clv"].to_numpy()),
        "value_at_risk": pa.array(value["value_at_risk"].to_numpy()),
        "reasons": reasons,
        "run_id": pa.array([run_id] * n, type=pa.string()),
        "churn_version": pa.array([versions.get("churn", "")] * n, type=pa.string()),
        "appetence_version": pa.array([versions.get("appetence", "")] * n, type=pa.string()),
    }
    return pa.table(columns, schema=SCHEMA)


def score_frame(
    features: pd.DataFrame,
    champions: Champions,
    params: Params,
    explainers: dict[str, Explainer] | None = None,
) -> pd.DataFrame:
    """:func:`score_batch` as a pandas frame (reasons as lists of dicts)."""
    return score_batch(features, champions, params, explainers).to_pandas()


def default_run_id(as_of: pd.Timestamp, versions: dict[str, str], params: Params) -> str:
    """``<as-of date>-<hash>``: the same snapshot, models and rules give the same id."""
    decided_by = {
        "as_of": to_utc(as_of).isoformat(),
        "versions": versions,
        "index": params.index.model_dump(),
        "segments": params.segments.model_dump(),
        "value": params.value.model_dump(),
        "top_k": params.scoring.top_k_reasons,
    }
    digest = hashlib.sha1(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()[:8]
    return f"{to_utc(as_of):%Y%m%d}-{digest}"


def check_run_id(run_id: str) -> str:
    """Validate a run id (it becomes a file name).

    Raises:
        ValueError: characters other than letters, digits, ``.``, ``_``, ``-``.

    """
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"run id {run_id!r}: use letters, digits, '.', '_' or '-' (up to 100 characters, "
            "starting with a letter or digit)"
        )
    return run_id


def run_path(paths: Paths, run_id: str) -> Path:
    """Where the scores of ``run_id`` live."""
    return paths.scores_dir / f"run={check_run_id(run_id)}.parquet"


@dataclass
class ScoreRun:
    """What a scoring run wrote."""

    run_id: str
    path: Path
    as_of: pd.Timestamp
    scored_at: pd.Timestamp
    rows: int
    versions: dict[str, str]
    seconds: float
    stages: dict[str, int] = field(default_factory=dict)
    segments: dict[str, int] = field(default_factory=dict)


def score(
    paths: Paths,
    params: Params,
    as_of: pd.Timestamp | str | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
    champions: Champions | None = None,
) -> ScoreRun:
    """Score every contact of a snapshot and write ``scores/run=<run_id>.parquet``.

    Args:
        paths: resolved locations.
        params: the parsed params.yaml.
        as_of: use the latest snapshot at or before this time (default: the latest).
        run_id: the run id (default: :func:`default_run_id`); an existing run with this
            id is replaced.
        progress: called with (rows done, total rows) after each batch.
        champions: models to use (default: the registry's champions).

    Returns:
        The run's id, path, as-of time, row count, model versions and stage / segment
        counts.

    Raises:
        FileNotFoundError: no snapshot.
        LookupError: no champion model.
        ValueError: a bad run id, missing features or invalid probabilities.

    """
    start = time.perf_counter()
    snap = pick_snapshot(paths.features_dir, as_of)
    if run_id is not None:
        check_run_id(run_id)
    champions = champions or load_champions(paths)
    run_id = run_id or default_run_id(snap.as_of, champions.versions, params)
    scored_at = pd.Timestamp.now(tz="UTC")
    explainers = None
    if params.scoring.top_k_reasons > 0:
        typical = typical_by_half(snap.path, champions.features)
        explainers = make_explainers(champions, params, typical)

    columns = list(
        dict.fromkeys(
            [ENTITY_KEY, TIMESTAMP, *champions.features, *SEGMENT_COLUMNS, *VALUE_COLUMNS]
        )
    )
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
    }
    schema = SCHEMA.with_metadata({META_KEY: json.dumps(meta).encode()})
    final = run_path(paths, run_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp"
    stage_counts = np.zeros(len(STAGES), dtype=np.int64)
    segment_counts = np.zeros(len(SEGMENTS), dtype=np.int64)
    done = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for batch in source.iter_batches(batch_size=params.scoring.batch_rows, columns=columns):
                frame = batch.to_pandas()
                table = score_batch(frame, champions, params, explainers, run_id)
                writer.write_table(table.replace_schema_metadata(schema.metadata))
                stage_counts += _counts(table.column("stage"), STAGES)
                segment_counts += _counts(table.column("segment"), SEGMENTS)
                done += len(frame)
                if progress:
                    progress(done, total)
        os.replace(tmp, final)
    except BaseException:
        # Also on KeyboardInterrupt: never leave a half-written file behind.
        tmp.unlink(missing_ok=True)
        raise
    return ScoreRun(
        run_id=run_id,
        path=final,
        as_of=snap.as_of,
        scored_at=scored_at,
        rows=done,
        versions=dict(champions.versions),
        seconds=time.perf_counter() - start,
        stages=dict(zip(STAGES, stage_counts.tolist(), strict=True)),
        segments=dict(zip(SEGMENTS, segment_counts.tolist(), strict=True)),
    )


def _counts(column: pa.ChunkedArray, labels: tuple[str, ...]) -> np.ndarray:
    values = pd.Series(column.to_numpy(zero_copy_only=False)).value_counts()
    return np.array([int(values.get(label, 0)) for label in labels], dtype=np.int64)


@dataclass(frozen=True)
class RunInfo:
    """A stored scoring run (from the file's metadata)."""

    run_id: str
    path: Path
    as_of: pd.Timestamp
    scored_at: pd.Timestamp
    rows: int
    versions: dict[str, str]


def _run_info(path: Path) -> RunInfo:
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(META_KEY)
    if raw is None:
        raise ValueError(f"{path}: not a scoring run (no {META_KEY.decode()} metadata)")
    m = json.loads(raw)
    return RunInfo(
        run_id=m["run_id"],
        path=path,
        as_of=to_utc(m["as_of"]),
        scored_at=to_utc(m["scored_at"]),
        rows=int(m["rows"]),
        versions=m["versions"],
    )


def list_runs(paths: Paths) -> list[RunInfo]:
    """Every stored scoring run, oldest first (by as-of time, then scoring time)."""
    runs = [_run_info(p) for p in paths.scores_dir.glob(RUN_GLOB)]
    return sorted(runs, key=lambda r: (r.as_of, r.scored_at))


def find_run(paths: Paths, run_id: str | None = None) -> RunInfo:
    """The run ``run_id``, or the latest one.

    Raises:
        LookupError: no run stored, or no run with that id (the message lists the latest).

    """
    runs = list_runs(paths)
    if not runs:
        raise LookupError(f"no scoring run under {paths.scores_dir}: run `engage score`")
    if run_id is None:
        return runs[-1]
    for r in runs:
        if r.run_id == run_id:
            return r
    latest = ", ".join(r.run_id for r in runs[-5:])
    raise LookupError(f"no scoring run {run_id!r} under {paths.scores_dir} (latest: {latest})")


def read_run(
    paths: Paths, run_id: str | None = None, columns: list[str] | None = None
) -> tuple[RunInfo, pd.DataFrame]:
    """Load a stored run (default: the latest) as a frame."""
    info = find_run(paths, run_id)
    return info, pd.read_parquet(info.path, columns=columns)
