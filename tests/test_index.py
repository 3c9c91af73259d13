"""The engagement index: stages at and around the thresholds, score and dial formulas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engage.config import IndexParams
from serving.index import STAGES, check_probability, engagement_index, thresholds_at

TAU = IndexParams(
    tau_purchase=0.3, tau_churn=0.5, hysteresis=0.0, min_dwell_runs=1, stated_horizon_days=30
)
EPS = 1e-9
NAN = float("nan")


def one(has_purchased, p_purchase, p_churn, params=TAU):
    out = engagement_index([has_purchased], [p_purchase], [p_churn], params)
    return str(out["stage"].iloc[0]), out["engagement_score"].iloc[0], out["dial_position"].iloc[0]


# (has_purchased, p_purchase, p_churn) -> stage, engagement score, dial position; the
# dial values are computed by hand from the documented formulas with tau_p = 0.3,
# tau_c = 0.5.
CASES = [
    # Prospects: Nurture below tau_p, Purchase from tau_p (inclusive).
    ((0, 0.0, NAN), "Nurture", 0.0, 0.0),
    ((0, 0.15, NAN), "Nurture", 15.0, 12.5),  # 25 * 0.15 / 0.3
    ((0, 0.3 - EPS, NAN), "Nurture", 30.0 - 1e-7, 25.0 - 25 * EPS / 0.3),
    ((0, 0.3, NAN), "Purchase", 30.0, 25.0),
    ((0, 0.3 + EPS, NAN), "Purchase", 30.0 + 1e-7, 25.0 + 25 * EPS / 0.7),
    ((0, 0.65, NAN), "Purchase", 65.0, 37.5),  # 25 + 25 * 0.35 / 0.7
    ((0, 1.0, NAN), "Purchase", 100.0, 50.0),
    # A prospect's p_churn is ignored even when present.
    ((0, 0.1, 0.99), "Nurture", 10.0, 25 * 0.1 / 0.3),
    # Customers: Retention below tau_c, Exit from tau_c (inclusive).
    ((1, NAN, 0.0), "Retention", 100.0, 50.0),
    ((1, NAN, 0.2), "Retention", 80.0, 60.0),  # 50 + 25 * 0.2 / 0.5
    ((1, NAN, 0.5 - EPS), "Retention", 50.0 + 1e-7, 75.0 - 25 * EPS / 0.5),
    ((1, NAN, 0.5), "Exit", 50.0, 75.0),
    ((1, NAN, 0.5 + EPS), "Exit", 50.0 - 1e-7, 75.0 + 25 * EPS / 0.5),
    ((1, NAN, 0.8), "Exit", 20.0, 90.0),  # 75 + 25 * 0.3 / 0.5
    ((1, NAN, 1.0), "Exit", 0.0, 100.0),
    # A customer's p_purchase is ignored.
    ((1, 0.9, 0.1), "Retention", 90.0, 55.0),
]


@pytest.mark.parametrize(("inputs", "stage", "score", "dial"), CASES)
def test_stage_score_and_dial_at_and_around_thresholds(inputs, stage, score, dial):
    got_stage, got_score, got_dial = one(*inputs)
    assert got_stage == stage
    assert got_score == pytest.approx(score, abs=1e-12)
    assert got_dial == pytest.approx(dial, abs=1e-12)


@pytest.mark.parametrize(
    ("params", "inputs", "stage", "dial"),
    [
        # tau = 0: the lower quarter is empty, every contact of the half is in the upper one.
        (
            IndexParams(
                tau_purchase=0.0,
                tau_churn=0.5,
                hysteresis=0.0,
                min_dwell_runs=1,
                stated_horizon_days=30,
            ),
            (0, 0.0, NAN),
            "Purchase",
            25.0,
        ),
        (
            IndexParams(
                tau_purchase=0.0,
                tau_churn=0.5,
                hysteresis=0.0,
                min_dwell_runs=1,
                stated_horizon_days=30,
            ),
            (0, 0.4, NAN),
            "Purchase",
            35.0,
        ),
        (
            IndexParams(
                tau_purchase=0.3,
                tau_churn=0.0,
                hysteresis=0.0,
                min_dwell_runs=1,
                stated_horizon_days=30,
            ),
            (1, NAN, 0.0),
            "Exit",
            75.0,
        ),
        # tau = 1: only p = 1 reaches the upper quarter, at its left edge (no 0 / 0).
        (
            IndexParams(
                tau_purchase=1.0,
                tau_churn=0.5,
                hysteresis=0.0,
                min_dwell_runs=1,
                stated_horizon_days=30,
            ),
            (0, 1.0, NAN),
            "Purchase",
            25.0,
        ),
        (
            IndexParams(
                tau_purchase=1.0,
                tau_churn=0.5,
                hysteresis=0.0,
                min_dwell_runs=1,
                stated_horizon_days=30,
            ),
            (0, 0.5, NAN),
            "Nurture",
            12.5,
        ),
        (
            IndexParams(
                tau_purchase=0.3,
                tau_churn=1.0,
                hysteresis=0.0,
                min_dwell_runs=1,
                stated_horizon_days=30,
            ),
            (1, NAN, 1.0),
            "Exit",
            75.0,
        ),
        (
            IndexParams(
                tau_purchase=0.3,
                tau_churn=1.0,
                hysteresis=0.0,
                min_dwell_runs=1,
                stated_horizon_days=30,
            ),
            (1, NAN, 0.6),
            "Retention",
            65.0,
        ),
    ],
)
def test_extreme_thresholds(params, inputs, stage, dial):
    got_stage, _, got_dial = one(*inputs, params=params)
    assert (got_stage, got_dial) == (stage, pytest.approx(dial))


def test_stage_is_an_ordered_categorical_in_dial_order():
    out = engagement_index([0, 0, 1, 1], [0.1, 0.9, NAN, NAN], [NAN, NAN, 0.1, 0.9], TAU)
    assert list(out["stage"].cat.categories) == list(STAGES)
    assert list(out["stage"]) == ["Nurture", "Purchase", "Retention", "Exit"]


@pytest.mark.parametrize("tau_p", [0.0, 0.05, 0.3, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("tau_c", [0.0, 0.2, 0.5, 0.95, 1.0])
def test_dial_is_monotone_within_a_half_and_stays_in_its_quarters(tau_p, tau_c):
    params = IndexParams(
        tau_purchase=tau_p,
        tau_churn=tau_c,
        hysteresis=0.0,
        min_dwell_runs=1,
        stated_horizon_days=30,
    )
    grid = np.unique(np.concatenate([np.linspace(0, 1, 2001), [tau_p, tau_c]]))
    n = len(grid)
    prospects = engagement_index(np.zeros(n), grid, np.full(n, NAN), params)
    customers = engagement_index(np.ones(n), np.full(n, NAN), grid, params)
    for half, out, lo, hi in ((0, prospects, 0.0, 50.0), (1, customers, 50.0, 100.0)):
        dial = out["dial_position"].to_numpy()
        assert np.all(np.diff(dial) >= 0), f"half {half}: dial not monotone"
        assert dial.min() >= lo and dial.max() <= hi
        # Each stage sits in its own quarter (the upper edge closed only at p = 1).
        for k, stage in enumerate(STAGES):
            mine = dial[(out["stage"] == stage).to_numpy()]
            if mine.size:
                assert mine.min() >= 25 * k and mine.max() <= 25 * (k + 1)
        score = out["engagement_score"].to_numpy()
        assert score.min() >= 0 and score.max() <= 100


def test_random_inputs_keep_every_invariant():
    rng = np.random.default_rng(0)
    n = 10_000
    h = rng.integers(0, 2, n)
    p, q = rng.random(n), rng.random(n)
    out = engagement_index(h, p, q, TAU)
    stage = out["stage"].astype(str).to_numpy()
    assert set(stage[h == 0]) <= {"Nurture", "Purchase"}
    assert set(stage[h == 1]) <= {"Retention", "Exit"}
    assert np.array_equal(stage[h == 0] == "Purchase", p[h == 0] >= 0.3)
    assert np.array_equal(stage[h == 1] == "Exit", q[h == 1] >= 0.5)
    np.testing.assert_allclose(out["engagement_score"], np.where(h == 1, 100 * (1 - q), 100 * p))


@pytest.mark.parametrize(
    ("h", "p", "q", "message"),
    [
        ([0, 0, 1], [0.1, NAN, 0.5], [NAN, NAN, 0.2], r"p_purchase: 1 row\(s\) missing"),
        ([1, 1, 0], [NAN, NAN, 0.3], [0.2, NAN, NAN], r"p_churn: 1 row\(s\) missing"),
        ([0, 0, 0], [1.2, -0.1, 0.5], [NAN] * 3, r"p_purchase: 2 row\(s\) outside \[0, 1\]"),
        # Out of range is an error even in the half that does not use the probability.
        ([0, 0], [0.1, 0.2], [1.5, NAN], r"p_churn: 1 row\(s\) outside \[0, 1\]"),
        ([0, 2, NAN], [0.1] * 3, [0.1] * 3, r"has_purchased: 2 row\(s\) not 0 or 1"),
        ([0, 1], [0.1], [0.1, 0.2], r"lengths differ"),
    ],
)
def test_invalid_inputs_name_the_field_and_the_row_count(h, p, q, message):
    with pytest.raises(ValueError, match=message):
        engagement_index(h, p, q, TAU)


def test_check_probability_accepts_series_and_rejects_text():
    s = pd.Series([0.0, 0.5, 1.0])
    assert check_probability(s, "p").tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="p: not numeric"):
        check_probability(["a"], "p")


# ---------------------------------------------------------------- thresholds at a horizon


def test_thresholds_at_the_stated_horizon_are_the_stated_ones():
    assert thresholds_at(TAU, 30) is TAU


def test_thresholds_carried_to_another_horizon_by_hand():
    # Purchase: 1 - (1 - 0.3)^(60/30) = 1 - 0.49 = 0.51; churn: 0.5^(60/30) = 0.25.
    at60 = thresholds_at(TAU, 60)
    assert at60.tau_purchase == pytest.approx(0.51)
    assert at60.tau_churn == pytest.approx(0.25)
    # A shorter horizon: 1 - 0.7^(15/30) = 1 - sqrt(0.7); 0.5^(1/2) = sqrt(0.5).
    at15 = thresholds_at(TAU, 15)
    assert at15.tau_purchase == pytest.approx(1 - 0.7**0.5)
    assert at15.tau_churn == pytest.approx(0.5**0.5)
    # Only the thresholds move.
    assert (at15.hysteresis, at15.min_dwell_runs, at15.stated_horizon_days) == (0.0, 1, 30)


def test_a_constant_hazard_contact_keeps_its_stage_at_every_horizon():
    # A contact who buys at a constant daily hazard has P(within h) = 1 - (1 - d)^h and
    # P(quiet throughout h) = (1 - d)^h: its stage must not depend on the horizon.
    rng = np.random.default_rng(7)
    daily = rng.uniform(0.0005, 0.05, 400)
    stages = []
    for h in (7, 14, 30, 90, 182):
        tau = thresholds_at(TAU, h)
        p = 1 - (1 - daily) ** h
        q = (1 - daily) ** h
        prospects = engagement_index(np.zeros(400), p, np.full(400, NAN), tau)["stage"]
        customers = engagement_index(np.ones(400), np.full(400, NAN), q, tau)["stage"]
        stages.append((prospects.astype(str).tolist(), customers.astype(str).tolist()))
    assert all(s == stages[0] for s in stages[1:])
    # Both stages of each half are populated, so the check is not vacuous.
    assert {"Nurture", "Purchase"} == set(stages[0][0])
    assert {"Retention", "Exit"} == set(stages[0][1])


@pytest.mark.parametrize("tau", [0.0, 1.0])
def test_thresholds_zero_and_one_stay_put(tau):
    edge = TAU.model_copy(update={"tau_purchase": tau, "tau_churn": tau})
    at = thresholds_at(edge, 91)
    assert (at.tau_purchase, at.tau_churn) == (tau, tau)


def test_thresholds_at_refuses_a_horizon_that_is_not_positive():
    with pytest.raises(ValueError, match="horizon_days must be a positive number of days"):
        thresholds_at(TAU, 0)


def test_stated_threshold_inverts_the_conversion():
    from engage.config import load_params
    from serving.thresholds import current_threshold, stated_threshold

    params = load_params(overrides=("labels.horizon_days=91", "index.stated_horizon_days=30"))
    for model in ("churn", "appetence"):
        current = current_threshold(params, model)
        stated = getattr(params.index, "tau_churn" if model == "churn" else "tau_purchase")
        assert current != pytest.approx(stated)
        assert stated_threshold(params, model, current) == pytest.approx(stated)
