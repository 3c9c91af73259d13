"""BG/NBD: closed forms by hand and against lifetimes, the fit against lifetimes' fit."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from training.btyd import fit_bgnbd, fit_on_snapshot, log_likelihood
from training.model import BGNBD, btyd_summary


@pytest.fixture(scope="module")
def cdnow_summary() -> pd.DataFrame:
    from lifetimes.datasets import load_cdnow_summary

    return load_cdnow_summary()  # frequency, recency, T in weeks, 2,357 customers


@pytest.fixture(scope="module")
def lifetimes_fit(cdnow_summary):
    from lifetimes import BetaGeoFitter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BetaGeoFitter().fit(
            cdnow_summary["frequency"], cdnow_summary["recency"], cdnow_summary["T"]
        )


def test_closed_forms_by_hand():
    m = BGNBD(r=1.0, alpha=10.0, a=1.0, b=3.0, horizon_days=10.0)
    # x = 2 purchases, the last at 20, observed for 30:
    # P(alive) = 1 / (1 + a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x))
    #          = 1 / (1 + 1/4 * (40 / 30) ** 3) = 0.627907
    alive = 1 / (1 + 0.25 * (40 / 30) ** 3)
    assert m.p_alive(np.array([2.0]), np.array([20.0]), np.array([30.0]))[0] == pytest.approx(
        alive, rel=1e-12
    )
    # P(no purchase in 10 days | alive) = (40 / 50) ** 3 = 0.512
    p = m.prob_any(np.array([2.0]), np.array([20.0]), np.array([30.0]))[0]
    assert p == pytest.approx(alive * (1 - 0.512), rel=1e-12)
    # Nobody dies before buying: x = 0 is alive for sure, P(>= 1) = 1 - (40 / 50) ** r.
    assert m.p_alive(np.array([0.0]), np.array([0.0]), np.array([30.0]))[0] == 1.0
    assert m.prob_any(np.array([0.0]), np.array([0.0]), np.array([30.0]))[0] == pytest.approx(
        1 - 40 / 50
    )


def test_closed_forms_equal_lifetimes(lifetimes_fit, cdnow_summary):
    params = {k: float(v) for k, v in lifetimes_fit.params_.items()}
    m = BGNBD(**params, horizon_days=13.0)
    x, tx, big_t = (cdnow_summary[c].to_numpy(float) for c in ("frequency", "recency", "T"))
    np.testing.assert_allclose(
        m.p_alive(x, tx, big_t),
        lifetimes_fit.conditional_probability_alive(x, tx, big_t),
        rtol=1e-10,
        atol=1e-12,
    )
    np.testing.assert_allclose(
        m.expected(x, tx, big_t),
        lifetimes_fit.conditional_expected_number_of_purchases_up_to_time(13.0, x, tx, big_t),
        rtol=1e-8,
        atol=1e-12,
    )
    # The per-customer likelihood is the one lifetimes maximises.
    ll = log_likelihood(params["r"], params["alpha"], params["a"], params["b"], x, tx, big_t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = lifetimes_fit._negative_log_likelihood(
            np.log([params["r"], params["alpha"], params["a"], params["b"]]),
            x,
            tx,
            big_t,
            np.ones_like(x),
            0.0,
        )
    assert -ll.mean() == pytest.approx(float(theirs), rel=1e-10)


def test_fit_finds_lifetimes_parameters(lifetimes_fit, cdnow_summary):
    x, tx, big_t = (cdnow_summary[c].to_numpy(float) for c in ("frequency", "recency", "T"))
    m = fit_bgnbd(x, tx, big_t, horizon_days=13.0)
    for key, want in lifetimes_fit.params_.items():
        assert getattr(m, key) == pytest.approx(float(want), rel=1e-4), key
    assert m.horizon_days == 13.0


def test_fit_refuses_impossible_histories():
    with pytest.raises(ValueError, match="1 contacts with x < 0, t_x < 0, t_x > T"):
        fit_bgnbd(np.array([1.0, 2.0]), np.array([5.0, 40.0]), np.array([10.0, 30.0]), 30)
    with pytest.raises(ValueError, match="non-empty"):
        fit_bgnbd(np.array([]), np.array([]), np.array([]), 30)
    with pytest.raises(ValueError, match="missing snapshot feature"):
        fit_on_snapshot(pd.DataFrame({"purchases_total": [1]}), 30)


def test_summary_from_snapshot_features():
    # A prospect (no purchase) seen 40 days, a customer with 3 purchases, the last 5 days
    # ago, first seen 100 days ago; missing values read as nothing bought / no tenure.
    x, tx, big_t = btyd_summary(
        np.array([0.0, 3.0, np.nan]), np.array([np.nan, 5.0, np.nan]), np.array([40.0, 100.0, 7.0])
    )
    assert x.tolist() == [0.0, 3.0, 0.0]
    assert tx.tolist() == [0.0, 95.0, 0.0]
    assert big_t.tolist() == [40.0, 100.0, 7.0]


def test_a_population_that_never_drops_out_still_fits():
    # Poisson buyers who never stop: the likelihood peaks at the boundary a -> 0 (a drop-out
    # probability of 0), where it overflows unless the search is kept off it.
    rng = np.random.default_rng(3)
    n = 5000
    big_t = rng.uniform(30, 365, n)
    rate = rng.gamma(2.0, 1 / 60.0, n)
    x = rng.poisson(rate * big_t).astype(float)
    t_x = np.where(x > 0, big_t * rng.beta(np.maximum(x, 1), 1), 0.0)  # the last of x uniforms
    m = fit_bgnbd(x, t_x, big_t, horizon_days=30)
    assert m.a / (m.a + m.b) < 0.01  # barely anybody drops out
    assert m.r / m.alpha == pytest.approx(rate.mean(), rel=0.15)  # the mean purchase rate
    alive = m.p_alive(x, t_x, big_t)
    assert np.isfinite(alive).all() and alive.min() > 0.5
