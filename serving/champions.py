"""The champion models and their explainers, loaded once for batch and online scoring.

:func:`load_champions` reads ``models:/<name>@champion`` of every model of
:data:`engage.specs.MODEL_SPECS` from the MLflow registry (text and JSON files, see
:mod:`training.model`) and refuses parameters that contradict what a model was trained
for: a churn model trained for a 91-day horizon does not answer a 30-day question.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from engage.config import Params, Paths
from engage.specs import MODEL_NAMES, MODEL_SPECS
from serving.explain import Explainer
from training.labels import definition_conflicts
from training.model import EngageModel


class ModelMismatchError(ValueError):
    """The parameters ask another question than the one a model was trained for."""


@dataclass
class Champions:
    """The champion model of each spec and its registry version."""

    models: dict[str, EngageModel]
    versions: dict[str, str]

    def __getitem__(self, name: str) -> EngageModel:
        return self.models[name]

    @property
    def identity(self) -> dict[str, str]:
        """Per model: ``v<version> <horizon>d <content digest>``, what a scoring run id hashes.

        The content and the horizon count, not only the version numbers: a registry
        rebuilt elsewhere can give another model the same version number.
        """
        return {
            name: f"v{self.versions.get(name, '?')} {model.horizon_days}d {model.digest()}"
            for name, model in self.models.items()
        }

    @property
    def missing(self) -> tuple[str, ...]:
        """The models of the product with no champion here (in :data:`MODEL_NAMES` order)."""
        return tuple(m for m in MODEL_NAMES if m not in self.models)

    def decides(self, half: int) -> bool:
        """Whether the model deciding the stages of ``half`` (0 prospects, 1 customers) is here."""
        return any(MODEL_SPECS[m].half == half for m in self.models)

    @property
    def features(self) -> list[str]:
        """Union of every model's inputs, in a stable order."""
        return list(dict.fromkeys(f for m in self.models.values() for f in m.features))


def check_trained_for(champions: Champions, params: Params) -> None:
    """Refuse ``params`` whose horizon or label rules contradict a champion's.

    Raises:
        ModelMismatchError: names the model, its version and both values of each
            contradiction (retrain, or use the parameters it was trained with).

    """
    problems = []
    for name, model in champions.models.items():
        for line in definition_conflicts(model.trained_for, params, name):
            problems.append(f"{name} v{champions.versions.get(name, '?')}: {line}")
    if problems:
        raise ModelMismatchError(
            "the champion models were trained for other parameters:\n  "
            + "\n  ".join(problems)
            + "\nretrain (`engage train`) or score with the parameters they were trained with"
        )


def load_champions(paths: Paths, params: Params, allow_missing: bool = False) -> Champions:
    """Load the champion of every model from the MLflow registry and check it.

    Args:
        paths: resolved locations (the MLflow store).
        params: the parsed params.yaml (checked against what each model was trained for).
        allow_missing: load the models that have a champion and leave out the ones that
            were never trained (:attr:`Champions.missing`); at least one must exist.

    Raises:
        LookupError: a model has no champion (train first), or with ``allow_missing``
            none has; an unreadable store is always an error.
        ModelMismatchError: ``params`` contradict what a champion was trained for.

    """
    from training.registry import NoChampion, load_model

    loaded = {}
    absent = []
    for m in MODEL_NAMES:
        try:
            loaded[m] = load_model(paths, m)
        except NoChampion as err:
            if not allow_missing:
                raise
            absent.append(str(err))
    if not loaded:
        raise LookupError("no champion model at all:\n  " + "\n  ".join(absent))
    champions = Champions(
        models={m: model for m, (model, _) in loaded.items()},
        versions={m: str(v) for m, (_, v) in loaded.items()},
    )
    check_trained_for(champions, params)
    return champions


def typical_by_half(snapshot: Path, features: list[str]) -> dict[str, dict[str, float]]:
    """Median of each feature in the half each model decides, keyed by model name.

    Computed by DuckDB over the snapshot file, so the full table is never in memory.
    """
    cols = ", ".join(f'quantile_cont("{f}", 0.5) AS "{f}"' for f in features)
    source = str(snapshot).replace("'", "''")
    con = duckdb.connect()
    try:
        df = con.execute(
            f"SELECT has_purchased, {cols} FROM read_parquet('{source}') GROUP BY has_purchased"
        ).df()
    finally:
        con.close()
    out: dict[str, dict[str, float]] = {name: {} for name in MODEL_NAMES}
    for _, row in df.iterrows():
        for spec in MODEL_SPECS.values():
            if row["has_purchased"] == spec.half:
                out[spec.name] = {
                    f: float(row[f]) if pd.notna(row[f]) else np.nan for f in features
                }
    return out


def make_explainers(
    champions: Champions, params: Params, typical: dict[str, dict[str, float]]
) -> dict[str, Explainer]:
    """One explainer per model, with the typical values of the half it decides."""
    return {
        name: Explainer(model, params, typical.get(name, {}))
        for name, model in champions.models.items()
    }
