"""Every Feast object of the project, built in code from the parameters and paths.

:func:`build_feast_objects` is a pure function of ``(params, paths)``: the contact
entity, the file source over the snapshots, one feature view per catalog family (fields,
descriptions and tags from :mod:`features.catalog`) and one feature service per model of
:mod:`engage.specs`. ``features.store.apply_repo`` applies its result; the files under
``feature_repo/`` call the same functions with the default configuration, so the Feast
CLI sees the same objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.data_source import DataSource
from feast.types import Float64, Int64

from engage.config import Params, Paths
from engage.specs import MODEL_SPECS, ModelSpec
from features.catalog import (
    CREATED,
    ENTITY_KEY,
    FAMILIES,
    TIMESTAMP,
    VIEWS,
    feature_specs,
    feature_tags,
)
from features.snapshots import snapshot_glob

ENTITY = "customer"
SOURCE = "customer_features_source"


@dataclass(frozen=True)
class FeastObjects:
    """The Feast definitions of the project.

    Attributes:
        entity: the contact, keyed on ``customer_id``.
        source: the snapshot files.
        views: one feature view per family, in catalog order.
        services: one feature service per model spec (shared when two specs name one).

    """

    entity: Entity
    source: DataSource
    views: tuple[FeatureView, ...]
    services: tuple[FeatureService, ...]

    def all(self) -> list:
        """Every object, in the order ``FeatureStore.apply`` takes them."""
        return [self.entity, self.source, *self.views, *self.services]

    def view(self, name: str) -> FeatureView:
        """The feature view called ``name``.

        Raises:
            KeyError: no such view.

        """
        for view in self.views:
            if view.name == name:
                return view
        raise KeyError(name)


def customer_entity() -> Entity:
    """The contact (prospect or customer) every feature is about."""
    return Entity(
        name=ENTITY,
        join_keys=[ENTITY_KEY],
        value_type=ValueType.STRING,
        description="A contact of the brand: a prospect (no purchase yet) or a customer.",
    )


_SOURCE_DESCRIPTION = (
    "One Parquet file per as-of time (features/aggregates.py): one row per contact "
    "known at that time, computed only from events strictly before it."
)


def snapshot_source(paths: Paths) -> DataSource:
    """The Parquet snapshots under ``paths.features_dir`` (an absolute glob).

    A file source for Feast's DuckDB offline store, or, with ``compute.engine: spark``,
    a Spark source over the same files (Feast's Spark offline store reads only those).
    """
    if paths.params.compute.engine == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import (
            SparkSource,
        )

        return SparkSource(
            name=SOURCE,
            path=snapshot_glob(paths.features_dir),
            file_format="parquet",
            timestamp_field=TIMESTAMP,
            created_timestamp_column=CREATED,
            description=_SOURCE_DESCRIPTION,
        )
    return FileSource(
        name=SOURCE,
        path=snapshot_glob(paths.features_dir),
        file_format=ParquetFormat(),
        timestamp_field=TIMESTAMP,
        created_timestamp_column=CREATED,
        description=_SOURCE_DESCRIPTION,
    )


def feature_views(params: Params, entity: Entity, source: DataSource) -> tuple[FeatureView, ...]:
    """One view per family of the catalog, with the fields ``params`` gives it."""
    specs = feature_specs(params)
    views = []
    for name, description in VIEWS.items():
        fields = [
            Field(
                name=s.name,
                dtype=Int64 if s.dtype == "int" else Float64,
                description=s.description,
                tags=feature_tags(s),
            )
            for s in specs
            if s.view == name
        ]
        views.append(
            FeatureView(
                name=name,
                entities=[entity],
                ttl=timedelta(days=params.features.ttl_days),
                schema=fields,
                source=source,
                online=True,
                description=description,
                tags={"family": FAMILIES[name]},
            )
        )
    return tuple(views)


def feature_services(
    views: Sequence[FeatureView], models: Iterable[ModelSpec] | None = None
) -> tuple[FeatureService, ...]:
    """One service per distinct ``feature_service`` of the model specs, over ``views``.

    A model version that needs other features gets a new service name in its spec, so
    the features of a registered model never change under it.

    Args:
        views: the views every service reads.
        models: the model specs; default every spec of :data:`engage.specs.MODEL_SPECS`.

    """
    by_service: dict[str, list[ModelSpec]] = {}
    for spec in MODEL_SPECS.values() if models is None else models:
        by_service.setdefault(spec.feature_service, []).append(spec)
    return tuple(
        FeatureService(
            name=name,
            features=list(views),
            description="; ".join(f"Features of the {s.name} model ({s.purpose})" for s in specs),
            tags={"models": ",".join(s.name for s in specs)},
        )
        for name, specs in by_service.items()
    )


def build_feast_objects(
    params: Params, paths: Paths, models: Iterable[ModelSpec] | None = None
) -> FeastObjects:
    """Every Feast object for ``params`` (features, TTL) and ``paths`` (snapshot files).

    Args:
        params: the parameters (profile and overrides applied).
        paths: where the snapshots are.
        models: the model specs to build services for; default all of them.

    """
    entity = customer_entity()
    source = snapshot_source(paths)
    views = feature_views(params, entity, source)
    return FeastObjects(entity, source, views, feature_services(views, models))
