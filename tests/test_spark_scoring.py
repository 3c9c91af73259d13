"""Batch scores computed on Spark equal the local batch scores (same models, same rows).

Uses the small trained pipeline (tests/conftest.py:pipeline, so `slow`) and the shared
local[2] Spark session (`scale`; skips without pyspark or Java).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.catalog import ENTITY_KEY
from features.snapshots import pick_snapshot
from serving.champions import load_champions, make_explainers, typical_by_half
from serving.runs import SCHEMA
from serving.scoring import score_batch


def test_spark_batch_scores_equal_local_batch_scores(pipeline, spark, tmp_path):
    from serving.spark_scoring import remove_shipped_models, score_on_spark

    params, paths = pipeline.params, pipeline.paths
    snap = pick_snapshot(paths.features_dir)
    champions = load_champions(paths, params)
    typical = typical_by_half(snap.path, champions.features)
    frame = pd.read_parquet(snap.path)
    local = score_batch(
        frame, champions, params, make_explainers(champions, params, typical), "run-1"
    )

    scored = score_on_spark(spark, snap.path, champions, params, tmp_path, "run-1", typical)
    got = pa.Table.from_batches(scored.repartition(2).toArrow().to_batches())
    remove_shipped_models(tmp_path)
    assert not list(tmp_path.glob("engage-models-*"))

    assert got.num_rows == local.num_rows == len(frame) > 1000
    got = got.sort_by(ENTITY_KEY).cast(SCHEMA)
    want = local.sort_by(ENTITY_KEY)
    assert got.schema == want.schema
    for name in SCHEMA.names:
        a, b = got.column(name), want.column(name)
        if pa.types.is_floating(a.type):
            va, vb = a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False)
            np.testing.assert_allclose(va, vb, rtol=1e-12, atol=0, err_msg=name)
            assert np.array_equal(np.isnan(va), np.isnan(vb)), name
        else:
            assert a.to_pylist() == b.to_pylist(), name
    # The reasons were computed (not empty lists on both sides).
    assert sum(len(r) for r in got.column("reasons").to_pylist()) > 0


def test_a_snapshot_without_a_model_input_is_refused(pipeline, spark, tmp_path):
    from serving.spark_scoring import score_on_spark

    params, paths = pipeline.params, pipeline.paths
    snap = pick_snapshot(paths.features_dir)
    champions = load_champions(paths, params)
    feature = champions.features[0]
    pd.read_parquet(snap.path).drop(columns=[feature]).to_parquet(tmp_path / "cut.parquet")
    with pytest.raises(ValueError, match=rf"cut\.parquet: missing column\(s\) \['{feature}'\]"):
        score_on_spark(spark, tmp_path / "cut.parquet", champions, params, tmp_path)
