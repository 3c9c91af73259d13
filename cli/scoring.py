"""``engage score``, ``at-risk``, ``leads``, ``thresholds`` and ``transitions``.

The modules they call live in ``serving/``; imports are deferred so ``engage --help``
stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.app import app, context, fail
from cli.help import default_from
from cli.ui import console, lit, progress
from engage.specs import MODEL_NAMES, model_spec


def _pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.1%}"


def _days(x: float | None) -> str:
    # Null: expected to act before lapsing (serving/timing.py, days_to_churn).
    return "-" if x is None or x != x else f"{x:.0f}"


def _money(x: float | None, fmt: str) -> str:
    # NaN: the data has no amounts (ingested with --no-amounts).
    return "unknown" if x is None or x != x else fmt.format(x)


# ---------------------------------------------------------------------------- score


@app.command("score")
def score_command(
    ctx: typer.Context,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Score the latest snapshot at or before this time."),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option("--run-id", help="Run id (default: snapshot date + hash); reuse replaces."),
    ] = None,
) -> None:
    """Score every known contact with the champion models into scores/run=<id>.parquet."""
    from engage.locks import StoreBusyError
    from serving.scoring import score

    c = context(ctx)
    with progress() as bar:
        task = bar.add_task("scoring contacts", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            run = score(c.paths, c.params, as_of=as_of, run_id=run_id, progress=tick)
        except (FileNotFoundError, LookupError, ValueError, StoreBusyError) as err:
            fail(str(err))
    versions = ", ".join(f"{m} v{v}" for m, v in run.versions.items())
    table = Table(
        title=f"run {lit(run.run_id)}: {run.rows:,} contacts at {run.as_of:%Y-%m-%d %H:%M}"
    )
    table.add_column("stage / segment")
    table.add_column("contacts", justify="right")
    table.add_column("share", justify="right")
    for name, n in run.stages.items():
        table.add_row(f"[bold]{lit(name)}[/bold]", f"{n:,}", _pct(n / max(run.rows, 1)))
    table.add_section()
    for name, n in run.segments.items():
        table.add_row(lit(name), f"{n:,}", _pct(n / max(run.rows, 1)))
    console.print(table)
    console.print(f"models: {lit(versions)}; {run.seconds:.1f} s -> {lit(run.path)}")
    if run.lapsed:
        console.print(
            f"{run.lapsed:,} lapsed customers (no activity within "
            f"labels.churn_active_within_days={c.params.labels.churn_active_within_days}) "
            "are scored but listed apart: `engage at-risk --win-back`"
        )
    for name in run.missing:
        console.print(missing_model_note(name, run.undecided), soft_wrap=True)
    print_timing_note(run.timing)
    print_range_notes(run)


def print_timing_note(timing: dict) -> None:
    """Which time-to-event answers the run holds (hazard models), and which it lacks."""
    if not timing:
        return
    horizons = ", ".join(f"{h}d" for h in timing.get("horizons_days", []))
    present = sorted(set(timing.get("versions", {})))
    if present:
        console.print(
            f"time to event ({lit(', '.join(present))} hazard models): columns at "
            f"{lit(horizons)}, days_to_* (README, Time-to-event columns)"
        )
    missing = timing.get("missing", [])
    if missing:
        console.print(
            f"[yellow]note:[/yellow] no {lit(' / '.join(missing))} hazard model: the run "
            "has no time-to-event columns for it (`engage train` fits them)",
            soft_wrap=True,
        )


def print_range_notes(run) -> None:
    """The run's out-of-training-range findings, as notes (kept in the run's metadata).

    Scoring a snapshot later than every training as-of time always meets a few contacts
    older than any seen in training; trees give them the edge value. A note, not a
    warning: nothing is wrong with the run, the share says when to retrain.
    """
    for line in run.warnings:
        console.print(
            f"[yellow]note:[/yellow] {escape(line)} (trees hold their edge value there; "
            "a growing share says: retrain)",
            soft_wrap=True,
        )


def missing_model_note(name: str, undecided: int) -> str:
    """What a run scored without model ``name`` lacks, in the words of the index."""
    spec = model_spec(name)
    half, stages = (
        ("customers", "Retention / Exit") if spec.half else ("prospects", "Nurture / Purchase")
    )
    lacks = (
        "p_churn, value at risk and the at-risk list"
        if name == "churn"
        else "p_purchase and the lead list"
    )
    return (
        f"[bold yellow]note:[/bold yellow] no {name} model: the index's {half} half "
        f"({stages}) is missing, {undecided:,} {half} were left out of this run, and it has "
        f"no {lacks} (`engage train --model {name}` when the data supports one)"
    )


# Options shared by the list commands (at-risk, leads).
FormatOption = Annotated[
    str, typer.Option("--format", help="table, csv or json.", case_sensitive=False)
]
RunOption = Annotated[
    str | None, typer.Option("--run", help="Scoring run id (default: the latest).")
]

# -------------------------------------------------------------------------- at-risk


@app.command("at-risk")
def at_risk_command(
    ctx: typer.Context,
    top: Annotated[
        int | None,
        typer.Option(
            "--top",
            help="Number of customers (default 20; with --call-list the capacity, "
            "report.capacity = {list:report.capacity}).",
            min=1,
        ),
    ] = None,
    segment: Annotated[
        str | None, typer.Option("--segment", help="Only this lifecycle segment.")
    ] = None,
    format_: FormatOption = "table",
    run: RunOption = None,
    stage: Annotated[
        str | None, typer.Option("--stage", help="Only this stage: Retention or Exit.")
    ] = None,
    call_list: Annotated[
        bool,
        typer.Option(
            "--call-list",
            help="This week's calls: --stage Exit --top report.capacity (reachable customers).",
        ),
    ] = False,
    win_back: Annotated[
        bool,
        typer.Option("--win-back", help="List the lapsed customers (no recent activity) instead."),
    ] = False,
    sort: Annotated[
        str,
        typer.Option(
            "--sort",
            help="value (value at risk, highest first) or days-to-churn (expected days to "
            "churn, soonest first; needs a run scored with the churn hazard model).",
            case_sensitive=False,
        ),
    ] = "value",
) -> None:
    """Reachable customers by value at risk (p_churn x CLV), with reasons and an action.

    Lapsed customers (no activity within labels.churn_active_within_days) are never in
    this list: `--win-back` lists them apart. `--sort days-to-churn` puts first the
    customers who lapse soonest unless they act (serving/timing.py, days_to_churn).
    """
    from serving.at_risk import FORMATS, at_risk_list, to_csv, to_json

    fmt = format_.lower()
    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, got {format_!r}")
    c = context(ctx)
    if call_list and win_back:
        fail("--call-list and --win-back exclude each other: the call list is reachable customers")
    if call_list:
        capacity = c.params.report.capacity
        stage, top = "Exit", capacity if top is None else min(top, capacity)
    top = 20 if top is None else top
    try:
        info, frame = at_risk_list(
            c.paths,
            top=top,
            segment=segment,
            run_id=run,
            stage=stage,
            win_back=win_back,
            sort=sort.lower(),
        )
    except (LookupError, ValueError) as err:
        fail(str(err))
    if fmt == "csv":
        typer.echo(to_csv(frame), nl=False)
        return
    if fmt == "json":
        typer.echo(to_json(frame, info))
        return
    currency = lit(c.params.value.currency)
    if win_back:
        what = "lapsed customers to win back"
    else:
        what = "customers to call" if call_list else "at-risk customers"
    title = f"top {len(frame)} {what}, run {lit(info.run_id)} ({info.as_of:%Y-%m-%d})"
    unknown = int(frame["value_at_risk"].isna().sum())
    if len(frame) > unknown:
        title += f": {frame['value_at_risk'].sum():,.0f} {currency} at risk"
    if unknown:
        title += f" ({unknown} of unknown value: no amounts in the data, ranked by p_churn)"
    if sort.lower() == "days-to-churn":
        title += "; by expected days to churn, soonest first"
    timed = "days_to_churn" in frame.columns
    table = Table(title=title, show_lines=True)
    for col, justify in (
        ("customer", "left"),
        ("p_churn", "right"),
        *((("days to churn", "right"),) if timed else ()),
        ("stage", "left"),
        ("segment", "left"),
        (f"value at risk ({currency})", "right"),
        ("top reasons", "left"),
        ("suggested action", "left"),
    ):
        table.add_column(col, justify=justify, overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(
            lit(row.customer_id),
            f"{row.p_churn:.2f}",
            *((_days(row.days_to_churn),) if timed else ()),
            lit(row.stage),
            lit(row.segment),
            _money(row.value_at_risk, "{:,.0f}"),
            lit("\n".join(f"- {r}" for r in row.reasons)),
            lit(row.action),
        )
    console.print(table)
    if frame.empty:
        console.print("[yellow]no customer matches[/yellow]")


# ----------------------------------------------------------------------- thresholds


@app.command("thresholds")
def thresholds_command(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Option("--model", help="churn (Exit quadrant) or appetence (Purchase).")
    ] = "churn",
    capacity: Annotated[
        float | None,
        typer.Option("--capacity", help="Contacts the team can handle per scoring run.", min=0),
    ] = None,
    target_precision: Annotated[
        float | None,
        typer.Option("--target-precision", help="Wanted share of true positives (0-1]."),
    ] = None,
    per: Annotated[
        str, typer.Option("--per", help="Scale to one snapshot: mean (of as-of times) or last.")
    ] = "mean",
) -> None:
    """Contacts, TP, FP, precision and recall per threshold on the champion's held-out rows."""
    from serving.thresholds import (
        candidate_grid,
        current_threshold,
        load_held_out,
        propose,
        stated_threshold,
        threshold_table,
    )

    if model not in MODEL_NAMES:
        fail(f"--model must be one of {', '.join(MODEL_NAMES)}, got {model!r}")
    spec = model_spec(model)
    if per not in ("mean", "last"):
        fail(f"--per must be mean or last, got {per!r}")
    c = context(ctx)
    try:
        held, version = load_held_out(c.paths, model)
        proposal = None
        if capacity is not None or target_precision is not None:
            proposal = propose(held, capacity, target_precision, per)
        grid = candidate_grid(c.params, model, proposal.threshold if proposal else None)
        table_df = threshold_table(held, grid, per)
    except (LookupError, ValueError) as err:
        fail(str(err))
    snaps = held["event_timestamp"].nunique()
    current = current_threshold(c.params, model)
    per_text = "mean of" if per == "mean" else "last of"
    table = Table(
        title=(
            f"{model} v{lit(version)}: {spec.positive_stage} quadrant per scoring run "
            f"({per_text} {snaps} held-out snapshots, {len(held):,} rows)"
        )
    )
    for col in ("threshold", "contacts", "TP", "FP", "precision", "recall"):
        table.add_column(col, justify="right")
    chosen = proposal.threshold if proposal else None
    for r in table_df.itertuples(index=False):
        mark = []
        if abs(r.threshold - current) < 1e-12:
            mark.append("current")
        if chosen is not None and abs(r.threshold - round(chosen, 6)) < 1e-9:
            mark.append("proposed")
        style = "bold green" if "proposed" in mark else ("bold" if mark else None)
        label = f"{r.threshold:.4g}" + (f" ({', '.join(mark)})" if mark else "")
        table.add_row(
            label,
            f"{r.contacts:,.1f}",
            f"{r.tp:,.1f}",
            f"{r.fp:,.1f}",
            _pct(r.precision),
            _pct(r.recall),
            style=style,
        )
    console.print(table)
    if proposal is None:
        console.print("give --capacity and/or --target-precision for a proposal")
    elif proposal.threshold is None:
        console.print(f"[yellow]{escape(proposal.reason)}[/yellow]")
    else:
        stated = stated_threshold(c.params, model, proposal.threshold)
        horizon, said = c.params.labels.horizon_days, c.params.index.stated_horizon_days
        carried = (
            ""
            if horizon == said
            else f" (p within {horizon} days >= {proposal.threshold:.4f}, stated for {said} days)"
        )
        console.print(
            f"proposal: {spec.threshold_param} = {stated:.4f}{carried} "
            f"({escape(proposal.reason)}): "
            f"{proposal.contacts:,.1f} contacts per run, precision {_pct(proposal.precision)}, "
            f"recall {_pct(proposal.recall)}\n"
            f"apply with `--set {spec.threshold_param}={stated:.4f}` or in params.yaml"
        )


# ---------------------------------------------------------------------- transitions


@app.command("transitions")
def transitions_command(
    ctx: typer.Context,
    from_run: Annotated[
        str | None, typer.Option("--from", help="Earlier run (default: the one before --to).")
    ] = None,
    to_run: Annotated[
        str | None, typer.Option("--to", help="Later run (default: the latest).")
    ] = None,
    webhook: Annotated[
        str | None,
        typer.Option(
            "--webhook", help=f"POST the changes here. {default_from('serving.webhook_url')}"
        ),
    ] = None,
    post: Annotated[
        bool, typer.Option("--post/--no-post", help="POST to the webhook when one is set.")
    ] = True,
    limit: Annotated[int, typer.Option("--limit", help="Rows shown.", min=0)] = 50,
) -> None:
    """Contacts whose stage changed between two scoring runs; optionally POSTed once."""
    from serving.transitions import WebhookError, check_webhook_url, deliver, stage_transitions

    c = context(ctx)
    url = webhook or c.params.serving.webhook_url
    if post and url:
        try:
            check_webhook_url(url)
        except ValueError as err:
            # A configuration error, not a delivery failure: retrying cannot help.
            fail(f"--webhook: {err}", code=2)
    try:
        tr = stage_transitions(c.paths, from_run, to_run)
    except (LookupError, ValueError) as err:
        fail(str(err))
    console.print(
        f"{lit(tr.from_run.run_id)} ({tr.from_run.as_of:%Y-%m-%d}) -> {lit(tr.to_run.run_id)} "
        f"({tr.to_run.as_of:%Y-%m-%d}): {len(tr.changes):,} stage change(s); "
        f"{tr.entered:,} new contact(s), {tr.left:,} gone"
    )
    entered = ", ".join(f"{stage} {n:,}" for stage, n in tr.into_counts().items())
    console.print(f"entered: {entered}")
    if len(tr.changes):
        matrix = tr.matrix()
        summary = Table(title="changes: from (rows) -> to (columns)")
        summary.add_column("from \\ to")
        for col in matrix.columns:
            summary.add_column(lit(col), justify="right")
        for name, row in matrix.iterrows():
            summary.add_row(lit(name), *(f"{int(v):,}" for v in row))
        console.print(summary)
        table = Table(title=f"first {min(limit, len(tr.changes))} by value at risk")
        for col in ("customer", "from", "to", "segment", "p_churn", "p_purchase", "value at risk"):
            table.add_column(col, justify="right" if col.startswith(("p_", "value")) else "left")
        shown = tr.changes.sort_values("value_at_risk", ascending=False).head(limit)
        for r in shown.itertuples(index=False):
            table.add_row(
                lit(r.customer_id),
                lit(r.from_stage),
                lit(r.to_stage),
                lit(f"{r.from_segment} -> {r.to_segment}"),
                "-" if r.p_churn != r.p_churn else f"{r.p_churn:.2f}",
                f"{r.p_purchase:.2f}",
                _money(r.value_at_risk, "{:,.2f}"),
            )
        console.print(table)
    if not post or not url:
        return
    try:
        result = deliver(c.paths, tr, url, c.params.serving)
    except WebhookError as err:
        fail(f"{err} (not recorded: rerun to retry)")
    if result.status == "skipped":
        console.print(f"webhook {escape(url)}: already delivered for this pair, not sent again")
    else:
        console.print(
            f"webhook {escape(url)}: delivered (HTTP {result.http_status}, "
            f"{result.attempts} attempt(s))"
        )


# ---------------------------------------------------------------------------- leads


@app.command("leads")
def leads_command(
    ctx: typer.Context,
    top: Annotated[int, typer.Option("--top", help="Number of SQLs.", min=1)] = 20,
    format_: FormatOption = "table",
    run: RunOption = None,
    funnel: Annotated[
        bool, typer.Option("--funnel", help="Also the MQL -> SQL -> SAL -> won funnel per run.")
    ] = False,
) -> None:
    """Sales-qualified leads (prospects in Purchase) by p_purchase, with reasons and actions."""
    from serving.at_risk import FORMATS, to_csv, to_json
    from serving.leads import lead_funnel, lead_list

    fmt = format_.lower()
    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, got {format_!r}")
    c = context(ctx)
    try:
        info, frame = lead_list(c.paths, c.params, top=top, run_id=run)
        counts = lead_funnel(c.paths, c.params) if funnel else None
    except (LookupError, ValueError, FileNotFoundError) as err:
        fail(str(err))
    if fmt == "csv":
        typer.echo(to_csv(frame), nl=False)
        return
    if fmt == "json":
        typer.echo(to_json(frame, info))
        return
    title = f"top {len(frame)} sales-qualified leads, run {info.run_id} ({info.as_of:%Y-%m-%d})"
    table = Table(title=title, show_lines=True)
    for col, justify in (
        ("customer", "left"),
        ("p_purchase", "right"),
        ("segment", "left"),
        ("SQL since", "right"),
        ("top reasons", "left"),
        ("suggested action", "left"),
    ):
        table.add_column(col, justify=justify, overflow="fold")
    for row in frame.itertuples(index=False):
        since = "new" if row.stage_runs <= 1 else f"{row.stage_runs} runs"
        table.add_row(
            row.customer_id,
            f"{row.p_purchase:.2f}",
            row.segment,
            since,
            escape("\n".join(f"- {r}" for r in row.reasons)),
            escape(row.action),
        )
    console.print(table)
    if frame.empty:
        console.print("[yellow]no prospect is in the Purchase stage[/yellow]")
    if counts is not None:
        f = Table(
            title=(
                f"lead funnel per run (SAL = {counts.accepted_event} within "
                f"{c.params.leads.accepted_within_days} days; won = SAL who bought within "
                f"{c.params.labels.horizon_days} days)"
            )
        )
        for col in ("run", "as of", "MQL", "SQL", "SAL", "won", "SQL bought", "complete"):
            f.add_column(col, justify="left" if col in ("run", "as of") else "right")
        for r in counts.table.itertuples(index=False):
            f.add_row(
                r.run_id,
                f"{r.as_of:%Y-%m-%d}",
                f"{r.mql:,}",
                f"{r.sql:,} ({_pct(r.sql_rate)})",
                f"{r.sal:,} ({_pct(r.sal_rate)})",
                f"{r.won:,} ({_pct(r.won_rate)})",
                f"{r.bought:,} ({_pct(r.bought_rate)})",
                "yes" if r.complete else "not yet",
            )
        console.print(f)
