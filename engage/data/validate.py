"""Row-level validation of incoming ``events`` and ``customers``.

Every rule is checked on every row at once (pandera's lazy mode), so one run reports all
problems of a file. Rows that fail any rule are returned apart, with the rules they
failed, and nothing is dropped silently: ``good_rows + bad_rows == total_rows``.

Parsing is done first with plain pandas (it decides what a timestamp or a number is);
the rules on the parsed values are a pandera schema.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from pandera.errors import SchemaErrors
from pandera.pandas import Check, Column, DataFrameSchema

from engage.config import DataParams
from engage.data.io import to_utc
from engage.schema import (
    CAMPAIGN_ID,
    CHANNEL,
    CUSTOMER_ID,
    EVENT_ID,
    EVENT_TIME,
    EVENT_TYPE,
    FIRST_SEEN,
    REQUIRED_EVENT_COLUMNS,
    VALUE,
)

ERRORS = "errors"
NPS_EVENT = "nps_response"
NPS_RANGE = (0.0, 10.0)
MAX_EXAMPLES = 3
MAX_UNKNOWN_NAMES = 10  # unknown event names listed one by one, with a hint each

# Rule names, in the order reports list them.
REQUIRED = "required"
PLACEHOLDER_ID = "placeholder_id"
UNPARSABLE_TIMESTAMP = "unparsable_timestamp"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
FUTURE_TIMESTAMP = "future_timestamp"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
NOT_NUMERIC = "not_numeric"
MISSING_VALUE = "missing_value"
INFINITE_VALUE = "infinite_value"
NEGATIVE_VALUE = "negative_value"
OUT_OF_RANGE = "out_of_range"
DUPLICATE_ID = "duplicate_id"
DUPLICATE_ID_IN_STORE = "duplicate_id_in_store"
MISSING_COLUMN = "missing_column"
INEXACT_ID = "inexact_id"
RULE_ORDER = (
    MISSING_COLUMN,
    INEXACT_ID,
    REQUIRED,
    PLACEHOLDER_ID,
    UNPARSABLE_TIMESTAMP,
    TIMESTAMP_OUT_OF_RANGE,
    FUTURE_TIMESTAMP,
    UNKNOWN_EVENT_TYPE,
    NOT_NUMERIC,
    MISSING_VALUE,
    INFINITE_VALUE,
    NEGATIVE_VALUE,
    OUT_OF_RANGE,
    DUPLICATE_ID,
    DUPLICATE_ID_IN_STORE,
)

# What each rule means, printed after its name in a report.
RULE_TEXT = {
    MISSING_COLUMN: "the column is absent",
    INEXACT_ID: "floating-point ids at or above 2^53 have lost digits: store ids as text",
    REQUIRED: "missing or blank",
    PLACEHOLDER_ID: "a missing-value placeholder such as NA, null, None, nan, n/a",
    UNPARSABLE_TIMESTAMP: "not an ISO 8601 time",
    TIMESTAMP_OUT_OF_RANGE: "out of range (before 1677 / after 2262)",
    FUTURE_TIMESTAMP: "later than now",
    UNKNOWN_EVENT_TYPE: "not in data.event_types",
    NOT_NUMERIC: "not a number",
    MISSING_VALUE: "a purchase or NPS answer without a value",
    INFINITE_VALUE: "infinite (or beyond the float range, e.g. 1e309)",
    NEGATIVE_VALUE: "below 0",
    OUT_OF_RANGE: "an NPS score outside 0..10",
    DUPLICATE_ID: "seen earlier in the same file",
    DUPLICATE_ID_IN_STORE: "already in the event store",
}
# Text that stands for "no value" in exports; an id made of it is refused, not stored.
PLACEHOLDERS = frozenset(
    {"na", "n/a", "#n/a", "nan", "null", "none", "nil", "undefined", "<na>", "nat", "-nan"}
)
ID_COLUMNS = (EVENT_ID, CUSTOMER_ID)
TEXT_COLUMNS = (EVENT_ID, CUSTOMER_ID, EVENT_TYPE, CHANNEL, CAMPAIGN_ID)

# pandera's names for its built-in checks.
_PANDERA_RULES = {"not_nullable": REQUIRED, "field_uniqueness": DUPLICATE_ID}

# A finding: (rule, column, positions of the rows that break it).
_Finding = tuple[str, str, np.ndarray]


@dataclass(frozen=True)
class RuleFailure:
    """One rule broken by ``rows`` rows of ``column``; ``examples`` are a few raw values."""

    rule: str
    column: str
    rows: int
    examples: tuple[str, ...] = ()
    # Lines printed under the rule: the allowed values, the closest one to each bad value.
    details: tuple[str, ...] = ()


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of validating one table.

    ``notes`` says what was changed without refusing a row (e.g. ids trimmed of spaces).
    """

    table: str
    total_rows: int
    good_rows: int
    bad_rows: int
    failures: tuple[RuleFailure, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every row passed every rule."""
        return not self.failures and self.bad_rows == 0

    def to_text(self) -> str:
        """One line per broken rule (rule, column, rows, examples) under a count line."""
        lines = [
            f"{self.table}: {self.total_rows} rows = {self.good_rows} good + {self.bad_rows} bad"
        ]
        for f in self.failures:
            noun = "row" if f.rows == 1 else "rows"
            line = f"  {f.rule} on {f.column}: {f.rows} {noun}"
            if f.examples:
                line += ", e.g. " + ", ".join(repr(e) for e in f.examples)
            if f.rule in RULE_TEXT:
                line += f" - {RULE_TEXT[f.rule]}"
            lines.append(line)
            lines += [f"    {d}" for d in f.details]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


class DataValidationError(ValueError):
    """Input data broke validation rules; ``report`` says which, where and how often."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.to_text())
        self.report = report


# --- parsing ---------------------------------------------------------------------------


def _as_text(values: pd.Series) -> pd.Series:
    """Strings trimmed of surrounding white space, or None for missing and blank cells."""
    present = values.notna()
    text = values.astype(object)
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        pass  # the common case, kept free of per-row conversions
    elif pd.api.types.is_float_dtype(values):
        # 12.0 is what a reader makes of the integer id 12 once the column has a gap.
        whole = present & (values % 1 == 0) & (values.abs() < 2**53)
        text[whole] = values[whole].astype("int64").astype(str)
        text[present & ~whole] = values[present & ~whole].astype(str)
    else:
        text[present] = values[present].astype(str)
    filled = text.where(present, "").astype(str).str.strip()
    return filled.where(present & filled.ne(""), None).astype(object)


def _trimmed(values: pd.Series) -> int:
    """How many text cells have white space around them (which :func:`_as_text` removes)."""
    if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "mixed"):
        return 0
    text = values[values.map(lambda v: isinstance(v, str))].astype(str)
    stripped = text.str.strip()
    return int((stripped.ne(text) & stripped.ne("")).sum())


def _inexact_ids(df: pd.DataFrame) -> list[RuleFailure]:
    """Float id columns holding integers of 2^53 or more (their digits are already lost)."""
    out = []
    for column in ID_COLUMNS:
        values = df[column]
        if not pd.api.types.is_float_dtype(values):
            continue
        big = values.notna() & (values.abs() >= 2**53)
        if big.any():
            examples = tuple(dict.fromkeys(repr(float(v)) for v in values[big].head(20)))
            out.append(RuleFailure(INEXACT_ID, column, int(big.sum()), examples[:MAX_EXAMPLES]))
    return out


def _parse_times(values: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series, pd.Series]:
    """Parse to UTC; returns (times, missing, unparsable, out-of-range masks).

    Naive times are taken as UTC; ISO 8601 strings with an offset are converted. Other
    formats (e.g. 01/02/2025) are rejected rather than guessed day- or month-first. A
    valid ISO 8601 date outside what a timestamp holds (1677-09-21 .. 2262-04-11) is
    out of range rather than unparsable.
    """
    if pd.api.types.is_numeric_dtype(values):
        # Epoch numbers have no stated unit; guessing one would silently misplace events.
        missing = values.isna()
        unparsable = ~missing
        out_of_range = pd.Series(False, index=values.index)
        times = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    else:
        is_time = pd.api.types.is_datetime64_any_dtype(values)
        text = values if is_time else _as_text(values)
        missing = text.isna()
        times = to_utc(text.where(~missing))
        failed = ~missing & times.isna()
        out_of_range = failed & text.where(failed, "").map(_valid_iso).astype(bool)
        unparsable = failed & ~out_of_range
    return times.dt.floor("us").dt.as_unit("us"), missing, unparsable, out_of_range


def _valid_iso(text: object) -> bool:
    """True for an ISO 8601 date or time that Python reads (years 1..9999)."""
    if not isinstance(text, str) or not text:
        return False
    try:
        dt.datetime.fromisoformat(text.replace("z", "+00:00").replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _parse_numbers(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse to float; returns (numbers, not-numeric mask). Blank cells are missing.

    A number too large for a float (``1e309``) is read as infinite, like ``inf``, so the
    infinite rule names it; text such as ``NA`` or ``nan`` is not a number.
    """
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype(float), pd.Series(False, index=values.index)
    text = _as_text(values)
    present = text.notna()
    numbers = pd.to_numeric(text.where(present), errors="coerce").astype(float)
    failed = present & numbers.isna()
    if failed.any():
        numbers[failed] = text[failed].map(_overflow)
    return numbers, present & numbers.isna()


def _overflow(text: str) -> float:
    """±inf for a decimal number beyond the float range, NaN for anything else."""
    try:
        value = float(text)
    except ValueError:
        return np.nan
    # float() also reads "1_000" and "nan": only an overflow to infinity is kept.
    return value if np.isinf(value) and "_" not in text else np.nan


# --- running the rules -----------------------------------------------------------------


def _check_columns(df: pd.DataFrame, required: Iterable[str], table: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        failures = tuple(RuleFailure(MISSING_COLUMN, c, len(df)) for c in missing)
        raise DataValidationError(ValidationReport(table, len(df), 0, len(df), failures))


def _mask_finding(rule: str, column: str, mask: pd.Series) -> _Finding:
    return rule, column, np.flatnonzero(mask.to_numpy())


def _schema_findings(
    schema: DataFrameSchema, frame: pd.DataFrame, wide_columns: dict[str, str]
) -> list[_Finding]:
    """Run ``schema`` lazily; ``wide_columns`` names the column a row-wise check is about."""
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as err:
        cases = err.failure_cases
    else:
        return []
    cases = cases.assign(
        rule=cases["check"].map(lambda c: _PANDERA_RULES.get(c, c)),
        column=[
            wide_columns.get(check, column)
            for check, column in zip(cases["check"], cases["column"], strict=True)
        ],
    )
    findings = []
    for (rule, column), group in cases.groupby(["rule", "column"], sort=False):
        findings.append((rule, column, np.unique(group["index"].astype("int64").to_numpy())))
    return findings


def _example(value: object) -> str:
    return "<missing>" if value is None or (np.isscalar(value) and pd.isna(value)) else str(value)


def _finish(
    table: str,
    df: pd.DataFrame,
    norm: pd.DataFrame,
    findings: list[_Finding],
    notes: tuple[str, ...] = (),
) -> tuple[pd.DataFrame, pd.DataFrame, ValidationReport]:
    """Split rows into good (normalised) and bad (as given in ``df``), summarise each rule.

    Findings hold row positions, so ``df`` may have any index, even a non-unique one.
    """
    raw = df.reset_index(drop=True)
    merged: dict[tuple[str, str], np.ndarray] = {}
    for rule, column, positions in findings:
        # pandera may report one rule in several pieces; a row counts once per rule.
        previous = merged.get((rule, column), np.array([], dtype="int64"))
        merged[(rule, column)] = np.union1d(previous, positions).astype("int64")
    order = sorted(
        (key for key, pos in merged.items() if len(pos)),
        key=lambda k: (RULE_ORDER.index(k[0]), list(norm.columns).index(k[1])),
    )

    failures = []
    labels = []
    for rule, column in order:
        positions = merged[(rule, column)]
        shown: tuple[str, ...] = ()
        if column in raw.columns:
            seen = dict.fromkeys(_example(v) for v in raw[column].iloc[positions[:50]])
            shown = tuple(seen)[:MAX_EXAMPLES]
        failures.append(RuleFailure(rule, column, len(positions), shown))
        labels.append(pd.Series(f"{rule}:{column}", index=positions))

    errors = (
        pd.concat(labels).groupby(level=0, sort=True).agg("; ".join)
        if labels
        else pd.Series(dtype=object)
    )
    bad = df.iloc[errors.index.to_numpy(dtype="int64")].copy()
    bad[ERRORS] = errors.to_numpy()
    good = norm.drop(index=errors.index).reset_index(drop=True)
    report = ValidationReport(table, len(raw), len(good), len(bad), tuple(failures), notes)
    return good, bad, report


def resolve_now(now: pd.Timestamp | str | None = None) -> pd.Timestamp:
    """Return ``now`` as an aware UTC timestamp (naive is UTC); None gives the current time."""
    now = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    return now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")


def _events_schema(
    data: DataParams,
    limit: pd.Timestamp,
    existing_ids: pd.Series | set | None,
    not_numeric: pd.Series,
    *,
    amounts: bool = True,
) -> DataFrameSchema:
    """Build the rules on parsed events; value-by-type rules are row-wise (wide) checks."""
    value_types = set(data.value_event_types)
    needs_value = {NPS_EVENT} | ({data.conversion_event} if amounts else set())
    needs_value = sorted(needs_value & value_types)
    non_negative = sorted(value_types - {NPS_EVENT})

    def missing_value(d: pd.DataFrame) -> pd.Series:
        # A text value already fails not_numeric; do not report it twice.
        return ~(d[EVENT_TYPE].isin(needs_value) & d[VALUE].isna() & ~not_numeric)

    def negative_value(d: pd.DataFrame) -> pd.Series:
        # -inf already fails infinite_value.
        return ~(d[EVENT_TYPE].isin(non_negative) & np.isfinite(d[VALUE]) & (d[VALUE] < 0))

    def nps_in_range(d: pd.DataFrame) -> pd.Series:
        nps = (d[EVENT_TYPE] == NPS_EVENT) & np.isfinite(d[VALUE])
        return ~(nps & ~d[VALUE].between(*NPS_RANGE))

    wide = [Check(missing_value, name=MISSING_VALUE), Check(negative_value, name=NEGATIVE_VALUE)]
    if NPS_EVENT in value_types:
        wide.append(Check(nps_in_range, name=OUT_OF_RANGE))

    id_checks = []
    if existing_ids is not None and len(existing_ids):
        stored = pd.Index(list(existing_ids) if isinstance(existing_ids, set) else existing_ids)
        stored = stored.astype(str)
        id_checks.append(Check(lambda s: ~s.isin(stored), name=DUPLICATE_ID_IN_STORE))

    return DataFrameSchema(
        {
            EVENT_ID: Column(
                nullable=False, unique=True, report_duplicates="exclude_first", checks=id_checks
            ),
            CUSTOMER_ID: Column(nullable=False),
            EVENT_TIME: Column(
                nullable=True, checks=Check(lambda s: s <= limit, name=FUTURE_TIMESTAMP)
            ),
            EVENT_TYPE: Column(
                nullable=False,
                checks=Check(lambda s: s.isin(data.event_types), name=UNKNOWN_EVENT_TYPE),
            ),
            VALUE: Column(nullable=True, checks=Check(lambda s: ~np.isinf(s), name=INFINITE_VALUE)),
        },
        checks=wide,
    )


# --- public API ------------------------------------------------------------------------


def _unknown_type_details(types: pd.Series, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The allowed event types, then each unknown name with its count and closest type."""
    from engage.data.mapping import closest

    counts = types[types.notna() & ~types.isin(allowed)].value_counts()
    lines = [f"allowed: {', '.join(allowed)}"]
    for name, n in counts.head(MAX_UNKNOWN_NAMES).items():
        near = closest(str(name), allowed)
        hint = f"closest allowed: {near!r}" if near else "no allowed type is close"
        lines.append(
            f"{name!r}: {n:,} row{'s' if n != 1 else ''}, {hint}; map it with "
            f"--map-event '{name}={near or '<type>'}' or add it to data.event_types"
        )
    if len(counts) > MAX_UNKNOWN_NAMES:
        lines.append(f"... and {len(counts) - MAX_UNKNOWN_NAMES} more unknown names")
    return tuple(lines)


def validate_events(
    df: pd.DataFrame,
    data: DataParams,
    *,
    now: pd.Timestamp | None = None,
    existing_ids: pd.Series | set | None = None,
    amounts: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, ValidationReport]:
    """Check incoming events against every rule at once.

    Rules: ``inexact_id`` (a float id column with values of 2^53 or more: the whole
    frame fails), ``required`` (missing or blank id, time or type), ``placeholder_id``
    (an id such as ``NA`` or ``null``), ``unparsable_timestamp``,
    ``timestamp_out_of_range`` (a valid ISO date before 1677 or after 2262),
    ``future_timestamp`` (later than now + ``data.future_tolerance_minutes``),
    ``unknown_event_type`` (not in ``data.event_types``), ``not_numeric`` (value),
    ``missing_value`` (conversion event or NPS answer without a value), ``infinite_value``,
    ``negative_value`` (value event types), ``out_of_range`` (NPS outside 0..10),
    ``duplicate_id`` (an id seen earlier in the same file; the first one is kept) and
    ``duplicate_id_in_store`` (an id in ``existing_ids``).

    Args:
        df: raw events; timestamps may be naive (UTC), aware, or ISO 8601 strings.
        data: the ``data`` section of the parameters.
        now: the reference time for the future rule; defaults to the current time.
        existing_ids: event ids already stored, to refuse re-ingesting them.
        amounts: False for a file whose conversion events carry no amount (a clickstream
            without order values): ``missing_value`` is then not a rule for them.

    Returns:
        ``(good, bad, report)``: good rows in the schema's columns and types (string ids,
        ``event_time`` as ``datetime64[us, UTC]``, float ``value``); bad rows with their
        original columns plus ``errors`` ("rule:column; ..."); the report.

    Text is trimmed of surrounding white space (``"c1 "`` is ``"c1"``); the report's
    notes count the trimmed cells per column. Only an empty cell is missing: ``NA`` or
    ``null`` is refused as an id (``placeholder_id``), is not a number as a value, and
    is kept as text in ``channel`` and ``campaign_id``.

    Raises:
        DataValidationError: required columns are missing, or an id column holds floats
            that lost digits (all are named, with the count of rows).

    """
    _check_columns(df, REQUIRED_EVENT_COLUMNS, "events")
    inexact = _inexact_ids(df)
    if inexact:
        raise DataValidationError(ValidationReport("events", len(df), 0, len(df), tuple(inexact)))
    raw = df.reset_index(drop=True)
    times, time_missing, time_unparsable, time_range = _parse_times(raw[EVENT_TIME])
    if VALUE in raw.columns:
        values, not_numeric = _parse_numbers(raw[VALUE])
    else:
        values = pd.Series(np.nan, index=raw.index)
        not_numeric = pd.Series(False, index=raw.index)
    norm = pd.DataFrame(
        {
            EVENT_ID: _as_text(raw[EVENT_ID]),
            CUSTOMER_ID: _as_text(raw[CUSTOMER_ID]),
            EVENT_TIME: times,
            EVENT_TYPE: _as_text(raw[EVENT_TYPE]),
            VALUE: values,
            CHANNEL: _as_text(raw[CHANNEL]) if CHANNEL in raw else None,
            CAMPAIGN_ID: _as_text(raw[CAMPAIGN_ID]) if CAMPAIGN_ID in raw else None,
        }
    )

    limit = resolve_now(now) + pd.Timedelta(minutes=data.future_tolerance_minutes)
    schema = _events_schema(data, limit, existing_ids, not_numeric, amounts=amounts)
    wide_columns = {check.name: VALUE for check in schema.checks}
    findings = _schema_findings(schema, norm, wide_columns)
    findings += [
        _mask_finding(REQUIRED, EVENT_TIME, time_missing),
        _mask_finding(UNPARSABLE_TIMESTAMP, EVENT_TIME, time_unparsable),
        _mask_finding(TIMESTAMP_OUT_OF_RANGE, EVENT_TIME, time_range),
        _mask_finding(NOT_NUMERIC, VALUE, not_numeric),
    ]
    findings += [
        _mask_finding(PLACEHOLDER_ID, column, norm[column].str.lower().isin(PLACEHOLDERS))
        for column in ID_COLUMNS
    ]
    notes = []
    for column in TEXT_COLUMNS:
        n = _trimmed(raw[column]) if column in raw else 0
        if n:
            noun = "value" if n == 1 else "values"
            notes.append(f"{column}: {n} {noun} trimmed of surrounding spaces")
    good, bad, report = _finish("events", df, norm, findings, tuple(notes))
    if any(f.rule == UNKNOWN_EVENT_TYPE for f in report.failures):
        details = _unknown_type_details(norm[EVENT_TYPE], tuple(data.event_types))
        failures = tuple(
            replace(f, details=details) if f.rule == UNKNOWN_EVENT_TYPE else f
            for f in report.failures
        )
        report = replace(report, failures=failures)
    return good, bad, report


def validate_customers(
    df: pd.DataFrame, *, now: pd.Timestamp | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, ValidationReport]:
    """Check a customers table: non-empty unique ``customer_id``, valid past ``first_seen``.

    Args:
        df: raw customers; ``first_seen`` may be naive (UTC), aware or ISO 8601 strings.
        now: the reference time for the future rule; defaults to the current time.

    Returns:
        ``(good, bad, report)`` as for :func:`validate_events`.

    Raises:
        DataValidationError: ``customer_id`` or ``first_seen`` is missing.

    """
    _check_columns(df, (CUSTOMER_ID, FIRST_SEEN), "customers")
    raw = df.reset_index(drop=True)
    times, missing, unparsable, out_of_range = _parse_times(raw[FIRST_SEEN])
    norm = pd.DataFrame({CUSTOMER_ID: _as_text(raw[CUSTOMER_ID]), FIRST_SEEN: times})
    limit = resolve_now(now)
    schema = DataFrameSchema(
        {
            CUSTOMER_ID: Column(nullable=False, unique=True, report_duplicates="exclude_first"),
            FIRST_SEEN: Column(
                nullable=True, checks=Check(lambda s: s <= limit, name=FUTURE_TIMESTAMP)
            ),
        }
    )
    findings = _schema_findings(schema, norm, {})
    findings += [
        _mask_finding(REQUIRED, FIRST_SEEN, missing),
        _mask_finding(UNPARSABLE_TIMESTAMP, FIRST_SEEN, unparsable),
        _mask_finding(TIMESTAMP_OUT_OF_RANGE, FIRST_SEEN, out_of_range),
        _mask_finding(
            PLACEHOLDER_ID, CUSTOMER_ID, norm[CUSTOMER_ID].str.lower().isin(PLACEHOLDERS)
        ),
    ]
    return _finish("customers", df, norm, findings)
