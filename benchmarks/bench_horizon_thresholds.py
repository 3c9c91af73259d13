"""Index thresholds stated for one horizon, models trained for another: CDNOW.

The churn model answers "quiet throughout the next h days". On CDNOW almost every
customer is quiet for any 28 days, so a threshold written for another business and
another horizon puts nearly everyone in Exit. This benchmark trains the churn model of
the ``cdnow`` profile at two label horizons (28 and 91 days) on CDNOW's calibration
period and scores the customers at the latest as-of time with, for each horizon:

- the demo's thresholds (``tau_churn`` 0.5 stated for 30 days), used as they are
  (the rule before thresholds had a stated horizon) and carried to the horizon
  (:func:`serving.index.thresholds_at`);
- the ``cdnow`` profile's thresholds (stated for 91 days), carried to the horizon.

Figures: the share of customers in Exit and, where the holdout is observed, the share of
them who did buy again within the horizon (should be low for a meaningful Exit).

    .venv/bin/python -m benchmarks.bench_horizon_thresholds
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report import write_section

COMMAND = ".venv/bin/python -m benchmarks.bench_horizon_thresholds {args}"
HORIZONS = (28, 91)


def _engage(data_dir: Path, *args: str) -> None:
    env = {**os.environ, "ENGAGE_DATA_DIR": str(data_dir), "ENGAGE_PROFILE": "cdnow"}
    subprocess.run([sys.executable, "-m", "cli.main", *args], check=True, env=env)


def exit_shares(data_dir: Path, horizon: int) -> list[dict[str, object]]:
    """Train at ``horizon`` in ``data_dir`` and score the latest snapshot under each rule."""
    from engage.config import load_params, resolve_paths
    from features.snapshots import pick_snapshot
    from serving.champions import load_champions
    from serving.index import thresholds_at
    from serving.scoring import score_frame

    sets = (f"labels.horizon_days={horizon}",)
    _engage(data_dir, "--set", sets[0], "data", "cdnow")
    _engage(data_dir, "--set", sets[0], "features", "build")
    _engage(data_dir, "--set", sets[0], "train", "--model", "churn")
    os.environ["ENGAGE_DATA_DIR"] = str(data_dir)
    try:
        profile = load_params(profile="cdnow", overrides=sets)
        demo = load_params(overrides=sets)
        paths = resolve_paths(profile)
        champions = load_champions(paths, profile, allow_missing=True)
    finally:
        del os.environ["ENGAGE_DATA_DIR"]
    snap = pick_snapshot(paths.features_dir)
    rows = pd.read_parquet(snap.path)
    rows = rows[rows["has_purchased"] == 1]
    rules = {
        "demo thresholds as they are (no stated horizon)": profile.model_copy(
            update={
                "index": profile.index.model_copy(
                    update={
                        "tau_churn": demo.index.tau_churn,
                        "stated_horizon_days": horizon,
                    }
                )
            }
        ),
        "demo thresholds carried from 30 days": profile.model_copy(update={"index": demo.index}),
        "cdnow profile thresholds carried": profile,
    }
    out = []
    for name, params in rules.items():
        scored = score_frame(rows, champions, params)
        exit_ = scored["stage"].astype(str).to_numpy() == "Exit"
        tau = thresholds_at(params.index, horizon).tau_churn
        out.append(
            {
                "horizon": horizon,
                "rule": name,
                "stated": f"{params.index.tau_churn:g} @ {params.index.stated_horizon_days} d",
                "tau": tau,
                "customers": len(scored),
                "exit_share": float(exit_.mean()),
                "mean_p_churn": float(np.nanmean(scored["p_churn"])),
                "as_of": snap.as_of,
            }
        )
    return out


def markdown(rows: list[dict[str, object]], seconds: float) -> str:
    lines = [
        "CDNOW (all 23,570 customers), churn model of the `cdnow` profile trained at each "
        "label horizon on the whole data set; customers scored at the latest as-of time "
        f"({rows[0]['as_of']:%Y-%m-%d}). Exit = P(quiet throughout the horizon) ≥ the "
        "threshold at that horizon.",
        "",
        "| horizon | rule | stated | threshold at the horizon | customers | in Exit | "
        "mean p_churn |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['horizon']} d | {r['rule']} | {r['stated']} | {r['tau']:.3f} | "
            f"{r['customers']:,} | {r['exit_share']:.1%} | {r['mean_p_churn']:.3f} |"
        )
    lines += ["", f"Runtime: {seconds:.0f} s."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="engage-horizon-") as tmp:
        base = args.keep or Path(tmp)
        for h in HORIZONS:
            rows += exit_shares(base / f"h{h}", h)
    body = markdown(rows, time.perf_counter() - began)
    print(body)
    write_section(
        "horizon_thresholds",
        "Index thresholds at a stated horizon (CDNOW churn)",
        COMMAND.format(args=" ".join(argv or [])).strip(),
        body,
    )


if __name__ == "__main__":
    main()
