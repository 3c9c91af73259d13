"""Train one model end to end.

Labels, Feast training set, purged time split, leakage checks, LightGBM, calibration,
baselines, evaluation, MLflow logging, registration and the promotion gate.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from engage.config import Params, Paths
from engage.specs import model_spec
from features.catalog import ENTITY_KEY, TIMESTAMP, model_feature_names
from features.snapshots import require_snapshots
from features.store import get_store, historical_features
from training.baselines import logistic_baseline, rfm_score
from training.dataset import Split, audit_against_events, check_feature_times, time_split
from training.evaluate import plot_curves, plot_importance, probability_metrics, ranking_metrics
from training.labels import LABEL, Model, make_labels
from training.model import EngageModel, fit_engage_model
from training.registry import (
    CHALLENGER,
    CHAMPION,
    GateDecision,
    alias_version,
    experiment_id,
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


def snapshot_times_on_disk(paths: Paths) -> list[pd.Timestamp]:
    """As-of times of the stored feature snapshots."""
    return [s.as_of for s in require_snapshots(paths.features_dir)]


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


def training_frame(paths: Paths, params: Params, model: Model, store=None) -> pd.DataFrame:
    """Labels at every stored snapshot with an observed window, joined by Feast."""
    customers = paths.customers if paths.customers.exists() else None
    labels = make_labels(paths.events, customers, snapshot_times_on_disk(paths), params, model)
    cap = params.training.max_rows_per_snapshot
    if cap is not None:
        # A fixed-size random sample per as-of time keeps the Feast retrieval and the
        # training bounded at millions of contacts; the seed makes it repeatable.
        labels = (
            labels.groupby(TIMESTAMP, group_keys=False)
            .apply(lambda g: g.sample(min(cap, len(g)), random_state=params.training.seed))
            .sort_values([TIMESTAMP, ENTITY_KEY])
            .reset_index(drop=True)
        )
    store = store or get_store(paths)
    return historical_features(store, labels, model)


def _gate(
    client, name: str, new_score: float, test: pd.DataFrame, y: np.ndarray, params: Params
) -> GateDecision:
    """Champion alias only if at least as good as the current champion on these rows."""
    metric, tol = params.training.promotion_metric, params.training.promotion_tolerance
    version = alias_version(client, name, CHAMPION)
    if version is None:
        return GateDecision(CHAMPION, "no champion yet", new_score, None, None)
    import mlflow.pyfunc

    champ = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}").unwrap_python_model().model
    try:
        p = champ.predict_proba(test)
    except ValueError as err:
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


def train_model(
    paths: Paths,
    params: Params,
    model: Model,
    progress: Progress | None = None,
    frame: pd.DataFrame | None = None,
) -> TrainResult:
    """Train, evaluate against baselines, log to MLflow, register, apply the gate.

    Args:
        paths: resolved locations.
        params: the parsed params.yaml.
        model: ``churn`` or ``appetence``.
        progress: called with a short message at each stage.
        frame: a ready training frame (labels + features), else built from Feast.

    Returns:
        The registered version, its alias, the reason, and test metrics.
    """
    import mlflow
    from mlflow.models import infer_signature

    say = progress or (lambda _m: None)
    tp = params.training
    say("training set from Feast")
    if frame is None:
        frame = training_frame(paths, params, model)
    features = model_feature_names(params)
    check_feature_times(frame)
    say("leakage audit")
    customers = paths.customers if paths.customers.exists() else None
    audit_against_events(frame, paths.events, customers, params, features, seed=tp.seed)
    split: Split = time_split(frame, params)
    Xtr, ytr = split.train[features], split.train[LABEL].to_numpy()
    Xva, yva = split.valid[features], split.valid[LABEL].to_numpy()
    Xte, yte = split.test[features], split.test[LABEL].to_numpy()
    for name, y in (("train", ytr), ("valid", yva), ("test", yte)):
        if len(np.unique(y)) < 2:
            raise ValueError(f"{model}: the {name} split has a single class; more data needed")

    say("LightGBM")
    service = model_spec(model).feature_service
    engage_model = fit_engage_model(model, features, Xtr, ytr, Xva, yva, tp, service)
    booster = engage_model.booster
    p_test = engage_model.predict_proba(Xte)

    say("baselines")
    logreg = logistic_baseline(tp.seed).fit(Xtr.astype(float), ytr)
    p_lr = logreg.predict_proba(Xte.astype(float))[:, 1]
    s_rfm = rfm_score(Xte, model)
    metrics = {
        "model": probability_metrics(yte, p_test, tp.ece_bins),
        "logreg": probability_metrics(yte, p_lr, tp.ece_bins),
        "rfm": ranking_metrics(yte, s_rfm),
    }

    say("MLflow")
    client = setup_mlflow(paths)
    exp = experiment_id(client, paths, model)
    ranges = split.ranges()
    decision = _gate(client, model, metrics["model"][tp.promotion_metric], Xte, yte, params)
    with mlflow.start_run(experiment_id=exp) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(
            {
                **{f"lgbm.{k}": v for k, v in tp.lightgbm.model_dump().items()},
                "calibration": tp.calibration,
                "horizon_days": params.labels.horizon_days,
                "seed": tp.seed,
                "n_features": len(features),
                "best_iteration": booster.current_iteration(),
            }
        )
        for who, m in metrics.items():
            mlflow.log_metrics({f"test_{who}_{k}": v for k, v in m.items()})
        mlflow.log_metrics(
            {
                "train_rows": len(Xtr),
                "valid_rows": len(Xva),
                "test_rows": len(Xte),
                "test_positive_rate": float(yte.mean()),
            }
        )
        mlflow.set_tags(
            {
                "git_commit": git_commit(paths.root),
                "data_fingerprint": data_fingerprint(paths.events),
                "feature_service": service,
                "as_of_train": ranges["train"],
                "as_of_valid": ranges["valid"],
                "as_of_test": ranges["test"],
                "profile": params.profile or "default",
                "gate": decision.reason,
            }
        )
        out = Path(tmp)
        scores = {"LightGBM": p_test, "logistic": p_lr, "RFM": s_rfm}
        for path in plot_curves(yte, scores, out, model):
            mlflow.log_artifact(str(path), "plots")
        gains = booster.feature_importance("gain")
        mlflow.log_artifact(str(plot_importance(features, gains, out / "importance.png")), "plots")
        mlflow.log_artifact(
            str(_shap_beeswarm(engage_model, Xte, out / "shap_beeswarm.png", tp.seed)), "plots"
        )
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        mlflow.log_artifact(str(out / "metrics.json"))
        # The test rows and scores, so the threshold helper and the report can reuse them.
        held_out = split.test[[ENTITY_KEY, TIMESTAMP, LABEL]].copy()
        held_out["p"] = p_test
        held_out.to_parquet(out / "test_predictions.parquet")
        mlflow.log_artifact(str(out / "test_predictions.parquet"))

        from training.pyfunc import EngagePyfunc

        example = Xte.head(5).astype(float)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=EngagePyfunc(engage_model),
            signature=infer_signature(example, engage_model.predict_proba(example)),
            input_example=example,
            pip_requirements=_requirements(),
            registered_model_name=model,
        )
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
        metrics=metrics,
        ranges=ranges,
        engage_model=engage_model,
        test=split.test,
    )


def _requirements() -> list[str]:
    # Explicit pins: inferring them costs seconds and lists unrelated packages.
    from importlib.metadata import version

    return [
        f"{pkg}=={version(pkg)}"
        for pkg in ("lightgbm", "scikit-learn", "pandas", "numpy", "mlflow")
    ]
