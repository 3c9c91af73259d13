"""The models of the product, in one table.

Each model the pipeline trains, registers, scores and serves is described once here: its
registry name, the Feast FeatureService it reads (the same for training and serving), the
label rule of :mod:`training.labels`, the half of the engagement index whose stage it
decides, the name of its probability in score files and answers, the ``index`` threshold
that turns that probability into a stage, and which contacts it scores. A new model is a
new row (and its label rule); nothing else lists the models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LabelRule = Literal["purchase_in_window", "quiet_in_window"]


@dataclass(frozen=True)
class ModelSpec:
    """What the pipeline needs to know about one model.

    Attributes:
        name: registry name in MLflow, ``--model`` value of the CLI.
        feature_service: the Feast FeatureService of this model version.
        label_rule: how :func:`training.labels.make_labels` labels a contact.
        half: ``has_purchased`` of the contacts whose stage it decides (0 = prospects,
            the left half of the index; 1 = customers, the right half).
        probability: column of its probability in scores and API answers.
        threshold: the ``index`` parameter that splits its half into two stages.
        positive_stage: the stage at or above the threshold.
        scores_everyone: scored for every contact (True) or only for its own half.
        purpose: one line for the CLI and the docs.

    """

    name: str
    feature_service: str
    label_rule: LabelRule
    half: Literal[0, 1]
    probability: str
    threshold: str
    positive_stage: str
    scores_everyone: bool
    purpose: str

    @property
    def threshold_param(self) -> str:
        """Dotted path of the threshold in params.yaml (e.g. ``index.tau_churn``)."""
        return f"index.{self.threshold}"


CHURN = ModelSpec(
    name="churn",
    feature_service="churn_v1",
    label_rule="quiet_in_window",
    half=1,
    probability="p_churn",
    threshold="tau_churn",
    positive_stage="Exit",
    scores_everyone=False,
    purpose="attrition risk of a customer: no activity within the horizon",
)
APPETENCE = ModelSpec(
    name="appetence",
    feature_service="appetence_v1",
    label_rule="purchase_in_window",
    half=0,
    probability="p_purchase",
    threshold="tau_purchase",
    positive_stage="Purchase",
    scores_everyone=True,
    purpose="purchase readiness of any contact: a purchase within the horizon",
)

MODEL_SPECS: dict[str, ModelSpec] = {s.name: s for s in (CHURN, APPETENCE)}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_SPECS)


def model_spec(name: str) -> ModelSpec:
    """The spec of model ``name``.

    Raises:
        ValueError: not a model of the product (the message lists the known ones).

    """
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ValueError(f"model must be one of {list(MODEL_NAMES)}, got {name!r}") from None


def deciding_spec(has_purchased: int) -> ModelSpec:
    """The model that decides the stage of a contact in half ``has_purchased``."""
    return next(s for s in MODEL_SPECS.values() if s.half == has_purchased)


# The time-to-event (hazard) model of each question (training/hazard.py): one fit answers
# every horizon up to H_max. Keyed by the fixed model whose question, population and
# FeatureService it shares; the value is its registry name in MLflow (and the --model
# value of `engage train`). Nothing else spells these names.
HAZARD_NAMES: dict[str, str] = {CHURN.name: "churn_hazard", APPETENCE.name: "appetence_hazard"}
HAZARD_MODEL_NAMES: tuple[str, ...] = tuple(HAZARD_NAMES.values())


def hazard_name(model: str) -> str:
    """The registry name of the hazard model of ``model`` (``churn`` -> ``churn_hazard``).

    Raises:
        ValueError: not a model of the product (the message lists the known ones).

    """
    return HAZARD_NAMES[model_spec(model).name]


def hazard_question(name: str) -> str:
    """The model (``churn`` / ``appetence``) whose question hazard model ``name`` answers.

    Raises:
        ValueError: not a hazard model's registry name (the message lists them).

    """
    for model, registered in HAZARD_NAMES.items():
        if registered == name:
            return model
    raise ValueError(f"hazard model must be one of {list(HAZARD_MODEL_NAMES)}, got {name!r}")
