"""Labels from observed future events only, for each as-of time and horizon H.

- appetence: every contact known before ``as_of``; 1 if it makes at least one
  conversion event (purchase) in ``[as_of, as_of + H)``.
- churn: customers (a purchase before ``as_of``) still active (a purchase within
  ``labels.active_within_days`` before ``as_of``); 1 if no event of
  ``labels.churn_activity_types`` happens in ``[as_of, as_of + H)``.

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
from features.catalog import ENTITY_KEY, TIMESTAMP
from features.snapshots import to_utc

LABEL = "label"
# The parameters each label rule reads: a model trained with other values answers
# another question, so they are stored with it and checked before it scores.
_RULE_PARAMS = {
    "purchase_in_window": ("conversion_event",),
    "quiet_in_window": ("churn_activity_types", "active_within_days", "conversion_event"),
}


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
        "active_within_days": params.labels.active_within_days,
    }
    return {
        "model": spec.name,
        "label_rule": spec.label_rule,
        "horizon_days": params.labels.horizon_days,
        "feature_service": spec.feature_service,
        **{k: values[k] for k in _RULE_PARAMS[spec.label_rule]},
    }


def definition_conflicts(trained_for: dict[str, Any], params: Params, model: str) -> list[str]:
    """How ``params`` contradict what a model was trained for, one line per value.

    An empty list means the model answers the question these params ask. A value the
    model did not record is not a conflict.
    """
    wanted = label_definition(params, model)
    out = []
    for key, value in wanted.items():
        if key in trained_for and trained_for[key] != value:
            where = f"labels.{key}" if key != "conversion_event" else "data.conversion_event"
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
    active_us = lp.active_within_days * 86_400_000_000
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
        population = f"""
            SELECT a.as_of_us, f.customer_id FROM asofs a JOIN ({first_seen}) f
              ON f.first_us < a.as_of_us"""
        label = "CAST(t.customer_id IS NOT NULL AS INTEGER)"
    else:
        population = f"""
            SELECT a.as_of_us, e.customer_id FROM asofs a JOIN ev e
              ON e.ts < a.as_of_us AND e.ts >= a.as_of_us - {active_us}
            WHERE e.event_type = '{conv}' GROUP BY ALL"""
        label = "CAST(t.customer_id IS NULL AS INTEGER)"
    out = con.execute(
        f"""
        SELECT p.customer_id AS {ENTITY_KEY}, make_timestamptz(p.as_of_us) AS {TIMESTAMP},
               {label} AS {LABEL}
        FROM ({population}) p LEFT JOIN ({future}) t
          ON p.customer_id = t.customer_id AND p.as_of_us = t.as_of_us
        ORDER BY {TIMESTAMP}, {ENTITY_KEY}
        """
    ).df()
    con.close()
    out[TIMESTAMP] = pd.to_datetime(out[TIMESTAMP], utc=True)
    return out
