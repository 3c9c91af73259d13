"""MLflow tracking and model registry: experiments, runs, model versions and aliases.

This module owns what is stored in MLflow and where: the tracking store is SQLite
(``<mlruns>/mlflow.db``) with artifacts under ``<mlruns>/artifacts/<experiment>`` (the
plain-folder store is deprecated, and an explicit artifact location keeps artifacts out
of the current directory). A training run holds ``metrics.json`` (every method's test
metrics), ``plots/*.png``, the held-out predictions ``test_predictions.parquet`` (``p``:
the served method's held-out fit, ``p_<method>``: each method's), the held-out LightGBM
fit ``heldout_model/`` and the served model (models-from-code pyfunc whose artifact
``model_dir`` holds ``model.json``, and ``booster.txt`` for LightGBM; a baseline is served
when LightGBM does not beat it). Every other module reads them through the functions here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from engage.config import Paths
from features.catalog import TIMESTAMP
from training.model import EngageModel, read_model_dir, write_model_dir

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT = "model"  # the logged model's name in its run
MODEL_DIR_ARTIFACT = "model_dir"  # the pyfunc artifact holding booster.txt + model.json
HELD_OUT = "test_predictions.parquet"
HELDOUT_MODEL = "heldout_model"  # the held-out LightGBM fit (model.json + booster.txt)
METRICS = "metrics.json"
PLOTS = "plots"
_ENTRY = Path(__file__).with_name("pyfunc_entry.py")
_SHIPPED_MODULE = "engage_stored_model.py"  # training/model.py inside each logged model


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


def log_model(model: EngageModel, example: pd.DataFrame, requirements: list[str]):
    """Log ``model`` in the active run as a models-from-code pyfunc and register it.

    The model goes in as text and JSON (``model.json``, plus ``booster.txt`` for LightGBM)
    with the code that reads them; no Python object is pickled. Returns MLflow's ModelInfo (its
    ``registered_model_version`` is the new version).
    """
    import mlflow
    from mlflow.models import infer_signature

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model_dir(model, Path(tmp) / "model")
        shipped = Path(tmp) / _SHIPPED_MODULE
        shutil.copyfile(Path(__file__).with_name("model.py"), shipped)
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(_ENTRY),
            artifacts={MODEL_DIR_ARTIFACT: str(folder)},
            code_paths=[str(shipped)],
            signature=infer_signature(example, model.predict_proba(example)),
            input_example=example,
            pip_requirements=requirements,
            registered_model_name=model.name,
        )


@dataclass(frozen=True)
class ModelRef:
    """A registered model version and where its files are."""

    name: str
    version: str
    run_id: str
    source: str


def resolve(client, paths: Paths, name: str, alias: str = CHAMPION) -> ModelRef:
    """The version holding ``alias`` of model ``name``.

    Raises:
        LookupError: no version has the alias (train first).

    """
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        raise LookupError(
            f"no {name!r} model with alias {alias!r} in {paths.tracking_uri}: run `engage train`"
        ) from None
    return ModelRef(
        name, str(mv.version), mv.run_id, client.get_model_version_download_uri(name, mv.version)
    )


def _local_model_dir(ref: ModelRef, tmp: Path) -> Path:
    """The folder of ``booster.txt`` and ``model.json`` inside the logged model."""
    import mlflow

    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.source, dst_path=str(tmp)))
    mlmodel = yaml.safe_load((root / "MLmodel").read_text())
    try:
        rel = mlmodel["flavors"]["python_function"]["artifacts"][MODEL_DIR_ARTIFACT]["path"]
    except (KeyError, TypeError):
        raise LookupError(
            f"{ref.name} v{ref.version}: not an engage model (no {MODEL_DIR_ARTIFACT!r} "
            "artifact; models from before the text/JSON format must be retrained)"
        ) from None
    return root / rel


def load_model(paths: Paths, name: str, alias: str = CHAMPION) -> tuple[EngageModel, str]:
    """Load ``models:/<name>@<alias>`` from its text and JSON files; returns (model, version).

    Nothing is unpickled and no artifact code runs (see :mod:`training.model`).

    Raises:
        LookupError: no version has the alias (train first), or it is not an engage model.
        training.model.ModelFormatError: the stored files are invalid.

    """
    client = setup_mlflow(paths)
    ref = resolve(client, paths, name, alias)
    with tempfile.TemporaryDirectory() as tmp:
        model = read_model_dir(_local_model_dir(ref, Path(tmp)))
    return model, ref.version


def _download(client, run_id: str, artifact: str, tmp: str) -> Path:
    from mlflow.exceptions import MlflowException

    try:
        return Path(client.download_artifacts(run_id, artifact, tmp))
    except (MlflowException, OSError):
        raise LookupError(f"run {run_id} has no {artifact} artifact") from None


def held_out_predictions(paths: Paths, name: str) -> tuple[pd.DataFrame, str]:
    """The champion's predictions on its held-out as-of times, and its version.

    Columns: ``customer_id``, ``event_timestamp`` (the as-of time), ``label``, ``p``.

    Raises:
        LookupError: no champion, or its run has no held-out predictions.

    """
    client = setup_mlflow(paths)
    ref = resolve(client, paths, name)
    with tempfile.TemporaryDirectory() as tmp:
        held = pd.read_parquet(_download(client, ref.run_id, HELD_OUT, tmp))
    held[TIMESTAMP] = pd.to_datetime(held[TIMESTAMP], utc=True)
    return held, ref.version


@dataclass
class ChampionRun:
    """A champion's version, its training run's metrics and tags, and its plots (PNG)."""

    name: str
    version: str
    metrics: dict[str, float]
    tags: dict[str, str]
    plots: dict[str, bytes]
    created: pd.Timestamp


def champion_runs(paths: Paths, names: tuple[str, ...]) -> list[ChampionRun]:
    """The training runs of the champions among ``names`` (models without one skipped)."""
    client = setup_mlflow(paths)
    out = []
    for name in names:
        try:
            ref = resolve(client, paths, name)
        except LookupError:
            continue
        run = client.get_run(ref.run_id)
        plots: dict[str, bytes] = {}
        with tempfile.TemporaryDirectory() as tmp:
            try:
                folder = _download(client, ref.run_id, PLOTS, tmp)
            except LookupError:
                folder = None
            for f in sorted(folder.glob("*.png")) if folder else ():
                plots[f.name] = f.read_bytes()
        out.append(
            ChampionRun(
                name=name,
                version=ref.version,
                metrics=dict(run.data.metrics),
                tags=dict(run.data.tags),
                plots=plots,
                created=pd.Timestamp(run.info.start_time, unit="ms", tz="UTC"),
            )
        )
    return out


@dataclass(frozen=True)
class GateDecision:
    alias: str
    reason: str
    new_score: float
    champion_score: float | None
    champion_version: str | None
