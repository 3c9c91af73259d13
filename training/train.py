"""Train one model end to end: data, the pure fit-and-evaluate step, then MLflow.

:func:`train_model` builds the training frame (labels and Feast features), checks it for
leakage, calls :func:`training.fit_evaluate.fit_and_evaluate`, then
:func:`log_and_register`: the promotion gate, the MLflow run (parameters, metrics, tags,
plots, held-out predictions, the model as text and JSON) and the registry alias.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from engage.config import Params, Paths
from features.catalog import ENTITY_KEY, TIMESTAMP, model_feature_names
from training.dataset import audit_against_events, check_feature_times, training_frame
from training.evaluate import plot_curves, plot_importance, probability_metrics
from training.fingerprint import PARAMS_TAG, params_fingerprint
from training.fit_evaluate import Evaluation, fit_and_evaluate
from training.labels import LABEL
from training.mlflow_ui import log_datasets, run_name
from training.model import EngageModel
from training.registry import (
    CHALLENGER,
    CHAMPION,
    HELD_OUT,
    METRICS,
    PLOTS,
    GateDecision,
    alias_version,
    experiment_id,
    load_model,
    log_model,
    setup_mlflow,
)

Progress = Callable[[str], None]


@dataclass
class TrainResult:
    model: str
    version: str
    alias: str
    reason: str
    run_id: str
    metrics: dict[str, dict[str, float]]
    ranges: dict[str, str]
    engage_model: EngageModel = field(repr=False)
    test: pd.DataFrame = field(repr=False)


def data_fingerprint(events_path: Path) -> str:
    """A content fingerprint of the events: rows, time range and a hash of the ids."""
    con = duckdb.connect()
    rows, lo, hi, h = con.execute(
        f"SELECT count(*), min(event_time)::VARCHAR, max(event_time)::VARCHAR, "
        f"bit_xor(hash(event_id)) FROM read_parquet('{events_path}')"
    ).fetchone()
    con.close()
    return f"{rows}:{lo}:{hi}:{h:x}"


def git_commit(root: Path) -> str:
    """The current git commit of the project, or 'unknown' outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def promotion_gate(
    paths: Paths, name: str, new_score: float, test: pd.DataFrame, y: np.ndarray, params: Params
) -> GateDecision:
    """Champion alias only if at least as good as the current champion on these rows."""
    metric, tol = params.training.promotion_metric, params.training.promotion_tolerance
    version = alias_version(setup_mlflow(paths), name, CHAMPION)
    if version is None:
        return GateDecision(CHAMPION, "no champion yet", new_score, None, None)
    try:
        champ, _ = load_model(paths, name)
        p = champ.predict_proba(test)
    except (ValueError, LookupError) as err:
        return GateDecision(
            CHAMPION,
            f"champion v{version} cannot score these rows ({err})",
            new_score,
            None,
            version,
        )
    old = probability_metrics(y, p, params.training.ece_bins)[metric]
    if new_score >= old - tol:
        reason = f"{metric} {new_score:.4f} >= champion v{version} {old:.4f} - {tol}"
        return GateDecision(CHAMPION, reason, new_score, old, version)
    reason = f"{metric} {new_score:.4f} < champion v{version} {old:.4f} - {tol}: kept v{version}"
    return GateDecision(CHALLENGER, reason, new_score, old, version)


def _shap_beeswarm(model: EngageModel, X: pd.DataFrame, path: Path, seed: int) -> Path:
    import matplotlib.pyplot as plt
    import shap

    sample = X.sample(min(1000, len(X)), random_state=seed)
    contrib, _ = model.contributions(sample)
    shap.summary_plot(contrib, model.frame(sample), show=False, max_display=15)
    plt.gcf().tight_layout()
    plt.savefig(path, dpi=90)
    plt.close("all")
    return path


def log_and_register(paths: Paths, params: Params, model: str, ev: Evaluation) -> TrainResult:
    """Gate, log the run to MLflow, register the model and set its alias.

    Args:
        paths: resolved locations.
        params: the parsed params.yaml.
        model: the model name.
        ev: the output of :func:`training.fit_evaluate.fit_and_evaluate`.

    """
    import mlflow

    tp = params.training
    fitted, test, yte = ev.model, ev.split.test, ev.y_test
    Xte = test[ev.features]
    client = setup_mlflow(paths)
    exp = experiment_id(client, paths, model)
    ranges = ev.split.ranges()
    decision = promotion_gate(
        paths, model, ev.metrics["model"][tp.promotion_metric], Xte, yte, params
    )
    active = mlflow.active_run()
    # train_model opens the run before fitting (so its duration is the training's).
    running = nullcontext(active) if active else mlflow.start_run(experiment_id=exp)
    with running as run, tempfile.TemporaryDirectory() as tmp:
        log_datasets(
            {"train": ev.split.train, "validation": ev.split.valid, "test": test},
            model,
            paths.features_dir,
            LABEL,
        )
        mlflow.log_params(
            {
                **{f"lgbm.{k}": v for k, v in tp.lightgbm.model_dump().items()},
                "calibration": tp.calibration,
                "horizon_days": params.labels.horizon_days,
                "seed": tp.seed,
                "n_features": len(ev.features),
                "best_iteration": fitted.booster.current_iteration(),
            }
        )
        for who, m in ev.metrics.items():
            mlflow.log_metrics({f"test_{who}_{k}": v for k, v in m.items()})
        mlflow.log_metrics(
            {
                "train_rows": len(ev.split.train),
                "valid_rows": len(ev.split.valid),
                "test_rows": len(test),
                "test_positive_rate": float(yte.mean()),
            }
        )
        mlflow.set_tags(
            {
                "git_commit": git_commit(paths.root),
                "data_fingerprint": data_fingerprint(paths.events),
                PARAMS_TAG: params_fingerprint(params),
                "feature_service": fitted.feature_service,
                "as_of_train": ranges["train"],
                "as_of_valid": ranges["valid"],
                "as_of_test": ranges["test"],
                "profile": params.profile or "default",
                "gate": decision.reason,
            }
        )
        out = Path(tmp)
        for path in plot_curves(yte, ev.test_scores, out, model):
            mlflow.log_artifact(str(path), PLOTS)
        gains = fitted.booster.feature_importance("gain")
        imp = plot_importance(ev.features, gains, out / "importance.png")
        mlflow.log_artifact(str(imp), PLOTS)
        beeswarm = _shap_beeswarm(fitted, Xte, out / "shap_beeswarm.png", tp.seed)
        mlflow.log_artifact(str(beeswarm), PLOTS)
        (out / METRICS).write_text(json.dumps(ev.metrics, indent=2))
        mlflow.log_artifact(str(out / METRICS))
        # The test rows and scores, so the threshold helper and the report can reuse them.
        held_out = test[[ENTITY_KEY, TIMESTAMP, LABEL]].copy()
        held_out["p"] = ev.p_test
        held_out.to_parquet(out / HELD_OUT)
        mlflow.log_artifact(str(out / HELD_OUT))
        info = log_model(fitted, Xte.head(5).astype(float), _requirements())
        version = str(info.registered_model_version)
        client.set_registered_model_alias(model, decision.alias, version)
        client.set_model_version_tag(model, version, "gate", decision.reason)
        run_id = run.info.run_id
    return TrainResult(
        model=model,
        version=version,
        alias=decision.alias,
        reason=decision.reason,
        run_id=run_id,
        metrics=ev.metrics,
        ranges=ranges,
        engage_model=fitted,
        test=test,
    )


def train_model(
    paths: Paths,
    params: Params,
    model: str,
    progress: Progress | None = None,
    frame: pd.DataFrame | None = None,
) -> TrainResult:
    """Train, evaluate against baselines, log to MLflow, register, apply the gate.

    Args:
        paths: resolved locations.
        params: the parsed params.yaml.
        model: a model name of :data:`engage.specs.MODEL_SPECS`.
        progress: called with a short message at each stage.
        frame: a ready training frame (labels + features), else built from Feast.

    Returns:
        The registered version, its alias, the reason, and test metrics.

    """
    say = progress or (lambda _m: None)
    say("training set from Feast")
    if frame is None:
        frame = training_frame(paths, params, model)
    check_feature_times(frame)
    say("leakage audit")
    customers = paths.customers if paths.customers.exists() else None
    audit_against_events(
        frame,
        paths.events,
        customers,
        params,
        model_feature_names(params),
        seed=params.training.seed,
    )
    import mlflow

    exp = experiment_id(setup_mlflow(paths), paths, model)
    with mlflow.start_run(experiment_id=exp, run_name=run_name(model, frame)):
        say("LightGBM and baselines")
        ev = fit_and_evaluate(frame, params, model)
        say("MLflow")
        return log_and_register(paths, params, model, ev)


def _requirements() -> list[str]:
    # Explicit pins: inferring them costs seconds and lists unrelated packages.
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("lightgbm", "pandas", "numpy", "mlflow")]
