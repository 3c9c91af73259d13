"""Rolling-origin backtest: the public pipeline at a series of cut dates, judged afterwards.

For a data set and a grid of (cut, horizon) cells, each cell runs the pipeline as a user
would, in a fresh data directory: the events strictly before the cut are exported to a
file with the user's own column names and brought in with ``engage data ingest --map``,
then ``engage features build``, ``engage train`` (``--set labels.horizon_days=H``) and
``engage score --as-of <cut>``. Each command is a separate ``engage`` process (a user's
exact entry point: argument parsing, exit codes, one-line errors; no MLflow tracking URI
or Feast registry cache shared between cells; a crash stays in its cell; cells can run
in parallel without the GIL).

Only then is the period after the cut read: the realised labels at as-of = cut over
``[cut, cut + H)`` come from the FULL event log through the product's own
:func:`training.labels.make_labels`, for every scored contact of the model's population
(appetence: every contact; churn: the active customers). The served champion's
probabilities (from the scores run file) are compared on those contacts with baselines
that see only the data directory of the cell:

- ``recency``: the rank of ``days_since_last_event`` in the scored snapshot (no fitting);
- ``rfm``: :func:`training.baselines.rfm_score`;
- ``logistic``: :func:`training.baselines.logistic_baseline` fitted on every labelled row
  of :func:`training.dataset.training_frame` of the cell's (truncated) data;
- ``bgnbd``: BG/NBD fitted on the purchases before the cut, P(at least one purchase
  within H) (for churn only when churn means "no purchase", as on CDNOW: 1 - P).

Metrics are ROC-AUC (primary), PR-AUC and the precision in the top decile, with 95 %
bootstrap intervals over contacts; the difference champion - best baseline (the baseline
with the highest ROC-AUC in that cell) uses a paired bootstrap (the same resampled
contacts for both). Verdict: ``win`` when the interval of the ROC-AUC difference is above
0, ``loss`` when below, ``tie`` when it contains 0.

    engage bench backtest --dataset cdnow [--cuts ...] [--horizons ...] [--customers N]
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engage.config import PROJECT_ROOT, Params, Paths, load_params
from engage.schema import (
    CAMPAIGN_ID,
    CHANNEL,
    CUSTOMER_ID,
    EVENT_ID,
    EVENT_TIME,
    EVENT_TYPE,
    VALUE,
)
from engage.specs import MODEL_SPECS, ModelSpec
from features.aggregates import snapshot_times
from features.catalog import ENTITY_KEY, TIMESTAMP, model_feature_names
from features.snapshots import pick_snapshot, to_utc

DAY = pd.Timedelta(days=1)
WEEK = pd.Timedelta(days=7)
DATASETS = ("cdnow", "demo")
EXPORT_FORMATS = ("parquet", "csv")
BASELINES = ("recency", "rfm", "logistic", "bgnbd")
METRICS = ("roc_auc", "pr_auc", "precision_top_decile")
RESULT_VERSION = 1
# The column names of the export, as a user's system might call them; `data ingest --map`
# renames them to the schema's fields.
EXPORT_COLUMNS = {
    EVENT_ID: "id",
    CUSTOMER_ID: "contact",
    EVENT_TIME: "occurred_at",
    EVENT_TYPE: "kind",
    VALUE: "amount",
    CHANNEL: "source",
    CAMPAIGN_ID: "campaign",
}
# Steps of a cell, in order: (name, what the progress bar says).
STEPS = ("export", "ingest", "features", "train", "score", "evaluate")


class BacktestError(ValueError):
    """A backtest cannot run as asked (bad grid, unknown data set, leakage found...)."""


# ------------------------------------------------------------------------------ grid


@dataclass(frozen=True, order=True)
class Cell:
    """One (cut, horizon) of the grid: score at ``cut``, judge on ``[cut, cut + H)``."""

    cut: pd.Timestamp
    horizon_days: int

    @property
    def key(self) -> str:
        """A file-name-safe key, e.g. ``cut=1997-04-23_h=28d``."""
        return f"cut={self.cut:%Y-%m-%d}_h={self.horizon_days}d"

    @property
    def window_end(self) -> pd.Timestamp:
        """End (exclusive) of the label window."""
        return self.cut + pd.Timedelta(days=self.horizon_days)


@dataclass(frozen=True)
class Skipped:
    """A cell of the grid that is not run, and why."""

    cell: Cell
    reason: str


@dataclass(frozen=True)
class Grid:
    """The default grid of a data set: cut weeks after its start, horizons in days."""

    cut_weeks: tuple[int, ...]
    horizon_days: tuple[int, ...]


# CDNOW: every 4 weeks from week 16 to week 52 of 1997, horizons of 4, 13 and 26 weeks.
# Demo: a 30-day horizon (the product's default) at 6 cuts; the first leaves the purged
# split (4 test, 4 validation, 3 training as-of times) its ~23 weeks of history.
GRIDS = {
    "cdnow": Grid(tuple(range(16, 53, 4)), (28, 91, 182)),
    "demo": Grid(tuple(range(26, 47, 4)), (30,)),
}


def default_grid(dataset: str) -> Grid:
    """The default grid of ``dataset``.

    Raises:
        BacktestError: unknown data set.

    """
    try:
        return GRIDS[dataset]
    except KeyError:
        raise BacktestError(f"dataset must be one of {list(GRIDS)}, got {dataset!r}") from None


def parse_cut(text: str, origin: pd.Timestamp) -> pd.Timestamp:
    """A cut date: ``YYYY-MM-DD`` (midnight UTC) or ``wN`` = N weeks after ``origin``.

    Raises:
        BacktestError: neither form, or a cut that is not at midnight UTC.

    """
    t = str(text).strip()
    m = re.fullmatch(r"[wW](\d{1,4})", t)
    if m:
        return to_utc(origin) + int(m.group(1)) * WEEK
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?", t):
            raise ValueError(t)
        cut = to_utc(t)
    except (ValueError, TypeError):
        raise BacktestError(
            f"--cuts: {text!r} is neither a date (YYYY-MM-DD) nor a week (w16)"
        ) from None
    if cut != cut.floor("D"):
        raise BacktestError(f"--cuts: {text!r} is not at midnight UTC (cuts are dates)")
    return cut


def parse_horizon(text: str) -> int:
    """A horizon in days: ``28``, ``28d`` or ``4w`` (weeks).

    Raises:
        BacktestError: not a positive number of days or weeks.

    """
    m = re.fullmatch(r"(\d{1,5})\s*([dDwW]?)", str(text).strip())
    if not m or int(m.group(1)) <= 0:
        raise BacktestError(f"--horizons: {text!r} is not a positive 28, 28d or 4w")
    days = int(m.group(1)) * (7 if m.group(2).lower() == "w" else 1)
    if days > 3650:
        raise BacktestError(f"--horizons: {text!r} is over 3650 days")
    return days


def weekly_cuts(origin: pd.Timestamp, weeks: Sequence[int]) -> list[pd.Timestamp]:
    """``origin + k weeks`` for each ``k`` of ``weeks``."""
    return [to_utc(origin) + k * WEEK for k in weeks]


def plan_cells(
    cuts: Sequence[pd.Timestamp],
    horizons: Sequence[int],
    first_event: pd.Timestamp,
    data_end: pd.Timestamp,
) -> tuple[list[Cell], list[Skipped]]:
    """Every (cut, horizon), split into cells to run and cells skipped with a reason.

    A cell is skipped when its label window ``[cut, cut + H)`` runs past ``data_end``
    (the end of the observed data: labels there would count missing events as "no
    purchase"), or when no event precedes the cut.

    Raises:
        BacktestError: no cut or no horizon.

    """
    if not cuts or not horizons:
        raise BacktestError("the grid needs at least one cut and one horizon")
    run, skipped = [], []
    for cut in sorted({to_utc(c) for c in cuts}):
        for h in sorted(set(horizons)):
            cell = Cell(cut, int(h))
            if cell.window_end > data_end:
                skipped.append(
                    Skipped(
                        cell,
                        f"label window ends {cell.window_end:%Y-%m-%d}, after the end of the "
                        f"data ({data_end:%Y-%m-%d})",
                    )
                )
            elif cut <= first_event:
                skipped.append(
                    Skipped(cell, f"no event before the cut (first event {first_event:%Y-%m-%d})")
                )
            else:
                run.append(cell)
    return run, skipped


# ---------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class Layers:
    """The parameter layers of the user's command, forwarded to every ``engage`` call.

    Attributes:
        profile: ``--profile``.
        params_file: ``--params`` (absolute).
        sets: the ``--set`` texts, in order.

    """

    profile: str | None = None
    params_file: Path | None = None
    sets: tuple[str, ...] = ()

    def cli_args(self, horizon_days: int) -> list[str]:
        """Global options of ``engage`` for a cell of horizon ``horizon_days``."""
        out: list[str] = []
        if self.profile:
            out += ["--profile", self.profile]
        if self.params_file is not None:
            out += ["--params", str(self.params_file)]
        for s in (*self.sets, f"labels.horizon_days={horizon_days}"):
            out += ["--set", s]
        return out

    def params(self, horizon_days: int) -> Params:
        """The parameters every command of the cell reads (the same layers, same order).

        Raises:
            engage.config.ConfigError: the layers are invalid.

        """
        return load_params(
            self.params_file,
            profile=self.profile,
            overrides=(*self.sets, f"labels.horizon_days={horizon_days}"),
        )

    def fingerprint(self) -> dict[str, Any]:
        """What identifies these layers (the params file by its content)."""
        digest = None
        if self.params_file is not None and Path(self.params_file).is_file():
            digest = hashlib.sha1(Path(self.params_file).read_bytes()).hexdigest()[:12]
        return {
            "profile": self.profile,
            "params_file": str(self.params_file) if self.params_file else None,
            "params_sha1": digest,
            "sets": list(self.sets),
        }


# ---------------------------------------------------------------------------- full log


@dataclass(frozen=True)
class FullLog:
    """The whole event log of a data set: the source of the realised labels.

    Attributes:
        name: data set name (``cdnow``, ``demo``).
        events: Parquet events (all of them, after the cut too).
        customers: Parquet customers (``first_seen``).
        origin: week 0 of the ``wN`` cut notation.
        first_event: time of the earliest event.
        end: end of the observed period (midnight after the last event), as
            :func:`training.labels.observed_until` computes it.
        n_events: number of events.
        n_contacts: number of customers in ``customers``.
        source: how the log was made (data set, sample size, seed...).

    """

    name: str
    events: Path
    customers: Path
    origin: pd.Timestamp
    first_event: pd.Timestamp
    end: pd.Timestamp
    n_events: int
    n_contacts: int
    source: dict[str, Any]


def describe_log(name: str, folder: Path, origin: pd.Timestamp, source: dict[str, Any]) -> FullLog:
    """The :class:`FullLog` of the ``events.parquet`` and ``customers.parquet`` in ``folder``."""
    from training.labels import observed_until

    events, customers = folder / "events.parquet", folder / "customers.parquet"
    times = pd.read_parquet(events, columns=[EVENT_TIME])[EVENT_TIME]
    n_contacts = len(pd.read_parquet(customers, columns=[CUSTOMER_ID]))
    return FullLog(
        name=name,
        events=events,
        customers=customers,
        origin=to_utc(origin),
        first_event=to_utc(times.min()),
        end=observed_until(events),
        n_events=len(times),
        n_contacts=n_contacts,
        source=source,
    )


def _reuse(folder: Path, source: dict[str, Any]) -> bool:
    stamp = folder / "source.json"
    return (
        (folder / "events.parquet").is_file()
        and (folder / "customers.parquet").is_file()
        and stamp.is_file()
        and json.loads(stamp.read_text()) == source
    )


def prepare_cdnow(folder: Path, customers: int | None, seed: int) -> FullLog:
    """The CDNOW log (or a random sample of ``customers``) in ``folder``; reused if equal.

    Raises:
        FileNotFoundError: ``lifetimes`` (which ships the data) is not installed.

    """
    from engage.data.cdnow import load_cdnow
    from engage.data.io import write_customers, write_events
    from evaluation.cdnow import sample_customers

    folder = Path(folder)
    source = {"dataset": "cdnow", "customers": customers, "seed": seed}
    if not _reuse(folder, source):
        events, custs = load_cdnow()
        events, custs = sample_customers(events, custs, customers, seed)
        folder.mkdir(parents=True, exist_ok=True)
        write_events(events, folder / "events.parquet")
        write_customers(custs, folder / "customers.parquet")
        (folder / "source.json").write_text(json.dumps(source))
    return describe_log("cdnow", folder, pd.Timestamp("1997-01-01", tz="UTC"), source)


def prepare_demo(folder: Path, params: Params, customers: int | None, seed: int | None) -> FullLog:
    """A simulated demo log in ``folder`` (``simulate`` parameters); reused if equal."""
    from engage.data.simulate import simulate_to_parquet

    folder = Path(folder)
    sim = params.simulate
    source = {
        "dataset": "demo",
        "simulate": {
            **sim.model_dump(),
            "customers": customers or sim.customers,
            "seed": sim.seed if seed is None else seed,
        },
        "event_types": list(params.data.event_types),
    }
    if not _reuse(folder, source):
        folder.mkdir(parents=True, exist_ok=True)
        simulate_to_parquet(
            sim,
            params.data,
            folder / "events.parquet",
            folder / "customers.parquet",
            customers=customers,
            seed=seed,
        )
        (folder / "source.json").write_text(json.dumps(source))
    return describe_log("demo", folder, pd.Timestamp(sim.start, tz="UTC"), source)


# ------------------------------------------------------------------- one cell: pipeline


def export_events(events_path: Path, cut: pd.Timestamp, out: Path, fmt: str = "parquet") -> int:
    """Write the events strictly before ``cut`` as a user's export; returns the row count.

    The columns get the names of :data:`EXPORT_COLUMNS` (``data ingest --map`` renames them
    back). CSV times are ISO 8601 in UTC with microseconds, values empty when missing.

    Raises:
        BacktestError: unknown format.

    """
    if fmt not in EXPORT_FORMATS:
        raise BacktestError(f"export format must be one of {list(EXPORT_FORMATS)}, got {fmt!r}")
    cut = to_utc(cut)
    events = pd.read_parquet(events_path)
    before = events[events[EVENT_TIME] < cut]
    before = before[[c for c in EXPORT_COLUMNS if c in before.columns]].rename(
        columns=EXPORT_COLUMNS
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        times = before["occurred_at"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        before.assign(occurred_at=times).to_csv(out, index=False)
    else:
        before.to_parquet(out, index=False)
    return len(before)


def map_options() -> list[str]:
    """The ``--map their_column=field`` options that undo :data:`EXPORT_COLUMNS`."""
    out: list[str] = []
    for field_name, column in EXPORT_COLUMNS.items():
        out += ["--map", f"{column}={field_name}"]
    return out


def as_of_grid(first_event: pd.Timestamp, cut: pd.Timestamp, params: Params) -> list[pd.Timestamp]:
    """Snapshot times ``features build`` is asked for: every ``snapshot_every_days`` up to the cut.

    The default grid ends at the midnight after the last event, which is the cut only when
    the day before the cut has an event; asking for the grid explicitly scores every cell
    exactly at its cut, and is what a user scoring "as of the cut" would do.
    """
    fp = params.features
    return snapshot_times(first_event, cut, fp.snapshot_every_days, fp.max_snapshots, now=cut)


def engage_command() -> list[str]:
    """How to start the ``engage`` CLI: the console script next to this Python, else ``-m``."""
    script = Path(sys.executable).parent / "engage"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "cli.main"]


@dataclass
class Command:
    """One ``engage`` call of a cell and how it went."""

    step: str
    argv: list[str]
    returncode: int | None = None
    seconds: float = 0.0
    error: str | None = None
    log: str | None = None


def cell_commands(
    cell: Cell, export: Path, layers: Layers, grid: Sequence[pd.Timestamp]
) -> list[Command]:
    """The ``engage`` commands of a cell, in order (the data dir comes from the environment)."""
    g = layers.cli_args(cell.horizon_days)
    as_of: list[str] = []
    for t in grid:
        as_of += ["--as-of", to_utc(t).isoformat()]
    return [
        Command("ingest", [*g, "data", "ingest", str(export), *map_options()]),
        Command("features", [*g, "features", "build", *as_of]),
        Command("train", [*g, "train"]),
        Command("score", [*g, "score", "--as-of", cell.cut.isoformat()]),
    ]


def error_text(output: str, limit: int = 600) -> str:
    """The CLI's ``error: ...`` message (wrapped lines joined), else the last output line."""
    text = output.replace("\r", "")
    idx = text.rfind("error:")
    if idx >= 0:
        msg = " ".join(text[idx:].split())
    else:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        msg = lines[-1] if lines else "no output"
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


def run_command(cmd: Command, env: dict[str, str], log_dir: Path, index: int) -> Command:
    """Run one ``engage`` call, output to ``log_dir/NN-step.log``; fills in the outcome."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{index:02d}-{cmd.step}.log"
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        out.write("$ engage " + " ".join(cmd.argv) + "\n")
        out.flush()
        proc = subprocess.run(
            [*engage_command(), *cmd.argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    cmd.seconds = time.perf_counter() - start
    cmd.returncode = proc.returncode
    cmd.log = str(log)
    if proc.returncode != 0:
        cmd.error = error_text(log.read_text(encoding="utf-8", errors="replace"))
    return cmd


@dataclass
class PipelineRun:
    """The pipeline part of a cell: its data dir, the commands and the export facts."""

    cell: Cell
    data_dir: Path
    commands: list[Command] = field(default_factory=list)
    exported_rows: int = 0
    seconds: float = 0.0
    commit: str = "unknown"

    @property
    def failed(self) -> Command | None:
        return next((c for c in self.commands if c.returncode not in (0, None)), None)


def run_pipeline(
    cell: Cell,
    log: FullLog,
    cell_dir: Path,
    layers: Layers,
    params: Params,
    export_format: str = "parquet",
    on_step: Callable[[str], None] | None = None,
) -> PipelineRun:
    """Export, ingest, build features, train and score one cell in a fresh data dir.

    ``cell_dir`` is emptied first; the pipeline's data dir is ``cell_dir/data``, the
    command logs ``cell_dir/logs``. Stops at the first failing command.
    """
    say = on_step or (lambda _s: None)
    started = time.perf_counter()
    shutil.rmtree(cell_dir, ignore_errors=True)
    data_dir = (cell_dir / "data").resolve()
    data_dir.mkdir(parents=True)
    run = PipelineRun(cell, data_dir)
    say("export")
    export = cell_dir / f"export.{export_format}"
    run.exported_rows = export_events(log.events, cell.cut, export, export_format)
    grid = as_of_grid(log.first_event, cell.cut, params)
    env = {
        **os.environ,
        "ENGAGE_DATA_DIR": str(data_dir),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "BENTOML_DO_NOT_TRACK": "true",
        "DO_NOT_TRACK": "true",
        "FEAST_USAGE": "False",
        # Wide lines keep the CLI's one-line errors on one line in the logs.
        "COLUMNS": "200",
    }
    for i, cmd in enumerate(cell_commands(cell, export, layers, grid), start=1):
        say(cmd.step)
        run.commands.append(run_command(cmd, env, cell_dir / "logs", i))
        if cmd.returncode != 0:
            break
    # The store holds the events now; the export was a copy.
    export.unlink(missing_ok=True)
    run.seconds = time.perf_counter() - started
    return run


def cell_paths(data_dir: Path, params: Params) -> Paths:
    """The :class:`~engage.config.Paths` an ``engage`` call with ``ENGAGE_DATA_DIR`` gets."""
    data_dir = Path(data_dir).resolve()
    return Paths(
        root=PROJECT_ROOT, data_dir=data_dir, mlruns_dir=data_dir / "mlruns", params=params
    )


# -------------------------------------------------------------------------- baselines


def recency_score(X: pd.DataFrame, model: str) -> np.ndarray:
    """Recency alone: the more recent the last action, the likelier a purchase (no fitting).

    Higher = more likely positive: ``-days_since_last_event`` for appetence and
    ``+days_since_last_event`` for churn. A contact who never acted counts as the least
    recent.
    """
    days = X["days_since_last_event"].astype(float).fillna(np.inf).to_numpy()
    spec = MODEL_SPECS[model]
    # Churn is the opposite of engagement (the model's positive class is leaving).
    return days if spec.label_rule == "quiet_in_window" else -days


def churn_is_no_purchase(params: Params) -> bool:
    """Whether churn means "no purchase in the window" (then BG/NBD answers it too)."""
    return set(params.labels.churn_activity_types) == {params.data.conversion_event}


def bgnbd_probability(
    events_path: Path, params: Params, cut: pd.Timestamp, ids: pd.Index, horizon_days: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """BG/NBD's P(at least one purchase in ``[cut, cut + H)``) for each of ``ids``.

    Fitted (daily purchase periods) on every customer's conversion events before ``cut``
    in ``events_path``; a contact without a purchase before the cut is outside the model
    and gets 0 (it ranks below every customer).

    Raises:
        lifetimes.utils.ConvergenceError: no fit converged.

    """
    from evaluation.cdnow import bgnbd_prob_any, bgnbd_summary, fit_bgnbd

    ev = pd.read_parquet(events_path, columns=[CUSTOMER_ID, EVENT_TIME, EVENT_TYPE])
    buys = ev[(ev[EVENT_TYPE] == params.data.conversion_event) & (ev[EVENT_TIME] < cut)]
    buyers = pd.Index(buys[CUSTOMER_ID].unique())
    if len(buyers) == 0:
        raise BacktestError("bgnbd: no purchase before the cut")
    # Fitted on every buyer (the population BG/NBD describes), read for the judged ids.
    summary = bgnbd_summary(buys, cut, buyers)
    fitter = fit_bgnbd(summary)
    judged = summary.reindex(ids).dropna()
    out = np.zeros(len(ids))
    out[ids.get_indexer(judged.index)] = bgnbd_prob_any(fitter, judged, horizon_days)
    return out, {
        "customers": len(summary),
        "judged_customers": len(judged),
        "params": {k: float(v) for k, v in fitter.params_.items()},
    }


def _fit_logistic(frame: pd.DataFrame, params: Params, what: str):
    from training.baselines import logistic_baseline
    from training.labels import LABEL

    features = model_feature_names(params)
    y = frame[LABEL].to_numpy()
    if len(np.unique(y)) < 2:
        raise BacktestError(f"logistic: the {len(y)} {what} rows hold a single class")
    fitted = logistic_baseline(params.training.seed).fit(frame[features].astype(float), y)
    ts = frame[TIMESTAMP]
    return fitted, {
        "rows": len(frame),
        "positive_rate": float(y.mean()),
        "as_of": f"{ts.min():%Y-%m-%d}..{ts.max():%Y-%m-%d}",
    }


def logistic_fits(paths: Paths, params: Params, model: str) -> dict[str, tuple[Any, dict]]:
    """Logistic regressions on the labelled rows of the cell's data (all before the cut).

    ``all``: every labelled row of :func:`training.dataset.training_frame`, the baseline.
    ``train_split``: only the rows the product's own time split trains on (without its
    validation and test as-of times), a diagnostic: it tells whether a loss to ``all``
    comes from the model or from the champion not seeing the latest as-of times.

    Returns:
        name -> ``(fitted pipeline, facts)``; a fit that is impossible is left out and its
        reason is in ``facts`` of the name with a ``not fitted`` string instead.

    Raises:
        BacktestError: the rows hold a single class.

    """
    from training.dataset import time_split, training_frame

    frame = training_frame(paths, params, model)
    out: dict[str, tuple[Any, dict]] = {"all": _fit_logistic(frame, params, "labelled")}
    try:
        out["train_split"] = _fit_logistic(time_split(frame, params).train, params, "train split")
    except (BacktestError, ValueError) as err:
        out["train_split"] = (None, {"not fitted": str(err)})
    return out


# ---------------------------------------------------------------------------- metrics


def _bootstrap_indices(n: int, b: int, rng: np.random.Generator) -> np.ndarray:
    """``b`` bootstrap resamples of ``n`` contacts: row ``k`` holds the drawn positions."""
    return rng.integers(0, n, size=(b, n))


def tie_groups(score: np.ndarray) -> tuple[np.ndarray, int]:
    """The group of each contact among the distinct scores (0 = lowest), and their number.

    Raises:
        ValueError: a score is NaN.

    """
    score = np.asarray(score, dtype=float)
    if np.isnan(score).any():
        raise ValueError(f"score: {int(np.isnan(score).sum())} NaN value(s)")
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    new = np.r_[True, s[1:] != s[:-1]]
    gid = np.empty(len(score), dtype=np.int64)
    gid[order] = np.cumsum(new) - 1
    return gid, int(new.sum())


def metrics_from_groups(pos: np.ndarray, neg: np.ndarray) -> dict[str, np.ndarray]:
    """ROC-AUC, PR-AUC and top-decile precision from per-group weights (rows x groups).

    ``pos[r, g]`` and ``neg[r, g]`` are the positive and negative weight of row ``r`` in
    the group ``g`` of tied scores, groups in ascending score. Ties are one threshold:
    ROC-AUC counts a tied positive/negative pair as half, PR-AUC is the average precision
    over the distinct scores (scikit-learn's definition), and the top decile takes the
    top 10 % of the total weight, sharing a tied group at the boundary pro rata (the
    expected precision under a random order of the ties). NaN for a row with no
    positive or no negative weight.
    """
    pos, neg = np.atleast_2d(pos).astype(float), np.atleast_2d(neg).astype(float)
    tot = pos + neg
    cpos, cneg = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    p_tot, n_tot = cpos[:, -1], cneg[:, -1]
    # Weight at or above each group (descending cumulative sums, from the ascending ones).
    pos_ge = p_tot[:, None] - cpos + pos
    all_ge = (p_tot + n_tot)[:, None] - (cpos + cneg) + tot
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (cneg - 0.5 * neg)).sum(axis=1) / (p_tot * n_tot)
        # Where pos > 0 the group itself is counted, so all_ge > 0.
        ap = (pos * pos_ge / np.maximum(all_ge, 1e-300)).sum(axis=1) / p_tot
        # The top decile ends in the last group (ascending) whose weight at or above
        # reaches k; the groups above it are wholly in, that one pro rata.
        k = 0.1 * (p_tot + n_tot)
        edge = np.maximum((all_ge >= k[:, None]).sum(axis=1) - 1, 0)[:, None]

        def at(a: np.ndarray) -> np.ndarray:
            return np.take_along_axis(a, edge, axis=1)[:, 0]

        above_w, above_p = at(all_ge) - at(tot), at(pos_ge) - at(pos)
        part = np.clip(k - above_w, 0.0, at(tot))
        frac = np.where(at(tot) > 0, part / np.where(at(tot) > 0, at(tot), 1.0), 0.0)
        top = (above_p + at(pos) * frac) / k
    bad = (p_tot <= 0) | (n_tot <= 0)
    return {
        "roc_auc": np.where(bad, np.nan, auc),
        "pr_auc": np.where(bad, np.nan, ap),
        "precision_top_decile": np.where(bad, np.nan, top),
    }


def weighted_ranking_metrics(
    y: np.ndarray, score: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """ROC-AUC, PR-AUC and top-decile precision for each row of ``weights``.

    Contacts are weighted (a bootstrap resample is a vector of counts); ties as in
    :func:`metrics_from_groups`.

    Args:
        y: 0/1 labels (n).
        score: higher = more likely positive (n); ``±inf`` allowed, no NaN.
        weights: (b, n) non-negative weights; a 1-D vector is one row.

    Returns:
        Arrays of length b; NaN where a row has no positive or no negative weight.

    Raises:
        ValueError: a score is NaN.

    """
    y = np.asarray(y).astype(bool)
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    gid, groups = tie_groups(score)
    pos = np.zeros((len(w), groups))
    neg = np.zeros((len(w), groups))
    for r in range(len(w)):
        pos[r] = np.bincount(gid, weights=w[r] * y, minlength=groups)
        neg[r] = np.bincount(gid, weights=w[r] * ~y, minlength=groups)
    return metrics_from_groups(pos, neg)


def _resampled_metrics(
    gid: np.ndarray, groups: int, draws: np.ndarray, y_drawn: np.ndarray, offsets: np.ndarray
) -> dict[str, np.ndarray]:
    # One bincount over all rows of the chunk: row r's groups are offset by r * groups.
    b = len(draws)
    flat = (gid[draws] + offsets[:b, None] * groups).ravel()
    pos = np.bincount(flat, weights=y_drawn, minlength=b * groups).reshape(b, groups)
    tot = np.bincount(flat, minlength=b * groups).reshape(b, groups)
    return metrics_from_groups(pos, tot - pos)


def ranking_point(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """:func:`weighted_ranking_metrics` with every contact weighted 1."""
    m = weighted_ranking_metrics(y, score, np.ones(len(y)))
    return {k: float(v[0]) for k, v in m.items()}


def verdict(lo: float, hi: float) -> str:
    """``win`` if the interval of champion - baseline is above 0, ``loss`` below, else ``tie``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "tie"
    if lo > 0:
        return "win"
    if hi < 0:
        return "loss"
    return "tie"


def _interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    ok = values[np.isfinite(values)]
    if len(ok) == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def compare(
    y: np.ndarray,
    champion: np.ndarray,
    baselines: dict[str, np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The champion against baselines on the same contacts, with bootstrap intervals.

    The best baseline is the one with the highest ROC-AUC on all contacts. The champion
    and it are scored on the same ``n_boot`` resamples of the contacts (drawn with
    replacement, seeded), so their difference is a paired bootstrap; the other baselines
    get point values only (``lo`` and ``hi`` None).

    Args:
        y: realised 0/1 labels.
        champion: the champion's probabilities.
        baselines: name -> score (higher = more likely positive), at least one.
        n_boot: bootstrap resamples.
        seed: seed of the resampling.
        alpha: 1 - confidence of the intervals.

    Returns:
        ``methods`` (per method and metric: ``value``, ``lo``, ``hi``), ``best_baseline``,
        ``difference`` (per metric: ``value``, ``lo``, ``hi``), ``verdict`` (on ROC-AUC),
        ``n_boot`` and ``invalid_resamples`` (resamples with a single class, left out).

    Raises:
        ValueError: no baseline, mismatched lengths, NaN scores, or a single class.

    """
    y = np.asarray(y).astype(int)
    if not baselines:
        raise ValueError("compare: no baseline")
    scores = {"champion": np.asarray(champion, dtype=float), **baselines}
    for name, s in scores.items():
        if len(s) != len(y):
            raise ValueError(f"compare: {name} has {len(s)} scores for {len(y)} labels")
    if y.min() == y.max():
        raise ValueError(f"compare: the {len(y)} labels are all {y[0]} (a single class)")
    points = {name: ranking_point(y, s) for name, s in scores.items()}
    best = max(baselines, key=lambda name: points[name]["roc_auc"])
    rng = np.random.default_rng(seed)
    n = len(y)
    # Intervals for the two methods the verdict compares; the others get point values.
    boxed = ("champion", best)
    groups = {name: tie_groups(scores[name]) for name in boxed}
    yf = y.astype(float)
    chunk = max(1, min(n_boot, 4_000_000 // max(n, 1)))
    offsets = np.arange(chunk, dtype=np.int64)
    boot: dict[str, dict[str, list[np.ndarray]]] = {
        name: {m: [] for m in METRICS} for name in boxed
    }
    done = 0
    while done < n_boot:
        idx = _bootstrap_indices(n, min(chunk, n_boot - done), rng)
        y_drawn = yf[idx].ravel()
        for name, (gid, g) in groups.items():
            for m, v in _resampled_metrics(gid, g, idx, y_drawn, offsets).items():
                boot[name][m].append(v)
        done += len(idx)
    draws = {name: {m: np.concatenate(v) for m, v in d.items()} for name, d in boot.items()}
    methods: dict[str, dict[str, dict[str, float | None]]] = {}
    for name in scores:
        methods[name] = {}
        for m in METRICS:
            lo, hi = _interval(draws[name][m], alpha) if name in draws else (None, None)
            methods[name][m] = {"value": points[name][m], "lo": lo, "hi": hi}
    difference = {}
    for m in METRICS:
        d = draws["champion"][m] - draws[best][m]
        lo, hi = _interval(d, alpha)
        difference[m] = {"value": points["champion"][m] - points[best][m], "lo": lo, "hi": hi}
    invalid = int(np.isnan(draws["champion"]["roc_auc"]).sum())
    return {
        "methods": methods,
        "best_baseline": best,
        "difference": difference,
        "verdict": verdict(difference["roc_auc"]["lo"], difference["roc_auc"]["hi"]),
        "n_boot": n_boot,
        "invalid_resamples": invalid,
        "confidence": 1 - alpha,
    }


# ------------------------------------------------------------------ one cell: evaluation


def realised_labels(log: FullLog, cut: pd.Timestamp, params: Params, model: str) -> pd.Series:
    """The label of every contact of ``model``'s population at as-of = ``cut``, full log.

    :func:`training.labels.make_labels` on the whole event log with the single as-of time
    ``cut``: window ``[cut, cut + H)`` with ``H = params.labels.horizon_days``.

    Returns:
        0/1 labels indexed by ``customer_id``.

    Raises:
        ValueError: the window is not fully observed in the log.

    """
    from training.labels import LABEL, make_labels

    labels = make_labels(log.events, log.customers, [to_utc(cut)], params, model)
    return labels.set_index(ENTITY_KEY)[LABEL].astype(int)


def check_no_leak(paths: Paths, cut: pd.Timestamp) -> dict[str, Any]:
    """The cell's event store holds nothing at or after the cut.

    Raises:
        training.dataset.LeakageError: some stored event is at or after the cut.

    """
    from training.dataset import LeakageError

    times = pd.read_parquet(paths.events, columns=[EVENT_TIME])[EVENT_TIME]
    late = int((times >= cut).sum())
    if late:
        raise LeakageError(f"{EVENT_TIME}: {late} stored events at or after the cut {cut}")
    return {"stored_events": len(times), "last_event": str(to_utc(times.max()))}


def champion_kind(paths: Paths, model: str) -> tuple[str, str]:
    """The kind (e.g. ``lightgbm``) and version of ``model``'s champion in the registry.

    The scores come from the run file whatever the kind; a champion this code cannot load
    is reported as ``unknown (...)`` with the reason rather than failing the cell.
    """
    from training.registry import load_model

    try:
        loaded, version = load_model(paths, model)
    except Exception as err:  # a format this code does not know: say so, keep judging
        return f"unknown ({type(err).__name__}: {err})", "?"
    return str(getattr(loaded, "kind", type(loaded).__name__)), str(version)


def evaluate_model(
    spec: ModelSpec,
    cell: Cell,
    log: FullLog,
    paths: Paths,
    params: Params,
    scores: pd.DataFrame,
    snapshot: pd.DataFrame,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """The champion of one model against the baselines, on the contacts it scored at the cut."""
    from training.baselines import rfm_score

    model = spec.name
    labels = realised_labels(log, cell.cut, params, model)
    scored = scores.set_index(ENTITY_KEY)[spec.probability]
    ids = labels.index.intersection(scored.index).sort_values()
    missing = scored.reindex(ids).isna()
    if missing.any():
        raise BacktestError(
            f"{spec.probability}: {int(missing.sum())} contacts of the {model} population have "
            "no probability in the scores run"
        )
    y = labels.reindex(ids).to_numpy()
    p = scored.reindex(ids).to_numpy(dtype=float)
    X = snapshot.set_index(ENTITY_KEY).reindex(ids)
    out: dict[str, Any] = {
        "model": model,
        "status": "ok",
        "population": len(labels),
        "scored_in_population": len(ids),
        "population_not_scored": int(len(labels) - len(ids)),
        "contacts": len(ids),
        "positives": int(y.sum()),
        "positive_rate": float(y.mean()) if len(y) else float("nan"),
        "baseline_notes": {},
        "diagnostics": {},
    }
    diagnostics = out["diagnostics"]
    kind, version = champion_kind(paths, model)
    out["champion"] = {
        "kind": kind,
        "registry_version": version,
        "scored_version": str(scores[f"{model}_version"].iloc[0]) if len(scores) else "",
    }
    if len(ids) == 0 or y.min() == y.max():
        out["status"] = "single class" if len(ids) else "no contacts"
        return out
    baselines: dict[str, np.ndarray] = {
        "recency": recency_score(X, model),
        "rfm": rfm_score(X, model),
    }
    try:
        fits = logistic_fits(paths, params, model)
        feats = model_feature_names(params)
        fitted, facts = fits["all"]
        baselines["logistic"] = fitted.predict_proba(X[feats].astype(float))[:, 1]
        out["baseline_notes"]["logistic"] = facts
        split_fit, split_facts = fits["train_split"]
        if split_fit is not None:
            p_split = split_fit.predict_proba(X[feats].astype(float))[:, 1]
            diagnostics["logistic_train_split"] = {**ranking_point(y, p_split), **split_facts}
        else:
            diagnostics["logistic_train_split"] = split_facts
    except (BacktestError, ValueError) as err:
        out["baseline_notes"]["logistic"] = f"not fitted: {err}"
    if spec.label_rule == "purchase_in_window" or churn_is_no_purchase(params):
        try:
            prob, facts = bgnbd_probability(paths.events, params, cell.cut, ids, cell.horizon_days)
            baselines["bgnbd"] = prob if spec.label_rule == "purchase_in_window" else 1 - prob
            out["baseline_notes"]["bgnbd"] = facts
        except Exception as err:  # lifetimes raises its own ConvergenceError and others
            out["baseline_notes"]["bgnbd"] = f"not fitted: {type(err).__name__}: {err}"
    else:
        out["baseline_notes"]["bgnbd"] = (
            "not applicable: churn here is not 'no purchase' "
            f"(labels.churn_activity_types={list(params.labels.churn_activity_types)})"
        )
    out.update(compare(y, p, baselines, n_boot=n_boot, seed=seed))
    return out


def evaluate_cell(
    cell: Cell,
    log: FullLog,
    data_dir: Path,
    params: Params,
    n_boot: int = 1000,
    seed: int = 0,
    audit_rows: int = 200,
) -> dict[str, Any]:
    """Judge the scores of one cell on the period after its cut.

    Checks first that the cut did not leak: no stored event at or after the cut, and a
    sample of the scored snapshot's rows recomputed from the FULL log strictly before
    the cut (:func:`training.dataset.audit_against_events`) must match.

    Raises:
        training.dataset.LeakageError: the cut leaked.
        LookupError: no scores run or no champion.

    """
    from serving.runs import read_run
    from training.dataset import audit_against_events

    paths = cell_paths(data_dir, params)
    leak = check_no_leak(paths, cell.cut)
    info, scores = read_run(paths)
    snap = pick_snapshot(paths.features_dir, cell.cut)
    snapshot = pd.read_parquet(snap.path)
    audited = audit_against_events(
        snapshot,
        log.events,
        paths.customers,
        params,
        model_feature_names(params),
        rows_per_snapshot=audit_rows,
        snapshots=1,
        seed=seed,
    )
    models = {
        spec.name: evaluate_model(spec, cell, log, paths, params, scores, snapshot, n_boot, seed)
        for spec in MODEL_SPECS.values()
    }
    return {
        "scores_run": info.run_id,
        "scored_as_of": str(info.as_of),
        "scored_contacts": len(scores),
        "snapshot_as_of": str(snap.as_of),
        "leakage": {**leak, "audited_rows": audited, "audit": "full log, strictly before the cut"},
        "models": models,
    }


# ------------------------------------------------------------------------- the backtest


@dataclass(frozen=True)
class Event:
    """A progress event: ``start`` (``total`` cells), ``step``, ``done``, ``cached``."""

    kind: str
    cell: Cell | None = None
    text: str = ""
    total: int = 0


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """The project's git commit (with ``+dirty`` for uncommitted changes), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, pd.Timestamp | Path):
        return str(obj)
    return obj


def result_path(folder: Path, cell: Cell) -> Path:
    """Where the cached result of ``cell`` lives."""
    return Path(folder) / "results" / f"{cell.key}.json"


def load_cached(folder: Path, cell: Cell, setup: dict[str, Any]) -> dict[str, Any] | None:
    """The cached result of ``cell`` if it was computed with the same setup, else None."""
    path = result_path(folder, cell)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if doc.get("version") != RESULT_VERSION or doc.get("setup") != _jsonable(setup):
        return None
    return doc


def save_result(folder: Path, cell: Cell, doc: dict[str, Any]) -> Path:
    """Write a cell's result atomically (temporary file, then rename)."""
    path = result_path(folder, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_jsonable(doc), indent=1, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


@dataclass
class BacktestResult:
    """Every cell of one data set's backtest, in grid order, and the skipped ones."""

    dataset: str
    log: FullLog
    setup: dict[str, Any]
    cells: list[dict[str, Any]]
    skipped: list[Skipped]
    seconds: float
    computed: int = 0
    reevaluated: int = 0
    cached: int = 0


PIPELINE_FILE = "pipeline.json"


def save_pipeline(cell_dir: Path, run: PipelineRun, setup: dict[str, Any]) -> Path:
    """Record a finished pipeline next to its data dir (what ran, how it went, the setup)."""
    doc = {
        "setup": setup,
        "commit": git_commit(),
        "data_dir": str(run.data_dir),
        "commands": [asdict(c) for c in run.commands],
        "exported_rows": run.exported_rows,
        "seconds": run.seconds,
    }
    path = Path(cell_dir) / PIPELINE_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_jsonable(doc), indent=1, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_pipeline(cell_dir: Path, cell: Cell, setup: dict[str, Any]) -> PipelineRun | None:
    """A finished pipeline of ``cell`` run with the same setup, if its data dir is intact."""
    path = Path(cell_dir) / PIPELINE_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    data_dir = Path(doc.get("data_dir", ""))
    if doc.get("setup") != _jsonable(setup) or not data_dir.is_dir():
        return None
    run = PipelineRun(
        cell,
        data_dir,
        commands=[Command(**c) for c in doc["commands"]],
        exported_rows=int(doc["exported_rows"]),
        seconds=float(doc["seconds"]),
    )
    run.commit = doc.get("commit", "unknown")
    return run


def _cell_doc(cell: Cell, setup: dict[str, Any], run: PipelineRun) -> dict[str, Any]:
    return {
        "version": RESULT_VERSION,
        "setup": setup,
        "cut": str(cell.cut),
        "horizon_days": cell.horizon_days,
        "window_end": str(cell.window_end),
        "commit": git_commit(),
        "pipeline_commit": run.commit,
        "computed_at": str(pd.Timestamp.now(tz="UTC")),
        "commands": [asdict(c) for c in run.commands],
        "exported_rows": run.exported_rows,
        "pipeline_seconds": run.seconds,
        "data_dir": str(run.data_dir),
    }


def run_backtest(
    log: FullLog,
    cells: Sequence[Cell],
    folder: Path,
    layers: Layers,
    skipped: Sequence[Skipped] = (),
    jobs: int = 1,
    fresh: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    export_format: str = "parquet",
    progress: Callable[[Event], None] | None = None,
) -> BacktestResult:
    """Run (or read from the cache) every cell of the grid.

    Two caches make a rerun cheap: ``results/<key>.json`` holds a judged cell (reused when
    the data set, the parameter layers, the export format, the bootstrap count and seed
    are the same), and ``cells/<key>/pipeline.json`` a finished pipeline (reused when the
    data set, layers and export format are the same, so changing only the bootstrap
    re-judges the stored scores without rerunning the pipeline). ``fresh`` ignores both.

    Args:
        log: the full event log (:func:`prepare_cdnow`, :func:`prepare_demo`).
        cells: the cells to run (see :func:`plan_cells`).
        folder: the backtest's folder for this data set: ``cells/<key>/`` (the fresh data
            dir and command logs of each cell) and ``results/<key>.json`` (the cache).
        layers: the parameter layers forwarded to every ``engage`` call.
        skipped: cells left out by the plan (reported as such).
        jobs: cells whose pipelines run at once (each is 4 ``engage`` processes in a row).
        fresh: recompute every cell.
        n_boot: bootstrap resamples per comparison.
        seed: bootstrap seed.
        export_format: ``parquet`` or ``csv`` export of the events before the cut.
        progress: called with :class:`Event` s.

    Returns:
        The results in grid order. A cell whose ``engage`` command failed has status
        ``failed`` with the step and the CLI's error; it is cached like a finished cell
        (the product gave its answer), unless the command was killed by a signal. A cell
        whose evaluation raised (a leak, a missing run) has status ``error`` and is never
        cached.

    Raises:
        BacktestError: ``jobs`` below 1 or ``n_boot`` below 1.

    """
    if jobs < 1:
        raise BacktestError(f"jobs must be at least 1, got {jobs}")
    if n_boot < 1:
        raise BacktestError(f"n_boot must be at least 1, got {n_boot}")
    say = progress or (lambda _e: None)
    folder = Path(folder).resolve()
    started = time.perf_counter()
    pipe_setup = _jsonable(
        {
            "dataset": log.name,
            "source": log.source,
            "layers": layers.fingerprint(),
            "export_format": export_format,
        }
    )
    setup = {**pipe_setup, "n_boot": n_boot, "seed": seed}
    results: dict[Cell, dict[str, Any]] = {}
    stored: dict[Cell, PipelineRun] = {}
    todo: list[Cell] = []
    for cell in cells:
        cached = None if fresh else load_cached(folder, cell, setup)
        if cached is not None:
            results[cell] = cached
            continue
        run = None if fresh else load_pipeline(folder / "cells" / cell.key, cell, pipe_setup)
        if run is not None:
            stored[cell] = run
        else:
            todo.append(cell)
    say(Event("start", total=len(cells), text=f"{len(results)} cached"))
    for cell in cells:
        if cell in results:
            say(Event("cached", cell, results[cell].get("status", "")))
    params_of = {h: layers.params(h) for h in {c.horizon_days for c in [*todo, *stored]}}

    def pipeline(cell: Cell) -> PipelineRun:
        cell_dir = folder / "cells" / cell.key
        run = run_pipeline(
            cell,
            log,
            cell_dir,
            layers,
            params_of[cell.horizon_days],
            export_format,
            on_step=lambda s, c=cell: say(Event("step", c, s)),
        )
        bad = run.failed
        if bad is None or (bad.returncode is not None and bad.returncode > 0):
            save_pipeline(cell_dir, run, pipe_setup)
        run.commit = git_commit()
        return run

    def judge(cell: Cell, run: PipelineRun) -> None:
        doc = _cell_doc(cell, setup, run)
        cacheable = True
        bad = run.failed
        if bad is not None:
            doc.update(status="failed", step=bad.step, error=bad.error)
            # A command killed by a signal (negative code) says nothing about the product.
            cacheable = bad.returncode is not None and bad.returncode > 0
        else:
            say(Event("step", cell, "evaluate"))
            t0 = time.perf_counter()
            try:
                doc.update(
                    evaluate_cell(
                        cell, log, run.data_dir, params_of[cell.horizon_days], n_boot, seed
                    )
                )
                doc["status"] = "ok"
            except Exception as err:  # a leak, a missing run...: shown, never cached
                doc.update(status="error", step="evaluate", error=f"{type(err).__name__}: {err}")
                cacheable = False
            doc["evaluate_seconds"] = time.perf_counter() - t0
            # Lifetime peak of this process (Linux: KiB): the judging's high-water mark so far.
            doc["judging_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if cacheable:
            save_result(folder, cell, doc)
        results[cell] = _jsonable(doc)
        say(Event("done", cell, doc["status"]))

    for cell in sorted(stored):
        judge(cell, stored[cell])

    def finished() -> Iterator[tuple[Cell, PipelineRun | Exception]]:
        if jobs == 1:
            # One thing at a time: a cell's pipeline, then its judging (2 cores).
            for cell in todo:
                try:
                    yield cell, pipeline(cell)
                except Exception as err:
                    yield cell, err
            return
        # Pipelines (subprocesses) run in worker threads; the judging, which loads MLflow
        # and Feast state that is global to a process, runs here, one cell at a time.
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(pipeline, cell): cell for cell in todo}
            for fut in as_completed(futures):
                try:
                    yield futures[fut], fut.result()
                except Exception as err:
                    yield futures[fut], err

    for cell, run in finished():
        if isinstance(run, Exception):  # our own export failed: report, do not cache
            results[cell] = _jsonable(
                {
                    "version": RESULT_VERSION,
                    "setup": setup,
                    "cut": str(cell.cut),
                    "horizon_days": cell.horizon_days,
                    "status": "error",
                    "step": "pipeline",
                    "error": f"{type(run).__name__}: {run}",
                }
            )
            say(Event("done", cell, "error"))
            continue
        judge(cell, run)
    return BacktestResult(
        dataset=log.name,
        log=log,
        setup=_jsonable(setup),
        cells=[results[c] for c in sorted(cells)],
        skipped=list(skipped),
        seconds=time.perf_counter() - started,
        computed=len(todo),
        reevaluated=len(stored),
        cached=len(cells) - len(todo) - len(stored),
    )


# ---------------------------------------------------------------------------- reporting


@dataclass(frozen=True)
class Row:
    """One line of the table: a model in a cell (or a cell that produced no model)."""

    cut: str
    horizon: str
    model: str
    contacts: str
    positive_rate: str
    champion_kind: str
    champion_auc: str
    best_baseline: str
    baseline_auc: str
    difference: str
    pr_auc_difference: str
    top_decile_difference: str
    verdict: str


COLUMNS = (
    "cut",
    "H",
    "model",
    "contacts",
    "positive rate",
    "champion",
    "champion AUC [95% CI]",
    "best baseline",
    "baseline AUC [95% CI]",
    "Δ AUC [95% CI]",
    "Δ PR-AUC [95% CI]",
    "Δ prec@10% [95% CI]",
    "verdict",
)


def _ci(m: dict[str, Any] | None, signed: bool = False) -> str:
    if not m or m.get("value") is None:
        return "–"
    f = "+.3f" if signed else ".3f"
    lo, hi = m.get("lo"), m.get("hi")
    if lo is None or hi is None:
        return format(m["value"], f)
    return f"{m['value']:{f}} [{lo:{f}}, {hi:{f}}]"


def horizon_label(days: int) -> str:
    """``4 w`` for a whole number of weeks, else ``30 d``."""
    return f"{days // 7} w" if days % 7 == 0 else f"{days} d"


def table_rows(result: BacktestResult) -> list[Row]:
    """The rows of the data set's table, in grid order (models of :data:`MODEL_SPECS`)."""
    rows = []
    for doc in result.cells:
        cut = doc["cut"][:10]
        h = horizon_label(int(doc["horizon_days"]))
        if doc.get("status") != "ok":
            what = f"{doc.get('status')} at {doc.get('step')}: {doc.get('error')}"
            rows.append(Row(cut, h, "–", "–", "–", "–", "–", "–", "–", "–", "–", "–", what))
            continue
        for name in MODEL_SPECS:
            m = doc["models"][name]
            kind = m.get("champion", {}).get("kind", "?")
            n = f"{m['contacts']:,}"
            rate = "–" if m.get("positive_rate") is None else f"{m['positive_rate']:.1%}"
            if m.get("status") != "ok":
                rows.append(Row(cut, h, name, n, rate, kind, *["–"] * 6, m.get("status", "?")))
                continue
            best = m["best_baseline"]
            d = m["difference"]
            rows.append(
                Row(
                    cut,
                    h,
                    name,
                    n,
                    rate,
                    kind,
                    _ci(m["methods"]["champion"]["roc_auc"]),
                    best,
                    _ci(m["methods"][best]["roc_auc"]),
                    _ci(d["roc_auc"], signed=True),
                    _ci(d["pr_auc"], signed=True),
                    _ci(d["precision_top_decile"], signed=True),
                    m["verdict"],
                )
            )
    return rows


def summary(result: BacktestResult) -> dict[str, Any]:
    """Wins, ties and losses (per model and overall), mean ROC-AUC difference, failures."""
    out: dict[str, Any] = {"by_model": {}, "failed_cells": 0, "skipped_cells": len(result.skipped)}
    total = {"win": 0, "tie": 0, "loss": 0}
    diffs: list[float] = []
    for name in MODEL_SPECS:
        counts = {"win": 0, "tie": 0, "loss": 0}
        d_model: list[float] = []
        for doc in result.cells:
            m = doc.get("models", {}).get(name) if doc.get("status") == "ok" else None
            if m and m.get("status") == "ok":
                counts[m["verdict"]] += 1
                d_model.append(m["difference"]["roc_auc"]["value"])
        out["by_model"][name] = {
            **counts,
            "mean_difference": float(np.mean(d_model)) if d_model else None,
            "compared": len(d_model),
        }
        for k in total:
            total[k] += counts[k]
        diffs += d_model
    out.update(total)
    out["mean_difference"] = float(np.mean(diffs)) if diffs else None
    out["compared"] = len(diffs)
    out["failed_cells"] = sum(1 for doc in result.cells if doc.get("status") != "ok")
    return out


def _mirrored(result: BacktestResult) -> bool:
    """Whether, in every judged cell, churn is appetence's complement on the same contacts."""
    pairs = [
        (doc["models"].get("churn"), doc["models"].get("appetence"))
        for doc in result.cells
        if doc.get("status") == "ok"
    ]
    return bool(pairs) and all(
        c is not None
        and a is not None
        and c.get("contacts") == a.get("contacts")
        and c.get("positives", -1) + a.get("positives", -1) == c.get("contacts")
        for c, a in pairs
    )


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def report_markdown(result: BacktestResult) -> str:
    """The data set's tables (verdicts, then ROC-AUC of every method) and its summary."""
    log = result.log
    s = summary(result)
    lines = [
        f"**{log.name}**: {log.n_contacts:,} contacts, {log.n_events:,} events "
        f"({log.first_event:%Y-%m-%d} .. {log.end - DAY:%Y-%m-%d}); "
        f"{len(result.cells)} cells run, {len(result.skipped)} skipped.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * 3 + "---:|" * 2 + "---|" + "---:|" + "---|" + "---:|" * 4 + "---|",
    ]
    for r in table_rows(result):
        lines.append("| " + " | ".join(_md_escape(v) for v in asdict(r).values()) + " |")
    lines += [
        "",
        f"Summary ({log.name}): **{s['win']} wins, {s['tie']} ties, {s['loss']} losses** of "
        f"the champion against the best baseline in {s['compared']} comparisons"
        + (
            f", mean Δ ROC-AUC {s['mean_difference']:+.3f}"
            if s["mean_difference"] is not None
            else ""
        )
        + "; "
        + "; ".join(
            f"{name}: {c['win']}/{c['tie']}/{c['loss']}"
            + (f" (mean Δ {c['mean_difference']:+.3f})" if c["mean_difference"] is not None else "")
            for name, c in s["by_model"].items()
        )
        + f". Cells without a model: {s['failed_cells']}.",
    ]
    methods = ("champion", *BASELINES)
    lines += [
        "",
        f"ROC-AUC of every method ({log.name}, same contacts per row; *logistic, train split* "
        "is a diagnostic, not a baseline: the logistic regression fitted only on the as-of "
        "times the champion was trained on):",
        "",
        "| cut | H | model | " + " | ".join(methods) + " | logistic, train split |",
        "|---|---|---|" + "---:|" * (len(methods) + 1),
    ]
    for doc in result.cells:
        if doc.get("status") != "ok":
            continue
        for name in MODEL_SPECS:
            m = doc["models"][name]
            if m.get("status") != "ok":
                continue
            cells = [
                f"{m['methods'][k]['roc_auc']['value']:.3f}" if k in m["methods"] else "–"
                for k in methods
            ]
            diag = m.get("diagnostics", {}).get("logistic_train_split", {})
            cells.append(f"{diag['roc_auc']:.3f}" if diag.get("roc_auc") is not None else "–")
            lines.append(
                f"| {doc['cut'][:10]} | {horizon_label(int(doc['horizon_days']))} | {name} | "
                + " | ".join(cells)
                + " |"
            )
    if result.skipped:
        lines += [
            "",
            f"Skipped ({log.name}): "
            + "; ".join(
                f"{sk.cell.cut:%Y-%m-%d} + {horizon_label(sk.cell.horizon_days)} ({sk.reason})"
                for sk in result.skipped
            )
            + ".",
        ]
    if _mirrored(result):
        lines += [
            "",
            "Churn mirrors appetence here: in every judged cell both models were judged on the "
            'same contacts with complementary labels (churn is "no purchase" and every '
            "customer is active), so the churn rows repeat the appetence comparison with the "
            "sign of the target flipped; count them once.",
        ]
    unscored = sum(
        m.get("population_not_scored", 0)
        for doc in result.cells
        if doc.get("status") == "ok"
        for m in doc["models"].values()
    )
    if unscored:
        lines += [
            "",
            f"{unscored:,} contact-rows of the label populations had no score: contacts known "
            "from the customers table of the full log but without an event before the cut "
            "(the export carries events only, so the product never saw them).",
        ]
    judged = sorted({doc.get("commit", "?") for doc in result.cells})
    piped = sorted({doc.get("pipeline_commit", "?") for doc in result.cells})
    lines += [
        "",
        f"Code: pipelines run at commit {', '.join(piped)}, judged at {', '.join(judged)}.",
    ]
    return "\n".join(lines)
