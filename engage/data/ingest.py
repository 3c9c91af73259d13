"""Bring a user's own events (CSV or Parquet) into the event store.

The flow is: :func:`read_user_file`, :func:`apply_mapping` (their column names to the
schema's, from ``their_col=field`` strings parsed by :func:`parse_mapping`), then
:func:`ingest_events`, which validates, appends the good rows to the store, keeps the
customers table in step and quarantines the bad rows with the rules they broke.
"""

from __future__ import annotations

import codecs
import csv
import warnings
from dataclasses import dataclass
from dataclasses import replace as replace_report
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engage.config import DataParams
from engage.data.io import appended, read_customers, to_table
from engage.data.mapping import EventMapping, derive_event_ids, map_event_names
from engage.data.store import frame_fingerprint, read_log, writing
from engage.data.validate import (
    DataValidationError,
    RuleFailure,
    ValidationReport,
    resolve_now,
    validate_events,
)
from engage.faults import fault_point
from engage.schema import (
    CUSTOMER_ID,
    CUSTOMERS_SCHEMA,
    EVENT_ID,
    EVENT_TIME,
    EVENT_TYPE,
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


DEFAULT_ENCODING = "utf-8"
SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_SEP_NAMES = {"comma": ",", "semicolon": ";", "tab": "\t", "\\t": "\t", "pipe": "|"}
_CHUNK = 1 << 20


def parse_separator(text: str | None) -> str | None:
    """A ``--sep`` value as the character: ``,`` ``;`` ``|`` or ``tab``.

    Raises:
        ValueError: anything else (the message lists the accepted values).

    """
    if text is None:
        return None
    sep = _SEP_NAMES.get(text.lower(), text)
    if sep not in SEPARATORS:
        raise ValueError(f"--sep {text!r}: use one of , ; | tab")
    return sep


def _check_encoding(path: Path, encoding: str) -> str:
    """Decode the whole file once; returns the codec name pandas should read it with.

    Raises:
        ValueError: unknown encoding, a UTF-16 file read as UTF-8, or bytes that are not
            valid in ``encoding`` (the message gives the byte offset and line).

    """
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise ValueError(
            f"unknown encoding {encoding!r} (e.g. utf-8, latin-1, cp1252, utf-16)"
        ) from None
    with open(path, "rb") as handle:
        head = handle.read(4)
        handle.seek(0)
        offset = 0
        if codec == "utf-8":
            if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise ValueError(
                    f"{path} starts with a UTF-16 byte-order mark: pass --encoding utf-16"
                )
            if head.startswith(codecs.BOM_UTF8):
                # A byte-order mark (Excel's "CSV UTF-8") is skipped, not read as text.
                handle.seek(len(codecs.BOM_UTF8))
                offset = len(codecs.BOM_UTF8)
                codec = "utf-8-sig"
        decoder = codecs.getincrementaldecoder("utf-8" if codec == "utf-8-sig" else codec)()
        lines = 1
        while True:
            chunk = handle.read(_CHUNK)
            pending = len(decoder.getstate()[0]) if hasattr(decoder, "getstate") else 0
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                data = err.object if isinstance(err.object, bytes) else chunk
                at = offset - pending + err.start
                lines += data[: max(0, err.start)].count(b"\n")
                bad = data[err.start : err.start + 4]
                raise ValueError(
                    f"{path}: byte offset {at:,} (line {lines}) is not valid {encoding}: {bad!r}. "
                    "If the file was saved as Latin-1 or Windows-1252, pass --encoding "
                    "latin-1 (or cp1252)"
                ) from None
            if not chunk:
                return codec
            lines += chunk.count(b"\n")
            offset += len(chunk)


def _detect_separator(path: Path, encoding: str) -> str:
    """The candidate separator that splits the header line into the most fields (``,`` on a tie)."""
    with open(path, encoding=encoding, newline="") as handle:
        header = handle.readline()
    best, fields = ",", 1
    for sep in SEPARATORS:
        n = len(next(csv.reader([header], delimiter=sep), []))
        if n > fields:
            best, fields = sep, n
    return best


def read_user_file(
    path: Path, *, encoding: str | None = None, sep: str | None = None
) -> pd.DataFrame:
    """Read a CSV or Parquet file, chosen by suffix (.csv, .parquet, .pq).

    CSV cells are read as text, with no conversion of ``NA``, ``null``, ``nan``... to
    missing: validation, not the CSV reader, decides what is missing, a number or a
    timestamp (ids such as ``00042`` keep their zeros, a channel called ``NA`` stays
    ``NA``; only an empty cell is missing). Quoted values may hold separators and line
    breaks. Parquet columns keep their types; validation turns ids into text exactly.

    Args:
        path: the file.
        encoding: the CSV's text encoding (default utf-8; a UTF-8 byte-order mark is
            skipped). Every byte is checked before reading.
        sep: the CSV's separator; default: whichever of ``,`` ``;`` tab ``|`` splits
            the header line into the most columns. ``df.attrs["sep"]`` says which.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a directory, an unsupported suffix, an unreadable file, an encoding
            error (with its byte offset), a malformed CSV, an empty file or one with a
            header and no rows; the message names the file.

    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory: give a CSV or Parquet file")
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + PARQUET_SUFFIXES:
        known = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)
        raise ValueError(f"{path}: unsupported file type {suffix or '(none)'!r}; use {known}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with open(path, "rb") as handle:
            empty = not handle.read(1)
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from None
    if empty:
        raise ValueError(f"{path} is empty: expected a header line and rows")
    if suffix in CSV_SUFFIXES:
        codec = _check_encoding(path, encoding or DEFAULT_ENCODING)
        sep = sep or _detect_separator(path, codec)
        try:
            with warnings.catch_warnings():
                # pandas drops the extra cells of rows longer than the header with only a
                # warning (or, without index_col=False, shifts every column): refuse.
                warnings.simplefilter("error", pd.errors.ParserWarning)
                df = pd.read_csv(
                    path,
                    dtype=str,
                    keep_default_na=False,
                    na_filter=False,
                    encoding=codec,
                    sep=sep,
                    engine="c",
                    index_col=False,
                )
        except pd.errors.EmptyDataError:
            raise ValueError(f"{path} is empty: expected a header line and rows") from None
        except pd.errors.ParserError as err:
            raise ValueError(f"{path}: malformed CSV ({str(err).strip()})") from None
        except pd.errors.ParserWarning:
            raise ValueError(
                f"{path}: malformed CSV (rows with more fields than the header; quote values "
                "that contain the separator, or give --sep)"
            ) from None
        df.attrs["sep"] = sep
    else:
        try:
            df = pq.read_table(path).to_pandas()
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
    if len(df) == 0:
        raise ValueError(f"{path} has a header but no rows: nothing to ingest")
    return df


def apply_mapping(
    df: pd.DataFrame, mapping: dict[str, str], optional: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Rename the file's columns to schema fields and keep only those fields.

    Columns already named like a field are used as they are unless a mapping targets
    that field, in which case the mapped column wins.

    Args:
        df: the file as read.
        mapping: their column name -> field.
        optional: required fields the caller fills in itself when the file has none
            (``event_id`` derived from the content, ``event_type`` from ``--event-type``).

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
    missing = [
        field
        for field in REQUIRED_EVENT_COLUMNS
        if field not in renamed.columns and field not in optional
    ]
    if missing:
        hint = ""
        if len(df.columns) == 1:
            found = [name for sep, name in SEPARATORS.items() if sep in str(df.columns[0])]
            if found:
                hint = f" (the file has a single column: is it {found[0]}-separated? use --sep)"
        raise ValueError(
            f"required fields missing: {', '.join(missing)}; "
            f"map a column of the file to each with their_column=field{hint}"
        )
    return renamed[[field for field in FIELDS if field in renamed.columns]]


@dataclass(frozen=True)
class Prepared:
    """A user's file as events: the frame, whether its ids are derived, what was mapped."""

    events: pd.DataFrame
    derived_ids: bool
    notes: tuple[str, ...]


def prepare_events(raw: pd.DataFrame, mapping: EventMapping, data: DataParams) -> Prepared:
    """Turn a file as read into events: columns, event names, constant type, ids.

    Without a column mapped to ``event_id`` each row gets an id derived from its content
    (:func:`engage.data.mapping.derive_event_ids`).

    Raises:
        ValueError: the mapping is inconsistent or names unknown fields or event types
            (see :meth:`EventMapping.check`), a mapped column is absent, or a required
            field is missing.

    """
    mapping.check(data.event_types)
    optional = (EVENT_ID,) + ((EVENT_TYPE,) if mapping.event_type else ())
    df = apply_mapping(raw, dict(mapping.columns), optional)
    df, notes = map_event_names(df, mapping)
    derived = EVENT_ID not in df.columns
    if derived:
        df.insert(0, EVENT_ID, derive_event_ids(df))
        notes.append(
            "event_id: none in the file, derived from each row's content (customer, time, "
            "type, value, channel, campaign): ingesting the same file again adds nothing"
        )
    if mapping.no_amounts:
        notes.append(
            f"no amounts: {data.conversion_event} events are stored without a value; "
            "money figures (revenue, CLV, value at risk) are unknown for this store"
        )
    return Prepared(df[[f for f in FIELDS if f in df.columns]], derived, tuple(notes))


def derive_customers(events: pd.DataFrame) -> pd.DataFrame:
    """One row per customer with ``first_seen`` = the time of their first event."""
    first = events.groupby(CUSTOMER_ID, as_index=False)[EVENT_TIME].min()
    return first.rename(columns={EVENT_TIME: FIRST_SEEN})


def _stored_ids(events_path: Path) -> pd.Series | None:
    if not events_path.exists():
        return None
    return pq.read_table(events_path, columns=[EVENT_ID]).column(EVENT_ID).to_pandas()


def _customers(
    new_events: pd.DataFrame, events: pa.Table, path: Path, *, rebuild: bool
) -> pd.DataFrame:
    """The customers table after a write whose event store will be ``events``."""
    if path.exists() and not rebuild:
        # A customer seen before keeps the earlier of the two first-seen times.
        both = pd.concat([read_customers(path), derive_customers(new_events)], ignore_index=True)
        return both.groupby(CUSTOMER_ID, as_index=False)[FIRST_SEEN].min()
    # A replaced store, or one holding events from before there was a customers
    # table: every customer comes from the store.
    return derive_customers(events.select([CUSTOMER_ID, EVENT_TIME]).to_pandas())


def _quarantine_table(bad: pd.DataFrame, path: Path, now: pd.Timestamp) -> pa.Table:
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
    return appended(rows, path, schema)


def _is_missing(value: object) -> bool:
    return pd.api.types.is_scalar(value) and bool(pd.isna(value))


def _log_entry(
    report: ValidationReport, fingerprint: str, source: str | None, now: pd.Timestamp, **opts
) -> dict:
    return {
        "command": "ingest",
        "source": source,
        "fingerprint": fingerprint,
        **opts,
        "at": now.isoformat(),
        "total_rows": report.total_rows,
        "good_rows": report.good_rows,
        "bad_rows": report.bad_rows,
        "failures": [
            {
                "rule": f.rule,
                "column": f.column,
                "rows": f.rows,
                "examples": list(f.examples),
                "details": list(f.details),
            }
            for f in report.failures
        ],
        "notes": list(report.notes),
    }


def _already(entry: dict) -> ValidationReport:
    """The report of a logged ingest, with a note saying that nothing was written now."""
    failures = tuple(
        RuleFailure(
            f["rule"], f["column"], f["rows"], tuple(f["examples"]), tuple(f.get("details", ()))
        )
        for f in entry["failures"]
    )
    note = (
        f"already ingested: the last write to this store ({entry['at']}) was this same data "
        "with the same options; nothing written again"
    )
    return ValidationReport(
        "events",
        entry["total_rows"],
        entry["good_rows"],
        entry["bad_rows"],
        failures,
        (*entry.get("notes", ()), note),
    )


class TooManyBadRows(DataValidationError):
    """More than ``data.max_bad_share`` of a file's rows are bad: nothing was written.

    A share that high is a wrong mapping or a wrong file far more often than bad data;
    keeping the few good rows would hide it.
    """

    def __init__(self, report: ValidationReport, share: float) -> None:
        super().__init__(report)
        self.share = share
        self.summary = (
            f"{report.bad_rows:,} of {report.total_rows:,} rows "
            f"({report.bad_rows / report.total_rows:.0%}) are bad, more than "
            f"data.max_bad_share ({share:.0%}): nothing written (the events, customers and "
            "quarantine are unchanged); fix the mapping or the file, or raise "
            "data.max_bad_share (--set data.max_bad_share=1) to keep the good rows"
        )


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
    source: str | None = None,
    derived_ids: bool = False,
    amounts: bool = True,
    notes: tuple[str, ...] = (),
) -> ValidationReport:
    """Validate events and store them: good rows to the store, bad rows to quarantine.

    The events, the customers table, the quarantine and the store's write log change
    together in one journaled commit under the store's lock (:mod:`engage.data.store`):
    a crash leaves all of them as before or all as after, and a concurrent ingest waits.
    Ingesting the same rows with the same options as the store's last write is a no-op
    (the report says so): rerunning an ingest whose process was killed after its
    commit does not quarantine every row again as a duplicate.

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
        source: what the rows came from (a file name), recorded in the write log.
        derived_ids: the ids were derived from the rows' content
            (:func:`prepare_events`): a row whose id is already stored is the same event
            ingested again, skipped (and counted in a note) rather than quarantined.
        amounts: False when the file's conversion events carry no amount (``--no-amounts``):
            they are stored without a value and the write log records it, so money
            figures are unknown (null) downstream rather than zero.
        notes: what the preparation changed (mapped names, derived ids), added to the
            report's notes.

    Returns:
        The validation report.

    Raises:
        TooManyBadRows: more than ``data.max_bad_share`` of the rows are bad; nothing is
            written (neither the store nor the quarantine changes).
        DataValidationError: ``strict`` and at least one row is bad, or required columns
            are missing.
        engage.locks.StoreBusyError: another command held the store for longer than
            ``data.lock_timeout_s``.

    """
    events_path, quarantine_path = Path(events_path), Path(quarantine_path)
    customers_path = Path(customers_path) if customers_path is not None else None
    now = resolve_now(now)
    options = {"replace": replace, "strict": strict}
    if not amounts:
        options["no_amounts"] = True
    fingerprint = frame_fingerprint(df, **options)
    others = tuple(p for p in (customers_path, quarantine_path) if p is not None)
    with writing(events_path, timeout=data.lock_timeout_s, others=others) as write:
        log = read_log(events_path)
        if log and log[-1].get("fingerprint") == fingerprint:
            return _already(log[-1])
        existing = None if replace else _stored_ids(events_path)
        notes = list(notes)
        if derived_ids and existing is not None and len(existing):
            again = df[EVENT_ID].isin(pd.Index(existing))
            if again.any():
                n = int(again.sum())
                notes.append(
                    f"{n:,} row{'s' if n != 1 else ''} already in the store (same content, "
                    "same derived id): skipped, not stored twice"
                )
                df = df[~again]
        if len(df) == 0:
            return ValidationReport("events", 0, 0, 0, (), tuple(notes))
        good, bad, report = validate_events(
            df, data, now=now, existing_ids=existing, amounts=amounts
        )
        report = replace_report(report, notes=(*notes, *report.notes))
        fault_point("ingest:validated")
        if strict and not report.ok:
            raise DataValidationError(report)
        if report.bad_rows > data.max_bad_share * report.total_rows:
            raise TooManyBadRows(report, data.max_bad_share)

        if len(good):
            events = to_table(good, EVENTS_SCHEMA)
            if not replace:
                events = appended(good, events_path, EVENTS_SCHEMA)
            pq.write_table(events, write.stage(events_path))
            if customers_path is not None:
                customers = _customers(good, events, customers_path, rebuild=replace)
                pq.write_table(to_table(customers, CUSTOMERS_SCHEMA), write.stage(customers_path))
        if len(bad):
            quarantine = _quarantine_table(bad, quarantine_path, now)
            pq.write_table(quarantine, write.stage(quarantine_path))
        write.stage_log(
            _log_entry(report, fingerprint, source, now, derived_ids=derived_ids, **options)
        )
        fault_point("ingest:staged")
        write.commit(fault="ingest")
    return report
