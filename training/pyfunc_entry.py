"""MLflow models-from-code entry of an engage model (run by ``mlflow.pyfunc.load_model``).

MLflow stores this file with each logged model, together with ``training/model.py``
(shipped as ``engage_stored_model.py`` through ``code_paths``) and the model folder
(``model.json``, plus ``booster.txt`` for LightGBM: the artifact ``model_dir``). Every kind
loads the same way - LightGBM and the baselines served in its place (``logistic``,
``rfm``, ``bgnbd``). Loading runs this code and reads those files: no Python object is
unpickled. ``predict`` returns calibrated probabilities of the positive class, not labels
(what LightGBM's own flavour would give).

The product itself never runs this file: scoring and serving read the model folder with
:func:`training.model.read_model_dir` (see :mod:`training.registry`).
"""

from pathlib import Path

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

try:
    from engage_stored_model import read_model_dir  # the copy shipped with the model
except ImportError:  # MLflow runs this file once while logging, before the copy exists
    from training.model import read_model_dir


class EngagePyfunc(PythonModel):
    """Calibrated probability of the positive class for each input row."""

    def load_context(self, context) -> None:
        self.model = read_model_dir(Path(context.artifacts["model_dir"]))

    def predict(self, context, model_input: pd.DataFrame, params=None):
        return self.model.predict_proba(model_input)


set_model(EngagePyfunc())
