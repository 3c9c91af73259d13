"""Online store benchmark: the packed SQLite store against Feast's stock SQLite store.

Both stores get the same feature views (applied from the project's registry) and the
same latest snapshot, in the same process: materialize time, file size, and the online
read of one contact and of 500 contacts through ``get_online_features`` with the
``churn_v1`` FeatureService. The reads of the two stores are checked to be equal.

    python -m benchmarks.bench_online_store --customers 100000 [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report import measure, write_section


def _size_mb(path: Path) -> float:
    # WAL and journal files count too: they are part of what the store keeps on disk.
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20


def _read_times(store, service, ids: list[str], size: int, repeats: int) -> list[float]:
    rng = np.random.default_rng(0)
    size = min(size, len(ids))
    times = []
    for _ in range(repeats):
        rows = [{"customer_id": c} for c in rng.choice(ids, size=size, replace=False)]
        start = time.perf_counter()
        store.get_online_features(features=service, entity_rows=rows).to_dict()
        times.append((time.perf_counter() - start) * 1000)
    return times


def stock_store(packed, folder: Path):
    """A FeatureStore with Feast's own SQLite online store and the same objects applied."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    raw = {
        "project": packed.config.project,
        "provider": "local",
        "registry": {"registry_type": "file", "path": str(folder / "registry.db")},
        "offline_store": {"type": "duckdb"},
        "online_store": {"type": "sqlite", "path": str(folder / "online_store.db")},
        "entity_key_serialization_version": packed.config.entity_key_serialization_version,
    }
    config = RepoConfig(**raw)
    config.repo_path = packed.config.repo_path
    store = FeatureStore(repo_path=str(packed.config.repo_path), config=config)
    store.apply(
        [*packed.list_entities(), *packed.list_feature_views(), *packed.list_feature_services()]
    )
    return store


def run(customers: int, data_dir: Path, days: int = 365) -> dict:
    """Simulate, build the latest snapshot, then materialize and read with both stores."""
    os.environ["ENGAGE_DATA_DIR"] = str(data_dir)
    from engage.config import load_params, resolve_paths
    from engage.data.simulate import simulate_to_parquet
    from engage.specs import model_spec
    from features.aggregates import build_features
    from features.store import apply_repo, get_store, materialize_snapshot

    params = load_params(
        overrides=[
            f"simulate.customers={customers}",
            f"simulate.days={days}",
            "features.max_snapshots=1",  # only the snapshot the online store gets
        ]
    )
    paths = resolve_paths(params)
    if not paths.events.exists():
        simulate_to_parquet(params.simulate, params.data, paths.events, paths.customers)
    summary = build_features(params, paths.events, paths.customers, paths.features_dir)
    latest = max(summary.snapshots)
    shutil.rmtree(paths.feast_dir, ignore_errors=True)
    apply_repo(paths)
    packed = get_store(paths)
    stock = stock_store(packed, data_dir / "feast_stock")

    out = {
        "customers": customers,
        "features": sum(len(v.features) for v in packed.list_feature_views()),
    }
    ids = (
        pd.read_parquet(paths.features_dir / "customer_features", columns=["customer_id"])[
            "customer_id"
        ]
        .unique()
        .tolist()
    )
    for name, store in (("stock", stock), ("packed", packed)):
        m = measure(lambda store=store: materialize_snapshot(store, latest))
        service = store.get_feature_service(model_spec("churn").feature_service)
        _read_times(store, service, ids, 1, 20)  # warm the registry and SQLite caches
        one = _read_times(store, service, ids, 1, 300)
        many = _read_times(store, service, ids, 500, 10)
        out[name] = {
            "materialize_s": m.seconds,
            "peak_rss_mb": m.peak_rss_mb,
            "rows": m.result,
            "file_mb": _size_mb(Path(store.config.online_store.path)),
            "read1_ms": statistics.median(one),
            "read1_p99_ms": float(np.percentile(one, 99)),
            "read500_ms": statistics.median(many),
        }
        print(name, out[name], flush=True)
    sample = [{"customer_id": c} for c in ids[:: max(1, len(ids) // 2000)]]
    frames = [
        s.get_online_features(
            features=s.get_feature_service(model_spec("churn").feature_service),
            entity_rows=sample,
        ).to_df()
        for s in (stock, packed)
    ]
    a, b = (f.drop(columns="customer_id").astype(float).to_numpy() for f in frames)
    out["equal"] = bool(
        np.array_equal(np.isnan(a), np.isnan(b)) and np.allclose(a, b, equal_nan=True)
    )
    out["compared"] = len(sample)
    return out


def render(r: dict) -> str:
    s, p = r["stock"], r["packed"]
    lines = [
        "| online store | materialize (s) | contacts/s | peak RSS (MB) | file (MB) | "
        "read 1 contact, median (ms) | p99 (ms) | read 500 contacts, median (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, x in (
        ("Feast `sqlite` (one row per contact and feature)", s),
        ("`PackedSqliteOnlineStore` (one row per contact and view)", p),
    ):
        lines.append(
            f"| {label} | {x['materialize_s']:.1f} | {x['rows'] / x['materialize_s']:,.0f} | "
            f"{x['peak_rss_mb']:,.0f} | {x['file_mb']:,.0f} | {x['read1_ms']:.2f} | "
            f"{x['read1_p99_ms']:.2f} | {x['read500_ms']:.1f} |"
        )
    lines.append(
        f"| **ratio stock / packed** | **{s['materialize_s'] / p['materialize_s']:.1f}x** | | | "
        f"**{s['file_mb'] / p['file_mb']:.1f}x** | {s['read1_ms'] / p['read1_ms']:.1f}x | "
        f"{s['read1_p99_ms'] / p['read1_p99_ms']:.1f}x | {s['read500_ms'] / p['read500_ms']:.1f}x |"
    )
    return (
        "\n".join(lines)
        + f"\n\n{r['customers']:,} contacts, {r['features']} features in 3 views, the latest "
        "snapshot written by `features.store.materialize_snapshot` (the stock store through "
        "`FeatureStore.write_to_online_store`, the packed store from the DataFrame), reads "
        "through `get_online_features` with the `churn_v1` service. Reads of the two stores "
        f"on {r['compared']:,} contacts are {'equal' if r['equal'] else 'NOT equal'}. The file "
        "size includes SQLite's write-ahead log.\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the data here")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    folder = args.data_dir or Path(tempfile.mkdtemp(prefix="engage-online-"))
    try:
        result = run(args.customers, folder, args.days)
    finally:
        if args.data_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    body = render(result)
    print(body)
    if not args.no_write:
        cmd = f"python -m benchmarks.bench_online_store --customers {args.customers}"
        write_section("online_store", "Feast online store: packed vs stock SQLite", cmd, body)


if __name__ == "__main__":
    main()
