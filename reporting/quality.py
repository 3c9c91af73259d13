"""Model quality from the champions' MLflow runs, in numbers and in plain words.

A training run logs ``test_<method>_<metric>`` for the model and each baseline on the
same held-out rows (methods such as ``model``, ``recency``, ``rfm``, ``logreg``,
``bgnbd``; metrics such as ``roc_auc``, ``pr_auc``, ``precision_top_decile``,
``lift_top_decile``, ``brier``, ``ece``). Everything here is generic over the methods a
run holds, so a run with more baselines, or a champion that is itself a baseline (run
tags ``champion_kind`` and ``best_baseline``), renders without code changes.

The plain-words line reads the top-decile precision: "Of the top 10 % of customers
flagged by the model, 71 % went quiet within 30 days, against 52 % for recency alone."
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engage.specs import model_spec
from serving.sentences import percent

METRIC = re.compile(
    r"^test_(?P<method>[a-z0-9_]+?)_(?P<metric>roc_auc|pr_auc|precision_top_decile|"
    r"lift_top_decile|brier|ece|log_loss)$"
)
METRICS = ("roc_auc", "pr_auc", "precision_top_decile", "lift_top_decile", "brier", "ece")
METRIC_LABELS = {
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC",
    "precision_top_decile": "precision top 10%",
    "lift_top_decile": "lift top 10%",
    "brier": "Brier",
    "ece": "ECE",
}
METHOD_LABELS = {
    "model": "LightGBM (calibrated)",
    "recency": "recency alone",
    "rfm": "the RFM score",
    "logreg": "a logistic regression",
    "bgnbd": "BG/NBD",
}
# What a positive label means, per model, for the sentence.
OUTCOME = {"churn": "went quiet", "appetence": "bought"}


def method_label(method: str) -> str:
    """How the report names a method ("recency alone"); unknown ones by their name."""
    return METHOD_LABELS.get(method, method.replace("_", " "))


def _said(method: str) -> str:
    return "the model" if method == "model" else method_label(method)


def methods(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """The logged test metrics grouped by method, ``model`` first, then by name."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        m = METRIC.match(key)
        if m:
            out.setdefault(m["method"], {})[m["metric"]] = float(value)
    return dict(sorted(out.items(), key=lambda kv: (kv[0] != "model", kv[0])))


@dataclass(frozen=True)
class Comparison:
    """The served method against the best other one, on the top-decile precision."""

    served: str
    baseline: str | None
    served_precision: float | None
    baseline_precision: float | None
    sentence: str


def compare(name: str, metrics: dict[str, float], tags: dict[str, str], horizon: int) -> Comparison:
    """The plain-words comparison for the champion of model ``name``.

    The served method is the run's ``champion_kind`` tag when it names a logged method,
    else ``model``. The baseline is the ``best_baseline`` tag when logged, else the
    other method with the best test ROC-AUC.
    """
    by = methods(metrics)
    served = tags.get("champion_kind", "model")
    if served not in by:
        served = "model"
    others = [m for m in by if m != served]
    baseline = tags.get("best_baseline")
    if baseline not in others:
        ranked = sorted(others, key=lambda m: by[m].get("roc_auc", float("-inf")), reverse=True)
        baseline = ranked[0] if ranked else None
    p = by.get(served, {}).get("precision_top_decile")
    b = by.get(baseline, {}).get("precision_top_decile") if baseline else None
    who = "customers" if model_spec(name).half == 1 else "contacts"
    outcome = OUTCOME.get(name, "were positive")
    if p is None:
        sentence = f"The {name} run logged no top-decile precision for {_said(served)}."
    else:
        sentence = (
            f"Of the top 10 % of {who} flagged by {_said(served)}, {percent(p)} {outcome} "
            f"within {horizon} days"
        )
        if b is not None:
            sentence += f", against {percent(b)} for {_said(baseline)}"
        sentence += " (held-out weeks)."
    if served != "model":
        sentence += f" The served {name} model is {_said(served)}: LightGBM did not beat it."
    return Comparison(served, baseline, p, b, sentence)
