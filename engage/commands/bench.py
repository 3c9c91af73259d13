"""``engage bench cdnow``: the real-data benchmark on CDNOW's 39-week holdout.

The logic lives in ``benchmarks/bench_cdnow.py`` (also runnable as
``python -m benchmarks.bench_cdnow``); :func:`register` adds the command to the
``bench`` group of the main app. ``ctx.obj`` is ``engage.cli.Context``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from engage.cli import Context

console = Console()


def _bench_module() -> ModuleType:
    try:
        from benchmarks import bench_cdnow
    except ModuleNotFoundError as err:
        if err.name != "benchmarks":
            raise
        # benchmarks/ is a folder of the checkout, not part of the installed package,
        # and the `engage` console script does not put the project root on sys.path.
        from engage.config import PROJECT_ROOT

        sys.path.insert(0, str(PROJECT_ROOT))
        from benchmarks import bench_cdnow
    return bench_cdnow


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
    write: Annotated[bool, typer.Option(help="Write the cdnow section of BENCHMARKS.md.")] = True,
) -> None:
    """CDNOW: predict repeat buyers of the 39-week holdout vs BG/NBD and heuristics."""
    from engage.config import load_params

    c: Context = ctx.obj
    bench = _bench_module()
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
        console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(1) from None

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
    if write:
        command = "engage bench cdnow"
        if customers is not None:
            command += f" --customers {customers} --seed {seed}"
        if not rehearsal:
            command += " --no-rehearsal"
        console.print(f"wrote {bench.write_report(result, command)}")
    console.print(f"[dim]{result['seconds']:.0f} s, peak RSS {result['peak_rss_mb']:,.0f} MB[/dim]")


def register(bench_app: typer.Typer) -> None:
    """Add ``cdnow`` to the ``bench`` group; idempotent."""
    if "cdnow" not in {c.name for c in bench_app.registered_commands}:
        bench_app.command("cdnow")(cdnow_command)
