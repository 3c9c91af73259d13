"""The decision core: one function from a feature matrix to every score of a contact.

Batch scoring (:mod:`serving.scoring`, an Arrow/Parquet adapter) and online prediction
(:mod:`serving.online`, a response adapter) both call :func:`decide`, so a contact gets
the same probabilities, stage, segment, value and reasons either way by construction.

The input is one float64 matrix (rows x :attr:`Layout.inputs`, NaN = not observed) in a
fixed column order: every model's features, then what the segment and value rules read.
Per model of :data:`engage.specs.MODEL_SPECS`: its calibrated probability for every
contact or only for its own half, then the engagement index (:mod:`serving.index`), the
lifecycle segment (:mod:`serving.segments`), CLV and value at risk (:mod:`serving.value`),
the ``lapsed`` flag (a customer outside the churn model's population: no activity within
its window, read from the rule stored with the model) and, on request, the top-k reasons
of the model that decides each contact's stage. Any kind of model works (LightGBM or a
served baseline): the core only calls ``proba_matrix`` and the explainers. Given each
contact's stage in the previous scoring run, the stability rule
(:func:`serving.index.stabilise`: hysteresis, minimum dwell) decides the stage instead of
the plain thresholds; batch scoring reads that stage from the previous run, online
prediction from the batch run before its features, so both apply the same rule.
Everything is numpy: no frame is built, which is most of the cost of one contact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from engage.config import Params
from engage.specs import MODEL_SPECS, deciding_spec
from serving.champions import Champions
from serving.explain import Explainer, Reasons
from serving.index import dial_in_quadrant, index_arrays, stabilise, thresholds_at
from serving.segments import REQUIRED as SEGMENT_COLUMNS
from serving.segments import segment_codes
from serving.value import REQUIRED as VALUE_COLUMNS
from serving.value import value_arrays
from training.labels import population_rule

HALF = "has_purchased"


class DecisionInputError(ValueError):
    """The feature matrix cannot be decided as given (the message names the problem)."""


@dataclass(frozen=True)
class Layout:
    """The column order of the decision matrix for a set of champions.

    Attributes:
        inputs: the column names, in order.
        columns: name -> column index.
        model_columns: per model, the indices of its features.
        populations: per model with an activity rule (the churn model: customers active
            in its window), the indices of the rule's recency columns and the window in
            days (see :func:`training.labels.population_rule`).

    """

    inputs: list[str]
    columns: dict[str, int]
    model_columns: dict[str, np.ndarray]
    populations: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, champions: Champions, extra_inputs: Sequence[str] = ()) -> Layout:
        """Every model's features, the segment and value rules' and population columns.

        ``extra_inputs`` (e.g. the hazard models' features, :attr:`serving.timing.Timing.features`)
        are appended when not already there: read with the rest, ignored by :func:`decide`.
        """
        rules = {
            name: rule
            for name, model in champions.models.items()
            if (rule := population_rule(model.trained_for)) is not None
        }
        extra = [f for features, _ in rules.values() for f in features]
        inputs = list(
            dict.fromkeys(
                [*champions.features, *SEGMENT_COLUMNS, *VALUE_COLUMNS, *extra, *extra_inputs]
            )
        )
        columns = {name: j for j, name in enumerate(inputs)}
        model_columns = {
            name: np.array([columns[f] for f in model.features], dtype=np.intp)
            for name, model in champions.models.items()
        }
        populations = {
            name: (np.array([columns[f] for f in features], dtype=np.intp), days)
            for name, (features, days) in rules.items()
        }
        return cls(inputs, columns, model_columns, populations)

    def column(self, X: np.ndarray):
        """A getter of one column of ``X`` by name (what the rules read)."""
        return lambda name: X[:, self.columns[name]]


@dataclass
class Decisions:
    """Everything decided for each row of a matrix (arrays in row order).

    Attributes:
        has_purchased: 1 for a customer, 0 for a prospect (int8).
        probabilities: per spec's ``probability`` name (``p_purchase``, ``p_churn``),
            NaN where the model does not score the contact.
        stage: index into :data:`serving.index.STAGES` (int8).
        engagement_score: 0-100.
        dial_position: 0-100.
        segment: index into :data:`serving.segments.SEGMENTS` (int8).
        clv: customer lifetime value (0 for prospects).
        value_at_risk: p_churn x CLV (0 for prospects).
        lapsed: True for a contact of a model's half outside that model's population
            (a customer with no activity within the churn model's window): still scored,
            but listed apart from the reachable ones (win-back).
        reasons: per model, the rows it explains (indices) and their reasons; None when
            no reasons were asked for.
        stage_runs: consecutive scoring runs spent in ``stage``, this one included (1
            when the stage was just entered or no previous stage was given).

    """

    has_purchased: np.ndarray
    probabilities: dict[str, np.ndarray]
    stage: np.ndarray
    engagement_score: np.ndarray
    dial_position: np.ndarray
    segment: np.ndarray
    clv: np.ndarray
    value_at_risk: np.ndarray
    reasons: dict[str, tuple[np.ndarray, Reasons]] | None
    stage_runs: np.ndarray | None = None
    lapsed: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.has_purchased)


def decidable_rows(X: np.ndarray, layout: Layout, champions: Champions) -> np.ndarray:
    """Boolean mask of the rows whose half has its deciding model among ``champions``."""
    half = X[:, layout.columns[HALF]]
    return np.isin(half, [h for h in (0.0, 1.0) if champions.decides(int(h))])


def decide(
    X: np.ndarray,
    layout: Layout,
    champions: Champions,
    params: Params,
    explainers: dict[str, Explainer] | None = None,
    top_k: int = 0,
    previous_stage: np.ndarray | None = None,
    previous_runs: np.ndarray | None = None,
) -> Decisions:
    """Decide every score of each row of ``X``.

    Args:
        X: rows x ``layout.inputs``, float64, NaN = not observed.
        layout: the column order (:meth:`Layout.of` the same champions).
        champions: the models.
        params: the parsed params.yaml (index, segments, value).
        explainers: per-model explainers; reasons are computed only with these and
            ``top_k > 0``.
        top_k: reasons per row.
        previous_stage: each row's stage code (index into :data:`serving.index.STAGES`)
            in the previous scoring run, -1 when unknown; None applies the plain
            thresholds to every row.
        previous_runs: runs spent in that previous stage (0 = unknown).

    Raises:
        DecisionInputError: ``has_purchased`` is not 0 or 1 in some row, or rows of a
            half whose deciding model is not among ``champions`` (see
            :func:`decidable_rows`).
        ValueError: a probability outside [0, 1] (a broken model), or previous stages
            that do not match the rows.

    """
    n = X.shape[0]
    half = X[:, layout.columns[HALF]]
    bad = np.flatnonzero((half != 0.0) & (half != 1.0))
    if len(bad):
        raise DecisionInputError(
            f"{HALF} must be 0 or 1 ({len(bad)} row(s), e.g. rows {bad[:10].tolist()})"
        )
    customer = half == 1.0
    for h in (0, 1):
        if not champions.decides(h) and (undecided := int((half == h).sum())):
            spec = deciding_spec(h)
            raise DecisionInputError(
                f"no {spec.name} model: {undecided} row(s) of its half cannot be decided "
                f"(train it, or leave these rows out)"
            )
    probabilities = {}
    for name, spec in MODEL_SPECS.items():
        p = np.full(n, np.nan)
        rows = np.ones(n, dtype=bool) if spec.scores_everyone else half == spec.half
        if name in champions.models and rows.any():
            x = np.ascontiguousarray(X[np.ix_(rows, layout.model_columns[name])])
            p[rows] = champions[name].proba_matrix(x)
        probabilities[spec.probability] = p
    # The thresholds are stated for index.stated_horizon_days; the champions were
    # trained for labels.horizon_days (load_champions checks it).
    index = thresholds_at(params.index, params.labels.horizon_days)
    stage, score, dial = index_arrays(
        customer.astype("int8"),
        probabilities["p_purchase"],
        probabilities["p_churn"],
        index,
    )
    stage_runs = np.ones(n, dtype="int32")
    if previous_stage is not None:
        stage, stage_runs = stabilise(
            stage,
            customer,
            probabilities["p_purchase"],
            probabilities["p_churn"],
            index,
            previous_stage,
            previous_runs,
        )
        dial = dial_in_quadrant(stage, dial)
    column = layout.column(X)
    clv, at_risk = value_arrays(column, probabilities["p_churn"], params.value)
    lapsed = np.zeros(n, dtype=bool)
    for name, (cols, days) in layout.populations.items():
        # In the population: one of the rule's activities at most `days` old (NaN = never).
        with np.errstate(invalid="ignore"):
            active = (X[:, cols] <= days).any(axis=1)
        lapsed |= (half == MODEL_SPECS[name].half) & ~active
    reasons = None
    if explainers is not None and top_k > 0:
        # Each row is explained by the model that decides its stage.
        reasons = {}
        for name, spec in MODEL_SPECS.items():
            rows = np.flatnonzero(half == spec.half)
            if len(rows) and name in champions.models:
                x = np.ascontiguousarray(X[np.ix_(rows, layout.model_columns[name])])
                reasons[name] = (rows, explainers[name].reasons_matrix(x, top_k))
    return Decisions(
        has_purchased=customer.astype("int8"),
        probabilities=probabilities,
        stage=stage,
        engagement_score=score,
        dial_position=dial,
        segment=segment_codes(column, params.segments),
        clv=clv,
        value_at_risk=at_risk,
        reasons=reasons,
        stage_runs=stage_runs,
        lapsed=lapsed,
    )
