"""Quality metrics and plots of a probability model, on held-out rows.

All metrics take the true labels and a score; the probability metrics (log loss, Brier,
expected calibration error) assume the score is a probability in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    average_precision_score,
    brier_score_loss,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE: mean |observed rate - mean prediction| over equal-width bins, row-weighted."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(y[m].mean() - p[m].mean())
    return float(total / len(y))


def top_decile(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """Precision in the top 10 % by score, and its lift over the base rate."""
    y, score = np.asarray(y, float), np.asarray(score, float)
    k = max(1, int(np.ceil(0.1 * len(y))))
    top = np.argsort(-score, kind="stable")[:k]
    precision = float(y[top].mean())
    base = float(y.mean())
    return precision, (precision / base if base > 0 else float("nan"))


def ranking_metrics(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Metrics that only need an ordering (for baselines that are not probabilities)."""
    precision, lift = top_decile(y, score)
    return {
        "roc_auc": float(roc_auc_score(y, score)),
        "pr_auc": float(average_precision_score(y, score)),
        "precision_top_decile": precision,
        "lift_top_decile": lift,
    }


def probability_metrics(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, float]:
    """Ranking metrics plus log loss, Brier score and ECE.

    Raises:
        ValueError: a probability is NaN or outside [0, 1].
    """
    p = np.asarray(p, float)
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("probabilities must be in [0, 1] and not NaN")
    out = ranking_metrics(y, p)
    out.update(
        log_loss=float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])),
        brier=float(brier_score_loss(y, p)),
        ece=expected_calibration_error(y, p, bins),
    )
    return out


def plot_curves(y: np.ndarray, scores: dict[str, np.ndarray], out_dir: Path, title: str) -> list:
    """ROC, precision-recall, calibration and cumulative gain plots; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y)
    paths = []

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{title}: ROC")
    ax.legend(loc="lower right", fontsize=8)
    paths.append(_save(fig, out_dir / "roc.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        prec, rec, _ = precision_recall_curve(y, s)
        ax.plot(rec, prec, label=f"{name} (AP {average_precision_score(y, s):.3f})")
    ax.axhline(y.mean(), color="k", ls=":", lw=1)
    ax.set(xlabel="recall", ylabel="precision", title=f"{title}: precision-recall")
    ax.legend(loc="upper right", fontsize=8)
    paths.append(_save(fig, out_dir / "precision_recall.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        if np.min(s) < 0 or np.max(s) > 1:
            continue  # a rank score is not a probability
        q = np.quantile(s, np.linspace(0, 1, 11))
        idx = np.clip(np.searchsorted(q, s, side="right") - 1, 0, 9)
        mp = [s[idx == b].mean() for b in range(10) if (idx == b).any()]
        fr = [y[idx == b].mean() for b in range(10) if (idx == b).any()]
        ax.plot(mp, fr, "o-", label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(
        xlabel="mean predicted probability", ylabel="observed rate", title=f"{title}: calibration"
    )
    ax.legend(loc="upper left", fontsize=8)
    paths.append(_save(fig, out_dir / "calibration.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        order = np.argsort(-s, kind="stable")
        gain = np.cumsum(y[order]) / max(1, y.sum())
        ax.plot(np.arange(1, len(y) + 1) / len(y), gain, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="share of contacts targeted", ylabel="share of positives", title=f"{title}: gain")
    ax.legend(loc="lower right", fontsize=8)
    paths.append(_save(fig, out_dir / "gain.png"))
    return paths


def plot_importance(names: list[str], gains: np.ndarray, path: Path, top: int = 20) -> Path:
    """Horizontal bar chart of LightGBM gain importance."""
    order = np.argsort(gains)[::-1][:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(order) + 1))
    ax.barh([names[i] for i in order], gains[order])
    ax.set(xlabel="total gain", title="feature importance")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
