import pandas as pd
import pyarrow.parquet as pq
import pytest

from engage.config import load_params
from engage.data.ingest import (
    apply_mapping,
    derive_customers,
    ingest_events,
    parse_mapping,
    read_user_file,
)
from engage.data.io import read_customers, read_events, read_quarantine
from engage.data.validate import DataValidationError

NOW = pd.Timestamp("2025-06-01 12:00", tz="UTC")
LATER = NOW + pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def data():
    # One-row batches that break a rule are all bad: the share of bad rows that stops an
    # ingest (data.max_bad_share) is tested on its own in test_ingest_mapping.py.
    return load_params(overrides=("data.max_bad_share=1",)).data


@pytest.fixture
def paths(tmp_path):
    return {
        "events_path": tmp_path / "events.parquet",
        "quarantine_path": tmp_path / "quarantine.parquet",
        "customers_path": tmp_path / "customers.parquet",
    }


def batch(ids, customers=None, times=None, types=None, values=None) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame(
        {
            "event_id": ids,
            "customer_id": customers or ["c1"] * n,
            "event_time": times or ["2025-05-01T10:00:00Z"] * n,
            "event_type": types or ["purchase"] * n,
            "value": values or [10.0] * n,
        }
    )


# --- mapping -------------------------------------------------------------------------


def test_parse_mapping():
    assert parse_mapping(["user=customer_id", " ts = event_time", "a=b=event_id"]) == {
        "user": "customer_id",
        "ts": "event_time",
        "a=b": "event_id",
    }


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["user"], r"'user' must look like their_column=field"),
        (["=customer_id"], r"'=customer_id' must look like"),
        (["user="], r"'user=' must look like"),
        (["user=client"], r"unknown field 'client' \(fields: event_id, customer_id"),
        (["a=event_id", "b=event_id"], r"'b=event_id': field 'event_id' is already mapped"),
        (["a=event_id", "a=customer_id"], r"column 'a' is already mapped"),
    ],
)
def test_parse_mapping_errors(items, message):
    with pytest.raises(ValueError, match=message):
        parse_mapping(items)


def test_apply_mapping_renames_and_keeps_schema_fields():
    df = pd.DataFrame(
        {"id": ["1"], "user": ["u"], "ts": ["2025-01-01"], "kind": ["purchase"], "junk": [0]}
    )
    out = apply_mapping(
        df, {"id": "event_id", "user": "customer_id", "ts": "event_time", "kind": "event_type"}
    )
    assert list(out.columns) == ["event_id", "customer_id", "event_time", "event_type"]
    assert out.iloc[0].tolist() == ["1", "u", "2025-01-01", "purchase"]


def test_mapped_column_wins_over_a_same_named_one():
    df = batch(["e1"]).assign(order_value=[99.0])
    out = apply_mapping(df, {"order_value": "value"})
    assert out["value"].tolist() == [99.0]


def test_apply_mapping_names_absent_source_columns():
    with pytest.raises(ValueError, match=r"mapped columns not in the file: usr, tstamp"):
        apply_mapping(batch(["e1"]), {"usr": "customer_id", "tstamp": "event_time"})


def test_apply_mapping_names_missing_required_fields():
    df = pd.DataFrame({"id": ["1"], "type": ["purchase"]})
    with pytest.raises(ValueError, match=r"required fields missing: customer_id, event_time"):
        apply_mapping(df, {"id": "event_id", "type": "event_type"})


# --- reading files -------------------------------------------------------------------


def test_read_csv_keeps_ids_as_text(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("event_id,customer_id,value\n001,00042,12.5\n002,,\n")
    df = read_user_file(path)
    assert df["customer_id"].tolist()[0] == "00042"
    assert df["value"].tolist()[0] == "12.5"
    # An empty cell stays an empty string; validation decides it is missing.
    assert df["customer_id"].iloc[1] == ""


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_read_parquet(tmp_path, suffix):
    path = tmp_path / f"mine{suffix}"
    batch(["e1", "e2"]).to_parquet(path)
    assert read_user_file(path)["event_id"].tolist() == ["e1", "e2"]


def test_read_unsupported_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"unsupported file type '.xlsx'; use .csv, .parquet, .pq"):
        read_user_file(tmp_path / "mine.xlsx")


def test_read_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="mine.csv does not exist"):
        read_user_file(tmp_path / "mine.csv")


# --- ingesting -----------------------------------------------------------------------


def test_good_rows_stored_bad_rows_quarantined(data, paths):
    df = batch(["e1", "e2", "e3"], values=[10.0, -1.0, 5.0])
    report = ingest_events(df, data, now=NOW, **paths)

    assert (report.total_rows, report.good_rows, report.bad_rows) == (3, 2, 1)
    assert read_events(paths["events_path"])["event_id"].tolist() == ["e1", "e3"]
    q = read_quarantine(paths["quarantine_path"])
    assert q["event_id"].tolist() == ["e2"]
    assert q["errors"].tolist() == ["negative_value:value"]
    assert q["value"].tolist() == ["-1.0"]
    assert q["ingested_at"].tolist() == [NOW]


def test_quarantine_appends_and_keeps_earlier_rows(data, paths):
    ingest_events(batch(["e1", "e2"], values=[None, 1.0]), data, now=NOW, **paths)
    # A second file with different columns (extra "channel", text in value).
    second = batch(["e3", "e4"], values=["n/a", 2.0]).assign(channel="app")
    ingest_events(second, data, now=LATER, **paths)

    q = read_quarantine(paths["quarantine_path"])
    assert q["event_id"].tolist() == ["e1", "e3"]
    assert q["errors"].tolist() == ["missing_value:value", "not_numeric:value"]
    assert q["ingested_at"].tolist() == [NOW, LATER]
    assert q["channel"].tolist() == [None, "app"]
    assert read_events(paths["events_path"])["event_id"].tolist() == ["e2", "e4"]


def test_ids_already_stored_are_quarantined(data, paths):
    ingest_events(batch(["e1", "e2"]), data, now=NOW, **paths)
    report = ingest_events(batch(["e2", "e3"]), data, now=NOW, **paths)
    assert [(f.rule, f.rows) for f in report.failures] == [("duplicate_id_in_store", 1)]
    assert read_events(paths["events_path"])["event_id"].tolist() == ["e1", "e2", "e3"]
    assert read_quarantine(paths["quarantine_path"])["event_id"].tolist() == ["e2"]


def test_strict_raises_and_writes_nothing(data, paths, tmp_path):
    ingest_events(batch(["e1"]), data, now=NOW, **paths)
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    df = batch(["e2", "e3"], types=["purchase", "tweet"])

    with pytest.raises(DataValidationError, match="unknown_event_type on event_type: 1 row"):
        ingest_events(df, data, now=NOW, strict=True, **paths)

    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert not paths["quarantine_path"].exists()


def test_strict_with_clean_data_writes(data, paths):
    report = ingest_events(batch(["e1"]), data, now=NOW, strict=True, **paths)
    assert report.ok and len(read_events(paths["events_path"])) == 1


def test_replace_swaps_the_store_and_ignores_old_ids(data, paths):
    ingest_events(batch(["e1", "e2"]), data, now=NOW, **paths)
    report = ingest_events(
        batch(["e2", "e9"], customers=["c7", "c8"]), data, now=NOW, replace=True, **paths
    )
    assert report.ok
    assert read_events(paths["events_path"])["event_id"].tolist() == ["e2", "e9"]
    assert read_customers(paths["customers_path"])["customer_id"].tolist() == ["c7", "c8"]


def test_replace_with_no_good_rows_keeps_the_store(data, paths):
    ingest_events(batch(["e1"]), data, now=NOW, **paths)
    report = ingest_events(batch(["e2"], values=[-5.0]), data, now=NOW, replace=True, **paths)
    assert report.good_rows == 0
    assert read_events(paths["events_path"])["event_id"].tolist() == ["e1"]


def test_customers_keep_the_earliest_first_seen(data, paths):
    ingest_events(
        batch(["e1", "e2"], customers=["a", "b"], times=["2025-03-01", "2025-03-05"]),
        data,
        now=NOW,
        **paths,
    )
    ingest_events(
        batch(["e3", "e4"], customers=["a", "c"], times=["2025-02-01", "2025-04-01T02:00+02:00"]),
        data,
        now=NOW,
        **paths,
    )
    customers = read_customers(paths["customers_path"])
    assert customers.set_index("customer_id")["first_seen"].to_dict() == {
        "a": pd.Timestamp("2025-02-01", tz="UTC"),
        "b": pd.Timestamp("2025-03-05", tz="UTC"),
        "c": pd.Timestamp("2025-04-01", tz="UTC"),
    }
    assert pq.read_schema(paths["customers_path"]).field("first_seen").type.unit == "us"


def test_derive_customers():
    events = batch(["e1", "e2", "e3"], customers=["a", "a", "b"])
    events["event_time"] = pd.to_datetime(["2025-01-02", "2025-01-01", "2025-01-03"], utc=True)
    out = derive_customers(events)
    assert out["customer_id"].tolist() == ["a", "b"]
    assert out["first_seen"].dt.day.tolist() == [1, 3]


def test_csv_end_to_end_with_offsets(data, paths, tmp_path):
    path = tmp_path / "crm.csv"
    path.write_text(
        "id,user,when,what,amount,extra\n"
        "o1,0042,2025-05-01T10:00:00+02:00,purchase,19.90,x\n"
        "o2,0042,2025-05-01 08:00:00,web_visit,,y\n"
        "o3,0043,2025-05-01T08:00:00Z,email_open,,z\n"
    )
    mapping = parse_mapping(
        ["id=event_id", "user=customer_id", "when=event_time", "what=event_type", "amount=value"]
    )
    report = ingest_events(apply_mapping(read_user_file(path), mapping), data, now=NOW, **paths)
    assert report.ok, report.to_text()
    stored = read_events(paths["events_path"])
    assert (stored["event_time"] == pd.Timestamp("2025-05-01 08:00", tz="UTC")).all()
    assert stored["customer_id"].tolist() == ["0042", "0042", "0043"]
    assert stored["value"].iloc[0] == 19.9


def test_customers_table_created_late_covers_the_whole_store(data, paths):
    customers_path = paths.pop("customers_path")
    ingest_events(batch(["e1"], customers=["a"]), data, now=NOW, **paths)
    ingest_events(
        batch(["e2"], customers=["b"]), data, now=NOW, customers_path=customers_path, **paths
    )
    assert read_customers(customers_path)["customer_id"].tolist() == ["a", "b"]


# --- crash safety and re-runs -----------------------------------------------------------


class _Crash(BaseException):
    """Stands for SIGKILL inside one process: nothing after the point runs."""


def test_events_customers_and_quarantine_move_together_across_a_crash(data, paths, monkeypatch):
    """The probe: a kill after the events were rewritten left customers stale, bad rows
    never quarantined, and a rerun quarantined every row as duplicates."""
    from engage.data.store import reading

    ingest_events(batch(["e1"], customers=["a"]), data, now=NOW, **paths)
    second = batch(["e2", "e3", "e4"], customers=["b", "c", "c"], values=[1.0, -1.0, 2.0])

    def crash(name):
        if name == "ingest:mid_commit":
            raise _Crash

    monkeypatch.setattr("engage.journal.fault_point", crash)
    with pytest.raises(_Crash):
        ingest_events(second, data, now=NOW, **paths)
    monkeypatch.undo()
    # The events were renamed, the customers and the quarantine not yet...
    assert read_events(paths["events_path"])["event_id"].tolist() == ["e1", "e2", "e4"]
    assert read_customers(paths["customers_path"])["customer_id"].tolist() == ["a"]
    # ...until a reader (or the next writer) takes the store's lock.
    with reading(paths["events_path"], timeout=5):
        assert read_customers(paths["customers_path"])["customer_id"].tolist() == ["a", "b", "c"]
        assert read_quarantine(paths["quarantine_path"])["event_id"].tolist() == ["e3"]
    # The rerun sees its rows were the last write: nothing quarantined twice.
    report = ingest_events(second, data, now=LATER, **paths)
    assert (report.good_rows, report.bad_rows) == (2, 1)
    assert "already ingested" in report.notes[-1]
    assert read_quarantine(paths["quarantine_path"])["event_id"].tolist() == ["e3"]
    assert len(read_events(paths["events_path"])) == 3


def test_a_crash_before_the_commit_changes_nothing(data, paths, monkeypatch, tmp_path):
    ingest_events(batch(["e1"]), data, now=NOW, **paths)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    def crash(name):
        if name == "ingest:staged":
            raise _Crash

    monkeypatch.setattr("engage.data.ingest.fault_point", crash)
    with pytest.raises(_Crash):
        ingest_events(batch(["e2"], values=[-1.0]), data, now=NOW, **paths)
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # staged files of an abandoned write are deleted
    report = ingest_events(batch(["e2"], values=[-1.0]), data, now=NOW, **paths)
    assert report.bad_rows == 1 and not report.notes


def test_the_same_rows_again_after_another_write_are_checked_again(data, paths):
    ingest_events(batch(["e1"]), data, now=NOW, **paths)
    ingest_events(batch(["e2"]), data, now=NOW, **paths)
    # Not the last write: the usual rules apply (its id is already stored).
    report = ingest_events(batch(["e1"]), data, now=NOW, **paths)
    assert [(f.rule, f.rows) for f in report.failures] == [("duplicate_id_in_store", 1)]


def test_the_write_log_records_each_ingest(data, paths):
    from engage.data.store import read_log

    ingest_events(batch(["e1", "e2"], values=[1.0, -1.0]), data, now=NOW, source="a.csv", **paths)
    [entry] = read_log(paths["events_path"])
    assert (entry["command"], entry["source"], entry["good_rows"], entry["bad_rows"]) == (
        "ingest",
        "a.csv",
        1,
        1,
    )
    assert entry["failures"][0]["rule"] == "negative_value"
