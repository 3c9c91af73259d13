"""Hazard models trained, tracked and gated like the fixed models (training/hazard_train.py).

Small and fast: the split, the per-horizon evaluation and the gate on synthetic rows;
one end-to-end training of the churn hazard model on a copy of the session pipeline's
data (registration, per-horizon metrics, alias), the loader's round trip and refusals.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from engage.config import load_params
from features.catalog import ENTITY_KEY, TIMESTAMP
from training import hazard as hz
from training.hazard_train import (
    HAZARD,
    POPULATION,
    fit_evaluate_hazard,
    hazard_split_times,
    purged_before,
)
from training.registry import CHALLENGER, CHAMPION
from training.train import ChampionView, gate_decision

T0 = pd.Timestamp("2025-01-06", tz="UTC")
D = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def tiny_params():
    return load_params(
        overrides=(
            "hazard.period_days=7",
            "hazard.h_max_periods=4",
            "hazard.horizons_days=[7,28]",
            "hazard.primary_metric=roc_auc_28d",
            "hazard.max_rows_per_snapshot=null",
            "training.valid_snapshots=2",
            "training.test_snapshots=2",
            "training.min_train_snapshots=3",
            "training.btyd_inputs=false",
            "training.lightgbm.n_estimators=30",
            "training.lightgbm.num_threads=1",
        )
    )


def _tiny(params, n=120, weeks=20, seed=0):
    """Weekly rows of ``n`` contacts active at a rate the first feature carries."""
    from evaluation.hazard import horizon_label  # noqa: F401  (same rules as the labels)
    from features.catalog import model_feature_names

    rng = np.random.default_rng(seed)
    features = model_feature_names(params)
    rate = rng.uniform(0.005, 0.2, n)
    ids = np.array([f"c{i}" for i in range(n)])
    rows = []
    for cid, lam in zip(ids, rate, strict=True):
        t = 0.0
        while (t := t + rng.exponential(1 / lam)) <= 7 * weeks + 40:
            rows.append((cid, "web_visit", T0 + pd.Timedelta(days=float(np.floor(t)))))
    events = pd.DataFrame(rows, columns=["customer_id", "event_type", "event_time"])
    times = [T0 + 7 * k * D for k in range(1, weeks + 1)]
    frame = pd.DataFrame({ENTITY_KEY: np.tile(ids, len(times)), TIMESTAMP: np.repeat(times, n)})
    noise = rng.uniform(0, 5, size=(len(frame), len(features))).astype("float32")
    frame = pd.concat([frame, pd.DataFrame(noise, columns=features)], axis=1)
    frame[features[0]] = np.tile(rate, len(times)) + rng.normal(0, 0.01, len(frame))
    return frame, events, T0 + (7 * weeks + 40) * D


def test_split_keeps_the_test_window_whole_and_purges_one_period(tiny_params):
    times = [T0 + 7 * k * D for k in range(1, 21)]  # days 7, 14, ..., 140
    end = T0 + 160 * D  # times up to day 132 have their 28-day window observed
    train, valid, test = hazard_split_times(times, end, tiny_params)
    assert test == [T0 + 119 * D, T0 + 126 * D]  # the last two with day + 28 <= 160
    # valid: the last two whose first period (7 days) ends by the first test time.
    assert valid == [T0 + 105 * D, T0 + 112 * D]
    assert train == [T0 + 7 * k * D for k in range(1, 15)]  # day + 7 <= 105
    # The baselines' split at 28 days: complete windows before the next part.
    tr, va = purged_before(times, test[0], 28, tiny_params.training)
    assert va == [T0 + 84 * D, T0 + 91 * D]
    assert tr == [T0 + 7 * k * D for k in range(1, 9)]  # day + 28 <= 84
    assert purged_before(times[:5], T0 + 42 * D, 28, tiny_params.training) is None
    with pytest.raises(ValueError, match=r"churn_hazard: H_max = .* 7 x 4 = 28 days; 4 of 6 "):
        hazard_split_times(times[:6], T0 + 60 * D, tiny_params, "churn_hazard")


def test_fit_evaluate_scores_every_horizon_against_the_baselines(tiny_params):
    frame, events, end = _tiny(tiny_params)
    ev = fit_evaluate_hazard(frame, events, end, tiny_params, "churn")
    assert set(ev.metrics) == {HAZARD, "recency", "rfm", "logreg", POPULATION}
    for h in (7, 28):
        for m in (HAZARD, "recency", "rfm", "logreg"):
            assert 0 <= ev.metrics[m][f"roc_auc_{h}d"] <= 1
            assert 0 <= ev.metrics[m][f"ece_{h}d"] <= 1
        # churn = no activity within h: the complement of the event probability, so it
        # shrinks with the horizon for every row (survival is non-increasing).
        assert (ev.probs[28][HAZARD] <= ev.probs[7][HAZARD] + 1e-12).all()
        assert ev.labels[h].shape == (2 * 120,)
    # The rate is learnable: the hazard model ranks and beats the population curve.
    assert ev.metrics[HAZARD]["roc_auc_28d"] > 0.7
    assert ev.metrics[HAZARD]["integrated_brier"] < ev.metrics[POPULATION]["integrated_brier"]
    assert 0.5 < ev.metrics[HAZARD]["c_index"] <= 1
    # The realised curve is the test rows' share without activity by each period end.
    assert ev.curve["days"] == [7, 14, 21, 28]
    assert np.all(np.diff(ev.curve["realised"]) <= 0)
    # The served model is refitted on every as-of time (training.refit), censored at the
    # end of the data, with the held-out fit's trees; the test figures are the held-out
    # fit's. Without the refit nothing the served model saw reaches the test times.
    assert ev.model.training["refit"] is True
    assert pd.Timestamp(ev.model.training["labels_seen_until"]) == end
    assert ev.model.booster.num_trees() == ev.model.training["heldout_trees"]
    no_refit = tiny_params.model_copy(
        update={"training": tiny_params.training.model_copy(update={"refit": False})}
    )
    held = fit_evaluate_hazard(frame, events, end, no_refit, "churn")
    assert held.model.training["refit"] is False
    assert pd.Timestamp(held.model.training["labels_seen_until"]) == ev.test[TIMESTAMP].min()
    assert held.metrics == ev.metrics  # the same held-out fit either way
    best = max(("recency", "rfm", "logreg"), key=lambda m: ev.metrics[m]["roc_auc_28d"])
    assert ev.best_baseline == best
    assert ev.beats_baseline == (
        ev.metrics[HAZARD]["roc_auc_28d"] - ev.metrics[best]["roc_auc_28d"] > 0
    )
    assert "roc_auc_28d" in ev.selection


def _rows(n=200, seed=1):
    rng = np.random.default_rng(seed)
    keys = pd.DataFrame(
        {
            ENTITY_KEY: [f"c{i}" for i in range(n)],
            TIMESTAMP: [T0 + (i % 2) * 7 * D for i in range(n)],
        }
    )
    y = (rng.uniform(size=n) < 0.3).astype(int)
    good = np.clip(0.3 + 0.5 * (y - 0.3) + rng.normal(0, 0.1, n), 0, 1)  # ranks well
    bad = rng.uniform(size=n)  # ranks at random
    return keys, y, good, bad


def _view(keys, p_champion, conflicts=(), origin=None, seen=None):
    held = keys.assign(p=p_champion)
    return lambda: ChampionView(
        store_origin=origin,
        conflicts=list(conflicts),
        held_out=lambda: held,
        labels_seen_until=seen,
        predict=lambda rows: np.full(len(rows), 0.5),
    )


def test_gate_keeps_the_champion_when_the_challenger_is_worse_on_the_same_rows():
    keys, y, good, bad = _rows()
    worse = gate_decision(
        "roc_auc",
        0.002,
        "3",
        lambda: (keys, y, bad),
        0.5,
        None,
        _view(keys, good),
        label="roc_auc_30d",
    )
    assert worse.alias == CHALLENGER and worse.champion_version == "3"
    assert worse.reason.startswith("roc_auc_30d 0.") and worse.reason.endswith(
        "on 200 held-out rows in common: kept v3"
    )
    assert worse.new_score < worse.champion_score - 0.002
    better = gate_decision(
        "roc_auc", 0.002, "3", lambda: (keys, y, good), 0.9, None, _view(keys, bad)
    )
    assert better.alias == CHAMPION and "held-out rows in common" in better.reason
    # Only the rows both sides scored count.
    half = gate_decision(
        "roc_auc", 0.002, "3", lambda: (keys, y, bad), 0.5, None, _view(keys.iloc[:100], good[:100])
    )
    assert "on 100 held-out rows in common" in half.reason
    # Another question, other data, or no champion: the challenger takes the alias.
    other = gate_decision(
        "roc_auc",
        0.0,
        "3",
        lambda: (keys, y, bad),
        0.5,
        None,
        _view(keys, good, conflicts=["hazard.period_days: the model has 7-day periods"]),
    )
    assert (
        other.alias == CHAMPION and "answers another question (hazard.period_days" in other.reason
    )
    moved = gate_decision(
        "roc_auc",
        0.0,
        "3",
        lambda: (keys, y, bad),
        0.5,
        "ingest at 2026",
        _view(keys, good, origin="simulate"),
    )
    assert moved.alias == CHAMPION and "trained on other data" in moved.reason
    assert gate_decision("roc_auc", 0.0, None, None, 0.5, None, None).reason == "no champion yet"


# ---------------------------------------------------------------- end to end (MLflow)

SMALL_HAZARD = (
    "hazard.max_rows_per_snapshot=250",
    "training.lightgbm.n_estimators=40",
)


@pytest.fixture(scope="module")
def trained(pipeline, tmp_path_factory):
    """The churn hazard model trained once into a copy of the pipeline's data dir."""
    import os
    import shutil
    import time

    from engage.config import resolve_paths
    from training.hazard_train import train_hazard_model

    target = tmp_path_factory.mktemp("hazard") / "data"
    shutil.copytree(pipeline.data_dir, target)
    old = os.environ["ENGAGE_DATA_DIR"]
    os.environ["ENGAGE_DATA_DIR"] = str(target)
    try:
        params = load_params(overrides=(*SMALL_HAZARD_BASE, *SMALL_HAZARD))
        paths = resolve_paths(params)
        began = time.perf_counter()
        result = train_hazard_model(paths, params, "churn")
        yield params, paths, result, time.perf_counter() - began
    finally:
        os.environ["ENGAGE_DATA_DIR"] = old


SMALL_HAZARD_BASE = ("simulate.customers=2500", "simulate.days=300")  # conftest.SMALL


def test_training_registers_a_version_with_per_horizon_metrics_and_the_alias(trained):
    from training.registry import champion_version, version_run

    params, paths, result, seconds = trained
    print(f"churn_hazard trained in {seconds:.1f} s")
    assert result.model == "churn_hazard" and result.alias == CHAMPION
    assert result.reason == "no champion yet"
    assert champion_version(paths, "churn_hazard") == result.version
    run = version_run(paths, "churn_hazard", result.version)
    for h in params.hazard.horizons_days:
        for metric in ("roc_auc", "brier", "ece"):
            assert 0 <= run.metrics[f"{metric}_{h}d"] <= 1
            assert run.metrics[f"test_hazard_{metric}_{h}d"] == run.metrics[f"{metric}_{h}d"]
        assert f"test_population_brier_{h}d" in run.metrics
    # The strongest simple baseline of the primary horizon is in the same run.
    assert f"test_{run.tags['best_baseline']}_roc_auc_30d" in run.metrics
    assert run.tags["beats_baseline"] in ("true", "false")
    assert "c_index" in run.metrics and "integrated_brier" in run.metrics
    assert run.tags["feature_service"] == "churn_v1" and run.tags["question"] == "churn"


def test_loader_round_trips_without_unpickling_and_refuses_other_params(trained, monkeypatch):
    from engage.config import resolve_paths
    from training.registry import HazardMismatchError, NoChampion, load_hazard_model

    params, paths, result, _ = trained

    def no_pickle(*_a, **_k):
        raise AssertionError("a hazard model must not be unpickled")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    model, version = load_hazard_model(paths, "churn")
    monkeypatch.undo()
    assert version == result.version
    assert isinstance(model, hz.HazardModel) and model.digest() == result.evaluation.model.digest()
    rows = result.evaluation.test.head(20)
    np.testing.assert_allclose(model.hazards(rows), result.evaluation.model.hazards(rows))
    # The folder MLflow stores holds text and JSON only.
    with pytest.raises(NoChampion, match=r"no 'appetence_hazard' model with alias 'champion'"):
        load_hazard_model(paths, "appetence")
    with pytest.raises(ValueError, match=r"model must be one of \['churn', 'appetence'\]"):
        load_hazard_model(paths, "ltv")
    other = resolve_paths(load_params(overrides=(*SMALL_HAZARD_BASE, "hazard.period_days=14")))
    with pytest.raises(
        HazardMismatchError,
        match=r"churn_hazard v1 was trained for other parameters:\n  hazard\.period_days: the "
        r"model has 7-day periods, the parameters 14\n  H_max: the model follows 13 periods "
        r"\(91 days\), the parameters hazard\.h_max_periods=13 \(182 days\)",
    ):
        load_hazard_model(other, "churn")
    longer = resolve_paths(
        load_params(overrides=(*SMALL_HAZARD_BASE, "hazard.horizons_days=[7,30,60]"))
    )
    with pytest.raises(
        HazardMismatchError,
        match=r"hazard\.horizons_days: the model was trained for \[7, 30, 90\], the parameters "
        r"ask \[7, 30, 60\]",
    ):
        load_hazard_model(longer, "churn")


def test_the_logged_model_is_text_and_json(trained):
    from training.registry import champion_ref, local_artifact_uri, local_model_dir

    _, paths, result, _ = trained
    ref = champion_ref(paths, "churn_hazard")
    folder = local_model_dir(
        type(ref)(ref.name, ref.version, ref.run_id, local_artifact_uri(paths, ref.source))
    )
    assert sorted(p.name for p in folder.iterdir()) == [hz.HAZARD_BOOSTER, hz.HAZARD_JSON]
    mlmodel = (folder.parent.parent / "MLmodel").read_text()
    assert "hazard_pyfunc_entry.py" in mlmodel and "signature" in mlmodel
    assert "p_churn_30d" in mlmodel  # the signature names the horizon columns


def test_the_serving_side_reads_the_trained_champion(trained):
    """serving.timing.load_timing (scores, /predict) finds what engage train registered."""
    from serving.timing import load_timing

    params, paths, result, _ = trained
    timing = load_timing(paths, params)
    assert dict(timing.versions) == {"churn": result.version}
    assert timing.models["churn"].digest() == result.evaluation.model.digest()
    assert "appetence" in timing.missing


def test_a_registered_hazard_champion_reaches_scores_and_predict(trained):
    """engage train -> registry -> engage score's columns and /predict's, the same numbers."""
    import pyarrow.parquet as pq

    from features.catalog import ENTITY_KEY
    from serving.online import OnlinePredictor
    from serving.runs import find_run, read_run
    from serving.scoring import score

    params, paths, result, _ = trained
    run = score(paths, params, run_id="registry-timing")
    info = find_run(paths, run.run_id)
    names = set(pq.read_schema(info.path).names)
    churn_cols = {f"p_churn_{h}d" for h in params.hazard.horizons_days} | {"days_to_churn"}
    assert churn_cols <= names
    # Only the churn hazard model was trained: its columns, and the other one named missing.
    assert not any(n.startswith("p_purchase_") for n in names)
    assert info.timing["versions"] == {"churn": result.version}
    assert info.timing["missing"] == ["appetence"]
    _, frame = read_run(paths, run.run_id)
    frame = frame.set_index(ENTITY_KEY)
    customers = frame.index[frame["has_purchased"] == 1][:5]
    assert frame.loc[customers, sorted(churn_cols)].notna().any(axis=None)
    predictor = OnlinePredictor(paths, params)
    assert dict(predictor.timing.versions) == {"churn": result.version}
    scored = predictor.predict_ids([str(c) for c in customers])
    cols = [c for c in scored.timing.columns if c in churn_cols]
    np.testing.assert_allclose(
        scored.timing[cols].to_numpy(dtype=float),
        frame.loc[customers, cols].to_numpy(dtype=float),
        rtol=1e-9,
    )
