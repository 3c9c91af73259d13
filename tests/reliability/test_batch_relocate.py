"""A copied or moved data dir is self-contained: MLflow's recorded paths follow it.

MLflow records absolute artifact locations. Before, a copied data dir trained into the
original's folder, and failed with a traceback once the original was gone.
"""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from typer.testing import CliRunner

from cli.main import app
from engage.config import Paths, load_params, resolve_paths
from tests.conftest import SMALL
from training import registry

pytestmark = pytest.mark.slow

SETS = [arg for item in SMALL for arg in ("--set", item)]


def _locations(data_dir) -> list[str]:
    with sqlite3.connect(data_dir / "mlruns" / "mlflow.db") as conn:
        rows = conn.execute(
            "SELECT artifact_location FROM experiments WHERE name != 'Default' "
            "UNION ALL SELECT artifact_uri FROM runs "
            "UNION ALL SELECT artifact_location FROM logged_models "
            "UNION ALL SELECT storage_location FROM model_versions"
        ).fetchall()
    return [r[0] for r in rows]


def test_a_moved_data_dir_scores_and_trains_in_its_own_folder(pipeline, tmp_path, monkeypatch):
    original, moved = tmp_path / "original", tmp_path / "moved"
    shutil.copytree(pipeline.data_dir, original)
    shutil.copytree(original, moved)
    shutil.rmtree(original)  # the recorded paths now name nothing
    monkeypatch.setenv("ENGAGE_DATA_DIR", str(moved))
    runner = CliRunner()

    result = runner.invoke(app, [*SETS, "score", "--run-id", "moved"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    locations = _locations(moved)
    assert locations and all(
        loc.startswith(moved.as_uri() + "/mlruns/artifacts/") for loc in locations
    )

    result = runner.invoke(app, [*SETS, "train", "--model", "churn", "--force"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert not original.exists()  # nothing was written to the old place
    new_runs = list((moved / "mlruns" / "artifacts" / "churn").iterdir())
    assert len(new_runs) == len(list((pipeline.data_dir / "mlruns/artifacts/churn").iterdir())) + 1
    assert all(loc.startswith(moved.as_uri()) for loc in _locations(moved))
    # The source data dir was never touched.
    assert all(loc.startswith(pipeline.data_dir.as_uri()) for loc in _locations(pipeline.data_dir))


def test_a_read_only_copy_still_loads_its_models(pipeline, tmp_path, monkeypatch):
    """When the store cannot be rewritten, the loaders map the recorded paths."""
    copy = tmp_path / "copy"
    shutil.copytree(pipeline.data_dir, copy)
    monkeypatch.setenv("ENGAGE_DATA_DIR", str(copy))
    monkeypatch.setattr(registry, "relocate_artifacts", lambda paths: {})
    paths = resolve_paths(load_params(overrides=SMALL))
    moved_away = pipeline.data_dir.with_name(pipeline.data_dir.name + "-away")
    pipeline.data_dir.rename(moved_away)
    try:
        model, version = registry.load_model(paths, "churn")
        held, _ = registry.held_out_predictions(paths, "churn")
    finally:
        moved_away.rename(pipeline.data_dir)
    assert model.features and version == pipeline.results["churn"].version
    assert len(held) > 0
    # Still recorded under the original folder: nothing was rewritten.
    assert all(loc.startswith(pipeline.data_dir.as_uri()) for loc in _locations(copy))


def test_local_artifact_uri_maps_only_what_is_gone(tmp_path):
    base = resolve_paths(load_params())
    paths = Paths(base.root, tmp_path, tmp_path / "mlruns", base.params)
    here = tmp_path / "mlruns" / "artifacts" / "churn" / "run1"
    here.mkdir(parents=True)
    gone = "file:///nowhere/old/mlruns/artifacts/churn/run1"
    assert registry.local_artifact_uri(paths, gone) == here.resolve().as_uri()
    assert registry.local_artifact_uri(paths, here.as_uri()) == here.as_uri()
    missing_too = "file:///nowhere/old/mlruns/artifacts/churn/run2"
    assert registry.local_artifact_uri(paths, missing_too) == missing_too
    assert registry.local_artifact_uri(paths, "models:/m-1") == "models:/m-1"
