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

Loading is **read-only**: :func:`load_model` and :func:`champion_version` read the
registry tables of ``mlflow.db`` through a read-only SQLite connection (``mode=ro``) and
the model files in place, without MLflow's store initialisation, which would create the
folder, the database and its tables, or migrate an older schema. A missing store, a file
that is not a SQLite database, a store without registry tables or without the alias is a
:class:`RegistryUnavailable` error naming the path and the command to run. Writing
(:func:`setup_mlflow`, :func:`log_model`) is for training only.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pandas as pd
import yaml

from engage.config import HazardParams, Paths
from engage.readonly import readonly_sqlite
from engage.specs import hazard_name
from features.catalog import TIMESTAMP
from training.hazard import HazardModel, horizon_columns, read_hazard_model, write_hazard_model
from training.mlflow_ui import experiment_tags, register_version, tag_experiment
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
MLFLOW_DB = "mlflow.db"
# What the read-only loader needs of MLflow's schema (present since MLflow 2.3).
REGISTRY_TABLES = ("registered_models", "model_versions", "registered_model_aliases")
_ENTRY = Path(__file__).with_name("pyfunc_entry.py")
_HAZARD_ENTRY = Path(__file__).with_name("hazard_pyfunc_entry.py")
_SHIPPED_MODULE = "engage_stored_model.py"  # training/model.py inside each logged model


# The columns of MLflow's tables that hold absolute artifact locations (MLflow 3).
_LOCATIONS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
)


def artifact_root(paths: Paths) -> str:
    """The URI of the artifact folder, ``file://<mlruns>/artifacts``."""
    return (paths.mlruns_dir / "artifacts").resolve().as_uri()


def relocate_artifacts(paths: Paths) -> dict[str, str]:
    """Make the artifact locations recorded in ``mlflow.db`` follow the mlruns folder.

    MLflow records absolute artifact URIs. After a data dir (and its ``mlruns``) is
    copied or moved, they still name the old place: training in the copy would write
    into the original's folder, and loading would fail once the original is gone. Each
    experiment of this project has its artifacts at ``<mlruns>/artifacts/<name>``; when
    that recorded prefix is another folder, every location under it (experiments,
    runs, logged models, model versions) is rewritten to the current folder, in one
    transaction. A read-only store is left as it is (the loaders then map the paths,
    see :func:`local_artifact_uri`).

    Returns:
        ``{old prefix: new prefix}`` of what was rewritten (empty when nothing moved).

    """
    db = paths.mlruns_dir / "mlflow.db"
    if not db.exists():
        return {}
    root = artifact_root(paths) + "/"
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "experiments" not in tables:
            return {}
        moves = {}
        for name, location in conn.execute("SELECT name, artifact_location FROM experiments"):
            suffix = f"/artifacts/{name}"
            if (
                isinstance(location, str)
                and location.startswith("file://")
                and location.endswith(suffix)
                and location != root + name
            ):
                moves[location[: -len(name)]] = root
        if not moves:
            return {}
        conn.execute("BEGIN IMMEDIATE")
        try:
            for old, new in moves.items():
                for table, column in _LOCATIONS:
                    if table not in tables:
                        continue
                    conn.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                        f"WHERE substr({column}, 1, ?) = ?",
                        (new, len(old) + 1, len(old), old),
                    )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return moves
    except sqlite3.OperationalError as err:
        if "readonly" in str(err) or "read-only" in str(err):
            return {}
        raise
    finally:
        conn.close()


def local_artifact_uri(paths: Paths, uri: str) -> str:
    """``uri``, or the same artifact under the current mlruns folder if ``uri`` is gone.

    A ``file://.../artifacts/<rest>`` location recorded in another mlruns folder (a data
    dir copied or moved, whose store could not be rewritten) is looked up as
    ``<mlruns>/artifacts/<rest>``. Other URIs are returned unchanged.
    """
    parts = urlsplit(uri)
    if parts.scheme != "file":
        return uri
    recorded = Path(unquote(parts.path))
    if recorded.exists():
        return uri
    # "artifacts" may appear again further down (a logged model's own folder): try each
    # occurrence from the left, i.e. the artifact root first.
    for i, part in enumerate(recorded.parts):
        if part == "artifacts":
            local = (paths.mlruns_dir / "artifacts").joinpath(*recorded.parts[i + 1 :])
            if local.exists():
                return local.resolve().as_uri()
    return uri


def setup_mlflow(paths: Paths):
    """Point MLflow at the project's store; returns an MlflowClient.

    Artifact locations recorded in another folder (a copied or moved data dir) are
    rewritten to this one first (:func:`relocate_artifacts`).
    """
    import mlflow
    from mlflow import MlflowClient

    paths.mlruns_dir.mkdir(parents=True, exist_ok=True)
    relocate_artifacts(paths)
    mlflow.set_tracking_uri(paths.tracking_uri)
    mlflow.set_registry_uri(paths.tracking_uri)
    return MlflowClient(tracking_uri=paths.tracking_uri, registry_uri=paths.tracking_uri)


def experiment_id(client, paths: Paths, name: str) -> str:
    """The experiment ``name``, created with its artifacts under the mlruns folder."""
    exp = client.get_experiment_by_name(name)
    location = f"{artifact_root(paths)}/{name}"
    if exp is not None:
        if exp.artifact_location != location:
            # setup_mlflow relocates a copied store; a location elsewhere would make the
            # new run write into another data dir's folder.
            raise ValueError(
                f"MLflow experiment {name!r} stores its artifacts in {exp.artifact_location}, "
                f"not under this data dir's {location}: the store at {paths.tracking_uri} "
                "belongs to another folder. Point ENGAGE_DATA_DIR at that folder, or "
                "delete this mlflow.db to start a new registry here"
            )
        tag_experiment(client, exp.experiment_id, name)
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=location, tags=experiment_tags(name))


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
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model_dir(model, Path(tmp) / "model")
        shipped = Path(tmp) / _SHIPPED_MODULE
        shutil.copyfile(Path(__file__).with_name("model.py"), shipped)
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(_ENTRY),
            artifacts={MODEL_DIR_ARTIFACT: str(folder)},
            code_paths=[str(shipped)],
            signature=infer_signature(example, model.predict_proba(example)),
            input_example=example,
            pip_requirements=requirements,
        )
    # Registered through the client: the fluent registered_model_name= prints to stderr.
    info.registered_model_version = register_version(
        MlflowClient(mlflow.get_tracking_uri(), mlflow.get_registry_uri()), model.name, info
    )
    return info


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
    source = client.get_model_version_download_uri(name, mv.version)
    if source.startswith("models:/") and mv.model_id:
        # The logged model's folder: recorded as an absolute path, mapped if it moved.
        source = client.get_logged_model(mv.model_id).artifact_location
    return ModelRef(name, str(mv.version), mv.run_id, local_artifact_uri(paths, source))


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


class RegistryUnavailable(LookupError):
    """The MLflow store cannot answer a read: missing, not a database, or incomplete.

    The message names the path and what to run (``engage train``).
    """


def mlflow_db(paths: Paths) -> Path:
    """The SQLite file of the MLflow store."""
    return paths.mlruns_dir / MLFLOW_DB


def open_registry(paths: Paths) -> sqlite3.Connection:
    """A read-only connection to the MLflow store, checked for the registry tables.

    Nothing is created or migrated: MLflow's own client would create the database and
    its tables on first use, which is how an empty store used to appear at start-up.

    Raises:
        RegistryUnavailable: no database file, not a SQLite database, or no registry
            tables (the message names the path and the command to run).

    """
    db = mlflow_db(paths)
    try:
        con = readonly_sqlite(db)
    except FileNotFoundError:
        raise RegistryUnavailable(
            f"no MLflow store at {db}: train the models first (`engage train` or `engage run`)"
        ) from None
    except sqlite3.Error as err:
        raise RegistryUnavailable(f"MLflow store {db}: cannot open it read-only ({err})") from None
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as err:
        con.close()
        raise RegistryUnavailable(
            f"MLflow store {db} is not a readable SQLite database ({err}): restore it from a "
            "backup, or train again into an empty store (`engage train`)"
        ) from None
    missing = [t for t in REGISTRY_TABLES if t not in tables]
    if missing:
        con.close()
        raise RegistryUnavailable(
            f"MLflow store {db} has no model registry (tables {missing} missing): train the "
            "models first (`engage train`)"
        )
    return con


def _columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in con.execute(f"PRAGMA table_info({table})")}


class NoChampion(RegistryUnavailable):
    """The store is readable but no version of the model holds the alias (never trained)."""


def champion_ref(paths: Paths, name: str, alias: str = CHAMPION) -> ModelRef:
    """The version holding ``alias`` of model ``name``, read without writing anything.

    ``source`` is where the logged model's files are (MLflow's ``storage_location``).

    Raises:
        RegistryUnavailable: the store cannot be read.
        NoChampion: no version holds the alias.

    """
    con = open_registry(paths)
    try:
        return _champion_ref(con, paths, name, alias)
    except sqlite3.DatabaseError as err:
        raise RegistryUnavailable(
            f"MLflow store {mlflow_db(paths)}: cannot read the registry ({err})"
        ) from None
    finally:
        con.close()


def _champion_ref(con: sqlite3.Connection, paths: Paths, name: str, alias: str) -> ModelRef:
    # Multi-workspace stores key rows by workspace too: prefer the default one.
    ws = "workspace" in _columns(con, "registered_model_aliases")
    order = " ORDER BY (a.workspace = 'default') DESC" if ws else ""
    join = " AND v.workspace = a.workspace" if ws else ""
    stored = "storage_location" in _columns(con, "model_versions")
    location = "v.storage_location" if stored else "NULL"
    row = con.execute(
        f"SELECT v.version, v.run_id, v.source, {location}, v.status "
        "FROM registered_model_aliases a JOIN model_versions v "
        f"ON v.name = a.name AND v.version = a.version{join} "
        f"WHERE a.name = ? AND a.alias = ?{order} LIMIT 1",
        (name, alias),
    ).fetchone()
    if row is None:
        raise NoChampion(
            f"no {name!r} model with alias {alias!r} in {mlflow_db(paths)}: run `engage train`"
        )
    version, run_id, source, storage, status = row
    if status not in (None, "READY"):
        raise RegistryUnavailable(
            f"{name} v{version} (alias {alias!r}) is {status}, not READY, in {mlflow_db(paths)}"
        )
    return ModelRef(name, str(version), run_id or "", storage or source or "")


def champion_version(paths: Paths, name: str, alias: str = CHAMPION) -> str:
    """The version holding ``alias`` (read-only; see :func:`champion_ref`)."""
    return champion_ref(paths, name, alias).version


def local_model_dir(ref: ModelRef) -> Path:
    """The folder of ``booster.txt`` and ``model.json`` of a model stored on local disk.

    Raises:
        RegistryUnavailable: the logged model's files are gone.
        LookupError: the logged model is not an engage model.

    """
    parts = urlsplit(ref.source)
    root = Path(unquote(parts.path))
    mlmodel = root / "MLmodel"
    if not mlmodel.is_file():
        raise RegistryUnavailable(
            f"{ref.name} v{ref.version}: its model files are missing ({mlmodel} not found); "
            "the artifact store was moved or deleted: train again (`engage train`)"
        )
    try:
        doc = yaml.safe_load(mlmodel.read_text())
        rel = doc["flavors"]["python_function"]["artifacts"][MODEL_DIR_ARTIFACT]["path"]
    except (yaml.YAMLError, KeyError, TypeError):
        raise LookupError(
            f"{ref.name} v{ref.version}: not an engage model (no {MODEL_DIR_ARTIFACT!r} "
            f"artifact in {mlmodel}; models from before the text/JSON format must be retrained)"
        ) from None
    return root / rel


def load_model(paths: Paths, name: str, alias: str = CHAMPION) -> tuple[EngageModel, str]:
    """Load ``models:/<name>@<alias>`` from its text and JSON files; returns (model, version).

    Nothing is unpickled and no artifact code runs (see :mod:`training.model`), and the
    MLflow store is only read (see the module docstring): a missing or broken store is
    reported, never created. Models in a local artifact store (``file:``, what this
    project writes) are read in place; another scheme is downloaded by MLflow's artifact
    client, which does not touch the tracking store.

    Raises:
        LookupError: no version has the alias (train first), it is not an engage model,
            or the store cannot be read (:class:`RegistryUnavailable`).
        training.model.ModelFormatError: the stored files are invalid.

    """
    ref = champion_ref(paths, name, alias)
    if urlsplit(ref.source).scheme in ("", "file"):
        # A copied or moved data dir whose store was not rewritten (read-only, or the
        # service, which never writes): the same files under this mlruns folder.
        ref = replace(ref, source=local_artifact_uri(paths, ref.source))
        return read_model_dir(local_model_dir(ref)), ref.version
    with tempfile.TemporaryDirectory() as tmp:
        model = read_model_dir(_local_model_dir(ref, Path(tmp)))
    return model, ref.version


def _download(client, run_id: str, artifact: str, tmp: str, paths: Paths) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        # The run's folder as recorded, or under this mlruns folder if it moved.
        root = local_artifact_uri(paths, client.get_run(run_id).info.artifact_uri)
        return Path(
            mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/{artifact}", dst_path=tmp)
        )
    except (MlflowException, OSError):
        raise LookupError(f"run {run_id} has no {artifact} artifact") from None


def held_out_predictions(paths: Paths, name: str) -> tuple[pd.DataFrame, str]:
    """The champion's predictions on its held-out as-of times, and its version.

    Columns: ``customer_id``, ``event_timestamp`` (the as-of time), ``label``, ``p``.

    Raises:
        LookupError: no champion, or its run has no held-out predictions, or no readable
            MLflow store (nothing is created in its place).

    """
    open_registry(paths).close()
    client = setup_mlflow(paths)
    ref = resolve(client, paths, name)
    with tempfile.TemporaryDirectory() as tmp:
        held = pd.read_parquet(_download(client, ref.run_id, HELD_OUT, tmp, paths))
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
    """The training runs of the champions among ``names`` (models without one skipped).

    Without an MLflow store there is no champion: nothing is created in its place.

    Raises:
        RegistryUnavailable: the store exists but cannot be read.

    """
    if not mlflow_db(paths).exists():
        return []
    open_registry(paths).close()
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
                folder = _download(client, ref.run_id, PLOTS, tmp, paths)
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


def version_ref(client, paths: Paths, name: str, version: str) -> ModelRef:
    """Model version ``version`` of ``name`` (any alias or none).

    Raises:
        LookupError: no such version in the registry.

    """
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException:
        raise LookupError(
            f"no version {version} of model {name!r} in {paths.tracking_uri}"
        ) from None
    return ModelRef(
        name, str(mv.version), mv.run_id, client.get_model_version_download_uri(name, mv.version)
    )


def load_version(paths: Paths, name: str, version: str) -> EngageModel:
    """Load version ``version`` of model ``name`` from its text and JSON files.

    Used to read what an earlier version was trained for (a scoring run names the
    versions it used). Nothing is unpickled.

    Raises:
        LookupError: no such version, or it is not an engage model.
        training.model.ModelFormatError: the stored files are invalid.

    """
    client = setup_mlflow(paths)
    ref = version_ref(client, paths, name, version)
    with tempfile.TemporaryDirectory() as tmp:
        return read_model_dir(_local_model_dir(ref, Path(tmp)))


@dataclass(frozen=True)
class VersionRun:
    """A model version, its training run's metrics and tags, and its MLflow model id."""

    name: str
    version: str
    run_id: str
    metrics: dict[str, float]
    tags: dict[str, str]
    model_id: str | None


def version_run(paths: Paths, name: str, version: str) -> VersionRun:
    """The training run of version ``version`` of ``name`` (metrics, tags, model id).

    Raises:
        LookupError: no such version.

    """
    client = setup_mlflow(paths)
    ref = version_ref(client, paths, name, version)
    run = client.get_run(ref.run_id)
    mv = client.get_model_version(name, ref.version)
    return VersionRun(
        name=name,
        version=ref.version,
        run_id=ref.run_id,
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
        model_id=getattr(mv, "model_id", None),
    )


def latest_version(paths: Paths, name: str) -> str | None:
    """The highest registered version of ``name`` (whatever its alias), or None."""
    from mlflow.exceptions import MlflowException

    client = setup_mlflow(paths)
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    return str(max(int(v.version) for v in versions)) if versions else None


# ------------------------------------------------------------------------ hazard models


class HazardMismatchError(ValueError):
    """A hazard model's period, ``H_max`` or horizons contradict the parameters."""


def hazard_conflicts(model: HazardModel, hp: HazardParams) -> list[str]:
    """How the ``hazard`` parameters contradict what hazard ``model`` was trained for.

    One line per value, naming the parameter and both values; empty when they agree.
    """
    out = []
    if model.period_days != hp.period_days:
        out.append(
            f"hazard.period_days: the model has {model.period_days}-day periods, the "
            f"parameters {hp.period_days}"
        )
    if model.h_max_days != hp.period_days * hp.h_max_periods:
        out.append(
            f"H_max: the model follows {model.periods} periods ({model.h_max_days} days), the "
            f"parameters hazard.h_max_periods={hp.h_max_periods} "
            f"({hp.period_days * hp.h_max_periods} days)"
        )
    if list(model.horizons_days) != list(hp.horizons_days):
        out.append(
            f"hazard.horizons_days: the model was trained for {list(model.horizons_days)}, "
            f"the parameters ask {list(hp.horizons_days)}"
        )
    return out


def log_hazard_model(model: HazardModel, name: str, example: pd.DataFrame, requirements: list[str]):
    """Log hazard ``model`` in the active run as a models-from-code pyfunc; register it.

    As :func:`log_model`: text and JSON files (``model.json``, the boosters' LightGBM
    text) read by code, nothing pickled; the signature maps the feature columns to the
    horizon columns of :func:`training.hazard.horizon_columns`. Registered under ``name``
    (``appetence_hazard`` / ``churn_hazard``). Returns MLflow's ModelInfo.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_hazard_model(model, Path(tmp) / "model")
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(_HAZARD_ENTRY),
            artifacts={MODEL_DIR_ARTIFACT: str(folder)},
            signature=infer_signature(example, horizon_columns(model, example)),
            input_example=example,
            pip_requirements=requirements,
        )
    info.registered_model_version = register_version(
        MlflowClient(mlflow.get_tracking_uri(), mlflow.get_registry_uri()), name, info
    )
    return info


def load_hazard_model(paths: Paths, model: str, alias: str = CHAMPION) -> tuple[HazardModel, str]:
    """The hazard model of question ``model`` holding ``alias``, and its version.

    Reads ``models:/<model>_hazard@<alias>`` from its text and JSON files (as
    :func:`load_model`: nothing unpickled, the store only read) and checks it against
    ``paths.params.hazard``.

    Args:
        paths: resolved locations; their ``params`` are the parameters checked.
        model: ``appetence`` or ``churn`` (the question, not the registry name).
        alias: ``champion`` or ``challenger``.

    Returns:
        ``(training.hazard.HazardModel, version)``.

    Raises:
        ValueError: an unknown ``model``.
        NoChampion: no version of the hazard model holds ``alias``.
        RegistryUnavailable: the store cannot be read.
        HazardMismatchError: its period, ``H_max`` or horizons contradict the parameters
            (each named with both values).
        training.model.ModelFormatError: the stored files are invalid, or hold the
            model of another question.

    """
    hazard, version = read_hazard_version(paths, model, alias)
    problems = hazard_conflicts(hazard, paths.params.hazard)
    if problems:
        name = hazard_name(model)
        raise HazardMismatchError(
            f"{name} v{version} was trained for other parameters:\n  "
            + "\n  ".join(problems)
            + f"\nretrain (`engage train --model {name}`) or use the parameters it was "
            "trained with"
        )
    return hazard, version


def read_hazard_version(paths: Paths, model: str, alias: str = CHAMPION) -> tuple[HazardModel, str]:
    """:func:`load_hazard_model` without the check against the parameters.

    For the promotion gate, which replaces a champion that answers another question
    rather than failing on it.
    """
    from training.model import ModelFormatError

    name = hazard_name(model)
    ref = champion_ref(paths, name, alias)
    if urlsplit(ref.source).scheme in ("", "file"):
        ref = replace(ref, source=local_artifact_uri(paths, ref.source))
        hazard = read_hazard_model(local_model_dir(ref))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            hazard = read_hazard_model(_local_model_dir(ref, Path(tmp)))
    if hazard.name != model:
        raise ModelFormatError(
            f"{name} v{ref.version}: holds the {hazard.name!r} hazard model, not {model!r}"
        )
    return hazard, ref.version
