"""The stability rule of the index: hysteresis and minimum dwell against the previous run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engage.config import IndexParams
from serving.index import STAGES, UNKNOWN, dial_in_quadrant, index_arrays, stabilise

N, P, R, E = (STAGES.index(s) for s in ("Nurture", "Purchase", "Retention", "Exit"))
NAN = float("nan")


def rule(h: float = 0.02, dwell: int = 1, tau_p: float = 0.3, tau_c: float = 0.5) -> IndexParams:
    return IndexParams(
        tau_purchase=tau_p,
        tau_churn=tau_c,
        hysteresis=h,
        min_dwell_runs=dwell,
        stated_horizon_days=30,
    )


def decide_one(half, p, q, prev, prev_runs=1, params=None):
    params = params or rule()
    code, _, _ = index_arrays([half], [p], [q], params)
    out, runs = stabilise(code, np.array([half]), np.array([p]), np.array([q]), params,
                          np.array([prev]), np.array([prev_runs]))  # fmt: skip
    return STAGES[out[0]], int(runs[0])


# (half, p_purchase, p_churn, previous stage, runs in it) -> stage, runs in it now.
# tau_p = 0.3, tau_c = 0.5, h = 0.02: up from the lower stage at p >= tau + h, down from
# the upper stage at p < tau - h. Computed by hand.
CASES = [
    # A prospect in Nurture needs p >= 0.32 to move up.
    ((0, 0.31, NAN, N, 4), ("Nurture", 5)),  # plain rule: Purchase
    ((0, 0.32, NAN, N, 4), ("Purchase", 1)),
    ((0, 0.20, NAN, N, 4), ("Nurture", 5)),
    # A prospect in Purchase stays while p >= 0.28.
    ((0, 0.29, NAN, P, 2), ("Purchase", 3)),  # plain rule: Nurture
    ((0, 0.28, NAN, P, 2), ("Purchase", 3)),  # exactly tau - h is not below it
    ((0, 0.2799, NAN, P, 2), ("Nurture", 1)),
    # Customers: up to Exit at q >= 0.52, down to Retention at q < 0.48.
    ((1, NAN, 0.51, R, 1), ("Retention", 2)),  # plain rule: Exit
    ((1, NAN, 0.52, R, 1), ("Exit", 1)),
    ((1, NAN, 0.49, E, 6), ("Exit", 7)),  # plain rule: Retention
    ((1, NAN, 0.47, E, 6), ("Retention", 1)),
    # No previous stage: the plain thresholds.
    ((1, NAN, 0.51, UNKNOWN, 0), ("Exit", 1)),
    ((0, 0.31, NAN, UNKNOWN, 0), ("Purchase", 1)),
    # A change of half is a fact (a first purchase), not noise: the plain thresholds.
    ((1, NAN, 0.51, P, 9), ("Exit", 1)),
    ((1, NAN, 0.30, N, 9), ("Retention", 1)),
]


@pytest.mark.parametrize(("given", "want"), CASES)
def test_hysteresis_cases(given, want):
    half, p, q, prev, runs = given
    assert decide_one(half, p, q, prev, runs) == want


# With min_dwell_runs = 3 a stage entered 1 or 2 runs ago is kept, whatever p says.
DWELL = [
    ((1, NAN, 0.10, E, 1), ("Exit", 2)),
    ((1, NAN, 0.10, E, 2), ("Exit", 3)),
    ((1, NAN, 0.10, E, 3), ("Retention", 1)),
    ((1, NAN, 0.10, E, 0), ("Retention", 1)),  # unknown count (older run): not held
    ((0, 0.90, NAN, N, 1), ("Nurture", 2)),
    ((1, NAN, 0.90, N, 1), ("Exit", 1)),  # a change of half is never held
]


@pytest.mark.parametrize(("given", "want"), DWELL)
def test_minimum_dwell_cases(given, want):
    half, p, q, prev, runs = given
    assert decide_one(half, p, q, prev, runs, rule(dwell=3)) == want


def test_without_margin_or_dwell_the_rule_is_the_plain_threshold():
    rng = np.random.default_rng(0)
    n = 5000
    half = rng.integers(0, 2, n)
    p = rng.random(n)
    q = np.where(half == 1, rng.random(n), np.nan)
    params = rule(h=0.0, dwell=1)
    code, _, _ = index_arrays(half, p, q, params)
    prev, prev_runs = rng.integers(-1, 4, n), rng.integers(0, 5, n)
    out, runs = stabilise(code, half, p, q, params, prev, prev_runs)
    np.testing.assert_array_equal(out, code)
    kept = out == prev
    assert (runs[~kept] == 1).all()
    np.testing.assert_array_equal(runs[kept], prev_runs[kept] + 1)


def run_weeks(probabilities, params, half=0):
    """Score one contact week after week, each week against the week before."""
    stages, prev, prev_runs = [], UNKNOWN, 0
    for x in probabilities:
        p, q = (x, NAN) if half == 0 else (NAN, x)
        code, _, _ = index_arrays([half], [p], [q], params)
        out, runs = stabilise(
            code, np.array([half]), np.array([p]), np.array([q]), params,
            np.array([prev]), np.array([prev_runs]),
        )  # fmt: skip
        prev, prev_runs = int(out[0]), int(runs[0])
        stages.append(STAGES[prev])
    return stages


def test_a_contact_oscillating_around_the_threshold_stays_put():
    noise = [0.49, 0.51, 0.495, 0.515, 0.48, 0.505, 0.49, 0.51]
    plain = run_weeks(noise, rule(h=0.0), half=1)
    assert plain.count("Exit") == 4 and plain.count("Retention") == 4  # flips every week
    assert run_weeks(noise, rule(h=0.02), half=1) == ["Retention"] * 8


def test_a_clear_move_still_moves_at_once():
    assert run_weeks([0.1, 0.12, 0.6, 0.58, 0.1], rule(h=0.02)) == [
        "Nurture",
        "Nurture",
        "Purchase",
        "Purchase",
        "Nurture",
    ]
    # With a minimum dwell of 2 runs the fall back waits one run.
    assert run_weeks([0.1, 0.1, 0.6, 0.1, 0.1], rule(h=0.02, dwell=2)) == [
        "Nurture",
        "Nurture",
        "Purchase",
        "Purchase",
        "Nurture",
    ]


def test_bounds_are_clipped_to_probabilities():
    # tau + h above 1: a probability of exactly 1 still moves up.
    params = rule(h=0.05, tau_p=0.99)
    assert decide_one(0, 1.0, NAN, N, 1, params) == ("Purchase", 1)
    assert decide_one(0, 0.999, NAN, N, 1, params) == ("Nurture", 2)


def test_a_held_contact_sits_on_the_edge_of_its_quadrant():
    params = rule()
    code, _, dial = index_arrays([0, 1], [0.29, NAN], [NAN, 0.51], params)
    assert dial[0] < 25 and dial[1] > 75  # plain: Nurture and Exit
    out, _ = stabilise(
        code, np.array([0, 1]), np.array([0.29, NAN]), np.array([NAN, 0.51]), params,
        np.array([P, R]), np.array([1, 1]),
    )  # fmt: skip
    assert [STAGES[c] for c in out] == ["Purchase", "Retention"]
    np.testing.assert_allclose(dial_in_quadrant(out, dial), [25.0, 75.0])
    np.testing.assert_allclose(dial_in_quadrant(code, dial), dial)  # unheld: unchanged


def test_bad_previous_stages_are_refused():
    params = rule()
    code = np.array([0], dtype="int8")
    one = (np.array([0]), np.array([0.1]), np.array([NAN]))
    with pytest.raises(ValueError, match=r"previous stage: 1 row\(s\) not a stage code"):
        stabilise(code, *one, params, np.array([7]))
    with pytest.raises(ValueError, match="lengths differ: stages 1, previous stages 2"):
        stabilise(code, *one, params, np.array([0, 1]))


def test_previous_stages_come_from_the_latest_run_before_the_as_of(tmp_path):
    from engage.config import PROJECT_ROOT, Paths, load_params
    from serving.runs import previous_run, previous_stages
    from tests.test_transitions import T0, WEEK, write_run

    paths = Paths(PROJECT_ROOT, tmp_path, tmp_path / "mlruns", load_params())
    assert previous_stages(paths, T0).run is None  # no run yet: every contact unknown
    write_run(paths, "w1", T0, {"A": "Nurture", "B": "Exit"})
    write_run(paths, "w2", T0 + WEEK, {"A": "Purchase", "C": "Retention"})
    assert previous_run(paths, T0) is None
    assert previous_run(paths, T0 + WEEK).run_id == "w1"  # rescoring w2 compares with w1
    got = previous_stages(paths, T0 + 2 * WEEK)
    assert got.run.run_id == "w2"
    codes, runs = got.lookup(["C", "A", "B"])
    assert codes.tolist() == [R, P, UNKNOWN] and runs.tolist() == [1, 1, 0]


@pytest.mark.slow
def test_batch_and_online_apply_the_rule_alike(pipeline):
    """Online prediction and batch scoring of the same snapshot give the same stages."""
    from engage.config import Paths, load_params
    from features.catalog import ENTITY_KEY
    from features.snapshots import list_snapshots
    from serving.champions import load_champions
    from serving.online import OnlinePredictor
    from serving.runs import read_run
    from serving.scoring import score
    from tests.conftest import SMALL

    # A wide margin and a dwell rule, in a scores folder of its own.
    params = load_params(
        overrides=(
            *SMALL,
            "scoring.dir=scores-stability",
            "index.hysteresis=0.1",
            "index.min_dwell_runs=2",
        )
    )
    paths = Paths(pipeline.paths.root, pipeline.paths.data_dir, pipeline.paths.mlruns_dir, params)
    champions = load_champions(paths, params)
    snaps = list_snapshots(paths.features_dir)
    first = score(paths, params, as_of=snaps[-3].as_of, champions=champions)
    assert first.previous_run is None
    middle = score(paths, params, as_of=snaps[-2].as_of, champions=champions)
    assert middle.previous_run == first.run_id
    predictor = OnlinePredictor(paths, params, champions)
    assert predictor.previous().run.run_id == middle.run_id
    last = score(paths, params, champions=champions)
    assert last.previous_run == middle.run_id
    _, batch = read_run(paths, last.run_id)
    batch = batch.set_index(ENTITY_KEY)
    plain, _, _ = index_arrays(
        batch["has_purchased"], batch["p_purchase"], batch["p_churn"], params.index
    )
    held = batch.index[np.asarray(STAGES)[plain] != batch["stage"].to_numpy()]
    assert len(held) > 0  # the rule changed some stages, so the comparison means something
    ids = [*held[:30], *batch.index[:30]]
    online = predictor.predict_ids(ids)
    assert online.stage == batch.loc[ids, "stage"].tolist()
    np.testing.assert_allclose(online.dial_position, batch.loc[ids, "dial_position"], atol=1e-12)
    # The run remembers how long each contact has been in its stage.
    _, before = read_run(paths, middle.run_id)
    both = batch.join(before.set_index(ENTITY_KEY)[["stage", "stage_runs"]], rsuffix="_before")
    kept = both["stage"] == both["stage_before"]
    assert (both.loc[kept, "stage_runs"] == both.loc[kept, "stage_runs_before"] + 1).all()
    assert (both.loc[~kept & both["stage_before"].notna(), "stage_runs"] == 1).all()
    assert pd.api.types.is_integer_dtype(batch["stage_runs"])
