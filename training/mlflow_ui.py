"""How training looks in MLflow's UI: names, descriptions, datasets, quiet registration.

- **Experiments** carry a description (the ``mlflow.note.content`` tag, shown above the
  runs) and ``mlflow.experimentKind = custom_model_development``: without it MLflow 3's
  UI may infer a GenAI experiment and open the traces view; with it the experiment opens
  on the classic runs table (metrics, parameters, artifacts).
- **Runs** are named after the model and the data (:func:`run_name`:
  ``churn-20251231-2500c`` = model, last as-of date of the training frame, contacts),
  not MLflow's random ``gentle-owl-42``.
- **Datasets**: the train, validation and test frames are logged as run inputs
  (:func:`log_datasets`), each with a name, a digest, its schema and its source (the
  snapshot folder), so two runs can be told apart by their data in the UI.
- **Registration** goes through the client API (:func:`register_version`): MLflow's
  fluent ``registered_model_name=`` prints "Successfully registered model" and "Created
  version" on stderr for every training.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from engage.specs import HAZARD_NAMES
from features.catalog import ENTITY_KEY, TIMESTAMP

NOTE_TAG = "mlflow.note.content"
KIND_TAG = "mlflow.experimentKind"
# The values MLflow 3's UI knows (mlflow/server/js, ExperimentKind): this one is the
# "machine learning" kind, whose page is the runs table rather than GenAI traces.
CLASSIC_KIND = "custom_model_development"

DESCRIPTIONS = {
    "churn": (
        "**churn**: P(a recent buyer stops buying and engaging within the label horizon). "
        "One run per `engage train`: LightGBM + calibration against an RFM heuristic and a "
        "logistic regression on the same held-out as-of times; the promotion gate gives the "
        "`champion` alias. Runs are named model-<last as-of date>-<contacts>c."
    ),
    "appetence": (
        "**appetence**: P(at least one purchase within the label horizon), for every known "
        "contact. One run per `engage train`: LightGBM + calibration against an RFM heuristic "
        "and a logistic regression on the same held-out as-of times; the promotion gate gives "
        "the `champion` alias. Runs are named model-<last as-of date>-<contacts>c."
    ),
    **{
        registered: (
            f"**{registered}**: the time-to-event (hazard) model of the {question} question: "
            "one LightGBM on person-period rows answers every horizon up to H_max. One run per "
            "`engage train`: metrics per horizon (roc_auc_30d, ...), c-index and integrated "
            "Brier score, against the baselines at each horizon on the same held-out as-of "
            "times; the gate on hazard.primary_metric gives the `champion` alias."
        )
        for question, registered in HAZARD_NAMES.items()
    },
    "monitoring": (
        "**monitoring**: one run per realised outcome of a past scoring run (`engage "
        "monitor`): the quality the champions had once their label windows closed."
    ),
}


DATASET_NOISE = (
    r"The specified dataset source can be interpreted in multiple ways",
    r"Hint: Inferred schema contains integer column",
)


def experiment_tags(name: str) -> dict[str, str]:
    """The tags an experiment of this project carries (description and kind)."""
    note = DESCRIPTIONS.get(name, f"**{name}**: written by engage.")
    return {NOTE_TAG: note, KIND_TAG: CLASSIC_KIND}


def tag_experiment(client, experiment_id: str, name: str) -> None:
    """Give an experiment its description and kind where they are missing.

    An experiment created before these tags existed gets them; a description a user
    edited in the UI is kept.
    """
    tags = client.get_experiment(experiment_id).tags or {}
    for key, value in experiment_tags(name).items():
        if key not in tags:
            client.set_experiment_tag(experiment_id, key, value)


def run_name(model: str, frame: pd.DataFrame) -> str:
    """``<model>-<last as-of date>-<contacts>c``, e.g. ``churn-20251231-2500c``."""
    last = pd.Timestamp(frame[TIMESTAMP].max())
    contacts = frame[ENTITY_KEY].nunique()
    return f"{model}-{last:%Y%m%d}-{contacts}c"


def log_datasets(frames: dict[str, pd.DataFrame], model: str, source: Path, target: str) -> None:
    """Log each frame as an input dataset of the active run.

    Args:
        frames: ``{"train": ..., "validation": ..., "test": ...}`` (the context of each).
        model: the model name (datasets are named ``<model>-<context>``).
        source: where the rows come from (the snapshot folder).
        target: the label column.

    """
    import mlflow

    for context, frame in frames.items():
        with warnings.catch_warnings():
            # MLflow registers two classes for local paths ("" and "file" schemes) and
            # warns that a path matches both; and it hints that integer columns cannot
            # hold nulls at *model* inference, which does not concern a dataset record.
            for message in DATASET_NOISE:
                warnings.filterwarnings("ignore", message=message, category=UserWarning)
            dataset = mlflow.data.from_pandas(
                frame, source=str(source), name=f"{model}-{context}", targets=target
            )
            mlflow.log_input(dataset, context=context)


def register_version(client, name: str, info) -> str:
    """Register the logged model ``info`` as a new version of ``name``; returns the version.

    Through the client API, so nothing is printed (the fluent API prints to stderr).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    version = client.create_model_version(
        name, source=info.model_uri, run_id=info.run_id, model_id=info.model_id
    )
    return str(version.version)
