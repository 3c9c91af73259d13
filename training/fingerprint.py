"""What a model is trained from, as fingerprints: the events and the training parameters.

``engage train`` tags each run with both (``data_fingerprint``, ``params_fingerprint``);
``engage retrain`` compares them with the current ones and trains only when one changed,
so retraining on unchanged data does not register a new version of the same model.
"""

from __future__ import annotations

import hashlib
import json

from engage.config import Params

DATA_TAG = "data_fingerprint"
PARAMS_TAG = "params_fingerprint"
# Where the files live does not change a model (data.dir, file names, ENGAGE_DATA_DIR);
# what is read from them and how it is learnt does.
_LOCATIONS = {"dir", "events", "customers", "quarantine"}


def params_fingerprint(params: Params) -> str:
    """A hash of every parameter that changes what training learns.

    The sections ``data`` (event vocabulary, conversion event; not the file locations),
    ``features``, ``feast``, ``labels`` and ``training``. The scoring, index, segment,
    value, serving, simulation and monitoring parameters do not change a model.
    """
    doc = {
        "data": {k: v for k, v in params.data.model_dump().items() if k not in _LOCATIONS},
        "features": params.features.model_dump(),
        "feast": params.feast.model_dump(),
        "labels": params.labels.model_dump(),
        "training": params.training.model_dump(),
    }
    features = dict(doc["features"])
    features.pop("dir", None)
    doc["features"] = features
    text = json.dumps(doc, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def hazard_params_fingerprint(params: Params) -> str:
    """:func:`params_fingerprint` plus the ``hazard`` section (not its ``train`` switch).

    The hazard models are trained from the same rows and LightGBM settings as the fixed
    models, and from the period, ``H_max``, horizons, row cap and primary metric.
    """
    hazard = params.hazard.model_dump(exclude={"train"})
    text = json.dumps(
        {"base": params_fingerprint(params), "hazard": hazard}, sort_keys=True, default=list
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]
