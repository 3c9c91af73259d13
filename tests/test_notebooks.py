"""The notebooks execute top to bottom on a small run, so they never rot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_notebooks_are_committed_without_outputs():
    assert len(NOTEBOOKS) >= 2
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(pipeline, path, tmp_path):
    from features.snapshots import list_snapshots
    from serving.runs import list_runs
    from serving.scoring import score

    if len(list_runs(pipeline.paths)) < 2:
        for snap in list_snapshots(pipeline.paths.features_dir)[-2:]:
            score(pipeline.paths, pipeline.params, as_of=snap.as_of)
    nb = nbformat.read(path, as_version=4)
    env = {"MPLBACKEND": "Agg", "ENGAGE_DATA_DIR": str(pipeline.data_dir)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
