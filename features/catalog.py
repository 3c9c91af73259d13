"""The list of behavioural features, derived from ``params.yaml``.

One :class:`FeatureSpec` per column: its name, Feast view, type, description and the
DuckDB aggregate that computes it. Everything downstream (the SQL build, the pandas
reference, the Feast feature views and services, the models) reads this list, so adding
an event type or a window to ``params.yaml`` adds features without code.

Conventions: ``age`` is the age of an event at the as-of time in days (always > 0,
because only events strictly before ``as_of`` are used); a window of ``w`` days holds the
events with ``age <= w``, i.e. ``as_of - w days <= event_time < as_of``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engage.config import Params

RFM = "customer_rfm"
ACTIVITY = "customer_activity"
ENGAGEMENT = "customer_engagement"
VIEWS = {
    RFM: "Recency, frequency, monetary value, tenure and which half of the index",
    ACTIVITY: "Counts, value sums and recency of each non-purchase event type",
    ENGAGEMENT: "E-mail rates, cart abandonment, intervals, last answers and 30-day trends",
}

ENTITY_KEY = "customer_id"
# Served with the features but never a model input: when the snapshot was taken (epoch
# seconds). Training checks it against each row's as-of time; serving flags stale rows.
SNAPSHOT_TIME = "snapshot_epoch_s"
TIMESTAMP = "event_timestamp"
CREATED = "created_timestamp"


@dataclass(frozen=True)
class FeatureSpec:
    """A feature: the SQL aggregate over the events of one customer before ``as_of``.

    Attributes:
        name: column name.
        view: the Feast feature view it belongs to.
        dtype: ``int`` (counts, flags; 0 when nothing happened) or ``float`` (may be null).
        description: plain-language meaning, shown in Feast and in explanations.
        sql: DuckDB aggregate over the per-type statistics (see :func:`type_stats_sql`).
        zero: the value of a customer with no event at all is 0 (counts, sums), not null.

    """

    name: str
    view: str
    dtype: Literal["int", "float"]
    description: str
    sql: str
    zero: bool = False


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def stat_windows(params: Params) -> list[int]:
    """Every window (days) a per-type count or sum is needed for."""
    fp = params.features
    d = fp.trend_days
    return sorted({*fp.windows_days, *fp.rfm_windows_days, d, 2 * d})


def type_stats_sql(params: Params) -> str:
    """Stage 1: per customer and event type, the few statistics every feature is made of.

    Grouping by (customer, type) first and pivoting afterwards evaluates a handful of
    filtered aggregates per event instead of one per feature (~10x faster).
    """
    parts = [
        "count(*) AS n_all",
        "sum(value) AS s_all",
        "avg(value) AS avg_value",
        "min(age) AS min_age",
        "max(age) AS max_age",
        "min(ts) AS min_ts",
        # Ties on age are broken by the larger value, so the result is deterministic.
        "arg_min(value, (age, -value)) AS last_value",
    ]
    for w in stat_windows(params):
        parts.append(f"count(*) FILTER (WHERE age <= {w}) AS n_{w}")
        parts.append(f"sum(value) FILTER (WHERE age <= {w}) AS s_{w}")
    return ",\n    ".join(parts)


def _of(stat: str, t: str) -> str:
    # Stage 2 has at most one row per (customer, type): max() just picks it.
    return f"max({stat}) FILTER (WHERE event_type = {_q(t)})"


def _n(t: str, w: int | None = None) -> str:
    return f"coalesce({_of('n_all' if w is None else f'n_{w}', t)}, 0)"


def _s(t: str, w: int | None = None) -> str:
    return f"coalesce({_of('s_all' if w is None else f's_{w}', t)}, 0)"


def _n_in(types: str, w: int) -> str:
    return f"coalesce(sum(n_{w}) FILTER (WHERE event_type IN ({types})), 0)"


def _gap(t: str) -> str:
    return f"({_of('max_age', t)} - {_of('min_age', t)}) / nullif({_n(t)} - 1, 0)"


def _trend(a: str, b: str) -> str:
    # (recent - previous) / (recent + previous): -1 = stopped, +1 = started, null = idle.
    return f"(({a}) - ({b}))::DOUBLE / nullif(({a}) + ({b}), 0)"


def feature_specs(params: Params) -> list[FeatureSpec]:
    """All features for the event vocabulary, windows and rates in ``params``.

    Each ``sql`` is a stage-2 aggregate over the per-type statistics of
    :func:`type_stats_sql` (one row per customer and event type).
    """
    fp, conv = params.features, params.data.conversion_event
    active = [t for t in params.data.event_types if t not in fp.passive_event_types]
    active_in = ", ".join(_q(t) for t in active) or "NULL"
    specs: list[FeatureSpec] = [
        FeatureSpec(
            SNAPSHOT_TIME, RFM, "float", "as-of time of the snapshot (epoch seconds)", "NULL"
        ),
        FeatureSpec(
            "tenure_days",
            RFM,
            "float",
            "days since the contact was first seen",
            "NULL",  # filled from the customers table, see aggregates.build_sql
        ),
        FeatureSpec(
            "has_purchased",
            RFM,
            "int",
            f"1 if the contact made a {conv} before the as-of time (right half of the index)",
            f"CAST({_n(conv)} > 0 AS INTEGER)",
        ),
        FeatureSpec(
            "days_since_last_purchase",
            RFM,
            "float",
            f"days since the last {conv}",
            _of("min_age", conv),
        ),
        FeatureSpec(
            "days_since_first_purchase",
            RFM,
            "float",
            f"days since the first {conv}",
            _of("max_age", conv),
        ),
        FeatureSpec("purchases_total", RFM, "int", f"number of {conv} events ever", _n(conv)),
        FeatureSpec(
            "revenue_total", RFM, "float", f"sum of {conv} amounts ever", _s(conv), zero=True
        ),
        FeatureSpec("avg_order_value", RFM, "float", f"mean {conv} amount", _of("avg_value", conv)),
        FeatureSpec(
            "mean_days_between_purchases",
            RFM,
            "float",
            f"mean days between two {conv} events",
            _gap(conv),
        ),
        FeatureSpec(
            "days_since_last_event",
            RFM,
            "float",
            "days since the contact last did anything (sent e-mails excluded)",
            f"min(min_age) FILTER (WHERE event_type IN ({active_in}))",
        ),
    ]
    for w in fp.rfm_windows_days:
        specs.append(
            FeatureSpec(
                f"purchases_{w}d", RFM, "int", f"{conv} events in the last {w} days", _n(conv, w)
            )
        )
        specs.append(
            FeatureSpec(
                f"revenue_{w}d",
                RFM,
                "float",
                f"{conv} amounts in the last {w} days",
                _s(conv, w),
                zero=True,
            )
        )

    # The conversion event is fully described by the RFM view.
    for t in (t for t in params.data.event_types if t != conv):
        label = t.replace("_", " ")
        for w in fp.windows_days:
            specs.append(
                FeatureSpec(
                    f"{t}_count_{w}d",
                    ACTIVITY,
                    "int",
                    f"{label} events in the last {w} days",
                    _n(t, w),
                )
            )
            if t in fp.value_sum_types:
                specs.append(
                    FeatureSpec(
                        f"{t}_value_{w}d",
                        ACTIVITY,
                        "float",
                        f"sum of {label} values in the last {w} days",
                        _s(t, w),
                        zero=True,
                    )
                )
        specs.append(
            FeatureSpec(
                f"days_since_last_{t}",
                ACTIVITY,
                "float",
                f"days since the last {label}",
                _of("min_age", t),
            )
        )

    for name, (num, den) in fp.rates.items():
        for w in fp.windows_days:
            specs.append(
                FeatureSpec(
                    f"{name}_{w}d",
                    ENGAGEMENT,
                    "float",
                    f"{num} / {den} over the last {w} days",
                    f"({_n(num, w)})::DOUBLE / nullif({_n(den, w)}, 0)",
                )
            )
    if fp.cart_event:
        for w in fp.windows_days:
            carts, buys = _n(fp.cart_event, w), _n(conv, w)
            specs.append(
                FeatureSpec(
                    f"cart_abandonment_{w}d",
                    ENGAGEMENT,
                    "float",
                    f"share of carts not turned into a {conv} over the last {w} days",
                    # least() would skip a null ratio (no cart), so clip with CASE.
                    f"CASE WHEN {carts} = 0 THEN NULL "
                    f"ELSE 1 - least(1, ({buys})::DOUBLE / {carts}) END",
                )
            )
    for t in fp.interval_types:
        specs.append(
            FeatureSpec(
                f"mean_days_between_{t}",
                ENGAGEMENT,
                "float",
                f"mean days between two {t.replace('_', ' ')} events",
                _gap(t),
            )
        )
    for t in fp.last_value_types:
        specs.append(
            FeatureSpec(
                f"last_{t}_value",
                ENGAGEMENT,
                "float",
                f"value of the last {t.replace('_', ' ')}",
                _of("last_value", t),
            )
        )
    d = fp.trend_days
    for t in active:
        recent, both = _n(t, d), _n(t, 2 * d)
        specs.append(
            FeatureSpec(
                f"{t}_trend_{d}d",
                ENGAGEMENT,
                "float",
                f"change of {t.replace('_', ' ')} events, last {d} days vs the {d} before "
                "(-1 stopped, +1 started)",
                _trend(recent, f"{both} - {recent}"),
            )
        )
    if active:
        recent, both = _n_in(active_in, d), _n_in(active_in, 2 * d)
        specs.append(
            FeatureSpec(
                f"activity_trend_{d}d",
                ENGAGEMENT,
                "float",
                f"change of all activity, last {d} days vs the {d} before",
                _trend(recent, f"{both} - {recent}"),
            )
        )
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"features: duplicate feature names from params.yaml: {dupes}")
    return specs


def feature_names(params: Params, views: tuple[str, ...] | None = None) -> list[str]:
    """Names of the stored feature columns (metadata included), in catalog order."""
    return [s.name for s in feature_specs(params) if views is None or s.view in views]


def model_feature_names(params: Params) -> list[str]:
    """The model inputs: every feature except the snapshot-time metadata."""
    return [n for n in feature_names(params) if n != SNAPSHOT_TIME]
