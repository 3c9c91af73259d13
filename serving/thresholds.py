"""Choosing ``index.tau_churn`` / ``index.tau_purchase`` from held-out predictions.

The training run of each champion logs its calibrated predictions on the held-out as-of
times (customer_id, event_timestamp = as-of time, label, p; see
:func:`training.registry.held_out_predictions`). For a threshold t, the contacts with
``p >= t`` land in the model's action quadrant (Exit for churn, Purchase for
appetence); among them the positives are the true positives. Counts are scaled to one
snapshot - one scoring run, i.e. the weekly contact volume with weekly snapshots - by
averaging over the held-out as-of times (``per="mean"``) or taking the last one
(``per="last"``).

The proposal is the lowest threshold (most contacts reached, best recall) whose weekly
volume fits the team's capacity and/or whose precision reaches the target.

For a model that scores more than the half it decides (appetence), only its half counts
(customers never enter the Purchase quadrant): held-out rows are joined to the snapshot
files' ``has_purchased``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from engage.config import Params, Paths
from engage.specs import model_spec
from features.catalog import ENTITY_KEY, TIMESTAMP
from serving.index import churn_threshold_at, purchase_threshold_at, thresholds_at

DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))


def load_held_out(paths: Paths, model: str) -> tuple[pd.DataFrame, str]:
    """The champion's held-out predictions and its version, from its MLflow run.

    A model that scores more than the half it decides (appetence scores everyone but
    decides prospects) keeps only the rows of its half (``has_purchased`` in the
    snapshot of their as-of time), when the snapshots are on disk.

    Raises:
        ValueError: unknown model.
        LookupError: no champion, or its run has no held-out predictions.

    """
    from training.registry import held_out_predictions

    spec = model_spec(model)
    held, version = held_out_predictions(paths, model)
    if spec.scores_everyone:
        held = _own_half(paths, held, spec.half)
    return held, version


def _own_half(paths: Paths, held: pd.DataFrame, half: int) -> pd.DataFrame:
    from features.snapshots import list_snapshots

    files = {s.as_of: s.path for s in list_snapshots(paths.features_dir)}
    parts = []
    for t, rows in held.groupby(TIMESTAMP, sort=True):
        path = files.get(t)
        if path is None:
            # Without the snapshot the half is unknown: keep the rows rather than guess.
            parts.append(rows)
            continue
        halves = pd.read_parquet(path, columns=[ENTITY_KEY, "has_purchased"])
        merged = rows.merge(halves, on=ENTITY_KEY, how="left")
        parts.append(merged[merged["has_purchased"] == half].drop(columns="has_purchased"))
    return pd.concat(parts, ignore_index=True) if parts else held


def threshold_table(
    held_out: pd.DataFrame,
    thresholds: list[float] | tuple[float, ...] | np.ndarray,
    per: Literal["mean", "last"] = "mean",
) -> pd.DataFrame:
    """Per-snapshot volume, TP, FP, precision and recall at each threshold.

    Args:
        held_out: rows with ``event_timestamp`` (as-of), ``label`` (0/1) and ``p``.
        thresholds: candidate thresholds.
        per: scale counts to one snapshot by the mean over as-of times, or use the last.

    Returns:
        One row per threshold: ``threshold``, ``contacts``, ``tp``, ``fp`` (per snapshot),
        ``precision`` (NaN when no contact) and ``recall`` (NaN without positives).

    Raises:
        ValueError: empty input or an unknown ``per``.

    """
    if held_out.empty:
        raise ValueError("held-out predictions are empty")
    if per == "last":
        held_out = held_out[held_out[TIMESTAMP] == held_out[TIMESTAMP].max()]
    elif per != "mean":
        raise ValueError(f"per must be 'mean' or 'last', got {per!r}")
    snapshots = held_out[TIMESTAMP].nunique()
    p = held_out["p"].to_numpy(dtype="float64")
    y = held_out["label"].to_numpy() == 1
    t = np.asarray(thresholds, dtype="float64")
    # Counts of p >= t for every t at once: sort p, then binary-search each threshold.
    order = np.argsort(p, kind="stable")
    p_sorted, y_sorted = p[order], y[order]
    pos_from = np.concatenate([np.cumsum(y_sorted[::-1])[::-1], [0]])  # positives in [i:]
    first = np.searchsorted(p_sorted, t, side="left")
    contacts = len(p) - first
    tp = pos_from[first]
    fp = contacts - tp
    positives = int(y.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(contacts > 0, tp / contacts, np.nan)
        recall = tp / positives if positives else np.full(len(t), np.nan)
    return pd.DataFrame(
        {
            "threshold": t,
            "contacts": contacts / snapshots,
            "tp": tp / snapshots,
            "fp": fp / snapshots,
            "precision": precision,
            "recall": recall,
        }
    )


@dataclass(frozen=True)
class Proposal:
    """A proposed threshold and its figures (None when nothing satisfies the targets)."""

    threshold: float | None
    contacts: float | None
    precision: float | None
    recall: float | None
    reason: str


def propose(
    held_out: pd.DataFrame,
    capacity: float | None = None,
    target_precision: float | None = None,
    per: Literal["mean", "last"] = "mean",
) -> Proposal:
    """The lowest threshold meeting the capacity and/or target precision.

    Every distinct predicted probability is a candidate, so the proposal is exact, not
    limited to a grid.

    Args:
        held_out: rows with ``event_timestamp``, ``label`` and ``p``.
        capacity: maximum contacts per snapshot (weekly volume).
        target_precision: minimum share of true positives among the contacts.
        per: see :func:`threshold_table`.

    Raises:
        ValueError: neither target given, or a target out of range.

    """
    if capacity is None and target_precision is None:
        raise ValueError("give a capacity and/or a target precision")
    if capacity is not None and capacity < 0:
        raise ValueError(f"capacity must be >= 0, got {capacity}")
    if target_precision is not None and not 0 < target_precision <= 1:
        raise ValueError(f"target precision must be in (0, 1], got {target_precision}")
    candidates = np.unique(np.concatenate([held_out["p"].to_numpy(dtype="float64"), [1.0]]))
    table = threshold_table(held_out, candidates, per)
    ok = np.ones(len(table), dtype=bool)
    wanted = []
    if capacity is not None:
        ok &= table["contacts"].to_numpy() <= capacity
        wanted.append(f"<= {capacity:,.0f} contacts per snapshot")
    if target_precision is not None:
        prec = table["precision"].to_numpy()
        ok &= np.nan_to_num(prec, nan=0.0) >= target_precision
        wanted.append(f"precision >= {target_precision:.0%}")
    goal = " and ".join(wanted)
    if not ok.any():
        return Proposal(None, None, None, None, f"no threshold reaches {goal}")
    row = table[ok].iloc[0]
    return Proposal(
        threshold=float(row["threshold"]),
        contacts=float(row["contacts"]),
        precision=None if np.isnan(row["precision"]) else float(row["precision"]),
        recall=None if np.isnan(row["recall"]) else float(row["recall"]),
        reason=f"lowest threshold with {goal}",
    )


def current_threshold(params: Params, model: str) -> float:
    """The threshold ``model``'s quadrant uses at the models' horizon.

    params.yaml states it for ``index.stated_horizon_days``; the held-out predictions are
    probabilities within ``labels.horizon_days``, so this is the converted value
    (:func:`serving.index.thresholds_at`).
    """
    index = thresholds_at(params.index, params.labels.horizon_days)
    return float(getattr(index, model_spec(model).threshold))


def stated_threshold(params: Params, model: str, threshold: float) -> float:
    """A threshold at the models' horizon, as params.yaml states it.

    The inverse of the conversion in :func:`current_threshold`: the value to write as
    ``index.tau_*`` (stated for ``index.stated_horizon_days``) so that the models'
    quadrant uses ``threshold``.
    """
    stated, horizon = params.index.stated_horizon_days, params.labels.horizon_days
    if model_spec(model).threshold == "tau_churn":
        return churn_threshold_at(threshold, horizon, stated)
    return purchase_threshold_at(threshold, horizon, stated)


def candidate_grid(params: Params, model: str, extra: float | None = None) -> list[float]:
    """The display grid: 0.05 .. 0.95, the current threshold and ``extra``."""
    values = {*DEFAULT_GRID, current_threshold(params, model)}
    if extra is not None:
        values.add(round(extra, 6))
    return sorted(values)
