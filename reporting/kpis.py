"""Engagement KPIs by month, with the formulas of docs/DOMAIN.md#kpi-formulas.

- Customer retention rate: CRR = (E - N) / S x 100, with S active customers at the start
  of the month, E at its end and N acquired during it.
- Churn rate = customers lost during the month / customers at its start x 100.
- CTR = e-mail clicks / e-mails sent x 100.
- NPS = % promoters (9-10) - % detractors (0-6) among the month's answers.
- Average customer value = revenue of the month / customers who bought in it.

A customer is *active* at a time t when their last conversion event (purchase) is less
than ``labels.active_within_days`` before t; *acquired* in a month when their first
purchase falls in it; *lost* when active at the start and no longer at the end.

**Warm-up months.** Until the events cover a full active window before a month's start,
nobody can have lapsed yet and "active at the start" misses the customers who bought
before the data begins: such a month would show 0 % churn and a retention rate of
nothing. Its ``warm_up`` flag is set and its retention and churn rates are NaN.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from engage.config import Params


def retention_rate(start: float, end: float, acquired: float) -> float:
    """CRR in percent: (E - N) / S x 100 (S=10,000, N=5,000, E=12,000 gives 70)."""
    if start <= 0:
        return float("nan")
    return (end - acquired) / start * 100.0


def churn_rate(start: float, lost: float) -> float:
    """Churn in percent: lost / customers at the start (1,000 and 100 give 10)."""
    return lost / start * 100.0 if start > 0 else float("nan")


def nps(scores: pd.Series) -> float:
    """Net promoter score: % of 9-10 minus % of 0-6 (300/100/100 of 500 gives 40)."""
    s = pd.Series(scores, dtype=float).dropna()
    if s.empty:
        return float("nan")
    return float(((s >= 9).mean() - (s <= 6).mean()) * 100.0)


def ctr(clicks: float, sent: float) -> float:
    """Click-through rate in percent: clicks / sent x 100 (100 of 1,000 gives 10)."""
    return clicks / sent * 100.0 if sent > 0 else float("nan")


def monthly_kpis(events_path: Path, params: Params) -> pd.DataFrame:
    """One row per calendar month (UTC) of the events with every KPI above.

    Months at the edges are included. A month that starts less than
    ``labels.active_within_days`` after the first event is a warm-up month
    (``warm_up`` True): its retention and churn rates are NaN, not 0 %.
    """
    conv = params.data.conversion_event
    active_days = params.labels.active_within_days
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        f"CREATE TEMP TABLE ev AS SELECT customer_id, event_type, value, event_time "
        f"FROM read_parquet('{events_path}')"
    )
    months = con.execute(
        "SELECT DISTINCT date_trunc('month', event_time) AS m FROM ev ORDER BY m"
    ).df()["m"]
    buys = con.execute(
        f"SELECT customer_id, event_time, value FROM ev WHERE event_type = '{conv}'"
    ).df()
    firsts = buys.groupby("customer_id")["event_time"].min()
    rows = []
    window = pd.Timedelta(days=active_days)
    began = con.execute("SELECT min(event_time) FROM ev").fetchone()[0]
    began = pd.Timestamp(began).tz_convert("UTC") if began is not None else None
    for m in pd.to_datetime(months, utc=True):
        nxt = m + pd.offsets.MonthBegin(1)

        def active_at(t: pd.Timestamp) -> set:
            b = buys[(buys["event_time"] < t) & (buys["event_time"] >= t - window)]
            return set(b["customer_id"])

        start, end = active_at(m), active_at(nxt)
        acquired = set(firsts[(firsts >= m) & (firsts < nxt)].index)
        month_buys = buys[(buys["event_time"] >= m) & (buys["event_time"] < nxt)]
        counts = (
            con.execute(
                "SELECT event_type, count(*) AS n FROM ev WHERE event_time >= ? AND "
                "event_time < ? GROUP BY event_type",
                [m.to_pydatetime(), nxt.to_pydatetime()],
            )
            .df()
            .set_index("event_type")["n"]
        )
        answers = con.execute(
            "SELECT value FROM ev WHERE event_type = 'nps_response' AND event_time >= ? "
            "AND event_time < ?",
            [m.to_pydatetime(), nxt.to_pydatetime()],
        ).df()["value"]
        buyers = month_buys["customer_id"].nunique()
        warm_up = began is None or m < began + window
        rows.append(
            {
                "month": m.strftime("%Y-%m"),
                "customers_start": len(start),
                "customers_end": len(end),
                "acquired": len(acquired),
                "lost": len(start - end),
                "warm_up": warm_up,
                "retention_rate": float("nan")
                if warm_up
                else retention_rate(len(start), len(end), len(acquired)),
                "churn_rate": float("nan") if warm_up else churn_rate(len(start), len(start - end)),
                "ctr": ctr(counts.get("email_click", 0), counts.get("email_sent", 0)),
                "nps": nps(answers),
                "avg_customer_value": month_buys["value"].sum() / buyers
                if buyers
                else float("nan"),
                "revenue": float(month_buys["value"].sum()),
            }
        )
    con.close()
    return pd.DataFrame(rows)
