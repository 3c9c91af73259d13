"""Benchmark of the models against the baselines of the same run, and of the at-risk list.

On the demo data (``--customers`` contacts, ``--days`` days), in one run:

1. both models are trained through the product (:func:`training.train.train_model`):
   LightGBM and the baselines (recency alone, RFM, logistic regression, BG/NBD for
   appetence) fitted on the same training rows and scored on the same later test rows;
   the table gives ROC-AUC, PR-AUC and precision in the top decile of each, and which
   one the gate served;
2. ablations of LightGBM on the same training frames (no MLflow): without the
   monotone constraints, without the BG/NBD inputs, without both;
3. the latest snapshot is scored (:func:`serving.scoring.score`) and the top-N at-risk
   list (reachable customers by value at risk) is compared with the list as it was built
   before (every customer by value at risk): share of already-lapsed customers and the
   value at risk they hold; plus how many Exit customers are lapsed.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m benchmarks.bench_models [--customers 20000]
        [--days 365] [--data-dir DIR] [--top 100 500]

Without ``--data-dir`` the data set is built in a temporary folder (simulate, features,
Feast); with it, the events and snapshots found there are reused and the models retrained.
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

COMMAND = "OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m benchmarks.bench_models {args}"
METRICS = ("roc_auc", "pr_auc", "precision_top_decile")
ABLATIONS = {
    "LightGBM as configured": (),
    "without monotone constraints": ("training.monotone_constraints=false",),
    "without BG/NBD inputs": ("training.btyd_inputs=false",),
    "without both": ("training.monotone_constraints=false", "training.btyd_inputs=false"),
}


def prepare(data_dir: Path, customers: int, days: int):
    """The parameters and paths of the data set, building it when absent."""
    os.environ["ENGAGE_DATA_DIR"] = str(data_dir)
    from engage.config import load_params, resolve_paths
    from engage.data.simulate import simulate_to_parquet
    from features.aggregates import build_features
    from features.store import apply_repo, get_store, materialize_snapshot

    params = load_params(overrides=(f"simulate.customers={customers}", f"simulate.days={days}"))
    paths = resolve_paths(params)
    built = not paths.events.exists()
    if built:
        simulate_to_parquet(params.simulate, params.data, paths.events, paths.customers)
        summary = build_features(params, paths.events, paths.customers, paths.features_dir)
        apply_repo(paths)
        materialize_snapshot(get_store(paths), max(summary.snapshots))
    return params, paths, built


def train_all(params, paths) -> tuple[dict, dict]:
    """Train both models through the product; returns results and training frames."""
    from engage.specs import MODEL_NAMES
    from training.dataset import training_frame
    from training.train import train_model

    results, frames = {}, {}
    for model in MODEL_NAMES:
        began = time.perf_counter()
        frames[model] = training_frame(paths, params, model)
        results[model] = train_model(paths, params, model, frame=frames[model])
        results[model].seconds = time.perf_counter() - began
    return results, frames


def ablations(params, frames: dict) -> dict:
    """LightGBM's test metrics per ablation and model (same frames, same split)."""
    from engage.config import load_params
    from training.fit_evaluate import fit_and_evaluate

    out: dict[str, dict[str, dict[str, float]]] = {}
    base = (f"simulate.customers={params.simulate.customers}", "training.refit=false")
    for name, overrides in ABLATIONS.items():
        variant = load_params(overrides=(*base, *overrides))
        out[name] = {
            model: fit_and_evaluate(frame, variant, model).metrics["model"]
            for model, frame in frames.items()
        }
    return out


def at_risk_lists(params, paths, tops: list[int]) -> dict:
    """Score the latest snapshot; compare the reachable at-risk list with the old one."""
    from serving.at_risk import at_risk_list
    from serving.runs import read_run
    from serving.scoring import score

    run = score(paths, params)
    _, scores = read_run(paths, run.run_id)
    customers = scores[scores["has_purchased"] == 1]
    rows = []
    for top in tops:
        _, new = at_risk_list(paths, top=top)
        # The list as it was built before: every customer by value at risk.
        old = customers.nlargest(top, "value_at_risk", keep="first")
        for label, frame in (("before: every customer", old), ("now: reachable only", new)):
            lapsed = frame["lapsed"].to_numpy(bool)
            var = frame["value_at_risk"].to_numpy(float)
            lost_or_risk = frame["segment"].isin(["Lost", "At risk"]).to_numpy()
            rows.append(
                {
                    "top": top,
                    "list": label,
                    "lapsed_share": float(lapsed.mean()) if len(frame) else 0.0,
                    "lost_at_risk_share": float(lost_or_risk.mean()) if len(frame) else 0.0,
                    "var_total": float(var.sum()),
                    "var_lapsed": float(var[lapsed].sum()),
                }
            )
    exit_ = customers[customers["stage"] == "Exit"]
    return {
        "run": run,
        "rows": rows,
        "customers": len(customers),
        "lapsed": int(customers["lapsed"].sum()),
        "exit": len(exit_),
        "exit_lapsed": int(exit_["lapsed"].sum()),
        "exit_lost_at_risk": int(exit_["segment"].isin(["Lost", "At risk"]).sum()),
    }


def _f(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def report(params, results: dict, ablation: dict, lists: dict, setup_s: float | None) -> str:
    from training.fit_evaluate import DISPLAY

    lines = []
    for model, r in results.items():
        facts = r.engage_model.training
        lines += [
            f"### {model}: {facts['as_of_test']} test rows, population: "
            f"{r.engage_model.trained_for.get('population', '')}",
            "",
            f"Served: **{DISPLAY[r.chosen]}** ({r.kind}). {r.selection}. "
            f"Refit on {facts.get('refit_rows', 0):,} rows ({facts.get('refit_as_of', '-')}). "
            f"Trained in {r.seconds:.0f} s (Feast retrieval, leakage audit, every method, "
            "refit, MLflow).",
            "",
            "| method | ROC-AUC | PR-AUC | precision top 10 % | Brier | ECE |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for who, m in r.metrics.items():
            name = DISPLAY[who] + (" (served)" if who == r.chosen else "")
            lines.append(
                f"| {name} | {_f(m['roc_auc'])} | {_f(m['pr_auc'])} | "
                f"{_f(m['precision_top_decile'])} | {_f(m['brier'], 4)} | {_f(m['ece'], 4)} |"
            )
        test_rate = float(r.test["label"].mean())
        lines += ["", f"Positive rate on the test rows: {test_rate:.1%}.", ""]
        for w in r.warnings:
            lines += [f"Warning: {w}", ""]
    lines += [
        "### LightGBM ablations (held-out fit, same frames and split)",
        "",
        "| variant | churn ROC-AUC | churn PR-AUC | appetence ROC-AUC | appetence PR-AUC |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, by_model in ablation.items():
        c, a = by_model["churn"], by_model["appetence"]
        lines.append(
            f"| {name} | {_f(c['roc_auc'])} | {_f(c['pr_auc'])} | {_f(a['roc_auc'])} | "
            f"{_f(a['pr_auc'])} |"
        )
    run = lists["run"]
    window = params.labels.churn_active_within_days
    lines += [
        "",
        f"### At-risk list (scoring run {run.run_id}, {run.rows:,} contacts)",
        "",
        f"{lists['customers']:,} customers, {lists['lapsed']:,} of them lapsed (no activity "
        f"within {window} days). Exit stage: {lists['exit']:,} customers, "
        f"{lists['exit_lapsed']:,} lapsed, {lists['exit_lost_at_risk']:,} in the Lost or "
        "At risk segments (lapsed customers are still scored; they go to the win-back list).",
        "",
        "| top N | list | lapsed | Lost or At risk | value at risk | of which lapsed |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in lists["rows"]:
        lines.append(
            f"| {row['top']} | {row['list']} | {row['lapsed_share']:.1%} | "
            f"{row['lost_at_risk_share']:.1%} | {row['var_total']:,.0f} | "
            f"{row['var_lapsed']:,.0f} |"
        )
    lines += [""]
    for w in run.warnings:
        lines += [f"Scoring warning: {w}", ""]
    data = (
        f"Data set built in {setup_s:.0f} s (not counted)."
        if setup_s is not None
        else "Data set (events, snapshots, Feast) reused from an earlier run of this command."
    )
    lines += [
        f"{data} All methods of a model are fitted "
        "on the same training as-of times and scored on the same later test as-of times "
        "(purged split, `training.test_snapshots`); the gate serves LightGBM only if its "
        f"test {params.training.promotion_metric} beats the best baseline's.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--top", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--no-write", action="store_true", help="print, do not write")
    args = parser.parse_args(argv)
    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        tmp = tempfile.mkdtemp(prefix="bench-models-")
        data_dir = Path(tmp)
    try:
        began = time.perf_counter()
        params, paths, built = prepare(data_dir, args.customers, args.days)
        setup_s = time.perf_counter() - began if built else None
        results, frames = train_all(params, paths)
        ablation = ablations(params, frames)
        lists = at_risk_lists(params, paths, args.top)
        body = report(params, results, ablation, lists, setup_s)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    cli = f"--customers {args.customers} --days {args.days} --top {' '.join(map(str, args.top))}"
    print(body)
    if not args.no_write:
        write_section(
            "models",
            f"Models against the baselines of the same run ({args.customers:,} contacts)",
            COMMAND.format(args=cli),
            body,
        )


if __name__ == "__main__":
    np.seterr(all="ignore")
    pd.options.mode.chained_assignment = None
    main()
