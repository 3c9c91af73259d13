"""Training rows through Feast's Spark offline store equal those of its DuckDB store.

With ``compute.engine: spark`` the Feast config names Feast's Spark offline store and
the snapshot files are a Spark source; ``training.dataset.training_frame`` (labels at
every snapshot, point-in-time features by ``get_historical_features``) must return the
same frame as with the DuckDB offline store: same rows in the same order, same columns,
same values and nulls. On a small simulation, with the shared local[2] Spark session
(`scale`; skips without pyspark or Java 17+).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engage.config import load_params, resolve_paths
from features.catalog import ACTIVITY

SMALL = ("simulate.customers=400", "simulate.days=240")


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    from engage.data.simulate import simulate_to_parquet
    from features.aggregates import build_features

    data_dir = tmp_path_factory.mktemp("feast-spark")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGAGE_DATA_DIR", str(data_dir))
        params = load_params(overrides=SMALL)
        paths = resolve_paths(params)
        simulate_to_parquet(params.simulate, params.data, paths.events, paths.customers)
        build_features(params, paths.events, paths.customers, paths.features_dir)
        spark_params = load_params(overrides=(*SMALL, "compute.engine=spark"))
        yield paths, resolve_paths(spark_params)


@pytest.mark.parametrize("model", ["churn", "appetence"])
def test_training_rows_through_the_spark_offline_store_equal_duckdbs(spark, small_store, model):
    from features.store import apply_repo, get_store
    from training.dataset import training_frame

    duck_paths, spark_paths = small_store
    apply_repo(duck_paths)
    duck_store = get_store(duck_paths)
    assert duck_store.config.offline_store.type == "duckdb"
    want = training_frame(duck_paths, duck_paths.params, model, duck_store)

    apply_repo(spark_paths)  # the registry now holds the snapshots as a Spark source
    spark_store = get_store(spark_paths)
    assert spark_store.config.offline_store.type == "spark"
    source = spark_store.get_feature_view(ACTIVITY).batch_source
    assert type(source).__name__ == "SparkSource"
    got = training_frame(spark_paths, spark_paths.params, model, spark_store)
    # Feast's Spark setting for its own queries is put back for the feature build.
    assert spark.conf.get("spark.sql.parser.quotedRegexColumnNames", "false") == "false"

    assert len(want) > 1000
    assert list(got.columns) == list(want.columns)
    assert got.dtypes.to_dict() == want.dtypes.to_dict()
    assert got["customer_id"].tolist() == want["customer_id"].tolist()
    for name in want.columns:
        a, b = got[name], want[name]
        if pd.api.types.is_numeric_dtype(b) and not pd.api.types.is_bool_dtype(b):
            va = pd.to_numeric(a).astype("float64").to_numpy()
            vb = pd.to_numeric(b).astype("float64").to_numpy()
            np.testing.assert_array_equal(np.isnan(va), np.isnan(vb), err_msg=name)
            np.testing.assert_allclose(va, vb, rtol=1e-12, equal_nan=True, err_msg=name)
        elif pd.api.types.is_datetime64_any_dtype(b):
            assert (pd.to_datetime(a, utc=True) == pd.to_datetime(b, utc=True)).all(), name
        else:
            assert a.tolist() == b.tolist(), name
