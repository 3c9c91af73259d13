"""The event store: events, customers and quarantine, which change together.

``events.parquet``, ``customers.parquet`` (first seen per customer, derived from the
events), ``quarantine.parquet`` (the rows refused so far) and ``events_log.json`` (one
entry per write: which command, when, how many rows) form one store. Every write goes through
:func:`writing`: an exclusive lock (:mod:`engage.locks`), the new files staged under
temporary names, then one journaled commit (:mod:`engage.journal`), so a crash leaves
the four files all old or all new, never events from one write and customers from
another. Readers that need events and customers to agree (the feature build, the
training leakage audit) use :func:`reading`, a shared lock. Both finish an interrupted
commit first and delete temporary files of killed writers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from engage import journal
from engage.locks import EVENTS, store_lock

JOURNAL = ".events.journal"
LOG = "events_log.json"


def folder_of(events_path: Path) -> Path:
    """The folder holding the store's lock and journal: the events file's folder."""
    return Path(events_path).parent


def journal_path(events_path: Path) -> Path:
    """The commit journal of the store."""
    return folder_of(events_path) / JOURNAL


def log_path(events_path: Path) -> Path:
    """The store's write log (``events_log.json`` next to the events)."""
    return folder_of(events_path) / LOG


def _recover(events_path: Path, others: tuple[Path, ...]) -> None:
    journal.recover(journal_path(events_path))
    folders = {folder_of(events_path), *(Path(p).parent for p in others)}
    journal.remove_stale_temps(folders)


@contextlib.contextmanager
def reading(events_path: Path, *, timeout: float) -> Iterator[None]:
    """Hold the store's shared lock: no write can start until the block ends.

    An interrupted commit is finished first (under the exclusive lock, briefly).

    Raises:
        engage.locks.StoreBusyError: a write held the store for longer than ``timeout``.

    """
    folder = folder_of(events_path)
    if journal.pending(journal_path(events_path)):
        with store_lock(folder, EVENTS, timeout=timeout):
            _recover(events_path, ())
    with store_lock(folder, EVENTS, timeout=timeout, shared=True):
        yield


@dataclass
class Write:
    """The files of one write to the store, staged and then committed together.

    Use :meth:`stage` for each new file (it returns the temporary path to write), then
    :meth:`commit`. Nothing is visible under a final name before the commit.
    """

    events_path: Path
    renames: list[tuple[Path, Path]] = field(default_factory=list)
    committing: bool = False

    def stage(self, final: Path) -> Path:
        """The temporary file to write for ``final`` (published by :meth:`commit`)."""
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = journal.staged_path(final)
        self.renames = [r for r in self.renames if r[1] != final] + [(tmp, final)]
        return tmp

    def stage_log(self, entry: dict) -> None:
        """Stage the write log with ``entry`` appended (it is committed with the data)."""
        path = log_path(self.events_path)
        entries = read_log(self.events_path)
        self.stage(path).write_text(json.dumps({"entries": [*entries, entry]}, indent=1))

    def commit(self, fault: str | None = None) -> None:
        """Publish every staged file at once (see :func:`engage.journal.commit`)."""
        self.committing = True
        journal.commit(journal_path(self.events_path), self.renames, fault=fault)

    def discard(self) -> None:
        """Delete the staged files (the write is abandoned before its commit).

        Once the commit has started the journal may name them: they are left for
        :func:`engage.journal.recover` to finish the commit.
        """
        if self.committing:
            return
        for tmp, _ in self.renames:
            Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def writing(events_path: Path, *, timeout: float, others: tuple[Path, ...] = ()) -> Iterator[Write]:
    """Hold the store's exclusive lock and yield a :class:`Write` to stage and commit.

    Args:
        events_path: the events file (its folder holds the lock and the journal).
        timeout: seconds to wait for another command holding the store.
        others: the other files of the store (customers, quarantine), whose folders are
            cleaned of temporary files left by killed writers.

    Raises:
        engage.locks.StoreBusyError: another command held the store for too long.

    """
    with store_lock(folder_of(events_path), EVENTS, timeout=timeout):
        _recover(events_path, others)
        write = Write(Path(events_path))
        try:
            yield write
        except BaseException:
            write.discard()
            raise


def read_log(events_path: Path) -> list[dict]:
    """The entries of the write log, oldest first (empty when there is none)."""
    path = log_path(events_path)
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text())["entries"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: unreadable write log ({err})") from None


DEMO_COMMANDS = ("simulate", "cdnow")


def _replaced_store(entry: dict) -> bool:
    return entry.get("command") in DEMO_COMMANDS or bool(entry.get("replace"))


def demo_origin(events_path: Path) -> dict | None:
    """The write that put demo data (simulated or CDNOW) in the store, if it still holds it.

    The store holds demo data when the last write that replaced it whole was
    ``engage data simulate`` or ``engage data cdnow`` (later ingests appended to it).

    Returns:
        That write's log entry (``command``, ``at``, and for the simulator ``customers``,
        ``days``, ``seed``), or None for a store of the user's own events or no store.

    """
    if not Path(events_path).exists():
        return None
    for entry in reversed(read_log(events_path)):
        if _replaced_store(entry):
            return entry if entry.get("command") in DEMO_COMMANDS else None
    return None


def store_origin(events_path: Path) -> str | None:
    """Which data the store holds: the write that started it, as ``<command> at <time>``.

    That is the last write that replaced the store whole (``engage data simulate``,
    ``cdnow``, an ingest replacing the demo data or with ``--replace``), else the first
    write of the log. A model records it, so a champion trained on the demo data is not
    compared with, and kept over, a model of the user's own events. None without a log.
    """
    entries = read_log(events_path) if Path(events_path).exists() else []
    if not entries:
        return None
    start = next((e for e in reversed(entries) if _replaced_store(e)), entries[0])
    return f"{start.get('command', 'write')} at {start.get('at', '?')}"


def store_flags(events_path: Path) -> dict[str, bool]:
    """What the writes since the store was last replaced say about its data.

    ``no_amounts``: at least one ingest had no amounts (``--no-amounts``): purchase
    values, revenue, CLV and value at risk are unknown for this store.
    """
    flags = {"no_amounts": False}
    for entry in reversed(read_log(events_path) if Path(events_path).exists() else []):
        flags["no_amounts"] |= bool(entry.get("no_amounts"))
        if _replaced_store(entry):
            break
    return flags


def frame_fingerprint(df: pd.DataFrame, **options: object) -> str:
    """A hash of a frame's columns, values and the write options (order matters)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([list(map(str, df.columns)), options], sort_keys=True).encode())
    if len(df.columns):
        hashed = pd.util.hash_pandas_object(df.astype(object).where(df.notna(), None), index=False)
        digest.update(hashed.to_numpy().tobytes())
    return digest.hexdigest()


def replace_store(
    events: pd.DataFrame,
    customers: pd.DataFrame,
    events_path: Path,
    customers_path: Path,
    *,
    timeout: float,
    command: str,
) -> None:
    """Replace the events and customers together (e.g. ``engage data cdnow``).

    The quarantine is kept: it is the history of refused rows.

    Raises:
        ValueError: a required column is absent or has missing values.
        engage.locks.StoreBusyError: another command held the store for too long.

    """
    import pyarrow.parquet as pq

    from engage.data.io import to_table
    from engage.schema import CUSTOMERS_SCHEMA, EVENTS_SCHEMA

    with writing(events_path, timeout=timeout, others=(Path(customers_path),)) as write:
        pq.write_table(to_table(events, EVENTS_SCHEMA), write.stage(events_path))
        pq.write_table(to_table(customers, CUSTOMERS_SCHEMA), write.stage(customers_path))
        write.stage_log(
            {
                "command": command,
                "at": pd.Timestamp.now(tz="UTC").isoformat(),
                "total_rows": len(events),
            }
        )
        write.commit(fault=command)
