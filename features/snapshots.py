"""The stored feature snapshots: one Parquet file per as-of time.

This module owns the layout ``<features dir>/customer_features/as_of=<YYYYmmddTHHMMSS>.parquet``:
every other module finds, names, reads and writes snapshot files through it.

A build owns its set of snapshots. :class:`SnapshotSet` stages each new file under a
temporary name, then commits them in one journaled step (:mod:`engage.journal`) with
the manifest ``<features dir>/snapshots.json`` (the as-of times of the build, its row
counts and time) and the deletion of every snapshot the build did not make - e.g. the
snapshots of events that ``engage data ingest --replace`` removed. A killed build leaves
the previous set whole (or, killed during the commit, the new one once the next command
takes the lock), never half a snapshot under its final name nor a mix of two builds.
:func:`list_snapshots` lists the manifest's members; Feast reads the folder, which then
holds exactly those files. Writers hold the features lock (:func:`features_lock`),
readers that need a stable set hold it shared.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engage import journal
from engage.faults import fault_point
from engage.locks import FEATURES, store_lock

TABLE_DIR = "customer_features"
MANIFEST = "snapshots.json"
JOURNAL = ".snapshots.journal"
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


def manifest_path(features_dir: Path) -> Path:
    """The manifest of the last build (its as-of times, rows and time)."""
    return Path(features_dir) / MANIFEST


def read_manifest(features_dir: Path) -> dict | None:
    """The manifest of the last build, or None for a folder built before manifests.

    Raises:
        ValueError: the manifest is unreadable (the message says to rebuild).

    """
    path = manifest_path(features_dir)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        doc["as_of"]  # noqa: B018 - the one key readers rely on
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path}: unreadable snapshot manifest ({err}): run `engage features build`"
        ) from None
    return doc


def list_snapshots(features_dir: Path) -> list[Snapshot]:
    """The snapshots of the last build, oldest first.

    With a manifest, its members (a stray file in the folder is not a snapshot); in a
    folder from before manifests, every ``as_of=*.parquet`` file. Temporary files of a
    running build are never listed.
    """
    manifest = read_manifest(features_dir)
    if manifest is not None:
        snaps = (Snapshot(to_utc(t), snapshot_path(features_dir, t)) for t in manifest["as_of"])
        return sorted((s for s in snaps if s.path.exists()), key=lambda s: s.as_of)
    files = snapshot_dir(features_dir).glob(f"{_PREFIX}*.parquet")
    return sorted((Snapshot(_as_of(f), f) for f in files), key=lambda s: s.as_of)


def journal_path(features_dir: Path) -> Path:
    """The commit journal of the snapshot set."""
    return Path(features_dir) / JOURNAL


def recover(features_dir: Path) -> None:
    """Finish a commit interrupted by a crash and delete temporary files of dead builds.

    Call it holding the features lock exclusively (:func:`features_lock` does).
    """
    journal.recover(journal_path(features_dir))
    journal.remove_stale_temps([Path(features_dir), snapshot_dir(features_dir)])


@contextlib.contextmanager
def features_lock(features_dir: Path, *, timeout: float, shared: bool = False) -> Iterator[None]:
    """Hold the features lock (see :mod:`engage.locks`), after finishing a crashed commit.

    A writer (``engage features build``) holds it exclusively; a reader that needs the
    set of snapshots to stay put (training, scoring) holds it shared.

    Raises:
        engage.locks.StoreBusyError: another command held it for longer than ``timeout``.

    """
    features_dir = Path(features_dir)
    if not shared:
        with store_lock(features_dir, FEATURES, timeout=timeout):
            recover(features_dir)
            yield
        return
    if journal.pending(journal_path(features_dir)):
        with store_lock(features_dir, FEATURES, timeout=timeout):
            recover(features_dir)
    with store_lock(features_dir, FEATURES, timeout=timeout, shared=True):
        yield


@dataclass
class SnapshotSet:
    """The snapshots of one build, staged and then committed as the new set.

    Call :meth:`write` per as-of time, then :meth:`commit`; until then the stored set
    is untouched. Hold the features lock exclusively from the first write to the commit.
    """

    features_dir: Path
    staged: dict[pd.Timestamp, Path] = field(default_factory=dict)
    rows: dict[pd.Timestamp, int] = field(default_factory=dict)
    committing: bool = False

    def write(self, table: pa.Table, as_of: pd.Timestamp, use_dictionary: list[str]) -> Path:
        """Stage the snapshot at ``as_of`` (a temporary file); returns its final path."""
        as_of = to_utc(as_of)
        final = snapshot_path(self.features_dir, as_of)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = journal.staged_path(final)
        try:
            pq.write_table(table, tmp, use_dictionary=use_dictionary)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.staged[as_of] = tmp
        self.rows[as_of] = table.num_rows
        fault_point("features:snapshot_staged")
        return final

    def commit(self, **details: object) -> list[Snapshot]:
        """Publish the staged snapshots as the set, with the manifest; delete the others.

        Args:
            **details: extra manifest fields (e.g. the events file the build read).

        Returns:
            The new set, oldest first.

        """
        times = sorted(self.staged)
        manifest = manifest_path(self.features_dir)
        doc = {
            "as_of": [t.isoformat() for t in times],
            "rows": {t.isoformat(): self.rows[t] for t in times},
            "built_at": pd.Timestamp.now(tz="UTC").isoformat(),
            **details,
        }
        tmp_manifest = journal.staged_path(manifest)
        tmp_manifest.write_text(json.dumps(doc, indent=1, default=str))
        renames = [(self.staged[t], snapshot_path(self.features_dir, t)) for t in times]
        keep = {final for _, final in renames}
        stale = [
            f for f in snapshot_dir(self.features_dir).glob(f"{_PREFIX}*.parquet") if f not in keep
        ]
        # The manifest goes last: a reader of the folder sees it change once every file
        # of the set is in place.
        self.committing = True
        journal.commit(
            journal_path(self.features_dir),
            [*renames, (tmp_manifest, manifest)],
            deletes=stale,
            fault="features",
        )
        self.staged.clear()
        return [Snapshot(t, snapshot_path(self.features_dir, t)) for t in times]

    def discard(self) -> None:
        """Delete the staged files (the build failed before its commit).

        Once the commit has started, the journal names them: they are left for
        :func:`recover` to finish the commit.
        """
        if self.committing:
            return
        for tmp in self.staged.values():
            tmp.unlink(missing_ok=True)
        self.staged.clear()


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


def read_snapshots(features_dir: Path) -> pd.DataFrame:
    """All stored snapshots as one frame (tests, reports, the reference check).

    Raises:
        FileNotFoundError: no snapshot is stored.

    """
    snaps = require_snapshots(features_dir)
    return pd.concat([pd.read_parquet(s.path) for s in snaps], ignore_index=True)
