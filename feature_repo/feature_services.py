"""Feast feature services: one per model version, used by training and serving alike.

A new model version that needs other features gets a new service (churn_v2, ...), so
the features of a registered model never change under it.
"""

from feast import FeatureService
from feature_views import customer_activity, customer_engagement, customer_rfm

churn_v1 = FeatureService(
    name="churn_v1",
    features=[customer_rfm, customer_activity, customer_engagement],
    description="Features of the churn (attrition) model, version 1.",
)

appetence_v1 = FeatureService(
    name="appetence_v1",
    features=[customer_rfm, customer_activity, customer_engagement],
    description="Features of the appetence (purchase readiness) model, version 1.",
)
