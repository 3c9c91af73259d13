"""``engage train``: fit, evaluate against baselines, register, gate."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.app import Context, app, context, fail
from cli.ui import console, lit
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


def train_models(c: Context, model: str) -> list:
    """Train ``model`` (or every model for ``all``), printing each test table and gate.

    Holds the models lock (one training at a time per MLflow store) and the features
    and events locks shared (no build or ingest changes the inputs meanwhile).
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
            return _train(c, model)
    except StoreBusyError as err:
        fail(str(err))


def _train(c: Context, model: str) -> list:
    from engage.faults import fault_point
    from training.fit_evaluate import DISPLAY
    from training.train import train_model

    names = list(MODEL_NAMES) if model == "all" else [model]
    results = []
    for i, name in enumerate(names):
        if i:
            fault_point("train:between_models")
        with console.status(f"training {name}") as status:
            try:
                result = train_model(
                    c.paths, c.params, name, progress=lambda m, n=name: status.update(f"{n}: {m}")
                )
            except (FileNotFoundError, ValueError, LookupError) as err:
                fail(f"{name}: {err}")
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
        model_facts = result.engage_model.training
        if model_facts.get("refit"):
            console.print(
                f"[dim]refit on {model_facts['refit_rows']:,} rows, as-of "
                f"{escape(model_facts['refit_as_of'])}[/dim]"
            )
        console.print(f"[dim]split: {lit(result.ranges)}[/dim]")
        for line in result.warnings:
            console.print(f"[yellow]warning: {escape(line)}[/yellow]")
    return results


@app.command("train")
def train(
    ctx: typer.Context,
    model: Annotated[
        str,
        typer.Option(help=f"{', '.join(MODEL_NAMES)} or all.", case_sensitive=False),
    ] = "all",
) -> None:
    """Train, evaluate against baselines, register in MLflow, apply the promotion gate."""
    if model not in (*MODEL_NAMES, "all"):
        fail(f"--model must be {', '.join(MODEL_NAMES)} or all, got {model!r}")
    train_models(context(ctx), model)
