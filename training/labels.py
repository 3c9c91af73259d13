"""Labels from observed future events only, for each as-of time and horizon H.

- appetence: every contact known before ``as_of``; 1 if it makes at least one
  conversion event (purchase) in ``[as_of, as_of + H)``.
- churn: the customers still active at ``as_of``: a conversion event before it and at
  least one event of ``labels.churn_activity_types`` in the
  ``labels.churn_active_within_days`` days before it (``as_of - N days <= t < as_of``,
  the same window as an N-day feature). 1 if none of those events happens in
  ``[as_of, as_of + H)``: the customer goes quiet. Customers already quiet for longer
  ("lapsed") are not in the population: predicting that they stay quiet is no news.

Only as-of times whose whole window is observed (``as_of + H <= end of data``) get labels.
The window starts at the as-of time itself because features use only events strictly
before it: each event is either a feature input or a label input, never both or neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from engage.config import Params
from engage.specs import model_spec
from features.catalog import ENTITY_KEY, TIMESTAMP, recency_feature_of
from features.snapshots import to_utc

LABEL = "label"
# The parameters each label rule reads: a model trained with other values answers
# another question, so they are stored with it and checked before it scores.
_RULE_PARAMS = {
    "purchase_in_window": ("conversion_event",),
    "quiet_in_window": ("churn_activity_types", "churn_active_within_days", "conversion_event"),
}
# Values a model must have recorded: one without them was trained on another population
# (before the active-customer rule of the churn model) and must be retrained.
_REQUIRED = {"quiet_in_window": ("churn_active_within_days",)}
_WHERE = {"conversion_event": "data.conversion_event"}


def population(params: Params, model: str) -> str:
    """The rows a model is trained on, in words (stored with it as ``population``)."""
    spec = model_spec(model)
    conv = params.data.conversion_event
    if spec.label_rule == "purchase_in_window":
        return "every contact first seen before the as-of time"
    lp = params.labels
    return (
        f"customers (a {conv} before the as-of time) with at least one of "
        f"{', '.join(lp.churn_activity_types)} in the {lp.churn_active_within_days} days "
        "before it"
    )


def label_definition(params: Params, model: str) -> dict[str, Any]:
    """What the labels of ``model`` mean under ``params``: stored with the trained model.

    Returns:
        ``model``, ``label_rule``, ``horizon_days``, ``feature_service`` and the
        parameters the rule reads (e.g. ``churn_activity_types``).

    Raises:
        ValueError: unknown model.

    """
    spec = model_spec(model)
    values = {
        "conversion_event": params.data.conversion_event,
        "churn_activity_types": list(params.labels.churn_activity_types),
        "churn_active_within_days": params.labels.churn_active_within_days,
    }
    return {
        "model": spec.name,
        "label_rule": spec.label_rule,
        "horizon_days": params.labels.horizon_days,
        "feature_service": spec.feature_service,
        **{k: values[k] for k in _RULE_PARAMS[spec.label_rule]},
        "population": population(params, model),
    }


def population_rule(trained_for: dict[str, Any]) -> tuple[list[str], int] | None:
    """The recency features and window (days) of a model's activity rule, if it has one.

    A churn model trained on active customers holds a contact only if one of its
    ``churn_activity_types`` is at most ``churn_active_within_days`` days old, i.e. one
    of these features is ``<=`` the window (the same bound as the label query). None for
    a model whose population has no such rule (appetence: every contact).
    """
    if trained_for.get("label_rule") != "quiet_in_window":
        return None
    try:
        types = trained_for["churn_activity_types"]
        days = int(trained_for["churn_active_within_days"])
        conv = trained_for["conversion_event"]
    except (KeyError, TypeError, ValueError):
        return None
    return [recency_feature_of(t, conv) for t in types], days


def definition_conflicts(trained_for: dict[str, Any], params: Params, model: str) -> list[str]:
    """How ``params`` contradict what a model was trained for, one line per value.

    An empty list means the model answers the question these params ask. A value the
    model did not record is not a conflict, except the population rule of the churn model
    (a model without it was trained on another population).
    """
    wanted = label_definition(params, model)
    out = []
    for key in _REQUIRED.get(wanted["label_rule"], ()):
        if key not in trained_for:
            out.append(
                f"labels.{key}: the model predates the population rule ({wanted['population']}); "
                "retrain it"
            )
    for key, value in wanted.items():
        if key == "population":
            continue  # words derived from the values compared here
        if key in trained_for and trained_for[key] != value:
            where = _WHERE.get(key, f"labels.{key}")
            if key in ("model", "label_rule", "feature_service"):
                where = key
            out.append(
                f"{where}: the model was trained with {trained_for[key]!r}, "
                f"the parameters say {value!r}"
            )
    return out


def observed_until(events_path: Path) -> pd.Timestamp:
    """End of the observed period: the midnight (UTC) after the last event."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    (last,) = con.execute(
        f"SELECT epoch_us(max(event_time)) FROM read_parquet('{events_path}')"
    ).fetchone()
    con.close()
    if last is None:
        raise ValueError(f"events: {events_path} holds no rows")
    return pd.Timestamp(last, unit="us", tz="UTC").floor("D") + pd.Timedelta(days=1)


def labelable(as_of: Sequence[pd.Timestamp], horizon_days: int, end: pd.Timestamp) -> list:
    """The as-of times whose label window ``[as_of, as_of + H)`` ends by ``end``."""
    h = pd.Timedelta(days=horizon_days)
    return sorted(to_utc(t) for t in as_of if to_utc(t) + h <= to_utc(end))


def make_labels(
    events_path: Path,
    customers_path: Path | None,
    as_of: Sequence[pd.Timestamp],
    params: Params,
    model: str,
) -> pd.DataFrame:
    """Entity rows with labels: ``customer_id``, ``event_timestamp`` (= as_of), ``label``.

    Args:
        events_path: Parquet events.
        customers_path: Parquet customers (first_seen), optional.
        as_of: candidate as-of times; those without a fully observed window are skipped.
        params: the parsed params.yaml.
        model: ``churn`` or ``appetence``.

    Raises:
        ValueError: unknown model, or no as-of time has a fully observed window.
    """
    rule = model_spec(model).label_rule
    lp = params.labels
    end = observed_until(events_path)
    times = labelable(as_of, lp.horizon_days, end)
    if not times:
        raise ValueError(
            f"labels.horizon_days={lp.horizon_days}: no as-of time has a fully observed label "
            f"window (data ends {end:%Y-%m-%d}); use a shorter horizon or more history"
        )
    conv = params.data.conversion_event
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("asofs", pd.DataFrame({"as_of_us": [int(t.value // 1000) for t in times]}))
    con.execute(
        f"CREATE TEMP TABLE ev AS SELECT customer_id, event_type, epoch_us(event_time) AS ts "
        f"FROM read_parquet('{events_path}')"
    )
    first_seen = "SELECT customer_id, min(ts) AS first_us FROM ev GROUP BY customer_id"
    if customers_path is not None and Path(customers_path).exists():
        first_seen = (
            "SELECT customer_id, min(first_us) AS first_us FROM ("
            f"SELECT customer_id, epoch_us(first_seen) AS first_us "
            f"FROM read_parquet('{customers_path}') UNION ALL {first_seen}) GROUP BY customer_id"
        )
    h_us = lp.horizon_days * 86_400_000_000
    active_us = lp.churn_active_within_days * 86_400_000_000
    target_types = [conv] if rule == "purchase_in_window" else list(lp.churn_activity_types)
    target_in = ", ".join("'" + t.replace("'", "''") + "'" for t in target_types)
    # Did a target event happen in [as_of, as_of + H)? Features use t < as_of, so every
    # event falls in exactly one of the two (with date-stamped data, a purchase on the
    # as-of date would otherwise be in neither).
    future = f"""
        SELECT a.as_of_us, e.customer_id FROM asofs a JOIN ev e
          ON e.ts >= a.as_of_us AND e.ts < a.as_of_us + {h_us}
        WHERE e.event_type IN ({target_in}) GROUP BY ALL"""
    if rule == "purchase_in_window":
        population_sql = f"""
            SELECT a.as_of_us, f.customer_id FROM asofs a JOIN ({first_seen}) f
              ON f.first_us < a.as_of_us"""
        label = "CAST(t.customer_id IS NOT NULL AS INTEGER)"
    else:
        # Customers (a conversion before as_of) who did an activity in the last N days:
        # as_of - N days <= t < as_of, the window of an N-day feature.
        population_sql = f"""
            SELECT a.as_of_us, e.customer_id FROM asofs a JOIN ev e
              ON e.ts < a.as_of_us AND e.ts >= a.as_of_us - {active_us}
            JOIN (SELECT customer_id, min(ts) AS first_buy FROM ev
                  WHERE event_type = '{conv}' GROUP BY customer_id) b
              ON b.customer_id = e.customer_id AND b.first_buy < a.as_of_us
            WHERE e.event_type IN ({target_in}) GROUP BY ALL"""
        label = "CAST(t.customer_id IS NULL AS INTEGER)"
    out = con.execute(
        f"""
        SELECT p.customer_id AS {ENTITY_KEY}, make_timestamptz(p.as_of_us) AS {TIMESTAMP},
               {label} AS {LABEL}
        FROM ({population_sql}) p LEFT JOIN ({future}) t
          ON p.customer_id = t.customer_id AND p.as_of_us = t.as_of_us
        ORDER BY {TIMESTAMP}, {ENTITY_KEY}
        """
    ).df()
    con.close()
    out[TIMESTAMP] = pd.to_datetime(out[TIMESTAMP], utc=True)
    return out
