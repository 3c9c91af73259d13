"""Start-up checks of the prediction service: fail fast with one clear line, never loop.

A worker that cannot load used to raise in BentoML's start-up hook; BentoML's process
manager (circus) then restarted it without end, ``engage serve`` never exited and the
health endpoints hung. The checks now run at three levels:

1. ``engage serve`` runs :func:`preflight` in its own process before BentoML starts:
   :func:`check_stores`, then the very load the workers will do
   (:func:`load_predictor`); a problem is one ``error: ...`` line and exit code
   :data:`EXIT_STARTUP_FAILED`, and no server is started.
2. ``bentoml serve`` (also run directly) calls :func:`check_stores` in the service's
   ``on_deployment`` hook, in the parent process before any worker starts, and exits
   the same way; it also arms the parent (:func:`arm_arbiter`) for case 3.
3. A worker whose load still fails (a store changed after the checks, a model file that
   is present but broken) retries a transient SQLite lock at most
   :data:`LOAD_ATTEMPTS` times, then :func:`abort_worker` logs one line, asks the parent
   to stop the server (SIGTERM) and exits; the parent then exits with
   :data:`EXIT_STARTUP_FAILED` instead of 0.

Every check only reads: nothing is created when something is missing (see
:mod:`engage.readonly`), and each message names the path and the command to run.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from engage.config import Params, Paths

EXIT_STARTUP_FAILED = 3
LOAD_ATTEMPTS = 3  # only a transient SQLite lock is retried; anything else fails at once
RETRY_DELAY_S = 1.0
# "<parent pid>:<failure file>", set by the parent (arm_arbiter) for its workers.
ARBITER_ENV = "ENGAGE_SERVE_ARBITER"
FAILURE_FILE = "startup-failure.txt"

logger = logging.getLogger("engage.serving")


class StartupError(RuntimeError):
    """The service cannot start; the message is one line naming every problem."""


def one_line(err: BaseException) -> str:
    """An exception as one line: its message, prefixed by its type when not ours."""
    known = (LookupError, OSError, ValueError, RuntimeError, sqlite3.Error)
    text = str(err) if isinstance(err, known) else f"{type(err).__name__}: {err}"
    out = ""
    for part in (p.strip() for p in text.splitlines()):
        if part:
            out += (" " if not out or out.endswith(":") else "; ") + part
    return out.strip() or repr(err)


def check_stores(paths: Paths, params: Params) -> list[str]:
    """Cheap read-only checks of everything the service loads; the problems found.

    Checked, without creating anything: the MLflow store (a SQLite database with the
    registry tables), a champion of every model and its model files, the Feast registry,
    the online store (opened read-only, with its layout table) and a feature snapshot.
    Milliseconds, and no import of MLflow or Feast.
    """
    from engage.readonly import readonly_sqlite
    from engage.specs import MODEL_NAMES
    from features.snapshots import require_snapshots
    from features.store import ONLINE_STORE_DB, REGISTRY_DB
    from training.model import BOOSTER_TXT, MODEL_JSON
    from training.registry import champion_ref, local_model_dir, open_registry

    problems: list[str] = []
    try:
        open_registry(paths).close()
        store_ok = True
    except LookupError as err:
        problems.append(one_line(err))
        store_ok = False
    for name in MODEL_NAMES if store_ok else ():
        try:
            ref = champion_ref(paths, name)
            if ref.source.startswith(("file:", "/")):
                folder = local_model_dir(ref)
                problems += [
                    f"{name} v{ref.version}: {folder / f} is missing: train again (`engage train`)"
                    for f in (MODEL_JSON, BOOSTER_TXT)
                    if not (folder / f).is_file()
                ]
        except LookupError as err:
            problems.append(one_line(err))
    registry = paths.feast_dir / REGISTRY_DB
    if not registry.is_file():
        problems.append(
            f"no Feast registry at {registry}: build the features (`engage features build`)"
        )
    online = paths.feast_dir / ONLINE_STORE_DB
    if params.feast.online_store == "redis":
        pass  # a server, not a file: the predictor's probe (PING) checks it at start-up
    elif not online.is_file():
        problems.append(
            f"no online store at {online}: build the features (`engage features build`)"
        )
    else:
        try:
            con = readonly_sqlite(online)
            try:
                tables = con.execute("SELECT count(*) FROM _engage_layout").fetchone()[0]
            finally:
                con.close()
            if not tables:
                problems.append(
                    f"online store {online} holds no feature view: build the features "
                    "(`engage features build`)"
                )
        except (OSError, sqlite3.Error) as err:
            problems.append(
                f"online store {online} cannot be read ({err}): rebuild it with "
                "`engage features build`"
            )
    try:
        require_snapshots(paths.features_dir)
    except FileNotFoundError as err:
        problems.append(one_line(err))
    return problems


def _transient(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def load_predictor(paths: Paths, params: Params, attempts: int = LOAD_ATTEMPTS):
    """The :class:`~serving.online.OnlinePredictor` a worker serves with.

    A transient SQLite lock (a build writing the online store) is retried up to
    ``attempts`` times; any other failure is final at once.

    Raises:
        StartupError: the load failed (one line naming the problem).

    """
    from serving.online import OnlinePredictor

    for attempt in range(1, attempts + 1):
        try:
            return OnlinePredictor(paths, params)
        except Exception as err:  # noqa: BLE001 - every failure becomes one clear line
            cause = getattr(err, "__cause__", None) or err
            if attempt < attempts and (_transient(err) or _transient(cause)):
                time.sleep(RETRY_DELAY_S * attempt)
                continue
            raise StartupError(one_line(err)) from err
    raise AssertionError("unreachable")  # pragma: no cover


def preflight(paths: Paths, params: Params, full: bool = True):
    """All start-up checks in this process; returns the loaded predictor (or None).

    Args:
        paths: resolved locations.
        params: the parsed parameters.
        full: also do the full load (:func:`load_predictor`) after the cheap checks.

    Raises:
        StartupError: one line naming every problem found.

    """
    problems = check_stores(paths, params)
    if problems:
        raise StartupError("; ".join(problems))
    return load_predictor(paths, params) if full else None


# ----------------------------------------------------------------- fail fast, never loop


def arm_arbiter() -> None:
    """In BentoML's parent process: exit non-zero if a worker reports a failed start.

    Creates a private folder for the workers' failure report and names it in
    :data:`ARBITER_ENV` (the workers inherit the environment). At exit, a report makes
    the process print it and exit with :data:`EXIT_STARTUP_FAILED` (BentoML would exit 0
    after a SIGTERM).
    """
    if os.environ.get(ARBITER_ENV, "").startswith(f"{os.getpid()}:"):
        return  # already armed in this process
    folder = Path(tempfile.mkdtemp(prefix="engage-serve-"))
    report = folder / FAILURE_FILE
    os.environ[ARBITER_ENV] = f"{os.getpid()}:{report}"
    atexit.register(_exit_if_a_worker_failed, report)


def _exit_if_a_worker_failed(report: Path) -> None:
    try:
        message = report.read_text(encoding="utf-8").strip() if report.is_file() else ""
    finally:
        shutil.rmtree(report.parent, ignore_errors=True)
    if message:
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
        os._exit(EXIT_STARTUP_FAILED)


def abort_worker(message: str) -> None:
    """End a worker that cannot start, and the whole server with it (never returns).

    Logs ``message`` once, writes it where the parent armed by :func:`arm_arbiter`
    looks, sends the parent SIGTERM (it stops the other workers and exits with
    :data:`EXIT_STARTUP_FAILED`), and exits with that code. Without an armed parent
    (another process manager) the worker just exits non-zero.
    """
    logger.error("cannot start: %s", message)
    armed = os.environ.get(ARBITER_ENV, "")
    pid_text, _, report = armed.partition(":")
    if pid_text.isdigit() and int(pid_text) == os.getppid() and report:
        try:
            tmp = Path(f"{report}.{os.getpid()}")
            tmp.write_text(message, encoding="utf-8")
            os.replace(tmp, report)
        except OSError:
            pass  # the parent still stops; it just cannot repeat the message
        os.kill(os.getppid(), signal.SIGTERM)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_STARTUP_FAILED)


__all__ = [
    "ARBITER_ENV",
    "EXIT_STARTUP_FAILED",
    "StartupError",
    "abort_worker",
    "arm_arbiter",
    "check_stores",
    "load_predictor",
    "one_line",
    "preflight",
]
