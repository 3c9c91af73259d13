"""Feast feature views: one per feature family of features/catalog.py.

The feature list comes from params.yaml (event types, windows, rates), so a new event
type adds features here without code.
"""

from data_sources import customer_features_source
from entities import customer

from engage.config import load_params
from features.feast_objects import feature_views

views = feature_views(load_params(), customer, customer_features_source)
# Feast collects the objects bound to module attributes; the names come from the catalog.
globals().update({view.name: view for view in views})
