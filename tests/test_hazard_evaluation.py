"""Evaluation of the hazard models (evaluation/hazard.py) on tiny synthetic data."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from engage.config import load_params
from evaluation import hazard as ev
from features.catalog import ENTITY_KEY, TIMESTAMP, model_feature_names
from training import hazard as hz
from training.labels import LABEL

T0 = pd.Timestamp("2025-01-06", tz="UTC")
D = pd.Timedelta(days=1)


def brute_c(t, e, r):
    num = den = 0.0
    for i, j in itertools.permutations(range(len(t)), 2):
        if e[i] and t[i] < t[j]:
            den += 1
            num += 1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0
    return num / den


def test_concordance_index_hand_computed_and_brute_force():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    e = np.array([1, 1, 0, 1])
    assert ev.concordance_index(t, e, np.array([4.0, 3.0, 2.0, 1.0])) == 1.0
    assert ev.concordance_index(t, e, np.array([1.0, 2.0, 3.0, 4.0])) == 0.0
    # Comparable pairs: (0,1) (0,2) (0,3) (1,2) (1,3); risks tie on (0,1) only.
    assert ev.concordance_index(t, e, np.array([2.0, 2.0, 1.0, 0.0])) == pytest.approx(4.5 / 5)
    rng = np.random.default_rng(3)
    t = rng.integers(0, 6, 60).astype(float)
    e = rng.uniform(size=60) < 0.6
    r = rng.integers(0, 4, 60).astype(float)
    assert ev.concordance_index(t, e, r) == pytest.approx(brute_c(t, e, r))
    with pytest.raises(ValueError, match="no comparable pair"):
        ev.concordance_index(t, np.zeros(60), r)
    with pytest.raises(ValueError, match="lengths 60, 60, 3 differ"):
        ev.concordance_index(t, e, r[:3])


def test_brier_curve_and_integrated_brier_by_hand():
    F = np.array([[0.5, 1.0], [0.0, 0.5]])
    t = np.array([3.0, np.nan])  # first row: event in period 1 of 7 days; second: none
    np.testing.assert_allclose(ev.brier_curve(F, t, 7), [(0.25 + 0) / 2, (0 + 0.25) / 2])
    assert ev.integrated_brier(F, t, 7) == pytest.approx(0.125)


def test_marginal_hazards_and_mape():
    pp = pd.DataFrame({hz.PERIOD: [1, 1, 1, 1, 2, 2], hz.LABEL: [1, 0, 0, 0, 1, 1]})
    np.testing.assert_allclose(ev.marginal_hazards(pp, 2), [0.25, 1.0])
    with pytest.raises(ValueError, match=r"periods \[3\]: no training row at risk"):
        ev.marginal_hazards(pp, 3)
    assert ev.mape(np.array([0, 10, 20]), np.array([5, 11, 18])) == pytest.approx(0.1)


def test_horizon_label_follows_the_fixed_horizon_rules():
    first = pd.Series([T0 + 3 * D, pd.NaT, T0 + 40 * D])
    as_of = pd.Series([T0] * 3)
    assert ev.horizon_label(first, as_of, 30, "appetence").tolist() == [1, 0, 0]
    assert ev.horizon_label(first, as_of, 30, "churn").tolist() == [0, 1, 1]


def _tiny(params, n=150, weeks=22, seed=0):
    """Weekly as-of rows of ``n`` contacts buying at a rate driven by one feature."""
    rng = np.random.default_rng(seed)
    features = model_feature_names(params)
    rate = rng.uniform(0.005, 0.15, n)  # purchases per day
    ids = np.array([f"c{i}" for i in range(n)])
    buys = []
    for cid, lam in zip(ids, rate, strict=True):
        t = 0.0
        while True:
            t += rng.exponential(1 / lam)
            if t > 7 * weeks + 60:
                break
            buys.append((cid, "purchase", T0 + pd.Timedelta(days=float(np.floor(t)))))
    events = pd.DataFrame(buys, columns=["customer_id", "event_type", "event_time"])
    times = [T0 + 7 * k * D for k in range(1, weeks + 1)]
    frame = pd.DataFrame({ENTITY_KEY: np.tile(ids, len(times)), TIMESTAMP: np.repeat(times, n)})
    noise = rng.normal(size=(len(frame), len(features))).astype("float32")
    frame = pd.concat([frame, pd.DataFrame(noise, columns=features)], axis=1)
    frame[features[0]] = np.tile(rate, len(times)) + rng.normal(0, 0.01, len(frame))
    first = hz.first_event_times(frame, events, ["purchase"])
    frame[LABEL] = ev.horizon_label(first, frame[TIMESTAMP], params.hazard.period_days, "appetence")
    end = T0 + (7 * weeks + 60) * D
    return frame, events, end


@pytest.fixture(scope="module")
def tiny_params():
    return load_params(
        overrides=(
            "hazard.period_days=7",
            "hazard.h_max_periods=4",
            "hazard.horizons_days=[7,28]",
            "hazard.primary_metric=roc_auc_28d",
            "training.valid_snapshots=2",
            "training.test_snapshots=2",
            "training.btyd_inputs=false",
            "training.lightgbm.n_estimators=40",
            "training.lightgbm.num_threads=1",
        )
    )


def test_evaluate_frame_on_tiny_data_gives_every_table_row(tiny_params):
    frame, events, end = _tiny(tiny_params)
    r = ev.evaluate_frame(frame, events, end, tiny_params, "appetence")
    assert list(r["metrics"]) == [7, 28]
    for ms in r["metrics"].values():
        assert set(ms) == {"hazard", "fixed", "population"}
        for m in ("hazard", "fixed"):
            assert 0.5 < ms[m]["roc_auc"] <= 1 and 0 <= ms[m]["ece"] <= 1
        # the synthetic rate is learnable: the hazard model beats the population curve
        assert ms["hazard"]["brier"] < ms["population"]["brier"]
    sv = r["survival"]
    assert 0.6 < sv["hazard"]["c_index"] <= 1 and 0.5 < sv["fixed"]["c_index"] <= 1
    assert sv["hazard"]["ibs"] < sv["population"]["ibs"]
    assert r["rows"]["test"] == 2 * 150 and r["counts"]["hazard"]["actual"] > 0
    assert r["counts"]["hazard"]["actual"] == r["counts"]["bgnbd"]["actual"]
    lines = ev.demo_markdown(
        {
            "customers": 150,
            "days": 200,
            "events": len(events),
            "every_days": 7,
            "rows_per_snapshot": None,
            "models": {"appetence": r},
        },
        tiny_params.hazard,
    )
    rows = [x for x in lines if x.startswith("| 7 d") or x.startswith("| 28 d")]
    assert len(rows) == 2 * 3
    assert any("concordance index" in x for x in lines)
    assert (
        len([x for x in lines if x.startswith("| count LightGBM") or x.startswith("| BG/NBD")]) == 2
    )


def test_evaluate_frame_rejects_labels_of_another_rule(tiny_params):
    frame, events, end = _tiny(tiny_params, n=30, weeks=20)
    frame[LABEL] = 1 - frame[LABEL]
    with pytest.raises(ValueError, match=r"appetence: \d+ rows' labels disagree"):
        ev.evaluate_frame(frame, events, end, tiny_params, "appetence")


def test_cdnow_tables_and_report_rows():
    rng = np.random.default_rng(5)
    n, weeks = 200, 6
    truth = {}
    for h in (14, 42):
        days = rng.poisson(0.3 * h / 14, n)
        truth[h] = pd.DataFrame({"days": days, "bought": (days > 0).astype(int)})
    methods = ("hazard", "bgnbd", "pareto")
    probs = {m: {h: rng.uniform(0, 1, n) for h in truth} for m in methods}
    counts = {m: {h: rng.uniform(0, 2, n) for h in truth} for m in methods}
    actual = np.cumsum(rng.integers(5, 10, weeks))
    curves = {m: actual * rng.uniform(0.8, 1.2) for m in methods}
    t = ev.cdnow_tables(truth, probs, counts, actual, curves, bins=10)
    assert set(t["probability"]) == {14, 42} and set(t["probability"][14]) == set(methods)
    x = t["counts"][42]["bgnbd"]
    a = truth[42]["days"].to_numpy()
    assert x["mae"] == pytest.approx(np.mean(np.abs(counts["bgnbd"][42] - a)))
    assert x["rmse"] == pytest.approx(np.sqrt(np.mean((counts["bgnbd"][42] - a) ** 2)))
    assert t["tracking"]["hazard"] == pytest.approx(ev.mape(actual, curves["hazard"]))
    c = {
        "customers": n,
        "sampled": True,
        "calibration_events": 999,
        "as_of": T0,
        "holdout_end": T0 + 42 * D,
        "training_as_of": (T0 - 70 * D, T0 - 7 * D, 10),
        "person_period_rows": {"train": 1, "valid": 1},
        "count_rows": {"train": 1, "valid": 1},
        "fit": {"trees": 3, "count_trees": 4, "seconds": 1.0},
        "tables": t,
    }
    hp = load_params(profile="cdnow").hazard
    lines = ev.cdnow_markdown(c, hp)
    assert len([x for x in lines if x.startswith("| 2 w |") or x.startswith("| 6 w |")]) == 12
    actual_row = next(i for i, x in enumerate(lines) if x.startswith("| actual |"))
    tracking = lines[actual_row + 1 : actual_row + 4]
    assert [x.split(" | ")[0] for x in tracking] == [f"| {ev.NAMES[m]}" for m in methods]
    assert all(x.endswith("% |") for x in tracking)
    assert any(x.startswith("**Verdict (CDNOW).**") for x in lines)


def test_bench_hazard_command_rejects_an_unknown_dataset(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.setenv("ENGAGE_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["bench", "hazard", "--dataset", "nope"])
    assert result.exit_code != 0
    assert "--dataset must be one of demo, cdnow, both, got 'nope'" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(ValueError, match=r"datasets: \['x'\]; use demo and / or cdnow"):
        ev.run_hazard_benchmark(tmp_path, datasets=("x",))
