"""Request and response models of the prediction service (``serving/service.py``).

Every field carries a description and an example, so the OpenAPI page BentoML generates
(``GET /`` and ``GET /docs.json``) documents the API. Requests are strict: unknown keys,
strings where numbers are expected (``"0.5"``), booleans where numbers are expected and
non-finite numbers (``NaN``, ``Infinity``, ``1e999``) are rejected with the field's path,
instead of being coerced into something the caller did not mean.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    create_model,
)

from features.catalog import ValueRule
from serving.at_risk import MAX_LIMIT
from serving.index import STAGES
from serving.segments import SEGMENTS

Stage = Literal[STAGES]
Segment = Literal[SEGMENTS]
# Any printable text, unicode included; control characters (NUL, tabs, newlines) never
# belong in an id and would end up in logs or CSV exports.
CustomerId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
]
# A feature value sent by the caller: a finite number, or null for "not observed" (e.g.
# days_since_last_purchase of a prospect). Strict: "3" or true is a type error, not 3.
FeatureValue = Annotated[float | None, Field(strict=True, allow_inf_nan=False)]
MAX_TOP_K = 20


def _whole(value):
    # JSON has one number type: 3.0 is the integer 3 (JSON Schema agrees), 3.5 is not.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# A count in a request: strict (no "3", no true), but 3.0 is 3.
WholeNumber = Annotated[int, BeforeValidator(_whole)]
# A segment or null, in the one form OpenAPI readers agree on (an enum holding null).
OptionalSegment = Annotated[
    Segment | None, WithJsonSchema({"type": ["string", "null"], "enum": [*SEGMENTS, None]})
]

_EXAMPLE_VERSIONS = {"churn": "3", "appetence": "2"}
_EXAMPLE_REASON = {
    "feature": "days_since_last_email_open",
    "value": 45.0,
    "typical": 6.0,
    "contribution": 0.82,
    "direction": "raises",
    "text": "hasn't opened an e-mail in 45 days (typical customer: 6 days); raises the churn risk",
}


class ErrorDetail(BaseModel):
    """One problem of a rejected request body."""

    model_config = ConfigDict(extra="forbid")

    loc: str = Field(
        description="Dotted path of the field in the body (`body` for the body itself).",
        examples=["customer_ids.0"],
    )
    msg: str = Field(description="What is wrong.", examples=["Input should be a valid string"])
    type: str = Field(description="Pydantic's error type.", examples=["string_type"])


class ErrorResponse(BaseModel):
    """The body of every error answer (4xx and 5xx)."""

    model_config = ConfigDict(extra="forbid")

    error: str = Field(
        description="One line naming the problem (the field, the rule, the limit...).",
        examples=["invalid request: customer_ids: List should have at least 1 item"],
    )
    detail: list[ErrorDetail] | None = Field(
        default=None,
        description="Each problem of a rejected body (400 from validation only).",
    )


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Reason(_Response):
    """One of the top-k SHAP contributions behind a contact's stage."""

    feature: str = Field(
        description="Feature name (see the Feast feature views).",
        examples=["days_since_last_email_open"],
    )
    value: float | None = Field(
        description="The contact's value of the feature; null when not observed.",
        examples=[45.0],
    )
    typical: float | None = Field(
        description=(
            "Median of the feature over the contacts of the same half (customers for the "
            "churn model, prospects for the appetence model) in the latest snapshot; null "
            "when nobody has a value."
        ),
        examples=[6.0],
    )
    contribution: float = Field(
        description=(
            "TreeSHAP contribution to the deciding model's margin, in log-odds. Reasons are "
            "ordered by |contribution|, largest first."
        ),
        examples=[0.82],
    )
    direction: Literal["raises", "lowers"] = Field(
        description=(
            "Whether the feature raises or lowers the deciding probability (churn risk for "
            "a customer, purchase readiness for a prospect)."
        ),
        examples=["raises"],
    )
    text: str = Field(
        description="The reason as a sentence.",
        examples=[_EXAMPLE_REASON["text"]],
    )


_EXPLAIN = Field(
    default=False,
    description="Also return the top-k reasons (TreeSHAP contributions) behind each stage.",
    examples=[True],
)
_TOP_K = Field(
    default=3,
    ge=1,
    le=MAX_TOP_K,
    description=(
        f"Reasons per contact when `explain` is true (1 to {MAX_TOP_K}; capped at the "
        "model's number of features)."
    ),
    examples=[3],
)


_HORIZONS = Field(
    default=None,
    min_length=1,
    description=(
        "Horizons in days of the time-to-event answers (`horizons` of each prediction): "
        "distinct whole days, each at most H_max = hazard.period_days x "
        "hazard.h_max_periods (params.yaml; 91 by default), the time the hazard models "
        "follow; a longer one is refused (400 naming `horizons_days`). Null or absent: "
        "hazard.horizons_days (7, 30, 90 by default)."
    ),
    examples=[[7, 30, 90]],
)


class PredictRequest(_Request):
    """Score contacts by id, with the latest features of the Feast online store."""

    customer_ids: list[CustomerId] = Field(
        min_length=1,
        description=(
            "Contacts to score, 1 to `serving.max_ids` (params.yaml; 500 by default) ids "
            "of 1 to 128 characters without control characters, answered in the same "
            "order. Duplicates are scored once per occurrence."
        ),
        examples=[["C0000001", "C0000042"]],
    )
    explain: bool = _EXPLAIN
    top_k: WholeNumber = _TOP_K
    horizons_days: list[Annotated[WholeNumber, Field(ge=1)]] | None = _HORIZONS


class HorizonAnswer(_Response):
    """The hazard models' answers at one horizon (every probability names its horizon)."""

    horizon_days: int = Field(
        description="The horizon, in days from features_as_of.", examples=[30]
    )
    p_purchase: float | None = Field(
        description=(
            "P(a purchase within horizon_days) from the appetence hazard model (one fit, any "
            "horizon; non-decreasing in the horizon). Null without that model, or for an "
            "unknown customer."
        ),
        examples=[0.21],
    )
    p_churn: float | None = Field(
        description=(
            "P(no activity of labels.churn_activity_types within horizon_days), the churn "
            "label at this horizon, from the churn hazard model (customers only; "
            "non-increasing in the horizon: a longer window leaves more time to act). Null "
            "for a prospect, without that model, or for an unknown customer."
        ),
        examples=[0.35],
    )
    expected_purchases: float | None = Field(
        description=(
            "Expected number of purchase days within horizon_days (the appetence hazard "
            "model's count model). Null without it, or for an unknown customer."
        ),
        examples=[0.4],
    )


class _Scores(_Response):
    p_purchase: float | None = Field(
        description=(
            "Calibrated probability that the contact makes a purchase within the label "
            "horizon (appetence model, every known contact). Null for an unknown customer."
        ),
        examples=[0.12],
    )
    p_churn: float | None = Field(
        description=(
            "Calibrated probability that the customer churns within the label horizon "
            "(churn model, customers only). Null for a prospect (no purchase yet) and for "
            "an unknown customer."
        ),
        examples=[0.64],
    )
    stage: Stage = Field(
        description=(
            "Stage on the engagement dial: Nurture or Purchase for a prospect (decided by "
            "p_purchase and index.tau_purchase), Retention or Exit for a customer "
            "(p_churn and index.tau_churn). An unknown customer is placed in Nurture."
        ),
        examples=["Exit"],
    )
    engagement_score: float | None = Field(
        description=(
            "0-100, higher = more engaged: 100 x p_purchase for a prospect, "
            "100 x (1 - p_churn) for a customer. Null for an unknown customer."
        ),
        examples=[36.0],
    )
    dial_position: float | None = Field(
        description=(
            "Position on the dial, 0-100: Nurture [0, 25), Purchase [25, 50), "
            "Retention [50, 75), Exit [75, 100]. Null for an unknown customer."
        ),
        examples=[82.0],
    )
    segment: Segment = Field(
        description=(
            "Lifecycle segment (first matching rule of serving/segments.py). An unknown "
            "customer is placed in New."
        ),
        examples=["Hero"],
    )
    clv: float | None = Field(
        description=(
            "Customer lifetime value: average order value x purchases per year x "
            "value.lifespan_years; 0 for a prospect and for an unknown customer; null "
            "when the customer's order value is unknown (data ingested without amounts)."
        ),
        examples=[1250.0],
    )
    value_at_risk: float | None = Field(
        description=(
            "p_churn x CLV; 0 for a prospect and for an unknown customer; null when the "
            "CLV is unknown."
        ),
        examples=[800.0],
    )
    lapsed: bool = Field(
        description=(
            "True for a customer with no activity (labels.churn_activity_types) within "
            "labels.churn_active_within_days: outside the churn model's population, still "
            "scored but a win-back case, never in the at-risk list. False for prospects "
            "and unknown customers."
        ),
        examples=[False],
    )
    reasons: list[Reason] | None = Field(
        default=None,
        description=(
            "Top-k reasons of the deciding model (churn for a customer, appetence for a "
            "prospect), largest |contribution| first, among the features a person can act "
            "on (never the brand's own sending, never a value near the typical one, so a "
            "contact may get fewer than top_k). Null unless `explain` is true; an empty "
            "list for an unknown customer."
        ),
        examples=[[_EXAMPLE_REASON]],
    )
    model_versions: dict[str, str] = Field(
        description="Registry versions of the champion models used (models:/<name>@champion).",
        examples=[_EXAMPLE_VERSIONS],
    )
    decision_horizon_days: dict[str, int] = Field(
        description=(
            "The horizon (days) of p_purchase and p_churn, the probabilities deciding the "
            "stage (each champion's label horizon, labels.horizon_days when trained)."
        ),
        examples=[{"p_purchase": 30, "p_churn": 30}],
    )
    horizons: list[HorizonAnswer] = Field(
        description=(
            "The hazard models' answers at each asked horizon (`horizons_days`), in order; "
            "fields of a missing hazard model are null (see `timing_missing`)."
        ),
        examples=[
            [
                {"horizon_days": 7, "p_purchase": 0.05, "p_churn": 0.8, "expected_purchases": 0.06},
                {
                    "horizon_days": 30,
                    "p_purchase": 0.21,
                    "p_churn": 0.35,
                    "expected_purchases": 0.4,
                },
            ]
        ],
    )
    days_to_purchase: float | None = Field(
        description=(
            "Median predicted days until the next purchase (appetence hazard model). Null: "
            "not within H_max, no such model, or an unknown customer."
        ),
        examples=[24.5],
    )
    days_to_activity: float | None = Field(
        description=(
            "Median predicted days until the customer's next activity of "
            "labels.churn_activity_types (churn hazard model). Null: not within H_max, a "
            "prospect, no such model, or an unknown customer."
        ),
        examples=[9.0],
    )
    days_to_churn: float | None = Field(
        description=(
            "Expected days to churn: the days left before the customer lapses (no activity "
            "within labels.churn_active_within_days), given when the churn hazard model says "
            "it more likely than not stays quiet until then (the median time to lapse); 0 "
            "when already lapsed. Null when it is expected to act first, for a prospect, "
            "without the churn hazard model, or for an unknown customer."
        ),
        examples=[12.0],
    )


class Prediction(_Scores):
    """The prediction for one requested id."""

    customer_id: str = Field(description="The requested id.", examples=["C0000001"])
    status: Literal["ok", "unknown_customer"] = Field(
        description=(
            "`ok`, or `unknown_customer` when the online store has no features for the id "
            "(never seen, or older than the feature TTL). An unknown customer is a new "
            "prospect: stage Nurture, segment New, probabilities, engagement score and dial "
            "position null, CLV and value at risk 0. The request does not fail."
        ),
        examples=["ok"],
    )
    features_as_of: datetime | None = Field(
        description=(
            "As-of time (UTC) of the feature snapshot the prediction used: features are "
            "computed from events strictly before it. Null for an unknown customer."
        ),
        examples=["2026-01-01T00:00:00Z"],
    )
    stale: bool = Field(
        description=(
            "True when features_as_of is more than serving.stale_after_hours (params.yaml) "
            "before the reference time (`reference_time` of the response): the snapshot "
            "should be rebuilt and materialised. False for an unknown customer."
        ),
        examples=[False],
    )


_TIMING_VERSIONS = Field(
    description="Registry versions of the hazard (time-to-event) models used.",
    examples=[_EXAMPLE_VERSIONS],
)
_TIMING_MISSING = Field(
    description=(
        "Hazard models with no champion: their fields (`horizons`, `days_to_*`) are null."
    ),
    examples=[[]],
)


class PredictResponse(_Response):
    """Predictions in the order of the requested ids."""

    predictions: list[Prediction] = Field(description="One entry per requested id, in order.")
    model_versions: dict[str, str] = Field(
        description="Registry versions of the champion models used.",
        examples=[_EXAMPLE_VERSIONS],
    )
    horizons_days: list[int] = Field(
        description="The horizons answered (the request's, or hazard.horizons_days).",
        examples=[[7, 30, 90]],
    )
    timing_versions: dict[str, str] = _TIMING_VERSIONS
    timing_missing: list[str] = _TIMING_MISSING
    reference_time: datetime = Field(
        description=(
            "The time staleness is measured against: the server's clock, or the fixed "
            "time of $ENGAGE_SERVING_NOW when set (replays, tests)."
        ),
        examples=["2026-01-02T09:30:00Z"],
    )


class FeaturePrediction(_Scores):
    """The prediction for one row of features."""

    row: int = Field(description="Index of the row in the request.", examples=[0])


class PredictFeaturesResponse(_Response):
    """Predictions in the order of the rows sent."""

    predictions: list[FeaturePrediction] = Field(description="One entry per row, in order.")
    model_versions: dict[str, str] = Field(
        description="Registry versions of the champion models used.",
        examples=[_EXAMPLE_VERSIONS],
    )
    horizons_days: list[int] = Field(
        description="The horizons answered: hazard.horizons_days.", examples=[[7, 30, 90]]
    )
    timing_versions: dict[str, str] = _TIMING_VERSIONS
    timing_missing: list[str] = _TIMING_MISSING


class AtRiskRequest(_Request):
    """Query the at-risk list of the latest batch scoring run (`engage score`)."""

    limit: WholeNumber = Field(
        default=20,
        ge=1,
        le=MAX_LIMIT,
        description=(
            f"Maximum number of customers returned, highest value at risk first (1 to "
            f"{MAX_LIMIT:,}; `engage at-risk` lists more)."
        ),
        examples=[20],
    )
    segment: OptionalSegment = Field(
        default=None,
        description=(
            "Keep one lifecycle segment only, spelled exactly as listed; null or absent "
            "lists every segment."
        ),
        examples=["Hero"],
    )
    min_value_at_risk: float = Field(
        default=0.0,
        ge=0.0,
        le=1e15,
        description="Keep customers with value_at_risk >= this amount.",
        examples=[100.0],
    )
    win_back: bool = Field(
        default=False,
        description=(
            "False (default): the reachable customers, active within "
            "labels.churn_active_within_days, the population the churn model is trained "
            "on. True: the lapsed customers instead (quiet for longer), a win-back list."
        ),
        examples=[False],
    )


class AtRiskContact(_Response):
    """A customer of the at-risk list."""

    customer_id: str = Field(description="The customer.", examples=["C0000042"])
    p_churn: float = Field(description="Calibrated churn probability.", examples=[0.71])
    stage: Stage = Field(description="Stage on the dial (Retention or Exit).", examples=["Exit"])
    segment: Segment = Field(description="Lifecycle segment.", examples=["Hero"])
    clv: float | None = Field(
        description="Customer lifetime value (null: unknown, data without amounts).",
        examples=[1400.0],
    )
    value_at_risk: float | None = Field(
        description="p_churn x CLV (null: unknown; such customers follow, by p_churn).",
        examples=[994.0],
    )
    lapsed: bool = Field(
        description=(
            "True for a customer without activity within labels.churn_active_within_days "
            "(only in the win-back list)."
        ),
        examples=[False],
    )
    reasons: list[str] = Field(
        description="Up to 3 reasons behind the churn risk, as sentences.",
        examples=[[_EXAMPLE_REASON["text"]]],
    )
    action: str = Field(
        description="Suggested next action for the stage and segment.",
        examples=["account-manager call: save a high-value customer"],
    )


class AtRiskResponse(_Response):
    """Customers by value at risk, from one batch scoring run."""

    run_id: str = Field(description="The scoring run listed.", examples=["20260101-1a2b3c4d"])
    as_of: datetime = Field(
        description="As-of time of the snapshot the run scored.",
        examples=["2026-01-01T00:00:00Z"],
    )
    scored_at: datetime = Field(
        description="When the run was scored.", examples=["2026-01-01T06:00:00Z"]
    )
    model_versions: dict[str, str] = Field(
        description="Model versions the run used.", examples=[_EXAMPLE_VERSIONS]
    )
    contacts: list[AtRiskContact] = Field(description="Highest value at risk first.")


class ModelInfo(_Response):
    """A loaded champion model."""

    version: str = Field(description="Registry version.", examples=["3"])
    uri: str = Field(
        description="Registry URI it was loaded from.", examples=["models:/churn@champion"]
    )
    features: int = Field(description="Number of input features.", examples=[74])
    registry_version: str | None = Field(
        description=(
            "The version holding the alias in the registry now (read-only check); it "
            "differs from `version` after a new promotion until the service restarts. "
            "Null when the registry cannot be read (see `registry_problem`)."
        ),
        examples=["3"],
    )


class Readiness(_Response):
    """What the service loaded at start-up, and the state of its stores (GET /ready)."""

    status: Literal["ready"] = Field(description="Always `ready` when answered with 200.")
    models: dict[str, ModelInfo] = Field(description="The champion models, by name.")
    features_as_of: datetime | None = Field(
        description="As-of time of the latest stored feature snapshot at start-up.",
        examples=["2026-01-01T00:00:00Z"],
    )
    feature_names: list[str] = Field(
        description="The features POST /predict_features expects in every row."
    )
    api_key_required: bool = Field(
        description="Whether the prediction endpoints require an API key."
    )
    max_ids: int = Field(description="Most ids (or rows) accepted per request.", examples=[500])
    restart_needed: bool = Field(
        description=(
            "True when the registry now names other champion versions than the loaded "
            "ones: the service keeps answering with the loaded models until restarted."
        )
    )
    registry_problem: str | None = Field(
        default=None,
        description=(
            "Why the registry could not be read, if so. The loaded models keep answering, "
            "so this alone does not make the service unready."
        ),
    )
    timing_models: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "The hazard (time-to-event) models loaded: name -> `v<version> <period>dx"
            "<periods> <content digest>`. A model absent here answers null."
        ),
        examples=[{"appetence": "v2 7dx13 3f1c2a9b0d4e", "churn": "v2 7dx13 9a0b1c2d3e4f"}],
    )
    horizons_days: list[int] = Field(
        default_factory=list,
        description="The horizons /predict answers by default (hazard.horizons_days).",
        examples=[[7, 30, 90]],
    )
    h_max_days: int | None = Field(
        default=None,
        description="The longest horizon /predict accepts (H_max of the loaded hazard models).",
        examples=[91],
    )


class NotReady(BaseModel):
    """GET /ready when the service cannot answer predictions (HTTP 503)."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["unavailable"] = Field(description="Always `unavailable`.")
    error: str = Field(
        description="Why, naming the path and the command to run.",
        examples=[
            "online store /srv/engage/data/feast/online_store.db is missing: build it with "
            "`engage features build`"
        ],
    )


# --------------------------------------------------------------- caller-sent features

# A plausible value per kind of feature, for the documented example row (it passes the
# rules of features.catalog.value_rules, so posting the example gets predictions).
_EXAMPLE_BY_KIND = {
    "a flag": 1,
    "a count": 2,
    "a number of days": 12.5,
    "a rate": 0.25,
    "a trend": -0.2,
    "a number of seconds": 340.0,
    "an amount": 49.9,
    "an NPS score": 8.0,
}


def feature_row_model(rules: dict[str, ValueRule]) -> type[BaseModel]:
    """The pydantic model of one row of ``POST /predict_features``, from the value rules.

    Every feature is required (a number, or null for "not observed") and carries its
    rule: bounds, whole numbers for counts and flags. Unknown keys are rejected. The
    OpenAPI schema therefore lists exactly the features the models need.
    """
    fields: dict[str, Any] = {}
    for name, rule in rules.items():
        kwargs: dict[str, Any] = {"ge": rule.low, "le": rule.high}
        if rule.integer:
            kwargs["multiple_of"] = 1
        null = "; null when not observed" if rule.nullable else "; never null"
        value = Annotated[
            float | None if rule.nullable else float,
            Field(
                strict=True,
                allow_inf_nan=False,
                description=f"{rule.describe()}{null}",
                **kwargs,
            ),
        ]
        fields[name] = (value, ...)
    return create_model(
        "FeatureRow",
        __config__=ConfigDict(extra="forbid", strict=True, allow_inf_nan=False),
        __doc__="One contact's features: every feature the models need, by name.",
        **fields,
    )


def feature_row_example(rules: dict[str, ValueRule]) -> dict[str, float]:
    """A plausible row of every feature (within its rule): the documented example."""
    return {n: _EXAMPLE_BY_KIND.get(r.kind, 0.0) for n, r in rules.items()}


def predict_request_model(max_ids: int, h_max_days: int | None = None) -> type[BaseModel]:
    """:class:`PredictRequest` with the most ids per request (``serving.max_ids``).

    With ``h_max_days`` (the configured ``H_max``) the schema bounds each horizon and the
    list's length too; the service still checks the loaded models' own ``H_max``.
    """
    horizons = {}
    if h_max_days is not None:
        base = PredictRequest.model_fields["horizons_days"]
        horizons["horizons_days"] = (
            list[Annotated[WholeNumber, Field(ge=1, le=h_max_days)]] | None,
            Field(
                default=None,
                min_length=1,
                max_length=h_max_days,
                description=base.description,
                examples=base.examples,
            ),
        )
    return create_model(
        "PredictRequest",
        __base__=PredictRequest,
        __doc__=PredictRequest.__doc__,
        **horizons,
        customer_ids=(
            list[CustomerId],
            Field(
                min_length=1,
                max_length=max_ids,
                description=PredictRequest.model_fields["customer_ids"].description,
                examples=PredictRequest.model_fields["customer_ids"].examples,
            ),
        ),
    )


def predict_features_request_model(
    row: type[BaseModel], example: dict, max_ids: int
) -> type[BaseModel]:
    """The ``POST /predict_features`` body model for rows of ``row``.

    Args:
        row: the model of one row (:func:`feature_row_model`).
        example: a valid row, shown as the example of ``rows`` (one row).
        max_ids: the most rows per request (``serving.max_ids``).

    """
    return create_model(
        "PredictFeaturesRequest",
        __base__=_Request,
        __doc__="Score contacts from feature values sent by the caller (no Feast lookup).",
        rows=(
            list[row],
            Field(
                min_length=1,
                max_length=max_ids,
                description=(
                    "1 to `serving.max_ids` rows (params.yaml; 500 by default), each with "
                    "every feature the models need (GET /ready lists them) as a number in "
                    "its range, or null (not observed) where the feature allows it. "
                    "`has_purchased` is 0 or 1; counts are whole numbers, never null. A "
                    "missing, unknown, ill-typed or out-of-range feature is a 400 naming it."
                ),
                examples=[[example]],
            ),
        ),
        explain=(bool, _EXPLAIN),
        top_k=(WholeNumber, _TOP_K),
    )
