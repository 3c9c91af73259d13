"""Commit several files at once: a write-ahead journal of renames.

A single file is replaced atomically by writing a temporary file and renaming it over
the target. Several files (events + customers + quarantine, or a set of feature
snapshots) need more: a crash between two renames would leave them out of step. So:

1. the writer stages every new file under a temporary name (:func:`staged_path`, named
   after the process: two writers never share one) and flushes it to disk;
2. :func:`commit` writes the journal, the list of renames and deletions, atomically
   (temporary file, fsync, rename): from that moment the change is decided;
3. it performs the renames and deletions, then removes the journal.

A process killed before step 2 leaves only temporary files, which
:func:`remove_stale_temps` deletes; the stores are untouched. Killed during step 3, it
leaves the journal, and :func:`recover` (run by the next command that takes the store's
lock) finishes the renames: a staged file that is gone was already renamed. Either way
the files end up all old or all new. Callers hold the store's exclusive lock
(:mod:`engage.locks`) around staging, commit and recovery.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from engage.faults import fault_point
from engage.locks import pid_alive

_TMP = re.compile(r"^\..+\.(\d+)\.tmp$")


def staged_path(final: Path) -> Path:
    """The temporary name of ``final`` for this process (same folder, so renames are atomic)."""
    final = Path(final)
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def fsync_file(path: Path) -> None:
    """Flush a written file to disk (a rename must never publish unwritten data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(
    journal: Path,
    renames: Sequence[tuple[Path, Path]],
    deletes: Iterable[Path] = (),
    fault: str | None = None,
) -> None:
    """Publish staged files together: rename each ``(staged, final)``, delete ``deletes``.

    Args:
        journal: the journal file of the store (e.g. ``<data dir>/.events.journal``).
        renames: staged file and its final name, in the order to rename them.
        deletes: files to remove once every rename is done (stale members of the set).
        fault: a prefix for the kill points ``<fault>:journal_written``,
            ``<fault>:mid_commit`` and ``<fault>:committed`` (:mod:`engage.faults`).

    Raises:
        FileNotFoundError: a staged file does not exist (nothing is changed then).

    """
    journal = Path(journal)
    missing = [str(s) for s, _ in renames if not Path(s).exists()]
    if missing:
        raise FileNotFoundError(f"cannot commit: staged files missing: {', '.join(missing)}")
    for staged, _ in renames:
        fsync_file(Path(staged))
    doc = {
        "renames": [[str(s), str(f)] for s, f in renames],
        "deletes": [str(d) for d in deletes],
    }
    tmp = staged_path(journal)
    with open(tmp, "w") as handle:
        json.dump(doc, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, journal)
    _fsync_dir(journal.parent)
    if fault:
        fault_point(f"{fault}:journal_written")
    _apply(journal, doc, fault)


def _apply(journal: Path, doc: dict, fault: str | None = None) -> None:
    folders = {journal.parent}
    for i, (staged, final) in enumerate(doc["renames"]):
        if Path(staged).exists():
            os.replace(staged, final)
        folders.add(Path(final).parent)
        if fault and i == 0:
            fault_point(f"{fault}:mid_commit")
    for path in doc["deletes"]:
        Path(path).unlink(missing_ok=True)
        folders.add(Path(path).parent)
    for folder in folders:
        if folder.exists():
            _fsync_dir(folder)
    if fault:
        fault_point(f"{fault}:committed")
    journal.unlink()
    _fsync_dir(journal.parent)


def pending(journal: Path) -> bool:
    """True when a commit was interrupted and :func:`recover` has work to do."""
    return Path(journal).exists()


def recover(journal: Path) -> bool:
    """Finish an interrupted commit; returns True when there was one.

    Raises:
        ValueError: the journal is unreadable (it is written atomically, so this means
            someone edited it); the message says which file to look at.

    """
    journal = Path(journal)
    if not journal.exists():
        return False
    try:
        doc = json.loads(journal.read_text())
        doc["renames"], doc["deletes"]  # noqa: B018 - both keys must be there
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{journal}: unreadable commit journal ({err}); it lists the files of an "
            "interrupted commit: inspect it, then delete it"
        ) from None
    _apply(journal, doc)
    return True


def remove_stale_temps(folders: Iterable[Path], keep_pids: Iterable[int] = ()) -> list[Path]:
    """Delete temporary files (``.<name>.<pid>.tmp``) left by processes that died.

    Only call this while holding the store's exclusive lock and after :func:`recover`:
    a temporary file of a live process (this one, or ``keep_pids``) is kept.

    Returns:
        The files removed.

    """
    keep = {os.getpid(), *keep_pids}
    removed = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = _TMP.match(path.name)
            if not match or int(match.group(1)) in keep or not path.is_file():
                continue
            if pid_alive(int(match.group(1))):
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
