"""`engage score` on the Spark engine writes the run the local engine writes.

Same run ids, rows in the same order, stages, reasons, metadata, also for a second run
whose stages go through the stability rule (hysteresis and minimum dwell) against the
first. Uses the small trained pipeline (`slow`) and the shared local[2] Spark session
(`scale`; skips without pyspark or Java 17+).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli.main import app
from engage.config import load_params, resolve_paths
from features.snapshots import list_snapshots
from serving.index import STAGES, index_arrays
from serving.runs import CHECKS_KEY, META_KEY, SCHEMA, list_runs
from tests.conftest import SMALL

# A wide margin and a dwell rule, so the second run's previous stages change stages.
RULE = ("index.hysteresis=0.1", "index.min_dwell_runs=2")


def _sets(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def _score_twice(data_dir, monkeypatch, engine: str, first_as_of: str) -> list:
    monkeypatch.setenv("ENGAGE_DATA_DIR", str(data_dir))
    sets = _sets(*SMALL, *RULE, f"compute.engine={engine}")
    runner = CliRunner()
    for extra in (["--as-of", first_as_of], []):
        result = runner.invoke(app, [*sets, "score", *extra])
        assert result.exit_code == 0, (engine, result.output, result.exception)
    paths = resolve_paths(load_params(overrides=(*SMALL, *RULE)))
    assert paths.scores_dir.parent == data_dir or data_dir in paths.scores_dir.parents
    return list_runs(paths)


def _meta(path) -> tuple[dict, dict]:
    meta = pq.read_metadata(path).metadata
    run = json.loads(meta[META_KEY])
    run.pop("scored_at")  # the one field that differs: when each run was written
    return run, json.loads(meta[CHECKS_KEY])


def _assert_same_table(got: pa.Table, want: pa.Table, what: str) -> None:
    assert got.schema == want.schema == SCHEMA, what
    assert got.num_rows == want.num_rows, what
    for name in SCHEMA.names:
        a, b = got.column(name), want.column(name)
        if pa.types.is_floating(a.type):
            va, vb = a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False)
            np.testing.assert_allclose(va, vb, rtol=1e-12, atol=0, err_msg=f"{what}: {name}")
            assert np.array_equal(np.isnan(va), np.isnan(vb)), f"{what}: {name}"
        else:
            assert a.to_pylist() == b.to_pylist(), f"{what}: {name}"


def test_engage_score_on_spark_writes_the_local_run(pipeline, spark, tmp_path, monkeypatch):
    snaps = list_snapshots(pipeline.paths.features_dir)
    first_as_of = snaps[-2].as_of.isoformat()
    runs = {}
    for engine in ("duckdb", "spark"):
        data_dir = tmp_path / engine
        shutil.copytree(pipeline.data_dir, data_dir)
        runs[engine] = _score_twice(data_dir, monkeypatch, engine, first_as_of)

    local, distributed = runs["duckdb"], runs["spark"]
    assert len(local) == len(distributed) == 2
    # The same ids: the id hashes the snapshot, the models, the rules and the previous run.
    assert [r.run_id for r in distributed] == [r.run_id for r in local]
    assert distributed[1].path.name != distributed[0].path.name
    for want, got in zip(local, distributed, strict=True):
        assert _meta(got.path) == _meta(want.path)
        _assert_same_table(pq.read_table(got.path), pq.read_table(want.path), got.run_id)
    # The second run read the first one's stages, and the rule changed some of them,
    # so the equality above covers the stability rule, not only the plain thresholds.
    assert _meta(distributed[1].path)[0]["previous_run"] == distributed[0].run_id
    second = pq.read_table(distributed[1].path).to_pandas()
    params = load_params(overrides=(*SMALL, *RULE))
    plain, _, _ = index_arrays(
        second["has_purchased"], second["p_purchase"], second["p_churn"], params.index
    )
    held = int((np.asarray(STAGES)[plain] != second["stage"].to_numpy()).sum())
    assert held > 0
    assert (second["stage_runs"] > 1).sum() > 0
    assert sum(len(r) for r in second["reasons"]) > 0
    # Nothing of the Spark staging is left next to the runs.
    assert not list(distributed[1].path.parent.glob(".spark_staging*"))


def test_a_previous_run_with_an_unknown_stage_is_refused_on_spark(
    pipeline, spark, tmp_path, monkeypatch
):
    from serving.scoring import score

    data_dir = tmp_path / "data"
    shutil.copytree(pipeline.data_dir, data_dir)
    monkeypatch.setenv("ENGAGE_DATA_DIR", str(data_dir))
    params = load_params(overrides=(*SMALL, "compute.engine=spark"))
    paths = resolve_paths(params)
    snaps = list_snapshots(paths.features_dir)
    first = score(paths, params, as_of=snaps[-2].as_of)
    table = pq.read_table(first.path)
    stages = table.column("stage").to_pylist()
    stages[:3] = ["Limbo"] * 3
    table = table.set_column(table.schema.get_field_index("stage"), "stage", pa.array(stages))
    pq.write_table(table, first.path)
    with pytest.raises(ValueError, match=rf"run {first.run_id}: stage: 3 row\(s\) not one of"):
        score(paths, params)
