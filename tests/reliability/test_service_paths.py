"""The service reads the stores training wrote, in both layouts, and creates none.

The probe finding: with the default layout, ``engage serve`` set ``$ENGAGE_DATA_DIR``,
which moved the MLflow store to ``data/mlruns`` for the service, while ``engage train``
had written ``mlruns/``: the service looked for its champions in a new empty database.
"""

from __future__ import annotations

import sqlite3

import pytest
import yaml

from engage.config import DATA_DIR_ENV, MLRUNS_DIR_ENV, load_params, resolve_paths


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def clean_env(monkeypatch):
    for var in (DATA_DIR_ENV, MLRUNS_DIR_ENV, "ENGAGE_PARAMS", "ENGAGE_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_the_layout_rule(clean_env, tmp_path):
    params = load_params()
    default = resolve_paths(params, root=tmp_path)
    assert default.data_dir == tmp_path / "data"
    assert default.mlruns_dir == tmp_path / "mlruns"  # beside data/, not inside

    clean_env.setenv(DATA_DIR_ENV, str(tmp_path / "elsewhere"))
    moved = resolve_paths(params, root=tmp_path)
    assert moved.data_dir == tmp_path / "elsewhere"
    assert moved.mlruns_dir == tmp_path / "elsewhere" / "mlruns"

    clean_env.setenv(MLRUNS_DIR_ENV, str(tmp_path / "registry"))
    named = resolve_paths(params, root=tmp_path)
    assert named.data_dir == tmp_path / "elsewhere"
    assert named.mlruns_dir == tmp_path / "registry"


@pytest.mark.parametrize("layout", ["default", "data_dir"])
def test_serve_gives_the_service_the_stores_the_command_resolved(clean_env, tmp_path, layout):
    from cli.app import Context
    from cli.serve import serve_env

    root = tmp_path / "project"
    root.mkdir()
    if layout == "data_dir":
        clean_env.setenv(DATA_DIR_ENV, str(tmp_path / "mydata"))
    params = load_params(overrides=("serving.max_ids=7",))
    cli_paths = resolve_paths(params, root=root)
    env = serve_env(Context(params, cli_paths), workers=2)

    # The service process: only the environment the command gave it.
    for var in (DATA_DIR_ENV, MLRUNS_DIR_ENV, "ENGAGE_PARAMS", "ENGAGE_PROFILE"):
        clean_env.delenv(var, raising=False)
        if env.get(var) is not None:
            clean_env.setenv(var, env[var])
    service_params = load_params()
    service_paths = resolve_paths(service_params, root=root)
    assert service_paths.data_dir == cli_paths.data_dir
    assert service_paths.mlruns_dir == cli_paths.mlruns_dir
    assert service_paths.tracking_uri == cli_paths.tracking_uri
    assert service_params.serving.max_ids == 7  # the command's parameters, not the defaults
    if layout == "default":
        assert cli_paths.mlruns_dir == root / "mlruns"
    else:
        assert cli_paths.mlruns_dir == tmp_path / "mydata" / "mlruns"
    doc = yaml.safe_load(open(env["ENGAGE_PARAMS"]).read())
    assert doc["serving"]["max_ids"] == 7


def test_reading_a_missing_registry_creates_nothing(clean_env, tmp_path):
    from training.registry import RegistryUnavailable, champion_ref, load_model

    clean_env.setenv(DATA_DIR_ENV, str(tmp_path))
    paths = resolve_paths(load_params())
    before = _tree(tmp_path)
    for read in (lambda: champion_ref(paths, "churn"), lambda: load_model(paths, "churn")):
        with pytest.raises(
            RegistryUnavailable, match=r"no MLflow store at .*mlflow\.db.*engage train"
        ):
            read()
    assert _tree(tmp_path) == before  # no mlruns folder, no empty mlflow.db


def test_a_broken_registry_is_named_not_replaced(clean_env, tmp_path):
    from training.registry import RegistryUnavailable, champion_ref

    clean_env.setenv(DATA_DIR_ENV, str(tmp_path))
    paths = resolve_paths(load_params())
    paths.mlruns_dir.mkdir()
    db = paths.mlruns_dir / "mlflow.db"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RegistryUnavailable, match="not a readable SQLite database"):
        champion_ref(paths, "churn")
    assert db.read_bytes() == b"this is not a database" * 100

    db.unlink()
    sqlite3.connect(db).execute("CREATE TABLE unrelated (x)").connection.close()
    with pytest.raises(RegistryUnavailable, match=r"no model registry \(tables .* missing\)"):
        champion_ref(paths, "churn")


def _registry(db, rows, aliases, workspace=True):
    # The subset of MLflow's registry schema the read-only loader reads.
    ws = ", workspace TEXT DEFAULT 'default'" if workspace else ""
    con = sqlite3.connect(db)
    con.execute(f"CREATE TABLE registered_models (name TEXT{ws})")
    con.execute(
        "CREATE TABLE model_versions (name TEXT, version INTEGER, run_id TEXT, source TEXT, "
        f"storage_location TEXT, status TEXT{ws})"
    )
    con.execute(
        f"CREATE TABLE registered_model_aliases (alias TEXT, version INTEGER, name TEXT{ws})"
    )
    con.executemany(
        "INSERT INTO model_versions (name, version, run_id, source, storage_location, status) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    con.executemany(
        "INSERT INTO registered_model_aliases (alias, version, name) VALUES (?, ?, ?)", aliases
    )
    con.commit()
    con.close()


def test_the_champion_is_read_from_the_alias_without_mlflow(clean_env, tmp_path):
    from training.registry import RegistryUnavailable, champion_ref, champion_version

    clean_env.setenv(DATA_DIR_ENV, str(tmp_path))
    paths = resolve_paths(load_params())
    paths.mlruns_dir.mkdir()
    db = paths.mlruns_dir / "mlflow.db"
    _registry(
        db,
        [
            ("churn", 1, "r1", "models:/m-1", "file:///store/m-1/artifacts", "READY"),
            ("churn", 2, "r2", "models:/m-2", "file:///store/m-2/artifacts", "READY"),
            ("appetence", 1, "r3", "models:/m-3", "file:///store/m-3/artifacts", "FAILED"),
        ],
        [("champion", 2, "churn"), ("challenger", 1, "churn"), ("champion", 1, "appetence")],
    )
    before = db.read_bytes()
    ref = champion_ref(paths, "churn")
    assert (ref.version, ref.run_id, ref.source) == ("2", "r2", "file:///store/m-2/artifacts")
    assert champion_version(paths, "churn", "challenger") == "1"
    with pytest.raises(RegistryUnavailable, match="no 'churn' model with alias 'best'"):
        champion_ref(paths, "churn", "best")
    with pytest.raises(RegistryUnavailable, match="appetence v1 .* is FAILED, not READY"):
        champion_ref(paths, "appetence")
    with pytest.raises(RegistryUnavailable, match="its model files are missing"):
        from training.registry import load_model

        load_model(paths, "churn")
    assert db.read_bytes() == before  # read-only: not even a journal or a migration
    assert sorted(p.name for p in paths.mlruns_dir.iterdir()) == ["mlflow.db"]


def test_feast_stores_are_opened_read_only_or_reported(clean_env, tmp_path):
    from features.store import FeatureStoreUnavailable, open_store_read_only, repo_config

    clean_env.setenv(DATA_DIR_ENV, str(tmp_path))
    paths = resolve_paths(load_params())
    with pytest.raises(
        FeatureStoreUnavailable, match=r"registry or online store .*engage features build"
    ):
        open_store_read_only(paths)
    config = repo_config(paths, read_only=True)
    assert config.online_store.read_only is True
    assert _tree(tmp_path) == []  # no feast folder, no config copy


def test_the_online_store_is_never_created_by_a_reader(tmp_path):
    from feast.repo_config import RepoConfig

    from features.online_store import OnlineStoreUnavailable, PackedSqliteOnlineStore

    path = tmp_path / "online.db"
    config = RepoConfig(
        project="t",
        provider="local",
        registry=str(tmp_path / "registry.db"),
        online_store={
            "type": "features.online_store.PackedSqliteOnlineStore",
            "path": str(path),
            "read_only": True,
        },
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
    )
    store = PackedSqliteOnlineStore()
    with pytest.raises(
        OnlineStoreUnavailable, match=r"online\.db is missing: .*engage features build"
    ):
        store.read_columns(config, None, [b"k"], ["x"])
    with pytest.raises(OnlineStoreUnavailable, match="is missing"):
        store.probe(config, [])
    assert not path.exists()
    path.write_bytes(b"garbage" * 1000)
    with pytest.raises(OnlineStoreUnavailable, match=r"cannot be read .*rebuild it"):
        store.probe(config, [])
    assert path.read_bytes() == b"garbage" * 1000


def test_startup_checks_list_every_missing_store_and_create_nothing(clean_env, tmp_path):
    from serving.startup import StartupError, check_stores, preflight

    clean_env.setenv(DATA_DIR_ENV, str(tmp_path))
    params = load_params()
    paths = resolve_paths(params)
    problems = check_stores(paths, params)
    text = "\n".join(problems)
    assert "no MLflow store at" in text and "engage train" in text
    assert "no Feast registry at" in text and "no online store at" in text
    assert "no feature snapshots under" in text and "engage features build" in text
    with pytest.raises(StartupError) as err:
        preflight(paths, params)
    assert "\n" not in str(err.value)  # one line
    assert _tree(tmp_path) == []
