"""Did the predictions come true? Realised outcomes of a scoring run, per model.

A scoring run predicted, at its as-of time, the probability of an outcome within the
model's horizon H. Once the events cover ``[as_of, as_of + H)`` the outcome is known,
with the very label code training used (:func:`training.labels.make_labels`, called by
:mod:`monitoring.monitor`). This module holds the pure part: the state of a label window
and the comparison of a run's scores with the realised labels.

Window states (:func:`label_window`):

- ``complete``: the whole window is observed; the figures are final;
- ``partial``: part of it is; the labels are those of the observed days only (a churn
  label then means "quiet so far", which overstates churn), reported with the observed
  share and never as final;
- ``pending``: less than a day observed; nothing is computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from engage.specs import ModelSpec
from features.catalog import ENTITY_KEY
from features.snapshots import to_utc
from serving.value import rank_by_value_at_risk
from training.evaluate import probability_metrics
from training.labels import LABEL, labelable

COMPLETE, PARTIAL, PENDING = "complete", "partial", "pending"
DAY = pd.Timedelta(days=1)
# The scores the comparison reads from a run file.
RUN_COLUMNS = [
    ENTITY_KEY,
    "has_purchased",
    "p_purchase",
    "p_churn",
    "stage",
    "segment",
    "clv",
    "value_at_risk",
]


@dataclass(frozen=True)
class LabelWindow:
    """How much of a run's label window ``[as_of, as_of + H)`` the events cover.

    Attributes:
        as_of: the run's as-of time.
        horizon_days: H, what the model was trained for.
        observed_until: the end of the observed events (midnight after the last one).
        status: ``complete``, ``partial`` or ``pending``.
        observed_days: whole days of the window observed (H when complete).
        observed_share: observed_days / H.

    """

    as_of: pd.Timestamp
    horizon_days: int
    observed_until: pd.Timestamp
    status: str
    observed_days: int
    observed_share: float

    @property
    def final(self) -> bool:
        """True only when the whole window is observed."""
        return self.status == COMPLETE


def label_window(as_of, horizon_days: int, observed_until) -> LabelWindow:
    """The state of the label window of a run at ``as_of`` with horizon ``horizon_days``.

    Complete exactly when training would label this as-of time
    (:func:`training.labels.labelable`); otherwise the whole days observed so far.

    Raises:
        ValueError: ``horizon_days`` < 1.

    """
    if int(horizon_days) < 1:
        raise ValueError(f"horizon_days must be at least 1, got {horizon_days}")
    t, end, h = to_utc(as_of), to_utc(observed_until), int(horizon_days)
    if labelable([t], h, end):
        return LabelWindow(t, h, end, COMPLETE, h, 1.0)
    days = max(0, int((end - t) // DAY))
    status = PARTIAL if days >= 1 else PENDING
    return LabelWindow(t, h, end, status, days, days / h)


@dataclass
class ModelOutcome:
    """How one model's predictions of one scoring run turned out.

    Attributes:
        model: model name; ``version``: the version that scored the run.
        run_id, as_of: the scoring run.
        window: the label window's state (``window.final`` is False unless complete).
        population: contacts with a realised label (the model's label population).
        evaluated: of those, contacts the run scored (the rest is ``unscored``).
        metrics: ROC-AUC, PR-AUC, Brier, ECE, ... on the evaluated rows, or empty with
            ``note`` saying why (too few rows, one class, pending window).
        predicted_rate / realised_rate: mean probability and mean label.
        by_stage / by_segment: ``n``, ``predicted``, ``realised`` per stage / segment.
        at_risk: the model deciding customers (churn) only: the hit rate of the at-risk
            list (see :func:`at_risk_hits`).
        stages: the realised rate in the model's positive stage against the other
            stage of its half (Purchase vs Nurture, Exit vs Retention), see
            :func:`stage_contrast`.

    """

    model: str
    version: str
    run_id: str
    as_of: pd.Timestamp
    window: LabelWindow
    population: int = 0
    evaluated: int = 0
    unscored: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    predicted_rate: float = float("nan")
    realised_rate: float = float("nan")
    by_stage: pd.DataFrame = field(default_factory=pd.DataFrame)
    by_segment: pd.DataFrame = field(default_factory=pd.DataFrame)
    at_risk: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def status(self) -> str:
        return self.window.status


def _rates(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    if frame.empty:
        return pd.DataFrame(columns=[key, "n", "predicted", "realised"])
    g = frame.groupby(key, observed=True)
    out = pd.DataFrame({"n": g.size(), "predicted": g["p"].mean(), "realised": g[LABEL].mean()})
    return out.reset_index().sort_values(key, kind="stable").reset_index(drop=True)


def at_risk_hits(scores: pd.DataFrame, labels: pd.DataFrame, top: int) -> dict[str, Any]:
    """Of the top ``top`` customers by value at risk, how many churned and what they carried.

    The list is the one ``engage at-risk`` shows for the run: customers
    (``has_purchased`` = 1) by ``value_at_risk`` descending. A listed customer outside the
    churn label population (e.g. not active within ``labels.active_within_days``) has no
    realised label and is counted apart, never as a hit or a miss.

    Returns:
        ``listed``, ``labelled``, ``outside_population``, ``churned``, ``hit_rate``
        (churned / labelled), ``base_rate`` (churn rate of the whole population),
        ``lift`` (hit rate / base rate), ``value_at_risk_listed`` (sum over the list) and
        ``clv_churned`` (customer value of the listed customers who churned).

    Raises:
        ValueError: ``top`` < 1.

    """
    if top < 1:
        raise ValueError(f"at-risk top must be at least 1, got {top}")
    customers = scores[scores["has_purchased"] == 1]
    listed = rank_by_value_at_risk(customers).head(top)
    y = labels.set_index(ENTITY_KEY)[LABEL]
    realised = y.reindex(listed[ENTITY_KEY]).to_numpy()
    has_label = ~np.isnan(realised.astype("float64"))
    churned = has_label & (realised == 1)
    labelled = int(has_label.sum())
    hit = float(churned.sum() / labelled) if labelled else float("nan")
    base = float(y.mean()) if len(y) else float("nan")
    return {
        "listed": len(listed),
        "labelled": labelled,
        "outside_population": len(listed) - labelled,
        "churned": int(churned.sum()),
        "hit_rate": hit,
        "base_rate": base,
        "lift": hit / base if base and base == base and hit == hit else float("nan"),
        "value_at_risk_listed": float(listed["value_at_risk"].sum()),
        "clv_churned": float(listed["clv"].to_numpy()[churned].sum()),
    }


def stage_contrast(joined: pd.DataFrame, half: int, yes: str, no: str) -> dict[str, Any]:
    """Realised rate in the two stages of a half: Purchase against Nurture, Exit against Retention.

    ``joined`` holds the evaluated rows (``has_purchased``, ``stage``, ``label``); only
    the contacts of ``half`` (``has_purchased``) count.

    Returns:
        ``n_<stage>``, ``rate_<stage>`` for both stages (lower-case names) and ``lift``
        = rate(yes) / rate(no) (NaN when undefined).

    """
    rows_of_half = joined[joined["has_purchased"] == half]
    out: dict[str, Any] = {}
    for stage in (yes, no):
        rows = rows_of_half[rows_of_half["stage"] == stage]
        out[f"n_{stage.lower()}"] = len(rows)
        out[f"rate_{stage.lower()}"] = float(rows[LABEL].mean()) if len(rows) else float("nan")
    a, b = out[f"rate_{yes.lower()}"], out[f"rate_{no.lower()}"]
    out["lift"] = a / b if b and b == b and a == a else float("nan")
    return out


def evaluate_run(
    scores: pd.DataFrame,
    labels: pd.DataFrame,
    spec: ModelSpec,
    window: LabelWindow,
    *,
    version: str,
    run_id: str,
    min_rows: int,
    at_risk_top: int,
    ece_bins: int,
    other_stage: str | None = None,
) -> ModelOutcome:
    """Compare a run's scores of model ``spec`` with the realised labels.

    Args:
        scores: the run's rows (:data:`RUN_COLUMNS`).
        labels: ``customer_id`` and ``label`` at the run's as-of time (the model's label
            population); empty when the window is pending.
        spec: the model.
        window: the state of the label window (the outcome carries it: partial figures
            are never final).
        version: the model version that scored the run.
        run_id: the scoring run.
        min_rows: fewer evaluated rows (or a single class) give no metrics.
        at_risk_top: size of the at-risk list (churn).
        ece_bins: bins of the expected calibration error.
        other_stage: the stage below the threshold in the model's half (Nurture for
            appetence, Retention for churn), to contrast with its positive stage.

    Raises:
        ValueError: a column of :data:`RUN_COLUMNS` or of the labels is missing, or a
            contact appears twice in the labels.

    """
    missing = [c for c in RUN_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(f"scoring run {run_id}: missing column(s) {missing}")
    if ENTITY_KEY not in labels.columns or LABEL not in labels.columns:
        raise ValueError(f"labels of run {run_id}: need {ENTITY_KEY} and {LABEL} columns")
    dupes = int(labels[ENTITY_KEY].duplicated().sum())
    if dupes:
        raise ValueError(f"labels of run {run_id}: {dupes} contact(s) labelled twice")
    out = ModelOutcome(spec.name, version, run_id, window.as_of, window)
    if window.status == PENDING:
        out.note = "label window not observed yet"
        return out
    joined = labels[[ENTITY_KEY, LABEL]].merge(scores, on=ENTITY_KEY, how="left")
    joined["p"] = joined[spec.probability]
    scored = joined["p"].notna()
    out.population = len(joined)
    out.evaluated = int(scored.sum())
    out.unscored = out.population - out.evaluated
    joined = joined[scored]
    if spec.half == 1:
        # Value at risk is p(churn) x CLV: the list belongs to the model of the customers.
        out.at_risk = at_risk_hits(scores, labels, at_risk_top)
    if other_stage is not None:
        out.stages = stage_contrast(joined, spec.half, spec.positive_stage, other_stage)
    if joined.empty:
        out.note = "no scored contact in the label population"
        return out
    y, p = joined[LABEL].to_numpy(), joined["p"].to_numpy()
    out.predicted_rate, out.realised_rate = float(p.mean()), float(y.mean())
    out.by_stage = _rates(joined, "stage")
    out.by_segment = _rates(joined, "segment")
    if len(joined) < min_rows:
        out.note = f"{len(joined)} labelled rows, fewer than monitoring.min_rows={min_rows}"
    elif len(np.unique(y)) < 2:
        out.note = f"a single class (all labels {int(y[0])}): no ranking metric"
    else:
        out.metrics = probability_metrics(y, p, ece_bins)
    if not window.final:
        out.note = (
            f"partial: {window.observed_days} of {window.horizon_days} days observed "
            f"({window.observed_share:.0%}); not final" + (f"; {out.note}" if out.note else "")
        )
    return out
