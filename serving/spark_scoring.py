"""Batch scoring distributed over Spark partitions, with the decision code of one host.

:func:`score_on_spark` reads a feature snapshot with Spark and runs
:func:`serving.scoring.score_batch` (probabilities, stage, segment, value, reasons, via
:func:`serving.decision.decide`) on each partition's Arrow batches
(``DataFrame.mapInArrow``: the ``reasons`` column is a list of structs, which Arrow
carries as it is). The champions travel to the executors as their text and JSON files
(:func:`training.model.write_model_dir`, shipped with ``SparkContext.addFile``) and are
read back there with :func:`training.model.read_model_dir`: nothing is unpickled.

It returns a Spark DataFrame of the run schema (:data:`serving.runs.SCHEMA`), equal to
:func:`~serving.scoring.score_batch` on the same rows (``tests/test_spark_scoring.py``).

Not yet: the stability rule's previous stages (``engage score`` reads them from the
previous run on this host) and the run files: ``engage score`` still scores locally.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from engage.config import Params
from features.catalog import ENTITY_KEY, TIMESTAMP
from serving.champions import Champions
from serving.decision import Layout
from serving.runs import SCHEMA

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def score_on_spark(
    session: SparkSession,
    snapshot: Path,
    champions: Champions,
    params: Params,
    staging_dir: Path,
    run_id: str = "",
    typical: dict[str, dict[str, float]] | None = None,
) -> DataFrame:
    """Score every row of a snapshot file on Spark; a lazy DataFrame of the run schema.

    Args:
        session: the SparkSession.
        snapshot: a snapshot Parquet file (``features.snapshots``).
        champions: the models (e.g. :func:`serving.champions.load_champions`).
        params: the parsed params.yaml.
        staging_dir: a folder for the model files shipped to the executors.
        run_id: written in the ``run_id`` column.
        typical: the explainers' typical values
            (:func:`serving.champions.typical_by_half`); None gives no reasons.

    Raises:
        ValueError: the snapshot lacks a model input.

    """
    from pyspark.sql.pandas.types import from_arrow_schema

    from training.model import write_model_dir

    names = list(champions.models)
    versions = dict(champions.versions)
    inputs = Layout.of(champions).inputs
    df = session.read.parquet(str(Path(snapshot).resolve()))
    missing = [c for c in [ENTITY_KEY, TIMESTAMP, *inputs] if c not in df.columns]
    if missing:
        raise ValueError(f"snapshot {Path(snapshot).name}: missing column(s) {missing[:10]}")
    # A folder per call: addFile refuses a second, different file under the same name.
    folder = Path(staging_dir) / f"engage-models-{uuid.uuid4().hex[:12]}"
    for name in names:
        write_model_dir(champions[name], folder / name)
    session.sparkContext.addFile(str(folder), recursive=True)
    shipped = folder.name

    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        # Runs on an executor: the models are read from the shipped text files.
        from pyspark import SparkFiles

        from serving.champions import make_explainers
        from serving.scoring import score_batch
        from training.model import read_model_dir

        root = Path(SparkFiles.get(shipped))
        models = Champions({n: read_model_dir(root / n) for n in names}, versions)
        layout = Layout.of(models)
        explainers = make_explainers(models, params, typical) if typical is not None else None
        for batch in batches:
            table = score_batch(batch.to_pandas(), models, params, explainers, run_id, layout)
            yield from table.to_batches()

    columns = df.select(ENTITY_KEY, TIMESTAMP, *inputs)
    return columns.mapInArrow(score_partition, from_arrow_schema(SCHEMA))


def remove_shipped_models(staging_dir: Path) -> None:
    """Delete the model folders :func:`score_on_spark` wrote under ``staging_dir``."""
    for folder in Path(staging_dir).glob("engage-models-*"):
        shutil.rmtree(folder, ignore_errors=True)
