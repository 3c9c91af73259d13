"""Benchmark of batch scoring (``engage score``): contacts per second with reasons.

Both measurements score the latest snapshot of one data set with the champion models
through :func:`serving.scoring.score` (read, predict, index, segments, value, write):

- *baseline*: ``scoring.top_k_reasons = 0`` - predictions only, no SHAP;
- *with reasons*: the configured top-k TreeSHAP reasons and their sentences.

Each runs in a fresh Python process so its peak RSS is its own; model loading is timed
apart. A breakdown of one batch (predict / TreeSHAP / top-k + sentences) shows where the
time goes. Without ``--data-dir`` a temporary pipeline is built first (simulate
``--customers`` contacts, features, Feast, both models); with it, an existing data
folder (``ENGAGE_DATA_DIR`` of a finished ``engage run``) is reused as is.

    .venv/bin/python -m benchmarks.bench_scoring [--customers 20000] [--data-dir DIR]
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

from benchmarks.report import ROOT, measure, write_section
from engage.specs import MODEL_NAMES, MODEL_SPECS

COMMAND = ".venv/bin/python -m benchmarks.bench_scoring {args}"
MODES = ("baseline", "full")


def build_pipeline(data_dir: Path, customers: int, days: int) -> dict:
    """Simulate, build features, feast apply + materialize, train both models."""
    os.environ["ENGAGE_DATA_DIR"] = str(data_dir)
    from engage.config import load_params, resolve_paths
    from engage.data.simulate import simulate_to_parquet
    from features.aggregates import build_features
    from features.store import apply_repo, get_store, materialize_snapshot
    from training.train import train_model

    params = load_params(overrides=(f"simulate.customers={customers}", f"simulate.days={days}"))
    paths = resolve_paths(params)
    began = time.perf_counter()
    simulate_to_parquet(params.simulate, params.data, paths.events, paths.customers)
    summary = build_features(params, paths.events, paths.customers, paths.features_dir)
    apply_repo(paths)
    materialize_snapshot(get_store(paths), max(summary.snapshots))
    trees = {}
    for model in MODEL_NAMES:
        result = train_model(paths, params, model)
        booster = result.engage_model.booster  # None when a baseline is served
        trees[model] = booster.num_trees() if booster is not None else 0
    return {"setup_s": time.perf_counter() - began, "trees": trees}


def breakdown(paths, params, champions, rows: int) -> dict:
    """Seconds per step on the first ``rows`` contacts of the latest snapshot."""
    import pyarrow.parquet as pq

    from features.snapshots import pick_snapshot
    from serving.champions import make_explainers, typical_by_half

    snap = pick_snapshot(paths.features_dir)
    frame = next(pq.ParquetFile(snap.path).iter_batches(batch_size=rows)).to_pandas()
    t = time.perf_counter()
    explainers = make_explainers(champions, params, typical_by_half(snap.path, champions.features))
    setup_s = time.perf_counter() - t
    k = params.scoring.top_k_reasons
    out = {"rows": len(frame), "predict_s": 0.0, "shap_s": 0.0, "topk_s": 0.0, "text_s": 0.0}
    out["setup_s"] = setup_s
    lgb_rows, lgb_s = 0, 0.0
    for name, spec in MODEL_SPECS.items():
        model, part = champions[name], frame[frame["has_purchased"].to_numpy() == spec.half]
        t0 = time.perf_counter()
        model.predict_proba(part)
        t1 = time.perf_counter()
        contrib = explainers[name].contributions(part)
        t2 = time.perf_counter()
        reasons = explainers[name].reasons(part, k, contrib=contrib)
        t3 = time.perf_counter()
        reasons.to_arrow()
        t4 = time.perf_counter()
        out["predict_s"] += t1 - t0
        out["shap_s"] += t2 - t1
        out["topk_s"] += t3 - t2
        out["text_s"] += t4 - t3
        # LightGBM's own pred_contrib on a sample, for the speed-up of the leaf tables.
        sample = part.head(3000)
        t5 = time.perf_counter()
        model.contributions(sample)
        lgb_s += time.perf_counter() - t5
        lgb_rows += len(sample)
    out["pred_contrib_per_s"] = lgb_rows / lgb_s if lgb_s else float("nan")
    out["tree_shap_per_s"] = len(frame) / out["shap_s"] if out["shap_s"] else float("nan")
    return out


def worker(mode: str, data_dir: Path) -> dict:
    """Score once in this process (``mode``: baseline or full); returns the figures."""
    os.environ["ENGAGE_DATA_DIR"] = str(data_dir)
    from benchmarks.report import max_rss_mb
    from engage.config import load_params, resolve_paths
    from features.snapshots import pick_snapshot
    from serving.champions import load_champions
    from serving.runs import run_path
    from serving.scoring import score

    overrides = ("scoring.top_k_reasons=0",) if mode == "baseline" else ()
    params = load_params(overrides=overrides)
    paths = resolve_paths(params)
    t = time.perf_counter()
    champions = load_champions(paths, params)
    load_s = time.perf_counter() - t
    run_id = f"bench-{mode}"
    start_rss = max_rss_mb()
    m = measure(lambda: score(paths, params, run_id=run_id, champions=champions))
    run = m.result
    path = run_path(paths, run_id)
    size_mb = path.stat().st_size / 2**20
    path.unlink()  # a benchmark run is not history
    out = {
        "mode": mode,
        "rows": run.rows,
        "seconds": m.seconds,
        "per_s": run.rows / m.seconds,
        "peak_rss_mb": m.peak_rss_mb,
        "start_rss_mb": start_rss,
        "load_s": load_s,
        "file_mb": size_mb,
        "as_of": str(pick_snapshot(paths.features_dir).as_of),
        "trees": {
            n: m.booster.num_trees() if m.booster is not None else 0
            for n, m in champions.models.items()
        },
        "features": len(champions.features),
        "batch_rows": params.scoring.batch_rows,
        "top_k": params.scoring.top_k_reasons,
    }
    if mode == "full":
        out["breakdown"] = breakdown(paths, params, champions, params.scoring.batch_rows)
    return out


def run_worker(mode: str, data_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_scoring", "--worker", mode]
    cmd += ["--data-dir", str(data_dir)]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(base: dict, full: dict, setup: dict | None) -> str:
    ratio = full["seconds"] / base["seconds"]
    lines = [
        "| run | contacts | seconds | contacts/s | peak RSS (MB) | RSS at start (MB) "
        "| scores file (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in (("baseline: predictions only", base), ("with top-k reasons", full)):
        lines.append(
            f"| {name} | {r['rows']:,} | {r['seconds']:.1f} | {r['per_s']:,.0f} "
            f"| {r['peak_rss_mb']:,.0f} | {r['start_rss_mb']:,.0f} | {r['file_mb']:,.1f} |"
        )
    b = full["breakdown"]
    n = b["rows"]
    lines += [
        "",
        f"Ratio with reasons / baseline: **{ratio:.1f}x**. Models: churn "
        f"{full['trees']['churn']} trees, appetence {full['trees']['appetence']} trees, "
        f"{full['features']} features; top-{full['top_k']} reasons; batches of "
        f"{full['batch_rows']:,} rows; model loading {full['load_s']:.1f} s (not counted).",
        "",
        f"One batch of {n:,} contacts (each explained by the model of its half): predict "
        f"{b['predict_s']:.2f} s, TreeSHAP {b['shap_s']:.2f} s, top-k {b['topk_s']:.2f} s, "
        f"sentences + Arrow {b['text_s']:.2f} s. TreeSHAP by leaf tables "
        f"(`serving.explain.TreeShap`): {b['tree_shap_per_s']:,.0f} contacts/s; LightGBM "
        f"`pred_contrib` on a sample: {b['pred_contrib_per_s']:,.0f} contacts/s "
        f"({b['tree_shap_per_s'] / b['pred_contrib_per_s']:.1f}x slower). One-off set-up "
        f"inside the run: {b['setup_s']:.1f} s (medians of the snapshot, leaf tables of both "
        "models), plus the numba cache load on the first call.",
    ]
    if setup:
        lines.append(
            f"\nData set built by the benchmark in {setup['setup_s']:.0f} s (simulate, "
            "features, Feast, training; not counted)."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--data-dir", type=Path, help="Reuse this pipeline data folder.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary data folder.")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.data_dir.resolve())))
        return
    setup = None
    tmp = None
    if args.data_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench_scoring_"))
        data_dir = tmp
        print(f"building a {args.customers:,}-contact pipeline in {data_dir} ...", flush=True)
        setup = run_setup(data_dir, args.customers, args.days)
        print(f"  done in {setup['setup_s']:.0f} s", flush=True)
    else:
        data_dir = args.data_dir.resolve()
    try:
        base = run_worker("baseline", data_dir)
        print(f"baseline: {base['rows']:,} contacts in {base['seconds']:.1f} s", flush=True)
        full = run_worker("full", data_dir)
        print(f"with reasons: {full['rows']:,} contacts in {full['seconds']:.1f} s", flush=True)
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    shown = f"--customers {args.customers}" if args.data_dir is None else "--data-dir DIR"
    path = write_section(
        "scoring",
        f"Batch scoring with reasons ({full['rows']:,} contacts)",
        COMMAND.format(args=shown),
        markdown(base, full, setup),
    )
    print(f"wrote {path}")


def run_setup(data_dir: Path, customers: int, days: int) -> dict:
    """Build the pipeline in a child process (its memory is not the benchmark's)."""
    code = (
        "import json, sys; from pathlib import Path; "
        "from benchmarks.bench_scoring import build_pipeline; "
        "print(json.dumps(build_pipeline(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))"
    )
    cmd = [sys.executable, "-c", code, str(data_dir), str(customers), str(days)]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
