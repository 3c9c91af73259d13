"""Kill-and-rerun harness of the batch commands.

For a step (``data ingest``, ``features build``, ``train``, ``score``) it prepares the
data dir the step starts from, runs the step once uninterrupted (the reference), then
for each kill point: a fresh copy of the start, the step run with ``$ENGAGE_FAULT``
naming the point (the process SIGKILLs itself there, :mod:`engage.faults`) or killed
after a random delay, then

- **readable**: on a copy of the killed dir, every store opens through the product's
  own readers (which finish an interrupted commit) and every non-hidden Parquet file
  under the data dir is complete;
- **rerun**: the same command again on the killed dir exits 0;
- **identical**: the stores then hold what the reference run left, compared by content
  (times that record *when* something ran are left out: ``created_timestamp`` of the
  snapshots and the online store, ``ingested_at`` of the quarantine, the write log's
  ``at`` and ``source`` (the path of each case's copy of the file), the scoring
  metadata's ``scored_at``).

Used by ``tests/reliability/test_batch_*.py`` and ``benchmarks/bench_reliability.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
# Small enough to train in about a minute on 2 cores, large enough for the time split.
SMALL = (
    "--set",
    "simulate.customers=600",
    "--set",
    "simulate.days=280",
    "--set",
    "scoring.batch_rows=150",
    "--set",
    "data.lock_timeout_s=120",
)
INGEST_FILE = "incoming.csv"
RUN_ID = "r1"
KILLED = -9


# ------------------------------------------------------------------ running commands


@dataclass
class Outcome:
    returncode: int
    output: str
    seconds: float


def run(
    data_dir: Path,
    args: list[str],
    *,
    fault: str | None = None,
    kill_after: float | None = None,
    timeout: float = 900,
) -> Outcome:
    """Run ``engage <args>`` (with the harness kill points) on ``data_dir``.

    Args:
        data_dir: the ENGAGE_DATA_DIR of the command.
        args: the command line after ``engage``.
        fault: the kill point to set in ``$ENGAGE_FAULT``.
        kill_after: SIGKILL the process after this many seconds if still running.
        timeout: give up (kill, then fail) after this many seconds.

    """
    env = dict(os.environ)
    env.update(
        ENGAGE_DATA_DIR=str(data_dir),
        MLFLOW_DISABLE_TELEMETRY="true",
        BENTOML_DO_NOT_TRACK="true",
        DO_NOT_TRACK="true",
        FEAST_USAGE="False",
        COLUMNS="200",
    )
    env.pop("ENGAGE_FAULT", None)
    if fault:
        env["ENGAGE_FAULT"] = fault
    cmd = [sys.executable, "-m", "benchmarks.reliability_child", *SMALL, *args]
    began = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        out, _ = proc.communicate(timeout=kill_after if kill_after is not None else timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        if kill_after is None:
            raise
    return Outcome(proc.returncode, out, time.perf_counter() - began)


def ok(outcome: Outcome) -> Outcome:
    """``outcome``, or an AssertionError with its output when it did not exit 0."""
    if outcome.returncode != 0:
        raise AssertionError(f"exit {outcome.returncode}:\n{outcome.output[-3000:]}")
    return outcome


@contextlib.contextmanager
def data_dir_env(data_dir: Path) -> Iterator[None]:
    """Set ``$ENGAGE_DATA_DIR`` in this process for the block (restored after)."""
    old = os.environ.get("ENGAGE_DATA_DIR")
    os.environ["ENGAGE_DATA_DIR"] = str(data_dir)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ENGAGE_DATA_DIR", None)
        else:
            os.environ["ENGAGE_DATA_DIR"] = old


def _paths(data_dir: Path):
    from engage.config import load_params, resolve_paths

    overrides = tuple(SMALL[i + 1] for i in range(0, len(SMALL), 2))
    with data_dir_env(data_dir):
        params = load_params(overrides=overrides)
        return params, resolve_paths(params)


# ------------------------------------------------------------------ the input file


def write_ingest_file(path: Path) -> Path:
    """The file the ingest step reads: another simulated history, with bad rows.

    600 contacts over 280 days from 2025-02-15 (the stored demo data starts on
    2025-01-01, so the snapshot times differ and a build after it must drop the old
    ones), ``n-`` ids, ``;``-separated, plus rows that break rules: unknown types, a
    negative purchase, placeholder and space-padded ids, an out-of-range date.
    """
    from engage.config import load_params
    from engage.data.simulate import simulate_tables

    params = load_params(overrides=("simulate.start=2025-02-15",))
    events, _ = simulate_tables(params.simulate, params.data, customers=600, days=280, seed=7)
    events["event_id"] = "n-" + events["event_id"].astype(str)
    events["customer_id"] = "n-" + events["customer_id"].astype(str)
    bad = events.head(6).copy()
    bad["event_id"] = [f"bad-{i}" for i in range(6)]
    bad.loc[bad.index[0], "event_type"] = "teleport"
    bad.loc[bad.index[1], ["event_type", "value"]] = ["purchase", -3.0]
    bad.loc[bad.index[2], "customer_id"] = "NA"
    bad.loc[bad.index[3], "customer_id"] = "null"
    bad.loc[bad.index[4], "event_time"] = pd.NaT
    out = pd.concat([events, bad], ignore_index=True)
    out["event_time"] = out["event_time"].map(
        lambda t: "1500-01-01T00:00:00Z" if pd.isna(t) else t.isoformat()
    )
    out.loc[out.index[10], "customer_id"] = f"  {out.loc[out.index[10], 'customer_id']} "
    out.to_csv(path, index=False, sep=";")
    return path


# ------------------------------------------------------------------ store contents


def _digest(frame: pd.DataFrame) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([list(map(str, frame.columns)), list(map(str, frame.dtypes))]).encode())
    if len(frame):
        h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def _sorted(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return frame.sort_values(by, kind="stable").reset_index(drop=True)


def complete_parquet_files(data_dir: Path) -> list[str]:
    """Non-hidden Parquet files under ``data_dir`` that are NOT complete (should be none)."""
    broken = []
    for path in Path(data_dir).rglob("*.parquet"):
        if any(part.startswith(".") for part in path.relative_to(data_dir).parts):
            continue
        try:
            pq.read_metadata(path)
        except Exception:  # noqa: BLE001 - any failure means a torn file
            broken.append(str(path.relative_to(data_dir)))
    return broken


def events_state(data_dir: Path) -> dict[str, str]:
    """Digests of the event store, read as ``features build`` reads it (shared lock)."""
    from engage.data.io import read_customers, read_events, read_quarantine
    from engage.data.store import read_log, reading

    params, paths = _paths(data_dir)
    with reading(paths.events, timeout=params.data.lock_timeout_s):
        events = _sorted(read_events(paths.events), ["event_id"])
        customers = _sorted(read_customers(paths.customers), ["customer_id"])
        quarantine = read_quarantine(paths.quarantine) if paths.quarantine.exists() else None
        log = read_log(paths.events)
    state = {
        "events": _digest(events),
        "customers": _digest(customers),
        "log": hashlib.sha256(
            # Not when (at) nor from which copy of the file (source): what was written.
            json.dumps(
                [{k: v for k, v in e.items() if k not in ("at", "source")} for e in log]
            ).encode()
        ).hexdigest()[:16],
    }
    if quarantine is not None:
        q = quarantine.drop(columns=["ingested_at"])
        state["quarantine"] = _digest(_sorted(q.astype(str), list(q.columns)))
    # Customers derived from the events: every customer has events, first_seen agrees.
    first = events.groupby("customer_id")["event_time"].min()
    seen = customers.set_index("customer_id")["first_seen"]
    state["customers_match_events"] = str(
        set(first.index) == set(seen.index) and bool((first.reindex(seen.index) >= seen).all())
    )
    return state


def features_state(data_dir: Path) -> dict[str, str]:
    """Digests of the snapshot set, the Feast registry and the online store."""
    from feast.protos.feast.core.Registry_pb2 import Registry

    from features.snapshots import features_lock, list_snapshots, read_manifest, snapshot_dir

    params, paths = _paths(data_dir)
    state: dict[str, str] = {}
    with features_lock(paths.features_dir, timeout=params.data.lock_timeout_s, shared=True):
        snaps = list_snapshots(paths.features_dir)
        manifest = read_manifest(paths.features_dir)
        files = sorted(p.name for p in snapshot_dir(paths.features_dir).glob("*.parquet"))
        state["files_are_the_set"] = str(files == sorted(s.path.name for s in snaps))
        state["manifest"] = str(manifest["as_of"] if manifest else None)
        for s in snaps:
            frame = pd.read_parquet(s.path).drop(columns=["created_timestamp"])
            state[s.path.name] = _digest(_sorted(frame, ["customer_id"]))
    registry = Registry()
    registry.ParseFromString((paths.feast_dir / "registry.db").read_bytes())
    views = sorted(v.spec.name for v in registry.feature_views)
    services = sorted(s.spec.name for s in registry.feature_services)
    state["registry"] = f"{views} {services}"
    with sqlite3.connect(paths.feast_dir / "online_store.db") as conn:
        tables = sorted(
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            if r[0] != "_engage_layout" and "__staging_" not in r[0]
        )
        for table in tables:
            rows = conn.execute(
                f'SELECT entity_key, event_ts, vals FROM "{table}" ORDER BY entity_key'
            ).fetchall()
            h = hashlib.sha256()
            for key, ts, vals in rows:
                h.update(key + str(ts).encode() + vals)
            state[f"online:{table}"] = f"{len(rows)} rows {h.hexdigest()[:16]}"
    return state


def models_readable(data_dir: Path) -> dict[str, str]:
    """The MLflow store opens and every champion it has loads (a killed first training
    may leave none yet: that is not damage)."""
    from mlflow.entities import ViewType

    from engage.specs import HAZARD_MODEL_NAMES, hazard_question
    from training.registry import alias_version, load_hazard_model, load_model, setup_mlflow

    _, paths = _paths(data_dir)
    state = {}
    with data_dir_env(data_dir):
        client = setup_mlflow(paths)
        for registered in client.search_registered_models():
            name = registered.name
            if alias_version(client, name) is None:
                continue
            if name in HAZARD_MODEL_NAMES:  # text + JSON of another format
                state[name] = load_hazard_model(paths, hazard_question(name))[1]
            else:
                state[name] = load_model(paths, name)[1]
        ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        state["runs"] = str(len(client.search_runs(ids, "", ViewType.ALL)))
    return state


def models_state(data_dir: Path) -> dict[str, str]:
    """The champions' predictions on the latest snapshot (and no run left RUNNING)."""
    from mlflow.entities import ViewType

    from engage.specs import MODEL_NAMES
    from features.snapshots import pick_snapshot
    from training.registry import load_model, setup_mlflow

    _, paths = _paths(data_dir)
    state = {}
    with data_dir_env(data_dir):
        snap = pd.read_parquet(pick_snapshot(paths.features_dir).path)
        for name in MODEL_NAMES:
            model, _ = load_model(paths, name)
            p = model.predict_proba(snap[model.features])
            state[name] = hashlib.sha256(np.round(p, 10).tobytes()).hexdigest()[:16]
        client = setup_mlflow(paths)
        ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        running = client.search_runs(ids, "attributes.status = 'RUNNING'", ViewType.ALL)
    state["runs_left_running"] = str(len(running))
    return state


def scores_readable(data_dir: Path) -> dict[str, str]:
    """Every stored run opens (a killed first run may leave none yet)."""
    from serving.runs import list_runs

    _, paths = _paths(data_dir)
    return {r.run_id: str(pq.read_table(r.path).num_rows) for r in list_runs(paths)}


def scores_state(data_dir: Path) -> dict[str, str]:
    """The scoring run's rows and metadata (without its scoring time)."""
    from serving.runs import META_KEY, find_run

    _, paths = _paths(data_dir)
    info = find_run(paths, RUN_ID)
    table = pq.read_table(info.path)
    meta = json.loads(table.schema.metadata[META_KEY])
    meta.pop("scored_at")
    frame = table.replace_schema_metadata(None).to_pandas()
    frame["reasons"] = frame["reasons"].map(lambda r: json.dumps(list(r), default=str))
    return {"rows": _digest(frame), "meta": json.dumps(meta, sort_keys=True)}


# ------------------------------------------------------------------ steps and cases


@dataclass(frozen=True)
class Step:
    name: str
    args: tuple[str, ...]  # "{data}" stands for the data dir
    state: Callable[[Path], dict[str, str]]
    points: tuple[str, ...]
    # What "readable after a kill" checks, when not the full state.
    readable: Callable[[Path], dict[str, str]] | None = None

    def command(self, data_dir: Path) -> list[str]:
        return [a.replace("{data}", str(data_dir)) for a in self.args]


STEPS = {
    "ingest": Step(
        "data ingest",
        ("data", "ingest", "{data}/" + INGEST_FILE, "--replace"),
        events_state,
        (
            "ingest:validated",
            "ingest:staged",
            "ingest:journal_written",
            "ingest:mid_commit",
            "ingest:committed",
        ),
    ),
    "features": Step(
        "features build",
        ("features", "build"),
        features_state,
        (
            "features:snapshot_staged#5",
            "features:journal_written",
            "features:mid_commit",
            "features:committed",
            "features:registry_staged",
            "features:online_staged",
        ),
    ),
    "train": Step(
        "train",
        ("train",),
        models_state,
        ("train:log_model", "train:registered", "train:between_models"),
        models_readable,
    ),
    "score": Step(
        "score",
        ("score", "--run-id", RUN_ID),
        scores_state,
        ("score:batch_written#2", "score:before_rename"),
        scores_readable,
    ),
}
ORDER = ("ingest", "features", "train", "score")


@dataclass
class Case:
    step: str
    point: str
    killed: bool
    readable: bool
    rerun_ok: bool
    identical: bool
    detail: str = ""


@dataclass
class Bench:
    """Start dirs per step (each the previous step's reference result) under ``root``."""

    root: Path
    starts: dict[str, Path] = field(default_factory=dict)
    references: dict[str, dict[str, str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def prepare(self, steps: tuple[str, ...]) -> None:
        """Build the start of each step in ``steps`` and its reference (uninterrupted run).

        The first start: the demo data (600 contacts, 280 days) with features built
        from it, and the ingest file next to it.
        """
        base = self.root / "start-ingest"
        if not base.exists():
            base.mkdir(parents=True)
            ok(run(base, ["data", "simulate"]))
            ok(run(base, ["features", "build"]))
            write_ingest_file(base / INGEST_FILE)
        self.starts["ingest"] = base
        for i, step in enumerate(ORDER):
            if step not in steps and all(s not in steps for s in ORDER[i + 1 :]):
                break
            done = self.root / f"done-{step}"
            if not done.exists():
                shutil.copytree(self.starts[step], done)
                outcome = ok(run(done, STEPS[step].command(done)))
                self.seconds[step] = outcome.seconds
            if step in steps:
                self.references[step] = STEPS[step].state(done)
            if i + 1 < len(ORDER):
                self.starts[ORDER[i + 1]] = done

    def case(self, step: str, point: str | None, kill_after: float | None = None) -> Case:
        """Kill ``step`` at ``point`` (or after ``kill_after`` s), check, rerun, compare."""
        spec = STEPS[step]
        label = point or f"random kill at {kill_after:.1f} s"
        tag = (point or f"random-{kill_after:.1f}").replace(":", "_").replace("#", "_")
        work = self.root / f"case-{step}-{tag}"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(self.starts[step], work)
        killed = run(work, spec.command(work), fault=point, kill_after=kill_after)
        was_killed = killed.returncode == KILLED
        if killed.returncode not in (0, KILLED):
            return Case(step, label, False, False, False, False, killed.output[-500:])
        look = work.with_name(work.name + "-look")
        shutil.rmtree(look, ignore_errors=True)
        shutil.copytree(work, look)
        detail = ""
        try:
            broken = complete_parquet_files(look)
            (spec.readable or spec.state)(look)
            readable = not broken
            detail = f"torn files: {broken}" if broken else ""
        except Exception as err:  # noqa: BLE001 - any failure to read is the finding
            readable, detail = False, f"{type(err).__name__}: {err}"[:300]
        shutil.rmtree(look, ignore_errors=True)
        rerun = run(work, spec.command(work))
        if rerun.returncode != 0:
            return Case(step, label, was_killed, readable, False, False, rerun.output[-500:])
        state, reference = spec.state(work), self.references[step]
        diff = sorted(k for k in set(state) | set(reference) if state.get(k) != reference.get(k))
        shutil.rmtree(work, ignore_errors=True)
        if diff and not detail:
            detail = f"differs: {diff[:5]}"
        return Case(step, label, was_killed, readable, True, not diff, detail)

    def startup_seconds(self) -> float:
        """How long a command takes before it does any work (``engage --help``: imports)."""
        if "startup" not in self.seconds:
            self.seconds["startup"] = ok(run(self.root, ["--help"])).seconds
        return self.seconds["startup"]

    def random_cases(self, step: str, n: int, seed: int) -> list[Case]:
        """``n`` kills at random times while the step works (after its imports).

        The delay is the start-up time plus 10 % to 90 % of the rest of the reference
        run's duration; a run faster than the reference may finish first.
        """
        rng = random.Random(seed)
        startup = self.startup_seconds()
        work = max((self.seconds.get(step) or 10.0) - startup, 0.5)
        return [
            self.case(step, None, kill_after=startup + rng.uniform(0.1, 0.9) * work)
            for _ in range(n)
        ]


def matrix_markdown(cases: list[Case]) -> str:
    """The results as a markdown table (one row per step and kill point)."""

    def yn(flag: bool) -> str:
        return "yes" if flag else "**no**"

    lines = [
        "| step | kill point | killed | stores readable after the kill | rerun exit 0 "
        "| identical to an uninterrupted run |",
        "|---|---|---|---|---|---|",
    ]
    for c in cases:
        killed = "yes" if c.killed else "no (finished first)"
        lines.append(
            f"| {STEPS[c.step].name} | `{c.point}` | {killed} | {yn(c.readable)} "
            f"| {yn(c.rerun_ok)} | {yn(c.identical)} |"
        )
    return "\n".join(lines)
