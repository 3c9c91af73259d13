"""The stored feature snapshots: one Parquet file per as-of time.

This module owns the layout ``<features dir>/customer_features/as_of=<YYYYmmddTHHMMSS>.parquet``:
every other module finds, names, reads and writes snapshot files through it. A file is
written under a temporary name and renamed when complete, so a killed build never leaves
half a snapshot under its final name.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TABLE_DIR = "customer_features"
_PREFIX = "as_of="
_FORMAT = "%Y%m%dT%H%M%S"


def to_utc(ts: pd.Timestamp | dt.datetime | str) -> pd.Timestamp:
    """Parse a timestamp; naive means UTC, an offset is converted to UTC."""
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


@dataclass(frozen=True)
class Snapshot:
    """A stored feature snapshot: its as-of time and Parquet file."""

    as_of: pd.Timestamp
    path: Path


def snapshot_dir(features_dir: Path) -> Path:
    """The folder of the snapshot files under the features folder."""
    return Path(features_dir) / TABLE_DIR


def snapshot_path(features_dir: Path, as_of: pd.Timestamp | str) -> Path:
    """The file of the snapshot at ``as_of``."""
    return snapshot_dir(features_dir) / f"{_PREFIX}{to_utc(as_of).strftime(_FORMAT)}.parquet"


def snapshot_glob(features_dir: Path) -> str:
    """Absolute glob of every snapshot file (the path of the Feast file source)."""
    return str(snapshot_dir(features_dir).resolve() / "*.parquet")


def _as_of(path: Path) -> pd.Timestamp:
    return to_utc(pd.Timestamp(path.stem.removeprefix(_PREFIX)))


def list_snapshots(features_dir: Path) -> list[Snapshot]:
    """Every stored snapshot, oldest first (temporary files of a running build excluded)."""
    files = snapshot_dir(features_dir).glob(f"{_PREFIX}*.parquet")
    return sorted((Snapshot(_as_of(f), f) for f in files), key=lambda s: s.as_of)


def require_snapshots(features_dir: Path) -> list[Snapshot]:
    """:func:`list_snapshots`, failing with the command to run when there are none.

    Raises:
        FileNotFoundError: no snapshot is stored.

    """
    snaps = list_snapshots(features_dir)
    if not snaps:
        raise FileNotFoundError(
            f"no feature snapshots under {snapshot_dir(features_dir)}: run `engage features build`"
        )
    return snaps


def pick_snapshot(features_dir: Path, as_of: pd.Timestamp | str | None = None) -> Snapshot:
    """The latest snapshot, or the latest at or before ``as_of``.

    Raises:
        FileNotFoundError: no snapshot stored, or none at/before ``as_of``.

    """
    snaps = require_snapshots(features_dir)
    if as_of is None:
        return snaps[-1]
    t = to_utc(as_of)
    before = [s for s in snaps if s.as_of <= t]
    if not before:
        raise FileNotFoundError(
            f"no feature snapshot at or before {t:%Y-%m-%d %H:%M} UTC "
            f"(the first is {snaps[0].as_of:%Y-%m-%d %H:%M})"
        )
    return before[-1]


def write_snapshot(
    table: pa.Table, features_dir: Path, as_of: pd.Timestamp, use_dictionary: list[str]
) -> Path:
    """Write one snapshot atomically (temporary file, then rename); returns its path."""
    path = snapshot_path(features_dir, as_of)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, use_dictionary=use_dictionary)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_snapshots(features_dir: Path) -> pd.DataFrame:
    """All stored snapshots as one frame (tests, reports, the reference check).

    Raises:
        FileNotFoundError: no snapshot is stored.

    """
    snaps = require_snapshots(features_dir)
    return pd.concat([pd.read_parquet(s.path) for s in snaps], ignore_index=True)
