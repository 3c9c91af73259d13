"""Discrete-time hazard models (training/hazard.py): frames, censoring, curve algebra."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from engage.config import ConfigError, load_params
from features.catalog import ENTITY_KEY, TIMESTAMP
from training import hazard as hz
from training.model import BGNBD, btyd_summary

T0 = pd.Timestamp("2025-03-01", tz="UTC")
D = pd.Timedelta(days=1)
PARAMS = load_params(
    overrides=(
        "hazard.period_days=7",
        "hazard.h_max_periods=4",
        "hazard.horizons_days=[7,28]",
        "hazard.primary_metric=roc_auc_28d",
    )
)
HP = PARAMS.hazard  # 4 weekly periods: 28 days


def rows(*spec):
    """(customer, as_of) pairs -> training rows with one feature."""
    return pd.DataFrame(
        {
            ENTITY_KEY: [c for c, _ in spec],
            TIMESTAMP: [a for _, a in spec],
            "x": np.arange(len(spec), dtype=float),
        }
    )


def events(*spec):
    """(customer, type, time) triples -> events."""
    return pd.DataFrame(spec, columns=["customer_id", "event_type", "event_time"])


# ------------------------------------------------------------------------- frames


def test_person_period_labels_the_event_period_and_drops_the_rest():
    r = rows(("a", T0), ("b", T0), ("c", T0))
    first = pd.Series([T0 + 9 * D, pd.NaT, T0])  # a: period 2; b: none; c: at as_of
    pp = hz.person_period(r, first, T0 + 100 * D, HP)
    got = {c: g[[hz.PERIOD, hz.LABEL]].values.tolist() for c, g in pp.groupby(ENTITY_KEY)}
    assert got["a"] == [[1, 0], [2, 1]]  # nothing after the event
    assert got["b"] == [[1, 0], [2, 0], [3, 0], [4, 0]]
    assert got["c"] == [[1, 1]]  # an event at the as-of time is in period 1


def test_censored_periods_have_no_row_not_a_negative():
    r = rows(("a", T0), ("b", T0))
    end = T0 + 17 * D  # periods 1, 2 observed; period 3 [14, 21) is cut by the end
    first = pd.Series([pd.NaT, T0 + 15 * D])  # b buys inside the cut period
    pp = hz.person_period(r, first, end, HP)
    assert pp[pp[ENTITY_KEY] == "a"][hz.PERIOD].tolist() == [1, 2]
    # The cut period is censored even though it holds b's event: keeping only cut
    # periods with an event would bias the hazard up.
    assert pp[pp[ENTITY_KEY] == "b"][[hz.PERIOD, hz.LABEL]].values.tolist() == [[1, 0], [2, 0]]


def test_censoring_canary_no_negative_label_contradicts_the_future():
    # Contacts whose data ends mid-horizon buy after the end: with the data cut at the
    # end, no period of theirs may be a negative that the uncut data makes a positive.
    rng = np.random.default_rng(0)
    n = 300
    ids = [f"c{i}" for i in range(n)]
    as_of = [T0 + int(d) * D for d in rng.integers(0, 40, n)]
    buy = [a + int(d) * D for a, d in zip(as_of, rng.integers(0, 60, n), strict=True)]
    r = rows(*zip(ids, as_of, strict=True))
    full = events(*((c, "purchase", t) for c, t in zip(ids, buy, strict=True)))
    end = T0 + 45 * D
    cut = full[full["event_time"] < end]
    pp = hz.person_period(r, hz.first_event_times(r, cut, ["purchase"]), end, HP)
    truth = hz.person_period(r, hz.first_event_times(r, full, ["purchase"]), T0 + 999 * D, HP)
    both = pp.merge(truth, on=[ENTITY_KEY, TIMESTAMP, hz.PERIOD], suffixes=("", "_true"))
    assert len(both) == len(pp)  # every observed row exists with the whole future known
    assert (both[hz.LABEL] == both[f"{hz.LABEL}_true"]).all()
    # and there were contacts cut mid-horizon whose purchase came after the end
    late = pp.groupby(ENTITY_KEY)[hz.PERIOD].max() < HP.h_max_periods
    assert late.sum() > 20
    assert ((pp[TIMESTAMP] + pp[hz.PERIOD].astype(int) * 7 * D) <= end).all()


def test_first_event_times_takes_the_first_target_at_or_after_as_of():
    r = rows(("a", T0), ("a", T0 + 10 * D), ("b", T0))
    ev = events(
        ("a", "purchase", T0 - D),  # before the as-of time: a feature, not a label
        ("a", "web_visit", T0 + D),  # not a target type
        ("a", "purchase", T0 + 3 * D),
        ("a", "purchase", T0 + 10 * D),  # exactly at the second as-of time
        ("b", "email_open", T0 + 2 * D),
    )
    got = hz.first_event_times(r, ev, ["purchase"])
    assert got.tolist()[:2] == [T0 + 3 * D, T0 + 10 * D]
    assert pd.isna(got.iloc[2])
    churn_types = hz.target_event_types(PARAMS, "churn")
    assert hz.first_event_times(r, ev, churn_types).iloc[2] == T0 + 2 * D
    assert hz.target_event_types(PARAMS, "appetence") == ["purchase"]


def test_count_frame_counts_purchase_days_and_keeps_repeat_periods():
    r = rows(("a", T0))
    ev = events(
        ("a", "purchase", T0 + pd.Timedelta(hours=1)),
        ("a", "purchase", T0 + pd.Timedelta(hours=5)),  # same day: one purchase day
        ("a", "purchase", T0 + 8 * D),
        ("a", "purchase", T0 + 9 * D),
        ("a", "web_visit", T0 + 2 * D),
        ("a", "purchase", T0 + 15 * D),  # in the censored third period
    )
    cf = hz.count_frame(r, ev, T0 + 20 * D, HP, "purchase")
    assert cf[[hz.PERIOD, hz.LABEL]].values.tolist() == [[1, 1], [2, 2]]
    # An as-of time inside a day: the purchase before it is a feature, the one after a label.
    noon = rows(("a", T0 + pd.Timedelta(hours=3)))
    cf = hz.count_frame(noon, ev, T0 + 20 * D, HP, "purchase")
    assert cf[[hz.PERIOD, hz.LABEL]].values.tolist() == [[1, 1], [2, 2]]
    late = rows(("a", T0 + pd.Timedelta(hours=6)))
    assert hz.count_frame(late, ev, T0 + 20 * D, HP, "purchase")[hz.LABEL].tolist() == [0, 2]


def test_frames_reject_bad_inputs():
    r = rows(("a", T0), ("b", T0))
    with pytest.raises(ValueError, match=r"first_event: 1 rows have their first event before"):
        hz.person_period(r, pd.Series([T0 - D, pd.NaT]), T0 + 99 * D, HP)
    with pytest.raises(ValueError, match=r"first_event: 1 values for 2 rows"):
        hz.person_period(r, pd.Series([pd.NaT]), T0 + 99 * D, HP)
    with pytest.raises(ValueError, match=r"rows: missing columns \['event_timestamp'\] \(2 rows\)"):
        hz.first_event_times(r.drop(columns=[TIMESTAMP]), events(), ["purchase"])


def test_hazard_params_are_checked_at_load():
    with pytest.raises(ConfigError, match=r"hazard\.horizons_days: \[100\] exceed .* = 91 days"):
        load_params(overrides=("hazard.horizons_days=[30,100]",))
    with pytest.raises(ConfigError, match=r"hazard\.period_days: Input should be greater than 0"):
        load_params(overrides=("hazard.period_days=0",))


# ------------------------------------------------------------------ curve algebra

H = np.array([[0.1, 0.2, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.3, 0.3, 0.3]])


def test_product_rule_on_hand_computed_hazards():
    s = hz.survival(H)
    np.testing.assert_allclose(s[0], [0.9, 0.72, 0.36, 0.36])
    np.testing.assert_allclose(hz.prob_within(H, 7, 7), [0.1, 0.0, 1.0])
    np.testing.assert_allclose(hz.prob_within(H, 14, 7), [0.28, 0.0, 1.0])
    np.testing.assert_allclose(hz.prob_within(H, 21, 7)[0], 1 - 0.9 * 0.8 * 0.5)
    # Between whole periods the hazard is constant: S(1.5 periods) = 0.9 * 0.8 ** 0.5.
    np.testing.assert_allclose(hz.prob_within(H, 10.5, 7)[0], 1 - 0.9 * 0.8**0.5)


def test_survival_and_horizon_probabilities_are_monotone():
    rng = np.random.default_rng(1)
    h = rng.uniform(0, 0.6, size=(200, 13))
    s = hz.survival(h)
    assert (np.diff(s, axis=1) <= 1e-15).all()
    grid = np.linspace(0.5, 91, 60)
    p = np.stack([hz.prob_within(h, t, 7) for t in grid], axis=1)
    assert (np.diff(p, axis=1) >= -1e-15).all()
    assert ((p >= 0) & (p <= 1)).all()


def test_median_days_is_where_the_curve_crosses_one_half():
    med = hz.median_days(H, 7)
    f = np.log(0.5 / 0.72) / np.log(0.5)  # inside period 3: 0.72 * 0.5 ** f = 0.5
    np.testing.assert_allclose(med[0], (2 + f) * 7)
    assert np.isnan(med[1])  # S stays 1: "not within H_max"
    assert med[2] == 0.0  # certain event in period 1 starts at once
    rng = np.random.default_rng(2)
    h = rng.uniform(0, 0.12, size=(500, 13))
    med = hz.median_days(h, 7)
    ok = ~np.isnan(med)
    assert ok.sum() > 100 and (~ok).sum() > 10
    for i in np.nonzero(ok)[0][:50]:
        np.testing.assert_allclose(hz.survival_at(h[i : i + 1], med[i], 7), 0.5, atol=1e-9)
    np.testing.assert_array_less(0.5, hz.survival_at(h[~ok], 91, 7))


def test_expected_count_sums_the_period_rates():
    mu = np.array([[0.5, 0.25, 1.0, 2.0]])
    np.testing.assert_allclose(hz.expected_count(mu, 14, 7), [0.75])
    np.testing.assert_allclose(hz.expected_count(mu, 17.5, 7), [0.75 + 0.5])
    np.testing.assert_allclose(hz.expected_count(mu, 28, 7), [3.75])


def test_curve_functions_reject_bad_values():
    with pytest.raises(ValueError, match=r"hazards: 2 values outside \[0, 1\] or NaN"):
        hz.survival(np.array([[0.1, -0.1, np.nan]]))
    with pytest.raises(ValueError, match=r"horizon_days=35: must be in \(0, .* = 28\] days"):
        hz.prob_within(H, 35, 7)
    with pytest.raises(ValueError, match=r"horizon_days=0: must be in"):
        hz.prob_within(H, 0, 7)
    with pytest.raises(ValueError, match=r"rates: 1 values negative or NaN"):
        hz.expected_count(np.array([[0.1, -1.0]]), 7, 7)


# -------------------------------------------------------------------------- fitting


def _synthetic(n: int, seed: int) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """Contacts with a weekly purchase hazard 0.05 + 0.4 x (x uniform in [0, 1])."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, n)
    ids = [f"s{seed}_{i}" for i in range(n)]
    r = pd.DataFrame({ENTITY_KEY: ids, TIMESTAMP: T0, "x": x})
    buys = []
    for cid, xi in zip(ids, x, strict=True):
        for week in range(4):
            if rng.uniform() < 0.05 + 0.4 * xi:
                buys.append((cid, "purchase", T0 + (7 * week + int(rng.integers(0, 7))) * D))
    ev = events(*buys)
    return r, hz.first_event_times(r, ev, ["purchase"]), ev


@pytest.fixture(scope="module")
def fitted():
    tp = load_params(
        overrides=(
            "training.lightgbm.n_estimators=60",
            "training.lightgbm.num_threads=1",
            "training.lightgbm.min_child_samples=20",
        )
    ).training
    end = T0 + 60 * D
    parts = []
    for seed, n in ((0, 1500), (1, 500)):
        r, first, ev = _synthetic(n, seed)
        parts.append(
            (r, hz.person_period(r, first, end, HP), hz.count_frame(r, ev, end, HP, "purchase"))
        )
    (r_tr, pp_tr, cf_tr), (r_va, pp_va, cf_va) = parts
    model = hz.fit_hazard_model("appetence", ["x"], pp_tr, pp_va, HP, tp, cf_tr, cf_va)
    return model, r_va, pp_va, cf_va, pp_tr, tp


def test_fitted_hazard_model_recovers_the_hazard_and_the_counts(fitted):
    model, r_va, pp_va, cf_va, pp_tr, tp = fitted
    h = model.hazards(r_va)
    assert h.shape == (500, 4)
    true = 0.05 + 0.4 * r_va["x"].to_numpy()
    assert np.corrcoef(h[:, 0], true)[0, 1] > 0.9
    assert abs(h.mean() - true.mean()) < 0.05
    p = model.event_probabilities(r_va, [7, 14, 28])
    assert (p[7] <= p[14] + 1e-12).all() and (p[14] <= p[28] + 1e-12).all()
    n28 = hz.expected_count(model.rates(r_va), 28, 7)
    observed = cf_va.groupby(ENTITY_KEY)[hz.LABEL].sum().reindex(r_va[ENTITY_KEY]).to_numpy()
    assert abs(n28.sum() / observed.sum() - 1) < 0.15
    with pytest.raises(ValueError, match=r"train person-period rows: a single class in 3 rows"):
        hz.fit_hazard_booster(pp_tr.assign(label=0).head(3), pp_va, ["x"], tp)


def test_horizon_columns_name_their_horizon_and_survive_storage(fitted, tmp_path):
    model, r_va, *_ = fitted
    cols = hz.horizon_columns(model, r_va)
    assert list(cols.columns) == [
        "p_purchase_7d",
        "p_purchase_28d",
        "days_to_purchase",
        "expected_purchases_7d",
        "expected_purchases_28d",
    ]
    assert (cols["p_purchase_7d"] <= cols["p_purchase_28d"]).all()
    H = model.hazards(r_va)
    np.testing.assert_allclose(cols["p_purchase_28d"], 1 - hz.survival(H)[:, -1])
    med = cols["days_to_purchase"].to_numpy()
    for i in np.nonzero(~np.isnan(med))[0][:20]:  # the curve crosses 1/2 at the median
        np.testing.assert_allclose(hz.survival_at(H[i : i + 1], med[i], 7), 0.5)
    assert np.isnan(med).any() and (~np.isnan(med)).any()
    folder = hz.write_hazard_model(model, tmp_path / "m")
    doc = json.loads((folder / "model.json").read_text())
    assert doc["horizons_days"] == [7, 28] and doc["h_max_days"] == 28
    back = hz.read_hazard_model(folder)
    pd.testing.assert_frame_equal(hz.horizon_columns(back, r_va), cols)
    doc["horizons_days"] = [7, 35]
    (folder / "model.json").write_text(json.dumps(doc))
    with pytest.raises(hz.ModelFormatError, match=r"horizons_days must be .* in 1\.\.28"):
        hz.read_hazard_model(folder)
    (folder / "model.json").write_text('{"format": "engage-model/1"}')
    with pytest.raises(hz.ModelFormatError, match="format must be 'engage-hazard/1'"):
        hz.read_hazard_model(folder)


def test_btyd_inputs_split_bgnbd_expectation_by_period(fitted, tmp_path):
    bg = BGNBD(r=0.25, alpha=4.0, a=0.8, b=2.5, horizon_days=28.0)
    model, r_va, pp_va, cf_va, pp_tr, tp = fitted
    rng = np.random.default_rng(4)

    def with_history(frame):
        n = len(frame)
        return frame.assign(
            purchases_total=rng.integers(0, 5, n).astype(float),
            days_since_last_purchase=rng.uniform(0, 50, n),
            tenure_days=rng.uniform(50, 200, n),
        )

    two = with_history(rows(("a", T0), ("b", T0)))
    history = ["purchases_total", "days_since_last_purchase", "tenure_days"]
    got = hz.add_btyd_inputs(hz.expand_periods(two, history, 4), bg, 7)
    per = got[hz.BTYD_PERIOD].to_numpy().reshape(2, 4)
    x, t_x, big_t = btyd_summary(*(two[c].to_numpy(float) for c in history))
    np.testing.assert_allclose(per.sum(axis=1), bg.expected(x, t_x, big_t), rtol=1e-5)
    assert (per >= 0).all()
    np.testing.assert_allclose(got[hz.BTYD_ALIVE].to_numpy()[::4], bg.p_alive(x, t_x, big_t))

    feats = ["x", *history]
    m = hz.fit_hazard_model(
        "appetence", feats, with_history(pp_tr), with_history(pp_va), HP, tp, btyd=bg
    )
    assert m.input_names[-3:] == [hz.PERIOD, hz.BTYD_PERIOD, hz.BTYD_ALIVE]
    scored = with_history(r_va)
    cols = hz.horizon_columns(m, scored)
    back = hz.read_hazard_model(hz.write_hazard_model(m, tmp_path / "b"))
    assert back.btyd == bg
    pd.testing.assert_frame_equal(hz.horizon_columns(back, scored), cols)
    # The gate's metric names one of the horizons, and only a ranking metric.
    with pytest.raises(ConfigError, match=r"hazard\.primary_metric: 'roc_auc_30d' is at 30 days, "):
        load_params(overrides=("hazard.horizons_days=[7,90]",))
    with pytest.raises(ConfigError, match=r"hazard\.primary_metric: String should match pattern"):
        load_params(overrides=("hazard.primary_metric=brier_30d",))
    assert load_params(overrides=("hazard.primary_metric=pr_auc_7d",)).hazard.primary == (
        "pr_auc",
        7,
    )
