"""``engage data``: create, import and validate event data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.app import Context, context, data_app, fail
from cli.help import default_from
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
    customers: Annotated[
        int | None,
        typer.Option(help=f"Number of contacts. {default_from('simulate.customers')}", min=1),
    ] = None,
    days: Annotated[
        int | None, typer.Option(help=f"Days of history. {default_from('simulate.days')}", min=1)
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help=f"Random seed. {default_from('simulate.seed')}")
    ] = None,
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


INGEST_HELP = "\n\n".join(
    [
        "Import your own events, validate them, quarantine the bad rows.",
        "Fields of an event: {fields}. Map the file's columns with --map their_column=field "
        "(a column already named like a field is used as it is). Without an event_id column "
        "each row gets an id derived from its content, so the same file ingested twice adds "
        "nothing.",
        "Event types (data.event_types): {list:data.event_types}. Map the file's event names "
        "with --map-event their_name=event_type, give one type to every row with --event-type "
        "(a purchases-only file), or add a type of your own with --set "
        "'data.event_types=[...]'. Columns and names can also come from a YAML file "
        "(--mapping, see the README).",
        "A store holding the demo data (engage data simulate or cdnow) is replaced, not added "
        "to, unless --append. More bad rows than data.max_bad_share "
        "({list:data.max_bad_share}): nothing is written and the exit status is 1.",
    ]
)


@data_app.command("ingest", help=INGEST_HELP)
def data_ingest(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV or Parquet file of events.")],
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="their_column=field (repeatable), e.g. ts=event_time."),
    ] = None,
    map_event: Annotated[
        list[str] | None,
        typer.Option(
            "--map-event",
            help="their_event_name=event_type (repeatable), e.g. page_view=web_visit.",
        ),
    ] = None,
    mapping_file: Annotated[
        Path | None,
        typer.Option(
            "--mapping",
            help="YAML file with `columns:` and `event_types:` mappings (and optionally "
            "`event_type:`, `no_amounts:`); --map and --map-event add to it.",
        ),
    ] = None,
    event_type: Annotated[
        str | None,
        typer.Option(
            "--event-type", help="One event type for every row (a file without a type column)."
        ),
    ] = None,
    no_amounts: Annotated[
        bool,
        typer.Option(
            "--no-amounts",
            help="Purchases without a value are accepted; money figures become unknown.",
        ),
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail on any bad row, write nothing.")
    ] = False,
    replace: Annotated[bool, typer.Option("--replace", help="Replace the stored events.")] = False,
    append: Annotated[
        bool,
        typer.Option("--append", help="Add to the stored events even if they are the demo data."),
    ] = False,
    encoding: Annotated[
        str | None,
        typer.Option(help="Text encoding of a CSV (default utf-8; e.g. latin-1, cp1252)."),
    ] = None,
    sep: Annotated[
        str | None,
        typer.Option(help="CSV separator: , ; | or tab (default: detected from the header)."),
    ] = None,
) -> None:
    from engage.data.ingest import (
        SEPARATORS,
        TooManyBadRows,
        ingest_events,
        parse_mapping,
        parse_separator,
        prepare_events,
        read_user_file,
    )
    from engage.data.mapping import EventMapping, parse_event_mapping, read_mapping_file
    from engage.data.store import demo_origin
    from engage.data.validate import DataValidationError
    from engage.locks import StoreBusyError

    c = context(ctx)
    if replace and append:
        fail("--replace and --append contradict each other: give one")
    try:
        mapping = EventMapping(
            columns=parse_mapping(map_ or []),
            event_types=parse_event_mapping(map_event or []),
            event_type=event_type,
            no_amounts=no_amounts,
        )
        if mapping_file is not None:
            mapping = read_mapping_file(mapping_file).merged(mapping)
        raw = read_user_file(file, encoding=encoding, sep=parse_separator(sep))
        if "sep" in raw.attrs and sep is None and raw.attrs["sep"] != ",":
            console.print(f"read as {SEPARATORS[raw.attrs['sep']]}-separated (--sep to change)")
        prepared = prepare_events(raw, mapping, c.params.data)
        demo = None if (replace or append) else demo_origin(c.paths.events)
        if demo is not None:
            console.print(
                f"[yellow]note:[/yellow] {lit(c.paths.events)} holds the demo data "
                f"({lit(_demo_text(demo))}): your events replace it (--append to add to it "
                "instead; ENGAGE_DATA_DIR=/another/dir keeps both)",
                soft_wrap=True,
            )
        report = ingest_events(
            prepared.events,
            c.params.data,
            c.paths.events,
            c.paths.quarantine,
            strict=strict,
            replace=replace or demo is not None,
            customers_path=c.paths.customers,
            source=str(file),
            derived_ids=prepared.derived_ids,
            amounts=not mapping.no_amounts,
            notes=prepared.notes,
        )
    except TooManyBadRows as err:
        console.print(escape(err.report.to_text()))
        fail(err.summary)
    except DataValidationError as err:
        console.print(escape(str(err)))
        console.print("[red]error:[/red] nothing written")
        raise typer.Exit(1) from None
    except (ValueError, FileNotFoundError, StoreBusyError) as err:
        fail(str(err))
    console.print(escape(report.to_text()))
    console.print(f"events: {lit(c.paths.events)}; quarantine: {lit(c.paths.quarantine)}")


def _demo_text(entry: dict) -> str:
    """How the demo data in a store was made, as the command that makes it again."""
    if entry.get("command") == "simulate":
        return (
            f"engage data simulate --customers {entry.get('customers')} --days "
            f"{entry.get('days')} --seed {entry.get('seed')}, written {entry.get('at', '?')}"
        )
    return f"engage data {entry.get('command')}, written {entry.get('at', '?')}"


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
