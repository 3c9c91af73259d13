"""``engage run``: the whole pipeline on the demo data, and ``engage report``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from cli.app import Context, app, context, fail, step
from cli.data import simulate
from cli.features import build_features
from cli.help import default_from
from cli.models import train_models
from cli.ui import console, lit

RECENT_RUNS = 4  # weekly runs scored by `engage run`: a stage trend, not just one move


def score_recent(c: Context, runs: int = RECENT_RUNS) -> None:
    """Score the last ``runs`` snapshots in order, each against the one before it.

    The report then shows a stage trend and the last move, and the stability rule of
    the index has a previous run to compare with.
    """
    from cli.scoring import print_range_notes
    from engage.locks import StoreBusyError
    from features.snapshots import list_snapshots
    from serving.scoring import score

    snaps = list_snapshots(c.paths.features_dir)
    targets = [s.as_of for s in snaps[-runs:]]
    for i, as_of in enumerate(targets):
        try:
            run_ = score(c.paths, c.params, as_of=as_of)
        except (FileNotFoundError, LookupError, ValueError, StoreBusyError) as err:
            fail(str(err))
        console.print(
            f"run {lit(run_.run_id)}: {run_.rows:,} contacts as of {run_.as_of:%Y-%m-%d}, "
            f"stages {lit(run_.stages)}, {run_.lapsed:,} lapsed customers (win-back list)"
        )
        if i == len(targets) - 1:
            # The latest run's findings; the earlier runs keep theirs in their metadata.
            print_range_notes(run_)


def write_report(c: Context, out: Path | None = None, contact: str | None = None) -> Path:
    """Build the HTML report; returns its path."""
    from reporting.report import build_report

    try:
        return build_report(c.paths, c.params, out, contact=contact)
    except (FileNotFoundError, LookupError) as err:
        fail(str(err))


@app.command("report")
def report(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="HTML file to write.")] = None,
    contact: Annotated[
        str | None,
        typer.Option(
            "--contact",
            help="Whose survival curve to draw (default: the first of the at-risk list).",
        ),
    ] = None,
) -> None:
    """Write the self-contained HTML report (index, KPIs, models, SHAP, at-risk list)."""
    with console.status("building the report"):
        path = write_report(context(ctx), out, contact)
    console.print(f"report: [bold]{lit(path)}[/bold]")


@app.command("run")
def run(
    ctx: typer.Context,
    customers: Annotated[
        int | None,
        typer.Option(help=f"Demo contacts to simulate. {default_from('simulate.customers')}"),
    ] = None,
    days: Annotated[
        int | None, typer.Option(help=f"Days of demo history. {default_from('simulate.days')}")
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh", help="Re-simulate the demo data (refused over your own ingested events)."
        ),
    ] = False,
) -> None:
    """Run the whole pipeline: (demo data), features, train, score, report.

    On the stored events: your own once ingested (engage data ingest), which are never
    simulated over; the demo data is simulated only when there are no events (or with
    --fresh on a store of demo data). Models trained on unchanged data are not trained
    again.
    """
    from engage.data.store import demo_origin

    c = context(ctx)
    start = time.perf_counter()
    if fresh and c.paths.events.exists() and demo_origin(c.paths.events) is None:
        fail(
            f"--fresh would replace the events in {c.paths.events}, which are not demo data "
            "(ingested): run without --fresh to use them, or set ENGAGE_DATA_DIR to another "
            "folder for the demo"
        )
    if fresh or not c.paths.events.exists():
        with step("1. demo data"):
            simulate(c, customers, days, None)
    else:
        console.print(f"using existing events {lit(c.paths.events)} (--fresh to re-simulate)")
    with step("2. features"):
        build_features(c, None)
    with step("3. models"):
        train_models(c, "all", force=False)
    with step("4. batch scoring"):
        score_recent(c)
    with step("5. report"):
        path = write_report(c)
    console.print(f"[bold green]pipeline done[/bold green] in {time.perf_counter() - start:.0f} s")
    console.print(f"report: [bold]{lit(path)}[/bold]")
