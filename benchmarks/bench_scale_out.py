"""Scale-out benchmark: Spark and Redis against the embedded engines, in one run.

Each part measures the scale-out engine and its embedded baseline in the same run and
reports the ratio:

1. the feature build (every default as-of time) by DuckDB + numpy (the default engine)
   and by Spark in ``local[2]`` mode (``compute.engine: spark``), with the files of the
   two builds compared (same rows, nulls and values within 1e-9 relative);
2. materializing the latest snapshot into the packed SQLite store (the default), into
   Feast's Redis store through the pipelined bulk path (``features.redis_store``) and
   through Feast's stock path (``write_to_online_store``, on a slice of the contacts:
   it is the slow one), with Redis' memory per contact; then the direct read of 1 and of
   500 contacts, packed SQLite vs Redis, as the service reads them;
3. the whole pipeline (``features build``, ``train``, ``score``; each an ``engage``
   process with ``ENGAGE_PROFILE=scale``) on the DuckDB engine with the packed SQLite
   store, and on the Spark engine (``local[2]``) with Redis: Spark builds the features,
   Feast's Spark offline store serves the training rows, Spark scores; the two runs'
   scores are compared;
4. ``/predict`` (one contact, with reasons) over HTTP on loopback against two
   ``bentoml serve`` processes of the pipelines of part 3, one reading the packed SQLite
   store and one Redis, requests alternating between them (a bounded count).

A redis-server (Debian package) is started on a free loopback port and stopped after.
Memory is the peak RSS of this process, plus its children (Spark's JVM) for Spark,
or of the ``engage`` process tree in part 3. Results are kept in ``--results`` (JSON)
after each part, so a part can be rendered again with ``--render-only``.

    python -m benchmarks.bench_scale_out --customers 1000000 --days 90 \
        --e2e-customers 100000 [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


SPARK_CONF = (
    "spark.conf={spark.driver.memory: 6g, spark.sql.shuffle.partitions: 8, "
    "spark.ui.enabled: false, spark.ui.showConsoleProgress: false}"
)


def run(customers: int, days: int, every: int, stock_rows: int, folder: Path, redis) -> dict:
    """Parts 1 and 2 at ``customers`` contacts over ``days`` days (snapshots every ``every``)."""
    os.environ["ENGAGE_DATA_DIR"] = str(folder)
    from engage.config import load_params, resolve_paths
    from engage.data.simulate import simulate_to_parquet
    from features.aggregates import build_features
    from features.online_store import entity_key_bytes
    from features.spark_build import spark_session
    from features.store import apply_repo, get_store, materialize_snapshot

    small = (
        f"simulate.customers={customers}",
        f"simulate.days={days}",
        f"features.snapshot_every_days={every}",
        # The snapshots are spaced as asked, not densified for training labels.
        "features.min_labelled_snapshots=0",
    )
    params = load_params(overrides=small)
    paths = resolve_paths(params)
    if not paths.events.exists():
        secs, _, _ = _measure(
            lambda: simulate_to_parquet(params.simulate, params.data, paths.events, paths.customers)
        )
        print(f"simulated {customers:,} contacts in {secs:.0f} s", flush=True)
    out: dict = {"customers": customers, "days": days, "every": every}

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
            SPARK_CONF,
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
    shutil.rmtree(spark_dir, ignore_errors=True)
    shutil.rmtree(paths.features_dir, ignore_errors=True)
    shutil.move(duck_dir, paths.features_dir)
    latest = max(summary.snapshots)
    latest_file = sorted((paths.features_dir / "customer_features").glob("*.parquet"))[-1]
    apply_repo(paths)
    packed = get_store(paths)
    client, conn = redis
    client.flushdb()
    rparams = load_params(
        overrides=(*small, "feast.online_store=redis", f"feast.redis_connection_string={conn}")
    )
    rpaths = resolve_paths(rparams)
    apply_repo(rpaths)
    rstore = get_store(rpaths)
    secs, mem, n = _measure(lambda: materialize_snapshot(packed, latest))
    out["packed"] = {"s": secs, "mb": mem, "rows": n}
    before = client.info("memory")["used_memory"]
    secs, mem, n = _measure(lambda: materialize_snapshot(rstore, latest))
    out["redis_bulk"] = {"s": secs, "mb": mem, "rows": n}
    used = client.info("memory")["used_memory"]
    out["redis_mb"] = used / 2**20
    out["redis_bytes_per_contact"] = (used - before) / n
    out["redis_keys"] = client.dbsize()
    print("materialize", out["packed"], out["redis_bulk"], flush=True)
    # Feast's stock path: the same rows through write_to_online_store, per view, on the
    # first `stock_rows` contacts (at ~1,600 contacts/s the whole set takes too long).
    snap = pd.read_parquet(latest_file).iloc[:stock_rows]
    client.flushdb()

    def stock() -> int:
        for view in rstore.list_feature_views():
            names = [
                "customer_id",
                "event_timestamp",
                "created_timestamp",
                *(f.name for f in view.features),
            ]
            for start in range(0, len(snap), 20_000):
                rstore.write_to_online_store(view.name, snap[names].iloc[start : start + 20_000])
        return len(snap)

    secs, mem, n = _measure(stock)
    out["redis_stock"] = {"s": secs, "mb": mem, "rows": n}
    print("stock", out["redis_stock"], flush=True)
    # The reads below need every contact in Redis again.
    client.flushdb()
    materialize_snapshot(rstore, latest)

    # Direct reads, as the service does them (serving/online.py).
    from features.redis_store import RedisDirectReader

    reader = RedisDirectReader(rstore.config)
    packed_online = packed._get_provider().online_store
    views = [v for v in packed.list_feature_views() if v.online]
    plan = [(v, [f.name for f in v.features]) for v in views]
    ids = pd.read_parquet(latest_file, columns=["customer_id"])["customer_id"].tolist()
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
    client.flushdb()
    return out


E2E_STAGES = (
    ("features build (+ Feast apply, materialize)", ["features", "build"]),
    ("train churn + appetence", ["train", "--model", "all"]),
    ("batch scoring with reasons", ["score"]),
)


def e2e(customers: int, days: int, folder: Path, conn: str) -> dict:
    """Part 3: the pipeline on each engine, each stage an ``engage`` process."""
    from benchmarks.bench_scale import run_stage

    engines = {
        "duckdb": [],
        "spark": [
            "compute.engine=spark",
            "spark.master='local[2]'",
            SPARK_CONF,
            "feast.online_store=redis",
            f"feast.redis_connection_string={conn}",
        ],
    }
    out: dict = {"customers": customers, "days": days, "stages": {}}
    for engine, sets in engines.items():
        data_dir = folder / f"e2e_{engine}"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "ENGAGE_DATA_DIR": str(data_dir), "ENGAGE_PROFILE": "scale"}
        log = data_dir / "bench.log"
        args = [a for s in sets for a in ("--set", s)]
        # The same events on both engines (the simulator is deterministic for its seed).
        sim = ["data", "simulate", "--customers", str(customers), "--days", str(days)]
        secs, _ = run_stage(sim, env, log)
        print(f"e2e {engine}: simulated in {secs:.0f} s", flush=True)
        rows = []
        for name, cmd in E2E_STAGES:
            secs, peak = run_stage([*args, *cmd], env, log)
            rows.append({"stage": name, "s": secs, "mb": peak})
            print(f"e2e {engine}: {name} {secs:.1f} s {peak:,.0f} MB", flush=True)
        out["stages"][engine] = rows
    out["equal_scores"] = _same_scores(folder / "e2e_duckdb", folder / "e2e_spark")
    return out


def _same_scores(a: Path, b: Path) -> dict:
    """Compare the latest run of two data folders (run id, rows, stages, probabilities)."""
    import pyarrow.parquet as pq

    def latest(folder: Path) -> Path:
        runs = sorted(folder.rglob("run=*.parquet"), key=lambda p: p.stat().st_mtime)
        return runs[-1]

    ta, tb = pq.read_table(latest(a)), pq.read_table(latest(b))
    out = {"run_ids_equal": latest(a).name == latest(b).name, "rows": ta.num_rows}
    out["stages_equal"] = ta.column("stage").to_pylist() == tb.column("stage").to_pylist()
    pa_, pb_ = (t.column("p_churn").to_numpy(zero_copy_only=False) for t in (ta, tb))
    out["p_churn_equal"] = bool(np.allclose(pa_, pb_, rtol=1e-12, atol=0, equal_nan=True))
    return out


def predict_latency(folder: Path, conn: str, requests: int, budget_s: float) -> dict:
    """Part 4: ``/predict`` of one contact with reasons, packed SQLite vs Redis, alternating."""
    import httpx

    from cli.app import Context
    from cli.serve import serve_env
    from engage.config import load_params, resolve_paths
    from serving.local_server import LocalServer

    servers, ids = {}, None
    redis_sets = ("feast.online_store=redis", f"feast.redis_connection_string={conn}")
    try:
        for label, data_dir, sets in (
            ("packed SQLite", folder / "e2e_duckdb", ()),
            ("Redis", folder / "e2e_spark", redis_sets),
        ):
            os.environ["ENGAGE_DATA_DIR"] = str(data_dir)
            params = load_params(profile="scale", overrides=sets)
            paths = resolve_paths(params)
            if ids is None:
                import pyarrow.parquet as pq

                latest = sorted((paths.features_dir / "customer_features").glob("*.parquet"))
                ids = pq.read_table(latest[-1], columns=["customer_id"]).column(0).to_pylist()
            env = serve_env(Context(params, paths), workers=1)
            env.pop(params.serving.api_key_env, None)
            servers[label] = LocalServer(env, data_dir / f"serve-{label.split()[0]}.log")
        deadline = time.monotonic() + 240
        for s in servers.values():
            s.wait_ready(deadline)
        rng = np.random.default_rng(1)
        times: dict[str, list[float]] = {label: [] for label in servers}
        clients = {label: httpx.Client(base_url=s.url, timeout=30) for label, s in servers.items()}
        try:
            stop = time.monotonic() + budget_s
            for i in range(requests + 50):
                if time.monotonic() > stop:
                    break
                body = {"customer_ids": [str(rng.choice(ids))], "explain": True}
                for label, c in clients.items():
                    t = time.perf_counter()
                    r = c.post("/predict", json=body)
                    elapsed = (time.perf_counter() - t) * 1000
                    if r.status_code != 200:
                        raise RuntimeError(f"{label}: /predict answered {r.status_code}: {r.text}")
                    if i >= 50:  # the first requests warm the workers up
                        times[label].append(elapsed)
        finally:
            for c in clients.values():
                c.close()
    finally:
        for s in servers.values():
            s.stop()
    return {
        label: {
            "n": len(t),
            "p50": float(np.percentile(t, 50)),
            "p99": float(np.percentile(t, 99)),
        }
        for label, t in times.items()
    }


def render(r: dict) -> str:
    """BENCHMARKS.md text of the parts in ``r`` (a part not run is left out)."""
    lines = [f"Measured on this machine ({r['machine']}), one part after the other.", ""]
    if "duckdb" in r:
        lines += _render_build(r)
    if "packed" in r:
        lines += _render_online(r)
    if "e2e" in r:
        lines += _render_e2e(r["e2e"])
    if "predict" in r:
        lines += _render_predict(r["predict"], r.get("e2e", {}).get("customers"))
    return "\n".join(lines) + "\n"


def _render_build(r: dict) -> list[str]:
    d, s = r["duckdb"], r["spark"]
    return [
        "### Feature build: DuckDB + numpy vs Spark `local[2]`",
        "",
        "| engine | build (s) | snapshot rows/s | events/s | peak RSS (MB; Spark: with its JVM) |",
        "|---|---:|---:|---:|---:|",
        f"| DuckDB + numpy (default) | {d['s']:.1f} | {d['rows'] / d['s']:,.0f} | "
        f"{d['events'] / d['s']:,.0f} | {d['mb']:,.0f} |",
        f"| Spark `local[2]` (session already started) | {s['s']:.1f} | "
        f"{s['rows'] / s['s']:,.0f} | {d['events'] / s['s']:,.0f} | {s['mb']:,.0f} |",
        f"| **ratio Spark / DuckDB** | **{s['s'] / d['s']:.1f}x** | | | |",
        "",
        f"{r['customers']:,} contacts, {r['days']} simulated days, {d['events']:,} events, "
        f"{d['snapshots']} as-of times (every {r['every']} days), {d['rows']:,} snapshot "
        f"rows. Starting the Spark session took {r['spark_start_s']:.1f} s more. The two "
        f"builds' files are {'equal' if r['equal_builds'] else 'NOT equal'} (rows, nulls, "
        "values within 1e-9 relative).",
        "",
    ]


def _render_online(r: dict) -> list[str]:
    lines = [
        f"### Materialize the latest snapshot ({r['packed']['rows']:,} contacts)",
        "",
        "| online store, write path | contacts | time (s) | contacts/s | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, key in (
        ("packed SQLite (default)", "packed"),
        ("Redis, pipelined bulk path (`features/redis_store.py`)", "redis_bulk"),
        ("Redis, Feast's stock `write_to_online_store`", "redis_stock"),
    ):
        x = r[key]
        lines.append(
            f"| {label} | {x['rows']:,} | {x['s']:.1f} | {x['rows'] / x['s']:,.0f} | "
            f"{x['mb']:,.0f} |"
        )
    rate = {k: r[k]["rows"] / r[k]["s"] for k in ("packed", "redis_bulk", "redis_stock")}
    lines += [
        f"| **rate ratio bulk / stock (Redis)** | | | "
        f"**{rate['redis_bulk'] / rate['redis_stock']:.1f}x** | |",
        f"| **rate ratio bulk Redis / packed SQLite** | | | "
        f"**{rate['redis_bulk'] / rate['packed']:.2f}x** | |",
        "",
        f"Redis held {r['redis_mb']:,.0f} MB after the bulk write of {r['redis_keys']:,} keys: "
        f"**{r['redis_bytes_per_contact']:,.0f} bytes per contact** (`used_memory`, every "
        "feature of the three views, Feast's layout: one hash per contact). Feast's stock "
        "path ran on the first contacts only (it is the slow one); its rate is per contact "
        "like the others. Peak RSS is this process's.",
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
        "",
    ]
    return lines


def _render_e2e(e: dict) -> list[str]:
    duck, spark = e["stages"]["duckdb"], e["stages"]["spark"]
    lines = [
        f"### The whole pipeline on each engine ({e['customers']:,} contacts, {e['days']} days)",
        "",
        "| stage | DuckDB + packed SQLite (s) | peak RSS (MB) | Spark `local[2]` + Redis (s) "
        "| peak RSS (MB) | ratio Spark / DuckDB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for d, s in zip(duck, spark, strict=True):
        lines.append(
            f"| {d['stage']} | {d['s']:.1f} | {d['mb']:,.0f} | {s['s']:.1f} | {s['mb']:,.0f} | "
            f"{s['s'] / d['s']:.1f}x |"
        )
    td, ts = sum(d["s"] for d in duck), sum(s["s"] for s in spark)
    lines.append(f"| **pipeline** | **{td:.0f}** | | **{ts:.0f}** | | **{ts / td:.1f}x** |")
    q = e["equal_scores"]
    lines += [
        "",
        "Each stage is an `engage` process with `ENGAGE_PROFILE=scale` (snapshots every 28 "
        "days, 25,000 sampled contacts per training as-of time); on Spark each starts its "
        "own JVM (the time is in the figures), builds the features, reads the training "
        "rows through Feast's Spark offline store and scores on Spark, and the online store "
        "is Redis. Peak RSS is that of the process tree (JVM included). The latest runs of "
        f"the two pipelines ({q['rows']:,} contacts): run ids "
        f"{'equal' if q['run_ids_equal'] else 'DIFFERENT'}, stages "
        f"{'equal' if q['stages_equal'] else 'DIFFERENT'}, p_churn "
        f"{'equal' if q['p_churn_equal'] else 'DIFFERENT'} (1e-12 relative).",
        "",
    ]
    return lines


def _render_predict(p: dict, customers: int | None) -> list[str]:
    sq, rd = p["packed SQLite"], p["Redis"]
    return [
        "### `/predict` over HTTP: one contact with reasons, packed SQLite vs Redis",
        "",
        "| online store read by the service | requests | p50 (ms) | p99 (ms) |",
        "|---|---:|---:|---:|",
        f"| packed SQLite (default) | {sq['n']:,} | {sq['p50']:.1f} | {sq['p99']:.1f} |",
        f"| Redis (direct read) | {rd['n']:,} | {rd['p50']:.1f} | {rd['p99']:.1f} |",
        f"| **ratio Redis / SQLite** | | **{rd['p50'] / sq['p50']:.2f}x** | "
        f"**{rd['p99'] / sq['p99']:.2f}x** |",
        "",
        "Two `bentoml serve` processes (one worker each) on 127.0.0.1 serving the pipelines "
        f"above ({customers or 0:,} contacts), a random contact per request, the requests "
        "alternating between the two servers (after 50 warm-up requests each), one at a "
        "time; wall-clock latency seen by the client on loopback.",
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--every", type=int, default=28, help="snapshot spacing (days)")
    parser.add_argument("--stock-rows", type=int, default=100_000)
    parser.add_argument("--e2e-customers", type=int, default=100_000)
    parser.add_argument("--e2e-days", type=int, default=365)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--parts", default="build,e2e", help="build (1, 2), e2e (3, 4)")
    parser.add_argument("--results", type=Path, default=None, help="JSON kept after each part")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    results_file = args.results or Path(tempfile.gettempdir()) / "engage-bench-scale-out.json"
    if args.render_only:
        result = json.loads(results_file.read_text())
    else:
        result = {"machine": f"{os.cpu_count()} cores, {platform.machine()}"}
        parts = set(args.parts.split(","))
        if parts != {"build", "e2e"} and results_file.exists():
            # A part run again replaces its own figures; the others are kept.
            result = {**json.loads(results_file.read_text()), **result}
        folder = Path(tempfile.mkdtemp(prefix="engage-scale-out-"))
        proc, client, conn = _redis(folder)

        def keep() -> None:
            results_file.write_text(json.dumps(result, indent=1, default=float))

        try:
            if "build" in parts:
                result.update(
                    run(
                        args.customers,
                        args.days,
                        args.every,
                        args.stock_rows,
                        folder / "big",
                        (client, conn),
                    )
                )
                keep()
                shutil.rmtree(folder / "big", ignore_errors=True)
            if "e2e" in parts:
                result["e2e"] = e2e(args.e2e_customers, args.e2e_days, folder, conn)
                keep()
                result["predict"] = predict_latency(folder, conn, args.requests, budget_s=300)
                keep()
        finally:
            client.close()
            proc.terminate()
            proc.wait(timeout=10)
            shutil.rmtree(folder, ignore_errors=True)
    body = render(result)
    print(body)
    if not args.no_write:
        cmd = (
            "OMP_WAIT_POLICY=PASSIVE nice -n 10 python -m benchmarks.bench_scale_out "
            f"--customers {args.customers} --days {args.days} --every {args.every} "
            f"--stock-rows {args.stock_rows} --e2e-customers {args.e2e_customers} "
            f"--e2e-days {args.e2e_days} --requests {args.requests}"
        )
        write_section(
            "scale_out", "Scale-out: Spark and Redis against DuckDB and packed SQLite", cmd, body
        )


if __name__ == "__main__":
    main()
