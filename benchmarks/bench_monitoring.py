"""The monitoring loop end to end on simulated drift, recorded in BENCHMARKS.md.

.venv/bin/python -m benchmarks.bench_monitoring [--customers N] [--days D] [--kind K]
    [--drift-day X] [--strength S] [--data-dir DIR] [--no-write]

One run: simulate with a drift from day X; train while the events end at day X (before
the drift); as time passes, score every weekly snapshot from a few weeks before the drift
to the end; `engage monitor` (the CLI, its exit code) on the full events; `engage retrain`
(the CLI); then the old and the new champion on the same rows: the new model's held-out
test as-of times (realised labels from `make_labels`, features from the same snapshots).

Scoring the weekly snapshots after the fact gives the very runs a weekly schedule would
have written: a snapshot at t only reads events strictly before t.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from benchmarks.report import ROOT, write_section

COMMAND = ".venv/bin/python -m benchmarks.bench_monitoring"
FMT = {
    **dict.fromkeys(["predicted_rate", "realised_rate", "at_risk_hit_rate"], "{:.1%}"),
    **dict.fromkeys(["realised", "predicted", "positive rate", "gain share"], "{:.1%}"),
    **dict.fromkeys(["roc_auc", "ROC-AUC", "PR-AUC", "PSI", "psi"], "{:.3f}"),
    **dict.fromkeys(["brier", "Brier", "ECE"], "{:.4f}"),
}


def _say(began: float, msg: str) -> None:
    print(f"[{time.perf_counter() - began:6.1f} s] {msg}", flush=True)


def _truncate(src: Path, dst: Path, cutoff: pd.Timestamp) -> None:
    """Events before ``cutoff`` (and the contacts seen by then): the data as of that day."""
    dst.mkdir(parents=True, exist_ok=True)
    ev = pq.read_table(src / "events.parquet").to_pandas()
    ev = ev[ev["event_time"] < cutoff]
    ev.to_parquet(dst / "events.parquet", index=False)
    cu = pq.read_table(src / "customers.parquet").to_pandas()
    cu[cu["first_seen"] < cutoff].to_parquet(dst / "customers.parquet", index=False)


def _cli(args: list[str], data_dir: Path, sets: list[str], log: Path) -> int:
    env = {**os.environ, "ENGAGE_DATA_DIR": str(data_dir)}
    cmd = [str(Path(sys.executable).with_name("engage"))]
    for s in sets:
        cmd += ["--set", s]
    with log.open("a") as f:
        f.write(f"\n$ engage {' '.join(args)}\n")
        f.flush()
        return subprocess.run(
            [*cmd, *args], env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT
        ).returncode


def _same_rows(paths, params, old, new, times) -> pd.DataFrame:
    """Old and new model on the same contacts and as-of times, against realised labels."""
    from features.snapshots import snapshot_path
    from monitoring.monitor import label_params
    from training.evaluate import probability_metrics
    from training.labels import make_labels

    rows = []
    customers = paths.customers if paths.customers.exists() else None
    for name, (m_old, v_old), (m_new, v_new) in zip(old, old.values(), new.values(), strict=True):
        labels = make_labels(
            paths.events, customers, times, label_params(params, m_new.trained_for), name
        )
        frames = []
        for t, g in labels.groupby("event_timestamp"):
            snap = pd.read_parquet(snapshot_path(paths.features_dir, t))
            frames.append(g.merge(snap, on="customer_id", how="left"))
        data = pd.concat(frames, ignore_index=True)
        y = data["label"].to_numpy()
        for who, model, version in (("old", m_old, v_old), ("new", m_new, v_new)):
            m = probability_metrics(y, model.predict_proba(data), params.training.ece_bins)
            rows.append(
                {
                    "model": name,
                    "champion": f"{who} (v{version})",
                    "rows": len(data),
                    "positive rate": float(y.mean()),
                    "ROC-AUC": m["roc_auc"],
                    "PR-AUC": m["pr_auc"],
                    "Brier": m["brier"],
                    "ECE": m["ece"],
                }
            )
    return pd.DataFrame(rows)


def _md(frame: pd.DataFrame, fmt: dict[str, str]) -> str:
    cols = list(frame.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in frame.itertuples(index=False):
        cells = []
        for c, v in zip(cols, r, strict=True):
            if isinstance(v, float) and np.isnan(v):
                cells.append("-")
            elif c in fmt:
                cells.append(fmt[c].format(v))
            else:
                cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:  # noqa: C901 - one linear scenario
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=12000)
    ap.add_argument("--days", type=int, default=364)
    ap.add_argument("--kind", default="competitor", choices=["competitor", "email_fatigue"])
    ap.add_argument("--drift-day", type=int, default=168)
    ap.add_argument("--strength", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "data" / "bench_monitoring")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args(argv)
    if (args.days - args.drift_day) % 7:
        ap.error("--days minus --drift-day must be a multiple of 7 (same weekly snapshot grid)")
    began = time.perf_counter()
    sets = [
        f"simulate.customers={args.customers}",
        f"simulate.days={args.days}",
        f"simulate.seed={args.seed}",
        f"simulate.drift_kind={args.kind}",
        f"simulate.drift_start_day={args.drift_day}",
        f"simulate.drift_strength={args.strength}",
        "scoring.top_k_reasons=0",  # reasons play no part in monitoring; 5x faster runs
    ]
    root = args.data_dir.resolve()
    shutil.rmtree(root, ignore_errors=True)
    full, work = root / "full", root / "work"
    log = root / "commands.log"
    os.environ["ENGAGE_DATA_DIR"] = str(work)
    work.mkdir(parents=True)

    from engage.config import load_params, resolve_paths
    from engage.data.simulate import simulate_to_parquet
    from features.aggregates import build_features
    from features.snapshots import list_snapshots
    from monitoring.monitor import monitor
    from serving.scoring import score
    from training.registry import load_model
    from training.train import train_model

    params = load_params(overrides=tuple(sets))
    paths = resolve_paths(params)
    start = pd.Timestamp(params.simulate.start, tz="UTC")
    drift_at = start + pd.Timedelta(days=args.drift_day)

    _say(began, f"simulating {args.customers:,} contacts, {args.days} days, {args.kind} drift")
    summary = simulate_to_parquet(
        params.simulate, params.data, full / "events.parquet", full / "customers.parquet"
    )
    _say(began, f"{summary.events:,} events; latent {summary.latent}")

    # 1. Before the drift: the events end on the drift day; features, train.
    _truncate(full, work, drift_at)
    build_features(params, paths.events, paths.customers, paths.features_dir)
    from features.store import apply_repo, get_store, materialize_snapshot

    apply_repo(paths)
    materialize_snapshot(get_store(paths), list_snapshots(paths.features_dir)[-1].as_of)
    for name in ("churn", "appetence"):
        r = train_model(paths, params, name)
        _say(began, f"trained {name} v{r.version} before the drift: {r.ranges}")
    old = {m: load_model(paths, m) for m in ("churn", "appetence")}

    # 2. Time passes: all events; weekly snapshots; score each week from 4 weeks before.
    shutil.copyfile(full / "events.parquet", paths.events)
    shutil.copyfile(full / "customers.parquet", paths.customers)
    build_features(params, paths.events, paths.customers, paths.features_dir)
    snaps = [
        s for s in list_snapshots(paths.features_dir) if s.as_of >= drift_at - pd.Timedelta(weeks=4)
    ]
    for s in snaps:
        score(paths, params, as_of=s.as_of)
    _say(
        began,
        f"scored {len(snaps)} weekly runs ({snaps[0].as_of:%Y-%m-%d}..{snaps[-1].as_of:%Y-%m-%d})",
    )

    # 3. engage monitor on the full events: realised outcomes, drift, exit code.
    report = monitor(paths, params)
    t0 = time.perf_counter()
    monitor_exit = _cli(["monitor"], work, sets, log)
    monitor_s = time.perf_counter() - t0
    _say(began, f"engage monitor exit {monitor_exit} ({monitor_s:.0f} s)")

    # 4. engage retrain: features, train (changed events), gate, score, monitor.
    t0 = time.perf_counter()
    retrain_exit = _cli(["retrain"], work, sets, log)
    retrain_s = time.perf_counter() - t0
    new = {m: load_model(paths, m) for m in ("churn", "appetence")}
    _say(
        began,
        f"engage retrain exit {retrain_exit} ({retrain_s:.0f} s); champions now "
        f"{ {m: v for m, (_, v) in new.items()} }",
    )
    t0 = time.perf_counter()
    again_exit = _cli(["retrain"], work, sets, log)
    again_s = time.perf_counter() - t0
    after_again = {m: load_model(paths, m)[1] for m in ("churn", "appetence")}
    _say(began, f"second engage retrain exit {again_exit} ({again_s:.0f} s): {after_again}")

    # 5. Old and new champions on the same rows: the new model's held-out test times.
    test_range = new["churn"][0].training["as_of_test"]
    lo, hi = (pd.Timestamp(x, tz="UTC") for x in test_range.split(" ")[0].split(".."))
    times = [s.as_of for s in list_snapshots(paths.features_dir) if lo <= s.as_of <= hi]
    same = _same_rows(paths, params, old, new, times)

    # Realised quality of the old champion over time (complete windows only).
    frame = report.outcome_frame()
    frame = frame[frame["status"] == "complete"].copy()
    frame["period"] = np.where(frame["as_of"] < drift_at, "before drift", "after drift")
    over_time = frame[
        [
            "model",
            "as_of",
            "period",
            "evaluated",
            "predicted_rate",
            "realised_rate",
            "roc_auc",
            "brier",
            "at_risk_hit_rate",
        ]
    ].copy()
    over_time["as_of"] = over_time["as_of"].dt.strftime("%Y-%m-%d")
    summary_rows = (
        frame.groupby(["model", "period"], sort=False)
        .agg(
            runs=("run_id", "size"),
            roc_auc=("roc_auc", "mean"),
            brier=("brier", "mean"),
            realised=("realised_rate", "mean"),
            predicted=("predicted_rate", "mean"),
        )
        .reset_index()
    )
    drift_rows = []
    for d in report.feature_drift:
        if d.table.empty:
            continue
        top = d.table.head(5)
        for r in top.itertuples(index=False):
            drift_rows.append(
                {
                    "model": f"{d.model} v{d.version}",
                    "feature": r.feature,
                    "PSI": r.psi,
                    "level": r.level,
                    "gain share": r.importance,
                }
            )
    score_last = report.score_drift.tail(6)[["to_run", "score", "psi", "level"]]
    alerts = [a for a in report.alerts if a.level == "alert"]

    v_old = {m: v for m, (_, v) in old.items()}
    shown_log = log.relative_to(ROOT) if log.is_relative_to(ROOT) else log
    body = f"""
Scenario: `{args.kind}` drift of strength {args.strength} from day {args.drift_day}
({drift_at:%Y-%m-%d}), {args.customers:,} contacts over {args.days} days (seed {args.seed}),
{summary.events:,} events; latent: {summary.latent}. The old champions (churn v{v_old["churn"]},
appetence v{v_old["appetence"]}) were trained on the events up to the drift day; every
weekly snapshot from four weeks before the drift to the end was then scored with them
({len(snaps)} runs). Label horizon {params.labels.horizon_days} days.

**`engage monitor`** on the full events: exit **{monitor_exit}** ({monitor_s:.0f} s, 0 = no
alert, 3 = alert); {len(alerts)} alert(s), e.g.:

{chr(10).join(f"- {a.message}" for a in alerts[:6])}

Realised quality of the old champions, complete label windows only (means over runs):

{_md(summary_rows, FMT)}

Run by run:

{_md(over_time, FMT)}

Most shifted features against the champions' reference window (`monitoring.reference_window`):

{_md(pd.DataFrame(drift_rows), FMT)}

Score drift between the last runs:

{_md(score_last, FMT)}

**`engage retrain`** (features, train with the gate, score, monitor): exit {retrain_exit},
{retrain_s:.0f} s; champions after it: {new_versions(new)}. A second `engage retrain` on the
same events: exit {again_exit}, {again_s:.0f} s, champions {after_again} (no new version).

**Old against new champion on the same rows**: the new model's held-out test as-of times
({test_range.split(" (")[0]}), every contact of each model's label population, realised
labels from `make_labels`, features from the same snapshots:

{_md(same, FMT)}

Total wall time {time.perf_counter() - began:.0f} s. Command output: `{shown_log}`.
"""
    print(body)
    if not args.no_write:
        command = COMMAND + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
        title = "Monitoring loop on simulated drift"
        print(f"wrote {write_section('monitoring', title, command, body)}")


def new_versions(models: dict) -> dict[str, str]:
    """Model name -> version of loaded champions."""
    return {m: v for m, (_, v) in models.items()}


if __name__ == "__main__":
    main()
