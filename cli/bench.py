"""``engage bench cdnow``, ``hazard`` and ``backtest``: the models against baselines.

``cdnow``: the CDNOW 39-week holdout (``evaluation/cdnow.py``; ``python -m
benchmarks.bench_cdnow`` records it in BENCHMARKS.md). ``hazard``: the time-to-event
models on the demo data and CDNOW (``evaluation/hazard.py``; ``python -m
benchmarks.bench_hazard`` records it). ``backtest``: the whole public
pipeline at a grid of cut dates, judged on the period after each cut
(``evaluation/backtest.py``; ``python -m benchmarks.bench_backtest`` records it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.app import bench_app, context, fail
from cli.ui import console, progress


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


@bench_app.command("hazard")
def hazard_command(
    ctx: typer.Context,
    dataset: Annotated[
        str, typer.Option(help="demo (simulated), cdnow (real data) or both.")
    ] = "both",
    data_dir: Annotated[
        Path | None,
        typer.Option(help="The benchmark's own folder (default: <data dir>/bench_hazard)."),
    ] = None,
    demo_customers: Annotated[
        int, typer.Option(help="Contacts simulated for the demo part.", min=200)
    ] = 4000,
    cdnow_customers: Annotated[
        int | None, typer.Option(help="CDNOW: a random sample of this many customers.", min=200)
    ] = None,
    seed: Annotated[int, typer.Option(help="Simulation and sampling seed.")] = 42,
    out: Annotated[
        Path | None,
        typer.Option(help="Markdown report (default: <data dir>/reports/bench_hazard.md)."),
    ] = None,
) -> None:
    """Time-to-event (hazard) models vs fixed-horizon LightGBM, BG/NBD and Pareto/NBD."""
    from evaluation import hazard as bench

    c = context(ctx)
    datasets = {"both": ("demo", "cdnow"), "demo": ("demo",), "cdnow": ("cdnow",)}.get(dataset)
    if datasets is None:
        fail(f"--dataset must be one of demo, cdnow, both, got {dataset!r}")
    folder = data_dir or c.paths.data_dir / "bench_hazard"
    out = out or c.paths.reports_dir / "bench_hazard.md"
    began = time.perf_counter()
    try:
        result = bench.run_hazard_benchmark(
            folder,
            datasets=datasets,
            demo_customers=demo_customers,
            cdnow_customers=cdnow_customers,
            seed=seed,
            plot=out.with_name("bench_hazard_tracking.png") if "cdnow" in datasets else None,
            progress=lambda m: console.print(
                f"[dim]{time.perf_counter() - began:6.1f} s[/dim] {escape(m)}"
            ),
        )
    except (FileNotFoundError, ImportError, ValueError) as err:
        fail(str(err))
    table = Table(title="hazard model: one fit, every horizon")
    for col in ("data", "model", "horizon", "method", "ROC-AUC", "Brier", "ECE"):
        table.add_column(col, justify="right" if col[0].isupper() else "left")
    for model, r in (result["demo"] or {}).get("models", {}).items():
        for h, ms in r["metrics"].items():
            for m in ("hazard", "fixed"):
                x = ms[m]
                table.add_row(
                    "demo",
                    model,
                    f"{h} d",
                    m,
                    f"{x['roc_auc']:.3f}",
                    f"{x['brier']:.4f}",
                    f"{x['ece']:.3f}",
                )
    if result["cdnow"]:
        for h, ms in result["cdnow"]["tables"]["probability"].items():
            for m, x in ms.items():
                table.add_row(
                    "cdnow",
                    "appetence",
                    f"{h // 7} w",
                    m,
                    f"{x['roc_auc']:.3f}",
                    f"{x['brier']:.4f}",
                    f"{x['ece']:.3f}",
                )
    console.print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(bench.report_markdown(result) + "\n", encoding="utf-8")
    console.print(f"report: {escape(str(out))}")
    console.print(f"[dim]{result['seconds']:.0f} s, peak RSS {result['peak_rss_mb']:,.0f} MB[/dim]")


def _split_list(values: list[str] | None) -> list[str]:
    """``--cuts w16,w20 --cuts 1997-06-01`` -> ``["w16", "w20", "1997-06-01"]``."""
    return [v.strip() for item in values or () for v in item.split(",") if v.strip()]


def _root_layers(ctx: typer.Context, dataset: str):
    """The ``--profile``/``--params``/``--set`` the user gave ``engage``, for every cell."""
    from evaluation.backtest import Layers

    root = ctx.find_root().params
    profile = root.get("profile")
    if dataset == "cdnow":
        if profile not in (None, "cdnow"):
            fail(f"the cdnow backtest runs with --profile cdnow, got --profile {profile}")
        profile = "cdnow"
    params_file = root.get("params_file")
    return Layers(
        profile=profile,
        params_file=Path(params_file).expanduser().resolve() if params_file else None,
        sets=tuple(root.get("set_") or ()),
    )


def _cell_line(doc: dict) -> str:
    from evaluation.backtest import horizon_label

    head = f"{doc['cut'][:10]} + {horizon_label(int(doc['horizon_days']))}"
    if doc.get("status") != "ok":
        return f"[yellow]{head}: {doc.get('status')} at {doc.get('step')}[/yellow]: " + escape(
            str(doc.get("error"))
        )
    parts = []
    for name, m in doc["models"].items():
        if m.get("status") != "ok":
            parts.append(f"{name} {m.get('status')}")
            continue
        d = m["difference"]["roc_auc"]
        color = {"win": "green", "loss": "red"}.get(m["verdict"], "white")
        parts.append(
            f"{name} [{color}]{m['verdict']}[/{color}] ({d['value']:+.3f} vs {m['best_baseline']})"
        )
    return f"{head}: " + ", ".join(parts)


@bench_app.command("backtest")
def backtest_command(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option(help="cdnow (real data) or demo (simulated).")],
    cuts: Annotated[
        list[str] | None,
        typer.Option(
            help="Cut dates, YYYY-MM-DD or wN (N weeks after the data set's start); comma-"
            "separated or repeated. Default: cdnow w16..w52 every 4 weeks, demo w26..w46.",
        ),
    ] = None,
    horizons: Annotated[
        list[str] | None,
        typer.Option(
            help="Label horizons: 28, 28d or 4w; comma-separated or repeated. "
            "Default: cdnow 4w,13w,26w; demo 30d.",
        ),
    ] = None,
    customers: Annotated[
        int | None,
        typer.Option(
            help="cdnow: a random sample of this many customers; demo: contacts simulated.",
            min=50,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Sampling seed (cdnow, default 42) or simulation seed (demo)."),
    ] = None,
    jobs: Annotated[int, typer.Option(help="Cells whose pipelines run at once.", min=1)] = 1,
    fresh: Annotated[
        bool, typer.Option(help="Recompute the cells cached in the backtest's folder.")
    ] = False,
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples per comparison.", min=100)
    ] = 1000,
    export_format: Annotated[
        str, typer.Option("--export", help="Format of the events export: parquet or csv.")
    ] = "parquet",
    folder: Annotated[
        Path | None,
        typer.Option(help="The backtest's folder (default: <data dir>/backtest/<dataset>)."),
    ] = None,
) -> None:
    """Rolling-origin backtest: the pipeline at each cut, judged on the period after it."""
    from engage.config import ConfigError
    from evaluation import backtest as bt

    c = context(ctx)
    if dataset not in bt.DATASETS:
        fail(f"--dataset must be one of {', '.join(bt.DATASETS)}, got {dataset!r}")
    if export_format not in bt.EXPORT_FORMATS:
        fail(f"--export must be one of {', '.join(bt.EXPORT_FORMATS)}, got {export_format!r}")
    layers = _root_layers(ctx, dataset)
    folder = (folder or c.paths.data_dir / "backtest" / dataset).expanduser().resolve()
    try:
        base = layers.params(c.params.labels.horizon_days)
        with console.status(f"{dataset}: preparing the full event log"):
            if dataset == "cdnow":
                log = bt.prepare_cdnow(folder / "full", customers, 42 if seed is None else seed)
            else:
                log = bt.prepare_demo(folder / "full", base, customers, seed)
        grid = bt.default_grid(dataset)
        cut_list = [bt.parse_cut(x, log.origin) for x in _split_list(cuts)] or bt.weekly_cuts(
            log.origin, grid.cut_weeks
        )
        horizon_list = [bt.parse_horizon(x) for x in _split_list(horizons)] or list(
            grid.horizon_days
        )
        for h in sorted(set(horizon_list)):
            layers.params(h)  # every layer valid with every horizon, before any work
        cells, skipped = bt.plan_cells(cut_list, horizon_list, log.first_event, log.end)
    except (bt.BacktestError, ConfigError, FileNotFoundError, ImportError) as err:
        fail(str(err))
    console.print(
        f"{dataset}: {log.n_contacts:,} contacts, {log.n_events:,} events "
        f"({log.first_event:%Y-%m-%d} .. {log.end:%Y-%m-%d}); {len(cells)} cells to run, "
        f"{len(skipped)} skipped; folder {folder}"
    )
    for sk in skipped:
        console.print(
            f"[dim]skipped {sk.cell.cut:%Y-%m-%d} + {bt.horizon_label(sk.cell.horizon_days)}: "
            f"{escape(sk.reason)}[/dim]"
        )
    if not cells:
        fail("no cell of the grid can run (see the skipped cells above)")

    with progress() as bar:
        task = bar.add_task("backtest", total=len(cells))

        def on_event(e) -> None:
            if e.kind == "step":
                bar.update(task, description=f"{e.cell.key}: {e.text}")
            elif e.kind in ("done", "cached"):
                bar.advance(task)

        try:
            result = bt.run_backtest(
                log,
                cells,
                folder,
                layers,
                skipped=skipped,
                jobs=jobs,
                fresh=fresh,
                n_boot=bootstrap,
                seed=base.training.seed,
                export_format=export_format,
                progress=on_event,
            )
        except (bt.BacktestError, ConfigError) as err:
            fail(str(err))
    for doc in result.cells:
        console.print(_cell_line(doc))
    table = Table(title=f"backtest {dataset}: champion vs the best baseline after each cut")
    for col in ("cut", "H", "model", "n", "pos", "champion AUC", "best baseline", "Δ AUC [95% CI]"):
        table.add_column(
            col,
            justify="left" if col in ("cut", "model", "best baseline") else "right",
            no_wrap=col in ("cut", "Δ AUC [95% CI]"),
        )
    table.add_column("verdict", overflow="fold")
    for r in bt.table_rows(result):
        auc = r.champion_auc.split(" [")[0]
        base = (
            "–" if r.best_baseline == "–" else f"{r.best_baseline} {r.baseline_auc.split(' [')[0]}"
        )
        champ = "–" if auc == "–" else f"{r.champion_kind} {auc}"
        table.add_row(
            r.cut,
            r.horizon,
            r.model,
            r.contacts,
            r.positive_rate,
            champ,
            base,
            r.difference,
            escape(r.verdict),
        )
    console.print(table)
    s = bt.summary(result)
    mean = "" if s["mean_difference"] is None else f", mean Δ ROC-AUC {s['mean_difference']:+.3f}"
    console.print(
        f"[bold]{s['win']} wins, {s['tie']} ties, {s['loss']} losses[/bold] in "
        f"{s['compared']} comparisons{mean}; {s['failed_cells']} cells without a model, "
        f"{s['skipped_cells']} skipped"
    )
    report = folder / "report.md"
    report.write_text(bt.report_markdown(result) + "\n", encoding="utf-8")
    console.print(
        f"report: {report}; {result.computed} cells computed, {result.cached} from the cache, "
        f"{result.seconds:.0f} s"
    )
