"""Drift before outcomes exist: the population stability index (PSI) of features and scores.

PSI compares the distribution of a value in a *current* sample with a *reference* one::

    PSI = sum over bins of (c_i - r_i) * ln(c_i / r_i)

where ``r_i`` and ``c_i`` are the shares of the reference and current rows in bin ``i``.
Bins are quantiles of the reference (``bins`` of them, fewer when values tie), left-closed
(``[edge_k, edge_k+1)``), the first and last open-ended, plus one bin for missing values
(a feature that stops being observed has drifted too). A share of 0 counts as
:data:`EPSILON`, so a bin empty on one side adds a large but finite term and a bin empty
on both sides adds nothing. Customary reading: below 0.1 no real shift, 0.1 to 0.25 a
moderate one, above 0.25 a major one (``monitoring.psi_warn`` / ``psi_alert``).

Pure functions on arrays and frames; :mod:`monitoring.monitor` reads the files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

EPSILON = 1e-4
OK, WARN, ALERT = "ok", "warn", "alert"
LEVELS = (OK, WARN, ALERT)


def _values(values: Sequence[float] | np.ndarray | pd.Series, what: str) -> np.ndarray:
    try:
        x = np.asarray(values, dtype="float64").reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: not numeric") from None
    inf = int(np.isinf(x).sum())
    if inf:
        raise ValueError(f"{what}: {inf} infinite value(s); PSI needs finite numbers or NaN")
    return x


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner cut points: the reference's quantiles 1/bins ... (bins-1)/bins, ties merged.

    Raises:
        ValueError: ``bins`` < 2.

    """
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    x = np.asarray(reference, dtype="float64")
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return np.array([], dtype="float64")
    return np.unique(np.quantile(x, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each bin: ``len(edges) + 1`` value bins, then the missing bin."""
    x = np.asarray(values, dtype="float64")
    missing = np.isnan(x)
    counts = np.bincount(
        np.searchsorted(edges, x[~missing], side="right"), minlength=len(edges) + 1
    )
    out = np.append(counts, missing.sum()).astype("float64")
    return out / len(x)


def psi_from_shares(reference: np.ndarray, current: np.ndarray) -> float:
    """PSI of two share vectors over the same bins (zeros floored at :data:`EPSILON`)."""
    r = np.maximum(np.asarray(reference, dtype="float64"), EPSILON)
    c = np.maximum(np.asarray(current, dtype="float64"), EPSILON)
    return float(np.sum((c - r) * np.log(c / r)))


def psi(
    reference: Sequence[float] | np.ndarray | pd.Series,
    current: Sequence[float] | np.ndarray | pd.Series,
    bins: int = 10,
) -> float:
    """PSI of ``current`` against ``reference``, with quantile bins of the reference.

    NaN is a value of its own (the missing bin).

    Raises:
        ValueError: either sample is empty, not numeric or holds infinities; ``bins`` < 2.

    """
    ref, cur = _values(reference, "reference"), _values(current, "current")
    for name, x in (("reference", ref), ("current", cur)):
        if len(x) == 0:
            raise ValueError(f"psi: the {name} sample is empty")
    edges = quantile_edges(ref, bins)
    return psi_from_shares(bin_shares(ref, edges), bin_shares(cur, edges))


def categorical_psi(reference: Mapping[str, float], current: Mapping[str, float]) -> float:
    """PSI of two count tables (e.g. contacts per stage) over the union of their categories.

    Raises:
        ValueError: a table sums to zero or holds a negative count.

    """
    cats = list(dict.fromkeys([*reference, *current]))
    r = np.array([float(reference.get(k, 0)) for k in cats])
    c = np.array([float(current.get(k, 0)) for k in cats])
    for name, x in (("reference", r), ("current", c)):
        if (x < 0).any() or x.sum() <= 0:
            raise ValueError(f"categorical_psi: the {name} counts must be >= 0, not all 0")
    return psi_from_shares(r / r.sum(), c / c.sum())


def level(value: float | None, warn: float, alert: float) -> str:
    """``ok``, ``warn`` (value >= warn) or ``alert`` (value >= alert); None or NaN is ok."""
    if value is None or value != value:
        return OK
    if value >= alert:
        return ALERT
    if value >= warn:
        return WARN
    return OK


def feature_psi(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: Sequence[str],
    bins: int,
    warn: float,
    alert: float,
) -> pd.DataFrame:
    """PSI of each feature, most shifted first.

    Returns:
        One row per feature: ``feature``, ``psi``, ``level``, the median and missing
        share on both sides (``ref_median``, ``cur_median``, ``ref_missing``,
        ``cur_missing``).

    Raises:
        ValueError: a feature is missing from either frame, or a frame has no row.

    """
    for name, frame in (("reference", reference), ("current", current)):
        absent = [f for f in features if f not in frame.columns]
        if absent:
            raise ValueError(f"feature drift: {len(absent)} feature(s) not in the {name}: {absent}")
        if len(frame) == 0:
            raise ValueError(f"feature drift: the {name} has no row")
    rows = []
    for f in features:
        ref, cur = _values(reference[f], f), _values(current[f], f)
        value = psi(ref, cur, bins)
        rows.append(
            {
                "feature": f,
                "psi": value,
                "level": level(value, warn, alert),
                "ref_median": float(np.nanmedian(ref)) if (~np.isnan(ref)).any() else np.nan,
                "cur_median": float(np.nanmedian(cur)) if (~np.isnan(cur)).any() else np.nan,
                "ref_missing": float(np.isnan(ref).mean()),
                "cur_missing": float(np.isnan(cur).mean()),
            }
        )
    out = pd.DataFrame(rows)
    return out.sort_values("psi", ascending=False, kind="stable").reset_index(drop=True)
