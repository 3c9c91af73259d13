"""Feast data sources: the point-in-time snapshots written by `engage features build`."""

from feast import FileSource
from feast.data_format import ParquetFormat

from features.store import snapshot_glob

customer_features_source = FileSource(
    name="customer_features_source",
    path=snapshot_glob(),
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
    description=(
        "One Parquet file per as-of time (features/aggregates.py): one row per contact "
        "known at that time, computed only from events strictly before it."
    ),
)
