from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engage.config import PROJECT_ROOT, load_params
from engage.data.validate import (
    DataValidationError,
    RuleFailure,
    ValidationReport,
    validate_customers,
    validate_events,
)

NOW = pd.Timestamp("2025-06-01 12:00", tz="UTC")


@pytest.fixture(scope="module")
def data():
    return load_params(Path(PROJECT_ROOT) / "params.yaml").data


def make_events(n: int = 6) -> pd.DataFrame:
    """Valid events of several types, as a user might send them (ISO strings)."""
    types = ["purchase", "web_visit", "email_open", "nps_response", "cart_add", "email_click"]
    values = {"purchase": 25.0, "web_visit": 120.0, "nps_response": 9.0}
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "customer_id": [f"c{i % 3}" for i in range(n)],
            "event_time": [f"2025-05-{1 + i % 28:02d}T10:00:00" for i in range(n)],
            "event_type": [types[i % len(types)] for i in range(n)],
            "value": [values.get(types[i % len(types)], np.nan) for i in range(n)],
            "channel": "web",
            "campaign_id": None,
        }
    )


def failure(report: ValidationReport, rule: str, column: str) -> RuleFailure:
    found = [f for f in report.failures if (f.rule, f.column) == (rule, column)]
    assert found, f"no {rule} on {column} in:\n{report.to_text()}"
    return found[0]


def test_clean_events_pass_with_schema_types(data):
    good, bad, report = validate_events(make_events(), data, now=NOW)
    assert report.ok
    assert (report.total_rows, report.good_rows, report.bad_rows) == (6, 6, 0)
    assert bad.empty
    assert str(good["event_time"].dtype) == "datetime64[us, UTC]"
    assert good["value"].dtype == "float64"
    assert list(good.columns) == [
        "event_id",
        "customer_id",
        "event_time",
        "event_type",
        "value",
        "channel",
        "campaign_id",
    ]


# (row, column, bad cell, expected rule): row 0 is a purchase, 1 a web_visit,
# 2 an email_open, 3 an nps_response.
BAD_CELLS = {
    "missing_event_id": (2, "event_id", None, "required"),
    "blank_event_id": (2, "event_id", "   ", "required"),
    "missing_customer_id": (2, "customer_id", np.nan, "required"),
    "empty_customer_id": (2, "customer_id", "", "required"),
    "missing_event_time": (2, "event_time", None, "required"),
    "missing_event_type": (2, "event_type", None, "required"),
    "unparsable_timestamp": (2, "event_time", "yesterday", "unparsable_timestamp"),
    "non_iso_timestamp": (2, "event_time", "01/02/2025", "unparsable_timestamp"),
    "future_timestamp": (2, "event_time", "2025-06-01T12:06:00Z", "future_timestamp"),
    "unknown_event_type": (2, "event_type", "page_view", "unknown_event_type"),
    "value_not_numeric": (1, "value", "12,5", "not_numeric"),
    "purchase_without_value": (0, "value", None, "missing_value"),
    "nps_without_value": (3, "value", np.nan, "missing_value"),
    "infinite_value": (2, "value", np.inf, "infinite_value"),
    "negative_purchase": (0, "value", -5.0, "negative_value"),
    "negative_web_visit": (1, "value", -1.0, "negative_value"),
    "nps_above_10": (3, "value", 11.0, "out_of_range"),
    "nps_below_0": (3, "value", -1.0, "out_of_range"),
}


@pytest.mark.parametrize("case", BAD_CELLS, ids=list(BAD_CELLS))
def test_each_rule_flags_its_row_and_keeps_the_others(data, case):
    row, column, cell, rule = BAD_CELLS[case]
    df = make_events()
    df[column] = df[column].astype(object)
    df.loc[row, column] = cell

    good, bad, report = validate_events(df, data, now=NOW)

    f = failure(report, rule, column)
    assert f.rows == 1
    assert len(report.failures) == 1, report.to_text()
    assert (report.good_rows, report.bad_rows) == (5, 1)
    assert report.good_rows + report.bad_rows == report.total_rows == 6
    assert len(good) == 5 and df.loc[row, "event_id"] not in set(good["event_id"])
    assert bad["errors"].tolist() == [f"{rule}:{column}"]
    assert f"{rule} on {column}: 1 row" in report.to_text()


def test_future_tolerance_is_respected(data):
    df = make_events(2)
    df.loc[0, "event_time"] = NOW + pd.Timedelta(minutes=data.future_tolerance_minutes)
    df.loc[1, "event_time"] = NOW + pd.Timedelta(minutes=data.future_tolerance_minutes + 1)
    _, bad, report = validate_events(df, data, now=NOW)
    assert bad["event_id"].tolist() == ["e1"]
    assert failure(report, "future_timestamp", "event_time").rows == 1


def test_values_that_are_allowed(data):
    df = make_events(4)
    df["value"] = [0.0, np.nan, -3.0, 10.0]  # free purchase, unknown visit length,
    # a value on a type without one (ignored), a top NPS score
    df["event_type"] = ["purchase", "web_visit", "email_open", "nps_response"]
    _, _, report = validate_events(df, data, now=NOW)
    assert report.ok, report.to_text()


def test_numeric_strings_are_parsed(data):
    df = make_events(2)
    df["value"] = ["19.90", " 3 "]
    good, _, report = validate_events(df, data, now=NOW)
    assert report.ok
    assert good["value"].tolist() == [19.9, 3.0]


def test_duplicate_ids_within_the_file_keep_the_first(data):
    df = make_events()
    df.loc[[3, 5], "event_id"] = "e1"
    good, bad, report = validate_events(df, data, now=NOW)
    f = failure(report, "duplicate_id", "event_id")
    assert f.rows == 2 and f.examples == ("e1",)
    assert "e1" in set(good["event_id"])
    assert bad.index.tolist() == [3, 5]
    assert report.good_rows + report.bad_rows == report.total_rows


@pytest.mark.parametrize("kind", [set, pd.Series])
def test_duplicate_ids_against_the_store(data, kind):
    good, bad, report = validate_events(
        make_events(), data, now=NOW, existing_ids=kind(["e0", "e4", "zz"])
    )
    assert failure(report, "duplicate_id_in_store", "event_id").rows == 2
    assert sorted(bad["event_id"]) == ["e0", "e4"]
    assert len(good) == 4


def test_a_row_breaking_several_rules_counts_once(data):
    df = make_events()
    df.loc[0, ["event_id", "event_time"]] = ["", "garbage"]
    df.loc[0, "value"] = -2.0
    _, bad, report = validate_events(df, data, now=NOW)
    assert report.bad_rows == 1 and report.good_rows == 5
    assert {(f.rule, f.column, f.rows) for f in report.failures} == {
        ("required", "event_id", 1),
        ("unparsable_timestamp", "event_time", 1),
        ("negative_value", "value", 1),
    }
    assert bad["errors"].iloc[0] == (
        "required:event_id; unparsable_timestamp:event_time; negative_value:value"
    )


def test_bad_rows_keep_their_original_values_and_index(data):
    df = make_events().set_index(pd.Index([10, 11, 12, 13, 14, 15]))
    df["value"] = df["value"].astype(object)
    df.loc[13, "value"] = "lots"
    _, bad, report = validate_events(df, data, now=NOW)
    assert bad.index.tolist() == [13]
    assert bad.loc[13, "value"] == "lots"
    assert failure(report, "not_numeric", "value").examples == ("lots",)


def test_missing_required_columns_are_all_named(data):
    df = make_events().drop(columns=["event_id", "event_time"])
    with pytest.raises(DataValidationError, match="missing_column on event_id") as info:
        validate_events(df, data, now=NOW)
    assert "missing_column on event_time" in str(info.value)
    assert {f.column for f in info.value.report.failures} == {"event_id", "event_time"}


def test_optional_columns_may_be_absent(data):
    df = make_events().drop(columns=["value", "channel", "campaign_id"])
    df["event_type"] = "email_open"
    good, _, report = validate_events(df, data, now=NOW)
    assert report.ok
    assert good["value"].isna().all() and good["channel"].isna().all()


def test_absent_value_column_fails_purchases(data):
    df = make_events().drop(columns=["value"])
    _, _, report = validate_events(df, data, now=NOW)
    assert failure(report, "missing_value", "value").rows == 2  # the two nps / purchase rows


@pytest.mark.parametrize(
    "times",
    [
        ["2025-05-01 08:00:00", "2025-05-02 23:30:00"],  # naive strings: UTC
        ["2025-05-01T10:00:00+02:00", "2025-05-03T01:30:00+02:00"],  # offsets
        ["2025-05-01T08:00:00Z", "2025-05-02T23:30:00Z"],
        # pandas alone reads the naive string in the +02:00 of the one before it
        ["2025-05-01T10:00:00+02:00", "2025-05-02 23:30:00"],
        pd.to_datetime(["2025-05-01 08:00", "2025-05-02 23:30"]),  # naive datetimes
        pd.to_datetime(["2025-05-01 10:00", "2025-05-03 01:30"]).tz_localize("Europe/Warsaw"),
    ],
    ids=["naive-str", "offset-str", "z-str", "offset-then-naive-str", "naive-dt", "aware-dt"],
)
def test_timestamps_are_converted_to_utc(data, times):
    df = make_events(2)
    df["event_time"] = times
    good, _, report = validate_events(df, data, now=NOW)
    assert report.ok
    expected = pd.to_datetime(["2025-05-01 08:00", "2025-05-02 23:30"]).tz_localize("UTC")
    assert good["event_time"].tolist() == expected.tolist()
    assert str(good["event_time"].dtype) == "datetime64[us, UTC]"


def test_epoch_numbers_are_not_guessed(data):
    df = make_events(2)
    df["event_time"] = [1_700_000_000, 1_700_000_100]
    _, _, report = validate_events(df, data, now=NOW)
    assert failure(report, "unparsable_timestamp", "event_time").rows == 2


def test_numeric_ids_become_strings(data):
    df = make_events(2)
    df["customer_id"] = [42.0, 7.0]  # what a CSV reader makes of integer ids
    good, _, report = validate_events(df, data, now=NOW)
    assert report.ok
    assert good["customer_id"].tolist() == ["42", "7"]


def test_error_text_names_rule_column_and_count(data):
    df = make_events()
    df.loc[[1, 2], "event_type"] = "tweet"
    _, _, report = validate_events(df, data, now=NOW)
    with pytest.raises(DataValidationError, match=r"unknown_event_type on event_type: 2 rows"):
        raise DataValidationError(report)
    assert report.to_text().splitlines()[0] == "events: 6 rows = 4 good + 2 bad"
    assert "'tweet'" in report.to_text()


def test_empty_input_is_fine(data):
    good, bad, report = validate_events(make_events().iloc[:0], data, now=NOW)
    assert report.ok and report.total_rows == 0 and good.empty and bad.empty


def test_customers_rules():
    df = pd.DataFrame(
        {
            "customer_id": ["a", "b", "a", "", "c", "d"],
            "first_seen": [
                "2024-01-01",
                "2024-01-01T00:00:00+02:00",
                "2024-02-01",
                "2024-01-01",
                "2030-01-01",
                "soon",
            ],
        }
    )
    good, bad, report = validate_customers(df, now=NOW)
    assert {(f.rule, f.column, f.rows) for f in report.failures} == {
        ("duplicate_id", "customer_id", 1),
        ("required", "customer_id", 1),
        ("future_timestamp", "first_seen", 1),
        ("unparsable_timestamp", "first_seen", 1),
    }
    assert good["customer_id"].tolist() == ["a", "b"]
    assert good["first_seen"].iloc[1] == pd.Timestamp("2023-12-31 22:00", tz="UTC")
    assert (report.good_rows, report.bad_rows) == (2, 4)


def test_customers_missing_columns():
    with pytest.raises(DataValidationError, match="missing_column on first_seen"):
        validate_customers(pd.DataFrame({"customer_id": ["a"]}))


# --- text that means "nothing", padding, edges of the timestamp and float ranges -------


def test_placeholder_ids_are_refused_with_their_text(data):
    df = make_events(6)
    df.loc[0, "customer_id"] = "NA"
    df.loc[1, "event_id"] = "null"
    df.loc[2, "customer_id"] = "#N/A"
    df.loc[3, "channel"] = "NA"  # a channel may be called NA
    good, bad, report = validate_events(df, data, now=NOW)
    assert failure(report, "placeholder_id", "customer_id").rows == 2
    assert failure(report, "placeholder_id", "event_id").examples == ("null",)
    assert bad["customer_id"].tolist() == ["NA", "c1", "#N/A"]
    assert good["channel"].tolist() == ["NA", "web", "web"]


def test_text_is_trimmed_and_counted(data):
    df = make_events(3)
    df["customer_id"] = ["c1 ", " c1", "c1"]
    df["event_type"] = [" purchase", "web_visit", "email_open"]
    good, _, report = validate_events(df, data, now=NOW)
    assert report.ok and good["customer_id"].tolist() == ["c1"] * 3
    assert good["event_type"].tolist()[0] == "purchase"
    assert report.notes == (
        "customer_id: 2 values trimmed of surrounding spaces",
        "event_type: 1 value trimmed of surrounding spaces",
    )
    assert "  note: customer_id: 2 values trimmed" in report.to_text()


def test_timestamps_out_of_range_are_not_called_unparsable(data):
    df = make_events(4)
    df["event_time"] = ["1500-01-01", "2262-04-12T00:00:00Z", "0001-01-01T00:00", "1677-09-22"]
    _, _, report = validate_events(df, data, now=NOW)
    f = failure(report, "timestamp_out_of_range", "event_time")
    assert f.rows == 3 and "out of range (before 1677 / after 2262)" in report.to_text()
    assert report.good_rows == 1


def test_numbers_beyond_the_float_range_are_infinite_not_text(data):
    df = make_events(6)
    df["event_type"] = "web_visit"
    df["value"] = ["1e309", "-1e309", "inf", "1_000", "nan", "12"]
    _, _, report = validate_events(df, data, now=NOW)
    assert failure(report, "infinite_value", "value").rows == 3
    assert failure(report, "not_numeric", "value").examples == ("1_000", "nan")


def test_float_ids_that_lost_digits_fail_the_whole_frame(data):
    df = make_events(3)
    df["customer_id"] = [1.0, 2.0**53, 3.0]
    with pytest.raises(DataValidationError, match=r"inexact_id on customer_id: 1 row") as info:
        validate_events(df, data, now=NOW)
    assert info.value.report.bad_rows == 3 and "store ids as text" in str(info.value)
    df["customer_id"] = [1.0, 2.0**53 - 1, 3.0]  # below 2^53: exact, written as integers
    good, _, _ = validate_events(df, data, now=NOW)
    assert good["customer_id"].tolist() == ["1", str(2**53 - 1), "3"]
