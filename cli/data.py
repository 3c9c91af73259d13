"""``engage data``: create, import and validate event data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.app import Context, context, data_app, fail
from cli.ui import console, lit, progress


def simulate(c: Context, customers: int | None, days: int | None, seed: int | None) -> None:
    """Simulate the demo events with a progress bar and print the measured rates."""
    from engage.data.simulate import simulate_to_parquet
    from engage.locks import StoreBusyError

    n = customers or c.params.simulate.customers
    with progress() as bar:
        task = bar.add_task(f"simulating {n:,} contacts", total=n)
        try:
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
        except StoreBusyError as err:
            fail(str(err))
    table = Table(title=f"{summary.events:,} events for {summary.customers:,} contacts")
    table.add_column("rate")
    table.add_column("value", justify="right")
    for k, v in summary.rates.items():
        table.add_row(lit(k), f"{v:.2%}")
    console.print(table)
    console.print(f"events: {lit(summary.events_path)}\ncustomers: {lit(summary.customers_path)}")


@data_app.command("simulate")
def data_simulate(
    ctx: typer.Context,
    customers: Annotated[int | None, typer.Option(help="Number of contacts.", min=1)] = None,
    days: Annotated[int | None, typer.Option(help="Days of history.", min=1)] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
) -> None:
    """Generate the demo event data (deterministic for a seed)."""
    simulate(context(ctx), customers, days, seed)


@data_app.command("cdnow")
def data_cdnow(ctx: typer.Context) -> None:
    """Convert the CDNOW transactions shipped with `lifetimes` into purchase events."""
    from engage.data.cdnow import load_cdnow
    from engage.data.store import replace_store
    from engage.locks import StoreBusyError

    c = context(ctx)
    try:
        events, customers = load_cdnow()
        replace_store(
            events,
            customers,
            c.paths.events,
            c.paths.customers,
            timeout=c.params.data.lock_timeout_s,
            command="cdnow",
        )
    except (FileNotFoundError, ImportError, ValueError, StoreBusyError) as err:
        fail(str(err))
    console.print(
        f"CDNOW: {len(events):,} purchase events, {len(customers):,} customers -> "
        f"{lit(c.paths.events)}"
    )
    if c.params.profile != "cdnow":
        console.print(
            "[yellow]hint:[/yellow] use `engage --profile cdnow ...` for CDNOW's horizons "
            "and its own data folder"
        )


@data_app.command("ingest")
def data_ingest(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV or Parquet file of events.")],
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="their_column=field (repeatable), e.g. ts=event_time."),
    ] = None,
    strict: Annotated[bool, typer.Option(help="Fail on any bad row, write nothing.")] = False,
    replace: Annotated[bool, typer.Option(help="Replace the stored events.")] = False,
    encoding: Annotated[
        str | None,
        typer.Option(help="Text encoding of a CSV (default utf-8; e.g. latin-1, cp1252)."),
    ] = None,
    sep: Annotated[
        str | None,
        typer.Option(help="CSV separator: , ; | or tab (default: detected from the header)."),
    ] = None,
) -> None:
    """Import your own events, validate them, quarantine the bad rows."""
    from engage.data.ingest import (
        SEPARATORS,
        apply_mapping,
        ingest_events,
        parse_mapping,
        parse_separator,
        read_user_file,
    )
    from engage.data.validate import DataValidationError
    from engage.locks import StoreBusyError

    c = context(ctx)
    try:
        mapping = parse_mapping(map_ or [])
        raw = read_user_file(file, encoding=encoding, sep=parse_separator(sep))
        if "sep" in raw.attrs and sep is None and raw.attrs["sep"] != ",":
            console.print(f"read as {SEPARATORS[raw.attrs['sep']]}-separated (--sep to change)")
        df = apply_mapping(raw, mapping)
        report = ingest_events(
            df,
            c.params.data,
            c.paths.events,
            c.paths.quarantine,
            strict=strict,
            replace=replace,
            customers_path=c.paths.customers,
            source=str(file),
        )
    except DataValidationError as err:
        console.print(escape(str(err)))
        console.print("[red]error:[/red] nothing written")
        raise typer.Exit(1) from None
    except (ValueError, FileNotFoundError, StoreBusyError) as err:
        fail(str(err))
    console.print(escape(report.to_text()))
    console.print(f"events: {lit(c.paths.events)}; quarantine: {lit(c.paths.quarantine)}")


@data_app.command("validate")
def data_validate(
    ctx: typer.Context,
    strict: Annotated[bool, typer.Option(help="Exit non-zero if any row is bad.")] = False,
) -> None:
    """Check the stored events against the schema and rules (read only)."""
    from engage.data.io import read_events
    from engage.data.store import reading
    from engage.data.validate import validate_events
    from engage.locks import StoreBusyError

    c = context(ctx)
    try:
        with reading(c.paths.events, timeout=c.params.data.lock_timeout_s):
            events = read_events(c.paths.events)
    except (FileNotFoundError, ValueError, StoreBusyError) as err:
        fail(str(err))
    _, _, report = validate_events(events, c.params.data)
    console.print(escape(report.to_text()))
    if strict and not report.ok:
        raise typer.Exit(1)
