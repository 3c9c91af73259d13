"""The MLflow pyfunc flavour of :class:`training.model.EngageModel`.

LightGBM's own flavour would make ``predict`` return class labels; this wrapper returns
calibrated probabilities, and ``unwrap_python_model().model`` gives back the
EngageModel (booster, calibrator, feature list) for explanations.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd

from training.model import EngageModel


class EngagePyfunc(mlflow.pyfunc.PythonModel):
    """Calibrated probability of the positive class for each input row."""

    def __init__(self, model: EngageModel) -> None:
        self.model = model

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return self.model.predict_proba(model_input)
