"""Survival metrics of time-to-event models: concordance, Brier over time, hazards, labels.

Pure functions on arrays and frames, used when the hazard models are trained
(:mod:`training.hazard_train`) and evaluated (:mod:`evaluation.hazard`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from training import hazard as hz


def concordance_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C: among comparable pairs, the share the risk score orders correctly.

    A pair (i, j) is comparable when ``time[i] < time[j]`` and ``event[i] == 1`` (the
    earlier time is an observed event); it is concordant when ``risk[i] > risk[j]``, and
    counts one half when the risks tie. ``O(n log n)`` with a Fenwick tree over risk ranks.

    Raises:
        ValueError: lengths differ, or no comparable pair.

    """
    t = np.asarray(time, float)
    e = np.asarray(event, bool)
    r = np.asarray(risk, float)
    if not (len(t) == len(e) == len(r)):
        raise ValueError(f"time, event, risk: lengths {len(t)}, {len(e)}, {len(r)} differ")
    ranks = np.unique(r, return_inverse=True)[1] + 1  # 1..m
    m = int(ranks.max()) if len(ranks) else 0
    tree = np.zeros(m + 1, dtype=np.int64)

    def add(i: int) -> None:
        while i <= m:
            tree[i] += 1
            i += i & -i

    def below(i: int) -> int:  # inserted with rank <= i
        s = 0
        while i > 0:
            s += tree[i]
            i -= i & -i
        return int(s)

    order = np.argsort(-t, kind="stable")
    concordant = 0.0
    pairs = 0
    inserted = 0
    i = 0
    n = len(t)
    while i < n:
        # A block of equal times: compare against strictly later times only.
        j = i
        while j < n and t[order[j]] == t[order[i]]:
            j += 1
        block = order[i:j]
        for k in block:
            if e[k]:
                lower = below(ranks[k] - 1)
                equal = below(ranks[k]) - lower
                concordant += lower + 0.5 * equal
                pairs += inserted
        for k in block:
            add(int(ranks[k]))
        inserted += len(block)
        i = j
    if pairs == 0:
        raise ValueError("concordance: no comparable pair (no event before a later time)")
    return float(concordant / pairs)


def brier_curve(event_probs: np.ndarray, time_days: np.ndarray, period_days: int) -> np.ndarray:
    """Brier score of ``P(event by the end of period k)`` per period k (no censoring).

    Args:
        event_probs: n x K, ``1 - S(k)`` per row and period.
        time_days: days from the as-of time to the event (NaN or inf: none within
            ``H_max``). Every row must have its whole ``H_max`` window observed.
        period_days: period length.

    """
    F = np.atleast_2d(np.asarray(event_probs, float))
    t = np.asarray(time_days, float)
    ends = period_days * np.arange(1, F.shape[1] + 1)
    happened = np.nan_to_num(t, nan=np.inf)[:, None] < ends[None, :]
    return ((happened - F) ** 2).mean(axis=0)


def integrated_brier(event_probs: np.ndarray, time_days: np.ndarray, period_days: int) -> float:
    """Mean of :func:`brier_curve` over the periods (equal weights: equal lengths)."""
    return float(brier_curve(event_probs, time_days, period_days).mean())


def marginal_hazards(pp: pd.DataFrame, periods: int) -> np.ndarray:
    """The population hazard per period: events / rows at risk (Kaplan-Meier's steps).

    Raises:
        ValueError: a period without any row at risk.

    """
    g = pp.groupby(hz.PERIOD)[hz.LABEL].agg(["sum", "count"]).reindex(range(1, periods + 1))
    empty = g["count"].isna() | (g["count"] == 0)
    if empty.any():
        raise ValueError(
            f"periods {list(g.index[empty])}: no training row at risk (a longer history or a "
            "shorter hazard.h_max_periods is needed)"
        )
    return (g["sum"] / g["count"]).to_numpy(float)


def horizon_label(
    first_event: pd.Series, as_of: pd.Series, horizon_days: float, model: str
) -> np.ndarray:
    """The fixed-horizon label of ``model`` from the first target event after as-of.

    appetence: a purchase in ``[as_of, as_of + h)``; churn: no activity in it (the rules
    of :func:`training.labels.make_labels`).
    """
    first = pd.to_datetime(first_event, utc=True)
    start = pd.to_datetime(as_of, utc=True)
    within = (first.notna() & (first < start + pd.Timedelta(days=horizon_days))).to_numpy()
    return (~within if model == "churn" else within).astype(int)
