"""MLflow models-from-code entry of a hazard model (run by ``mlflow.pyfunc.load_model``).

MLflow stores this file with each logged hazard model, next to the model folder
(``model.json`` and the LightGBM text boosters: the artifact ``model_dir``). Loading runs
this code, which reads those files with :func:`training.hazard.read_hazard_model` from the
installed engage project: no Python object is unpickled. ``predict`` returns the columns
of :func:`training.hazard.horizon_columns`, each naming its horizon (``p_purchase_30d``,
``p_churn_90d``, ``days_to_purchase``, ``expected_purchases_30d``).

The product never runs this file: scoring and serving read the folder through
:func:`training.registry.load_hazard_model`.
"""

from pathlib import Path

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from training.hazard import horizon_columns, read_hazard_model


class HazardPyfunc(PythonModel):
    """Probabilities at the stored horizons, the median time and expected counts per row."""

    def load_context(self, context) -> None:
        self.model = read_hazard_model(Path(context.artifacts["model_dir"]))

    def predict(self, context, model_input: pd.DataFrame, params=None):
        return horizon_columns(self.model, model_input)


set_model(HazardPyfunc())
