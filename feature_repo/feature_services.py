"""Feast feature services: one per model of engage/specs.py, for training and serving alike.

A new model version that needs other features gets a new service name in its spec, so
the features of a registered model never change under it.
"""

from feature_views import views

from features.feast_objects import feature_services

# Feast collects the objects bound to module attributes; the names come from the specs.
globals().update({service.name: service for service in feature_services(views)})
