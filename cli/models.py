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
        table = Table(title=f"{name} v{result.version} -> @{result.alias} (test period)")
        for col in ("method", "ROC-AUC", "PR-AUC", "log loss", "Brier", "ECE", "lift@10%"):
            table.add_column(col, justify="right" if col != "method" else "left")
        for who, m in result.metrics.items():
            table.add_row(
                who,
                f"{m['roc_auc']:.4f}",
                f"{m['pr_auc']:.4f}",
                *(f"{m[k]:.4f}" if k in m else "-" for k in ("log_loss", "brier", "ece")),
                f"{m['lift_top_decile']:.2f}",
            )
        console.print(table)
        console.print(f"gate: {escape(result.reason)}")
        console.print(f"[dim]split: {result.ranges}[/dim]")
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
