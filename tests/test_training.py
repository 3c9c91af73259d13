"""Training: labels, purged time split, leakage checks, quality vs baselines, MLflow, gate."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from engage.config import load_params, resolve_paths
from features.catalog import SNAPSHOT_TIME, TIMESTAMP, model_feature_names
from training.dataset import LeakageError, audit_against_events, check_feature_times, time_split
from training.labels import labelable, make_labels
from training.model import FeatureMismatchError
from training.registry import CHALLENGER, CHAMPION, alias_version, load_model, setup_mlflow

T = pd.Timestamp


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


def test_both_models_beat_both_baselines_on_the_test_period(pipeline):
    for name, result in pipeline.results.items():
        m = result.metrics
        assert m["model"]["roc_auc"] > m["logreg"]["roc_auc"], name
        assert m["model"]["roc_auc"] > m["rfm"]["roc_auc"], name
        assert 0 <= m["model"]["ece"] < 0.1, name  # calibrated on held-out rows


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
    for key in ("test_model_roc_auc", "test_logreg_roc_auc", "test_rfm_roc_auc", "test_model_ece"):
        assert key in run.data.metrics
    for tag in ("git_commit", "data_fingerprint", "feature_service", "as_of_test"):
        assert run.data.tags[tag]
    assert run.data.tags["feature_service"] == "appetence_v1"
    assert str(pipeline.paths.mlruns_dir) in run.info.artifact_uri
    names = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/roc.png", "plots/calibration.png", "plots/shap_beeswarm.png"} <= names


@pytest.fixture()
def scratch(pipeline, tmp_path):
    """A copy of the pipeline's data dir, for tests that register new versions."""
    target = tmp_path / "data"
    shutil.copytree(pipeline.data_dir, target)
    old = os.environ["ENGAGE_DATA_DIR"]
    os.environ["ENGAGE_DATA_DIR"] = str(target)
    yield target
    os.environ["ENGAGE_DATA_DIR"] = old


def test_gate_keeps_a_worse_model_as_challenger_and_same_seed_same_metrics(pipeline, scratch):
    from training.train import train_model

    params = load_params(overrides=("simulate.customers=2500",))
    paths = resolve_paths(params)
    frame = pipeline.results["churn"]
    first = train_model(paths, params, "churn")
    again = train_model(paths, params, "churn")
    assert again.metrics == first.metrics  # same seed, same data: same numbers
    assert again.alias == CHAMPION
    worse_params = load_params(
        overrides=("training.lightgbm.n_estimators=1", "training.lightgbm.num_leaves=2")
    )
    worse = train_model(paths, worse_params, "churn")
    assert worse.metrics["model"]["roc_auc"] < frame.metrics["model"]["roc_auc"]
    assert worse.alias == CHALLENGER and "< champion" in worse.reason
    client = setup_mlflow(paths)
    assert alias_version(client, "churn", CHAMPION) == again.version
    assert alias_version(client, "churn", CHALLENGER) == worse.version


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
