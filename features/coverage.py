"""Which features and KPIs have no data behind them, for a store's event types.

A shop's export has visits, carts and orders but no e-mails and no NPS answers: the
features that read only those types (open rate, CTR, days since the last e-mail open,
the last NPS answer, ...) are then empty for every contact (0 or null), and so are the
CTR and NPS KPIs. ``engage features build`` says which, and the report leaves the empty
KPIs out instead of drawing empty axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from engage.config import Params
from features.catalog import feature_specs, feature_tags

# The KPIs of reporting/kpis.py and the event types each one is computed from: a KPI is
# empty when none of its types is in the store.
KPI_EVENT_TYPES = {
    "ctr": ("email_sent", "email_click"),
    "nps": ("nps_response",),
}
KPI_LABELS = {"ctr": "CTR", "nps": "NPS"}


@dataclass(frozen=True)
class Coverage:
    """The event types with no event in the store, and what is empty because of them."""

    absent_types: tuple[str, ...]
    empty_features: tuple[str, ...]
    empty_kpis: tuple[str, ...]

    def to_text(self) -> str | None:
        """One note line (or None when every event type has events)."""
        if not self.absent_types:
            return None
        text = f"no events of type {', '.join(self.absent_types)}"
        if self.empty_features:
            n = len(self.empty_features)
            text += (
                f": {n} feature{'s are' if n != 1 else ' is'} empty for every contact "
                f"({', '.join(self.empty_features)})"
            )
        if self.empty_kpis:
            kpis = ", ".join(KPI_LABELS[k] for k in self.empty_kpis)
            text += f"; KPIs without data (left out of the report): {kpis}"
        return text


def event_type_counts(events_path: Path) -> dict[str, int]:
    """Events per type in the store (one DuckDB pass over the Parquet file)."""
    con = duckdb.connect()
    try:
        rows = con.execute(
            "SELECT event_type, count(*) FROM read_parquet(?) GROUP BY event_type",
            [str(events_path)],
        ).fetchall()
    finally:
        con.close()
    return {t: int(n) for t, n in rows}


def coverage(params: Params, counts: dict[str, int]) -> Coverage:
    """What is empty when the types of ``data.event_types`` absent from ``counts`` are.

    A feature is empty when every event type its SQL reads is absent (a rate of two
    absent types, the recency of an absent type); a feature that reads any present type
    (days since the last event of any kind) is not.
    """
    absent = tuple(t for t in params.data.event_types if not counts.get(t))
    empty = []
    for spec in feature_specs(params):
        types = [t for t in feature_tags(spec).get("event_types", "").split(",") if t]
        if types and all(t in absent for t in types):
            empty.append(spec.name)
    kpis = tuple(k for k, types in KPI_EVENT_TYPES.items() if all(t in absent for t in types))
    return Coverage(absent, tuple(empty), kpis)


def store_coverage(events_path: Path, params: Params) -> Coverage:
    """:func:`coverage` of the events stored at ``events_path``."""
    return coverage(params, event_type_counts(events_path))
