"""``engage monitor`` (did the predictions come true? drift, alerts) and ``engage retrain``.

Exit codes, for a scheduler: 0 nothing crossed an alert threshold; 3 (``ALERT_EXIT_CODE``)
an alert threshold was crossed; 1 an error (no runs, no events, ...); 2 invalid
parameters. ``engage retrain`` exits as the monitor it ends with.
"""

from __future__ import annotations

import json
import math
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.app import Context, app, context, fail, step
from cli.ui import console

FORMATS = ("table", "json")


def _num(x, fmt: str = "{:.3f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return fmt.format(x)


def _pct(x) -> str:
    return _num(x, "{:.1%}")


def run_monitor(c: Context, log: bool = True):
    """Compute the monitoring report (with a status line) and log it to MLflow."""
    from monitoring.monitor import monitor
    from monitoring.tracking import log_report

    with console.status("monitoring") as status:
        try:
            report = monitor(c.paths, c.params, progress=lambda m: status.update(m))
        except (FileNotFoundError, LookupError, ValueError) as err:
            fail(str(err))
        logged = log_report(c.paths, c.params, report) if log else []
    return report, logged


def print_report(report, logged: list[str], experiment: str) -> None:
    """The report as rich tables: outcomes, at-risk hits, stages, drift, alerts."""
    frame = report.outcome_frame()
    console.print(
        f"events observed until {report.observed_until:%Y-%m-%d}; {len(report.runs)} scoring "
        f"run(s); champions {report.champions or 'none'}"
    )
    if not frame.empty:
        table = Table(title="did it come true? realised outcome per scoring run and model")
        for col in (
            "model",
            "run (as-of)",
            "window",
            "rows",
            "predicted",
            "realised",
            "ROC-AUC (test)",
            "PR-AUC",
            "Brier",
            "ECE",
        ):
            table.add_column(col, justify="left" if col in ("model", "run (as-of)") else "right")
        for r in frame.itertuples(index=False):
            window = r.status if r.status != "partial" else f"partial {r.observed_share:.0%}"
            style = None if r.status == "complete" else "dim"
            table.add_row(
                f"{r.model} v{r.version}",
                f"{r.run_id} ({r.as_of:%Y-%m-%d})",
                window,
                f"{r.evaluated:,}",
                _pct(r.predicted_rate),
                _pct(r.realised_rate),
                f"{_num(r.roc_auc)} ({_num(r.test_roc_auc)})",
                _num(r.pr_auc),
                _num(r.brier, "{:.4f}"),
                _num(r.ece, "{:.4f}"),
                style=style,
            )
        console.print(table)
        console.print(
            "[dim]partial windows show the days observed so far (a churn label then means "
            "'quiet so far'): they are never final[/dim]"
        )
        hits = frame[frame.get("at_risk_listed", 0) > 0] if "at_risk_listed" in frame else None
        if hits is not None and not hits.empty:
            t = Table(title="at-risk list: of the top N by value at risk, how many churned")
            for col in ("run (as-of)", "window", "listed", "labelled", "churned", "hit rate"):
                t.add_column(col, justify="left" if col.startswith("run") else "right")
            for col in ("base rate", "lift", "value at risk", "CLV of churned"):
                t.add_column(col, justify="right")
            for r in hits.itertuples(index=False):
                t.add_row(
                    f"{r.run_id} ({r.as_of:%Y-%m-%d})",
                    r.status if r.status != "partial" else f"partial {r.observed_share:.0%}",
                    f"{r.at_risk_listed:,.0f}",
                    f"{r.at_risk_labelled:,.0f}",
                    f"{r.at_risk_churned:,.0f}",
                    _pct(r.at_risk_hit_rate),
                    _pct(r.at_risk_base_rate),
                    _num(r.at_risk_lift, "{:.2f}"),
                    _num(r.at_risk_value_at_risk_listed, "{:,.0f}"),
                    _num(r.at_risk_clv_churned, "{:,.0f}"),
                )
            console.print(t)
        stage_cols = [c for c in frame.columns if c.startswith("stage_rate_")]
        if stage_cols:
            t = Table(title="realised rate per stage (positive stage against the other)")
            t.add_column("model")
            t.add_column("run (as-of)")
            for col in stage_cols:
                t.add_column(col.removeprefix("stage_rate_"), justify="right")
            t.add_column("lift", justify="right")
            for r in frame.itertuples(index=False):
                values = [getattr(r, col) for col in stage_cols]
                if all(isinstance(v, float) and math.isnan(v) for v in values):
                    continue
                t.add_row(
                    r.model,
                    f"{r.run_id} ({r.as_of:%Y-%m-%d})",
                    *(_pct(v) for v in values),
                    _num(r.stage_lift, "{:.2f}"),
                )
            console.print(t)
    for d in report.feature_drift:
        if d.table.empty:
            console.print(
                f"[yellow]{d.model}: feature drift not computed: {escape(d.note)}[/yellow]"
            )
            continue
        t = Table(
            title=f"feature drift, {d.model} v{d.version}: reference {d.reference} "
            f"({d.reference_rows:,} rows) -> snapshot {d.current:%Y-%m-%d} ({d.current_rows:,})"
        )
        for col in ("feature", "PSI", "level", "gain share", "median train", "median now"):
            t.add_column(col, justify="left" if col in ("feature", "level") else "right")
        shown = d.table[d.table["level"] != "ok"]
        if len(shown) < 5:
            shown = d.table.head(5)
        for r in shown.itertuples(index=False):
            t.add_row(
                r.feature,
                _num(r.psi),
                r.level,
                _pct(r.importance),
                _num(r.ref_median, "{:.3g}"),
                _num(r.cur_median, "{:.3g}"),
                style={"alert": "red", "warn": "yellow"}.get(r.level),
            )
        console.print(t)
        hidden = len(d.table) - len(shown)
        if hidden:
            console.print(f"[dim]{hidden} more feature(s) below monitoring.psi_warn[/dim]")
    if not report.score_drift.empty:
        t = Table(title="score and stage drift between consecutive runs (last 6)")
        for col in ("to run (as-of)", "models changed", "score", "PSI", "level"):
            t.add_column(col)
        rows = report.score_drift.tail(6 * 2)
        for r in rows.itertuples(index=False):
            t.add_row(
                f"{r.to_run} ({r.to_as_of:%Y-%m-%d})",
                "yes" if r.models_changed else "no",
                r.score,
                _num(r.psi),
                r.level,
            )
        for r in report.stage_drift.tail(6).itertuples(index=False):
            t.add_row(
                f"{r.to_run} ({r.to_as_of:%Y-%m-%d})",
                "yes" if r.models_changed else "no",
                "stages",
                _num(r.psi),
                r.level,
            )
        console.print(t)
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}")
    for a in report.alerts:
        colour = "red" if a.level == "alert" else "yellow"
        console.print(f"[{colour}]{a.level}:[/{colour}] {escape(a.message)}")
    if logged:
        console.print(f"MLflow: {len(logged)} new run(s) in experiment {experiment!r}")
    code = report.exit_code
    verdict = "alert threshold crossed" if code else "no alert threshold crossed"
    console.print(f"[bold]{verdict}[/bold] (exit {code})")


def report_json(report) -> str:
    """The report as JSON: outcomes, feature drift, run drift, alerts, exit code."""
    frame = report.outcome_frame()
    doc = {
        "observed_until": report.observed_until.isoformat(),
        "champions": report.champions,
        "exit_code": report.exit_code,
        "alerts": [a.__dict__ for a in report.alerts],
        "outcomes": json.loads(frame.to_json(orient="records", date_format="iso")),
        "feature_drift": [
            {
                "model": d.model,
                "version": d.version,
                "reference": d.reference,
                "current": None if d.current is None else d.current.isoformat(),
                "note": d.note,
                "features": json.loads(d.table.to_json(orient="records")),
            }
            for d in report.feature_drift
        ],
        "score_drift": json.loads(report.score_drift.to_json(orient="records", date_format="iso")),
        "stage_drift": json.loads(report.stage_drift.to_json(orient="records", date_format="iso")),
        "notes": report.notes,
    }
    return json.dumps(doc, indent=2, default=str)


@app.command("monitor")
def monitor_command(
    ctx: typer.Context,
    log: Annotated[
        bool, typer.Option("--log/--no-log", help="Log the new results to MLflow.")
    ] = True,
    format_: Annotated[
        str, typer.Option("--format", help="table or json.", case_sensitive=False)
    ] = "table",
) -> None:
    """Did the predictions come true? Realised outcomes of past runs, drift; exit 3 on alert."""
    fmt = format_.lower()
    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, got {format_!r}")
    c = context(ctx)
    report, logged = run_monitor(c, log)
    if fmt == "json":
        typer.echo(report_json(report))
    else:
        print_report(report, logged, c.params.monitoring.experiment)
    raise typer.Exit(report.exit_code)


def score_latest(c: Context) -> str:
    """Score the latest snapshot with the champions, unless that run is already stored."""
    from features.snapshots import pick_snapshot
    from serving.champions import load_champions
    from serving.runs import run_path
    from serving.scoring import planned_run_id, score
    from serving.timing import load_timing

    try:
        snap = pick_snapshot(c.paths.features_dir)
        champions = load_champions(c.paths, c.params)
        # The hazard models count in the run id too: load them once for both.
        timing = load_timing(c.paths, c.params)
        run_id = planned_run_id(c.paths, c.params, snap.as_of, champions.identity, timing)
        if run_path(c.paths, run_id).exists():
            console.print(f"run {run_id}: already scored (same snapshot, models and rules)")
            return run_id
        with console.status(f"scoring {snap.as_of:%Y-%m-%d}"):
            run = score(c.paths, c.params, champions=champions, timing=timing)
    except (FileNotFoundError, LookupError, ValueError) as err:
        fail(str(err))
    console.print(f"run {run.run_id}: {run.rows:,} contacts, stages {run.stages}")
    return run.run_id


@app.command("retrain")
def retrain_command(
    ctx: typer.Context,
    force: Annotated[
        bool, typer.Option("--force", help="Train even if events and parameters are unchanged.")
    ] = False,
    log: Annotated[
        bool, typer.Option("--log/--no-log", help="Log the monitoring results to MLflow.")
    ] = True,
) -> None:
    """The loop: features build, train (gate), score, monitor. Idempotent; exit 3 on alert."""
    from cli.features import build_features
    from cli.models import train_models
    from monitoring.retrain import training_plan

    c = context(ctx)
    if not c.paths.events.exists():
        fail(f"no events at {c.paths.events}: run `engage data simulate` or `engage data ingest`")
    with step("1. features"):
        build_features(c, None)
    with step("2. models"):
        try:
            plan = training_plan(c.paths, c.params, force)
        except (FileNotFoundError, LookupError, ValueError) as err:
            fail(str(err))
        for d in plan:
            if d.train:
                console.print(f"{d.model}: training ({escape(d.reason)})")
                train_models(c, d.model)
            else:
                console.print(f"{d.model}: not retrained: {escape(d.reason)}")
    with step("3. scoring"):
        score_latest(c)
    with step("4. monitoring"):
        report, logged = run_monitor(c, log)
        print_report(report, logged, c.params.monitoring.experiment)
    raise typer.Exit(report.exit_code)
