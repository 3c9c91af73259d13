"""A straightforward pandas implementation of the same features, one as-of time at a time.

It is deliberately naive (filter, groupby, merge) and shares no code with the DuckDB SQL
except the parameters: the golden test checks the SQL against it, and the benchmark uses
it as the baseline.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from engage.config import Params
from features.catalog import ENTITY_KEY, RATE_DAYS, SNAPSHOT_TIME, TIMESTAMP
from features.snapshots import to_utc

_DAY = pd.Timedelta(days=1)


def reference_snapshot(
    events: pd.DataFrame, customers: pd.DataFrame | None, as_of: pd.Timestamp, params: Params
) -> pd.DataFrame:
    """Features at ``as_of`` per customer, computed with pandas; index = customer_id.

    Args:
        events: columns customer_id, event_time (tz-aware), event_type, value.
        customers: columns customer_id, first_seen (or None).
        as_of: the as-of time.
        params: the parsed params.yaml.

    """
    as_of = to_utc(as_of)
    fp, conv = params.features, params.data.conversion_event
    ev = events[events["event_time"] < as_of].copy()
    ev["age"] = (as_of - ev["event_time"]) / _DAY
    first = ev.groupby("customer_id")["event_time"].min()
    if customers is not None:
        cs = customers[customers["first_seen"] < as_of].set_index("customer_id")["first_seen"]
        first = pd.concat([first, cs]).groupby(level=0).min()
    out = pd.DataFrame(index=first.index.sort_values())
    out.index.name = ENTITY_KEY
    out[SNAPSHOT_TIME] = as_of.timestamp()
    out["tenure_days"] = (as_of - first) / _DAY

    def of_type(t: str, max_age: float = np.inf, min_age: float = 0.0) -> pd.DataFrame:
        return ev[(ev["event_type"] == t) & (ev["age"] <= max_age) & (ev["age"] > min_age)]

    def count(t: str, max_age: float = np.inf, min_age: float = 0.0) -> pd.Series:
        c = of_type(t, max_age, min_age).groupby("customer_id").size()
        return c.reindex(out.index, fill_value=0).astype("int64")

    def vsum(t: str, max_age: float = np.inf) -> pd.Series:
        s = of_type(t, max_age).groupby("customer_id")["value"].sum()
        return s.reindex(out.index, fill_value=0.0).astype(float)

    def age_stat(t: str, how: str) -> pd.Series:
        return of_type(t).groupby("customer_id")["age"].agg(how).reindex(out.index)

    def mean_gap(t: str) -> pd.Series:
        n = count(t)
        return (age_stat(t, "max") - age_stat(t, "min")) / (n - 1).where(n > 1)

    def ratio(a: pd.Series, b: pd.Series) -> pd.Series:
        return a / b.where(b > 0)

    out["has_purchased"] = (count(conv) > 0).astype("int64")
    out["days_since_last_purchase"] = age_stat(conv, "min")
    out["days_since_first_purchase"] = age_stat(conv, "max")
    out["purchases_total"] = count(conv)
    out["revenue_total"] = vsum(conv)
    out["avg_order_value"] = of_type(conv).groupby("customer_id")["value"].mean()
    out["mean_days_between_purchases"] = mean_gap(conv)
    active = [t for t in params.data.event_types if t not in fp.passive_event_types]
    act = ev[ev["event_type"].isin(active)]
    out["days_since_last_event"] = act.groupby("customer_id")["age"].min()
    life = out["tenure_days"].clip(lower=1.0)
    out[f"purchases_per_{RATE_DAYS}_days"] = out["purchases_total"] * RATE_DAYS / life
    out[f"revenue_per_{RATE_DAYS}_days"] = out["revenue_total"] * RATE_DAYS / life
    gap = out["mean_days_between_purchases"]
    out["purchase_overdue_ratio"] = out["days_since_last_purchase"] / gap.where(gap != 0)
    out["inactive_share_of_tenure"] = out["days_since_last_event"] / out["tenure_days"]
    for w in fp.rfm_windows_days:
        out[f"purchases_{w}d"] = count(conv, w)
        out[f"revenue_{w}d"] = vsum(conv, w)
    for t in (t for t in params.data.event_types if t != conv):
        for w in fp.windows_days:
            out[f"{t}_count_{w}d"] = count(t, w)
            if t in fp.value_sum_types:
                out[f"{t}_value_{w}d"] = vsum(t, w)
        out[f"days_since_last_{t}"] = age_stat(t, "min")
    for name, (num, den) in fp.rates.items():
        for w in fp.windows_days:
            out[f"{name}_{w}d"] = ratio(count(num, w), count(den, w))
    if fp.cart_event:
        for w in fp.windows_days:
            r = ratio(count(conv, w), count(fp.cart_event, w))
            out[f"cart_abandonment_{w}d"] = 1 - r.clip(upper=1)
    for t in fp.interval_types:
        out[f"mean_days_between_{t}"] = mean_gap(t)
    for t in fp.last_value_types:
        e = of_type(t).sort_values(["customer_id", "age", "value"], ascending=[True, True, False])
        out[f"last_{t}_value"] = e.groupby("customer_id")["value"].first()
    d = fp.trend_days

    def trend(a: pd.Series, b: pd.Series) -> pd.Series:
        return (a - b) / (a + b).where(a + b > 0)

    for t in active:
        out[f"{t}_trend_{d}d"] = trend(count(t, d), count(t, 2 * d, d))
    if active:
        out[f"activity_per_{RATE_DAYS}_days"] = sum(count(t) for t in active) * RATE_DAYS / life
        a = sum(count(t, d) for t in active)
        b = sum(count(t, 2 * d, d) for t in active)
        out[f"activity_trend_{d}d"] = trend(a, b)
    out.insert(0, TIMESTAMP, as_of)
    return out
