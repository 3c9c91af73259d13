"""Feast data sources: the point-in-time snapshots written by `engage features build`.

The path follows the default configuration: $ENGAGE_DATA_DIR, $ENGAGE_PROFILE and
$ENGAGE_PARAMS are honoured, as in the engage CLI.
"""

from engage.config import load_params, resolve_paths
from features.feast_objects import snapshot_source

customer_features_source = snapshot_source(resolve_paths(load_params()))
