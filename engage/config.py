"""Typed, frozen view of ``params.yaml``.

The file is parsed once by :func:`load_params` into pydantic models that forbid unknown
keys, so a typo such as ``labels.horizon_dayz`` fails with its dotted path instead of
being ignored. Profiles (``profiles.<name>`` in the file) overlay keys for another data
set, e.g. CDNOW, so the same code runs on both.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_ENV = "ENGAGE_DATA_DIR"
PROFILE_ENV = "ENGAGE_PROFILE"
PARAMS_ENV = "ENGAGE_PARAMS"
_IDENT = re.compile(r"[a-z][a-z0-9_]*")


class ConfigError(ValueError):
    """``params.yaml`` is missing, unreadable or has a bad key; the message names it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    dir: str = "data"
    events: str = "events.parquet"
    customers: str = "customers.parquet"
    quarantine: str = "quarantine.parquet"
    event_types: tuple[str, ...] = Field(min_length=1)
    value_event_types: tuple[str, ...] = ()
    # Unit of `value` per type (amount, seconds, score, ...): only tags the Feast features.
    value_units: dict[str, str] = {}
    conversion_event: str = "purchase"
    future_tolerance_minutes: float = Field(5.0, ge=0)

    @model_validator(mode="after")
    def _known_types(self) -> DataParams:
        # Event types become feature (SQL column) names, so they must be identifiers.
        bad = [t for t in self.event_types if not _IDENT.fullmatch(t)]
        if bad:
            raise ValueError(f"event_types must match {_IDENT.pattern}: {bad}")
        unknown = sorted(set(self.value_event_types) - set(self.event_types))
        if unknown:
            raise ValueError(f"value_event_types not in event_types: {unknown}")
        no_value = sorted(set(self.value_units) - set(self.value_event_types))
        if no_value:
            raise ValueError(f"value_units: not in value_event_types: {no_value}")
        if self.conversion_event not in self.event_types:
            raise ValueError(f"conversion_event {self.conversion_event!r} not in event_types")
        return self


class SimulateParams(_Section):
    customers: int = Field(20000, gt=0)
    days: int = Field(365, gt=0)
    seed: int = 42
    start: str = "2025-01-01"
    chunk_customers: int = Field(50000, gt=0)
    initial_customer_share: float = Field(0.35, ge=0, le=1)
    campaign_weekday: int = Field(1, ge=0, le=6)
    engagement_drift_sd: float = Field(0.12, ge=0)
    decline_share: float = Field(0.25, ge=0, le=1)
    decline_weeks: int = Field(8, gt=0)
    amount_log_mean: float = 3.9
    amount_log_sd: float = Field(0.6, gt=0)


class FeaturesParams(_Section):
    dir: str = "features"
    snapshot_every_days: int = Field(7, gt=0)
    windows_days: tuple[int, ...] = Field((7, 30, 90), min_length=1)
    rfm_windows_days: tuple[int, ...] = Field((30, 90, 365), min_length=1)
    trend_days: int = Field(30, gt=0)
    value_sum_types: tuple[str, ...] = ("purchase", "web_visit")
    passive_event_types: tuple[str, ...] = ("email_sent",)
    rates: dict[str, tuple[str, str]] = {}
    cart_event: str | None = "cart_add"
    interval_types: tuple[str, ...] = ()
    last_value_types: tuple[str, ...] = ()
    ttl_days: int = Field(400, gt=0)
    max_snapshots: int = Field(60, gt=0)


class FeastParams(_Section):
    repo: str = "feature_repo"
    project: str = "engage"


class LabelsParams(_Section):
    horizon_days: int = Field(30, gt=0)
    churn_activity_types: tuple[str, ...] = ("purchase",)
    active_within_days: int = Field(180, gt=0)


class LightGBMParams(_Section):
    objective: Literal["binary"] = "binary"
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(31, gt=1)
    max_depth: int = -1
    min_child_samples: int = Field(50, ge=1)
    feature_fraction: float = Field(0.8, gt=0, le=1)
    bagging_fraction: float = Field(0.8, gt=0, le=1)
    bagging_freq: int = Field(1, ge=0)
    lambda_l2: float = Field(1.0, ge=0)
    n_estimators: int = Field(400, gt=0)
    early_stopping_rounds: int = Field(30, gt=0)
    num_threads: int = Field(2, ge=0)


class TrainingParams(_Section):
    seed: int = 42
    valid_snapshots: int = Field(4, gt=0)
    test_snapshots: int = Field(4, gt=0)
    min_train_snapshots: int = Field(3, gt=0)
    max_rows_per_snapshot: int | None = Field(None, gt=0)
    calibration: Literal["isotonic", "sigmoid"] = "isotonic"
    promotion_tolerance: float = Field(0.002, ge=0)
    promotion_metric: Literal["roc_auc", "pr_auc"] = "roc_auc"
    ece_bins: int = Field(10, gt=1)
    lightgbm: LightGBMParams = LightGBMParams()


class MlflowParams(_Section):
    dir: str = "mlruns"


class IndexParams(_Section):
    tau_purchase: float = Field(0.3, ge=0, le=1)
    tau_churn: float = Field(0.5, ge=0, le=1)


class SegmentsParams(_Section):
    new_max_tenure_days: int = Field(30, ge=0)
    waiting_cart_days: int = Field(14, ge=0)
    hero_min_value: float = Field(500.0, ge=0)
    hero_min_purchases_90d: int = Field(3, ge=0)
    repeat_min_purchases_365d: int = Field(3, ge=0)
    at_risk_inactive_days: int = Field(60, ge=0)
    lost_inactive_days: int = Field(180, ge=0)
    lead_min_clicks_30d: int = Field(1, ge=0)
    lead_min_cart_adds_30d: int = Field(1, ge=0)


class ValueParams(_Section):
    lifespan_years: float = Field(2.0, gt=0)
    frequency: Literal["purchases_365d", "mean_gap"] = "purchases_365d"


class ScoringParams(_Section):
    dir: str = "scores"
    top_k_reasons: int = Field(3, ge=0)
    batch_rows: int = Field(100_000, gt=0)


class ServingParams(_Section):
    host: str = "127.0.0.1"
    port: int = Field(3000, gt=0, lt=65536)
    max_ids: int = Field(500, gt=0)
    max_body_bytes: int = Field(262144, gt=0)
    stale_after_hours: float = Field(192, gt=0)
    api_key_env: str = "ENGAGE_API_KEY"
    webhook_url: str | None = None
    webhook_retries: int = Field(3, ge=0)
    webhook_backoff_s: float = Field(0.5, ge=0)
    webhook_timeout_s: float = Field(10.0, gt=0)


class Params(_Section):
    """All of ``params.yaml``; ``profiles`` is resolved away by :func:`load_params`."""

    data: DataParams
    simulate: SimulateParams = SimulateParams()
    features: FeaturesParams = FeaturesParams()
    feast: FeastParams = FeastParams()
    labels: LabelsParams = LabelsParams()
    training: TrainingParams = TrainingParams()
    mlflow: MlflowParams = MlflowParams()
    index: IndexParams = IndexParams()
    segments: SegmentsParams = SegmentsParams()
    value: ValueParams = ValueParams()
    scoring: ScoringParams = ScoringParams()
    serving: ServingParams = ServingParams()
    profile: str | None = None

    @model_validator(mode="after")
    def _types_in_vocabulary(self) -> Params:
        vocab = set(self.data.event_types)
        for path, types in (
            ("features.value_sum_types", self.features.value_sum_types),
            ("features.passive_event_types", self.features.passive_event_types),
            ("labels.churn_activity_types", self.labels.churn_activity_types),
            ("features.interval_types", self.features.interval_types),
            ("features.last_value_types", self.features.last_value_types),
            (
                "features.cart_event",
                (self.features.cart_event,) if self.features.cart_event else (),
            ),
            ("features.rates", tuple(t for pair in self.features.rates.values() for t in pair)),
        ):
            unknown = sorted(set(types) - vocab)
            if unknown:
                raise ValueError(f"{path}: not in data.event_types: {unknown}")
        return self


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


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like dotted.key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def parse_params(
    raw: dict[str, Any],
    profile: str | None = None,
    overrides: tuple[str, ...] = (),
    source: str = "params.yaml",
) -> Params:
    """Validate a raw mapping (as read from YAML) into :class:`Params`.

    Args:
        raw: the parsed YAML document.
        profile: name of a ``profiles.<name>`` overlay to apply, or None.
        overrides: ``dotted.key=value`` strings applied last (values parsed as YAML).
        source: name used in error messages.

    Returns:
        The frozen parameters.

    Raises:
        ConfigError: unknown profile, or a key that is unknown or ill-typed (its dotted
            path is in the message).

    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    doc = dict(raw)
    profiles = doc.pop("profiles", None) or {}
    if profile:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise ConfigError(f"profiles.{profile}: unknown profile (known: {known})")
        doc = _deep_merge(doc, profiles[profile])
    for text in overrides:
        keys, value = _parse_override(text)
        node = doc
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is not a section")
        node[keys[-1]] = value
    doc["profile"] = profile
    try:
        return Params.model_validate(doc)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_params(
    path: Path | str | None = None,
    profile: str | None = None,
    overrides: tuple[str, ...] = (),
) -> Params:
    """Read and validate ``params.yaml``.

    Args:
        path: the YAML file; defaults to ``$ENGAGE_PARAMS`` or ``<root>/params.yaml``.
        profile: overlay name; defaults to ``$ENGAGE_PROFILE``.
        overrides: ``dotted.key=value`` strings applied last.

    Raises:
        ConfigError: the file is missing or invalid.

    """
    path = Path(path or os.environ.get(PARAMS_ENV) or PROJECT_ROOT / "params.yaml")
    if not path.is_file():
        raise ConfigError(f"parameters file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    profile = profile or os.environ.get(PROFILE_ENV) or None
    return parse_params(raw, profile=profile, overrides=overrides, source=str(path))


def resolve_paths(params: Params, root: Path = PROJECT_ROOT) -> Paths:
    """Turn the relative paths of ``params`` into absolute ones.

    ``$ENGAGE_DATA_DIR`` (when set) replaces ``data.dir`` and also holds the MLflow store
    (``<data dir>/mlruns``), so a test or a second data set never touches the defaults.
    """
    env_dir = os.environ.get(DATA_DIR_ENV)
    if env_dir:
        data_dir = Path(env_dir).expanduser().resolve()
        mlruns = data_dir / "mlruns"
    else:
        data_dir = (root / params.data.dir).resolve()
        mlruns = (root / params.mlflow.dir).resolve()
    return Paths(root=root, data_dir=data_dir, mlruns_dir=mlruns, params=params)
