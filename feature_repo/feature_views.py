"""Feast feature views: one per feature family of features/catalog.py.

The feature list comes from params.yaml (event types, windows, rates), so a new event
type adds features here without code.
"""

from datetime import timedelta

from data_sources import customer_features_source
from entities import customer
from feast import FeatureView

from features.store import view_fields, view_settings

_ttl, _descriptions = view_settings()


def _view(name: str) -> FeatureView:
    return FeatureView(
        name=name,
        entities=[customer],
        ttl=timedelta(days=_ttl),
        schema=view_fields(name),
        source=customer_features_source,
        online=True,
        description=_descriptions[name],
    )


customer_rfm = _view("customer_rfm")
customer_activity = _view("customer_activity")
customer_engagement = _view("customer_engagement")
