"""``engage bench cdnow``: the models against BG/NBD and simple rules on real data.

The evaluation lives in ``evaluation/cdnow.py``; ``python -m benchmarks.bench_cdnow``
runs the same and records it in BENCHMARKS.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.app import bench_app, context, fail
from cli.ui import console


@bench_app.command("cdnow")
def cdnow_command(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="The benchmark's own folder (default: <data dir>/bench_cdnow)."),
    ] = None,
    customers: Annotated[
        int | None, typer.Option(help="Run on a random sample of this many customers.", min=50)
    ] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 42,
    rehearsal: Annotated[
        bool, typer.Option(help="Also run the recipe inside the calibration period.")
    ] = True,
    out: Annotated[
        Path | None,
        typer.Option(help="Markdown report to write (default: <data dir>/reports/bench_cdnow.md)."),
    ] = None,
) -> None:
    """CDNOW: predict repeat buyers of the 39-week holdout vs BG/NBD and heuristics."""
    from engage.config import load_params
    from evaluation import cdnow as bench

    c = context(ctx)
    params = c.params
    if params.profile != "cdnow":
        # The split, horizons and validation are CDNOW's: use its profile.
        params = load_params(profile="cdnow")
        console.print("[dim]using the cdnow profile of params.yaml[/dim]")
    folder = data_dir or c.paths.data_dir / "bench_cdnow"
    began = time.perf_counter()
    try:
        result = bench.run_cdnow_benchmark(
            folder,
            customers=customers,
            seed=seed,
            params=params,
            rehearsal=rehearsal,
            progress=lambda m: console.print(
                f"[dim]{time.perf_counter() - began:6.1f} s[/dim] {escape(m)}"
            ),
        )
    except (FileNotFoundError, ImportError) as err:
        fail(str(err))

    h = result["holdout"]
    table = Table(title=f"CDNOW 39-week holdout, {h['customers']:,} customers")
    for col in ("method", "ROC-AUC", "PR-AUC", "Brier", "ECE", "predicted buyers"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name in bench.METHODS:
        m = h["metrics"][name]
        table.add_row(
            name,
            f"{m['roc_auc']:.3f}",
            f"{m['pr_auc']:.3f}",
            *(f"{m[k]:.3f}" if k in m else "-" for k in ("brier", "ece")),
            f"{m['predicted_share']:.1%}" if "predicted_share" in m else "-",
        )
    console.print(table)
    console.print(f"actual buyers: {h['metrics']['model']['observed_share']:.1%}")
    out = out or c.paths.reports_dir / "bench_cdnow.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(bench.report_markdown(result), encoding="utf-8")
    console.print(f"report: {escape(str(out))}")
    console.print(f"[dim]{result['seconds']:.0f} s, peak RSS {result['peak_rss_mb']:,.0f} MB[/dim]")
