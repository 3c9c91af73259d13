"""Record the rolling-origin backtests (``evaluation/backtest.py``) in BENCHMARKS.md.

Runs ``engage bench backtest`` on CDNOW (cuts every 4 weeks from week 16 to week 52 of
1997, horizons of 4, 13 and 26 weeks) and on the demo data (6 cuts, 30-day horizon) and
writes both tables, their summaries and the run times into the ``backtest`` section.
Finished cells are cached in ``<data dir>/backtest/<dataset>/``: a rerun only computes
what is missing (``--fresh`` recomputes everything).

    .venv/bin/python -m benchmarks.bench_backtest [--datasets cdnow,demo] [--customers N]
        [--jobs 1] [--fresh] [--no-write] [--weeks demo=26,34,42,46]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.report import write_section
from engage.config import load_params, resolve_paths
from evaluation import backtest as bt

COMMAND = ".venv/bin/python -m benchmarks.bench_backtest"


def run_dataset(
    dataset: str,
    customers: int | None,
    jobs: int,
    fresh: bool,
    folder: Path | None,
    weeks: dict[str, tuple[int, ...]] | None = None,
) -> bt.BacktestResult:
    """The grid of ``dataset`` (default, or ``weeks[dataset]`` as cut weeks), one line a cell."""
    layers = bt.Layers(profile="cdnow" if dataset == "cdnow" else None)
    base = layers.params(30)
    folder = folder or resolve_paths(load_params()).data_dir / "backtest" / dataset
    if dataset == "cdnow":
        log = bt.prepare_cdnow(folder / "full", customers, 42)
    else:
        log = bt.prepare_demo(folder / "full", base, customers, None)
    grid = bt.default_grid(dataset)
    cut_weeks = (weeks or {}).get(dataset) or grid.cut_weeks
    cells, skipped = bt.plan_cells(
        bt.weekly_cuts(log.origin, cut_weeks), grid.horizon_days, log.first_event, log.end
    )
    began = time.perf_counter()
    print(f"{dataset}: {len(cells)} cells, {len(skipped)} skipped, folder {folder}", flush=True)
    for sk in skipped:
        print(f"  skipped {sk.cell.key}: {sk.reason}", flush=True)

    def on_event(e: bt.Event) -> None:
        if e.kind in ("done", "cached"):
            print(
                f"[{time.perf_counter() - began:7.0f} s] {e.kind} {e.cell.key}: {e.text}",
                flush=True,
            )

    return bt.run_backtest(
        log,
        cells,
        folder,
        layers,
        skipped=skipped,
        jobs=jobs,
        fresh=fresh,
        seed=base.training.seed,
        progress=on_event,
    )


def section_body(
    results: list[bt.BacktestResult],
    commit: str,
    weeks: dict[str, tuple[int, ...]] | None = None,
) -> str:
    """The BENCHMARKS.md section: what was run, then each data set's tables."""
    intro = (
        "Each cell runs the public pipeline as a user would, in a fresh data dir: the events "
        "strictly before the cut exported as Parquet and brought in with `engage data ingest "
        "--map ...`, `engage features build` (weekly snapshots up to the cut), `engage train "
        "--set labels.horizon_days=H` (the data set's profile, nothing tuned per cut) and "
        "`engage score --as-of <cut>`, each a separate `engage` process. The served "
        "champion's probabilities are then judged against the labels realised after the cut "
        "(`training.labels.make_labels` at as-of = cut on the full log; appetence: every "
        "scored contact, churn: the active customers) and compared with baselines on the same "
        "contacts: *recency* (rank of days since the last action), *rfm* "
        "(`training.baselines.rfm_score`), *logistic* (`logistic_baseline` fitted on every "
        "labelled row of the cut data) and *bgnbd* (BG/NBD on the purchases before the cut, "
        "P(≥1 purchase within H); for churn only where churn means no purchase). Intervals "
        "are 95 % bootstrap intervals over contacts (1,000 resamples, paired for the "
        "difference); *best baseline* = the baseline with the highest ROC-AUC in that cell "
        "(chosen on the same contacts, which favours the baselines a little); verdict *win* / "
        "*loss* when the interval of Δ ROC-AUC is above / below 0, else *tie*. "
        f"**These figures are for the models as they are at commit {commit}**: the gate "
        "serves LightGBM only when it beats the best baseline of its own training run "
        "(recency, RFM, logistic regression, and BG/NBD for purchases) on that run's test "
        "period, and otherwise registers that baseline as the champion; the served model is "
        "refitted on every labelled as-of time. The *champion* column says which kind was "
        "served in each cell."
    )
    parts = [intro]
    for r in results:
        grid = bt.default_grid(r.dataset)
        chosen = (weeks or {}).get(r.dataset)
        horizons = ", ".join(f"{h} d" for h in grid.horizon_days)
        if chosen:
            said = (
                f"Cut weeks {', '.join(map(str, chosen))} (a subset of the default grid, weeks "
                f"{grid.cut_weeks[0]}..{grid.cut_weeks[-1]} every "
                f"{grid.cut_weeks[1] - grid.cut_weeks[0]}, to fit the time of this run); "
                f"horizons {horizons}."
            )
        else:
            said = f"Cut weeks {', '.join(map(str, grid.cut_weeks))}; horizons {horizons}."
        parts += [
            "",
            f"### {r.dataset}",
            "",
            said,
            "",
            bt.report_markdown(r),
            "",
            _timing(r),
        ]
    return "\n".join(parts)


def _timing(r: bt.BacktestResult) -> str:
    steps: dict[str, list[float]] = {}
    total = 0.0
    peaks = [d["judging_peak_rss_mb"] for d in r.cells if d.get("judging_peak_rss_mb")]
    for doc in r.cells:
        for c in doc.get("commands", []):
            steps.setdefault(c["step"], []).append(c["seconds"])
        total += doc.get("pipeline_seconds", 0.0) + doc.get("evaluate_seconds", 0.0)
        if "evaluate_seconds" in doc:
            steps.setdefault("judging", []).append(doc["evaluate_seconds"])
    medians = ", ".join(f"{k} {sorted(v)[len(v) // 2]:.0f}" for k, v in steps.items())
    return (
        f"Time: {total / 60:.0f} min of computing summed over the cells as recorded when each "
        f"was computed (2 cores shared with other work, so the figures are noisy); per cell, "
        f"median seconds: {medians or 'none'}. This invocation: {r.seconds / 60:.1f} min, "
        f"{r.computed} cells computed, {r.reevaluated} re-judged from stored pipelines, "
        f"{r.cached} from the cache."
        + (
            f" Peak RSS of the judging process: {max(peaks):,.0f} MB (Feast's "
            "`get_historical_features` inside `training_frame`)."
            if peaks
            else ""
        )
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="cdnow,demo", help="comma-separated: cdnow, demo")
    ap.add_argument("--customers", type=int, default=None, help="sample / simulate N contacts")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--fresh", action="store_true", help="recompute the cached cells")
    ap.add_argument("--folder", type=Path, default=None, help="one data set only: its folder")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument(
        "--weeks",
        action="append",
        default=[],
        metavar="DATASET=W,W,...",
        help="cut weeks of one data set instead of its default grid (e.g. demo=26,34,42,46)",
    )
    args = ap.parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in datasets if d not in bt.DATASETS]
    if unknown or (args.folder and len(datasets) != 1):
        ap.error(
            f"--datasets: {unknown or datasets} (known: {', '.join(bt.DATASETS)}; "
            "--folder needs exactly one)"
        )
    weeks: dict[str, tuple[int, ...]] = {}
    for item in args.weeks:
        name, _, listed = item.partition("=")
        try:
            weeks[name.strip()] = tuple(int(w) for w in listed.split(",") if w.strip())
        except ValueError:
            ap.error(f"--weeks {item!r}: expected DATASET=W,W,... with whole weeks")
        if name.strip() not in bt.DATASETS or not weeks[name.strip()]:
            ap.error(f"--weeks {item!r}: unknown data set or no week")
    results = [
        run_dataset(d, args.customers, args.jobs, args.fresh, args.folder, weeks) for d in datasets
    ]
    body = section_body(results, bt.git_commit(), weeks)
    print(body)
    if not args.no_write:
        command = COMMAND + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
        path = write_section(
            "backtest",
            "Rolling-origin backtest: the served champion against simple baselines",
            command,
            body,
        )
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
