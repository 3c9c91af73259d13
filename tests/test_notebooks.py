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
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # No warning boxes: nothing on stderr (library warnings are fixed at their cause).
    assert [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"] == []
    for o in outputs:
        data = o.get("data", {})
        text = data.get("text/plain", "")
        # No stray reprs such as <matplotlib.legend.Legend at 0x...>: a cell shows a
        # table, a figure or printed text, never an object address.
        if set(data) == {"text/plain"}:
            assert not text.startswith("<"), text
        # Dates without midnight times.
        assert "00:00:00" not in text and "00:00:00" not in data.get("text/html", ""), text
