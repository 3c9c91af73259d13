"""How often contacts flip between stages week after week, without and with the stability rule.

Scores the last ``--weeks`` weekly snapshots of one data set in order, each run against
the run before it (what ``engage score`` does week after week), once per rule:

- *plain*: ``index.hysteresis = 0`` and ``index.min_dwell_runs = 1``, the thresholds alone;
- the rule of ``params.yaml`` and a few alternatives (``--variants``).

Figures, per pair of consecutive runs, averaged over the weeks:

- *moves*: share of the contacts present in both runs whose stage changed;
- *flip rate*: share of the contacts present in runs k-1 .. k+2 whose stage changed at
  run k and was back to the run k-1 stage at run k+1 or k+2 ("changes and changes back
  within 2 weeks");
- *lasting moves*: moves at run k still in place two runs later (the moves a team should
  act on);
- *Purchase fall-backs*: of the prospects entering Purchase at run k, the share back in
  Nurture at run k+1;
- *Exit entries undone*: of the customers entering Exit at run k, the share back in
  Retention within 2 runs.

Every rule scores the same snapshots with the same champions (no reasons: they do not
decide stages), each in its own scores folder under the data dir, removed afterwards.

    ENGAGE_DATA_DIR=DIR .venv/bin/python -m benchmarks.bench_stability [--weeks 12]

Without ``ENGAGE_DATA_DIR`` (or ``--data-dir``), a temporary demo pipeline is built
first (``--customers`` contacts, 365 days), as ``benchmarks.bench_scoring`` does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report import write_section

COMMAND = "ENGAGE_DATA_DIR=DIR .venv/bin/python -m benchmarks.bench_stability {args}"
DEFAULT_VARIANTS = ("0.02:1", "0.05:1", "0.02:2")


def stage_matrix(paths, params, champions, snapshots) -> pd.DataFrame:
    """Stages of every contact (rows) at each snapshot (columns), each run after the last."""
    from features.catalog import ENTITY_KEY
    from serving.runs import read_run
    from serving.scoring import score

    shutil.rmtree(paths.scores_dir, ignore_errors=True)
    columns = {}
    for k, snap in enumerate(snapshots):
        run = score(paths, params, as_of=snap.as_of, run_id=f"week{k:02d}", champions=champions)
        _, frame = read_run(paths, run.run_id, columns=[ENTITY_KEY, "stage"])
        columns[snap.as_of] = frame.set_index(ENTITY_KEY)["stage"]
    shutil.rmtree(paths.scores_dir, ignore_errors=True)
    return pd.DataFrame(columns)


def flip_figures(stages: pd.DataFrame) -> dict[str, float]:
    """The figures of the module docstring from a contacts x weeks frame of stage names."""
    s = stages.to_numpy(dtype=object)
    weeks = s.shape[1]
    present = ~pd.isna(stages).to_numpy()
    moves, flips, lasting, fallback, undone = [], [], [], [], []
    for k in range(1, weeks):
        both = present[:, k - 1] & present[:, k]
        moved = both & (s[:, k] != s[:, k - 1])
        moves.append(moved.sum() / max(both.sum(), 1))
        if k + 1 < weeks:
            entered = both & present[:, k + 1]
            entered &= (s[:, k - 1] == "Nurture") & (s[:, k] == "Purchase")
            if entered.any():
                fallback.append((s[entered, k + 1] == "Nurture").mean())
        if k + 2 < weeks:
            seen = both & present[:, k + 1] & present[:, k + 2]
            back = (s[:, k + 1] == s[:, k - 1]) | (s[:, k + 2] == s[:, k - 1])
            flipped = seen & moved & back
            flips.append(flipped.sum() / max(seen.sum(), 1))
            still = seen & moved & (s[:, k + 1] == s[:, k]) & (s[:, k + 2] == s[:, k])
            lasting.append(still.sum() / max(seen.sum(), 1))
            exits = seen & (s[:, k - 1] == "Retention") & (s[:, k] == "Exit")
            if exits.any():
                undone.append(
                    ((s[exits, k + 1] == "Retention") | (s[exits, k + 2] == "Retention")).mean()
                )
    contacts = int(present[:, -1].sum())
    return {
        "contacts": contacts,
        "moves": float(np.mean(moves)),
        "flip_rate": float(np.mean(flips)),
        "lasting": float(np.mean(lasting)),
        "fallback": float(np.mean(fallback)) if fallback else float("nan"),
        "undone": float(np.mean(undone)) if undone else float("nan"),
        "exit_last": int((stages.iloc[:, -1] == "Exit").sum()),
        "purchase_last": int((stages.iloc[:, -1] == "Purchase").sum()),
    }


def rule_params(base, hysteresis: float, dwell: int, folder: str):
    """``base`` with another stability rule, scoring into its own folder without reasons."""
    index = base.index.model_copy(update={"hysteresis": hysteresis, "min_dwell_runs": dwell})
    scoring = base.scoring.model_copy(update={"dir": folder, "top_k_reasons": 0})
    return base.model_copy(update={"index": index, "scoring": scoring})


def run(weeks: int, variants: list[str]) -> str:
    """Score the last ``weeks`` snapshots under each rule; returns the markdown body."""
    from engage.config import Paths, load_params, resolve_paths
    from features.snapshots import list_snapshots
    from serving.champions import load_champions

    base = load_params()
    paths = resolve_paths(base)
    snapshots = list_snapshots(paths.features_dir)[-weeks:]
    if len(snapshots) < 4:
        raise SystemExit(f"need at least 4 snapshots, found {len(snapshots)}")
    champions = load_champions(paths, base)
    configured = f"{base.index.hysteresis:g}:{base.index.min_dwell_runs}"
    rules = [("plain (thresholds only)", 0.0, 1)]
    for text in dict.fromkeys([configured, *variants]):
        h, d = text.split(":")
        name = f"hysteresis {float(h):g}, dwell {int(d)}"
        if text == configured:
            name += " (params.yaml)"
        rules.append((name, float(h), int(d)))
    rows = []
    for i, (name, h, d) in enumerate(rules):
        params = rule_params(base, h, d, f"scores-bench-stability-{i}")
        rule_paths = Paths(paths.root, paths.data_dir, paths.mlruns_dir, params)
        began = time.perf_counter()
        figures = flip_figures(stage_matrix(rule_paths, params, champions, snapshots))
        figures["seconds"] = time.perf_counter() - began
        print(f"{name}: {figures}", flush=True)
        rows.append((name, figures))
    plain = rows[0][1]
    lines = [
        f"{len(snapshots)} consecutive weekly snapshots "
        f"({snapshots[0].as_of:%Y-%m-%d} .. {snapshots[-1].as_of:%Y-%m-%d}), "
        f"{plain['contacts']:,} contacts at the last; the same champions "
        f"(churn v{champions.versions['churn']}, appetence v{champions.versions['appetence']}) "
        f"and thresholds (tau_purchase {base.index.tau_purchase:g}, tau_churn "
        f"{base.index.tau_churn:g}) for every rule. Shares are per week, averaged over the "
        "weeks; the ratio compares with the plain rule of the same run.",
        "",
        "| rule | moves / week | flip rate / week | flip ratio vs plain | lasting moves / week "
        "| Purchase -> Nurture next week | Exit entries undone in 2 weeks | Exit / Purchase "
        "at the last week |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in rows:
        ratio = f["flip_rate"] / plain["flip_rate"] if plain["flip_rate"] else float("nan")
        lines.append(
            f"| {name} | {f['moves']:.2%} | {f['flip_rate']:.2%} | {ratio:.2f} | "
            f"{f['lasting']:.2%} | {f['fallback']:.1%} | {f['undone']:.1%} | "
            f"{f['exit_last']:,} / {f['purchase_last']:,} |"
        )
    lines += [
        "",
        "A *flip* is a stage change at week k undone at week k+1 or k+2; *lasting* moves are "
        "still in place two weeks later. The rule should remove flips and keep lasting moves "
        "(a dwell rule delays every move by up to its length).",
    ]
    return "\n".join(lines)


def main() -> None:
    """Command-line entry point: score, measure, write the BENCHMARKS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weeks", type=int, default=12)
    parser.add_argument(
        "--variants",
        nargs="*",
        default=list(DEFAULT_VARIANTS),
        help="other rules to compare, as HYSTERESIS:MIN_DWELL_RUNS",
    )
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--customers", type=int, default=20_000)
    args = parser.parse_args()
    tmp = None
    if args.data_dir is not None:
        os.environ["ENGAGE_DATA_DIR"] = str(args.data_dir.resolve())
    elif not os.environ.get("ENGAGE_DATA_DIR"):
        from benchmarks.bench_scoring import build_pipeline

        tmp = tempfile.mkdtemp(prefix="bench-stability-")
        build_pipeline(Path(tmp), args.customers, 365)
    try:
        body = run(args.weeks, args.variants)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    shown = f"--weeks {args.weeks}"
    path = write_section(
        "stability",
        "Stage stability: flips per week without and with the stability rule",
        COMMAND.format(args=shown),
        body,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
