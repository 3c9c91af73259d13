"""Lead qualification for sales: MQL, SQL and SAL from the appetence side of the index.

Rules (``leads:`` in params.yaml; docs/DOMAIN.md#lead-qualification-mql-sql-sal):

- **MQL** (marketing-qualified lead): a prospect (left half) in one of
  ``leads.mql_segments`` (Lead by default: an e-mail click or a cart add in 30 days), or
  with ``p_purchase >= leads.mql_min_p_purchase``;
- **SQL** (sales-qualified lead): a prospect in the Purchase stage (``p_purchase >=
  index.tau_purchase``, after the stability rule). ``mql_min_p_purchase`` may not exceed
  ``tau_purchase``, so every SQL is an MQL;
- **SAL** (sales-accepted lead): an SQL for whom sales recorded ``leads.accepted_event``
  (an event type of ``data.event_types``, ingested like any other event) within
  ``leads.accepted_within_days`` days from the run's as-of time;
- **won**: a SAL who made the conversion event (``data.conversion_event``) within
  ``labels.horizon_days`` days from the run's as-of time.

The funnel of run k counts the contacts of run k at each step; its conversion rates are
SQL / MQL, SAL / SQL, won / SAL, plus "bought" / SQL (any SQL who bought within the
horizon, accepted or not: the precision of the Purchase list). A window that has not
fully elapsed by the end of the events (the last event time) makes the run's later
counts provisional; :class:`Funnel` says which.

:func:`lead_list` is the sales list (``engage leads``): the SQLs of a run by
``p_purchase``, with their reasons and a suggested action, like the at-risk list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from engage.config import Params, Paths
from features.catalog import ENTITY_KEY
from serving.at_risk import reasons_of, suggested_action
from serving.index import PURCHASE, purchase_threshold_at
from serving.runs import RunInfo, find_run, list_runs, read_run
from serving.segments import normalise_segment

_COLUMNS = [ENTITY_KEY, "has_purchased", "p_purchase", "stage", "segment"]


def mql_segments(params: Params) -> list[str]:
    """The segments of ``leads.mql_segments``, as the product names them.

    Raises:
        ValueError: a name that is not a segment (the message lists the valid ones).

    """
    try:
        return [normalise_segment(s) for s in params.leads.mql_segments]
    except ValueError as err:
        raise ValueError(f"leads.mql_segments: {err}") from None


def mql_threshold(params: Params) -> float:
    """``leads.mql_min_p_purchase`` at the models' horizon.

    Like the index thresholds it is stated for ``index.stated_horizon_days`` and carried to
    ``labels.horizon_days`` the same way, so every SQL stays an MQL.
    """
    return purchase_threshold_at(
        params.leads.mql_min_p_purchase,
        params.index.stated_horizon_days,
        params.labels.horizon_days,
    )


def qualify(scores: pd.DataFrame, params: Params) -> pd.DataFrame:
    """MQL and SQL flags of the contacts of one run.

    Args:
        scores: a run's rows with ``has_purchased``, ``p_purchase``, ``stage`` and
            ``segment``.
        params: the parsed params.yaml (``leads``).

    Returns:
        ``scores`` with boolean columns ``mql`` and ``sql``.

    Raises:
        ValueError: a missing column, or a bad ``leads.mql_segments``.

    """
    missing = [c for c in _COLUMNS[1:] if c not in scores.columns]
    if missing:
        raise ValueError(f"lead qualification: missing column(s) {missing}")
    prospect = scores["has_purchased"].to_numpy() == 0
    p = scores["p_purchase"].to_numpy(dtype="float64")
    with np.errstate(invalid="ignore"):
        keen = p >= mql_threshold(params)
    in_segment = scores["segment"].isin(mql_segments(params)).to_numpy()
    out = scores.copy()
    out["sql"] = prospect & (scores["stage"].to_numpy() == PURCHASE)
    out["mql"] = prospect & (in_segment | keen | out["sql"].to_numpy())
    return out


def _first_after(events: Path, types: list[str], since: pd.Timestamp) -> pd.DataFrame:
    """Every event of ``types`` at or after ``since`` (customer, type, time), via DuckDB."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(
            "SELECT customer_id, event_type, event_time FROM read_parquet(?) "
            "WHERE event_type IN (SELECT unnest(?)) AND event_time >= ?",
            [str(events), types, since.to_pydatetime()],
        ).df()
    finally:
        con.close()


def _last_event_time(events: Path) -> pd.Timestamp:
    con = duckdb.connect()
    try:
        t = con.execute("SELECT max(event_time) FROM read_parquet(?)", [str(events)]).fetchone()
    finally:
        con.close()
    return pd.Timestamp(t[0]).tz_convert("UTC") if t and t[0] is not None else pd.NaT


@dataclass
class Funnel:
    """The lead funnel of each run, oldest first.

    Attributes:
        table: one row per run: ``run_id``, ``as_of``, ``mql``, ``sql``, ``sal``,
            ``won``, ``bought`` (SQLs who bought, accepted or not), the rates
            ``sql_rate`` (SQL / MQL), ``sal_rate`` (SAL / SQL), ``won_rate`` (won / SAL),
            ``bought_rate`` (bought / SQL), and ``complete`` (both windows elapsed by
            ``observed_until``).
        observed_until: the last event time: later windows are not observed yet.
        accepted_event: the event type that records a SAL.

    """

    table: pd.DataFrame
    observed_until: pd.Timestamp
    accepted_event: str


def _rate(num: int, den: int) -> float:
    return num / den if den else float("nan")


def lead_funnel(paths: Paths, params: Params, runs: list[RunInfo] | None = None) -> Funnel:
    """MQL -> SQL -> SAL -> won counts and rates of each stored run.

    Args:
        paths: resolved locations (runs and events).
        params: the parsed params.yaml (``leads``, ``labels.horizon_days``,
            ``data.conversion_event``).
        runs: which runs (default: every stored run).

    Raises:
        LookupError: no scoring run.
        FileNotFoundError: no event store.

    """
    runs = list_runs(paths) if runs is None else runs
    if not runs:
        raise LookupError(f"no scoring run under {paths.scores_dir}: run `engage score`")
    if not paths.events.exists():
        raise FileNotFoundError(f"no events at {paths.events}: run `engage data simulate`")
    accepted, conv = params.leads.accepted_event, params.data.conversion_event
    accept_days = pd.Timedelta(days=params.leads.accepted_within_days)
    horizon = pd.Timedelta(days=params.labels.horizon_days)
    events = _first_after(paths.events, [accepted, conv], min(r.as_of for r in runs))
    until = _last_event_time(paths.events)
    rows = []
    for run in runs:
        _, scores = read_run(paths, run.run_id, columns=_COLUMNS)
        q = qualify(scores, params)
        sql_ids = set(q.loc[q["sql"], ENTITY_KEY])

        def did(kind: str, within: pd.Timedelta, run: RunInfo = run) -> set:
            e = events[events["event_type"] == kind]
            when = e["event_time"]
            return set(e.loc[(when >= run.as_of) & (when < run.as_of + within), ENTITY_KEY])

        sal_ids = sql_ids & did(accepted, accept_days)
        bought = sql_ids & did(conv, horizon)
        won = sal_ids & bought
        rows.append(
            {
                "run_id": run.run_id,
                "as_of": run.as_of,
                "mql": int(q["mql"].sum()),
                "sql": len(sql_ids),
                "sal": len(sal_ids),
                "won": len(won),
                "bought": len(bought),
                "sql_rate": _rate(len(sql_ids), int(q["mql"].sum())),
                "sal_rate": _rate(len(sal_ids), len(sql_ids)),
                "won_rate": _rate(len(won), len(sal_ids)),
                "bought_rate": _rate(len(bought), len(sql_ids)),
                "complete": bool(run.as_of + max(accept_days, horizon) <= until)
                if until is not pd.NaT
                else False,
            }
        )
    return Funnel(pd.DataFrame(rows), until, accepted)


def lead_list(
    paths: Paths, params: Params, top: int = 20, run_id: str | None = None
) -> tuple[RunInfo, pd.DataFrame]:
    """The ``top`` SQLs of a run by ``p_purchase``, with reasons and a suggested action.

    Returns:
        The run and a frame with ``customer_id``, ``p_purchase``, ``stage``, ``segment``,
        ``stage_runs`` (runs in Purchase, 1 = new this run), ``reasons`` (up to 3
        sentences) and ``action``.

    Raises:
        ValueError: top < 1, or a bad ``leads.mql_segments``.
        LookupError: no scoring run, an unknown run id, or a run scored without an
            appetence model.

    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    info = find_run(paths, run_id)
    info.require("appetence", "lead list")
    extra = ["stage_runs"] if "stage_runs" in pq.read_schema(info.path).names else []
    _, scores = read_run(paths, info.run_id, columns=[*_COLUMNS, *extra])
    q = qualify(scores, params)
    picked = q.loc[q["sql"]].sort_values(
        ["p_purchase", ENTITY_KEY], ascending=[False, True], kind="stable"
    )
    picked = picked.head(top)
    reasons = reasons_of(info, picked.index.to_numpy())
    runs = picked["stage_runs"] if "stage_runs" in picked else pd.Series(1, index=picked.index)
    out = pd.DataFrame(
        {
            ENTITY_KEY: picked[ENTITY_KEY].to_numpy(),
            "p_purchase": picked["p_purchase"].to_numpy(),
            "stage": picked["stage"].to_numpy(),
            "segment": picked["segment"].to_numpy(),
            "stage_runs": runs.to_numpy(),
        }
    )
    out["reasons"] = reasons
    out["action"] = [
        suggested_action(st, sg) for st, sg in zip(out["stage"], out["segment"], strict=True)
    ]
    return info, out
