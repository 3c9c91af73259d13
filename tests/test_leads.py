"""Lead qualification: MQL / SQL flags, the funnel counts per run, the SQL list for sales."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from engage.config import PROJECT_ROOT, ConfigError, Paths, load_params
from serving.leads import lead_funnel, lead_list, qualify
from serving.runs import META_KEY, SCHEMA
from serving.scoring import empty_reasons

T0 = pd.Timestamp("2025-06-03", tz="UTC")
DAY = pd.Timedelta(days=1)


def write_run(paths: Paths, run_id: str, as_of: pd.Timestamp, rows: dict[str, tuple]) -> None:
    """A run: customer -> (has_purchased, p_purchase, stage, segment, stage_runs)."""
    n = len(rows)
    half, p, stage, segment, runs = (list(c) for c in zip(*rows.values(), strict=True))
    customer = np.array(half) == 1
    table = pa.table(
        {
            "customer_id": list(rows),
            "as_of": pa.array([as_of] * n, pa.timestamp("us", tz="UTC")),
            "has_purchased": pa.array(np.array(half, dtype="int8")),
            "p_purchase": pa.array(np.array(p, dtype=float)),
            "p_churn": pa.array(np.where(customer, 0.3, np.nan), from_pandas=True),
            "stage": stage,
            "engagement_score": pa.array(np.full(n, 50.0)),
            "dial_position": pa.array(np.full(n, 50.0)),
            "segment": segment,
            "clv": pa.array(np.where(customer, 100.0, 0.0)),
            "value_at_risk": pa.array(np.where(customer, 30.0, 0.0)),
            "lapsed": pa.array(np.zeros(n, dtype=bool)),
            "reasons": empty_reasons(n),
            "run_id": [run_id] * n,
            "churn_version": ["1"] * n,
            "appetence_version": ["1"] * n,
            "stage_runs": pa.array(np.array(runs, dtype="int32")),
        },
        schema=SCHEMA,
    )
    meta = {
        "run_id": run_id,
        "as_of": as_of.isoformat(),
        "scored_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "versions": {"churn": "1", "appetence": "1"},
        "rows": n,
    }
    paths.scores_dir.mkdir(parents=True, exist_ok=True)
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    pq.write_table(table, paths.scores_dir / f"run={run_id}.parquet")


def write_events(paths: Paths, events: list[tuple[str, str, pd.Timestamp]]) -> None:
    frame = pd.DataFrame(events, columns=["customer_id", "event_type", "event_time"])
    frame["event_id"] = [f"e{i}" for i in range(len(frame))]
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True).astype(
        "datetime64[us, UTC]"
    )
    frame["value"] = np.where(frame["event_type"] == "purchase", 50.0, np.nan)
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(paths.events)


@pytest.fixture
def shop(tmp_path) -> Paths:
    """Two weekly runs of six contacts, the sales acceptances and the purchases after them.

    Run w1 (T0): A and B are in Purchase (SQL); C qualifies by p_purchase >= 0.08 and D
    by its Lead segment (MQL); E is neither; F is a customer. A is accepted on day 3
    and buys on day 10; B buys on day 5 but is accepted only on day 20 (after the 14-day
    window); C is accepted on day 1 but is no SQL. Run w2 (T0 + 7): A is still in
    Purchase; A's acceptance happened before w2, so it does not count for w2.
    """
    paths = Paths(PROJECT_ROOT, tmp_path, tmp_path / "mlruns", load_params())
    write_run(
        paths,
        "w1",
        T0,
        {
            "A": (0, 0.50, "Purchase", "Lead", 1),
            "B": (0, 0.20, "Purchase", "Ghost", 2),
            "C": (0, 0.10, "Nurture", "Ghost", 1),
            "D": (0, 0.02, "Nurture", "Lead", 1),
            "E": (0, 0.02, "Nurture", "Ghost", 1),
            "F": (1, 0.40, "Retention", "Repeat", 3),
        },
    )
    write_run(
        paths,
        "w2",
        T0 + 7 * DAY,
        {
            "A": (0, 0.45, "Purchase", "Lead", 2),
            "B": (0, 0.10, "Nurture", "Ghost", 1),
            "E": (0, 0.01, "Nurture", "Ghost", 2),
        },
    )
    write_events(
        paths,
        [
            ("A", "sales_accepted", T0 - DAY),  # before both runs: counts for neither
            ("A", "sales_accepted", T0 + 3 * DAY),
            ("A", "purchase", T0 + 10 * DAY),
            ("B", "purchase", T0 + 5 * DAY),
            ("B", "sales_accepted", T0 + 20 * DAY),
            ("C", "sales_accepted", T0 + DAY),
            ("F", "web_visit", T0 + 60 * DAY),  # the events run until day 60
        ],
    )
    return paths


def test_mql_and_sql_flags():
    params = load_params()
    scores = pd.DataFrame(
        {
            "has_purchased": [0, 0, 0, 0, 1],
            "p_purchase": [0.5, 0.1, 0.02, 0.02, 0.9],
            "stage": ["Purchase", "Nurture", "Nurture", "Nurture", "Exit"],
            "segment": ["Ghost", "Ghost", "Lead", "Ghost", "Lead"],
        }
    )
    q = qualify(scores, params)
    assert q["sql"].tolist() == [True, False, False, False, False]
    assert q["mql"].tolist() == [True, True, True, False, False]  # customers never
    with pytest.raises(ValueError, match=r"missing column\(s\) \['segment'\]"):
        qualify(scores.drop(columns="segment"), params)
    bad = load_params(overrides=("leads.mql_segments=[VIP]",))
    with pytest.raises(ValueError, match="leads.mql_segments: unknown segment 'VIP'"):
        qualify(scores, bad)


def test_funnel_counts_per_run(shop):
    funnel = lead_funnel(shop, load_params())
    t = funnel.table.set_index("run_id")
    assert funnel.observed_until == T0 + 60 * DAY
    w1 = t.loc["w1"]
    assert (w1["mql"], w1["sql"], w1["sal"], w1["won"], w1["bought"]) == (4, 2, 1, 1, 2)
    assert (w1["sql_rate"], w1["sal_rate"], w1["won_rate"], w1["bought_rate"]) == (
        0.5,
        0.5,
        1.0,
        1.0,
    )
    w2 = t.loc["w2"]
    # A is the only SQL (B fell back to Nurture but stays an MQL by p_purchase 0.10).
    assert (w2["mql"], w2["sql"], w2["sal"], w2["won"], w2["bought"]) == (2, 1, 0, 0, 1)
    assert np.isnan(w2["won_rate"])  # no SAL: no rate, not 0 %
    assert bool(w1["complete"]) and bool(w2["complete"])  # day 7 + 30 <= day 60


def test_a_recent_run_is_provisional(shop):
    write_run(shop, "w3", T0 + 50 * DAY, {"A": (0, 0.4, "Purchase", "Lead", 3)})
    t = lead_funnel(shop, load_params()).table.set_index("run_id")
    assert not t.loc["w3", "complete"]  # day 50 + 30 is after the last event (day 60)


def test_lead_list_is_the_sqls_by_p_purchase(shop):
    info, leads = lead_list(shop, load_params(), top=5, run_id="w1")
    assert info.run_id == "w1"
    assert leads["customer_id"].tolist() == ["A", "B"]
    assert leads["stage_runs"].tolist() == [1, 2]
    assert all("sales call" in a or "pop-up" in a for a in leads["action"])
    with pytest.raises(ValueError, match="top must be >= 1"):
        lead_list(shop, load_params(), top=0)


def test_mql_threshold_above_the_purchase_threshold_is_refused():
    with pytest.raises(ConfigError, match=r"leads.mql_min_p_purchase: must be at most"):
        load_params(overrides=("leads.mql_min_p_purchase=0.5",))
    with pytest.raises(ConfigError, match=r"leads.accepted_event: not in data.event_types"):
        load_params(overrides=("leads.accepted_event=crm_won",))


def test_cli_leads_with_funnel(shop, monkeypatch):
    from cli.main import app

    monkeypatch.setenv("ENGAGE_DATA_DIR", str(shop.data_dir))
    out = CliRunner().invoke(app, ["leads", "--top", "3", "--funnel"])
    assert out.exit_code == 0, out.output
    assert "sales-qualified leads, run w2" in out.output and "lead funnel" in out.output
    assert "w1" in out.output and "(100.0%)" in out.output  # w1: 1 won of 1 SAL
    out = CliRunner().invoke(app, ["leads", "--format", "json"])
    assert [c["customer_id"] for c in json.loads(out.output)["contacts"]] == ["A"]
    out = CliRunner().invoke(app, ["leads", "--run", "nope"])
    assert out.exit_code == 1 and "error: no scoring run 'nope'" in out.output
