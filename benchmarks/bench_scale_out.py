"""Scale-out benchmark: the Spark feature build and the Redis online store, with baselines.

In one run, on the same simulated events:

1. the feature build (every default as-of time) by DuckDB + numpy (the default engine)
   and by Spark in ``local[2]`` mode (``compute.engine: spark``), with the files of the
   two builds compared (same rows, nulls and values within 1e-9 relative);
2. materializing the latest snapshot into the packed SQLite store (the default), into
   Feast's Redis store through Feast's stock path (``write_to_online_store``) and through
   the pipelined bulk path (``features.redis_store.write_frame``);
3. the direct read of 1 and of 500 contacts (every feature of the three views), packed
   SQLite vs Redis, as the service reads them; the reads are compared.

A redis-server (Debian package) is started on a free loopback port and stopped after.
Memory is the peak RSS of this process, plus its children (Spark's JVM) for the Spark
build.

    python -m benchmarks.bench_scale_out --customers 20000 [--days 365] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report import measure, write_section


def _measure(fn, children: bool = False):
    """(seconds, peak RSS MB of this process (+ its children: Spark's JVM), result)."""
    m = measure(fn, interval=0.1, children=children)
    return m.seconds, m.peak_rss_mb, m.result


def _redis(folder: Path):
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            exe,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc, client, f"127.0.0.1:{port}"
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.terminate()
    raise SystemExit("redis-server did not start")


def _same_builds(a: Path, b: Path) -> bool:
    import pyarrow.parquet as pq

    from features.snapshots import list_snapshots

    sa, sb = list_snapshots(a), list_snapshots(b)
    if [s.as_of for s in sa] != [s.as_of for s in sb]:
        return False
    for x, y in zip(sa, sb, strict=True):
        ta, tb = pq.read_table(x.path), pq.read_table(y.path)
        if ta.num_rows != tb.num_rows or ta.schema.names != tb.schema.names:
            return False
        if ta.column(0).to_pylist() != tb.column(0).to_pylist():
            return False
        for name in ta.schema.names[3:]:
            va = ta.column(name).to_numpy(zero_copy_only=False).astype(float)
            vb = tb.column(name).to_numpy(zero_copy_only=False).astype(float)
            if not np.array_equal(np.isnan(va), np.isnan(vb)):
                return False
            if not np.allclose(va, vb, rtol=1e-9, atol=0, equal_nan=True):
                return False
    return True


def run(customers: int, days: int, folder: Path) -> dict:
    os.environ["ENGAGE_DATA_DIR"] = str(folder)
    from engage.config import load_params, resolve_paths
    from engage.data.simulate import simulate_to_parquet
    from features.aggregates import build_features
    from features.online_store import entity_key_bytes
    from features.spark_build import spark_session
    from features.store import apply_repo, get_store, materialize_snapshot

    small = (f"simulate.customers={customers}", f"simulate.days={days}")
    params = load_params(overrides=small)
    paths = resolve_paths(params)
    if not paths.events.exists():
        simulate_to_parquet(params.simulate, params.data, paths.events, paths.customers)
    out: dict = {"customers": customers, "days": days}

    # 1. Feature build: DuckDB, then Spark local[2] into another folder.
    duck_dir, spark_dir = folder / "features_duckdb", folder / "features_spark"
    secs, mem, summary = _measure(
        lambda: build_features(params, paths.events, paths.customers, duck_dir)
    )
    out["duckdb"] = {
        "s": secs,
        "mb": mem,
        "rows": summary.rows,
        "events": summary.events,
        "snapshots": len(summary.snapshots),
    }
    print("duckdb", out["duckdb"], flush=True)
    sparams = load_params(
        overrides=(
            *small,
            "compute.engine=spark",
            "spark.master='local[2]'",
            "spark.conf={spark.driver.memory: 4g, spark.sql.shuffle.partitions: 8, "
            "spark.ui.enabled: false, spark.ui.showConsoleProgress: false}",
        )
    )
    secs, _, session = _measure(lambda: spark_session(sparams.spark, "engage-bench"))
    session.sparkContext.setLogLevel("ERROR")
    out["spark_start_s"] = secs
    secs, mem, summary = _measure(
        lambda: build_features(sparams, paths.events, paths.customers, spark_dir, session=session),
        children=True,
    )
    session.stop()
    out["spark"] = {"s": secs, "mb": mem, "rows": summary.rows}
    out["equal_builds"] = _same_builds(duck_dir, spark_dir)
    print("spark", out["spark"], out["equal_builds"], flush=True)

    # 2. Materialize the latest snapshot (the DuckDB build's, moved to the usual place).
    shutil.rmtree(paths.features_dir, ignore_errors=True)
    shutil.copytree(duck_dir, paths.features_dir)
    latest = max(summary.snapshots)
    apply_repo(paths)
    packed = get_store(paths)
    proc, client, conn = _redis(folder)
    try:
        rparams = load_params(
            overrides=(*small, "feast.online_store=redis", f"feast.redis_connection_string={conn}")
        )
        rpaths = resolve_paths(rparams)
        apply_repo(rpaths)
        rstore = get_store(rpaths)
        secs, mem, n = _measure(lambda: materialize_snapshot(packed, latest))
        out["packed"] = {"s": secs, "mb": mem, "rows": n}
        secs, mem, n = _measure(lambda: materialize_snapshot(rstore, latest))
        out["redis_bulk"] = {"s": secs, "mb": mem, "rows": n}
        out["redis_mb"] = client.info("memory")["used_memory"] / 2**20
        client.flushdb()
        # Feast's stock path: the same rows through write_to_online_store, per view.
        snap = pd.read_parquet(
            paths.features_dir
            / "customer_features"
            / Path(
                sorted(
                    p.name for p in (paths.features_dir / "customer_features").glob("*.parquet")
                )[-1]
            )
        )

        def stock() -> int:
            for view in rstore.list_feature_views():
                names = [
                    "customer_id",
                    "event_timestamp",
                    "created_timestamp",
                    *(f.name for f in view.features),
                ]
                for start in range(0, len(snap), 20_000):
                    rstore.write_to_online_store(
                        view.name, snap[names].iloc[start : start + 20_000]
                    )
            return len(snap)

        secs, mem, n = _measure(stock)
        out["redis_stock"] = {"s": secs, "mb": mem, "rows": n}
        print("materialize", out["packed"], out["redis_bulk"], out["redis_stock"], flush=True)

        # 3. Direct reads, as the service does them (serving/online.py).
        from features.redis_store import RedisDirectReader

        reader = RedisDirectReader(rstore.config)
        packed_online = packed._get_provider().online_store
        views = [v for v in packed.list_feature_views() if v.online]
        plan = [(v, [f.name for f in v.features]) for v in views]
        ids = snap["customer_id"].tolist()
        rng = np.random.default_rng(0)
        for label, fn, cfg in (
            ("packed", packed_online.read_views, packed.config),
            ("redis", reader.read_views, rstore.config),
        ):
            for size, repeats in ((1, 500), (500, 30)):
                times = []
                for _ in range(repeats):
                    keys = entity_key_bytes("customer_id", rng.choice(ids, size, replace=False))
                    t = time.perf_counter()
                    fn(cfg, plan, keys)
                    times.append((time.perf_counter() - t) * 1000)
                out[f"read_{label}_{size}"] = (
                    statistics.median(times),
                    float(np.percentile(times, 99)),
                )
        keys = entity_key_bytes("customer_id", ids[:2000])
        a = np.hstack(packed_online.read_views(packed.config, plan, keys))
        b = np.hstack(reader.read_views(rstore.config, plan, keys))
        out["equal_reads"] = bool(np.array_equal(a, b, equal_nan=True))
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)
    return out


def render(r: dict) -> str:
    d, s = r["duckdb"], r["spark"]
    lines = [
        "### Feature build: DuckDB + numpy vs Spark `local[2]`",
        "",
        "| engine | build (s) | rows/s | peak RSS (MB; Spark: with its JVM) |",
        "|---|---:|---:|---:|",
        f"| DuckDB + numpy (default) | {d['s']:.1f} | {d['rows'] / d['s']:,.0f} | {d['mb']:,.0f} |",
        f"| Spark `local[2]` (session already started) | {s['s']:.1f} | "
        f"{s['rows'] / s['s']:,.0f} | {s['mb']:,.0f} |",
        f"| **ratio Spark / DuckDB** | **{s['s'] / d['s']:.1f}x** | | |",
        "",
        f"{r['customers']:,} contacts, {r['days']} days, {d['events']:,} events, "
        f"{d['snapshots']} as-of times, {d['rows']:,} snapshot rows. Starting the Spark "
        f"session took {r['spark_start_s']:.1f} s more. The two builds' files are "
        f"{'equal' if r['equal_builds'] else 'NOT equal'} (rows, nulls, values within "
        "1e-9 relative).",
        "",
        "### Materialize the latest snapshot",
        "",
        "| online store, write path | time (s) | contacts/s | peak RSS (MB) |",
        "|---|---:|---:|---:|",
    ]
    for label, key in (
        ("packed SQLite (default)", "packed"),
        ("Redis, Feast's stock `write_to_online_store`", "redis_stock"),
        ("Redis, pipelined bulk path (`features/redis_store.py`)", "redis_bulk"),
    ):
        x = r[key]
        lines.append(f"| {label} | {x['s']:.1f} | {x['rows'] / x['s']:,.0f} | {x['mb']:,.0f} |")
    stock_bulk = r["redis_stock"]["s"] / r["redis_bulk"]["s"]
    bulk_packed = r["redis_bulk"]["s"] / r["packed"]["s"]
    lines += [
        f"| **ratio stock / bulk (Redis)** | **{stock_bulk:.1f}x** | | |",
        f"| **ratio bulk Redis / packed SQLite** | **{bulk_packed:.1f}x** | | |",
        "",
        f"Redis held {r['redis_mb']:,.0f} MB after the bulk write.",
        "",
        "### Direct read (the service's hot path), every feature of the three views",
        "",
        "| store | 1 contact, median (ms) | p99 (ms) | 500 contacts, median (ms) | p99 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label in ("packed", "redis"):
        one, many = r[f"read_{label}_1"], r[f"read_{label}_500"]
        lines.append(f"| {label} | {one[0]:.2f} | {one[1]:.2f} | {many[0]:.1f} | {many[1]:.1f} |")
    lines += [
        f"| **ratio Redis / packed** | {r['read_redis_1'][0] / r['read_packed_1'][0]:.1f}x | "
        f"| {r['read_redis_500'][0] / r['read_packed_500'][0]:.1f}x | |",
        "",
        "Redis on the loopback interface of the same host (a network hop adds its round "
        f"trip). Reads of 2,000 contacts from both stores are "
        f"{'equal' if r['equal_reads'] else 'NOT equal'}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="engage-scale-out-"))
    try:
        result = run(args.customers, args.days, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    body = render(result)
    print(body)
    if not args.no_write:
        cmd = f"python -m benchmarks.bench_scale_out --customers {args.customers}"
        write_section(
            "scale_out", "Scale-out: Spark feature build and Redis online store", cmd, body
        )


if __name__ == "__main__":
    main()
