import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engage.data.io import (
    append_rows,
    read_customers,
    read_events,
    write_customers,
    write_events,
    write_table,
)
from engage.schema import CUSTOMERS_SCHEMA, EVENTS_SCHEMA

US_UTC = pa.timestamp("us", tz="UTC")


def events(n: int = 3, start: str = "2025-01-01 10:00", prefix: str = "e") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": [f"{prefix}{i}" for i in range(n)],
            "customer_id": ["c1"] * n,
            "event_time": pd.date_range(start, periods=n, freq="h", tz="UTC"),
            "event_type": ["purchase"] * n,
            "value": np.arange(n, dtype=float),
            "channel": ["web"] * n,
            "campaign_id": [None] * n,
        }
    )


def test_round_trip_keeps_microsecond_utc(tmp_path):
    path = tmp_path / "deep" / "dir" / "events.parquet"
    df = events()
    write_events(df, path)

    assert pq.read_schema(path).field("event_time").type == US_UTC
    back = read_events(path)
    assert str(back["event_time"].dtype) == "datetime64[us, UTC]"
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert back["event_time"].tolist() == df["event_time"].tolist()


def test_nanoseconds_naive_and_other_zones_become_us_utc(tmp_path):
    df = events(3)
    df["event_time"] = [
        pd.Timestamp("2025-01-01 10:00:00.123456789"),  # naive, ns precision
        pd.Timestamp("2025-01-01 12:00", tz="Europe/Warsaw"),
        pd.Timestamp("2025-01-01 11:00", tz="UTC"),
    ]
    path = tmp_path / "events.parquet"
    write_events(df, path)
    assert pq.read_schema(path).field("event_time").type == US_UTC
    assert read_events(path)["event_time"].tolist() == [
        pd.Timestamp("2025-01-01 10:00:00.123456", tz="UTC"),
        pd.Timestamp("2025-01-01 11:00", tz="UTC"),
        pd.Timestamp("2025-01-01 11:00", tz="UTC"),
    ]


def test_customers_round_trip(tmp_path):
    path = tmp_path / "customers.parquet"
    df = pd.DataFrame({"customer_id": ["a", "b"], "first_seen": ["2025-01-01", "2025-01-02"]})
    write_customers(df, path)
    assert pq.read_schema(path).field("first_seen").type == US_UTC
    back = read_customers(path)
    assert back["customer_id"].tolist() == ["a", "b"]
    assert back["first_seen"].iloc[1] == pd.Timestamp("2025-01-02", tz="UTC")


@pytest.mark.parametrize("reader", [read_events, read_customers])
def test_missing_file_names_the_commands_that_create_it(tmp_path, reader):
    with pytest.raises(FileNotFoundError, match=r"engage data simulate.*engage data ingest"):
        reader(tmp_path / "nothing.parquet")


def test_append_keeps_stored_rows(tmp_path):
    path = tmp_path / "events.parquet"
    append_rows(events(2, prefix="a"), path, EVENTS_SCHEMA)  # creates the file
    append_rows(events(3, start="2025-02-01", prefix="b"), path, EVENTS_SCHEMA)
    back = read_events(path)
    assert back["event_id"].tolist() == ["a0", "a1", "b0", "b1", "b2"]
    assert pq.read_schema(path).field("event_time").type == US_UTC


def test_append_refuses_to_drop_stored_columns(tmp_path):
    path = tmp_path / "t.parquet"
    wide = pa.schema([pa.field("a", pa.string()), pa.field("b", pa.string())])
    write_table(pd.DataFrame({"a": ["x"], "b": ["y"]}), path, wide)
    with pytest.raises(ValueError, match="not in the new schema: b"):
        append_rows(pd.DataFrame({"a": ["z"]}), path, pa.schema([pa.field("a", pa.string())]))
    assert len(pq.read_table(path)) == 1


def test_append_adds_new_nullable_columns(tmp_path):
    path = tmp_path / "t.parquet"
    narrow = pa.schema([pa.field("a", pa.string())])
    wide = pa.schema([pa.field("a", pa.string()), pa.field("b", pa.string())])
    write_table(pd.DataFrame({"a": ["x"]}), path, narrow)
    append_rows(pd.DataFrame({"a": ["z"], "b": ["w"]}), path, wide)
    assert pq.read_table(path).to_pydict() == {"a": ["x", "z"], "b": [None, "w"]}


def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "events.parquet"
    write_events(events(2), path)
    broken = events(2)
    broken.loc[1, "customer_id"] = None
    with pytest.raises(ValueError, match="customer_id has 1 missing values"):
        write_events(broken, path)
    assert read_events(path)["customer_id"].tolist() == ["c1", "c1"]
    assert [p.name for p in tmp_path.iterdir()] == ["events.parquet"]


def test_write_requires_non_nullable_columns(tmp_path):
    with pytest.raises(ValueError, match="required columns missing: first_seen"):
        write_table(pd.DataFrame({"customer_id": ["a"]}), tmp_path / "c.parquet", CUSTOMERS_SCHEMA)


def test_timestamp_strings_are_parsed_as_iso_8601(tmp_path):
    path = tmp_path / "customers.parquet"
    df = pd.DataFrame(
        {"customer_id": ["a", "b"], "first_seen": ["2025-01-01T02:00+02:00", "2025-01-01 00:00"]}
    )
    write_customers(df, path)
    assert (read_customers(path)["first_seen"] == pd.Timestamp("2025-01-01", tz="UTC")).all()
    df.loc[1, "first_seen"] = "01/02/2025"
    with pytest.raises(ValueError, match="1 unparsable timestamps, e.g. '01/02/2025'"):
        write_customers(df, path)
