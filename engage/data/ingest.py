"""Bring a user's own events (CSV or Parquet) into the event store.

The flow is: :func:`read_user_file`, :func:`apply_mapping` (their column names to the
schema's, from ``their_col=field`` strings parsed by :func:`parse_mapping`), then
:func:`ingest_events`, which validates, appends the good rows to the store, keeps the
customers table in step and quarantines the bad rows with the rules they broke.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engage.config import DataParams
from engage.data.io import (
    append_rows,
    read_customers,
    read_events,
    write_customers,
    write_events,
)
from engage.data.validate import (
    DataValidationError,
    ValidationReport,
    resolve_now,
    validate_events,
)
from engage.schema import (
    CUSTOMER_ID,
    EVENT_ID,
    EVENT_TIME,
    EVENTS_SCHEMA,
    FIRST_SEEN,
    REQUIRED_EVENT_COLUMNS,
    TIMESTAMP,
)

FIELDS = tuple(EVENTS_SCHEMA.names)
INGESTED_AT = "ingested_at"
CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")


def parse_mapping(items: list[str]) -> dict[str, str]:
    """Parse ``their_col=field`` strings into ``{their_col: field}``.

    Args:
        items: e.g. ``["user=customer_id", "ts=event_time"]``.

    Returns:
        The mapping from the file's column names to event schema fields.

    Raises:
        ValueError: an item is not ``their_col=field``, names an unknown field, or maps
            a column or a field twice; the message names the item.

    """
    mapping: dict[str, str] = {}
    for item in items:
        # Split on the last "=": field names never contain one, column names might.
        source, sep, target = item.rpartition("=")
        source, target = source.strip(), target.strip()
        if not sep or not source or not target:
            raise ValueError(f"mapping {item!r} must look like their_column=field")
        if target not in FIELDS:
            raise ValueError(
                f"mapping {item!r}: unknown field {target!r} (fields: {', '.join(FIELDS)})"
            )
        if source in mapping:
            raise ValueError(f"mapping {item!r}: column {source!r} is already mapped")
        if target in mapping.values():
            raise ValueError(f"mapping {item!r}: field {target!r} is already mapped")
        mapping[source] = target
    return mapping


def read_user_file(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file, chosen by suffix (.csv, .parquet, .pq).

    CSV cells are read as text so that validation, not the CSV reader, decides what is a
    number or a timestamp (and ids such as ``00042`` keep their zeros).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the suffix is not supported.

    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + PARQUET_SUFFIXES:
        known = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)
        raise ValueError(f"{path}: unsupported file type {suffix or '(none)'!r}; use {known}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if suffix in CSV_SUFFIXES:
        return pd.read_csv(path, dtype=str)
    return pd.read_parquet(path)


def apply_mapping(df: pd.DataFrame, mapping: dict[str, str]) -> pd.DataFrame:
    """Rename the file's columns to schema fields and keep only those fields.

    Columns already named like a field are used as they are unless a mapping targets
    that field, in which case the mapped column wins.

    Raises:
        ValueError: a mapped column is not in ``df`` (all are named), or a required field
            is still missing after renaming (all are named).

    """
    absent = [source for source in mapping if source not in df.columns]
    if absent:
        raise ValueError(
            f"mapped columns not in the file: {', '.join(absent)} "
            f"(file columns: {', '.join(map(str, df.columns))})"
        )
    shadowed = [c for c in df.columns if c in mapping.values() and c not in mapping]
    renamed = df.drop(columns=shadowed).rename(columns=mapping)
    missing = [field for field in REQUIRED_EVENT_COLUMNS if field not in renamed.columns]
    if missing:
        raise ValueError(
            f"required fields missing: {', '.join(missing)}; "
            "map a column of the file to each with their_column=field"
        )
    return renamed[[field for field in FIELDS if field in renamed.columns]]


def derive_customers(events: pd.DataFrame) -> pd.DataFrame:
    """One row per customer with ``first_seen`` = the time of their first event."""
    first = events.groupby(CUSTOMER_ID, as_index=False)[EVENT_TIME].min()
    return first.rename(columns={EVENT_TIME: FIRST_SEEN})


def _stored_ids(events_path: Path) -> pd.Series | None:
    if not events_path.exists():
        return None
    return pq.read_table(events_path, columns=[EVENT_ID]).column(EVENT_ID).to_pandas()


def _update_customers(
    new_events: pd.DataFrame, events_path: Path, path: Path, *, rebuild: bool
) -> None:
    if path.exists() and not rebuild:
        # A customer seen before keeps the earlier of the two first-seen times.
        both = pd.concat([read_customers(path), derive_customers(new_events)], ignore_index=True)
        customers = both.groupby(CUSTOMER_ID, as_index=False)[FIRST_SEEN].min()
    else:
        # A replaced store, or one holding events from before there was a customers
        # table: every customer comes from the store.
        customers = derive_customers(read_events(events_path))
    write_customers(customers, path)


def _quarantine(bad: pd.DataFrame, path: Path, now: pd.Timestamp) -> None:
    # Bad rows hold whatever the user sent (text in a number column, ...), so the
    # quarantine stores every original column as text, plus when it was ingested.
    rows = pd.DataFrame(
        index=range(len(bad)),
        data={
            str(col): [None if _is_missing(v) else str(v) for v in bad[col]] for col in bad.columns
        },
    )
    rows[INGESTED_AT] = now
    names = list(pq.read_schema(path).names) if path.exists() else []
    names += [c for c in rows.columns if c not in names]
    schema = pa.schema([pa.field(n, TIMESTAMP if n == INGESTED_AT else pa.string()) for n in names])
    append_rows(rows, path, schema)


def _is_missing(value: object) -> bool:
    return pd.api.types.is_scalar(value) and bool(pd.isna(value))


def ingest_events(
    df: pd.DataFrame,
    data: DataParams,
    events_path: Path,
    quarantine_path: Path,
    *,
    strict: bool = False,
    replace: bool = False,
    now: pd.Timestamp | None = None,
    customers_path: Path | None = None,
) -> ValidationReport:
    """Validate events and store them: good rows to the store, bad rows to quarantine.

    Args:
        df: events with schema column names (see :func:`apply_mapping`).
        data: the ``data`` section of the parameters.
        events_path: the event store; created if absent.
        quarantine_path: bad rows are appended here with an ``errors`` and an
            ``ingested_at`` column; earlier quarantined rows are kept.
        strict: raise on any bad row and write nothing at all.
        replace: replace the store (and the customers table) with the good rows instead
            of appending; ids are then not checked against the old store. With no good
            row the store is left as it is.
        now: the reference time for the future rule and ``ingested_at``.
        customers_path: the customers table to keep in step (first event per customer,
            the earliest ``first_seen`` wins on merge); None leaves it alone.

    Returns:
        The validation report.

    Raises:
        DataValidationError: ``strict`` and at least one row is bad, or required columns
            are missing.

    """
    events_path, quarantine_path = Path(events_path), Path(quarantine_path)
    now = resolve_now(now)
    existing = None if replace else _stored_ids(events_path)
    good, bad, report = validate_events(df, data, now=now, existing_ids=existing)
    if strict and not report.ok:
        raise DataValidationError(report)

    if len(good):
        if replace:
            write_events(good, events_path)
        else:
            append_rows(good, events_path, EVENTS_SCHEMA)
        if customers_path is not None:
            _update_customers(good, events_path, Path(customers_path), rebuild=replace)
    if len(bad):
        _quarantine(bad, quarantine_path, now)
    return report
