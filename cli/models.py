"""``engage train``: fit, evaluate against baselines, register, gate."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.app import Context, app, context, fail
from cli.ui import console
from engage.specs import MODEL_NAMES


def train_models(c: Context, model: str) -> list:
    """Train ``model`` (or every model for ``all``), printing each test table and gate."""
    from training.fit_evaluate import DISPLAY
    from training.train import train_model

    names = list(MODEL_NAMES) if model == "all" else [model]
    results = []
    for name in names:
        with console.status(f"training {name}") as status:
            try:
                result = train_model(
                    c.paths, c.params, name, progress=lambda m, n=name: status.update(f"{n}: {m}")
                )
            except (FileNotFoundError, ValueError, LookupError) as err:
                fail(f"{name}: {err}")
        results.append(result)
        table = Table(
            title=f"{name} v{result.version} -> @{result.alias} ({result.kind}; test period)"
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
                label,
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
        console.print(f"[dim]split: {result.ranges}[/dim]")
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
