"""``engage features``: point-in-time aggregates into Feast."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.app import Context, context, fail, features_app
from cli.ui import console, lit, progress


def build_features(c: Context, as_of: list[str] | None) -> None:
    """Build the snapshots, apply the Feast repo and materialize the latest snapshot.

    The whole command holds the features lock (:mod:`engage.locks`): a second build, a
    training or a scoring run waits for it, and it waits for them.
    """
    from engage.locks import StoreBusyError
    from features.aggregates import build_features as build
    from features.snapshots import features_lock, to_utc
    from features.store import apply_repo, get_store, materialize_snapshot

    try:
        times = [to_utc(t) for t in as_of] if as_of else None
    except ValueError as err:
        fail(f"--as-of: {err}")
    customers = c.paths.customers if c.paths.customers.exists() else None
    try:
        with features_lock(c.paths.features_dir, timeout=c.params.data.lock_timeout_s):
            with progress() as bar:
                task = bar.add_task("computing snapshots", total=None)

                def tick(_t) -> None:
                    bar.advance(task)

                summary = build(
                    c.params, c.paths.events, customers, c.paths.features_dir, times, progress=tick
                )
                bar.update(task, total=len(summary.snapshots), completed=len(summary.snapshots))
                t2 = bar.add_task("feast apply + materialize", total=2)
                apply_repo(c.paths)
                bar.advance(t2)
                store = get_store(c.paths)
                latest = max(summary.snapshots)
                materialize_snapshot(store, latest)
                bar.advance(t2)
    except (FileNotFoundError, ValueError, StoreBusyError, ImportError) as err:
        # ImportError: compute.engine is spark without the scale extra (the message says so).
        fail(str(err))
    from features.coverage import store_coverage

    if summary.unknown_money:
        from features.catalog import money_features

        console.print(
            "[yellow]note:[/yellow] the events have no amounts (ingested with --no-amounts): "
            f"{', '.join(money_features(c.params))} are unknown (null) for every contact, "
            "and CLV and value at risk are unknown (the at-risk list ranks by p_churn)",
            soft_wrap=True,
        )
    empty = store_coverage(c.paths.events, c.params).to_text()
    if empty:
        console.print(f"[yellow]note:[/yellow] {lit(empty)}", soft_wrap=True)
    console.print(
        f"{len(summary.snapshots)} snapshots ({summary.snapshots[0]:%Y-%m-%d} .. "
        f"{latest:%Y-%m-%d}), {summary.rows:,} rows from {summary.events:,} events -> "
        f"{lit(summary.directory)}\nonline store: latest snapshot {latest:%Y-%m-%d %H:%M} UTC"
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
