"""The list of behavioural features, derived from ``params.yaml``.

One :class:`FeatureSpec` per column: its name, Feast view, type, description and the
DuckDB expression that computes it from a few statistics per event type. Everything
downstream (the SQL build, the pandas reference, the Feast feature views and services,
the models) reads this list, so adding an event type or a window to ``params.yaml`` adds
features without code.

Conventions: ``age`` is the age of an event at the as-of time in days (always > 0,
because only events strictly before ``as_of`` are used); a window of ``w`` days holds the
events with ``age <= w``, i.e. ``as_of - w days <= event_time < as_of``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
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
# The feature family of each view, as tagged in Feast (short names to filter on).
FAMILIES = {RFM: "rfm", ACTIVITY: "activity", ENGAGEMENT: "engagement"}

ENTITY_KEY = "customer_id"
# Served with the features but never a model input: when the snapshot was taken (epoch
# seconds). Training checks it against each row's as-of time; serving flags stale rows.
SNAPSHOT_TIME = "snapshot_epoch_s"
TIMESTAMP = "event_timestamp"
CREATED = "created_timestamp"
DAY_US = 86_400_000_000  # one day in microseconds, the unit of every stored time
# The builder's column of each contact's first-seen time (epoch µs; the earliest of the
# customers table and the first event), and the tenure it gives at the as-of time.
FIRST_SEEN_US = "first_seen_us"
TENURE_SQL = f"(($as_of_us - {FIRST_SEEN_US}) / {DAY_US}::DOUBLE)"
# Rates "per 30 days of known life" divide by the tenure, floored at one day so that a
# contact first seen an hour ago does not get an absurd rate.
RATE_DAYS = 30


@dataclass(frozen=True)
class FeatureSpec:
    """A feature: a SQL expression over the events of one customer before ``as_of``.

    Attributes:
        name: column name.
        view: the Feast feature view it belongs to.
        dtype: ``int`` (counts, flags; 0 when nothing happened) or ``float`` (may be null).
        description: plain-language meaning, shown in Feast and in explanations.
        sql: DuckDB expression over one customer's per-type statistics, the columns
            ``"<event type>.<stat>"`` (see ``features.aggregates.STATS``), and
            ``$as_of_us`` (the as-of time in epoch µs).
        zero: the value of a customer with no event at all is 0 (counts, sums), not null.
        unit: what one unit of the value is (``days``, ``count``, ``rate``, ``flag``,
            ``ratio`` (a trend in [-1, 1]), ``share`` ([0, 1]), ``per_period`` (a count per
            ``RATE_DAYS`` days), ``amount_per_period``, ``multiple`` (a ratio >= 0),
            ``seconds``, or the ``data.value_units`` entry of a ``value``);
            None when unknown.
        window_days: the look-back window of a windowed count, sum, rate or trend.
        kind: what sort of aggregate it is, for sentences that a person reads
            (:mod:`serving.explain`): ``meta``, ``tenure``, ``flag``, ``recency`` (days
            since the last event), ``first`` (days since the first), ``count``, ``sum``,
            ``average``, ``interval`` (mean days between events), ``rate``,
            ``abandonment``, ``last_value`` or ``trend``.

    """

    name: str
    view: str
    dtype: Literal["int", "float"]
    description: str
    sql: str
    zero: bool = False
    unit: str | None = None
    window_days: int | None = None
    kind: str | None = None


def stat_windows(params: Params) -> list[int]:
    """Every window (days) a per-type count or sum is needed for."""
    fp = params.features
    d = fp.trend_days
    return sorted({*fp.windows_days, *fp.rfm_windows_days, d, 2 * d})


# A per-type statistic is the column "<event type>.<stat>" of the builder's statistics table.
# Event types are identifiers and stats have no dot, so the name splits back unambiguously.
_STAT_COLUMN = re.compile(r'"([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)"')


def _col(stat: str, t: str) -> str:
    return f'"{t}.{stat}"'


def stat_columns(specs: list[FeatureSpec]) -> list[tuple[str, str]]:
    """The ``(event type, stat)`` pairs the feature SQL reads, in order of first use."""
    seen: dict[tuple[str, str], None] = {}
    for spec in specs:
        for t, stat in _STAT_COLUMN.findall(spec.sql):
            seen.setdefault((t, stat), None)
    return list(seen)


def _age(ts: str) -> str:
    # Same arithmetic as a per-event age, (as_of - ts) / 1 day, so results are identical.
    return f"(($as_of_us - {ts}) / {DAY_US}::DOUBLE)"


def _of(stat: str, t: str) -> str:
    # Ages are derived from the extreme times: the last event has the smallest age.
    if stat == "min_age":
        return _age(_col("max_ts", t))
    if stat == "max_age":
        return _age(_col("min_ts", t))
    if stat == "avg_value":
        return f"({_col('s_all', t)} / nullif({_col('n_val', t)}, 0))"
    return _col(stat, t)


def _n(t: str, w: int | None = None) -> str:
    # Counts and sums are 0, not null, for a type the customer never did.
    return _col("n_all" if w is None else f"n_{w}", t)


def _s(t: str, w: int | None = None) -> str:
    return _col("s_all" if w is None else f"s_{w}", t)


def _n_in(types: list[str], w: int) -> str:
    return "(" + " + ".join(_n(t, w) for t in types) + ")" if types else "0"


def _gap(t: str) -> str:
    return f"({_of('max_age', t)} - {_of('min_age', t)}) / nullif({_n(t)} - 1, 0)"


def _per_tenure(expr: str) -> str:
    return f"(({expr})::DOUBLE * {RATE_DAYS} / greatest({TENURE_SQL}, 1.0))"


def _trend(a: str, b: str) -> str:
    # (recent - previous) / (recent + previous): -1 = stopped, +1 = started, null = idle.
    return f"(({a}) - ({b}))::DOUBLE / nullif(({a}) + ({b}), 0)"


def feature_specs(params: Params) -> list[FeatureSpec]:
    """All features for the event vocabulary, windows and rates in ``params``.

    Each ``sql`` is a scalar expression over one customer's row of per-type statistics,
    one column ``"<type>.<stat>"`` each (see :func:`stat_columns` and
    ``features.aggregates.STATS``).
    """
    fp, conv = params.features, params.data.conversion_event
    value_unit = params.data.value_units.get  # unit of the `value` of an event type
    active = [t for t in params.data.event_types if t not in fp.passive_event_types]
    specs: list[FeatureSpec] = [
        FeatureSpec(
            SNAPSHOT_TIME,
            RFM,
            "float",
            "as-of time of the snapshot (epoch seconds)",
            "NULL",
            unit="seconds",
        ),
        FeatureSpec(
            "tenure_days",
            RFM,
            "float",
            "days since the contact was first seen",
            # first_seen_us is the earliest of the customers table and the first event.
            TENURE_SQL,
            unit="days",
        ),
        FeatureSpec(
            "has_purchased",
            RFM,
            "int",
            f"1 if the contact made a {conv} before the as-of time (right half of the index)",
            f"CAST({_n(conv)} > 0 AS INTEGER)",
            unit="flag",
        ),
        FeatureSpec(
            "days_since_last_purchase",
            RFM,
            "float",
            f"days since the last {conv}",
            _of("min_age", conv),
            unit="days",
        ),
        FeatureSpec(
            "days_since_first_purchase",
            RFM,
            "float",
            f"days since the first {conv}",
            _of("max_age", conv),
            unit="days",
        ),
        FeatureSpec(
            "purchases_total",
            RFM,
            "int",
            f"number of {conv} events ever",
            _n(conv),
            unit="count",
        ),
        FeatureSpec(
            "revenue_total",
            RFM,
            "float",
            f"sum of {conv} amounts ever",
            _s(conv),
            zero=True,
            unit=value_unit(conv),
        ),
        FeatureSpec(
            "avg_order_value",
            RFM,
            "float",
            f"mean {conv} amount",
            _of("avg_value", conv),
            unit=value_unit(conv),
        ),
        FeatureSpec(
            "mean_days_between_purchases",
            RFM,
            "float",
            f"mean days between two {conv} events",
            _gap(conv),
            unit="days",
        ),
        FeatureSpec(
            "days_since_last_event",
            RFM,
            "float",
            "days since the contact last did anything (sent e-mails excluded)",
            # least() skips nulls: the most recent of the types the contact did.
            f"least({', '.join(_of('min_age', t) for t in active)})" if active else "NULL",
            unit="days",
        ),
    ]
    last_event_sql = specs[-1].sql
    # Cohort-free forms of the same facts: a rate over the known life or a ratio says
    # what the raw count or age says without growing with the age of the cohort, so a
    # model trained on younger snapshots still reads a later one sensibly.
    specs += [
        FeatureSpec(
            f"purchases_per_{RATE_DAYS}_days",
            RFM,
            "float",
            f"{conv} events per {RATE_DAYS} days of known life (tenure, at least a day)",
            _per_tenure(_n(conv)),
            unit="per_period",
        ),
        FeatureSpec(
            f"revenue_per_{RATE_DAYS}_days",
            RFM,
            "float",
            f"{conv} amounts per {RATE_DAYS} days of known life (tenure, at least a day)",
            _per_tenure(f"coalesce({_s(conv)}, 0)"),
            unit="amount_per_period",
        ),
        FeatureSpec(
            "purchase_overdue_ratio",
            RFM,
            "float",
            f"days since the last {conv} / mean days between two (1 = one usual gap)",
            f"({_of('min_age', conv)}) / nullif({_gap(conv)}, 0)",
            unit="multiple",
        ),
        FeatureSpec(
            "inactive_share_of_tenure",
            RFM,
            "float",
            "share of the known life since the last own action (0 = just acted, 1 = never since)",
            f"({last_event_sql}) / {TENURE_SQL}",
            unit="share",
        ),
    ]
    for w in fp.rfm_windows_days:
        specs.append(
            FeatureSpec(
                f"purchases_{w}d",
                RFM,
                "int",
                f"{conv} events in the last {w} days",
                _n(conv, w),
                unit="count",
                window_days=w,
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
                unit=value_unit(conv),
                window_days=w,
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
                    unit="count",
                    window_days=w,
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
                        unit=value_unit(t),
                        window_days=w,
                    )
                )
        specs.append(
            FeatureSpec(
                f"days_since_last_{t}",
                ACTIVITY,
                "float",
                f"days since the last {label}",
                _of("min_age", t),
                unit="days",
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
                    unit="rate",
                    window_days=w,
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
                    unit="rate",
                    window_days=w,
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
                unit="days",
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
                unit=value_unit(t),
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
                unit="ratio",
                window_days=d,
            )
        )
    if active:
        specs.append(
            FeatureSpec(
                f"activity_per_{RATE_DAYS}_days",
                ENGAGEMENT,
                "float",
                f"own actions (all types but sent e-mails) per {RATE_DAYS} days of known life",
                _per_tenure(" + ".join(_n(t) for t in active)),
                unit="per_period",
            )
        )
        recent, both = _n_in(active, d), _n_in(active, 2 * d)
        specs.append(
            FeatureSpec(
                f"activity_trend_{d}d",
                ENGAGEMENT,
                "float",
                f"change of all activity, last {d} days vs the {d} before",
                _trend(recent, f"{both} - {recent}"),
                unit="ratio",
                window_days=d,
            )
        )
    specs = [replace(s, kind=_kind(s, conv)) for s in specs]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"features: duplicate feature names from params.yaml: {dupes}")
    return specs


def _kind(spec: FeatureSpec, conv: str) -> str:
    """The ``kind`` of a feature built by :func:`feature_specs`, from its name and SQL."""
    n = spec.name
    fixed = {
        SNAPSHOT_TIME: "meta",
        "tenure_days": "tenure",
        "has_purchased": "flag",
        "days_since_first_purchase": "first",
        "days_since_last_event": "recency",
        "avg_order_value": "average",
        "purchases_total": "count",
        "revenue_total": "sum",
        "purchase_overdue_ratio": "overdue",
        "inactive_share_of_tenure": "inactive_share",
    }
    if n in fixed:
        return fixed[n]
    patterns = [
        (r".*_per_\d+_days$", "per_period"),
        (r"days_since_last_", "recency"),
        (r"mean_days_between_", "interval"),
        (r"cart_abandonment_", "abandonment"),
        (r"last_.*_value$", "last_value"),
        (r".*_trend_\d+d$", "trend"),
        (r"(purchases_\d+d|.*_count_\d+d)$", "count"),
        (r"(revenue_\d+d|.*_value_\d+d)$", "sum"),
    ]
    for pattern, kind in patterns:
        if re.match(pattern, n):
            return kind
    return "rate" if spec.unit == "rate" else "other"


def feature_tags(spec: FeatureSpec) -> dict[str, str]:
    """The Feast tags of one feature: family, unit, window, event types, model input.

    ``event_types`` lists the types the feature's SQL reads, in order of first use (for a
    rate: numerator, then denominator), so it cannot drift from the computation. Keys
    with nothing to say (no window, unit unknown, no event read) are left out.
    """
    tags = {
        "family": FAMILIES[spec.view],
        "model_input": str(spec.name != SNAPSHOT_TIME).lower(),
    }
    if spec.unit:
        tags["unit"] = spec.unit
    if spec.window_days is not None:
        tags["window_days"] = str(spec.window_days)
    types = list(dict.fromkeys(t for t, _ in stat_columns([spec])))
    if types:
        tags["event_types"] = ",".join(types)
    return tags


# Upper bounds of the value rules: far above any real contact, far below float overflow
# (CLV multiplies an amount by a count: 1e12 x 1e7 is still a finite float).
MAX_COUNT = 10_000_000
MAX_DAYS = 36_525  # a century
MAX_SECONDS = 3_155_760_000  # a century of seconds
MAX_AMOUNT = 1e12
MAX_MAGNITUDE = 1e12  # any other number (an unknown unit)
NPS_EVENT, NPS_RANGE = "nps_response", (0.0, 10.0)  # what ingest validation enforces


@dataclass(frozen=True)
class ValueRule:
    """The values a feature can take: ``low <= v <= high``, whole numbers if ``integer``.

    Attributes:
        low: smallest value allowed.
        high: largest value allowed.
        integer: only whole numbers (counts, flags).
        kind: what the feature is (``count``, ``days``, ``rate``, ...), for messages.
        nullable: whether "not observed" (null) is a possible value: not for counts and
            flags, which are 0 when nothing happened.

    """

    low: float
    high: float
    integer: bool = False
    kind: str = "number"
    nullable: bool = True

    def describe(self) -> str:
        """The rule in words, e.g. ``a count: a whole number from 0 to 10,000,000``."""
        whole = "a whole number" if self.integer else "a number"
        return f"{self.kind}: {whole} from {_number(self.low)} to {_number(self.high)}"


def _number(v: float) -> str:
    return f"{int(v):,}" if float(v).is_integer() else f"{v:g}"


def money_features(params: Params) -> list[str]:
    """The features computed from the conversion event's amounts (revenue, order value).

    A store ingested with ``--no-amounts`` has purchases without a value: these features
    are then unknown (null) for every contact, not zero.
    """
    amount_units = {"amount", params.data.value_units.get(params.data.conversion_event)} - {None}
    return [
        s.name
        for s in feature_specs(params)
        if s.unit in amount_units or s.unit == "amount_per_period"
    ]


def value_rules(params: Params) -> dict[str, ValueRule]:
    """The allowed range of every model input, derived from the catalog's units.

    Counts and flags are whole numbers (flags 0 or 1) and never null, days and amounts
    are never negative, rates lie in [0, 1] and trends in [-1, 1]; the last NPS answer is
    0-10 like the events it comes from; any other feature may be null (not observed).
    Every rule has an upper bound, so no accepted input can overflow CLV or value at
    risk. The service enforces them on caller-sent features.
    """
    amount_units = {"amount", params.data.value_units.get(params.data.conversion_event)} - {None}
    rules: dict[str, ValueRule] = {}
    for spec in feature_specs(params):
        if spec.name == SNAPSHOT_TIME:
            continue
        unit = spec.unit
        if unit == "flag":
            rule = ValueRule(0, 1, True, "a flag")
        elif unit == "count":
            rule = ValueRule(0, MAX_COUNT, True, "a count")
        elif unit == "days":
            rule = ValueRule(0, MAX_DAYS, False, "a number of days")
        elif unit == "rate":
            rule = ValueRule(0, 1, False, "a rate")
        elif unit == "ratio":
            rule = ValueRule(-1, 1, False, "a trend")
        elif unit == "share":
            rule = ValueRule(0, 1, False, "a share")
        elif unit == "per_period":
            rule = ValueRule(0, MAX_COUNT, False, f"a count per {RATE_DAYS} days")
        elif unit == "amount_per_period":
            rule = ValueRule(0, MAX_AMOUNT, False, f"an amount per {RATE_DAYS} days")
        elif unit == "multiple":
            rule = ValueRule(0, MAX_MAGNITUDE, False, "a multiple")
        elif unit == "seconds":
            rule = ValueRule(0, MAX_SECONDS, False, "a number of seconds")
        elif unit in amount_units:
            rule = ValueRule(0, MAX_AMOUNT, False, "an amount")
        elif spec.name == f"last_{NPS_EVENT}_value":
            rule = ValueRule(*NPS_RANGE, False, "an NPS score")
        else:
            rule = ValueRule(-MAX_MAGNITUDE, MAX_MAGNITUDE)
        if spec.dtype == "int":  # counts and flags: 0 when nothing happened, never null
            rule = ValueRule(rule.low, rule.high, rule.integer, rule.kind, nullable=False)
        rules[spec.name] = rule
    return rules


def feature_names(params: Params, views: tuple[str, ...] | None = None) -> list[str]:
    """Names of the stored feature columns (metadata included), in catalog order."""
    return [s.name for s in feature_specs(params) if views is None or s.view in views]


def model_feature_names(params: Params) -> list[str]:
    """The model inputs: every feature except the snapshot-time metadata."""
    return [n for n in feature_names(params) if n != SNAPSHOT_TIME]


def recency_feature(params: Params, event_type: str) -> str:
    """The feature holding the days since a contact's last event of ``event_type``."""
    return recency_feature_of(event_type, params.data.conversion_event)


def recency_feature_of(event_type: str, conversion_event: str) -> str:
    """:func:`recency_feature` from the conversion event alone (e.g. a model's record)."""
    if event_type == conversion_event:
        return "days_since_last_purchase"
    return f"days_since_last_{event_type}"


# Model-side inputs (computed by the model from snapshot features, never stored): BG/NBD's
# probability that the contact is still alive and its expected number of purchases over
# the label horizon (see training/btyd.py and training/model.py).
BTYD_INPUTS = {
    "btyd_p_alive": "probability that the contact still buys at all (BG/NBD)",
    "btyd_expected_purchases": "expected purchases within the horizon (BG/NBD)",
}

# Feature families whose effect on a model has a known direction; LightGBM is constrained
# to it (``training.monotone_constraints``). +1: the probability never falls when the
# feature grows; -1: it never rises; families not listed are free. "Activity" is
# ``labels.churn_activity_types`` (purchase, open, click, visit, cart): the actions whose
# absence is churn.
MONOTONE_FAMILIES = {
    # days since the last activity, share of life since the last action, overdue ratio
    "activity recency": {"churn": +1, "appetence": -1},
    # counts of activity in windows, purchases ever, rates per 30 days of life
    "activity volume": {"churn": -1, "appetence": +1},
    # BG/NBD P(alive) and expected purchases
    "btyd": {"churn": -1, "appetence": +1},
}


def feature_families(params: Params) -> dict[str, str]:
    """The monotone family of each feature that has one (see :data:`MONOTONE_FAMILIES`).

    The conversion event's own recency and short-window counts are left out for
    appetence by :func:`monotone_directions`: a purchase last week can make another one
    this month less likely (repurchase cycles), so only its long-run volume is constrained.
    """
    fp, conv = params.features, params.data.conversion_event
    activity = list(params.labels.churn_activity_types)
    out: dict[str, str] = {}
    for name in ("days_since_last_event", "inactive_share_of_tenure", "purchase_overdue_ratio"):
        out[name] = "activity recency"
    for t in activity:
        out[recency_feature(params, t)] = "activity recency"
        if t == conv:
            names = [f"purchases_{w}d" for w in fp.rfm_windows_days]
            names += ["purchases_total", f"purchases_per_{RATE_DAYS}_days"]
        else:
            names = [f"{t}_count_{w}d" for w in fp.windows_days]
        for name in names:
            out[name] = "activity volume"
    out[f"activity_per_{RATE_DAYS}_days"] = "activity volume"
    for name in BTYD_INPUTS:
        out[name] = "btyd"
    return out


def monotone_directions(params: Params, model: str) -> dict[str, int]:
    """Feature name -> +1 / -1 for ``model`` (features without a known direction absent).

    Raises:
        ValueError: ``model`` has no directions defined.

    """
    if model not in MONOTONE_FAMILIES["btyd"]:
        raise ValueError(f"monotone_directions: no directions for model {model!r}")
    conv = params.data.conversion_event
    longest = max(params.features.rfm_windows_days)
    # For appetence, the conversion event's recency and short windows are free (see above).
    free = set()
    if model == "appetence":
        free = {recency_feature(params, conv), "purchase_overdue_ratio"}
        free |= {f"purchases_{w}d" for w in params.features.rfm_windows_days if w < longest}
    known = set(feature_names(params)) | set(BTYD_INPUTS)
    return {
        name: MONOTONE_FAMILIES[family][model]
        for name, family in feature_families(params).items()
        if name in known and name not in free
    }
