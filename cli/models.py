"""``engage train``: fit, evaluate against baselines, register, gate."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.app import Context, app, context, fail
from cli.ui import console, lit, progress
from engage.specs import MODEL_NAMES


def close_orphan_runs(paths) -> list[str]:
    """Mark FAILED the MLflow runs left RUNNING by a killed ``engage train``.

    Only call this holding the models lock: then no other training is running, so a
    RUNNING run is one whose process died. Returns their ids.
    """
    from mlflow.entities import RunStatus, ViewType

    from training.registry import setup_mlflow

    client = setup_mlflow(paths)
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not ids:
        return []
    running = client.search_runs(ids, "attributes.status = 'RUNNING'", ViewType.ALL)
    for run in running:
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
    return [r.info.run_id for r in running]


def train_models(c: Context, model: str, force: bool = True) -> list:
    """Train ``model`` (or every model for ``all``), printing each test table and gate.

    Holds the models lock (one training at a time per MLflow store) and the features
    and events locks shared (no build or ingest changes the inputs meanwhile). Without
    ``force``, a model whose champion or latest version was trained on the same events
    with the same parameters is not trained again (it would register a copy of itself).
    """
    from engage.data.store import reading
    from engage.locks import MODELS, StoreBusyError, store_lock
    from features.snapshots import features_lock

    timeout = c.params.data.lock_timeout_s
    try:
        with (
            store_lock(c.paths.mlruns_dir, MODELS, timeout=timeout),
            features_lock(c.paths.features_dir, timeout=timeout, shared=True),
            reading(c.paths.events, timeout=timeout),
        ):
            orphans = close_orphan_runs(c.paths)
            if orphans:
                console.print(
                    f"[yellow]note:[/yellow] {len(orphans)} MLflow run(s) left running by an "
                    "interrupted training marked FAILED"
                )
            names = list(MODEL_NAMES) if model == "all" else [model]
            if not force and c.paths.events.exists():
                # Without events training fails with its own message (what to run).
                names = _needing_training(c, names)
            return _train(c, names)
    except StoreBusyError as err:
        fail(str(err))


def _needing_training(c: Context, names: list[str]) -> list[str]:
    """The models among ``names`` whose data or parameters changed since their last version."""
    from monitoring.retrain import training_plan

    plan = {d.model: d for d in training_plan(c.paths, c.params)}
    out = []
    for name in names:
        decision = plan[name]
        if decision.train:
            out.append(name)
        else:
            # "v3 was trained on these events with these parameters"
            version = decision.reason.split(" ", 1)[0]
            console.print(
                f"{name}: identical to {lit(version)} (same events, same training "
                "parameters), not registered (--force to train anyway)",
                soft_wrap=True,
            )
    return out


STAGES = ("training set from Feast", "leakage audit", "LightGBM and baselines, refit", "MLflow")


def _train(c: Context, names: list[str]) -> list:
    from engage.faults import fault_point
    from training.fit_evaluate import DISPLAY
    from training.progress import watch_rounds
    from training.train import train_model

    results = []
    rounds_total = c.params.training.lightgbm.n_estimators
    for i, name in enumerate(names):
        if i:
            fault_point("train:between_models")
        with progress() as bar:
            stage = bar.add_task(f"{name}: starting", total=len(STAGES))
            rounds = bar.add_task(f"{name}: boosting rounds", total=rounds_total, visible=False)

            def say(message: str, n=name, task=stage) -> None:
                done = STAGES.index(message) if message in STAGES else None
                bar.update(task, description=f"{n}: {message}", completed=done)

            def tick(k: int, total: int, task=rounds) -> None:
                bar.update(task, completed=k, total=total, visible=True)

            try:
                with watch_rounds(tick):
                    result = train_model(c.paths, c.params, name, progress=say)
            except (FileNotFoundError, ValueError, LookupError) as err:
                bar.stop()
                fail(f"{name}: {err}")
            # Early stopping ends the rounds before the total: the bar says where.
            fitted = getattr(result.lightgbm or result.engage_model, "booster", None)
            if fitted is not None:
                best = fitted.current_iteration()
                bar.update(rounds, description=f"{name}: {best} trees kept (early stopping)")
            bar.update(stage, description=f"{name}: done", completed=len(STAGES))
        results.append(result)
        table = Table(
            title=f"{name} v{lit(result.version)} -> @{result.alias} ({result.kind}; test period)"
        )
        for col in (
            "method",
            "ROC-AUC",
            "PR-AUC",
            "prec@10%",
            "log loss",
            "Brier",
            "ECE",
            "lift@10%",
        ):
            table.add_column(col, justify="right" if col != "method" else "left")
        for who, m in result.metrics.items():
            label = DISPLAY.get(who, who) + (" (served)" if who == result.chosen else "")
            table.add_row(
                lit(label),
                f"{m['roc_auc']:.4f}",
                f"{m['pr_auc']:.4f}",
                f"{m['precision_top_decile']:.3f}",
                *(f"{m[k]:.4f}" if k in m else "-" for k in ("log_loss", "brier", "ece")),
                f"{m['lift_top_decile']:.2f}",
            )
        console.print(table)
        style = "green" if result.chosen == "model" else "bold yellow"
        console.print(f"[{style}]selection: {escape(result.selection)}[/{style}]")
        console.print(f"gate: {escape(result.reason)}")
        console.print(split_table(name, result.ranges))
        model_facts = result.engage_model.training
        if model_facts.get("refit"):
            console.print(
                f"[dim]refit on {model_facts['refit_rows']:,} rows, as-of "
                f"{escape(model_facts['refit_as_of'])}[/dim]"
            )
        for line in result.warnings:
            console.print(f"[yellow]warning: {escape(line)}[/yellow]")
    return results


def split_table(name: str, ranges: dict[str, str]) -> Table:
    """The train / valid / test split as a table: part, as-of times, rows."""
    table = Table(title=f"{name}: split by as-of time (purged)")
    table.add_column("part")
    table.add_column("as-of times")
    table.add_column("rows", justify="right")
    for part, text in ranges.items():
        # "2025-01-07..2025-06-03 (3,787 rows)"
        span, _, rows = str(text).partition(" (")
        table.add_row(lit(part), lit(span), lit(rows.removesuffix(" rows)").removesuffix(")")))
    return table


@app.command("train")
def train(
    ctx: typer.Context,
    model: Annotated[
        str,
        typer.Option(help=f"{', '.join(MODEL_NAMES)} or all.", case_sensitive=False),
    ] = "all",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Train even when a registered version was trained on the same events with "
            "the same parameters (otherwise: 'identical', nothing registered).",
        ),
    ] = False,
) -> None:
    """Train, evaluate against baselines, register in MLflow, apply the promotion gate."""
    if model not in (*MODEL_NAMES, "all"):
        fail(f"--model must be {', '.join(MODEL_NAMES)} or all, got {model!r}")
    train_models(context(ctx), model, force=force)
