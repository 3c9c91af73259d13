"""Benchmark of the demo data simulator (``engage data simulate``).

For each size, a fresh Python process runs :func:`engage.data.simulate.simulate_to_parquet`
into a temporary folder and reports wall time, peak RSS (so each size has its own peak),
events per second and file size. The baseline, measured in the same process, is the time
pyarrow takes to write the same number of rows of random data with the same schema and
Parquet options: the pure encoding and I/O cost any generator would pay. The ratio says
how much the behavioural model adds on top.

    .venv/bin/python -m benchmarks.bench_simulate [--customers 20000 1000000] [--days 365]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.report import ROOT, measure, write_section
from engage.config import load_params
from engage.data.simulate import CHANNELS, EVENT_TYPES, simulate_to_parquet
from engage.schema import EVENTS_SCHEMA

COMMAND = ".venv/bin/python -m benchmarks.bench_simulate --customers {sizes} --days {days}"
BASELINE_ROWS = 1 << 21  # one random table, written as often as needed
# The options simulate_to_parquet uses, so the baseline pays the same encoding.
WRITE_OPTIONS = {
    "compression": "zstd",
    "use_dictionary": ["customer_id", "event_type", "channel", "campaign_id"],
}


def random_events(rows: int, customers: int, seed: int = 0) -> pa.Table:
    """``rows`` events of random content with the events schema."""
    rng = np.random.default_rng(seed)
    customer_ids = pc.binary_join_element_wise(
        "C",
        pc.utf8_lpad(
            pc.cast(pa.array(np.arange(1, customers + 1)), pa.string()), width=7, padding="0"
        ),
        "",
    )
    value = rng.lognormal(4.0, 1.0, rows)
    campaign = rng.integers(0, 52, rows)
    return pa.Table.from_arrays(
        [
            pc.cast(pa.array(np.arange(1, rows + 1)), pa.string()),
            customer_ids.take(pa.array(np.sort(rng.integers(0, customers, rows)))),
            pa.array(
                1_735_689_600_000_000 + rng.integers(0, 365 * 86_400_000_000, rows),
                type=EVENTS_SCHEMA.field("event_time").type,
            ),
            pa.array(EVENT_TYPES).take(pa.array(rng.integers(0, len(EVENT_TYPES), rows))),
            pa.array(value, mask=rng.random(rows) < 0.5),
            pa.array(CHANNELS).take(pa.array(rng.integers(0, len(CHANNELS), rows))),
            pa.array([f"CMP-{i:02d}" for i in range(52)]).take(
                pa.array(campaign, mask=rng.random(rows) < 0.4)
            ),
        ],
        schema=EVENTS_SCHEMA,
    )


def write_baseline(path: Path, rows: int, customers: int) -> float:
    """Seconds to write ``rows`` random rows (the table is built before the clock)."""
    table = random_events(min(rows, BASELINE_ROWS), customers)
    began = time.perf_counter()
    with pq.ParquetWriter(path, EVENTS_SCHEMA, **WRITE_OPTIONS) as writer:
        left = rows
        while left > 0:
            part = table.slice(0, min(left, table.num_rows))
            writer.write_table(part, row_group_size=1 << 20)
            left -= part.num_rows
    return time.perf_counter() - began


def run_one(customers: int, days: int) -> dict:
    """Simulate one size in this process and return its figures."""
    params = load_params()
    with tempfile.TemporaryDirectory(prefix="bench_simulate_") as tmp:
        events_path = Path(tmp) / "events.parquet"
        customers_path = Path(tmp) / "customers.parquet"
        cpu_before = os.times()
        m = measure(
            lambda: simulate_to_parquet(
                params.simulate,
                params.data,
                events_path,
                customers_path,
                customers=customers,
                days=days,
            )
        )
        cpu_after = os.times()
        summary = m.result
        events_mb = events_path.stat().st_size / 2**20
        customers_mb = customers_path.stat().st_size / 2**20
        events_path.unlink()
        baseline = write_baseline(Path(tmp) / "baseline.parquet", summary.events, customers)
    return {
        "customers": customers,
        "days": days,
        "events": summary.events,
        "total_s": m.seconds,
        # CPU time resists a busy machine better than wall time (includes the rates).
        "cpu_s": (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system),
        "simulate_s": summary.seconds,
        "rates_s": m.seconds - summary.seconds,
        "peak_rss_mb": m.peak_rss_mb,
        "events_mb": events_mb,
        "customers_mb": customers_mb,
        "baseline_s": baseline,
        "rates": summary.rates,
        "latent": summary.latent,
    }


def run_in_subprocess(customers: int, days: int) -> dict:
    """One size in a fresh interpreter, so its peak RSS is its own."""
    cmd = [sys.executable, "-m", "benchmarks.bench_simulate", "--worker"]
    cmd += ["--customers", str(customers), "--days", str(days)]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(results: list[dict], days: int) -> str:
    lines = [
        "| contacts | events | simulate + write (s) | events/s | peak RSS (MB) "
        "| events file (MB) | bytes/event | baseline write (s) | ratio | rates (s) | CPU (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['customers']:,} | {r['events']:,} | {r['simulate_s']:.1f} "
            f"| {r['events'] / r['simulate_s']:,.0f} | {r['peak_rss_mb']:,.0f} "
            f"| {r['events_mb']:,.1f} | {r['events_mb'] * 2**20 / r['events']:.1f} "
            f"| {r['baseline_s']:.1f} | {r['simulate_s'] / r['baseline_s']:.1f}x "
            f"| {r['rates_s']:.1f} | {r['cpu_s']:.1f} |"
        )
    names = list(results[0]["rates"])
    lines += [
        "",
        f"Rates measured on the output (`compute_rates`, {days} days):",
        "",
        "| contacts | " + " | ".join(names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for r in results:
        cells = " | ".join(f"{r['rates'][k]:.1%}" for k in names)
        lines.append(f"| {r['customers']:,} | {cells} |")
    lines += [
        "",
        "*simulate + write*: generation and Parquet writing (`SimulationSummary.seconds`); "
        "*rates*: the DuckDB pass of `compute_rates` over the file, also included in the "
        "peak RSS. *Baseline*: pyarrow writing the same number of rows of random data "
        "with the same schema and options (zstd, same dictionary columns); *ratio* = "
        "simulate / baseline. *CPU*: user + system time of the whole call (simulation "
        "and rates), steadier than wall time when the machine is shared. Each size runs in "
        "its own process.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, nargs="+", default=[20000, 1000000])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_one(args.customers[0], args.days)))
        return
    results = []
    for n in args.customers:
        r = run_in_subprocess(n, args.days)
        print(
            f"{n:>10,} contacts: {r['events']:,} events in {r['simulate_s']:.1f} s "
            f"(+{r['rates_s']:.1f} s rates), peak {r['peak_rss_mb']:,.0f} MB, "
            f"{r['events_mb']:,.0f} MB, baseline {r['baseline_s']:.1f} s",
            flush=True,
        )
        results.append(r)
    sizes = " ".join(str(n) for n in args.customers)
    path = write_section(
        "simulate",
        "Demo data simulator",
        COMMAND.format(sizes=sizes, days=args.days),
        markdown(results, args.days),
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
