"""Timing columns of the hazard champions (serving/timing.py): one code path, hand-checked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engage.config import load_params
from features.catalog import ENTITY_KEY, TIMESTAMP
from serving import timing as tm
from training import hazard as hz

T0 = pd.Timestamp("2025-03-01", tz="UTC")
D = pd.Timedelta(days=1)
PARAMS = load_params(
    overrides=(
        "hazard.period_days=7",
        "hazard.h_max_periods=6",
        "hazard.horizons_days=[7,30]",
        "labels.churn_active_within_days=30",
        "training.lightgbm.n_estimators=30",
        "training.lightgbm.num_threads=1",
        "training.lightgbm.min_child_samples=20",
    )
)
LAPSE = [
    "days_since_last_purchase",
    "days_since_last_email_open",
    "days_since_last_email_click",
    "days_since_last_web_visit",
    "days_since_last_cart_add",
]


# ------------------------------------------------------------------- hand-computed


def test_survival_at_own_days_matches_the_product_rule():
    h = np.array([[0.5, 0.5, 0.5], [0.1, 0.2, 0.3]])
    # Row 0 at 7 days: 1 - 0.5; row 1 at 14 days: 0.9 x 0.8.
    got = tm.survival_at_days(h, np.array([7.0, 14.0]), 7)
    np.testing.assert_allclose(got, [0.5, 0.72])
    # Half a period: constant hazard inside it, S(3.5) = (1 - 0.5) ** 0.5; 0 days: 1.
    got = tm.survival_at_days(h, np.array([3.5, 0.0]), 7)
    np.testing.assert_allclose(got, [0.5**0.5, 1.0])
    # The same curve as training.hazard.survival_at for a common horizon.
    for t in (1.0, 7.0, 10.5, 21.0):
        np.testing.assert_allclose(
            tm.survival_at_days(h, np.array([t, t]), 7), hz.survival_at(h, t, 7)
        )
    assert np.isnan(tm.survival_at_days(h, np.array([np.nan, 7.0]), 7)[0])
    with pytest.raises(ValueError, match=r"days: 1 row\(s\) outside \[0, 21\]"):
        tm.survival_at_days(h, np.array([22.0, 7.0]), 7)


def test_days_to_churn_is_the_lapse_date_when_quiet_is_likelier():
    # Weekly hazards of the next activity; window L = 30 days.
    h = np.array(
        [
            [0.05, 0.05, 0.05, 0.05, 0.05],  # quiet likely: S(20) = 0.95^(20/7) = 0.864
            [0.40, 0.40, 0.40, 0.40, 0.40],  # active likely: S(20) = 0.6^(20/7) = 0.232
            [0.05, 0.05, 0.05, 0.05, 0.05],  # lapsed already (35 days quiet)
            [0.05, 0.05, 0.05, 0.05, 0.05],  # never active: lapsed
            [0.05, 0.05, 0.05, 0.05, 0.05],  # active today: 30 days left, S(30) = 0.80
        ]
    )
    recency = np.array([10.0, 10.0, 35.0, np.nan, 0.0])
    got = tm.days_to_churn(h, recency, 30, 7)
    np.testing.assert_allclose(got, [20.0, np.nan, 0.0, 0.0, 30.0])
    # Wherever it is set (and not lapsed) the curve is at least 1/2 there: a median.
    s = tm.survival_at_days(h, np.where(np.isnan(got), np.nan, got), 7)
    assert (s[[0, 4]] >= 0.5).all()
    # A window longer than H_max (35 days here): unknown, not a guess.
    assert np.isnan(tm.days_to_churn(h[:1], np.array([0.0]), 40, 7))[0]


def test_check_horizons_names_the_field_and_the_rule():
    assert tm.check_horizons([7, 30], 42) == (7, 30)
    with pytest.raises(
        tm.HorizonError, match=r"horizons_days: each must be in 1\.\.42 days .* 2 value"
    ):
        tm.check_horizons([7, 43, 0], 42)
    with pytest.raises(tm.HorizonError, match=r"horizons_days: each horizon once; repeated: \[7\]"):
        tm.check_horizons([7, 7], 42)
    with pytest.raises(tm.HorizonError, match=r"horizons_days: at least one horizon"):
        tm.check_horizons([], 42)
    with pytest.raises(tm.HorizonError, match=r"horizons_days: whole numbers of days only \(1"):
        tm.check_horizons([7, 2.5], 42)


# -------------------------------------------------------------- fitted models


def _fit(name: str, target: str, seed: int) -> hz.HazardModel:
    """A hazard model of ``name`` on ``x``: weekly hazard 0.05 + 0.4 x of ``target``."""
    hp, tp = PARAMS.hazard, PARAMS.training
    end = T0 + 60 * D
    parts = []
    for s, n in ((seed, 600), (seed + 1, 300)):
        rng = np.random.default_rng(s)
        x = rng.uniform(0, 1, n)
        ids = [f"s{s}_{i}" for i in range(n)]
        r = pd.DataFrame({ENTITY_KEY: ids, TIMESTAMP: T0, "x": x})
        ev = [
            (cid, target, T0 + (7 * w + int(rng.integers(0, 7))) * D)
            for cid, xi in zip(ids, x, strict=True)
            for w in range(6)
            if rng.uniform() < 0.05 + 0.4 * xi
        ]
        ev = pd.DataFrame(ev, columns=["customer_id", "event_type", "event_time"])
        first = hz.first_event_times(r, ev, [target])
        counts = hz.count_frame(r, ev, end, hp, target) if name == "appetence" else None
        parts.append((hz.person_period(r, first, end, hp), counts))
    (pp_tr, cf_tr), (pp_va, cf_va) = parts
    return hz.fit_hazard_model(name, ["x"], pp_tr, pp_va, hp, tp, cf_tr, cf_va)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    # One model is read back from storage: what the registry loader will hand over.
    folder = tmp_path_factory.mktemp("hazard") / "appetence"
    appetence = hz.read_hazard_model(
        hz.write_hazard_model(_fit("appetence", "purchase", 0), folder)
    )
    return {"appetence": appetence, "churn": _fit("churn", "email_open", 10)}


def contacts() -> pd.DataFrame:
    """Four prospects and four customers with known recencies."""
    x = np.linspace(0, 1, 8)
    frame = pd.DataFrame({"x": x, "has_purchased": [0, 0, 0, 0, 1, 1, 1, 1]})
    for f in LAPSE:
        frame[f] = np.nan
    frame.loc[4:, "days_since_last_email_open"] = [2.0, 12.0, 40.0, 29.0]
    return frame


def test_timing_columns_name_horizons_and_agree_with_the_hazard_algebra(models):
    timing = tm.Timing.of(models, PARAMS, {"appetence": "3", "churn": "5"})
    frame = contacts()
    out = tm.timing_columns(frame, timing)
    assert list(out.columns) == [
        "p_churn_7d",
        "p_churn_30d",
        "days_to_activity",
        "days_to_churn",
        "p_purchase_7d",
        "p_purchase_30d",
        "expected_purchases_7d",
        "expected_purchases_30d",
        "days_to_purchase",
    ]
    probs = out.filter(like="p_").to_numpy()
    assert np.nanmin(probs) >= 0 and np.nanmax(probs) <= 1
    # Purchase within h grows with h; quiet throughout h shrinks with h (customers only).
    assert (out["p_purchase_7d"] <= out["p_purchase_30d"] + 1e-12).all()
    cust = frame["has_purchased"] == 1
    assert (out.loc[cust, "p_churn_30d"] <= out.loc[cust, "p_churn_7d"] + 1e-12).all()
    assert out.loc[~cust, ["p_churn_7d", "days_to_churn"]].isna().all().all()
    # The same numbers as the hazard model's own columns.
    ref = hz.horizon_columns(models["appetence"], frame, [7, 30])
    np.testing.assert_allclose(out["p_purchase_30d"], ref["p_purchase_30d"])
    np.testing.assert_allclose(out["expected_purchases_7d"], ref["expected_purchases_7d"])
    H = models["churn"].hazards(frame[cust])
    np.testing.assert_allclose(out.loc[cust, "p_churn_30d"], hz.survival_at(H, 30, 7))
    # days_to_churn: 30 - recency where quiet to the lapse date is likelier, 0 if lapsed.
    d0 = 30 - np.array([2.0, 12.0, 40.0, 29.0])
    s = tm.survival_at_days(H, np.where(d0 >= 0, d0, np.nan), 7)
    expected = np.where(d0 < 0, 0.0, np.where(s >= 0.5, d0, np.nan))
    np.testing.assert_allclose(out.loc[cust, "days_to_churn"], expected)
    # Other horizons on demand; beyond H_max (42 days) is refused by name.
    assert "p_purchase_14d" in tm.timing_columns(frame, timing, [14]).columns
    with pytest.raises(tm.HorizonError, match=r"horizons_days: each must be in 1\.\.42"):
        tm.timing_columns(frame, timing, [7, 90])
    with pytest.raises(ValueError, match=r"timing: missing feature column\(s\) \['x'\] \(8 rows\)"):
        tm.timing_columns(frame.drop(columns="x"), timing)


def test_a_missing_model_leaves_its_columns_out_and_says_so(models):
    timing = tm.Timing.of({"appetence": models["appetence"]}, PARAMS)
    assert timing.missing == ("churn",)
    out = tm.timing_columns(contacts(), timing)
    assert not [c for c in out.columns if "churn" in c or "activity" in c]
    assert timing.describe()["missing"] == ["churn"]
    none = tm.Timing.of({}, PARAMS)
    assert none.missing == ("churn", "appetence") and none.columns() == []
    assert none.h_max_days == 42 and tm.timing_columns(contacts(), none).shape == (8, 0)


def test_identity_follows_content_not_only_versions(models, tmp_path):
    a = tm.Timing.of(models, PARAMS, {"appetence": "3", "churn": "5"})
    b = tm.Timing.of(models, PARAMS, {"appetence": "3", "churn": "5"})
    assert a.identity == b.identity
    other = tm.Timing.of(
        {**models, "churn": _fit("churn", "email_open", 20)},
        PARAMS,
        {"appetence": "3", "churn": "5"},
    )
    assert other.identity["churn"] != a.identity["churn"]
    assert other.identity["appetence"] == a.identity["appetence"]
    assert a.identity["churn"].startswith("v5 7dx6 ")
    with pytest.raises(TypeError):
        a.models["x"] = None  # read-only
