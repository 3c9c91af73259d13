"""``engage features``: point-in-time aggregates into Feast."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.app import Context, context, fail, features_app
from cli.ui import console, progress


def build_features(c: Context, as_of: list[str] | None) -> None:
    """Build the snapshots, apply the Feast repo and materialize the latest snapshot."""
    from features.aggregates import build_features as build
    from features.store import apply_repo, get_store, materialize_snapshot

    customers = c.paths.customers if c.paths.customers.exists() else None
    with progress() as bar:
        task = bar.add_task("computing snapshots", total=None)

        def tick(_t) -> None:
            bar.advance(task)

        try:
            summary = build(
                c.params, c.paths.events, customers, c.paths.features_dir, as_of, progress=tick
            )
        except FileNotFoundError as err:
            fail(str(err))
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
    build_features(context(ctx), as_of)
