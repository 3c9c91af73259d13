"""Hand-made scoring runs for the bad-input tests (no training needed)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from serving.explain import REASON_TYPE
from serving.runs import SCHEMA, run_writer


def write_run(paths, run_id: str, rows: list[dict], as_of: str) -> None:
    """Store a run whose rows are ``customer_id``, ``stage``, ``segment`` (+ defaults)."""
    n = len(rows)
    reason = {
        "feature": "days_since_last_purchase",
        "value": 90.0,
        "typical": 20.0,
        "contribution": 0.4,
        "direction": "up",
    }
    table = pa.table(
        {
            "customer_id": [r["customer_id"] for r in rows],
            "as_of": pa.array([pd.Timestamp(as_of, tz="UTC")] * n, SCHEMA.field("as_of").type),
            "has_purchased": pa.array([1] * n, pa.int8()),
            "p_purchase": [0.2] * n,
            "p_churn": [r.get("p_churn", 0.7) for r in rows],
            "stage": [r.get("stage", "Exit") for r in rows],
            "engagement_score": [30.0] * n,
            "dial_position": [80.0] * n,
            "segment": [r.get("segment", "At risk") for r in rows],
            "clv": [r.get("clv", 500.0) for r in rows],
            "value_at_risk": [r.get("p_churn", 0.7) * r.get("clv", 500.0) for r in rows],
            "lapsed": [bool(r.get("lapsed", False)) for r in rows],
            "reasons": pa.array(
                [[{**reason, "text": r.get("reason", "no purchase for 90 days")}] for r in rows],
                pa.list_(REASON_TYPE),
            ),
            "run_id": [run_id] * n,
            "churn_version": ["1"] * n,
            "appetence_version": ["1"] * n,
            "stage_runs": pa.array([1] * n, pa.int32()),
        },
        schema=SCHEMA,
    )
    meta = {
        "run_id": run_id,
        "as_of": pd.Timestamp(as_of, tz="UTC").isoformat(),
        "scored_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "versions": {"churn": "1", "appetence": "1"},
        "rows": n,
    }
    with run_writer(paths, run_id, meta) as write:
        write(table)
