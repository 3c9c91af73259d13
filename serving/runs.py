"""The stored scoring runs: ``<scores dir>/run=<id>.parquet``, one file per run.

This module owns the layout: the Arrow schema of a run, its metadata (run id, as-of
time, scoring time, model versions, ...), run ids (they become file names, so they are
checked), and the atomic writer: rows stream to a hidden temporary file named after the
process, renamed to the final name only when complete, so a killed run never leaves a
partial table under the final name and two runs never write one temporary file. Two
runs with the same id take turns: the writer holds the lock ``run=<id>`` of the scores
folder (:mod:`engage.locks`), and the second waits for the first (or fails with the
holder's pid and command after the timeout), then replaces its file.

It also reads back what the next run needs from a stored one: each contact's stage and
how many consecutive runs it has spent there (:func:`previous_stages`), the input of the
stability rule of the engagement index.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engage.config import Paths
from engage.faults import fault_point
from engage.journal import remove_stale_temps
from engage.locks import store_lock
from features.catalog import ENTITY_KEY
from features.snapshots import to_utc
from serving.explain import REASON_TYPE

RUN_PREFIX = "run="
RUN_GLOB = f"{RUN_PREFIX}*.parquet"
META_KEY = b"engage.scoring"
CHECKS_KEY = b"engage.scoring.checks"
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
        # A customer outside the churn model's population (no activity in its window):
        # scored, but listed in the win-back list, not at the top of the at-risk list.
        ("lapsed", pa.bool_()),
        ("reasons", pa.list_(REASON_TYPE)),
        ("run_id", pa.string()),
        ("churn_version", pa.string()),
        ("appetence_version", pa.string()),
        # Consecutive runs spent in `stage`, this one included (the stability rule's memory).
        ("stage_runs", pa.int32()),
    ]
)


def run_schema(timing_columns: list[str] | tuple[str, ...] = ()) -> pa.Schema:
    """:data:`SCHEMA` plus the timing columns of the hazard models (float64, in order).

    The timing columns (``p_purchase_30d``, ``days_to_churn``, ...: see
    :mod:`serving.timing`) exist only in runs scored with hazard champions, so they follow
    the fixed columns and every reader of the fixed ones is unaffected.
    """
    clash = [c for c in timing_columns if c in SCHEMA.names]
    if clash:
        raise ValueError(f"timing columns {clash} clash with the run schema's own columns")
    return pa.schema([*SCHEMA, *(pa.field(c, pa.float64()) for c in timing_columns)])


def check_run_id(run_id: str) -> str:
    """Validate a run id (it becomes a file name).

    Raises:
        ValueError: characters other than letters, digits, ``.``, ``_``, ``-``.

    """
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"run id {run_id!r}: use letters, digits, '.', '_' or '-' (up to 100 characters, "
            "starting with a letter or digit)"
        )
    return run_id


def run_path(paths: Paths, run_id: str) -> Path:
    """Where the scores of ``run_id`` live."""
    return paths.scores_dir / f"{RUN_PREFIX}{check_run_id(run_id)}.parquet"


@contextlib.contextmanager
def run_writer(
    paths: Paths,
    run_id: str,
    meta: dict[str, Any],
    checks: Callable[[], dict[str, Any]] | None = None,
    timeout: float = 0,
    schema: pa.Schema | None = None,
) -> Iterator[Callable[[pa.Table], None]]:
    """Write a run atomically: yields ``write(table)`` for tables of ``schema``.

    ``schema`` is :data:`SCHEMA` by default, or :func:`run_schema` with timing columns.

    ``meta`` is stored in the file's schema metadata; ``checks()``, called once every
    table is written, is stored under :data:`CHECKS_KEY` (what is known only at the end:
    lapsed customers, rows outside the training ranges, warnings). On success the file
    is renamed to :func:`run_path` (replacing a run with the same id); on any failure,
    KeyboardInterrupt included, the temporary file is removed. The run's lock is held
    throughout, waiting up to ``timeout`` seconds for another writer of the same id.

    Raises:
        engage.locks.StoreBusyError: another process writes this run id.

    """
    final = run_path(paths, run_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    with store_lock(paths.scores_dir, f"{RUN_PREFIX}{run_id}", timeout=timeout):
        # Temporary files of killed runs (ours are named after the pid) are garbage.
        remove_stale_temps([paths.scores_dir])
        tmp = final.parent / f".{final.name}.{os.getpid()}.tmp"
        schema = (schema or SCHEMA).with_metadata({META_KEY: json.dumps(meta).encode()})

        def write(table: pa.Table) -> None:
            writer.write_table(table.replace_schema_metadata(schema.metadata))
            fault_point("score:batch_written")

        try:
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                yield write
                if checks is not None:
                    writer.add_key_value_metadata({CHECKS_KEY: json.dumps(checks()).encode()})
            fault_point("score:before_rename")
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class RunInfo:
    """A stored scoring run (from the file's metadata)."""

    run_id: str
    path: Path
    as_of: pd.Timestamp
    scored_at: pd.Timestamp
    rows: int
    versions: dict[str, str]
    # What each model was trained for (horizon, label rule and its parameters), as stored
    # by runs scored since the monitoring loop; empty for older runs (read the model).
    trained_for: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def horizons(self) -> dict[str, int]:
        """Label horizon (days) of each model whose run recorded it."""
        return {
            m: int(t["horizon_days"]) for m, t in self.trained_for.items() if "horizon_days" in t
        }

    checks: dict[str, Any] = field(default_factory=dict)
    missing_models: tuple[str, ...] = ()
    # The horizon (days) of each fixed probability column (``p_purchase``, ``p_churn``),
    # and what the run holds of the hazard models (:meth:`serving.timing.Timing.describe`:
    # horizons, versions, columns, missing models); empty for runs scored before them.
    decision_horizon_days: dict[str, int] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)

    @property
    def timing_columns(self) -> list[str]:
        """The timing columns this run holds (none without hazard champions)."""
        return list(self.timing.get("columns") or [])

    def require(self, model: str, what: str) -> None:
        """Refuse ``what`` (e.g. "an at-risk list") when the run had no ``model`` champion.

        Raises:
            LookupError: the run left that model's half of the index undecided.

        """
        if model in self.missing_models:
            article = "an" if model[0] in "aeiou" else "a"
            raise LookupError(
                f"run {self.run_id} was scored without {article} {model} model, so it has no "
                f"{what}: train one (`engage train --model {model}`) and score again"
            )


def run_info(path: Path) -> RunInfo:
    """The metadata of the run stored at ``path``.

    Raises:
        ValueError: the file is not a scoring run.

    """
    meta = pq.read_metadata(path).metadata or {}
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
        trained_for=m.get("trained_for") or {},
        checks=json.loads(meta[CHECKS_KEY]) if CHECKS_KEY in meta else {},
        missing_models=tuple(m.get("missing_models") or ()),
        decision_horizon_days={
            k: int(v) for k, v in (m.get("decision_horizon_days") or {}).items()
        },
        timing=m.get("timing") or {},
    )


def list_runs(paths: Paths) -> list[RunInfo]:
    """Every stored scoring run, oldest first (by as-of time, then scoring time)."""
    runs = [run_info(p) for p in paths.scores_dir.glob(RUN_GLOB)]
    return sorted(runs, key=lambda r: (r.as_of, r.scored_at))


def find_run(paths: Paths, run_id: str | None = None) -> RunInfo:
    """The run ``run_id``, or the latest one.

    Raises:
        LookupError: no run stored, or no run with that id (the message lists the latest).
        ValueError: ``run_id`` is not a valid run id.

    """
    if run_id is not None:
        check_run_id(run_id)
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


def previous_run(paths: Paths, before: pd.Timestamp) -> RunInfo | None:
    """The latest stored run whose as-of time is strictly before ``before``, or None.

    Rescoring a snapshot (same as-of time) therefore compares with the run before it,
    never with itself, and batch and online prediction on the same features find the
    same previous run.
    """
    t = to_utc(before)
    earlier = [r for r in list_runs(paths) if r.as_of < t]
    return earlier[-1] if earlier else None


@dataclass
class PreviousStages:
    """Each contact's stage in a stored run, for the stability rule.

    Attributes:
        run: the run they come from (None: no previous run, every contact unknown).
        ids: the contacts of that run.
        codes: their stage codes (index into :data:`serving.index.STAGES`).
        runs: consecutive runs spent in that stage (0 when the run predates the count).

    """

    run: RunInfo | None
    ids: pd.Index
    codes: np.ndarray
    runs: np.ndarray

    def lookup(self, customer_ids) -> tuple[np.ndarray, np.ndarray]:
        """Stage codes (-1 = not in the run) and runs in stage (0 = unknown) of ``customer_ids``."""
        ids = pd.Index(np.asarray(customer_ids).astype(str))
        if len(self.ids) == 0:
            return np.full(len(ids), -1, dtype="int8"), np.zeros(len(ids), dtype="int32")
        where = self.ids.get_indexer(ids)
        found = where >= 0
        codes = np.where(found, self.codes[np.maximum(where, 0)], -1).astype("int8")
        runs = np.where(found, self.runs[np.maximum(where, 0)], 0).astype("int32")
        return codes, runs


def previous_stages(paths: Paths, before: pd.Timestamp) -> PreviousStages:
    """The stages of :func:`previous_run` (``before`` the as-of time being decided).

    Raises:
        ValueError: the run holds a stage name that is not a stage, or a contact twice.

    """
    from serving.index import STAGES

    info = previous_run(paths, before)
    if info is None:
        return PreviousStages(None, pd.Index([], dtype=object), np.zeros(0, "int8"), np.zeros(0))
    names = pq.read_schema(info.path).names
    columns = [ENTITY_KEY, "stage", *(["stage_runs"] if "stage_runs" in names else [])]
    frame = pd.read_parquet(info.path, columns=columns)
    codes = pd.Categorical(frame["stage"], categories=list(STAGES)).codes
    unknown = int((codes < 0).sum())
    if unknown:
        raise ValueError(f"run {info.run_id}: stage: {unknown} row(s) not one of {list(STAGES)}")
    ids = pd.Index(frame[ENTITY_KEY].astype(str))
    if not ids.is_unique:
        raise ValueError(
            f"run {info.run_id}: customer_id: {int(ids.duplicated().sum())} duplicated row(s)"
        )
    runs = (
        frame["stage_runs"].fillna(0).to_numpy(dtype="int32")
        if "stage_runs" in frame
        else np.zeros(len(frame), dtype="int32")
    )
    return PreviousStages(info, ids, codes.astype("int8"), runs)
