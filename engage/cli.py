"""The ``engage`` command line: one sub-command per pipeline step, and ``run`` for all.

Every command reads ``params.yaml`` once (``--profile`` and ``--set`` adjust it) and
prints what it did; long steps show a progress bar.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from engage.config import ConfigError, Params, Paths, load_params, resolve_paths
from engage.ui import console, progress

# Everything runs offline: no telemetry from the ML libraries.
for _var, _val in (
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ("BENTOML_DO_NOT_TRACK", "true"),
    ("DO_NOT_TRACK", "true"),
    ("FEAST_USAGE", "False"),
    ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
):
    os.environ.setdefault(_var, _val)

app = typer.Typer(
    help="Churn and appetence prediction on an engagement index.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Create, import and validate event data.", no_args_is_help=True)
features_app = typer.Typer(help="Build point-in-time features into Feast.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (figures go to BENCHMARKS.md).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(bench_app, name="bench")


@dataclass
class Context:
    params: Params
    paths: Paths


def _ctx(ctx: typer.Context) -> Context:
    return ctx.obj


@app.callback()
def main(
    ctx: typer.Context,
    profile: Annotated[
        str | None, typer.Option(help="Overlay profiles.NAME of params.yaml (e.g. cdnow).")
    ] = None,
    params_file: Annotated[
        Path | None,
        typer.Option(
            "--params",
            help="Your params file, overlaid on the project's params.yaml (may be partial).",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a parameter: dotted.key=value (repeatable)."),
    ] = None,
) -> None:
    """Read params.yaml once for the command."""
    try:
        params = load_params(params_file, profile=profile, overrides=tuple(set_ or ()))
        paths = resolve_paths(params)
    except ConfigError as err:
        # Escaped: messages quote values such as [purchase], which rich reads as markup.
        console.print(f"[red]{escape(str(err))}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None
    ctx.obj = Context(params, paths)


@contextmanager
def _step(title: str):
    start = time.perf_counter()
    console.rule(f"[bold]{title}")
    yield
    console.print(f"[dim]{title}: {time.perf_counter() - start:.1f} s[/dim]")


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(1)


# ----------------------------------------------------------------------------- data


def _simulate(c: Context, customers: int | None, days: int | None, seed: int | None) -> None:
    from engage.data.simulate import simulate_to_parquet

    n = customers or c.params.simulate.customers
    with progress() as bar:
        task = bar.add_task(f"simulating {n:,} contacts", total=n)
        summary = simulate_to_parquet(
            c.params.simulate,
            c.params.data,
            c.paths.events,
            c.paths.customers,
            customers=customers,
            days=days,
            seed=seed,
            progress=lambda k: bar.advance(task, k),
        )
    table = Table(title=f"{summary.events:,} events for {summary.customers:,} contacts")
    table.add_column("rate")
    table.add_column("value", justify="right")
    for k, v in summary.rates.items():
        table.add_row(k, f"{v:.2%}")
    console.print(table)
    console.print(f"events: {summary.events_path}\ncustomers: {summary.customers_path}")


@data_app.command("simulate")
def data_simulate(
    ctx: typer.Context,
    customers: Annotated[int | None, typer.Option(help="Number of contacts.", min=1)] = None,
    days: Annotated[int | None, typer.Option(help="Days of history.", min=1)] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
) -> None:
    """Generate the demo event data (deterministic for a seed)."""
    _simulate(_ctx(ctx), customers, days, seed)


@data_app.command("cdnow")
def data_cdnow(ctx: typer.Context) -> None:
    """Convert the CDNOW transactions shipped with `lifetimes` into purchase events."""
    from engage.data.cdnow import load_cdnow
    from engage.data.io import write_customers, write_events

    c = _ctx(ctx)
    try:
        events, customers = load_cdnow()
    except (FileNotFoundError, ImportError) as err:
        _fail(str(err))
    write_events(events, c.paths.events)
    write_customers(customers, c.paths.customers)
    console.print(
        f"CDNOW: {len(events):,} purchase events, {len(customers):,} customers -> {c.paths.events}"
    )
    if c.params.profile != "cdnow":
        console.print(
            "[yellow]hint:[/yellow] use `engage --profile cdnow ...` for CDNOW's horizons "
            "and its own data folder"
        )


@data_app.command("ingest")
def data_ingest(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV or Parquet file of events.", exists=True)],
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="their_column=field (repeatable), e.g. ts=event_time."),
    ] = None,
    strict: Annotated[bool, typer.Option(help="Fail on any bad row, write nothing.")] = False,
    replace: Annotated[bool, typer.Option(help="Replace the stored events.")] = False,
) -> None:
    """Import your own events, validate them, quarantine the bad rows."""
    from engage.data.ingest import apply_mapping, ingest_events, parse_mapping, read_user_file
    from engage.data.validate import DataValidationError

    c = _ctx(ctx)
    try:
        df = apply_mapping(read_user_file(file), parse_mapping(map_ or []))
        report = ingest_events(
            df,
            c.params.data,
            c.paths.events,
            c.paths.quarantine,
            strict=strict,
            replace=replace,
            customers_path=c.paths.customers,
        )
    except DataValidationError as err:
        console.print(escape(str(err)))
        raise typer.Exit(1) from None
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    console.print(escape(report.to_text()))
    console.print(f"events: {c.paths.events}; quarantine: {c.paths.quarantine}")


@data_app.command("validate")
def data_validate(
    ctx: typer.Context,
    strict: Annotated[bool, typer.Option(help="Exit non-zero if any row is bad.")] = False,
) -> None:
    """Check the stored events against the schema and rules (read only)."""
    from engage.data.io import read_events
    from engage.data.validate import validate_events

    c = _ctx(ctx)
    try:
        events = read_events(c.paths.events)
    except FileNotFoundError as err:
        _fail(str(err))
    _, _, report = validate_events(events, c.params.data)
    console.print(escape(report.to_text()))
    if strict and not report.ok:
        raise typer.Exit(1)


# ------------------------------------------------------------------------- features


def _build_features(c: Context, as_of: list[str] | None) -> None:
    from features.aggregates import build_features
    from features.store import apply_repo, get_store, materialize_snapshot

    customers = c.paths.customers if c.paths.customers.exists() else None
    with progress() as bar:
        task = bar.add_task("computing snapshots", total=None)

        def tick(_t) -> None:
            bar.advance(task)

        try:
            summary = build_features(
                c.params, c.paths.events, customers, c.paths.features_dir, as_of, progress=tick
            )
        except FileNotFoundError as err:
            _fail(str(err))
        bar.update(task, total=len(summary.snapshots), completed=len(summary.snapshots))
        t2 = bar.add_task("feast apply + materialize", total=2)
        apply_repo(c.paths)
        bar.advance(t2)
        store = get_store(c.paths)
        latest = max(summary.snapshots)
        materialize_snapshot(store, latest)
        bar.advance(t2)
    console.print(
        f"{len(summary.snapshots)} snapshots ({summary.snapshots[0]:%Y-%m-%d} .. "
        f"{latest:%Y-%m-%d}), {summary.rows:,} rows from {summary.events:,} events -> "
        f"{summary.directory}\nonline store: latest snapshot {latest:%Y-%m-%d %H:%M} UTC"
    )


@features_app.command("build")
def features_build(
    ctx: typer.Context,
    as_of: Annotated[
        list[str] | None,
        typer.Option(help="As-of time (repeatable); default: weekly snapshots up to now."),
    ] = None,
) -> None:
    """Compute point-in-time aggregates, feast apply, materialize the latest snapshot."""
    _build_features(_ctx(ctx), as_of)


# ---------------------------------------------------------------------------- train


def _train(c: Context, model: str) -> list:
    from training.train import train_model

    names = ["churn", "appetence"] if model == "all" else [model]
    results = []
    for name in names:
        with console.status(f"training {name}") as status:
            try:
                result = train_model(
                    c.paths, c.params, name, progress=lambda m, n=name: status.update(f"{n}: {m}")
                )
            except (FileNotFoundError, ValueError, LookupError) as err:
                _fail(f"{name}: {err}")
        results.append(result)
        table = Table(title=f"{name} v{result.version} -> @{result.alias} (test period)")
        for col in ("method", "ROC-AUC", "PR-AUC", "log loss", "Brier", "ECE", "lift@10%"):
            table.add_column(col, justify="right" if col != "method" else "left")
        for who, m in result.metrics.items():
            table.add_row(
                who,
                f"{m['roc_auc']:.4f}",
                f"{m['pr_auc']:.4f}",
                *(f"{m[k]:.4f}" if k in m else "-" for k in ("log_loss", "brier", "ece")),
                f"{m['lift_top_decile']:.2f}",
            )
        console.print(table)
        console.print(f"gate: {escape(result.reason)}")
        console.print(f"[dim]split: {result.ranges}[/dim]")
    return results


@app.command("train")
def train(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Option(help="churn, appetence or all.", case_sensitive=False)
    ] = "all",
) -> None:
    """Train, evaluate against baselines, register in MLflow, apply the promotion gate."""
    if model not in ("churn", "appetence", "all"):
        _fail(f"--model must be churn, appetence or all, got {model!r}")
    _train(_ctx(ctx), model)


# ------------------------------------------------------------------ score and report


def _score_last_two(c: Context) -> None:
    """Score the previous snapshot and the latest, so the report shows stage movements."""
    from features.snapshots import list_snapshots
    from serving.scoring import score

    snaps = list_snapshots(c.paths.features_dir)
    targets = [s.as_of for s in snaps[-2:]]
    for as_of in targets:
        try:
            run_ = score(c.paths, c.params, as_of=as_of)
        except (FileNotFoundError, LookupError, ValueError) as err:
            _fail(str(err))
        console.print(
            f"run {run_.run_id}: {run_.rows:,} contacts as of {run_.as_of:%Y-%m-%d}, "
            f"stages {run_.stages}"
        )


def _report(c: Context, out: Path | None = None) -> Path:
    from reporting.report import build_report

    try:
        return build_report(c.paths, c.params, out)
    except (FileNotFoundError, LookupError) as err:
        _fail(str(err))


@app.command("report")
def report(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="HTML file to write.")] = None,
) -> None:
    """Write the self-contained HTML report (index, KPIs, models, SHAP, at-risk list)."""
    with console.status("building the report"):
        path = _report(_ctx(ctx), out)
    console.print(f"report: [bold]{path}[/bold]")


# ---------------------------------------------------------------------------- bench


@bench_app.command("scale")
def bench_scale(
    customers: Annotated[int, typer.Option(help="Contacts of the big run.", min=1)] = 1_000_000,
    reference: Annotated[int, typer.Option(help="Contacts of the reference run.", min=1)] = 20_000,
    days: Annotated[int, typer.Option(help="Days of events.", min=1)] = 365,
    data_dir: Annotated[Path | None, typer.Option(help="Keep the data here.")] = None,
) -> None:
    """Whole pipeline at N contacts: time and peak memory per stage -> BENCHMARKS.md."""
    from benchmarks.bench_scale import main as scale_main

    argv = ["--customers", str(customers), "--reference", str(reference), "--days", str(days)]
    scale_main(argv + (["--data-dir", str(data_dir)] if data_dir else []))


# ---------------------------------------------------------------------------- run


@app.command("run")
def run(
    ctx: typer.Context,
    customers: Annotated[int | None, typer.Option(help="Demo contacts to simulate.")] = None,
    days: Annotated[int | None, typer.Option(help="Days of demo history.")] = None,
    fresh: Annotated[bool, typer.Option(help="Re-simulate even if events already exist.")] = False,
) -> None:
    """Run the whole pipeline on the demo data: simulate, features, train, score, report."""
    c = _ctx(ctx)
    start = time.perf_counter()
    if fresh or not c.paths.events.exists():
        with _step("1. demo data"):
            _simulate(c, customers, days, None)
    else:
        console.print(f"using existing events {c.paths.events} (--fresh to re-simulate)")
    with _step("2. features"):
        _build_features(c, None)
    with _step("3. models"):
        _train(c, "all")
    with _step("4. batch scoring"):
        _score_last_two(c)
    with _step("5. report"):
        path = _report(c)
    console.print(f"[bold green]pipeline done[/bold green] in {time.perf_counter() - start:.0f} s")
    console.print(f"report: [bold]{path}[/bold]")


def _register_commands() -> None:
    # Commands of later pipeline steps live in engage/commands/ (one module per area).
    from engage.commands import scoring, serve

    scoring.register(app)
    serve.register(app)
    try:
        from engage.commands import bench
    except ImportError:  # the benchmark extra may be absent
        return
    bench.register(bench_app)


_register_commands()


if __name__ == "__main__":  # pragma: no cover
    app()
