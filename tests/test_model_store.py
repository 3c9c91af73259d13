"""Models are stored as text and JSON, carry what they were trained for, and never unpickle."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest

from engage.config import load_params
from training.model import BOOSTER_TXT, MODEL_JSON, ModelFormatError, read_model_dir
from training.registry import load_model, resolve, setup_mlflow

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


class _Payload:
    """Unpickling this creates the marker file: the proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _model_dir(pipeline, name: str = "churn") -> Path:
    """The logged model's folder of booster.txt + model.json (local artifact store)."""
    client = setup_mlflow(pipeline.paths)
    ref = resolve(client, pipeline.paths, name)
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.source))
    return root


def test_the_model_is_text_and_json_and_records_its_question(pipeline):
    root = _model_dir(pipeline)
    folder = root / "artifacts" / "model"
    assert sorted(p.name for p in folder.iterdir()) == [BOOSTER_TXT, MODEL_JSON]
    doc = json.loads((folder / MODEL_JSON).read_text())
    assert doc["trained_for"]["horizon_days"] == pipeline.params.labels.horizon_days
    assert doc["trained_for"]["label_rule"] == "quiet_in_window"
    assert doc["trained_for"]["feature_service"] == "churn_v1"
    assert doc["trained_for"]["churn_activity_types"] == list(
        pipeline.params.labels.churn_activity_types
    )
    assert (folder / BOOSTER_TXT).read_text().startswith("tree")
    # No pickled Python object anywhere in the logged model.
    for path in root.rglob("*"):
        if path.is_file():
            assert path.suffix not in (".pkl", ".pickle", ".joblib"), path
            assert not path.read_bytes().startswith(b"\x80"), path  # a pickle's opcode


def test_mlflow_pyfunc_loads_the_model_from_code_and_predicts_probabilities(pipeline):
    result = pipeline.results["churn"]
    setup_mlflow(pipeline.paths)
    X = result.test[result.engage_model.features].astype(float).head(200)
    pyfunc = mlflow.pyfunc.load_model("models:/churn@champion")
    np.testing.assert_allclose(pyfunc.predict(X), result.engage_model.predict_proba(X), atol=1e-12)


def test_a_planted_pickle_is_never_executed(pipeline, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    root = _model_dir(pipeline)
    folder = tmp_path / "model"
    folder.mkdir()
    for f in (root / "artifacts" / "model").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    # Extra pickles beside the model files (what a cloudpickled pyfunc would hold).
    for name in ("python_model.pkl", "model.pkl", "calibrator.joblib"):
        (folder / name).write_bytes(payload)
    model = read_model_dir(folder)
    assert model.name == "churn" and not marker.exists()
    # The model files themselves replaced by a pickle: refused, never unpickled.
    for target in (MODEL_JSON, BOOSTER_TXT):
        broken = tmp_path / f"broken_{target}"
        broken.mkdir()
        for f in folder.iterdir():
            (broken / f.name).write_bytes(f.read_bytes())
        (broken / target).write_bytes(payload)
        with pytest.raises(ModelFormatError, match=re.escape(target)):
            read_model_dir(broken)
        assert not marker.exists()


def test_model_folder_errors_name_the_file_and_field(pipeline, tmp_path):
    source = _model_dir(pipeline) / "artifacts" / "model"
    folder = tmp_path / "m"
    folder.mkdir()
    for f in source.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    doc = json.loads((folder / MODEL_JSON).read_text())
    cases = [
        ({**doc, "format": "other/9"}, "format must be 'engage-model/1'"),
        ({**doc, "kind": "cloudpickle"}, "kind must be one of"),
        ({**doc, "features": doc["features"][:-1]}, "features differ"),
        ({**doc, "calibrator": {"method": "sigmoid", "coef": "x", "intercept": 0}}, "coef"),
    ]
    for bad, message in cases:
        (folder / MODEL_JSON).write_text(json.dumps(bad))
        with pytest.raises(ModelFormatError, match=message):
            read_model_dir(folder)
    (folder / BOOSTER_TXT).unlink()
    (folder / MODEL_JSON).write_text(json.dumps(doc))
    with pytest.raises(ModelFormatError, match="booster.txt: missing"):
        read_model_dir(folder)


def test_a_model_trained_for_one_horizon_is_refused_under_another(pipeline):
    from typer.testing import CliRunner

    from cli.main import app
    from serving.champions import ModelMismatchError, load_champions

    trained = pipeline.params.labels.horizon_days
    other = load_params(overrides=(f"labels.horizon_days={trained + 30}",))
    with pytest.raises(ModelMismatchError) as err:
        load_champions(pipeline.paths, other)
    text = str(err.value)
    assert f"labels.horizon_days: the model was trained with {trained}" in text
    assert f"the parameters say {trained + 30}" in text
    assert "churn v" in text and "appetence v" in text
    # The same refusal from the command line, with a clear message and no traceback.
    out = CliRunner().invoke(app, ["--set", f"labels.horizon_days={trained + 30}", "score"])
    assert out.exit_code == 1, out.output
    assert "trained with" in out.output and "Traceback" not in out.output
    # Another label rule parameter is refused the same way.
    quieter = load_params(overrides=("labels.churn_activity_types=[purchase]",))
    with pytest.raises(ModelMismatchError, match="labels.churn_activity_types"):
        load_champions(pipeline.paths, quieter)
    # The champions load under the parameters they were trained with.
    assert load_champions(pipeline.paths, pipeline.params).versions


def test_no_unpickling_on_the_product_load_path():
    # Source check of every product package: models, thresholds, explainers, the Feast
    # registry (protobuf) and params are read as text, JSON, Parquet or safe YAML.
    banned = re.compile(
        r"^\s*(import|from)\s+(pickle|cloudpickle|joblib|dill)\b|yaml\.(load|unsafe_load)\(|"
        r"pd\.read_pickle|allow_pickle\s*=\s*True",
        re.M,
    )
    offenders = []
    for package in (
        "engage",
        "features",
        "feature_repo",
        "training",
        "serving",
        "reporting",
        "evaluation",
        "cli",
    ):
        for path in (ROOT / package).rglob("*.py"):
            if banned.search(path.read_text()):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
    assert os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "").lower() != "true"


def test_load_model_reads_the_registry_version(pipeline):
    model, version = load_model(pipeline.paths, "appetence")
    assert version == pipeline.results["appetence"].version
    assert model.trained_for["label_rule"] == "purchase_in_window"
