"""Store locks: two commands never write one store at once.

Each store has a lock file ``<store folder>/.locks/<name>.lock`` held with
``fcntl.flock``: exclusive for a writer (``engage data ingest``, ``features build``,
``train``, ``score`` of one run id), shared for a reader that needs a consistent view
(``features build`` reading the events, ``train`` reading the snapshots). The kernel
drops a flock when its process dies, SIGKILL included, so a crash never leaves a store
locked. A command that finds the store busy waits up to ``data.lock_timeout_s``
seconds (saying once whom it waits for), then fails with a message naming the holder's
pid, command and start time.

Each holder also writes ``.locks/<name>.<pid>.<n>.holder`` (JSON: pid, command, mode,
since) so that a waiter can name it; holder files of dead processes are ignored and
removed. Locks are re-entrant within a thread: a function that takes the lock may call
another that takes it too (a shared request inside an exclusive hold is granted).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

LOCK_DIR = ".locks"
EVENTS = "events"
FEATURES = "features"
MODELS = "models"
_POLL_S = 0.05

log = logging.getLogger(__name__)


class StoreBusyError(RuntimeError):
    """A store stayed locked by another process for longer than the timeout."""


@dataclass
class _Held:
    fd: int
    shared: bool
    depth: int
    holder: Path | None


_held: dict[tuple[int, str], _Held] = {}
_guard = threading.Lock()
_counter = itertools.count()


def lock_path(folder: Path, name: str) -> Path:
    """The lock file of store ``name`` whose files live in ``folder``."""
    return Path(folder) / LOCK_DIR / f"{name}.lock"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holders(folder: Path, name: str) -> list[dict]:
    """The live holders of a lock (pid, command, mode, since), oldest first."""
    out = []
    for f in (Path(folder) / LOCK_DIR).glob(f"{name}.*.holder"):
        try:
            info = json.loads(f.read_text())
        except (OSError, ValueError):
            continue  # being written or removed right now
        if info.get("pid") != os.getpid() and not pid_alive(int(info.get("pid", 0))):
            f.unlink(missing_ok=True)  # left by a killed process
            continue
        out.append(info)
    return sorted(out, key=lambda h: h.get("since", ""))


def _describe(folder: Path, name: str) -> str:
    found = holders(folder, name)
    if not found:
        return "another process"
    return "; ".join(
        f"pid {h['pid']} ({h.get('command', '?')}, {h.get('mode', '?')}, "
        f"since {h.get('since', '?')})"
        for h in found
    )


def _command() -> str:
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    text = " ".join(argv)
    return text if len(text) <= 200 else text[:197] + "..."


def _write_holder(folder: Path, name: str, shared: bool) -> Path:
    path = Path(folder) / LOCK_DIR / f"{name}.{os.getpid()}.{next(_counter)}.holder"
    info = {
        "pid": os.getpid(),
        "command": _command(),
        "mode": "shared" if shared else "exclusive",
        "since": pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M:%S UTC"),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def store_lock(folder: Path, name: str, *, timeout: float, shared: bool = False) -> Iterator[None]:
    """Hold the lock of store ``name`` (under ``folder``) for the ``with`` block.

    Args:
        folder: the folder of the store's files; the lock lives in ``folder/.locks``.
        name: the store (e.g. :data:`EVENTS`).
        timeout: seconds to wait for another holder; 0 tries once.
        shared: a reader's lock (many at once) instead of a writer's (one, alone).

    Raises:
        StoreBusyError: still held by another process after ``timeout`` seconds; the
            message names the holder(s).
        RuntimeError: an exclusive lock asked inside a shared hold of the same thread
            (an upgrade could deadlock with another reader doing the same).

    """
    folder = Path(folder)
    path = lock_path(folder, name)
    key = (threading.get_ident(), str(path.resolve()))
    with _guard:
        held = _held.get(key)
        if held is not None:
            if held.shared and not shared:
                raise RuntimeError(f"the {name} lock is held shared by this thread: cannot upgrade")
            held.depth += 1
    if held is not None:
        try:
            yield
        finally:
            with _guard:
                held.depth -= 1
        return

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        if shared and err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            # A read-only data dir: nobody can write it, so a reader needs no lock.
            yield
            return
        raise
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    deadline = time.monotonic() + max(0.0, timeout)
    told = False
    try:
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreBusyError(
                        f"the {name} store ({folder}) is busy: locked by "
                        f"{_describe(folder, name)}; gave up after {timeout:g} s "
                        "(data.lock_timeout_s). Wait for that command to finish and run "
                        "this one again."
                    ) from None
                if not told:
                    log.warning(
                        "waiting for the %s store: locked by %s", name, _describe(folder, name)
                    )
                    told = True
                time.sleep(_POLL_S)
        holder = _write_holder(folder, name, shared)
    except BaseException:
        os.close(fd)
        raise
    held = _Held(fd, shared, 1, holder)
    with _guard:
        _held[key] = held
    try:
        yield
    finally:
        with _guard:
            _held.pop(key, None)
        held.holder.unlink(missing_ok=True)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def holds(folder: Path, name: str, *, exclusive: bool = False) -> bool:
    """True when this thread holds the lock (exclusively, if asked)."""
    key = (threading.get_ident(), str(lock_path(folder, name).resolve()))
    with _guard:
        held = _held.get(key)
    return held is not None and (not exclusive or not held.shared)
