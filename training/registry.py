"""MLflow tracking and model registry: experiments, runs, versions and aliases.

The tracking store is SQLite (``<mlruns>/mlflow.db``) with artifacts under
``<mlruns>/artifacts/<experiment>``: the plain-folder store is deprecated, and an explicit
artifact location keeps artifacts out of the current directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from engage.config import Paths

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

CHAMPION = "champion"
CHALLENGER = "challenger"


def setup_mlflow(paths: Paths):
    """Point MLflow at the project's store; returns an MlflowClient."""
    import mlflow
    from mlflow import MlflowClient

    paths.mlruns_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(paths.tracking_uri)
    mlflow.set_registry_uri(paths.tracking_uri)
    return MlflowClient(tracking_uri=paths.tracking_uri, registry_uri=paths.tracking_uri)


def experiment_id(client, paths: Paths, name: str) -> str:
    """The experiment ``name``, created with its artifacts under the mlruns folder."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = (paths.mlruns_dir / "artifacts" / name).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def model_uri(name: str, alias: str = CHAMPION) -> str:
    """Registry URI of a model alias, the only form serving loads."""
    return f"models:/{name}@{alias}"


def alias_version(client, name: str, alias: str = CHAMPION) -> str | None:
    """The version holding ``alias``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def load_model(paths: Paths, name: str, alias: str = CHAMPION):
    """Load ``models:/<name>@<alias>``; returns (EngageModel, version).

    Raises:
        LookupError: no version has the alias (train first).
    """
    import mlflow.pyfunc

    client = setup_mlflow(paths)
    version = alias_version(client, name, alias)
    if version is None:
        raise LookupError(
            f"no {name!r} model with alias {alias!r} in {paths.tracking_uri}: run `engage train`"
        )
    pyfunc = mlflow.pyfunc.load_model(model_uri(name, alias))
    return pyfunc.unwrap_python_model().model, version


@dataclass(frozen=True)
class GateDecision:
    alias: str
    reason: str
    new_score: float
    champion_score: float | None
    champion_version: str | None
