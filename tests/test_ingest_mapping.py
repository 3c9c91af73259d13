"""Bringing your own events without code: mappings, derived ids, the share of bad rows."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from engage.config import load_params
from engage.data.ingest import ingest_events, prepare_events
from engage.data.io import read_customers, read_events
from engage.data.mapping import (
    EventMapping,
    closest,
    derive_event_ids,
    parse_event_mapping,
    read_mapping_file,
)
from engage.data.store import demo_origin, read_log, store_flags, store_origin

NOW = pd.Timestamp("2025-06-01 12:00", tz="UTC")

SHOP = """user_id,timestamp,event_name,amount
u1,2025-03-01T10:00:00Z,page_view,
u1,2025-03-01T10:05:00Z,add_to_basket,
u1,2025-03-01T10:07:00Z,order,49.90
u1,2025-03-01T10:07:00Z,order,49.90
u2,2025-03-02T09:00:00Z,page_view,
u2,2025-03-02T09:03:00Z, order ,12.00
"""
MAPPING = """columns: {user_id: customer_id, timestamp: event_time, event_name: event_type,
          amount: value}
event_types: {page_view: web_visit, order: purchase}
"""


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    from cli.ui import console

    monkeypatch.setattr(console, "_width", 1000)  # one line per message
    monkeypatch.setenv("ENGAGE_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def engage(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def store(data_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    return read_events(data_dir / "events.parquet"), read_customers(data_dir / "customers.parquet")


# --- must show: the same file twice, the same store ---------------------------------


def test_a_file_without_ids_with_foreign_names_ingested_twice_gives_the_same_store(
    tmp_path, data_dir
):
    shop = tmp_path / "shop.csv"
    shop.write_text(SHOP)
    other = tmp_path / "other.csv"
    other.write_text("user_id,timestamp,event_name,amount\nu3,2025-03-05T08:00:00Z,order,5\n")
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING)
    args = ("data", "ingest", "--mapping", str(mapping), "--map-event", "add_to_basket=cart_add")

    code, out = engage(*args, str(shop))
    assert code == 0, out
    assert "6 rows = 6 good + 0 bad" in out
    assert "event_id: none in the file, derived from each row's content" in out
    assert "2 'page_view' -> 'web_visit'" in out and "1 'add_to_basket' -> 'cart_add'" in out
    events, customers = store(data_dir)
    # The two identical orders of u1 are two events; " order " is trimmed, then mapped.
    assert events["event_type"].tolist() == [
        "web_visit",
        "cart_add",
        "purchase",
        "purchase",
        "web_visit",
        "purchase",
    ]
    assert events["event_id"].is_unique and events["event_id"].str.startswith("h:").all()
    assert events["value"].tolist()[2:4] == [49.9, 49.9]
    first = (events, customers)

    # The same file right away: the store's last write, nothing written again.
    code, out = engage(*args, str(shop))
    assert code == 0 and "already ingested" in out, out
    pd.testing.assert_frame_equal(store(data_dir)[0], first[0])

    # Another file in between, then the first again: its rows are recognised by their
    # derived ids, skipped and counted, not quarantined and not stored twice.
    assert engage(*args, str(other))[0] == 0
    after_other = store(data_dir)
    code, out = engage(*args, str(shop))
    assert code == 0, out
    assert "6 rows already in the store (same content, same derived id): skipped" in out
    pd.testing.assert_frame_equal(store(data_dir)[0], after_other[0])
    pd.testing.assert_frame_equal(store(data_dir)[1], after_other[1])
    assert len(after_other[0]) == 7
    assert not (data_dir / "quarantine.parquet").exists()


def test_a_mostly_bad_file_exits_non_zero_with_the_allowed_values(tmp_path, data_dir):
    shop = tmp_path / "shop.csv"
    shop.write_text(SHOP)
    code, out = engage(
        "data",
        "ingest",
        str(shop),
        "--map",
        "user_id=customer_id",
        "--map",
        "timestamp=event_time",
        "--map",
        "event_name=event_type",
        "--map",
        "amount=value",
    )
    assert code == 1, out
    allowed = load_params().data.event_types
    assert f"allowed: {', '.join(allowed)}" in out
    assert "'page_view': 2 rows, closest allowed: 'web_visit'" in out
    assert "--map-event 'page_view=web_visit'" in out
    assert "'order': 3 rows, closest allowed: 'purchase'" in out
    assert "'add_to_basket': 1 row, closest allowed: 'cart_add'" in out
    assert "error: 6 of 6 rows (100%) are bad, more than data.max_bad_share (50%)" in out
    assert "nothing written" in out
    assert not data_dir.exists() or not any(data_dir.glob("*.parquet"))
    # At the limit (half bad) the good half is kept and the bad half quarantined.
    half = tmp_path / "half.csv"
    half.write_text(
        "event_id,customer_id,event_time,event_type\n"
        "e1,c1,2025-03-01T10:00:00Z,web_visit\ne2,c1,2025-03-01T11:00:00Z,teleport\n"
    )
    code, out = engage("data", "ingest", str(half))
    assert code == 0 and "2 rows = 1 good + 1 bad" in out, out


# --- mapping pieces ----------------------------------------------------------------


def test_derived_ids_are_stable_and_keep_identical_rows_apart():
    df = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "b"],
            "event_time": ["2025-01-01T00:00:00Z"] * 4,
            "event_type": ["purchase"] * 4,
            "value": ["10", "10", "11", "10"],
        }
    )
    ids = derive_event_ids(df)
    assert ids.is_unique and ids.str.fullmatch(r"h:[0-9a-f]{24}").all()
    pd.testing.assert_series_equal(derive_event_ids(df.copy()), ids)
    # The second of two identical rows is their occurrence 1: reordering the file
    # changes which row is which occurrence, not the set of ids.
    assert set(derive_event_ids(df.iloc[::-1])) == set(ids)
    # Surrounding spaces do not change an id (the cells are trimmed when stored).
    spaced = df.assign(customer_id=[" a", "a ", "a", "b"])
    pd.testing.assert_series_equal(derive_event_ids(spaced), ids)
    # Content matters: another value, another id.
    assert derive_event_ids(df.assign(value=["10", "10", "11", "12"]))[3] != ids[3]


def test_closest_allowed_value():
    allowed = load_params().data.event_types
    assert closest("Web-Visit", allowed) == "web_visit"
    assert closest("purchse", allowed) == "purchase"
    assert closest("order", allowed) == "purchase"
    assert closest("add_to_cart", allowed) == "cart_add"
    assert closest("wishlist", allowed) is None
    # A hint names only allowed values: without purchase in the vocabulary, none.
    assert closest("order", ["web_visit"]) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("columns: [a, b]", r"columns must map names to names"),
        ("colums: {a: event_id}", r"unknown key\(s\) colums \(keys: columns, event_types"),
        ("no_amounts: maybe", r"no_amounts must be true or false"),
        ("- a\n- b", r"expected keys columns, event_types"),
        ("columns: {a: [b", r"not valid YAML"),
    ],
)
def test_mapping_file_errors(tmp_path, text, message):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_mapping_file(path)
    with pytest.raises(ValueError, match=r"mapping file .*nope.yaml not found"):
        read_mapping_file(tmp_path / "nope.yaml")


def test_mapping_errors_name_the_item_and_the_allowed_values():
    data = load_params().data
    with pytest.raises(ValueError, match=r"'view' is already mapped to 'web_visit'"):
        parse_event_mapping(["view=web_visit", "view=cart_add"])
    with pytest.raises(ValueError, match=r"--map-event x=cart_ad: 'cart_ad' is not an event "):
        EventMapping(event_types={"x": "cart_ad"}).check(data.event_types)
    with pytest.raises(ValueError, match=r"did you mean 'cart_add'\?\) \(allowed: email_sent"):
        EventMapping(event_types={"x": "cart_ad"}).check(data.event_types)
    with pytest.raises(ValueError, match=r"give one or the other"):
        EventMapping(columns={"kind": "event_type"}, event_type="purchase").check(data.event_types)
    with pytest.raises(ValueError, match=r"unknown field 'client'"):
        EventMapping(columns={"a": "client"}).check(data.event_types)


def test_command_line_mapping_overrides_the_file():
    file = EventMapping(
        columns={"user": "customer_id", "ts": "event_time"}, event_types={"view": "web_visit"}
    )
    cli = EventMapping(columns={"uid": "customer_id"}, event_types={"view": "cart_add"})
    merged = file.merged(cli)
    assert merged.columns == {"ts": "event_time", "uid": "customer_id"}
    assert merged.event_types == {"view": "cart_add"}


def test_a_purchases_only_file_and_an_own_event_type(tmp_path, data_dir):
    orders = tmp_path / "orders.csv"
    orders.write_text("client,date,total\nc1,2025-01-03,20\nc2,2025-01-04,35.5\n")
    code, out = engage(
        "data",
        "ingest",
        str(orders),
        "--map",
        "client=customer_id",
        "--map",
        "date=event_time",
        "--map",
        "total=value",
        "--event-type",
        "purchase",
    )
    assert code == 0 and "2 rows = 2 good + 0 bad" in out, out
    assert set(read_events(data_dir / "events.parquet")["event_type"]) == {"purchase"}
    # A type of the user's own, added with --set alone (no dependent list to restate).
    visits = tmp_path / "visits.csv"
    visits.write_text("client,date,kind\nc1,2025-01-05,store_visit\n")
    args = ("data", "ingest", str(visits), "--map", "client=customer_id", "--map")
    code, out = engage(*args, "date=event_time", "--map", "kind=event_type")
    assert code == 1 and "'store_visit': 1 row" in out
    types = ",".join([*load_params().data.event_types, "store_visit"])
    code, out = engage(
        "--set",
        f"data.event_types=[{types}]",
        *args,
        "date=event_time",
        "--map",
        "kind=event_type",
    )
    assert code == 0 and "1 rows = 1 good + 0 bad" in out, out


def test_a_clickstream_without_amounts(tmp_path, data_dir):
    data = load_params().data
    raw = pd.DataFrame(
        {
            "customer_id": ["c1", "c1"],
            "event_time": ["2025-01-03T10:00:00Z", "2025-01-03T10:09:00Z"],
            "event_type": ["web_visit", "purchase"],
        }
    )
    paths = {
        "events_path": data_dir / "events.parquet",
        "quarantine_path": data_dir / "quarantine.parquet",
        "customers_path": data_dir / "customers.parquet",
    }
    prepared = prepare_events(raw, EventMapping(), data)
    # By default a purchase needs its amount: the row is bad (and one of two is the limit).
    report = ingest_events(
        prepared.events, data, now=NOW, derived_ids=True, notes=prepared.notes, **paths
    )
    assert [f.rule for f in report.failures] == ["missing_value"]
    assert not store_flags(paths["events_path"])["no_amounts"]
    relaxed = prepare_events(raw, EventMapping(no_amounts=True), data)
    report = ingest_events(relaxed.events, data, now=NOW, derived_ids=True, amounts=False, **paths)
    assert report.good_rows == 1 and report.bad_rows == 0, report.to_text()
    events = read_events(paths["events_path"])
    assert events.loc[events["event_type"] == "purchase", "value"].isna().all()
    assert read_log(paths["events_path"])[-1]["no_amounts"] is True
    assert store_flags(paths["events_path"])["no_amounts"]


def test_an_ingest_replaces_the_demo_data_unless_append(tmp_path, data_dir):
    code, out = engage(
        "--set", "simulate.customers=50", "--set", "simulate.days=30", "data", "simulate"
    )
    assert code == 0, out
    assert demo_origin(data_dir / "events.parquet")["command"] == "simulate"
    demo = store_origin(data_dir / "events.parquet")
    assert demo.startswith("simulate at ")
    mine = tmp_path / "mine.csv"
    mine.write_text("customer_id,event_time,event_type\nme,2025-01-02T00:00:00Z,web_visit\n")
    code, out = engage("data", "ingest", str(mine), "--append")
    assert code == 0 and len(read_events(data_dir / "events.parquet")) > 1
    assert demo_origin(data_dir / "events.parquet") is not None  # still demo + mine
    assert store_origin(data_dir / "events.parquet") == demo  # models stay comparable
    code, out = engage("data", "ingest", str(mine))
    assert code == 0, out
    assert "holds the demo data (engage data simulate --customers 50 --days 30 --seed" in out
    assert "your events replace it" in out
    assert read_events(data_dir / "events.parquet")["customer_id"].tolist() == ["me"]
    assert demo_origin(data_dir / "events.parquet") is None
    # Other data: a champion of the demo is replaced by the first model of these events.
    assert store_origin(data_dir / "events.parquet").startswith("ingest at ")
    assert "contradict" in engage("data", "ingest", str(mine), "--replace", "--append")[1]


def test_ingest_help_lists_fields_and_event_types():
    code, out = engage("--set", "data.max_bad_share=0.25", "data", "ingest", "--help")
    flat = " ".join(out.replace("│", " ").split())
    assert code == 0
    assert "event_id, customer_id, event_time, event_type, value (optional)" in flat
    assert ", ".join(load_params().data.event_types) in flat
    assert "data.max_bad_share (0.25)" in flat
    assert "<bool>" not in out
