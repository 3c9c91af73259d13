"""The at-risk list: reachable customers of a scoring run by value at risk, with actions.

Only customers (the right half) are listed - a prospect has no value at risk - sorted by
``value_at_risk`` (p_churn x CLV) descending, optionally restricted to one segment or
one stage. Each row carries its top 3 reasons and a suggested action
(:func:`suggested_action`).

The list holds the customers the churn model is about, the *still-reachable* ones: active
within ``labels.churn_active_within_days`` (the run's ``lapsed`` flag is False; a run
scored before the flag existed falls back to the segments: Lost and At risk are lapsed).
Lapsed customers are scored too, but go to a separate win-back list (``win_back=True``):
a call cannot save who has already gone quiet, so they never push reachable customers off
the top of the retention list. The *call list* of a run is its still-reachable customers
in Exit, by value at risk, up to ``report.capacity``: what the retention team calls this
week (:func:`call_list`, ``engage at-risk --call-list``).
"""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from engage import exports
from engage.config import Paths
from features.catalog import ENTITY_KEY
from serving.index import EXIT, NURTURE, PURCHASE, RETENTION
from serving.runs import RUN_GLOB, RunInfo, find_run, read_run
from serving.segments import (
    AT_RISK,
    GHOST,
    HERO,
    LOST,
    NEW,
    OCCASIONAL,
    REPEAT,
    WAITING,
    normalise_segment,
)
from serving.value import rank_by_value_at_risk

MAX_LIMIT = 1000  # most contacts one /at_risk answer lists (the cache keeps this many)

# Segment-specific actions, per stage; the stage's default applies otherwise. An
# abandoned cart is the most concrete lever, so Waiting wins in every stage.
_STAGE_ACTION = {
    NURTURE: "nurturing campaign: content that lets them discover the offer",
    PURCHASE: "sales call with a tailored offer",
    RETENTION: "keep the relationship: regular newsletter, no discount needed",
    EXIT: "win-back offer before they leave (personal discount, check their last ticket)",
}
_SEGMENT_ACTION = {
    (None, WAITING): "abandoned-cart e-mail (reminder of the cart, free shipping)",
    (NURTURE, NEW): "welcome series introducing the offer",
    (NURTURE, GHOST): "personalised pop-up on the next visit to get them to identify",
    (NURTURE, AT_RISK): "re-engagement e-mail with the best-selling products",
    (NURTURE, LOST): "sunset: last re-permission e-mail, then stop mailing",
    (PURCHASE, GHOST): "personalised pop-up with a first-order offer",
    (RETENTION, NEW): "onboarding: how to get the most of the first purchase",
    (RETENTION, HERO): "upsell / cross-sell and loyalty perks",
    (RETENTION, REPEAT): "loyalty programme and replenishment reminders",
    (RETENTION, OCCASIONAL): "social retargeting after three touchpoints",
    (RETENTION, AT_RISK): "re-engagement campaign before the risk grows",
    (RETENTION, LOST): "win-back campaign",
    (EXIT, HERO): "account-manager call: save a high-value customer",
    (EXIT, LOST): "last-chance win-back offer",
}
FORMATS = ("table", "csv", "json")
LAPSED_SEGMENTS = (LOST, AT_RISK)
# How an at-risk list is ordered: value at risk (the default), or expected days to churn
# (serving.timing: the days left before a customer lapses, soonest first), which needs a
# run scored with the churn hazard model.
SORTS = ("value", "days-to-churn")
DAYS_TO_CHURN = "days_to_churn"


def suggested_action(stage: str, segment: str) -> str:
    """The suggested next action for a contact in ``stage`` and ``segment``."""
    if segment == WAITING:
        return _SEGMENT_ACTION[(None, WAITING)]
    return _SEGMENT_ACTION.get((stage, segment)) or _STAGE_ACTION.get(stage, "review manually")


def lapsed(runs: pd.DataFrame) -> np.ndarray:
    """Which rows of a run are lapsed: its ``lapsed`` flag, else a Lost / At risk segment."""
    if "lapsed" in runs.columns:
        return runs["lapsed"].fillna(False).to_numpy(dtype=bool)
    return runs["segment"].isin(LAPSED_SEGMENTS).to_numpy()


def at_risk_list(
    paths: Paths,
    top: int = 20,
    segment: str | None = None,
    run_id: str | None = None,
    stage: str | None = None,
    win_back: bool = False,
    sort: str = "value",
) -> tuple[RunInfo, pd.DataFrame]:
    """The ``top`` reachable customers by value at risk of a scoring run.

    Args:
        paths: resolved locations.
        top: number of rows.
        segment: keep only this segment (case and "-"/"_" for spaces do not matter).
        run_id: the scoring run (default: the latest).
        stage: keep only this stage (Retention or Exit).
        win_back: list the lapsed customers instead (no activity within the churn
            model's window), by value at risk.
        sort: ``value`` (value at risk, highest first) or ``days-to-churn``: expected
            days to churn, soonest first (customers expected to act before they lapse,
            null, follow), ties by value at risk; the run must hold ``days_to_churn``.

    Returns:
        The run and a frame with ``customer_id``, ``p_churn``, ``stage``, ``segment``,
        ``clv``, ``value_at_risk``, ``lapsed``, ``reasons`` (list of up to 3 sentences)
        and ``action``; plus ``days_to_churn`` when the run holds it.

    Raises:
        ValueError: unknown segment, stage or sort (the message lists the valid ones),
            top < 1, or ``sort="days-to-churn"`` on a run without ``days_to_churn``
            (named, with the run's row count).
        LookupError: no scoring run, an unknown run id, or a run scored without a
            churn model.

    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    wanted = normalise_segment(segment) if segment is not None else None
    if stage is not None and stage not in (RETENTION, EXIT):
        raise ValueError(f"stage must be {RETENTION} or {EXIT} (customers), got {stage!r}")
    if sort not in SORTS:
        raise ValueError(f"--sort must be one of {', '.join(SORTS)}, got {sort!r}")
    columns = [ENTITY_KEY, "has_purchased", "p_churn", "stage", "segment", "clv"]
    info = find_run(paths, run_id)
    info.require("churn", "at-risk list")
    names = pq.read_schema(info.path).names
    extra = ["lapsed"] if "lapsed" in names else []
    if DAYS_TO_CHURN in names:
        extra.append(DAYS_TO_CHURN)
    elif sort == "days-to-churn":
        raise ValueError(
            f"--sort days-to-churn: run {info.run_id} has no {DAYS_TO_CHURN} column "
            f"({info.rows:,} rows): it was scored without a churn hazard model; train one "
            "and score again, or sort by value (the default)"
        )
    _, runs = read_run(paths, info.run_id, columns=[*columns, "value_at_risk", *extra])
    runs["lapsed"] = lapsed(runs)
    keep = (runs["has_purchased"] == 1) & (runs["lapsed"] == win_back)
    if wanted is not None:
        keep &= runs["segment"] == wanted
    if stage is not None:
        keep &= runs["stage"] == stage
    ranked = rank_by_value_at_risk(runs.loc[keep])
    if sort == "days-to-churn":
        # Stable: equal days (and the nulls, last) keep the value-at-risk order.
        ranked = ranked.sort_values(DAYS_TO_CHURN, kind="stable", na_position="last")
    picked = ranked.head(top)
    # Read the reasons only for the rows shown: at 1M contacts they dominate the file.
    reasons = reasons_of(info, picked.index.to_numpy())
    out = picked.drop(columns="has_purchased").reset_index(drop=True)
    out["reasons"] = reasons
    out["action"] = [
        suggested_action(st, sg) for st, sg in zip(out["stage"], out["segment"], strict=True)
    ]
    return info, out


def call_list(
    paths: Paths, capacity: int, run_id: str | None = None
) -> tuple[RunInfo, pd.DataFrame]:
    """The customers to call: still reachable, in Exit, by value at risk, ``capacity`` at most.

    The same list as ``engage at-risk --stage Exit --top CAPACITY``.
    """
    return at_risk_list(paths, top=capacity, run_id=run_id, stage=EXIT)


def reasons_of(info: RunInfo, rows: np.ndarray) -> list[list[str]]:
    """The reason sentences (up to 3) of the given row positions of a stored run."""
    out: list[list[str]] = [[] for _ in rows]
    if len(rows) == 0:
        return out
    source = pq.ParquetFile(info.path)
    starts = np.cumsum(
        [0] + [source.metadata.row_group(i).num_rows for i in range(source.num_row_groups)]
    )
    group_of = np.searchsorted(starts, rows, side="right") - 1
    # One row group in memory at a time, and only the groups holding a listed row.
    for g in np.unique(group_of):
        mine = np.flatnonzero(group_of == g)
        column = source.read_row_group(int(g), columns=["reasons"]).column("reasons")
        picked = column.take(rows[mine] - starts[g]).to_pylist()
        for i, row in zip(mine, picked, strict=True):
            out[i] = [r["text"] for r in (row or [])[:3]]
    return out


def to_csv(frame: pd.DataFrame) -> str:
    """The list as CSV (reasons joined by " | "), safe to open in a spreadsheet.

    Text cells that a spreadsheet would run as a formula (``=...``, ``+...``, ``@...``)
    get a leading ``'`` (:mod:`engage.exports`); numbers are left as numbers.
    """
    out = frame.copy()
    out["reasons"] = [" | ".join(r) for r in out["reasons"]]
    return exports.to_csv(out, float_format="%.4f")


def to_json(frame: pd.DataFrame, info: RunInfo) -> str:
    """The list as a JSON document with the run id and as-of time."""
    rows = []
    for rec in frame.to_dict(orient="records"):
        rows.append(
            {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in rec.items()}
        )
    doc = {"run_id": info.run_id, "as_of": info.as_of.isoformat(), "contacts": rows}
    return json.dumps(doc, indent=2, default=str)


class AtRiskCache:
    """The latest scoring run's at-risk list in memory, rebuilt when a new run appears.

    The service answers ``/at_risk`` from here instead of re-reading the run file on
    every call. Kept: the top ``depth`` customers by value at risk overall and in each
    segment, JSON-ready with their reasons and action, so any ``limit <= depth`` with
    any segment and minimum value is a slice. The scores folder is looked at (names,
    sizes, modification times) at most every ``check_every_s`` seconds; a new, replaced
    or removed run file rebuilds the cache from the latest run. Thread-safe.

    Args:
        paths: resolved locations (the scores folder).
        depth: contacts kept per list, the largest ``limit`` served.
        check_every_s: how often the folder is looked at.

    """

    def __init__(self, paths: Paths, depth: int = MAX_LIMIT, check_every_s: float = 1.0) -> None:
        self.paths, self.depth, self.check_every_s = paths, depth, check_every_s
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._checked = -math.inf
        self._info: RunInfo | None = None
        self._lists: dict[tuple[bool, str | None], list[dict]] = {}
        self.builds = 0  # how many times a run was read (tests, metrics)

    def _folder_key(self) -> tuple:
        out = []
        for p in self.paths.scores_dir.glob(RUN_GLOB):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue  # replaced between the listing and the stat
            out.append((p.name, st.st_mtime_ns, st.st_size))
        return tuple(sorted(out))

    def get(
        self,
        limit: int,
        segment: str | None = None,
        min_value_at_risk: float = 0.0,
        win_back: bool = False,
    ) -> tuple[RunInfo, list[dict]]:
        """The top ``limit`` customers of the latest run (optionally one segment).

        Args:
            limit: 1 to ``depth`` contacts.
            segment: a segment name of :data:`serving.segments.SEGMENTS`, or None.
            min_value_at_risk: keep contacts with at least this value at risk.
            win_back: the lapsed customers instead of the still-reachable ones.

        Raises:
            ValueError: ``limit`` outside 1..depth, or an unknown segment.
            LookupError: no scoring run is stored.

        """
        if not 1 <= limit <= self.depth:
            raise ValueError(f"limit must be from 1 to {self.depth}, got {limit}")
        wanted = normalise_segment(segment) if segment is not None else None
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= self.check_every_s or self._info is None:
                key = self._folder_key()
                if key != self._key or self._info is None:
                    self._build(key)
                self._checked = now
            info, rows = self._info, self._lists.get((win_back, wanted), [])
        # Sorted by value at risk (unknown values last), so the kept contacts are a
        # prefix of the list; an unknown value meets only a minimum of 0.
        picked = []
        for row in rows:
            value = row["value_at_risk"]
            below = min_value_at_risk > 0 if value is None else value < min_value_at_risk
            if len(picked) == limit or below:
                break
            picked.append(row)
        return info, picked

    def _build(self, key: tuple) -> None:
        info = find_run(self.paths)
        columns = [ENTITY_KEY, "has_purchased", "p_churn", "stage", "segment", "clv"]
        extra = ["lapsed"] if "lapsed" in pq.read_schema(info.path).names else []
        _, runs = read_run(self.paths, info.run_id, columns=[*columns, "value_at_risk", *extra])
        runs["lapsed"] = lapsed(runs)
        customers = runs.loc[runs["has_purchased"] == 1].drop(columns="has_purchased")
        ranked = rank_by_value_at_risk(customers)
        tops: dict[tuple[bool, str | None], pd.DataFrame] = {}
        for flag, part in ranked.groupby("lapsed", sort=False):
            tops[(bool(flag), None)] = part.head(self.depth)
            for name, group in part.groupby("segment", sort=False):
                tops[(bool(flag), str(name))] = group.head(self.depth)
        kept = [t.index.to_numpy() for t in tops.values()]
        rows = np.unique(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
        reasons = dict(zip(rows.tolist(), reasons_of(info, rows), strict=True))
        lists: dict[tuple[bool, str | None], list[dict]] = {}
        for name, top in tops.items():
            out = []
            for i, rec in zip(top.index.tolist(), top.to_dict(orient="records"), strict=True):
                rec = {
                    k: (None if isinstance(v, float) and math.isnan(v) else v)
                    for k, v in rec.items()
                }
                rec["lapsed"] = bool(rec["lapsed"])
                rec["reasons"] = reasons[i]
                rec["action"] = suggested_action(rec["stage"], rec["segment"])
                out.append(rec)
            lists[name] = out
        self._info, self._lists, self._key = info, lists, key
        self.builds += 1
