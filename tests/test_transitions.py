"""Stage transitions between scoring runs and their once-only webhook delivery."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from engage.config import PROJECT_ROOT, Paths, load_params
from serving.runs import META_KEY, SCHEMA
from serving.scoring import empty_reasons
from serving.transitions import WebhookError, deliver, read_ledger, stage_transitions

WEEK = pd.Timedelta(days=7)
T0 = pd.Timestamp("2025-06-03", tz="UTC")


@pytest.fixture
def paths(tmp_path) -> Paths:
    return Paths(PROJECT_ROOT, tmp_path, tmp_path / "mlruns", load_params())


def write_run(paths: Paths, run_id: str, as_of: pd.Timestamp, stages: dict[str, str]) -> None:
    """A scoring run file with the given stage per contact (other columns filler)."""
    n = len(stages)
    customer = np.array([s in ("Retention", "Exit") for s in stages.values()])
    table = pa.table(
        {
            "customer_id": list(stages),
            "as_of": pa.array([as_of] * n, pa.timestamp("us", tz="UTC")),
            "has_purchased": pa.array(customer.astype("int8")),
            "p_purchase": pa.array(np.full(n, 0.2)),
            "p_churn": pa.array(np.where(customer, 0.7, np.nan), from_pandas=True),
            "stage": list(stages.values()),
            "engagement_score": pa.array(np.full(n, 50.0)),
            "dial_position": pa.array(np.full(n, 50.0)),
            "segment": ["Repeat" if c else "Lead" for c in customer],
            "clv": pa.array(np.where(customer, 100.0, 0.0)),
            "value_at_risk": pa.array(np.where(customer, 70.0, 0.0)),
            "lapsed": pa.array(np.zeros(n, dtype=bool)),
            "reasons": empty_reasons(n),
            "run_id": [run_id] * n,
            "churn_version": ["1"] * n,
            "appetence_version": ["1"] * n,
            "stage_runs": pa.array(np.ones(n, dtype="int32")),
        },
        schema=SCHEMA,
    )
    meta = {
        "run_id": run_id,
        "as_of": as_of.isoformat(),
        "scored_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "versions": {"churn": "1", "appetence": "1"},
        "rows": n,
    }
    paths.scores_dir.mkdir(parents=True, exist_ok=True)
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    pq.write_table(table, paths.scores_dir / f"run={run_id}.parquet")


@pytest.fixture
def runs(paths):
    write_run(paths, "w1", T0, {"A": "Nurture", "B": "Retention", "C": "Exit"})
    write_run(
        paths, "w2", T0 + WEEK, {"A": "Nurture", "B": "Retention", "C": "Retention", "E": "Nurture"}
    )
    write_run(
        paths, "w3", T0 + 2 * WEEK, {"A": "Purchase", "B": "Exit", "C": "Retention", "D": "Nurture"}
    )
    return paths


def test_default_pair_is_the_two_latest_runs(runs):
    tr = stage_transitions(runs)
    assert (tr.from_run.run_id, tr.to_run.run_id) == ("w2", "w3")
    got = tr.changes.set_index("customer_id")[["from_stage", "to_stage"]]
    assert got.to_dict(orient="index") == {
        "A": {"from_stage": "Nurture", "to_stage": "Purchase"},
        "B": {"from_stage": "Retention", "to_stage": "Exit"},
    }
    assert (tr.entered, tr.left) == (1, 1)  # D is new, E is gone
    assert tr.matrix().loc["Retention", "Exit"] == 1
    doc = tr.payload()
    assert (doc["from_run"], doc["to_run"], doc["count"]) == ("w2", "w3", 2)
    json.dumps(doc)  # plain JSON: NaN became null
    assert {r["customer_id"]: r["p_churn"] for r in doc["transitions"]} == {"A": None, "B": 0.7}


def test_explicit_runs_and_errors(runs, paths):
    tr = stage_transitions(runs, "w1", "w3")
    assert sorted(tr.changes["customer_id"]) == ["A", "B", "C"]
    assert stage_transitions(runs, to_run="w2").from_run.run_id == "w1"
    with pytest.raises(ValueError, match="same run 'w2'"):
        stage_transitions(runs, "w2", "w2")
    with pytest.raises(LookupError, match="no scoring run 'w9'"):
        stage_transitions(runs, "w9")
    with pytest.raises(LookupError, match="no scoring run before 'w1'"):
        stage_transitions(runs, to_run="w1")


class Receiver:
    """A local webhook on 127.0.0.1 answering with the queued statuses, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.bodies: list[dict] = []
        self.keys: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                receiver.keys.append(self.headers["Idempotency-Key"])
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


FAST = load_params(
    overrides=(
        "serving.webhook_retries=3",
        "serving.webhook_backoff_s=0.01",
        "serving.webhook_timeout_s=5",
    )
).serving


def test_delivered_once_then_skipped(runs):
    tr = stage_transitions(runs)
    with Receiver() as hook:
        first = deliver(runs, tr, hook.url, FAST)
        second = deliver(runs, stage_transitions(runs), hook.url, FAST)
    assert (first.status, first.attempts, first.http_status) == ("delivered", 1, 200)
    assert second.status == "skipped"
    assert len(hook.bodies) == 1
    assert hook.bodies[0]["count"] == 2 and hook.keys == ["w2->w3"]
    (entry,) = read_ledger(runs)
    assert (entry["from_run"], entry["to_run"], entry["url"]) == ("w2", "w3", hook.url)


def test_a_receiver_that_fails_twice_is_retried(runs):
    waits: list[float] = []
    with Receiver([500, 503]) as hook:
        got = deliver(runs, stage_transitions(runs), hook.url, FAST, sleep=waits.append)
    assert (got.status, got.attempts) == ("delivered", 3)
    assert len(hook.bodies) == 3 and len(set(hook.keys)) == 1
    assert waits == [0.01, 0.02]  # exponential backoff
    assert len(read_ledger(runs)) == 1


def test_a_failed_delivery_is_not_recorded_and_can_be_retried(runs):
    tr = stage_transitions(runs)
    params = load_params(
        overrides=("serving.webhook_retries=2", "serving.webhook_backoff_s=0.0")
    ).serving
    with Receiver([500, 500, 500]) as hook:
        with pytest.raises(WebhookError, match=r"not delivered after 3 attempt\(s\) \(HTTP 500\)"):
            deliver(runs, tr, hook.url, params)
        assert read_ledger(runs) == []
        assert deliver(runs, tr, hook.url, params).status == "delivered"
    assert len(hook.bodies) == 4


def test_client_errors_are_not_retried_and_dead_hosts_fail(runs):
    tr = stage_transitions(runs)
    with Receiver([404]) as hook:
        with pytest.raises(WebhookError, match=r"1 attempt\(s\) \(HTTP 404\)"):
            deliver(runs, tr, hook.url, FAST)
    assert len(hook.bodies) == 1
    # The receiver is gone: connection refused on every attempt.
    with pytest.raises(WebhookError, match=r"4 attempt\(s\) \(ConnectError"):
        deliver(runs, tr, hook.url, FAST, sleep=lambda _s: None)
    assert read_ledger(runs) == []


def test_cli_transitions_posts_once(runs, monkeypatch):
    from cli.main import app

    monkeypatch.setenv("ENGAGE_DATA_DIR", str(runs.data_dir))
    runner = CliRunner()
    with Receiver() as hook:
        out = runner.invoke(app, ["transitions", "--webhook", hook.url])
        assert out.exit_code == 0, out.output
        assert "2 stage change(s)" in out.output and "delivered (HTTP 200" in out.output
        out = runner.invoke(app, ["transitions", "--webhook", hook.url])
        assert "already delivered" in out.output
        out = runner.invoke(
            app, ["transitions", "--from", "w1", "--to", "w3", "--no-post", "--webhook", hook.url]
        )
        assert out.exit_code == 0 and "3 stage change(s)" in out.output
    assert len(hook.bodies) == 1


def test_call_list_is_reachable_customers_in_exit(runs, monkeypatch):
    """``at-risk --call-list``: customers in Exit not lapsed, capped by --top and capacity."""
    from cli.main import app
    from serving.at_risk import at_risk_list, call_list

    write_run(runs, "w4", T0 + 3 * WEEK, {"B": "Exit", "C": "Exit", "F": "Retention"})
    # C has lapsed: the run says so itself (a `lapsed` column wins over the segment).
    path = runs.scores_dir / "run=w4.parquet"
    table = pq.read_table(path)
    at = table.schema.get_field_index("lapsed")
    table = table.set_column(at, "lapsed", pa.array([False, True, False]))
    pq.write_table(table.replace_schema_metadata(pq.read_schema(path).metadata), path)
    _, calls = call_list(runs, capacity=10)
    assert calls["customer_id"].tolist() == ["B"]
    # The at-risk list holds the reachable customers; the lapsed one is on the win-back list.
    _, reachable = at_risk_list(runs, top=10)
    assert sorted(reachable["customer_id"]) == ["B", "F"]
    _, back = at_risk_list(runs, top=10, win_back=True)
    assert back["customer_id"].tolist() == ["C"]
    with pytest.raises(ValueError, match="stage must be Retention or Exit"):
        at_risk_list(runs, stage="Purchase")
    monkeypatch.setenv("ENGAGE_DATA_DIR", str(runs.data_dir))
    out = CliRunner().invoke(app, ["at-risk", "--call-list", "--format", "json"])
    assert out.exit_code == 0, out.output
    assert [c["customer_id"] for c in json.loads(out.output)["contacts"]] == ["B"]
    out = CliRunner().invoke(app, ["transitions", "--no-post"])
    assert "entered: Nurture 0, Purchase 0, Retention 0, Exit 1" in out.output  # C: w3 -> w4


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://h/x", "javascript:alert(1)", "http://", "//h/x", "h"]
)
def test_only_http_and_https_webhooks_are_accepted(runs, url):
    from serving.transitions import check_webhook_url

    with pytest.raises(ValueError, match=r"webhook URL .*(not allowed|no host)"):
        check_webhook_url(url)
    # deliver refuses before sending anything and records nothing: not a retryable failure.
    with pytest.raises(ValueError, match="webhook URL"):
        deliver(runs, stage_transitions(runs), url, FAST)
    assert read_ledger(runs) == []


def test_webhook_hosts_are_not_restricted():
    from serving.transitions import check_webhook_url

    for url in ("http://127.0.0.1:8080/hook", "https://hooks.example.com/x?y=1", "HTTPS://h"):
        assert check_webhook_url(url) == url
