import importlib.util
import subprocess
import sys

import pandas as pd
import pytest

from engage.config import PROJECT_ROOT, load_params
from engage.data import cdnow
from engage.data.cdnow import cdnow_path, load_cdnow
from engage.data.validate import validate_events

needs_lifetimes = pytest.mark.skipif(
    importlib.util.find_spec("lifetimes") is None, reason="lifetimes not installed"
)


@pytest.fixture(scope="module")
def cdnow_data():
    return load_cdnow()


@needs_lifetimes
def test_counts_and_ranges(cdnow_data):
    events, customers = cdnow_data
    assert len(events) == 69_659
    assert len(customers) == 23_570
    assert events["event_id"].is_unique
    assert (events["event_type"] == "purchase").all()
    assert (events["channel"] == "store").all()
    assert events["event_time"].min() == pd.Timestamp("1997-01-01", tz="UTC")
    assert events["event_time"].max() == pd.Timestamp("1998-06-30", tz="UTC")
    assert str(events["event_time"].dtype) == "datetime64[us, UTC]"
    assert (events["value"] >= 0).all()
    assert (events["value"] == 0).sum() == 80  # free orders in the source, kept as 0


@needs_lifetimes
def test_customers_and_ids(cdnow_data):
    events, customers = cdnow_data
    assert customers["customer_id"].str.fullmatch(r"\d{5}").all()
    assert customers["customer_id"].is_unique
    first = events.groupby("customer_id")["event_time"].min()
    assert customers.set_index("customer_id")["first_seen"].equals(first.rename("first_seen"))
    # CDNOW's cohort made its first purchase in the first quarter of 1997.
    assert customers["first_seen"].max() < pd.Timestamp("1997-04-01", tz="UTC")


@needs_lifetimes
def test_same_day_orders_are_kept(cdnow_data):
    events, _ = cdnow_data
    same_day = events.duplicated(["customer_id", "event_time"]).sum()
    assert same_day == 69_659 - 67_591


@needs_lifetimes
def test_events_pass_validation(cdnow_data):
    events, _ = cdnow_data
    data = load_params(PROJECT_ROOT / "params.yaml").data
    _, _, report = validate_events(events, data)
    assert report.ok, report.to_text()


@needs_lifetimes
def test_path_is_found_without_importing_lifetimes():
    code = (
        "import sys; from engage.data.cdnow import cdnow_path; "
        "assert cdnow_path().is_file(); assert 'lifetimes' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT_ROOT)
    assert cdnow_path().name == "CDNOW_master.txt"


def test_missing_lifetimes_says_how_to_install(monkeypatch):
    monkeypatch.setattr(cdnow.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install -e \.\[benchmarks\]"):
        cdnow_path()


def test_original_file_without_header(tmp_path):
    path = tmp_path / "cdnow.txt"
    path.write_text(" 00001 19970101  1   11.77\r\n 2 19970112  5   0.00\r\n 2 19970301 1 9\r\n")
    events, customers = load_cdnow(path)
    assert events["customer_id"].tolist() == ["00001", "00002", "00002"]
    assert events["value"].tolist() == [11.77, 0.0, 9.0]
    assert customers["first_seen"].tolist() == [
        pd.Timestamp("1997-01-01", tz="UTC"),
        pd.Timestamp("1997-01-12", tz="UTC"),
    ]


def test_broken_line_is_reported(tmp_path):
    path = tmp_path / "cdnow.txt"
    path.write_text("00001 19970101 1 11.77\n00002 1997-01-12 1 5.00\n")
    with pytest.raises(ValueError, match=r"1 line\(s\) without a valid date or amount.*00002"):
        load_cdnow(path)
