"""Train one model end to end: data, the pure fit-and-evaluate step, then MLflow.

:func:`train_model` builds the training frame (labels and Feast features), checks it for
leakage, calls :func:`training.fit_evaluate.fit_and_evaluate` (LightGBM against the
baselines of the same run; the winner refitted for serving), then :func:`log_and_register`:
the comparison with the previous champion, the MLflow run (parameters, every method's
test metrics as ``test_<method>_<metric>``, tags ``champion_kind`` and ``best_baseline``,
plots, held-out predictions, the held-out LightGBM and the served model as text and JSON)
and the registry alias.
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
from engage.data.store import store_origin
from features.catalog import ENTITY_KEY, TIMESTAMP, model_feature_names
from training.dataset import (
    audit_against_events,
    check_feature_times,
    check_history,
    training_frame,
)
from training.evaluate import plot_curves, plot_importance, probability_metrics
from training.fingerprint import PARAMS_TAG, params_fingerprint
from training.fit_evaluate import Evaluation, fit_and_evaluate
from training.labels import LABEL, definition_conflicts
from training.mlflow_ui import log_datasets, run_name
from training.model import EngageModel, write_model_dir
from training.registry import (
    CHALLENGER,
    CHAMPION,
    HELD_OUT,
    HELDOUT_MODEL,
    METRICS,
    PLOTS,
    GateDecision,
    alias_version,
    experiment_id,
    held_out_predictions,
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
    chosen: str = "model"
    lightgbm: EngageModel | None = field(default=None, repr=False)  # its held-out fit
    best_baseline: str = ""
    selection: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """The registered model's kind (``lightgbm``, ``logistic``, ``rfm``, ``bgnbd``)."""
        return self.engage_model.kind


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


def _compare(
    metric: str, tol: float, new: float, old: float, version: str, rows: str
) -> GateDecision:
    if new >= old - tol:
        reason = f"{metric} {new:.4f} >= champion v{version} {old:.4f} - {tol} on {rows}"
        return GateDecision(CHAMPION, reason, new, old, version)
    reason = f"{metric} {new:.4f} < champion v{version} {old:.4f} - {tol} on {rows}"
    reason += f": kept v{version}"
    return GateDecision(CHALLENGER, reason, new, old, version)


def _scorable(y: np.ndarray) -> bool:
    return len(y) > 0 and len(np.unique(y)) == 2


@dataclass(frozen=True)
class ChampionView:
    """What the promotion gate needs of the current champion, whatever its kind.

    Attributes:
        store_origin: the events it was trained on (``store_origin``), or None.
        conflicts: how it answers another question than this run's parameters ask
            (horizon, label rule, period, ...); empty when it answers the same one.
        held_out: reads its own held-out predictions (``customer_id``,
            ``event_timestamp``, ``p`` for the gate's metric), None when it has none.
        labels_seen_until: end of the last label window it was fitted on (ISO), or None.
        predict: its probability for the gate's metric on rows of this run's test set.

    """

    store_origin: str | None
    conflicts: list[str]
    held_out: Callable[[], pd.DataFrame | None]
    labels_seen_until: str | None
    predict: Callable[[pd.DataFrame], np.ndarray]


def gate_decision(
    metric: str,
    tol: float,
    version: str | None,
    challenger: Callable[[], tuple[pd.DataFrame, np.ndarray, np.ndarray]],
    new_score: float,
    store_origin: str | None,
    champion: Callable[[], ChampionView],
    label: str | None = None,
) -> GateDecision:
    """Champion alias only if at least as good as the current champion on the same rows.

    The rule of both kinds of model (fixed-horizon and hazard). The champion was refitted
    on every label it could see, so scoring it on this run's test rows would flatter it.
    It is compared, in order of preference:

    1. through its own held-out predictions, on the test rows it shares with this run
       (both sides out of sample: same rows, same labels);
    2. else by scoring it on the test rows whose as-of time is at or after the end of
       every label window it was fitted on (``labels_seen_until``);
    3. else not at all: the new model takes the alias (the run's baselines already gated
       it), and the reason says so.

    A champion trained on other data (the store was replaced since, e.g. the demo data by
    the user's own events), for another question (horizon, label rule, population,
    period) or that cannot score these rows is replaced.

    Args:
        metric: ``roc_auc`` or ``pr_auc`` (higher is better).
        tol: the challenger takes the alias when ``new >= old - tol``.
        version: the champion's version, None when there is none.
        challenger: gives this run's test rows (``customer_id``, ``event_timestamp``),
            their labels and the challenger's held-out probabilities (read only when a
            comparison needs them).
        new_score: the challenger's metric on all its test rows.
        store_origin: the events the challenger was trained on.
        champion: loads the champion's :class:`ChampionView` (may raise ValueError or
            LookupError: then it cannot score these rows and is replaced).
        label: the metric's name in the reason (``roc_auc_30d``), ``metric`` by default.

    """
    if version is None:
        return GateDecision(CHAMPION, "no champion yet", new_score, None, None)
    try:
        champ = champion()
        now, then = store_origin, champ.store_origin
        if now and then and now != then:
            return GateDecision(
                CHAMPION,
                f"champion v{version} was trained on other data ({then}; the store now "
                f"holds {now}): replaced",
                new_score,
                None,
                version,
            )
        if champ.conflicts:
            return GateDecision(
                CHAMPION,
                f"champion v{version} answers another question ({champ.conflicts[0]}): replaced",
                new_score,
                None,
                version,
            )
        test, y_test, p_test = challenger()
        held = champ.held_out()
        if held is not None:
            keys = [ENTITY_KEY, TIMESTAMP]
            mine = test[keys].assign(_new=p_test, _y=y_test).reset_index(drop=True)
            common = mine.merge(held[[*keys, "p"]], on=keys, how="inner")
            if _scorable(common["_y"].to_numpy()):
                y = common["_y"].to_numpy()
                new = probability_metrics(y, common["_new"].to_numpy(), 2)[metric]
                old = probability_metrics(y, common["p"].to_numpy(), 2)[metric]
                rows = f"{len(common):,} held-out rows in common"
                return _compare(label or metric, tol, new, old, version, rows)
        seen = champ.labels_seen_until
        unseen = test[TIMESTAMP] >= pd.Timestamp(seen) if seen else np.zeros(len(test), bool)
        unseen = np.asarray(unseen)
        rows_unseen = test[unseen]
        y = np.asarray(y_test)[unseen]
        if _scorable(y):
            new = probability_metrics(y, np.asarray(p_test)[unseen], 2)[metric]
            old = probability_metrics(y, champ.predict(rows_unseen), 2)[metric]
            rows = f"{len(y):,} test rows after every label champion v{version} saw"
            return _compare(label or metric, tol, new, old, version, rows)
    except (ValueError, LookupError) as err:
        return GateDecision(
            CHAMPION,
            f"champion v{version} cannot score these rows ({err})",
            new_score,
            None,
            version,
        )
    return GateDecision(
        CHAMPION,
        f"champion v{version} shares no held-out row with this run and has seen every test "
        "label: not comparable, replaced (this run's baselines gated the new model)",
        new_score,
        None,
        version,
    )


def promotion_gate(paths: Paths, name: str, ev: Evaluation, params: Params) -> GateDecision:
    """The gate of a fixed-horizon model: :func:`gate_decision` on ``training.promotion_metric``."""
    metric, tol = params.training.promotion_metric, params.training.promotion_tolerance
    version = alias_version(setup_mlflow(paths), name, CHAMPION)

    def champion() -> ChampionView:
        champ, _ = load_model(paths, name)

        def held() -> pd.DataFrame | None:
            try:
                return held_out_predictions(paths, name)[0]
            except LookupError:
                return None

        return ChampionView(
            store_origin=champ.training.get("store_origin"),
            conflicts=definition_conflicts(champ.trained_for, params, name),
            held_out=held,
            labels_seen_until=champ.training.get("labels_seen_until"),
            predict=champ.predict_proba,
        )

    return gate_decision(
        metric,
        tol,
        version,
        lambda: (ev.split.test, ev.y_test, ev.p_test),
        ev.metrics[ev.chosen][metric],
        ev.model.training.get("store_origin"),
        champion,
    )


def _shap_beeswarm(model: EngageModel, X: pd.DataFrame, path: Path, seed: int) -> Path:
    import matplotlib.pyplot as plt
    import shap

    sample = X.sample(min(1000, len(X)), random_state=seed)
    contrib, _ = model.contributions(sample)
    shap.summary_plot(contrib, model.inputs_frame(sample), show=False, max_display=15)
    plt.gcf().tight_layout()
    plt.savefig(path, dpi=90)
    plt.close("all")
    return path


def log_and_register(paths: Paths, params: Params, model: str, ev: Evaluation) -> TrainResult:
    """Gate, log the run to MLflow, register the served model and set its alias.

    Args:
        paths: resolved locations.
        params: the parsed params.yaml.
        model: the model name.
        ev: the output of :func:`training.fit_evaluate.fit_and_evaluate`.

    """
    import mlflow

    tp = params.training
    served, test, yte = ev.model, ev.split.test, ev.y_test
    lightgbm = ev.lightgbm
    client = setup_mlflow(paths)
    exp = experiment_id(client, paths, model)
    ranges = ev.split.ranges()
    decision = promotion_gate(paths, model, ev, params)
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
                "lgbm.effective_num_leaves": lightgbm.training["num_leaves"],
                "lgbm.effective_min_child_samples": lightgbm.training["min_child_samples"],
                "calibration": tp.calibration,
                "horizon_days": params.labels.horizon_days,
                "seed": tp.seed,
                "n_features": len(ev.features),
                "best_iteration": lightgbm.booster.current_iteration(),
                "monotone_constraints": tp.monotone_constraints,
                "btyd_inputs": tp.btyd_inputs,
                "refit": tp.refit,
                "baseline_margin": tp.baseline_margin,
            }
        )
        for who, m in ev.metrics.items():
            mlflow.log_metrics({f"test_{who}_{k}": v for k, v in m.items()})
        facts = {
            "train_rows": len(ev.split.train),
            "valid_rows": len(ev.split.valid),
            "test_rows": len(test),
            "test_positive_rate": float(yte.mean()),
            "heldout_trees": lightgbm.booster.num_trees(),
        }
        if served.training.get("refit"):
            facts["refit_rows"] = served.training["refit_rows"]
        if served.booster is not None:
            facts["served_trees"] = served.booster.num_trees()
        mlflow.log_metrics(facts)
        tags = {
            "git_commit": git_commit(paths.root),
            "data_fingerprint": data_fingerprint(paths.events),
            PARAMS_TAG: params_fingerprint(params),
            "feature_service": served.feature_service,
            "as_of_train": ranges["train"],
            "as_of_valid": ranges["valid"],
            "as_of_test": ranges["test"],
            "profile": params.profile or "default",
            "gate": decision.reason,
            "selection": ev.selection,
            "served_method": ev.chosen,
            "champion_kind": served.kind,
            "best_baseline": ev.best_baseline,
            "population": served.trained_for.get("population", ""),
        }
        if served.training.get("refit"):
            tags["as_of_refit"] = served.training["refit_as_of"]
            tags["refit_calibration"] = served.training["calibration"]
        if ev.warnings:
            tags["warnings"] = " | ".join(ev.warnings)
        mlflow.set_tags(tags)
        out = Path(tmp)
        for path in plot_curves(yte, ev.test_scores, out, model):
            mlflow.log_artifact(str(path), PLOTS)
        gains = lightgbm.booster.feature_importance("gain")
        imp = plot_importance(lightgbm.input_names, gains, out / "importance.png")
        mlflow.log_artifact(str(imp), PLOTS)
        beeswarm = _shap_beeswarm(served, test, out / "shap_beeswarm.png", tp.seed)
        mlflow.log_artifact(str(beeswarm), PLOTS)
        (out / METRICS).write_text(
            json.dumps(
                {**ev.metrics, "selection": {"served": ev.chosen, "why": ev.selection}}, indent=2
            )
        )
        mlflow.log_artifact(str(out / METRICS))
        # The test rows and held-out scores, so the threshold helper, the report and the
        # next run's gate can reuse them: `p` is the served method's.
        held_out = test[[ENTITY_KEY, TIMESTAMP, LABEL]].copy()
        held_out["p"] = ev.p_test
        for who, p in ev.test_p.items():
            held_out[f"p_{who}"] = p
        held_out.to_parquet(out / HELD_OUT)
        mlflow.log_artifact(str(out / HELD_OUT))
        # The held-out LightGBM fit, as text and JSON, for audit (the served model is the
        # refit of the chosen method).
        mlflow.log_artifacts(str(write_model_dir(lightgbm, out / HELDOUT_MODEL)), HELDOUT_MODEL)
        info = log_model(served, test[served.features].head(5).astype(float), _requirements())
        version = str(info.registered_model_version)
        client.set_registered_model_alias(model, decision.alias, version)
        client.set_model_version_tag(model, version, "gate", decision.reason)
        client.set_model_version_tag(model, version, "kind", served.kind)
        client.set_model_version_tag(model, version, "method", ev.chosen)
        run_id = run.info.run_id
    return TrainResult(
        model=model,
        version=version,
        alias=decision.alias,
        reason=decision.reason,
        run_id=run_id,
        metrics=ev.metrics,
        ranges=ranges,
        engage_model=served,
        test=test,
        chosen=ev.chosen,
        lightgbm=lightgbm,
        best_baseline=ev.best_baseline,
        selection=ev.selection,
        warnings=list(ev.warnings),
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

    Raises:
        ValueError: the horizon does not fit the history (checked before any retrieval;
            the message names the longest horizon that fits), or a split has a single
            class.
        training.dataset.LeakageError: a feature is not point in time.

    """
    say = progress or (lambda _m: None)
    if frame is None:
        # Before the labels and the Feast retrieval are paid for: does the split fit?
        check_history(paths, params)
        say("training set from Feast")
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
        say("LightGBM and baselines, refit")
        ev = fit_and_evaluate(frame, params, model)
        ev.model.training["store_origin"] = store_origin(paths.events)
        say("MLflow")
        return log_and_register(paths, params, model, ev)


def _requirements() -> list[str]:
    # Explicit pins: inferring them costs seconds and lists unrelated packages.
    from importlib.metadata import version

    pkgs = ("lightgbm", "pandas", "numpy", "scipy", "mlflow")
    return [f"{pkg}=={version(pkg)}" for pkg in pkgs]
