"""Fitting BG/NBD (Fader, Hardie & Lee 2005) on the contacts' histories, in closed form.

The model: while alive, a contact buys at a Poisson rate ``lambda ~ Gamma(r, alpha)``;
after each purchase it drops out with probability ``p ~ Beta(a, b)``. The likelihood of
``x`` purchases, the last at age ``t_x``, over an observation of ``T`` days is

    L = B(a, b + x) / B(a, b) * Gamma(r + x) alpha^r / (Gamma(r) (alpha + T)^(r + x))
        + [x > 0] B(a + 1, b + x - 1) / B(a, b) * Gamma(r + x) alpha^r
          / (Gamma(r) (alpha + t_x)^(r + x))

:func:`fit_bgnbd` maximises its sum of logs over the four parameters (in logs, so they
stay positive) with scipy; time is rescaled for the optimiser as ``lifetimes`` does. The
closed forms that score a contact (P(alive), P(at least one purchase within the horizon),
expected purchases) live in :class:`training.model.BGNBD`, shipped with every model.
The tests check both against ``lifetimes``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import betaln, gammaln, logsumexp

from training.model import BGNBD, BTYD_FEATURES, btyd_summary

MAX_FIT_ROWS = 50_000  # contacts sampled for the fit: four parameters need no more


def log_likelihood(
    r: float, alpha: float, a: float, b: float, x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray
) -> np.ndarray:
    """BG/NBD log-likelihood of each contact (see the module docstring)."""
    x, t_x, big_t = (np.asarray(v, dtype="float64") for v in (x, t_x, big_t))
    common = gammaln(r + x) - gammaln(r) + r * np.log(alpha) - betaln(a, b)
    alive = betaln(a, b + x) - (r + x) * np.log(alpha + big_t)
    bought = x > 0
    dead = np.where(
        bought,
        betaln(a + 1.0, np.where(bought, b + x - 1.0, 1.0)) - (r + x) * np.log(alpha + t_x),
        -np.inf,
    )
    return common + logsumexp(np.stack([alive, dead]), axis=0)


def fit_bgnbd(
    x: np.ndarray,
    t_x: np.ndarray,
    big_t: np.ndarray,
    horizon_days: float,
    penalizer: float = 0.0,
) -> BGNBD:
    """Maximum-likelihood BG/NBD parameters of a set of contacts (time in days).

    Args:
        x: purchases of each contact (repeat purchases in the classic setting).
        t_x: age at the last purchase (0 without one).
        big_t: age at the end of the observation.
        horizon_days: the horizon the fitted model will be read over (stored with it).
        penalizer: L2 penalty on the parameters (as ``lifetimes``' ``penalizer_coef``).

    Raises:
        ValueError: no contact, inconsistent arrays, or the optimiser did not converge.

    """
    x, t_x, big_t = (np.asarray(v, dtype="float64") for v in (x, t_x, big_t))
    if not len(x) or not (len(x) == len(t_x) == len(big_t)):
        raise ValueError("fit_bgnbd: x, t_x and T must be non-empty and of equal length")
    bad = ~np.isfinite(x) | ~np.isfinite(t_x) | ~np.isfinite(big_t) | (x < 0) | (t_x < 0)
    bad |= t_x > big_t + 1e-9
    if bad.any():
        raise ValueError(
            f"fit_bgnbd: {int(bad.sum())} contacts with x < 0, t_x < 0, t_x > T or a "
            "non-finite value"
        )
    # Time in units that put the largest age near 10, as lifetimes does: alpha is a time
    # scale and the optimiser converges far better when it is of order one.
    scale = 10.0 / max(float(big_t.max()), 1e-9)
    xs, ts, bs = x, t_x * scale, big_t * scale

    def loss(theta: np.ndarray, penalty: float) -> float:
        r, alpha, a, b = np.exp(theta)
        value = -float(log_likelihood(r, alpha, a, b, xs, ts, bs).mean())
        value += penalty * float(np.sum(np.exp(theta) ** 2))
        # Some histories push a parameter to a boundary (e.g. a -> 0: nobody ever drops
        # out), where the likelihood overflows: a large finite value steers away from it.
        return value if np.isfinite(value) else 1e10

    result = None
    for penalty in (penalizer, *(p for p in (1e-3, 1e-2, 1e-1) if p > penalizer)):
        tries = [
            minimize(loss, np.zeros(4), args=(penalty,), method="BFGS", options={"gtol": 1e-8}),
            # Bounded log-parameters (e^-15 .. e^15) keep the search off the overflow.
            minimize(loss, np.zeros(4), args=(penalty,), method="L-BFGS-B", bounds=[(-15, 15)] * 4),
        ]
        finite = [
            t for t in tries if np.isfinite(t.fun) and t.fun < 1e10 and np.abs(t.x).max() < 30
        ]
        if finite:
            result = min(finite, key=lambda t: t.fun)
            break
    if result is None:
        raise ValueError("fit_bgnbd: the optimiser did not converge, even with a penalty")
    r, alpha, a, b = np.exp(result.x)
    return BGNBD(
        r=float(r),
        alpha=float(alpha / scale),
        a=float(a),
        b=float(b),
        horizon_days=float(horizon_days),
    )


def fit_on_snapshot(
    X: pd.DataFrame, horizon_days: float, seed: int = 0, max_rows: int = MAX_FIT_ROWS
) -> BGNBD:
    """BG/NBD fitted on one row per contact of a snapshot (see :func:`btyd_summary`).

    Args:
        X: snapshot rows holding :data:`training.model.BTYD_FEATURES`, one per contact
            (e.g. the rows of one as-of time).
        horizon_days: the label horizon.
        seed: the sample of contacts when there are more than ``max_rows``.
        max_rows: at most this many contacts are fitted on.

    Raises:
        ValueError: a feature is missing, or see :func:`fit_bgnbd`.

    """
    missing = [f for f in BTYD_FEATURES if f not in X.columns]
    if missing:
        raise ValueError(f"BG/NBD: missing snapshot feature(s) {missing}")
    if len(X) > max_rows:
        X = X.sample(max_rows, random_state=seed)
    summary = btyd_summary(*(X[f].to_numpy(dtype="float64") for f in BTYD_FEATURES))
    return fit_bgnbd(*summary, horizon_days=horizon_days)
