"""Typed, frozen view of the parameters.

**One source of defaults.** The project's ``params.yaml`` holds every default value. The
pydantic models below hold only types and rules: no field has a default, so no value can
drift between the code and the file (``tests/test_config.py`` checks both).

**Layers**, later wins:

1. the project's ``params.yaml`` (the defaults);
2. the user's params file (``--params FILE`` or ``$ENGAGE_PARAMS``), which may be partial;
3. the profile (``--profile NAME`` or ``$ENGAGE_PROFILE``): ``profiles.NAME`` of the
   project's file, then ``profiles.NAME`` of the user's file;
4. ``--set dotted.key=value`` overrides, in order; values are parsed as YAML.

Sections merge key by key; any other value (a list, the ``features.rates`` mapping) is
replaced whole, so an overlay can shorten a list. The merged document is validated once
into :class:`Params`; a problem is reported with its dotted path, the rule it breaks and
the layer that set the value, e.g.
``labels.horizon_days: Input should be greater than 0 (from --set labels.horizon_days=0)``.

YAML is read with a safe loader that refuses duplicate keys, nesting deeper than
:data:`MAX_DEPTH`, aliases expanding to more than :data:`MAX_NODES` nodes ("billion
laughs") and files over :data:`MAX_BYTES`; dates stay strings.
"""

from __future__ import annotations

import copy
import datetime as dt
import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    model_validator,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = PROJECT_ROOT / "params.yaml"
DEFAULTS_LABEL = "params.yaml"  # how errors name the project defaults
DATA_DIR_ENV = "ENGAGE_DATA_DIR"
MLRUNS_DIR_ENV = "ENGAGE_MLRUNS_DIR"
PROFILE_ENV = "ENGAGE_PROFILE"
PARAMS_ENV = "ENGAGE_PARAMS"

MAX_BYTES = 1 << 20  # params.yaml is ~7 KB; a megabyte is no parameter file
MAX_DEPTH = 32  # the deepest real key, profiles.NAME.features.rates.NAME[0], is 6 levels
MAX_NODES = 10_000  # YAML nodes, aliases expanded; params.yaml has ~300
MAX_DAYS = 3650  # ten years: a longer window or horizon is a typo, and overflows timestamps
MAX_SEED = 2**31 - 1  # LightGBM reads seeds as a C int; numpy refuses negative ones

_IDENT = r"^[a-z][a-z0-9_]*$"


class ConfigError(ValueError):
    """Bad parameters: the message names the key, the rule and where the value came from."""


# ------------------------------------------------------------------------------ types


def _no_bool(value: Any) -> Any:
    # YAML reads `yes`/`no`/`on` as booleans and pydantic would take them as 1/0.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
    return value


def _non_empty(values: tuple[Any, ...]) -> tuple[Any, ...]:
    # A validator rather than Field(min_length=1): pydantic would also report a list
    # whose only item is invalid as empty.
    if not values:
        raise ValueError("must not be empty")
    return values


def _unique(values: tuple[Any, ...]) -> tuple[Any, ...]:
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
        raise ValueError(f"duplicate entries {dupes}")
    return values


def _iso_time(value: str) -> str:
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO 8601 date or time: {value!r}") from None
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {value!r}")
    return value


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]
Text = Annotated[str, StringConstraints(min_length=1)]
Ident = Annotated[str, StringConstraints(pattern=_IDENT)]  # becomes a SQL column name
Days = Annotated[Int, Field(gt=0, le=MAX_DAYS)]
DayThreshold = Annotated[Int, Field(ge=0, le=MAX_DAYS)]
Seed = Annotated[Int, Field(ge=0, le=MAX_SEED)]
Probability = Annotated[Float, Field(ge=0, le=1)]
Types = Annotated[tuple[Ident, ...], AfterValidator(_unique)]
NonEmptyTypes = Annotated[Types, AfterValidator(_non_empty)]
Windows = Annotated[tuple[Days, ...], AfterValidator(_non_empty), AfterValidator(_unique)]


@dataclass(frozen=True)
class _Issue:
    key: str  # dotted, relative to the model that raised it
    message: str
    depends_on: tuple[str, ...] = ()  # other keys (same base) the rule reads


class _Rules(ValueError):
    """Broken cross-key rules, each naming its key so the error can say where it came from."""

    def __init__(self, issues: list[_Issue]) -> None:
        super().__init__("; ".join(f"{i.key}: {i.message}" for i in issues))
        self.issues = issues


def _raise(issues: list[_Issue]) -> None:
    if issues:
        raise _Rules(issues)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------- sections


class DataParams(_Section):
    dir: Text
    events: Text
    customers: Text
    quarantine: Text
    event_types: NonEmptyTypes
    value_event_types: Types
    # Unit of `value` per type (amount, seconds, score, ...): only tags the Feast features.
    value_units: dict[Ident, Text]
    conversion_event: Ident
    future_tolerance_minutes: Annotated[Float, Field(ge=0, le=24 * 60)]
    # How long a command waits for another one writing the same store (engage/locks.py).
    lock_timeout_s: Annotated[Float, Field(ge=0, le=24 * 3600)]
    # An ingest whose share of bad rows is above this writes nothing (a wrong mapping).
    max_bad_share: Probability


class SimulateParams(_Section):
    customers: Annotated[Int, Field(gt=0, le=100_000_000)]
    days: Days
    seed: Seed
    start: Annotated[Text, AfterValidator(_iso_time)]
    chunk_customers: Annotated[Int, Field(gt=0)]
    initial_customer_share: Probability
    campaign_weekday: Annotated[Int, Field(ge=0, le=6)]
    engagement_drift_sd: Annotated[Float, Field(ge=0)]
    decline_share: Probability
    decline_weeks: Annotated[Int, Field(gt=0, le=MAX_DAYS // 7)]
    # exp(20) ~ 5e8 as a median amount is already absurd; beyond, amounts overflow.
    amount_log_mean: Annotated[Float, Field(ge=-20, le=20)]
    amount_log_sd: Annotated[Float, Field(gt=0, le=5)]
    # A drift scenario (engage/data/simulate.py): None keeps the behaviour of every day.
    drift_kind: Literal["email_fatigue", "competitor"] | None
    drift_start_day: DayThreshold
    drift_strength: Annotated[Float, Field(ge=0, le=10)]


class FeaturesParams(_Section):
    dir: Text
    snapshot_every_days: Days
    windows_days: Windows
    rfm_windows_days: Windows
    trend_days: Days
    value_sum_types: Types
    passive_event_types: Types
    rates: dict[Ident, tuple[Ident, Ident]]
    cart_event: Ident | None
    interval_types: Types
    last_value_types: Types
    ttl_days: Days
    max_snapshots: Annotated[Int, Field(gt=0)]
    min_labelled_snapshots: Annotated[Int, Field(ge=0, le=MAX_DAYS)]


class FeastParams(_Section):
    repo: Text
    # Feast's rule, without the hyphen its SQLite online stores cannot take.
    project: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_]*$")]
    # packed_sqlite: a file under the data dir (features/online_store.py); redis: Feast's
    # Redis store at redis_connection_string, shared by every service process.
    online_store: Literal["packed_sqlite", "redis"]
    # Feast's format: host:port, then optional ,key=value (db=0, password=..., ssl=true).
    redis_connection_string: Annotated[
        str, StringConstraints(pattern=r"^[^\s:,]+:[0-9]{1,5}(,[A-Za-z_]+=[^\s,]*)*$")
    ]


class LabelsParams(_Section):
    horizon_days: Days
    churn_activity_types: NonEmptyTypes
    churn_active_within_days: Days
    active_within_days: Days


class LightGBMParams(_Section):
    objective: Literal["binary"]
    learning_rate: Annotated[Float, Field(gt=0)]
    num_leaves: Annotated[Int, Field(gt=1, le=131_072)]  # LightGBM's own upper limit
    max_depth: Annotated[Int, Field(ge=-1)]  # -1: no limit
    min_child_samples: Annotated[Int, Field(ge=1)]
    feature_fraction: Annotated[Float, Field(gt=0, le=1)]
    bagging_fraction: Annotated[Float, Field(gt=0, le=1)]
    bagging_freq: Annotated[Int, Field(ge=0)]
    lambda_l2: Annotated[Float, Field(ge=0)]
    n_estimators: Annotated[Int, Field(gt=0)]
    early_stopping_rounds: Annotated[Int, Field(gt=0)]
    num_threads: Annotated[Int, Field(ge=0)]


class StarvedParams(_Section):
    min_rows: Annotated[Int, Field(ge=0)]
    min_positives: Annotated[Int, Field(ge=0)]
    min_trees: Annotated[Int, Field(ge=0)]


class TrainingParams(_Section):
    seed: Seed
    valid_snapshots: Annotated[Int, Field(gt=0)]
    test_snapshots: Annotated[Int, Field(gt=0)]
    min_train_snapshots: Annotated[Int, Field(gt=0)]
    max_rows_per_snapshot: Annotated[Int, Field(gt=0)] | None
    calibration: Literal["isotonic", "sigmoid"]
    promotion_tolerance: Probability  # a difference of ROC-AUC or PR-AUC
    promotion_metric: Literal["roc_auc", "pr_auc"]
    baseline_margin: Annotated[Float, Field(ge=-1, le=1)]
    refit: StrictBool
    monotone_constraints: StrictBool
    btyd_inputs: StrictBool
    adapt_to_rows: StrictBool
    starved: StarvedParams
    ece_bins: Annotated[Int, Field(gt=1, le=1000)]
    lightgbm: LightGBMParams


class HazardParams(_Section):
    """Discrete-time hazard models (``training/hazard.py``): one fit, any horizon.

    A contact at an as-of time is followed for ``h_max_periods`` periods of
    ``period_days`` days; ``horizons_days`` are the horizons reported and scored, each at
    most ``period_days * h_max_periods`` days.
    """

    period_days: Days
    h_max_periods: Annotated[Int, Field(gt=0, le=520)]
    horizons_days: Windows
    max_rows_per_snapshot: Annotated[Int, Field(gt=0)] | None
    train: StrictBool
    # ``<metric>_<h>d``: the gate's metric (training/hazard_train.py), at a horizon of
    # ``horizons_days``; ROC-AUC and PR-AUC only, as ``training.promotion_metric``.
    primary_metric: Annotated[str, StringConstraints(pattern=r"^(roc_auc|pr_auc)_[0-9]+d$")]

    @property
    def primary(self) -> tuple[str, int]:
        """``primary_metric`` split into the metric and its horizon (``("roc_auc", 30)``)."""
        metric, _, days = self.primary_metric.rpartition("_")
        return metric, int(days.removesuffix("d"))

    @model_validator(mode="after")
    def _primary_at_a_horizon(self) -> HazardParams:
        days = self.primary[1]
        if days not in self.horizons_days:
            _raise(
                [
                    _Issue(
                        "primary_metric",
                        f"{self.primary_metric!r} is at {days} days, not one of horizons_days "
                        f"{list(self.horizons_days)}",
                        ("horizons_days",),
                    )
                ]
            )
        return self

    @model_validator(mode="after")
    def _horizons_within_h_max(self) -> HazardParams:
        h_max = self.period_days * self.h_max_periods
        if h_max > MAX_DAYS:
            _raise(
                [
                    _Issue(
                        "h_max_periods",
                        f"period_days x h_max_periods = {h_max} days, more than {MAX_DAYS}",
                        ("period_days",),
                    )
                ]
            )
        beyond = sorted(h for h in self.horizons_days if h > h_max)
        if beyond:
            _raise(
                [
                    _Issue(
                        "horizons_days",
                        f"{beyond} exceed the followed time period_days x h_max_periods = "
                        f"{self.period_days} x {self.h_max_periods} = {h_max} days",
                        ("period_days", "h_max_periods"),
                    )
                ]
            )
        return self


class MlflowParams(_Section):
    dir: Text


class IndexParams(_Section):
    tau_purchase: Probability
    tau_churn: Probability
    # The horizon the two thresholds are stated for; models trained for another
    # labels.horizon_days get them converted (serving/index.py:thresholds_at).
    stated_horizon_days: Days
    # A margin wider than 0.5 would pin every contact in its first stage.
    hysteresis: Annotated[Float, Field(ge=0, le=0.5)]
    min_dwell_runs: Annotated[Int, Field(ge=1, le=52)]


class SegmentsParams(_Section):
    new_max_tenure_days: DayThreshold
    waiting_cart_days: DayThreshold
    hero_min_value: Annotated[Float, Field(ge=0)]
    hero_min_purchases_90d: Annotated[Int, Field(ge=0)]
    repeat_min_purchases_365d: Annotated[Int, Field(ge=0)]
    at_risk_inactive_days: DayThreshold
    lost_inactive_days: DayThreshold
    lead_min_clicks_30d: Annotated[Int, Field(ge=0)]
    lead_min_cart_adds_30d: Annotated[Int, Field(ge=0)]

    @model_validator(mode="after")
    def _at_risk_before_lost(self) -> SegmentsParams:
        # Lost is tested first, so At risk can only hold below the Lost threshold.
        if self.at_risk_inactive_days >= self.lost_inactive_days:
            _raise(
                [
                    _Issue(
                        "at_risk_inactive_days",
                        f"must be less than segments.lost_inactive_days "
                        f"({self.lost_inactive_days}), else no contact is ever At risk",
                        ("lost_inactive_days",),
                    )
                ]
            )
        return self


class ValueParams(_Section):
    lifespan_years: Annotated[Float, Field(gt=0, le=100)]
    frequency: Literal["purchases_365d", "mean_gap"]
    # An ISO 4217 code: it is printed after every amount ("1,200 EUR").
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]


class ScoringParams(_Section):
    dir: Text
    top_k_reasons: Annotated[Int, Field(ge=0)]
    batch_rows: Annotated[Int, Field(gt=0)]
    reason_typical_tolerance: Annotated[Float, Field(ge=0, le=10)]
    range_warning_share: Probability


class ReportParams(_Section):
    capacity: Annotated[Int, Field(gt=0)]
    call_list_rows: Annotated[Int, Field(gt=0, le=10_000)]


class LeadsParams(_Section):
    mql_segments: Annotated[tuple[Text, ...], AfterValidator(_unique)]
    mql_min_p_purchase: Probability
    accepted_event: Ident
    accepted_within_days: Days


class ServingParams(_Section):
    host: Text
    port: Annotated[Int, Field(gt=0, lt=65536)]
    max_ids: Annotated[Int, Field(gt=0)]
    max_body_bytes: Annotated[Int, Field(gt=0)]
    stale_after_hours: Annotated[Float, Field(gt=0, le=MAX_DAYS * 24)]
    api_key_env: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    webhook_url: Annotated[Text, AfterValidator(_http_url)] | None
    # The backoff doubles per retry: 10 retries from 60 s already wait ~17 hours.
    webhook_retries: Annotated[Int, Field(ge=0, le=10)]
    webhook_backoff_s: Annotated[Float, Field(ge=0, le=60)]
    webhook_timeout_s: Annotated[Float, Field(gt=0, le=600)]
    # Slow or stalled clients hold a connection (and a worker's attention) until these.
    header_timeout_s: Annotated[Float, Field(gt=0, le=300)]
    body_timeout_s: Annotated[Float, Field(gt=0, le=300)]


class MonitoringParams(_Section):
    experiment: Text
    psi_bins: Annotated[Int, Field(ge=2, le=100)]
    # PSI has no upper bound; 0 makes every shift a warning (or an alert).
    psi_warn: Annotated[Float, Field(ge=0)]
    psi_alert: Annotated[Float, Field(ge=0)]
    auc_drop_warn: Probability
    auc_drop_alert: Probability
    at_risk_top: Annotated[Int, Field(gt=0)]
    min_rows: Annotated[Int, Field(gt=0)]
    reference_rows: Annotated[Int, Field(gt=0)]
    reference_window: Literal["test", "train"]
    seed: Seed

    @model_validator(mode="after")
    def _warn_before_alert(self) -> MonitoringParams:
        issues = []
        for warn, alert in (("psi_warn", "psi_alert"), ("auc_drop_warn", "auc_drop_alert")):
            if getattr(self, warn) > getattr(self, alert):
                issues.append(
                    _Issue(
                        warn,
                        f"must be at most monitoring.{alert} ({getattr(self, alert)}): "
                        "a warning comes before an alert",
                        (alert,),
                    )
                )
        _raise(issues)
        return self


class ComputeParams(_Section):
    # Which engine does the bulk work (README, "Scale-out"): DuckDB on this host, or
    # Spark (the `scale` extra) at spark.master, for the feature build (the same
    # snapshot files), Feast's offline store (the training rows) and batch scoring
    # (the same run files).
    engine: Literal["duckdb", "spark"]


# What SparkSession.builder.master accepts: local[N|*] (optionally ,F retries), a
# standalone / Mesos / Kubernetes URL, YARN, or a Spark Connect URL.
_SPARK_MASTER = r"^(local(\[(\*|[1-9][0-9]*)(,[1-9][0-9]*)?\])?|yarn|(spark|mesos|k8s|sc)://\S+)$"
_SPARK_KEY = r"^spark\.[A-Za-z0-9_.-]+$"
# Keys engage sets itself: the master has its own setting, and the build's times are UTC.
_SPARK_OWN_KEYS = {
    "spark.master": "set spark.master instead",
    "spark.sql.session.timeZone": "engage runs Spark in UTC, like every stored time",
}


def _spark_master(value: str) -> str:
    if not re.match(_SPARK_MASTER, value):
        raise ValueError(
            f"not a Spark master URL: {value!r} (local[*], local[N], spark://host:port, "
            "yarn, k8s://..., sc://...)"
        )
    return value


def _spark_value(value: Any) -> Any:
    # Spark takes every setting as a string; YAML gives numbers and booleans.
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if value == "":
        raise ValueError("empty: a Spark setting needs a value")
    return value


class SparkParams(_Section):
    master: Annotated[str, AfterValidator(_spark_master)]
    # Passed to SparkSession.builder.config (e.g. spark.driver.memory: 2g).
    conf: dict[
        Annotated[str, StringConstraints(pattern=_SPARK_KEY)],
        Annotated[str, BeforeValidator(_spark_value)],
    ]

    @model_validator(mode="after")
    def _no_own_keys(self) -> SparkParams:
        _raise(
            [
                _Issue(f"conf.{key}", f"not allowed here: {why}", ())
                for key, why in _SPARK_OWN_KEYS.items()
                if key in self.conf
            ]
        )
        return self


class Params(_Section):
    """All parameters; ``profile`` records which profile was applied (None: none)."""

    data: DataParams
    simulate: SimulateParams
    features: FeaturesParams
    feast: FeastParams
    labels: LabelsParams
    training: TrainingParams
    hazard: HazardParams
    mlflow: MlflowParams
    index: IndexParams
    segments: SegmentsParams
    value: ValueParams
    scoring: ScoringParams
    report: ReportParams
    leads: LeadsParams
    serving: ServingParams
    monitoring: MonitoringParams
    compute: ComputeParams
    spark: SparkParams
    profile: str | None

    @model_validator(mode="after")
    def _types_in_vocabulary(self) -> Params:
        # Every dependent list is checked at once, so a change of data.event_types gets
        # one message naming each list that must change with it.
        fp = self.features
        vocab = set(self.data.event_types)
        uses: list[tuple[str, tuple[str, ...]]] = [
            ("data.value_event_types", self.data.value_event_types),
            ("data.conversion_event", (self.data.conversion_event,)),
            ("features.value_sum_types", fp.value_sum_types),
            ("features.passive_event_types", fp.passive_event_types),
            ("labels.churn_activity_types", self.labels.churn_activity_types),
            ("features.interval_types", fp.interval_types),
            ("features.last_value_types", fp.last_value_types),
            ("features.cart_event", (fp.cart_event,) if fp.cart_event else ()),
            ("leads.accepted_event", (self.leads.accepted_event,)),
        ]
        uses += [(f"features.rates.{name}", pair) for name, pair in fp.rates.items()]
        issues = []
        for key, types in uses:
            unknown = sorted(set(types) - vocab)
            if unknown:
                issues.append(
                    _Issue(key, f"not in data.event_types: {unknown}", ("data.event_types",))
                )
        no_value = sorted(set(self.data.value_units) - set(self.data.value_event_types))
        if no_value:
            issues.append(
                _Issue(
                    "data.value_units",
                    f"not in data.value_event_types: {no_value}",
                    ("data.value_event_types",),
                )
            )
        if self.leads.mql_min_p_purchase > self.index.tau_purchase:
            issues.append(
                _Issue(
                    "leads.mql_min_p_purchase",
                    f"must be at most index.tau_purchase ({self.index.tau_purchase}): every "
                    "SQL (a prospect in Purchase) must also be an MQL",
                    ("index.tau_purchase",),
                )
            )
        _raise(issues)
        return self


def _section_type(model: type[BaseModel] | None, key: Any) -> type[_Section] | None:
    """The section model of ``model.key``, or None when ``key`` holds a plain value."""
    if model is None or not isinstance(key, str) or key not in model.model_fields:
        return None
    annotation = model.model_fields[key].annotation
    if isinstance(annotation, type) and issubclass(annotation, _Section):
        return annotation
    return None


# --------------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class Paths:
    """Absolute locations of every file the pipeline reads or writes."""

    root: Path
    data_dir: Path
    mlruns_dir: Path
    params: Params

    @cached_property
    def events(self) -> Path:
        return self.data_dir / self.params.data.events

    @cached_property
    def customers(self) -> Path:
        return self.data_dir / self.params.data.customers

    @cached_property
    def quarantine(self) -> Path:
        return self.data_dir / self.params.data.quarantine

    @cached_property
    def features_dir(self) -> Path:
        return self.data_dir / self.params.features.dir

    @cached_property
    def feature_repo(self) -> Path:
        return self.root / self.params.feast.repo

    @cached_property
    def feast_dir(self) -> Path:
        """Feast registry and online store (SQLite) live here."""
        return self.data_dir / "feast"

    @cached_property
    def scores_dir(self) -> Path:
        return self.data_dir / self.params.scoring.dir

    @cached_property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.mlruns_dir / 'mlflow.db'}"


# ---------------------------------------------------------------------------------- YAML

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with bounded nesting and no duplicate keys."""

    # Dates stay strings (simulate.start is text; `--set simulate.start=2025-02-01` works).
    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # Stop at the bracket: the scanner would otherwise look ~1,000 tokens ahead for
        # a simple key at every level before the composer sees the depth (0.1 s).
        if self.flow_level >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", self.get_mark()
            )
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: Any, index: Any) -> Any:
        # PyYAML composes recursively: 10,000 nested brackets would hit RecursionError.
        self._depth += 1
        self._nodes += 1
        try:
            if self._nodes > MAX_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_NODES:,} nodes", self.peek_event().start_mark
                )
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_DEPTH} levels",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue  # `<<: *base` keys may be overridden: that is their purpose
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first_line.get(key)
                except TypeError:
                    continue  # unhashable: the base class reports it
                line = key_node.start_mark.line + 1
                if seen is not None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first on line {seen})",
                        key_node.start_mark,
                    )
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse alias cycles, and documents whose aliases expand too wide or too deep.

    Aliases share nodes, so the composed graph stays small while the expanded tree (what
    a copy, a validation or a dump walks) can hold 10^9 nodes. Sizes and heights are
    memoised per node, so this runs in time linear in the composed graph.
    """
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
    active: set[int] = set()

    def walk(node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in done:
            size, height = done[key]
        else:
            if key in active:
                raise yaml.composer.ComposerError(
                    None, None, "an alias refers to its own anchor", node.start_mark
                )
            if depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"aliases nest deeper than {MAX_DEPTH} levels", node.start_mark
                )
            active.add(key)
            size, height = 1, 1
            if isinstance(node, yaml.SequenceNode):
                children: Iterable[yaml.Node] = node.value
            elif isinstance(node, yaml.MappingNode):
                children = (n for pair in node.value for n in pair)
            else:
                children = ()
            for child in children:
                s, h = walk(child, depth + 1)
                size, height = size + s, max(height, h + 1)
                if size > MAX_NODES:
                    raise yaml.composer.ComposerError(
                        None,
                        None,
                        f"aliases expand to more than {MAX_NODES:,} nodes",
                        node.start_mark,
                    )
            active.discard(key)
            done[key] = (size, height)
        if depth + height - 1 > MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"aliases nest deeper than {MAX_DEPTH} levels", node.start_mark
            )
        return size, height

    walk(root, 1)


def _yaml(text: str, label: str) -> Any:
    """Parse one YAML document with :class:`_Loader`, errors as :class:`ConfigError`."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{label}: {len(text):,} characters, over the {MAX_BYTES:,} allowed")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = err.problem or err.context or "not valid YAML"
        raise ConfigError(f"{label}: not valid YAML: {where}{problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{label}: not valid YAML: {err}") from None
    finally:
        loader.dispose()


def _read_yaml_file(path: Path, label: str) -> Any:
    if path.is_dir():
        raise ConfigError(f"{label}: is a directory, not a parameters file")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{label}: parameters file not found") from None
    except OSError as err:
        raise ConfigError(f"{label}: cannot read: {err.strerror or err}") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{label}: over the {MAX_BYTES:,} bytes a parameters file may have")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: not UTF-8 text") from None
    return _yaml(text, label)


_defaults_cache: dict[tuple[str, int, int], Any] = {}


def _defaults_raw() -> Any:
    """The project's params.yaml, parsed once per version of the file."""
    path = Path(DEFAULTS_FILE)
    label = f"{DEFAULTS_LABEL} (project defaults, {path})"
    try:
        st = path.stat()
    except OSError:
        raise ConfigError(f"{label}: parameters file not found") from None
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _defaults_cache:
        _defaults_cache.clear()
        _defaults_cache[key] = _read_yaml_file(path, label)
    return copy.deepcopy(_defaults_cache[key])


# ------------------------------------------------------------------------------ layering

_PLAIN = re.compile(r"^[A-Za-z0-9_]+$")


def _dotted(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            out += " (key)"
        else:
            text = str(part) if _PLAIN.match(str(part)) else repr(part)
            out += f".{text}" if out else text
    return out or "<top level>"


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class _Merged:
    """The document being layered, and which layer set each value."""

    doc: dict[str, Any] = field(default_factory=dict)
    origin: dict[tuple[str, ...], str] = field(default_factory=dict)

    def _set(self, node: dict[str, Any], path: tuple[str, ...], value: Any, label: str) -> None:
        node[path[-1]] = copy.deepcopy(value)
        # The subtree is replaced whole: what earlier layers set inside it is gone.
        n = len(path)
        for p in [p for p in self.origin if len(p) > n and p[:n] == path]:
            del self.origin[p]
        self.origin[path] = label

    def merge(
        self,
        overlay: Mapping[str, Any],
        label: str,
        node: dict[str, Any] | None = None,
        model: type[BaseModel] | None = Params,
        prefix: tuple[str, ...] = (),
    ) -> None:
        """Overlay ``overlay`` at ``prefix``: sections key by key, other values whole."""
        node = self.doc if node is None else node
        for key, value in overlay.items():
            path = (*prefix, key)
            sub = _section_type(model, key)
            if sub is not None and isinstance(value, dict) and isinstance(node.get(key), dict):
                self.merge(value, label, node[key], sub, path)
            else:
                self._set(node, path, value, label)

    def source(self, loc: tuple[Any, ...]) -> str | None:
        """The label of the layer that set the value at ``loc`` (or its closest parent)."""
        for n in range(len(loc), 0, -1):
            label = self.origin.get(tuple(loc[:n]))
            if label is not None:
                return label
        return None

    def override(self, text: str) -> None:
        """Apply one ``--set dotted.key=value``."""
        label = f"--set {_shorten(text)}"
        key, sep, raw = text.partition("=")
        if not sep:
            raise ConfigError(f"{label}: expected dotted.key=value, found no '='")
        parts = tuple(p.strip() for p in key.split("."))
        if not key.strip():
            raise ConfigError(f"{label}: the key before '=' is empty")
        if any(not p for p in parts):
            raise ConfigError(
                f"{label}: empty part in the key {key.strip()!r} "
                "(a key looks like labels.horizon_days)"
            )
        if parts[0] in ("profile", "profiles"):
            raise ConfigError(
                f"{label}: profiles are chosen with --profile NAME (or ${PROFILE_ENV}), not set"
            )
        value = _yaml(raw, label)
        node, model = self.doc, Params
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None and part not in node:
                child = node[part] = {}  # an unknown key: validation names it
                self.origin[parts[: i + 1]] = label
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                was = self.source(parts[: i + 1])
                raise ConfigError(
                    f"{label}: {where} is not a section, it holds the value "
                    f"{_shorten(repr(child), 60)}" + (f" (from {was})" if was else "")
                )
            node, model = child, _section_type(model, part)
        last = parts[-1]
        sub = _section_type(model, last)
        if sub is not None and isinstance(value, dict) and isinstance(node.get(last), dict):
            self.merge(value, label, node[last], sub, parts)
        else:
            self._set(node, parts, value, label)


def _split_profiles(raw: Any, label: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The base mapping of a parameters file, and its profiles."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: the top level must be a mapping, got {type(raw).__name__}")
    doc = dict(raw)
    if "profile" in doc:
        raise ConfigError(
            f"{label}: profile: not a parameter; choose a profile with --profile NAME "
            f"(or ${PROFILE_ENV})"
        )
    profiles = doc.pop("profiles", None)
    if profiles is None:
        profiles = {}
    if not isinstance(profiles, dict):
        raise ConfigError(f"{label}: profiles: must be a mapping of name: overlay")
    for name, overlay in profiles.items():
        if overlay is not None and not isinstance(overlay, dict):
            raise ConfigError(f"{label}: profiles.{name}: must be a mapping of overlaid keys")
        nested = {"profile", "profiles"} & set(overlay or {})
        if nested:
            raise ConfigError(f"{label}: profiles.{name}.{nested.pop()}: profiles do not nest")
    return doc, {str(k): v or {} for k, v in profiles.items()}


def _suggest(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] | None = Params
    for part in loc[:-1]:
        model = _section_type(model, part)
    if model is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _problems(err: ValidationError, merged: _Merged) -> list[str]:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        issues = getattr(e.get("ctx", {}).get("error"), "issues", None)
        if issues:
            # A cross-key rule: name its key, and the source of the keys it depends on.
            for issue in issues:
                path = (*loc, *issue.key.split("."))
                src = merged.source(path)
                deps = [(d, merged.source((*loc, *d.split(".")))) for d in issue.depends_on]
                others = [f"{_dotted((*loc, *d.split('.')))} from {s}" for d, s in deps if s != src]
                where = "; ".join([*([f"from {src}"] if src else []), *others])
                lines.append(f"{_dotted(path)}: {issue.message}" + (f" ({where})" if where else ""))
            continue
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _suggest(loc)
        elif e["type"] == "missing":
            msg = "missing: every key needs a value in the project's params.yaml"
        elif e["type"] == "value_error":
            msg = str(e["ctx"]["error"])
        else:
            msg = e["msg"]
        src = merged.source(loc)
        lines.append(f"{_dotted(loc)}: {msg}" + (f" (from {src})" if src else ""))
    return lines


def _build(
    files: list[tuple[Any, str]],
    profile: str | None,
    profile_source: str,
    overrides: Iterable[str],
) -> Params:
    """Layer ``files`` (raw document, label), the profile and the overrides; validate."""
    merged = _Merged()
    profiles: list[tuple[dict[str, Any], str]] = []
    known: set[str] = set()
    for raw, label in files:
        doc, file_profiles = _split_profiles(raw, label)
        merged.merge(doc, label)
        known |= set(file_profiles)
        if profile and profile in file_profiles:
            name = f"profiles.{profile}"
            profiles.append(
                (file_profiles[profile], name if label == DEFAULTS_LABEL else f"{name} in {label}")
            )
    if profile and not profiles:
        raise ConfigError(
            f"profiles.{profile}: unknown profile (known: {', '.join(sorted(known)) or 'none'}) "
            f"(from {profile_source})"
        )
    for overlay, label in profiles:
        merged.merge(overlay, label)
    for text in overrides:
        merged.override(text)
    merged.doc["profile"] = profile
    try:
        return Params.model_validate(merged.doc)
    except ValidationError as err:
        lines = _problems(err, merged)
        raise ConfigError("invalid parameters:\n  " + "\n  ".join(lines)) from None


def parse_params(
    raw: dict[str, Any],
    profile: str | None = None,
    overrides: tuple[str, ...] = (),
    source: str = DEFAULTS_LABEL,
) -> Params:
    """Validate a parameters mapping (as read from YAML), overlaid on the project defaults.

    Args:
        raw: the parsed YAML document; it may be partial (missing keys keep the values of
            the project's params.yaml).
        profile: name of a ``profiles.<name>`` overlay to apply, or None.
        overrides: ``dotted.key=value`` strings applied last (values parsed as YAML).
        source: how error messages name ``raw``.

    Returns:
        The frozen parameters.

    Raises:
        ConfigError: unknown profile, malformed override, or a key that is unknown or
            breaks a rule; the message names its dotted path and the layer it came from.

    """
    return _build(
        [(_defaults_raw(), DEFAULTS_LABEL), (raw, source)],
        profile,
        f"--profile {profile}",
        overrides,
    )


def load_params(
    path: Path | str | None = None,
    profile: str | None = None,
    overrides: tuple[str, ...] = (),
) -> Params:
    """Read the parameters: the project's params.yaml, overlaid by ``path`` when given.

    Args:
        path: the user's parameters file (may be partial); defaults to ``$ENGAGE_PARAMS``,
            else only the project's ``params.yaml`` is read.
        profile: overlay name; defaults to ``$ENGAGE_PROFILE``.
        overrides: ``dotted.key=value`` strings applied last.

    Raises:
        ConfigError: a file is missing or not valid YAML, or the parameters are invalid
            (see :func:`parse_params`).

    """
    files: list[tuple[Any, str]] = [(_defaults_raw(), DEFAULTS_LABEL)]
    from_env = path is None and bool(os.environ.get(PARAMS_ENV))
    if from_env:
        path = os.environ[PARAMS_ENV]
    if path is not None:
        user = Path(path).expanduser().resolve()
        if user != Path(DEFAULTS_FILE).resolve():
            label = f"${PARAMS_ENV}={user}" if from_env else str(user)
            files.append((_read_yaml_file(user, label), label))
    if profile:
        profile_source = f"--profile {profile}"
    else:
        profile = os.environ.get(PROFILE_ENV) or None
        profile_source = f"${PROFILE_ENV}={profile}"
    return _build(files, profile, profile_source, overrides)


def _directory(path: Path, what: str) -> Path:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what}: {path} is a file, not a directory")
    return path


def resolve_paths(params: Params, root: Path = PROJECT_ROOT) -> Paths:
    """Turn the relative paths of ``params`` into absolute ones.

    ``$ENGAGE_DATA_DIR`` (when set) replaces ``data.dir`` and also holds the MLflow store
    (``<data dir>/mlruns``), so a test or a second data set never touches the defaults.
    ``$ENGAGE_MLRUNS_DIR`` (when set) names the MLflow store folder outright, whatever the
    data dir: ``engage serve`` passes both, so the service reads exactly the stores the
    command resolved (the default layout keeps the store in ``<root>/mlruns``).

    Raises:
        ConfigError: the data or MLflow directory exists as a file.

    """
    env_dir = os.environ.get(DATA_DIR_ENV)
    if env_dir:
        data_dir = _directory(Path(env_dir).expanduser().resolve(), f"${DATA_DIR_ENV}")
        mlruns = _directory(data_dir / "mlruns", f"${DATA_DIR_ENV}/mlruns")
    else:
        data_dir = _directory((root / params.data.dir).resolve(), "data.dir")
        mlruns = _directory((root / params.mlflow.dir).resolve(), "mlflow.dir")
    env_mlruns = os.environ.get(MLRUNS_DIR_ENV)
    if env_mlruns:
        mlruns = _directory(Path(env_mlruns).expanduser().resolve(), f"${MLRUNS_DIR_ENV}")
    return Paths(root=root, data_dir=data_dir, mlruns_dir=mlruns, params=params)
