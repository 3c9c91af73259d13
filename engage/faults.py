"""Named kill points, so that crash safety is tested deterministically.

The batch commands call :func:`fault_point` at the moments where a crash could hurt
(after a temporary file is written, between two renames of a commit, ...). Normally it
does nothing. When ``$ENGAGE_FAULT`` names the point, the process sends itself SIGKILL
there: no ``finally``, no ``atexit``, exactly what a power cut or the OOM killer leaves
behind. The reliability tests and ``benchmarks/bench_reliability.py`` run a command
with a point set, then check that the stores are readable and that a rerun gives the
result of an uninterrupted run.

``ENGAGE_FAULT`` holds one or more comma-separated names; ``name#N`` kills at the N-th
time the point is reached (e.g. ``features:snapshot_staged#3`` after the third
snapshot). :data:`POINTS` lists every point with what has happened when it fires.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "ENGAGE_FAULT"

POINTS = {
    "ingest:validated": "the file is read and validated, nothing written",
    "ingest:staged": "events, customers, quarantine and log written to temporary files",
    "ingest:journal_written": "the commit journal is on disk, no file renamed yet",
    "ingest:mid_commit": "the first file of the commit renamed, the others not",
    "ingest:committed": "every file renamed, the journal not yet removed",
    "simulate:staged": "the simulated events and customers written to temporary files",
    "simulate:journal_written": "the commit journal is on disk, no file renamed yet",
    "simulate:mid_commit": "the events renamed, the customers not",
    "simulate:committed": "both files renamed, the journal not yet removed",
    "cdnow:journal_written": "the commit journal is on disk, no file renamed yet",
    "cdnow:mid_commit": "the events renamed, the customers not",
    "cdnow:committed": "both files renamed, the journal not yet removed",
    "features:snapshot_staged": "one more snapshot written to a temporary file",
    "features:journal_written": "every snapshot staged and journaled, none renamed",
    "features:mid_commit": "the first snapshot of the commit renamed, the others not",
    "features:committed": "the new set renamed and the old snapshots deleted, the journal "
    "not yet removed (Feast not yet applied)",
    "features:registry_staged": "Feast apply done on a copy of the registry, not swapped",
    "features:online_staged": "the new online tables filled, not yet swapped in",
    "train:between_models": "the first model trained and registered, the second not started",
    "score:batch_written": "one more batch of scores written to the temporary run file",
    "score:before_rename": "the run file complete under its temporary name",
}

_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """SIGKILL this process if ``$ENGAGE_FAULT`` names ``name`` (see the module doc)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for item in spec.split(","):
        target, _, nth = item.strip().partition("#")
        if target != name:
            continue
        count = _hits[name] = _hits.get(name, 0) + 1
        if not nth or count == int(nth):
            os.kill(os.getpid(), signal.SIGKILL)
