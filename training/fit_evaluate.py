"""The pure step of training: split by time, fit, compare with baselines on held-out time.

:func:`fit_and_evaluate` takes a training frame (labels and point-in-time features) and
the parameters, and returns the fitted model with its test metrics and those of the
baselines on the same rows. It writes nothing and talks to no store: logging,
registration and the promotion gate are :mod:`training.train`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from engage.config import Params
from features.catalog import model_feature_names
from training.baselines import logistic_baseline, rfm_score
from training.dataset import Split, time_split
from training.evaluate import probability_metrics, ranking_metrics
from training.fit import fit_engage_model
from training.labels import LABEL, label_definition
from training.model import EngageModel


@dataclass
class Evaluation:
    """A fitted model and how it and the baselines did on the test period.

    Attributes:
        model: the fitted, calibrated model.
        split: the train / valid / test frames.
        features: the model's inputs.
        metrics: test metrics per method (``model``, ``logreg``, ``rfm``).
        test_scores: each method's scores on the test rows (for plots), by display name.

    """

    model: EngageModel
    split: Split
    features: list[str]
    metrics: dict[str, dict[str, float]]
    test_scores: dict[str, np.ndarray] = field(repr=False)

    @property
    def y_test(self) -> np.ndarray:
        return self.split.test[LABEL].to_numpy()

    @property
    def p_test(self) -> np.ndarray:
        return self.test_scores["LightGBM"]


def fit_and_evaluate(frame: pd.DataFrame, params: Params, model: str) -> Evaluation:
    """Split ``frame`` by as-of time, fit the model, score it and the baselines on test.

    Args:
        frame: labels and features, one row per contact and as-of time
            (``customer_id``, ``event_timestamp``, ``label`` and the features).
        params: the parsed params.yaml.
        model: a model name of :data:`engage.specs.MODEL_SPECS`.

    Raises:
        ValueError: too few as-of times, or a split with a single class.

    """
    tp = params.training
    features = model_feature_names(params)
    split = time_split(frame, params)
    Xtr, ytr = split.train[features], split.train[LABEL].to_numpy()
    Xva, yva = split.valid[features], split.valid[LABEL].to_numpy()
    Xte, yte = split.test[features], split.test[LABEL].to_numpy()
    for name, y in (("train", ytr), ("valid", yva), ("test", yte)):
        if len(np.unique(y)) < 2:
            raise ValueError(f"{model}: the {name} split has a single class; more data needed")
    ranges = split.ranges()
    fitted = fit_engage_model(
        model,
        features,
        Xtr,
        ytr,
        Xva,
        yva,
        tp,
        trained_for=label_definition(params, model),
        training={
            **{f"as_of_{k}": v for k, v in ranges.items()},
            "train_rows": len(Xtr),
            "profile": params.profile or "default",
        },
    )
    p_test = fitted.predict_proba(Xte)
    logreg = logistic_baseline(tp.seed).fit(Xtr.astype(float), ytr)
    p_lr = logreg.predict_proba(Xte.astype(float))[:, 1]
    s_rfm = rfm_score(Xte, model)
    return Evaluation(
        model=fitted,
        split=split,
        features=features,
        metrics={
            "model": probability_metrics(yte, p_test, tp.ece_bins),
            "logreg": probability_metrics(yte, p_lr, tp.ece_bins),
            "rfm": ranking_metrics(yte, s_rfm),
        },
        test_scores={"LightGBM": p_test, "logistic": p_lr, "RFM": s_rfm},
    )
