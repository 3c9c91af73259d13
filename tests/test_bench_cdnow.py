"""The CDNOW benchmark end to end on a sample: it runs, and it never peeks at the holdout."""

import importlib.util

import numpy as np
import pandas as pd
import pytest

needs_lifetimes = pytest.mark.skipif(
    importlib.util.find_spec("lifetimes") is None, reason="lifetimes not installed"
)
pytestmark = [needs_lifetimes, pytest.mark.slow]

CAL_END = pd.Timestamp("1997-10-01", tz="UTC")  # as-of: covers all of 1997-09-30
SAMPLE = 2000


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from evaluation import cdnow as bench_cdnow

    data_dir = tmp_path_factory.mktemp("bench_cdnow")
    result = bench_cdnow.run_cdnow_benchmark(
        data_dir, customers=SAMPLE, seed=7, rehearsal=False, ceiling=False
    )
    return bench_cdnow, result, data_dir


def test_training_labels_end_by_calibration_end(bench):
    _, result, _ = bench
    h = result["holdout"]
    tr = h["training"]
    horizon = pd.Timedelta(days=tr["horizon_days"])
    assert tr["horizon_days"] == 91
    assert len(tr["label_as_of"]) >= 20
    # A label window (t, t + H] may include an event at t + H; the last one allowed is
    # stamped 1997-09-30 00:00, the last calibration day.
    assert all(t + horizon <= CAL_END for t in tr["label_as_of"])
    assert tr["label_window_end_max"] <= CAL_END
    assert h["calibration_last_event"] < CAL_END
    assert h["calibration_last_event"] >= pd.Timestamp("1997-09-01", tz="UTC")


def test_pipeline_files_hold_no_holdout_event(bench):
    _, result, data_dir = bench
    events = pd.read_parquet(data_dir / "holdout" / "events.parquet")
    assert len(events) == result["holdout"]["calibration_events"]
    assert pd.to_datetime(events["event_time"], utc=True).max() < CAL_END


def test_scored_features_are_as_of_calibration_end(bench):
    bench_cdnow, result, _ = bench
    h = result["holdout"]
    assert h["scored_as_of"] == CAL_END
    assert h["scored_snapshot_times"] == [CAL_END]
    feats = h["scored_features"].set_index("customer_id")
    # Events are stamped 00:00 of their date: a purchase on 1997-09-30 is 1 day old at
    # the as-of time and nothing is younger (a holdout purchase would be).
    assert feats["days_since_last_purchase"].min() >= 1.0
    from engage.data.cdnow import load_cdnow

    events, _ = load_cdnow()
    last_day = events[
        (events["event_time"] == CAL_END - pd.Timedelta(days=1))
        & events["customer_id"].isin(feats.index)
    ]["customer_id"].unique()
    assert len(last_day) > 0
    assert (feats.loc[last_day, "days_since_last_purchase"] == 1.0).all()


def test_predictions_do_not_depend_on_the_holdout(bench, tmp_path):
    """Scramble who bought in the holdout: every prediction must stay the same."""
    bench_cdnow, result, _ = bench
    from engage.config import load_params
    from engage.data.cdnow import load_cdnow

    events, customers = bench_cdnow.sample_customers(*load_cdnow(), SAMPLE, 7)
    hold = events["event_time"] >= CAL_END
    rng = np.random.default_rng(0)
    scrambled = events.copy()
    scrambled.loc[hold, "customer_id"] = rng.choice(customers["customer_id"], int(hold.sum()))
    again = bench_cdnow.run_split(
        scrambled, load_params(profile="cdnow"), tmp_path, bench_cdnow.REAL, lambda _m: None
    )
    before, after = result["holdout"]["predictions"], again["predictions"]
    assert not np.array_equal(before["bought"], after["bought"])
    for col in (
        "p_model",
        "p_model_first",
        "p_model_short",
        "p_model_chain",
        "p_bgnbd",
        "e_bgnbd",
        "frequency",
    ):
        np.testing.assert_array_equal(before[col].to_numpy(), after[col].to_numpy(), err_msg=col)


def test_table_has_the_four_methods(bench):
    bench_cdnow, result, _ = bench
    h = result["holdout"]
    assert set(h["metrics"]) == set(bench_cdnow.METHODS) == {"model", "bgnbd", "frequency", "rfm"}
    assert h["customers"] == SAMPLE
    for m in h["metrics"].values():
        assert 0.5 < m["roc_auc"] < 1.0
    preds = h["predictions"]
    for col in ("p_model", "p_model_first", "p_bgnbd", "p_model_short", "p_model_chain"):
        assert preds[col].between(0, 1).all()
    # One survival curve: a purchase within 39 weeks is at least as likely as within 13,
    # for every customer, and strictly more likely for most.
    assert (preds["p_model"] >= preds["p_model_first"] - 1e-12).all()
    assert (preds["p_model"] > preds["p_model_first"]).mean() > 0.9
    # The hazard model follows 39 weekly periods and was fitted without BG/NBD's curve.
    assert h["hazard"]["period_days"] == 7 and h["hazard"]["periods"] == 39
    assert h["metrics"]["bgnbd"]["predicted_purchases"] > 0
    assert h["metrics"]["bgnbd"]["actual_purchases"] == preds["purchase_days"].sum()
    body = bench_cdnow.report_markdown(result)
    for name in bench_cdnow.METHODS:
        assert bench_cdnow._NAMES[name] in body
    assert "(a random sample)" in body


def test_bgnbd_closed_form_matches_lifetimes(bench):
    """P(>=1) against lifetimes' own quantities: unconditional and small-horizon limits."""
    bench_cdnow, _, data_dir = bench
    from engage.data.cdnow import load_cdnow

    events, _ = load_cdnow()
    ids = pd.Index(sorted(events["customer_id"].unique())[:3000], name="customer_id")
    summary = bench_cdnow.bgnbd_summary(events[events["customer_id"].isin(ids)], CAL_END, ids)
    fitter = bench_cdnow.fit_bgnbd(summary)
    # A brand-new customer: P(>=1 in t) = 1 - P(X(t) = 0).
    new = pd.DataFrame({"frequency": [0.0], "recency": [0.0], "T": [0.0]})
    p0 = fitter.probability_of_n_purchases_up_to_time(273, 0)
    assert bench_cdnow.bgnbd_prob_any(fitter, new, 273)[0] == pytest.approx(1 - p0, rel=1e-6)
    # Over a tiny horizon, P(>=1) ~ E[purchases].
    p = bench_cdnow.bgnbd_prob_any(fitter, summary, 1e-4)
    e = bench_cdnow.bgnbd_expected(fitter, summary, 1e-4)
    np.testing.assert_allclose(p, e, rtol=1e-3)
    assert (bench_cdnow.bgnbd_prob_any(fitter, summary, 273) <= 1).all()


def test_cli_registers_cdnow():
    from typer.testing import CliRunner

    from cli.app import bench_app
    from cli.main import app

    assert [c.name for c in bench_app.registered_commands].count("cdnow") == 1
    out = CliRunner().invoke(app, ["bench", "cdnow", "--help"])
    assert out.exit_code == 0, out.output
    assert "--customers" in out.output


def test_history_matrix_counts_weeks_back_from_the_as_of_time():
    from evaluation.cdnow import history_matrix

    as_of = pd.Timestamp("1997-10-01", tz="UTC")
    day = pd.Timedelta(days=1)
    cal = pd.DataFrame(
        {
            # a: two lines on 09-30 (one purchase day), one on 09-24 (7 days back: still
            # week 0), one on 09-23 (8 days back: week 1); b's only line is at the as-of
            # time itself, which is not history.
            "customer_id": ["a", "a", "a", "a", "b"],
            "event_time": [as_of - day, as_of - day, as_of - 7 * day, as_of - 8 * day, as_of],
            "value": [10.0, 5.0, 1.0, 2.0, 99.0],
        }
    )
    ids = pd.Index(["a", "b", "c"], name="customer_id")
    h = history_matrix(cal, ids, as_of)

    assert list(h.index) == ["a", "b", "c"]
    assert h.loc["a", ["n_w0", "n_w1"]].tolist() == [2, 1]
    assert h.loc["a", ["v_w0", "v_w1"]].tolist() == [16.0, 2.0]
    assert h.loc["a", ["x", "t_x", "T", "recency", "spend"]].tolist() == [2, 7, 8, 1, 18.0]
    assert h.loc["b"].isna().sum() == 5 and (h.loc["b", ["n_w0", "n_w1"]] == 0).all()
    assert h.loc["c", "n_w0"] == 0


def test_history_ceiling_finds_a_signal_that_is_there():
    from evaluation.cdnow import history_ceiling

    rng = np.random.default_rng(0)
    n = 1500
    history = pd.DataFrame(
        {
            "n_w0": rng.poisson(0.5, n),
            "v_w0": rng.gamma(2.0, 10.0, n),
            "x": rng.poisson(1.0, n),
            "t_x": rng.integers(0, 200, n),
            "T": rng.integers(200, 270, n),
            "recency": rng.integers(1, 270, n),
            "spend": rng.gamma(2.0, 30.0, n),
        }
    )
    y = (rng.random(n) < 1 / (1 + np.exp(2.0 - 1.5 * history["x"]))).astype(int)
    out = history_ceiling(history, y.to_numpy(), seed=0)
    assert set(out) == {"gbm", "spline_logit"}
    assert out["spline_logit"]["roc_auc"] > 0.75  # x drives the label: both must see it
    assert out["gbm"]["roc_auc"] > 0.75
