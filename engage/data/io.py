"""Parquet storage of the ``events`` and ``customers`` tables.

Every timestamp is stored as ``timestamp[us, tz=UTC]``: Feast's DuckDB offline store
refuses nanoseconds, and a single unit and zone keeps joins between tables exact.
Writes go to a temporary file in the target folder and are renamed into place, so a
crash never leaves a half-written table behind.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engage.journal import staged_path
from engage.schema import CUSTOMERS_SCHEMA, EVENTS_SCHEMA

CREATE_HINT = "create it with `engage data simulate`, `engage data cdnow` or `engage data ingest`"


# A UTC offset or "Z" right after a time: "10:00+02:00", "10:00:00.5Z", "10:00-0500".
_OFFSET = re.compile(r"\d:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)\s*$")


def to_utc(values: pd.Series) -> pd.Series:
    """Convert timestamps to ``datetime64[ns, UTC]``; what cannot be parsed becomes NaT.

    Naive values are taken as UTC, aware ones are converted. Strings must be ISO 8601
    (e.g. ``2025-05-01 08:00``, ``2025-05-01T10:00:00+02:00``); other formats such as
    ``01/02/2025`` are not guessed day- or month-first.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        return pd.to_datetime(values, utc=True)
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    is_text = values.map(lambda v: isinstance(v, str)).astype(bool)
    has_offset = is_text & values.where(is_text, "").astype(str).str.contains(_OFFSET)
    # Strings with and without an offset are parsed apart: pandas 2.x, given both in one
    # call with format="ISO8601", reads a naive string in the offset of the string
    # before it instead of in UTC.
    for part in (has_offset, is_text & ~has_offset, values.notna() & ~is_text):
        if part.any():
            out[part] = pd.to_datetime(values[part], utc=True, errors="coerce", format="ISO8601")
    return out


def _utc_column(values: pd.Series, unit: str) -> pd.Series:
    times = to_utc(values)
    bad = values.notna() & times.isna()
    if bad.any():
        raise ValueError(f"{int(bad.sum())} unparsable timestamps, e.g. {values[bad].iloc[0]!r}")
    # Floored rather than rounded so that a stored time never moves past the original.
    return times.dt.floor(pd.Timedelta(1, unit=unit)).dt.as_unit(unit)


def _to_arrow(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    missing = [f.name for f in schema if f.name not in df.columns and not f.nullable]
    if missing:
        raise ValueError(f"cannot write table: required columns missing: {', '.join(missing)}")
    columns = {}
    for field in schema:
        if field.name not in df.columns:
            columns[field.name] = pd.Series([None] * len(df), dtype=object)
            continue
        col = df[field.name].reset_index(drop=True)
        if pa.types.is_timestamp(field.type):
            col = _utc_column(col, field.type.unit)
        if not field.nullable and col.isna().any():
            raise ValueError(
                f"cannot write table: column {field.name} has {int(col.isna().sum())} "
                "missing values but is required"
            )
        columns[field.name] = col
    return pa.Table.from_pandas(pd.DataFrame(columns), schema=schema, preserve_index=False)


def _conform(table: pa.Table, schema: pa.Schema, path: Path) -> pa.Table:
    """Cast a stored table to ``schema``; columns the schema lacks would be lost, so fail."""
    extra = [name for name in table.column_names if name not in schema.names]
    if extra:
        raise ValueError(f"{path}: stored columns not in the new schema: {', '.join(extra)}")
    arrays = []
    for field in schema:
        if field.name in table.column_names:
            arrays.append(table[field.name].cast(field.type))
        elif field.nullable:
            arrays.append(pa.nulls(table.num_rows, field.type))
        else:
            raise ValueError(f"{path}: required column {field.name} is not stored")
    return pa.Table.from_arrays(arrays, schema=schema)


def stage_table(table: pa.Table, path: Path) -> Path:
    """Write ``table`` under the temporary name of ``path`` (:func:`engage.journal.staged_path`).

    Returns:
        The temporary file, to be renamed by the caller (alone, or with others in one
        :func:`engage.journal.commit`).

    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target so that os.replace is a rename on one file system; the
    # name carries the pid, so a leftover of a killed process is recognised and removed.
    tmp = staged_path(path)
    try:
        pq.write_table(table, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = stage_table(table, path)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def to_table(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """``df`` as an Arrow table of ``schema`` (see :func:`write_table` for the rules)."""
    return _to_arrow(df, schema)


def appended(df: pd.DataFrame, path: Path, schema: pa.Schema) -> pa.Table:
    """The table at ``path`` (if any) followed by ``df``, in ``schema`` (as :func:`append_rows`)."""
    path = Path(path)
    table = _to_arrow(df, schema)
    if path.exists():
        table = pa.concat_tables([_conform(pq.read_table(path), schema, path), table])
    return table


def write_table(df: pd.DataFrame, path: Path, schema: pa.Schema) -> None:
    """Write ``df`` to Parquet with the types of ``schema``, atomically.

    Args:
        df: the rows; columns not in ``schema`` are ignored, nullable ones may be absent.
        path: the target file; its parent folders are created.
        schema: the Arrow schema; timestamp fields are converted to their unit in UTC
            (naive timestamps are taken as UTC).

    Raises:
        ValueError: a required column is absent or has missing values.

    """
    _write_atomic(_to_arrow(df, schema), Path(path))


def append_rows(df: pd.DataFrame, path: Path, schema: pa.Schema) -> None:
    """Append ``df`` to the table at ``path`` (created if absent), keeping stored rows.

    Args:
        df: the new rows.
        path: the Parquet file.
        schema: the schema of the result; stored columns missing from it are an error
            (they would be lost), nullable columns missing from the stored file are
            filled with nulls.

    """
    _write_atomic(appended(df, path, schema), Path(path))


def read_table(path: Path, schema: pa.Schema) -> pd.DataFrame:
    """Read the columns of ``schema`` from ``path``, cast to its types.

    Raises:
        FileNotFoundError: ``path`` does not exist; the message says how to create it.
        ValueError: a column of ``schema`` is not stored.

    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; {CREATE_HINT}")
    table = pq.read_table(path)
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing columns {', '.join(missing)}")
    return _conform(table.select(schema.names), schema, path).to_pandas()


def write_events(df: pd.DataFrame, path: Path) -> None:
    """Write the events table (see :data:`engage.schema.EVENTS_SCHEMA`)."""
    write_table(df, path, EVENTS_SCHEMA)


def write_customers(df: pd.DataFrame, path: Path) -> None:
    """Write the customers table (see :data:`engage.schema.CUSTOMERS_SCHEMA`)."""
    write_table(df, path, CUSTOMERS_SCHEMA)


def read_events(path: Path) -> pd.DataFrame:
    """Read the events table; ``event_time`` is ``datetime64[us, UTC]``.

    Raises:
        FileNotFoundError: no events yet; the message names the commands that create them.

    """
    return read_table(path, EVENTS_SCHEMA)


def read_customers(path: Path) -> pd.DataFrame:
    """Read the customers table; ``first_seen`` is ``datetime64[us, UTC]``.

    Raises:
        FileNotFoundError: no customers yet; the message names the commands that create them.

    """
    return read_table(path, CUSTOMERS_SCHEMA)


def read_quarantine(path: Path) -> pd.DataFrame:
    """Read every quarantined row (all columns, as stored).

    Raises:
        FileNotFoundError: nothing has been quarantined yet.

    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: no rows have been quarantined yet")
    return pq.read_table(path).to_pandas()
