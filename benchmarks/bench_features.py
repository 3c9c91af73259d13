"""Benchmark of the feature build (``engage features build``) against the pandas reference.

For each size, a demo data set is simulated once and cached under ``--data-dir``. Each
measurement then runs in a fresh Python process, so each peak RSS is its own:

* **build, 1 snapshot**: :func:`features.aggregates.build_features` of the latest as-of
  time, reading the events from Parquet and writing the snapshot (load included);
* **build, K snapshots**: the K most recent as-of times, ``--every-days`` apart (28, as in
  the scale pipeline); the marginal cost of one more snapshot is read from the
  progress callbacks;
* **Feast apply + materialize** of the latest snapshot into the configured online store
  (``features.online_store.PackedSqliteOnlineStore``), on the pandas input below;
  ``benchmarks/bench_online_store.py`` compares it with Feast's stock SQLite store;
* **pandas reference, 1 snapshot**: :func:`features.reference.reference_snapshot`, the
  straightforward pandas implementation, after reading the same events into pandas.
  Beyond ``--pandas-customers`` contacts it runs on a subsample of every n-th contact
  (pandas would need well over 12 GB for 100 M events), and the builder is timed again
  on that same subsample, so the ratio compares equal inputs. Its output is checked
  against the builder's.

    .venv/bin/python -m benchmarks.bench_features [--customers 20000 1000000] [--days 365]
        [--snapshots 13] [--every-days 28] [--data-dir /tmp/engage_bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from benchmarks.report import ROOT, measure, write_section

COMMAND = (
    ".venv/bin/python -m benchmarks.bench_features --customers {sizes} --days {days} "
    "--snapshots {k} --every-days {every}"
)
DEFAULT_DATA_DIR = Path(tempfile.gettempdir()) / "engage_bench"
READY = ".complete"  # written last, so a killed simulation is never reused


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def dataset_dir(root: Path, customers: int, days: int, seed: int) -> Path:
    """Cache folder of one simulated data set."""
    return root / f"c{customers}_d{days}_s{seed}"


def ensure_dataset(root: Path, customers: int, days: int, seed: int) -> tuple[Path, float]:
    """Simulate ``customers`` x ``days`` unless cached; returns the folder and seconds spent."""
    from engage.config import load_params
    from engage.data.simulate import simulate_to_parquet

    folder = dataset_dir(root, customers, days, seed)
    if (folder / READY).exists():
        return folder, 0.0
    params = load_params()
    began = time.perf_counter()
    simulate_to_parquet(
        params.simulate,
        params.data,
        folder / "events.parquet",
        folder / "customers.parquet",
        customers=customers,
        days=days,
        seed=seed,
    )
    (folder / READY).write_text("ok\n")
    return folder, time.perf_counter() - began


def ensure_subsample(folder: Path, every: int) -> Path:
    """Every ``every``-th contact (in id order) with all their events, cached."""
    target = folder / f"every_{every}"
    if (target / READY).exists():
        return target
    target.mkdir(exist_ok=True)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        "CREATE TEMP TABLE picked AS SELECT customer_id FROM ("
        "SELECT customer_id, row_number() OVER (ORDER BY customer_id) AS k "
        f"FROM read_parquet('{folder / 'customers.parquet'}')) WHERE k % {every} = 1"
    )
    for name in ("events", "customers"):
        con.execute(
            f"COPY (SELECT * FROM read_parquet('{folder / f'{name}.parquet'}') "
            "WHERE customer_id IN (SELECT customer_id FROM picked)) "
            f"TO '{target / f'{name}.parquet'}' (FORMAT parquet, COMPRESSION zstd)"
        )
    con.close()
    (target / READY).write_text("ok\n")
    return target


def _params(every_days: int, snapshots: int):
    from engage.config import load_params

    return load_params(
        overrides=(
            f"features.snapshot_every_days={every_days}",
            f"features.max_snapshots={snapshots}",
        )
    )


def _events(folder: Path) -> int:
    path = folder / "events.parquet"
    return duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()[0][0]


def run_build(folder: Path, snapshots: int, every_days: int, keep: bool) -> dict:
    """Build the ``snapshots`` most recent snapshots of the data in ``folder``."""
    from features.aggregates import build_features

    params = _params(every_days, snapshots)
    out = folder if keep else Path(tempfile.mkdtemp(prefix="bench_features_"))
    features_dir = out / params.features.dir
    shutil.rmtree(features_dir, ignore_errors=True)  # start from an empty folder
    ticks: list[float] = []
    began = time.perf_counter()
    cpu = _cpu()
    try:
        m = measure(
            lambda: build_features(
                params,
                folder / "events.parquet",
                folder / "customers.parquet",
                features_dir,
                progress=lambda _t: ticks.append(time.perf_counter() - began),
            )
        )
        size_mb = sum(f.stat().st_size for f in m.result.directory.glob("*.parquet")) / 2**20
    finally:
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    summary = m.result
    gaps = np.diff(ticks)
    return {
        "snapshots": len(summary.snapshots),
        "latest": str(max(summary.snapshots)),
        "events": summary.events,
        "rows": summary.rows,
        "seconds": m.seconds,
        "cpu_s": _cpu() - cpu,
        "peak_rss_mb": m.peak_rss_mb,
        # Time to the first snapshot (load + one snapshot) and each one after it.
        "first_s": ticks[0],
        "per_snapshot_s": float(np.median(gaps)) if len(gaps) else None,
        "files_mb": size_mb,
    }


def run_feast(folder: Path) -> dict:
    """Feast apply, then materialize the latest snapshot built by ``run_build(keep=True)``."""
    os.environ["ENGAGE_DATA_DIR"] = str(folder)
    from engage.config import load_params, resolve_paths
    from features.store import apply_repo, get_store, materialize_snapshot

    paths = resolve_paths(load_params())
    files = sorted((paths.features_dir / "customer_features").glob("as_of=*.parquet"))
    latest_file = files[-1]
    latest = pd.read_parquet(latest_file, columns=["event_timestamp"])["event_timestamp"]
    shutil.rmtree(paths.feast_dir, ignore_errors=True)
    cpu = _cpu()
    applied = measure(lambda: apply_repo(paths))
    store = get_store(paths)
    mat = measure(lambda: materialize_snapshot(store, latest.iloc[0]))
    return {
        "rows": len(latest),
        "apply_s": applied.seconds,
        "materialize_s": mat.seconds,
        "cpu_s": _cpu() - cpu,
        "peak_rss_mb": max(applied.peak_rss_mb, mat.peak_rss_mb),
    }


def run_pandas(folder: Path, every_days: int) -> dict:
    """The pandas reference for the latest snapshot, checked against the builder's file."""
    from features.aggregates import build_features
    from features.catalog import ENTITY_KEY, feature_names
    from features.reference import reference_snapshot
    from features.snapshots import read_snapshots

    params = _params(every_days, 1)
    cpu = _cpu()
    read = measure(
        lambda: (
            pd.read_parquet(
                folder / "events.parquet",
                columns=["customer_id", "event_time", "event_type", "value"],
            ),
            pd.read_parquet(folder / "customers.parquet"),
        )
    )
    events, customers = read.result
    as_of = events["event_time"].max().floor("D") + pd.Timedelta(days=1)  # as the builder
    computed = measure(lambda: reference_snapshot(events, customers, as_of, params))
    cpu = _cpu() - cpu
    ref = computed.result
    timing = {
        "read_s": read.seconds,
        "compute_s": computed.seconds,
        "peak_rss_mb": max(read.peak_rss_mb, computed.peak_rss_mb),
    }
    read = computed = None  # free the events before the check below
    # The builder's output for the same as-of time (not timed here: run_build times it).
    with tempfile.TemporaryDirectory(prefix="bench_features_check_") as tmp:
        build_features(params, folder / "events.parquet", folder / "customers.parquet", Path(tmp))
        got = read_snapshots(Path(tmp)).set_index(ENTITY_KEY).sort_index()
    names = feature_names(params)
    assert list(got.index) == list(ref.index), "the builder and pandas saw other contacts"
    a = got[names].astype(float).to_numpy()
    b = ref[names].astype(float).to_numpy()
    same_nulls = bool((np.isnan(a) == np.isnan(b)).all())
    both = ~np.isnan(a) & ~np.isnan(b)
    rel = np.abs(a[both] - b[both]) / np.maximum(np.abs(b[both]), 1e-12)
    return {
        "events": _events(folder),
        "rows": len(ref),
        "cpu_s": cpu,
        **timing,
        "same_nulls": same_nulls,
        "max_rel_diff": float(rel.max()) if rel.size else 0.0,
    }


def run_in_subprocess(*args: str) -> dict:
    """One measurement in a fresh interpreter, so its peak RSS is its own."""
    cmd = [sys.executable, "-m", "benchmarks.bench_features", "--worker", *args]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_size(root: Path, customers: int, args: argparse.Namespace) -> dict:
    """Every measurement of one data-set size."""
    folder, simulate_s = ensure_dataset(root, customers, args.days, args.seed)
    every = max(1, -(-customers // args.pandas_customers))  # ceil: at most that many
    pandas_dir = folder if every == 1 else ensure_subsample(folder, every)
    k, e = str(args.snapshots), str(args.every_days)
    result = {"customers": customers, "simulate_s": simulate_s, "every": every}
    result["one"] = run_in_subprocess("build", str(folder), "1", e, "0")
    print(f"  build 1 snapshot: {result['one']['seconds']:.1f} s", flush=True)
    result["many"] = run_in_subprocess("build", str(folder), k, e, "1" if every == 1 else "0")
    print(f"  build {k} snapshots: {result['many']['seconds']:.1f} s", flush=True)
    # The builder again on the pandas input; its snapshot stays there for Feast.
    result["same_input"] = (
        result["one"] if every == 1 else run_in_subprocess("build", str(pandas_dir), "1", e, "1")
    )
    result["feast"] = run_in_subprocess("feast", str(pandas_dir))
    print(f"  feast materialize: {result['feast']['materialize_s']:.1f} s", flush=True)
    result["pandas"] = run_in_subprocess("pandas", str(pandas_dir), e)
    print(
        f"  pandas 1 snapshot: {result['pandas']['read_s'] + result['pandas']['compute_s']:.1f} s",
        flush=True,
    )
    return result


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "| contacts | events | measurement | snapshots | rows | wall (s) | CPU (s) "
        "| events/s | s / extra snapshot | peak RSS (MB) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        n = r["customers"]
        one, many, feast, same, pd_ = r["one"], r["many"], r["feast"], r["same_input"], r["pandas"]
        per = many["per_snapshot_s"]
        rows = [
            ("build, 1 snapshot", one, one["seconds"], one["cpu_s"], one["events"], "-"),
            (
                f"build, {many['snapshots']} snapshots",
                many,
                many["seconds"],
                many["cpu_s"],
                many["events"],
                f"{per:.2f}" if per is not None else "-",
            ),
        ]
        for label, m, wall, cpu, events, extra in rows:
            lines.append(
                f"| {n:,} | {events:,} | {label} | {m['snapshots']} | {m['rows']:,} "
                f"| {wall:.1f} | {cpu:.1f} | {events / wall:,.0f} | {extra} "
                f"| {m['peak_rss_mb']:,.0f} |"
            )
        sample = "" if r["every"] == 1 else f" (every {r['every']}th contact)"
        lines.append(
            f"| {n:,} | - | Feast apply + materialize{sample} | 1 | {feast['rows']:,} "
            f"| {feast['apply_s']:.1f} + {feast['materialize_s']:.1f} | {feast['cpu_s']:.1f} "
            f"| {feast['rows'] / feast['materialize_s']:,.0f} rows/s | - "
            f"| {feast['peak_rss_mb']:,.0f} |"
        )
        if r["every"] != 1:
            lines.append(
                f"| {n:,} | {same['events']:,} | build, 1 snapshot{sample} | 1 "
                f"| {same['rows']:,} | {same['seconds']:.1f} | {same['cpu_s']:.1f} "
                f"| {same['events'] / same['seconds']:,.0f} | - | {same['peak_rss_mb']:,.0f} |"
            )
        pandas_s = pd_["read_s"] + pd_["compute_s"]
        lines.append(
            f"| {n:,} | {pd_['events']:,} | pandas reference, 1 snapshot{sample} | 1 "
            f"| {pd_['rows']:,} | {pandas_s:.1f} ({pd_['read_s']:.1f} read) "
            f"| {pd_['cpu_s']:.1f} | {pd_['events'] / pandas_s:,.0f} | - "
            f"| {pd_['peak_rss_mb']:,.0f} |"
        )
    lines += [
        "",
        "| contacts | pandas input | pandas / build, 1 snapshot (wall) | (CPU) "
        "| outputs equal (max rel. diff) |",
        "|---:|---|---:|---:|---|",
    ]
    for r in results:
        same, pd_ = r["same_input"], r["pandas"]
        pandas_s = pd_["read_s"] + pd_["compute_s"]
        what = "all contacts" if r["every"] == 1 else f"every {r['every']}th contact"
        equal = "yes" if pd_["same_nulls"] and pd_["max_rel_diff"] < 1e-9 else "NO"
        lines.append(
            f"| {r['customers']:,} | {what} ({pd_['events']:,} events) "
            f"| {pandas_s / same['seconds']:.1f}x | {pd_['cpu_s'] / same['cpu_s']:.1f}x "
            f"| {equal} ({pd_['max_rel_diff']:.1e}) |"
        )
    lines += [
        "",
        "*build*: `build_features` in its own process: DuckDB reads the events and sorts "
        "them by day per type once (*load*), then numpy computes the per-type statistics "
        "of each snapshot and DuckDB the feature expressions; each snapshot is written to "
        "Parquet. *events/s*: events in the file / wall time. *s / extra snapshot*: "
        f"median time between two snapshots of the {args.snapshots}-snapshot build "
        f"({args.every_days} days apart; with weekly snapshots, 53 a year, multiply). "
        "*pandas reference*: `features/reference.py` (filter, groupby, merge per feature), "
        "read time included; above "
        f"{args.pandas_customers:,} contacts it runs on a subsample, on which the build is "
        "timed again, so the ratio compares equal inputs. *Outputs equal*: same nulls and "
        "every value within 1e-9 relative. CPU is user + system time, steadier than wall "
        "time on a shared machine. Each row runs in a fresh process.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, nargs="+", default=[20000, 1000000])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--snapshots", type=int, default=13)
    parser.add_argument("--every-days", type=int, default=28)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--pandas-customers", type=int, default=100_000)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--no-write", action="store_true", help="print, leave BENCHMARKS.md")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        if kind == "build":
            folder, k, every, keep = rest
            out = run_build(Path(folder), int(k), int(every), keep == "1")
        elif kind == "feast":
            out = run_feast(Path(rest[0]))
        else:
            out = run_pandas(Path(rest[0]), int(rest[1]))
        print(json.dumps(out))
        return
    results = []
    for n in args.customers:
        print(f"{n:,} contacts x {args.days} days", flush=True)
        results.append(bench_size(args.data_dir, n, args))
    body = markdown(results, args)
    print(body)
    if not args.no_write:
        sizes = " ".join(str(n) for n in args.customers)
        command = COMMAND.format(
            sizes=sizes, days=args.days, k=args.snapshots, every=args.every_days
        )
        path = write_section("features", "Feature build (DuckDB + numpy) vs pandas", command, body)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
