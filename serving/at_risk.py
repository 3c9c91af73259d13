"""The at-risk list: reachable customers of a scoring run by value at risk, with actions.

Only customers (the right half) are listed - a prospect has no value at risk - sorted by
``value_at_risk`` (p_churn x CLV) descending, optionally restricted to one segment.
The list holds the customers the churn model is about: still active within
``labels.churn_active_within_days`` (the ``lapsed`` flag of the run is False). Lapsed
customers (quiet for longer: mostly the At risk and Lost segments) are scored too, but
go to a separate win-back list (``win_back=True``), so they never push reachable
customers off the top of the retention list. Each row carries its top 3 reasons and a
suggested action (:func:`suggested_action`).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from engage.config import Paths
from features.catalog import ENTITY_KEY
from serving.index import EXIT, NURTURE, PURCHASE, RETENTION
from serving.runs import RunInfo, find_run, read_run
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


def suggested_action(stage: str, segment: str) -> str:
    """The suggested next action for a contact in ``stage`` and ``segment``."""
    if segment == WAITING:
        return _SEGMENT_ACTION[(None, WAITING)]
    return _SEGMENT_ACTION.get((stage, segment)) or _STAGE_ACTION.get(stage, "review manually")


def at_risk_list(
    paths: Paths,
    top: int = 20,
    segment: str | None = None,
    run_id: str | None = None,
    win_back: bool = False,
) -> tuple[RunInfo, pd.DataFrame]:
    """The ``top`` reachable customers by value at risk of a scoring run.

    Args:
        paths: resolved locations.
        top: number of rows.
        segment: keep only this segment (case and "-"/"_" for spaces do not matter).
        run_id: the scoring run (default: the latest).
        win_back: list the lapsed customers instead (no activity within the churn
            model's window), by value at risk.

    Returns:
        The run and a frame with ``customer_id``, ``p_churn``, ``stage``, ``segment``,
        ``clv``, ``value_at_risk``, ``lapsed``, ``reasons`` (list of up to 3 sentences)
        and ``action``.

    Raises:
        ValueError: unknown segment (the message lists the valid ones) or top < 1.
        LookupError: no scoring run, an unknown run id, or a run scored before the
            lapsed flag existed (score again).

    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    wanted = normalise_segment(segment) if segment is not None else None
    columns = [ENTITY_KEY, "has_purchased", "p_churn", "stage", "segment", "clv"]
    info = find_run(paths, run_id)
    if "lapsed" not in pq.read_schema(info.path).names:
        raise LookupError(
            f"scoring run {info.run_id} predates the lapsed flag, so reachable and lapsed "
            "customers cannot be told apart: run `engage score` again"
        )
    _, runs = read_run(paths, info.run_id, columns=[*columns, "value_at_risk", "lapsed"])
    keep = (runs["has_purchased"] == 1) & (runs["lapsed"] == win_back)
    if wanted is not None:
        keep &= runs["segment"] == wanted
    picked = runs.loc[keep].nlargest(top, "value_at_risk", keep="first")
    # Read the reasons only for the rows shown: at 1M contacts they dominate the file.
    reasons = _reasons_of(info, picked.index.to_numpy())
    out = picked.drop(columns="has_purchased").reset_index(drop=True)
    out["reasons"] = reasons
    out["action"] = [
        suggested_action(st, sg) for st, sg in zip(out["stage"], out["segment"], strict=True)
    ]
    return info, out


def _reasons_of(info: RunInfo, rows: np.ndarray) -> list[list[str]]:
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
    """The list as CSV (reasons joined by " | ")."""
    out = frame.copy()
    out["reasons"] = [" | ".join(r) for r in out["reasons"]]
    buf = io.StringIO()
    out.to_csv(buf, index=False, float_format="%.4f")
    return buf.getvalue()


def to_json(frame: pd.DataFrame, info: RunInfo) -> str:
    """The list as a JSON document with the run id and as-of time."""
    rows = []
    for rec in frame.to_dict(orient="records"):
        rows.append(
            {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in rec.items()}
        )
    doc = {"run_id": info.run_id, "as_of": info.as_of.isoformat(), "contacts": rows}
    return json.dumps(doc, indent=2, default=str)
