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
        sql: DuckDB aggregate expression over ``ev`` (columns event_type, value, age).
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


def _count(t: str, cond: str = "TRUE") -> str:
    return f"count(*) FILTER (WHERE event_type = {_q(t)} AND {cond})"


def _trend(a: str, b: str) -> str:
    # (recent - previous) / (recent + previous): -1 = stopped, +1 = started, null = idle.
    return f"(({a}) - ({b}))::DOUBLE / nullif(({a}) + ({b}), 0)"


def feature_specs(params: Params) -> list[FeatureSpec]:
    """All features for the event vocabulary, windows and rates in ``params``."""
    fp, conv = params.features, params.data.conversion_event
    active = [t for t in params.data.event_types if t not in fp.passive_event_types]
    active_in = ", ".join(_q(t) for t in active) or "NULL"
    specs: list[FeatureSpec] = [
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
            f"CAST({_count(conv)} > 0 AS INTEGER)",
        ),
        FeatureSpec(
            "days_since_last_purchase",
            RFM,
            "float",
            f"days since the last {conv}",
            f"min(age) FILTER (WHERE event_type = {_q(conv)})",
        ),
        FeatureSpec(
            "days_since_first_purchase",
            RFM,
            "float",
            f"days since the first {conv}",
            f"max(age) FILTER (WHERE event_type = {_q(conv)})",
        ),
        FeatureSpec("purchases_total", RFM, "int", f"number of {conv} events ever", _count(conv)),
        FeatureSpec(
            "revenue_total",
            RFM,
            "float",
            f"sum of {conv} amounts ever",
            f"coalesce(sum(value) FILTER (WHERE event_type = {_q(conv)}), 0)",
            zero=True,
        ),
        FeatureSpec(
            "avg_order_value",
            RFM,
            "float",
            f"mean {conv} amount",
            f"avg(value) FILTER (WHERE event_type = {_q(conv)})",
        ),
        FeatureSpec(
            "mean_days_between_purchases",
            RFM,
            "float",
            f"mean days between two {conv} events",
            f"(max(age) FILTER (WHERE event_type = {_q(conv)}) - min(age) FILTER "
            f"(WHERE event_type = {_q(conv)})) / nullif({_count(conv)} - 1, 0)",
        ),
        FeatureSpec(
            "days_since_last_event",
            RFM,
            "float",
            "days since the contact last did anything (sent e-mails excluded)",
            f"min(age) FILTER (WHERE event_type IN ({active_in}))",
        ),
    ]
    for w in fp.rfm_windows_days:
        specs.append(
            FeatureSpec(
                f"purchases_{w}d",
                RFM,
                "int",
                f"{conv} events in the last {w} days",
                _count(conv, f"age <= {w}"),
            )
        )
        specs.append(
            FeatureSpec(
                f"revenue_{w}d",
                RFM,
                "float",
                f"{conv} amounts in the last {w} days",
                f"coalesce(sum(value) FILTER (WHERE event_type = {_q(conv)} AND age <= {w}), 0)",
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
                    _count(t, f"age <= {w}"),
                )
            )
            if t in fp.value_sum_types:
                specs.append(
                    FeatureSpec(
                        f"{t}_value_{w}d",
                        ACTIVITY,
                        "float",
                        f"sum of {label} values in the last {w} days",
                        f"coalesce(sum(value) FILTER "
                        f"(WHERE event_type = {_q(t)} AND age <= {w}), 0)",
                        zero=True,
                    )
                )
        specs.append(
            FeatureSpec(
                f"days_since_last_{t}",
                ACTIVITY,
                "float",
                f"days since the last {label}",
                f"min(age) FILTER (WHERE event_type = {_q(t)})",
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
                    f"({_count(num, f'age <= {w}')})::DOUBLE / "
                    f"nullif({_count(den, f'age <= {w}')}, 0)",
                )
            )
    if fp.cart_event:
        for w in fp.windows_days:
            carts = _count(fp.cart_event, f"age <= {w}")
            buys = _count(conv, f"age <= {w}")
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
                f"(max(age) FILTER (WHERE event_type = {_q(t)}) - min(age) FILTER "
                f"(WHERE event_type = {_q(t)})) / nullif({_count(t)} - 1, 0)",
            )
        )
    for t in fp.last_value_types:
        specs.append(
            FeatureSpec(
                f"last_{t}_value",
                ENGAGEMENT,
                "float",
                f"value of the last {t.replace('_', ' ')}",
                # Ties on age are broken by the larger value so the result is deterministic.
                f"arg_min(value, (age, -value)) FILTER (WHERE event_type = {_q(t)})",
            )
        )
    d = fp.trend_days
    recent, before = f"age <= {d}", f"age > {d} AND age <= {2 * d}"
    for t in active:
        specs.append(
            FeatureSpec(
                f"{t}_trend_{d}d",
                ENGAGEMENT,
                "float",
                f"change of {t.replace('_', ' ')} events, last {d} days vs the {d} before "
                "(-1 stopped, +1 started)",
                _trend(_count(t, recent), _count(t, before)),
            )
        )
    if active:
        a = f"count(*) FILTER (WHERE event_type IN ({active_in}) AND {recent})"
        b = f"count(*) FILTER (WHERE event_type IN ({active_in}) AND {before})"
        specs.append(
            FeatureSpec(
                f"activity_trend_{d}d",
                ENGAGEMENT,
                "float",
                f"change of all activity, last {d} days vs the {d} before",
                _trend(a, b),
            )
        )
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"features: duplicate feature names from params.yaml: {dupes}")
    return specs


def feature_names(params: Params, views: tuple[str, ...] | None = None) -> list[str]:
    """Names of the features, optionally only those of some views, in catalog order."""
    return [s.name for s in feature_specs(params) if views is None or s.view in views]
