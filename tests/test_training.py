"""Training: labels, purged time split, leakage checks, quality vs baselines, MLflow, gate."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from engage.config import load_params, resolve_paths
from features.catalog import SNAPSHOT_TIME, TIMESTAMP, model_feature_names
from training.dataset import (
    LeakageError,
    audit_against_events,
    check_feature_times,
    check_horizon,
    longest_horizon,
    time_split,
)
from training.labels import definition_conflicts, label_definition, labelable, make_labels
from training.model import FeatureMismatchError
from training.registry import CHALLENGER, CHAMPION, alias_version, load_model, setup_mlflow

T = pd.Timestamp
_SMALL_SPLIT = (
    "training.test_snapshots=1",
    "training.valid_snapshots=1",
    "training.min_train_snapshots=1",
)


def _write(tmp_path, rows):
    df = pd.DataFrame(rows, columns=["customer_id", "event_time", "event_type", "value"])
    times = pd.to_datetime(df["event_time"], utc=True, format="ISO8601")
    df["event_time"] = times.astype("datetime64[us, UTC]")
    df["event_id"] = [str(i) for i in range(len(df))]
    df.to_parquet(tmp_path / "events.parquet")
    return tmp_path / "events.parquet"


def test_labels_use_only_the_window_after_as_of(tmp_path):
    events = _write(
        tmp_path,
        [
            ("A", "2025-01-10", "purchase", 10.0),
            ("A", "2025-03-03", "purchase", 10.0),  # exactly at as_of + 30 d: not in window
            ("B", "2025-01-20", "purchase", 5.0),
            ("B", "2025-03-03", "purchase", 5.0),  # also at as_of + 30 d
            ("B", "2025-02-10", "web_visit", 30.0),  # activity but not a purchase
            ("C", "2025-01-25", "web_visit", 30.0),  # a prospect
            ("C", "2025-02-01 00:00", "purchase", 20.0),  # exactly at as_of: in window
            ("D", "2025-01-05", "purchase", 20.0),
            ("D", "2025-02-20", "purchase", 20.0),
            ("Z", "2025-06-01", "web_visit", 1.0),  # the data end
        ],
    )
    params = load_params(overrides=("labels.churn_activity_types=[purchase]",))
    as_of = [T("2025-02-01", tz="UTC")]
    app = make_labels(events, None, as_of, params, "appetence").set_index("customer_id")
    assert app["label"].to_dict() == {"A": 0, "B": 0, "C": 1, "D": 1}
    churn = make_labels(events, None, as_of, params, "churn").set_index("customer_id")
    # Only customers active before as_of are in the churn population (C is a prospect).
    assert churn["label"].to_dict() == {"A": 1, "B": 1, "D": 0}


def test_churn_population_is_customers_still_active(tmp_path):
    events = _write(
        tmp_path,
        [
            # A: customer, visited 12 days before as_of, then silent (a ticket is no activity)
            ("A", "2024-11-01", "purchase", 10.0),
            ("A", "2025-01-20", "web_visit", 30.0),
            ("A", "2025-02-10", "support_ticket", None),
            # B: customer, an open exactly 30 days before as_of (in the window), clicks later
            ("B", "2024-12-01", "purchase", 10.0),
            ("B", "2025-01-02 00:00", "email_open", None),
            ("B", "2025-02-15", "email_click", None),
            # C: customer whose last activity is 30 days and 1 hour old: lapsed, not in it
            ("C", "2024-10-01", "purchase", 10.0),
            ("C", "2025-01-01 23:00", "web_visit", 30.0),
            ("C", "2025-02-05", "purchase", 10.0),
            # D: active prospect (never bought): not a customer
            ("D", "2025-01-25", "web_visit", 30.0),
            # E: first purchase exactly at as_of: not a customer yet at as_of
            ("E", "2025-01-25", "web_visit", 30.0),
            ("E", "2025-02-01 00:00", "purchase", 10.0),
            # F: bought the day before; next purchase at as_of + 30 days (outside); a sent
            # e-mail inside the window is not activity
            ("F", "2025-01-31", "purchase", 10.0),
            ("F", "2025-02-10", "email_sent", None),
            ("F", "2025-03-03 00:00", "purchase", 10.0),
            ("Z", "2025-06-01", "web_visit", 1.0),  # the data end
        ],
    )
    params = load_params()
    assert params.labels.churn_active_within_days == 30
    churn = make_labels(events, None, [T("2025-02-01", tz="UTC")], params, "churn")
    # In the population: customers with an activity in [as_of - 30 d, as_of); label 1 =
    # none of purchase, open, click, visit, cart in [as_of, as_of + 30 d).
    assert churn.set_index("customer_id")["label"].to_dict() == {"A": 1, "B": 0, "F": 1}
    definition = label_definition(params, "churn")
    assert definition["churn_active_within_days"] == 30
    assert "in the 30 days before it" in definition["population"]
    # A wider window takes C back in (and C bought again: label 0).
    wide = load_params(overrides=("labels.churn_active_within_days=31",))
    churn = make_labels(events, None, [T("2025-02-01", tz="UTC")], wide, "churn")
    assert churn.set_index("customer_id")["label"].to_dict() == {"A": 1, "B": 0, "C": 0, "F": 1}


def test_a_churn_model_without_the_population_rule_is_refused():
    params = load_params()
    old = {k: v for k, v in label_definition(params, "churn").items() if k != "population"}
    assert definition_conflicts(old, params, "churn") == []
    old.pop("churn_active_within_days")
    old["active_within_days"] = 180  # what models trained on recent buyers recorded
    (problem,) = definition_conflicts(old, params, "churn")
    assert problem.startswith("labels.churn_active_within_days: the model predates")
    other = load_params(overrides=("labels.churn_active_within_days=60",))
    (problem,) = definition_conflicts(label_definition(params, "churn"), other, "churn")
    assert "trained with 30, the parameters say 60" in problem


def test_only_fully_observed_windows_are_labelled(tmp_path):
    end = T("2025-03-01", tz="UTC")
    times = [T("2025-01-15", tz="UTC"), T("2025-01-30", tz="UTC"), T("2025-02-01", tz="UTC")]
    assert labelable(times, 30, end) == times[:2]
    events = _write(tmp_path, [("A", "2025-01-01", "purchase", 1.0)])
    with pytest.raises(ValueError, match="labels.horizon_days=30: no as-of time"):
        make_labels(events, None, [T("2025-01-01 12:00", tz="UTC")], load_params(), "churn")


def test_unknown_model_is_rejected(tmp_path):
    events = _write(tmp_path, [("A", "2025-01-01", "purchase", 1.0)])
    with pytest.raises(ValueError, match="model must be one of"):
        make_labels(events, None, [T("2025-01-01", tz="UTC")], load_params(), "ltv")


def _frame(times, horizon_days=30):
    rows = [{"customer_id": f"c{i}", TIMESTAMP: t, "label": i % 2} for t in times for i in range(4)]
    return pd.DataFrame(rows)


def test_time_split_purges_label_windows():
    params = load_params()
    times = list(pd.date_range("2025-01-01", periods=30, freq="7D", tz="UTC"))
    split = time_split(_frame(times), params)
    h = pd.Timedelta(days=params.labels.horizon_days)
    assert split.train[TIMESTAMP].max() + h <= split.valid[TIMESTAMP].min()
    assert split.valid[TIMESTAMP].max() + h <= split.test[TIMESTAMP].min()
    assert split.test[TIMESTAMP].nunique() == params.training.test_snapshots
    with pytest.raises(ValueError, match="after purging label windows"):
        time_split(_frame(times[:9]), params)


def test_horizon_check_fires_before_any_retrieval(tmp_path, monkeypatch):
    import training.dataset as dataset
    from features.aggregates import build_features
    from training.train import train_model

    rows = [("A", "2025-01-01", "purchase", 1.0), ("A", "2025-01-28 12:00", "web_visit", 1.0)]
    events = _write(tmp_path, rows)
    # Five weekly snapshots; the data ends 2025-01-29 00:00 (the midnight after the last event).
    as_of = list(pd.date_range("2025-01-01 00:00:01", periods=5, freq="7D", tz="UTC"))
    as_of[-1] = T("2025-01-29", tz="UTC")
    params = load_params(
        overrides=(
            "training.test_snapshots=1",
            "training.valid_snapshots=1",
            "training.min_train_snapshots=1",
            "labels.horizon_days=30",
        )
    )
    old = os.environ.get("ENGAGE_DATA_DIR")
    os.environ["ENGAGE_DATA_DIR"] = str(tmp_path)
    try:
        paths = resolve_paths(params)
        assert paths.events == events
        build_features(params, events, None, paths.features_dir, as_of)

        def never(*_a, **_k):
            raise AssertionError("the horizon must be checked before labels and retrieval")

        monkeypatch.setattr(dataset, "make_labels", never)
        monkeypatch.setattr(dataset, "training_frame", never)
        monkeypatch.setattr("training.train.training_frame", never)
        monkeypatch.setattr("features.store.get_store", never)
        monkeypatch.setattr("features.store.historical_features", never)
        # Times 0, 7, 14, 21 d (+1 s) and the end (28 d): a 7-day horizon labels 0, 7 and
        # 14 d: test 14 d, valid 7 d (its window ends at the test time), train 0 d. With 8
        # days, no window ends by the valid time 0 d: no training time is left.
        with pytest.raises(
            ValueError,
            match=r"labels.horizon_days=30: 0 as-of times have a fully observed label window "
            r"\(5 snapshots from 2025-01-01 to 2025-01-29, data until 2025-01-29\).*"
            r"the longest horizon that fits is 7 days \(--set labels.horizon_days=7\)",
        ):
            train_model(paths, params, "churn")
    finally:
        if old is None:
            os.environ.pop("ENGAGE_DATA_DIR", None)
        else:
            os.environ["ENGAGE_DATA_DIR"] = old
    end = T("2025-01-29", tz="UTC")
    assert longest_horizon(as_of, end, params.training, 30) == 7
    fits = load_params(overrides=(*_SMALL_SPLIT, "labels.horizon_days=7"))
    assert check_horizon(as_of, end, fits) is None


def test_every_training_row_uses_features_from_before_its_as_of(pipeline):
    frame = pipeline.results["churn"].test
    assert (frame[SNAPSHOT_TIME] <= frame[TIMESTAMP].map(pd.Timestamp.timestamp)).all()
    check_feature_times(frame)


def test_leakage_canary_snapshot_from_inside_label_window(pipeline):
    frame = pipeline.results["churn"].test.copy()
    # Serve each row the snapshot taken 7 days after its as-of: inside the label window.
    frame[SNAPSHOT_TIME] = frame[SNAPSHOT_TIME] + 7 * 86400
    with pytest.raises(LeakageError, match="features from after their as-of"):
        check_feature_times(frame)


def test_leakage_canary_feature_computed_from_future_events(pipeline):
    p = pipeline
    frame = p.results["appetence"].test.copy()
    features = model_feature_names(p.params)
    customers = p.paths.customers
    assert audit_against_events(frame, p.paths.events, customers, p.params, features) > 0
    # A "purchases in the last 30 days" that secretly counts the next 30 days too.
    events = pd.read_parquet(p.paths.events)
    buys = events[events["event_type"] == "purchase"]
    for t, idx in frame.groupby(TIMESTAMP).groups.items():
        window = buys[(buys["event_time"] > t) & (buys["event_time"] <= t + pd.Timedelta(days=30))]
        future = window.groupby("customer_id").size()
        ids = frame.loc[idx, "customer_id"]
        frame.loc[idx, "purchases_30d"] += ids.map(future).fillna(0).to_numpy()
    with pytest.raises(LeakageError, match="purchases_30d"):
        audit_against_events(frame, p.paths.events, customers, p.params, features, snapshots=20)


def test_both_models_beat_every_baseline_on_the_test_period(pipeline):
    for name, result in pipeline.results.items():
        m = result.metrics
        baselines = {"recency", "rfm", "logreg"} | ({"bgnbd"} if name == "appetence" else set())
        assert set(m) == {"model"} | baselines, name
        for b in baselines:
            assert m["model"]["roc_auc"] > m[b]["roc_auc"], (name, b)
        assert result.chosen == "model" and result.kind == "lightgbm", name
        best = max(baselines, key=lambda b: m[b]["roc_auc"])
        assert result.best_baseline == best and "LightGBM is served" in result.selection
        assert 0 <= m["model"]["ece"] < 0.1, name  # calibrated on held-out rows


def test_the_refit_uses_the_latest_labelled_times_and_no_window_beyond_the_data(pipeline):
    from training.labels import observed_until

    end = observed_until(pipeline.paths.events)
    horizon = pd.Timedelta(days=pipeline.params.labels.horizon_days)
    for name, result in pipeline.results.items():
        facts = result.engage_model.training
        last_test = result.test[TIMESTAMP].max()
        # The served model was refitted through the last labelled as-of time: the last
        # test time, whose window is the last one fully observed.
        assert facts["refit"] is True
        assert pd.Timestamp(facts["refit_as_of_last"]) == last_test, name
        assert last_test + horizon <= end < last_test + horizon + pd.Timedelta(days=7), name
        assert pd.Timestamp(facts["labels_seen_until"]) == last_test + horizon <= end
        assert facts["refit_rows"] > facts["heldout_train_rows"] + len(result.test), name
        # Same number of trees as the held-out fit; its calibrator fitted out of time.
        assert facts["trees"] == result.lightgbm.booster.num_trees()
        assert "margins of a twin fitted on" in facts["calibration"]
        # The ranges the out-of-range check reads are those of the refit rows.
        lo, hi = facts["feature_ranges"]["tenure_days"]
        assert hi >= result.test["tenure_days"].max() - 1e-9


def test_monotone_canary_churn_never_falls_when_recency_grows(pipeline):
    result = pipeline.results["churn"]
    rows = result.test.sample(400, random_state=0)
    for model in (result.engage_model, result.lightgbm):
        assert model.kind == "lightgbm"
        assert model.calibrator.method != "sigmoid" or model.calibrator.coef > 0
        directions = model.training["monotone"]
        for feature in ("days_since_last_event", "days_since_last_web_visit"):
            assert directions[feature] == +1
            grid = np.linspace(0, 400, 41)
            p = np.stack([model.predict_proba(rows.assign(**{feature: g})) for g in grid])
            assert (np.diff(p, axis=0) >= -1e-12).all(), feature  # over every row
            assert (p[-1] > p[0]).any()  # and the feature matters
        # More e-mail opens never raise it.
        assert directions["email_open_count_30d"] == -1
        grid = np.arange(0, 30)
        p = np.stack(
            [model.predict_proba(rows.assign(email_open_count_30d=float(g))) for g in grid]
        )
        assert (np.diff(p, axis=0) <= 1e-12).all()


def test_champion_from_registry_predicts_like_the_trained_object(pipeline):
    import mlflow.pyfunc

    result = pipeline.results["churn"]
    setup_mlflow(pipeline.paths)
    X = result.test[result.engage_model.features].astype(float)
    expected = result.engage_model.predict_proba(X)
    pyfunc = mlflow.pyfunc.load_model("models:/churn@champion")
    np.testing.assert_allclose(pyfunc.predict(X), expected, rtol=0, atol=1e-12)
    model, version = load_model(pipeline.paths, "churn")
    assert version == result.version
    shuffled = X[list(np.random.default_rng(0).permutation(X.columns))]
    np.testing.assert_allclose(model.predict_proba(shuffled), expected, rtol=0, atol=1e-12)
    p = model.predict_proba(X)
    assert ((p >= 0) & (p <= 1)).all()
    with pytest.raises(FeatureMismatchError, match="missing feature.*days_since_last_purchase"):
        model.predict_proba(X.drop(columns=["days_since_last_purchase"]))


def test_run_is_logged_with_params_metrics_tags_and_artifacts(pipeline):
    client = setup_mlflow(pipeline.paths)
    run = client.get_run(pipeline.results["appetence"].run_id)
    assert run.data.params["calibration"] == pipeline.params.training.calibration
    for method in ("model", "recency", "rfm", "logreg", "bgnbd"):
        for metric in ("roc_auc", "pr_auc", "precision_top_decile", "ece", "brier"):
            assert f"test_{method}_{metric}" in run.data.metrics, (method, metric)
    churn = client.get_run(pipeline.results["churn"].run_id)
    assert "test_bgnbd_roc_auc" not in churn.data.metrics  # a purchase target only
    for tag in ("git_commit", "data_fingerprint", "feature_service", "as_of_test", "as_of_refit"):
        assert run.data.tags[tag]
    assert run.data.tags["feature_service"] == "appetence_v1"
    assert run.data.tags["champion_kind"] == "lightgbm"
    assert run.data.tags["best_baseline"] == pipeline.results["appetence"].best_baseline
    assert run.data.metrics["refit_rows"] > run.data.metrics["train_rows"]
    assert str(pipeline.paths.mlruns_dir) in run.info.artifact_uri
    names = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/roc.png", "plots/calibration.png", "plots/shap_beeswarm.png"} <= names
    held = {a.path for a in client.list_artifacts(run.info.run_id, "heldout_model")}
    assert held == {"heldout_model/model.json", "heldout_model/booster.txt"}


def test_a_model_below_a_baseline_is_not_promoted_and_the_baseline_is_served(pipeline, scratch):
    import mlflow.pyfunc

    from serving.champions import load_champions, make_explainers
    from serving.decision import Layout, decide
    from training.train import train_model

    # A crippled LightGBM (one stump) cannot beat the baselines of its own run.
    crippled = load_params(
        overrides=(
            "simulate.customers=2500",
            "training.lightgbm.n_estimators=1",
            "training.lightgbm.num_leaves=2",
            "training.btyd_inputs=false",
        )
    )
    paths = resolve_paths(crippled)
    result = train_model(paths, crippled, "churn")
    m = result.metrics
    assert result.chosen == result.best_baseline != "model"
    assert m[result.chosen]["roc_auc"] == max(m[b]["roc_auc"] for b in m if b != "model")
    assert m["model"]["roc_auc"] < m[result.chosen]["roc_auc"]
    assert "does not beat the best baseline" in result.selection
    assert result.kind in ("logistic", "rfm") and result.engage_model.booster is None
    # This run's baseline is compared with the champion (the pipeline's LightGBM) on the
    # held-out rows they share, and loses: the champion keeps the alias.
    assert result.alias == CHALLENGER and "held-out rows in common" in result.reason
    client = setup_mlflow(paths)
    assert alias_version(client, "churn", CHALLENGER) == result.version
    run = client.get_run(result.run_id)
    assert run.data.tags["champion_kind"] == result.kind
    assert run.data.tags["best_baseline"] == result.best_baseline
    assert run.data.tags["served_method"] == result.chosen
    # Make it the champion, as a first run on fresh data would.
    client.set_registered_model_alias("churn", CHAMPION, result.version)
    X = result.test[result.engage_model.features].astype(float)
    pyfunc = mlflow.pyfunc.load_model("models:/churn@champion")
    np.testing.assert_allclose(
        pyfunc.predict(X), result.engage_model.predict_proba(X), rtol=0, atol=1e-12
    )
    served, version = load_model(paths, "churn")
    assert version == result.version and served.kind == result.kind
    # It is scored and explained by the decision core like any champion.
    champions = load_champions(paths, crippled)
    assert champions["churn"].kind == result.kind
    layout = Layout.of(champions)
    rows = result.test.head(50)
    matrix = rows.reindex(columns=layout.inputs).to_numpy(dtype="float64")
    explainers = make_explainers(champions, crippled, {"churn": {}, "appetence": {}})
    d = decide(matrix, layout, champions, crippled, explainers, top_k=3)
    np.testing.assert_allclose(d.probabilities["p_churn"], served.predict_proba(rows), atol=1e-12)
    idx, reasons = d.reasons["churn"]
    assert len(idx) == 50 and reasons.k == min(3, len(served.features))
    contrib, base = served.contributions(rows)
    np.testing.assert_allclose(contrib.sum(axis=1) + base, served.margin(rows), atol=1e-9)


def test_gate_compares_with_the_champion_on_shared_held_out_rows(pipeline, scratch):
    from training.train import train_model

    # Test metrics are the held-out fits': the same without the refit (which saves time).
    params = load_params(overrides=("simulate.customers=2500", "training.refit=false"))
    paths = resolve_paths(params)
    again = train_model(paths, params, "churn")
    assert again.metrics == pipeline.results["churn"].metrics  # same seed, same numbers
    # The champion was refitted on these test labels: it is compared through its own
    # held-out predictions on the same rows, never scored on labels it has seen.
    assert again.alias == CHAMPION and "held-out rows in common" in again.reason
    # A champion trained for another question is replaced, not compared.
    other = load_params(
        overrides=("simulate.customers=2500", "labels.horizon_days=21", "training.refit=false")
    )
    changed = train_model(paths, other, "churn")
    assert changed.alias == CHAMPION and "answers another question" in changed.reason
    assert "labels.horizon_days" in changed.reason


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_calibrator_maps_margins_like_its_sklearn_estimator(method):
    from scipy.special import expit
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    from training.fit import fit_calibrator
    from training.model import Calibrator, ModelFormatError

    rng = np.random.default_rng(3)
    margin = rng.normal(size=2000) * 2
    y = (rng.random(2000) < expit(0.7 * margin - 0.4)).astype(int)
    cal = fit_calibrator(method, margin, y)
    p = cal.transform(margin)
    assert p.shape == margin.shape and ((p >= 0) & (p <= 1)).all()
    assert (np.diff(p[np.argsort(margin)]) >= 0).all()  # monotone in the margin
    if method == "sigmoid":
        platt = LogisticRegression(C=1e6).fit(margin.reshape(-1, 1), y)
        want = platt.predict_proba(margin.reshape(-1, 1))[:, 1]
        np.testing.assert_allclose(p, want, rtol=1e-12, atol=0)
        # The fitted Platt slope and offset recover the generating ones.
        assert abs(cal.coef - 0.7) < 0.1
        assert abs(cal.intercept + 0.4) < 0.15
    else:
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
        iso.fit(expit(margin), y)
        beyond = np.array([-50.0, 50.0, *margin[:100]])  # clipped outside the fitted range
        np.testing.assert_allclose(cal.transform(beyond), iso.predict(expit(beyond)), atol=1e-12)
    # Stored as JSON and read back, it maps the same.
    again = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_array_equal(again.transform(margin), p)
    with pytest.raises(ValueError, match="unknown method 'beta'"):
        fit_calibrator("beta", margin, y)
    with pytest.raises(ModelFormatError, match="must be one of"):
        Calibrator.from_dict({"method": "beta"})
    with pytest.raises(ModelFormatError, match="coef: must be a finite number"):
        Calibrator.from_dict({"method": "sigmoid", "coef": float("nan"), "intercept": 0})
