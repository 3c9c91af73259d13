"""Column names and types of the two input tables, ``events`` and ``customers``.

Both are stored as Parquet with timestamps in microseconds, UTC (Feast's DuckDB offline
store refuses nanosecond timestamps).
"""

from __future__ import annotations

import pyarrow as pa

EVENT_ID = "event_id"
CUSTOMER_ID = "customer_id"
EVENT_TIME = "event_time"
EVENT_TYPE = "event_type"
VALUE = "value"
CHANNEL = "channel"
CAMPAIGN_ID = "campaign_id"
FIRST_SEEN = "first_seen"

TIMESTAMP = pa.timestamp("us", tz="UTC")

EVENTS_SCHEMA = pa.schema(
    [
        pa.field(EVENT_ID, pa.string(), nullable=False),
        pa.field(CUSTOMER_ID, pa.string(), nullable=False),
        pa.field(EVENT_TIME, TIMESTAMP, nullable=False),
        pa.field(EVENT_TYPE, pa.string(), nullable=False),
        pa.field(VALUE, pa.float64()),
        pa.field(CHANNEL, pa.string()),
        pa.field(CAMPAIGN_ID, pa.string()),
    ]
)
REQUIRED_EVENT_COLUMNS = (EVENT_ID, CUSTOMER_ID, EVENT_TIME, EVENT_TYPE)
OPTIONAL_EVENT_COLUMNS = (VALUE, CHANNEL, CAMPAIGN_ID)

CUSTOMERS_SCHEMA = pa.schema(
    [
        pa.field(CUSTOMER_ID, pa.string(), nullable=False),
        pa.field(FIRST_SEEN, TIMESTAMP, nullable=False),
    ]
)
