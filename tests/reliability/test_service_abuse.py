"""The service under abuse: bad input gets a 4xx naming the problem, never a 500, never a
held worker; the documented schema is what the service sends; it keeps serving.

One ``bentoml serve`` worker on a private copy of the trained pipeline (``served``),
with a 1.5 s body timeout and a 3 s header timeout.
"""

from __future__ import annotations

import gzip
import json
import math
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serving.api_models import PredictFeaturesResponse, PredictResponse
from tests.reliability import service_fixtures as fx
from tests.reliability.service_fixtures import (
    BODY_TIMEOUT_S,
    HEADER_TIMEOUT_S,
    known_ids,
    paths_of,
)

served = fx.served  # fixtures of the shared module
store_copy = fx.store_copy
MARGIN_S = 5.0  # a loaded 2-core machine answers late


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def ids(store_copy):
    return known_ids(store_copy)


@pytest.fixture(scope="module")
def docs(client):
    resp = client.get("/docs.json")
    assert resp.status_code == 200, resp.text
    return resp.json()


def _post(client, path, body: bytes, **headers) -> httpx.Response:
    return client.post(path, content=body, headers={"content-type": "application/json", **headers})


# ---------------------------------------------------------------- malformed input

MATRIX = [
    # (name, path, body, status, text the error must contain)
    ("ids a string", "/predict", {"customer_ids": "C1"}, 400, "customer_ids"),
    ("id a number", "/predict", {"customer_ids": [12]}, 400, "customer_ids.0"),
    ("explain a string", "/predict", {"customer_ids": ["C1"], "explain": "yes"}, 400, "explain"),
    ("top_k a string", "/predict", {"customer_ids": ["C1"], "top_k": "3"}, 400, "top_k"),
    ("top_k a float", "/predict", {"customer_ids": ["C1"], "top_k": 2.5}, 400, "top_k"),
    ("top_k negative", "/predict", {"customer_ids": ["C1"], "top_k": -3}, 400, "top_k"),
    ("top_k huge", "/predict", {"customer_ids": ["C1"], "top_k": 10**30}, 400, "top_k"),
    ("top_k 21", "/predict", {"customer_ids": ["C1"], "top_k": 21}, 400, "top_k"),
    ("NUL in an id", "/predict", {"customer_ids": ["C\x001"]}, 400, "customer_ids.0"),
    ("newline in an id", "/predict", {"customer_ids": ["C1\nX"]}, 400, "customer_ids.0"),
    ("id too long", "/predict", {"customer_ids": ["C" * 129]}, 400, "customer_ids.0"),
    ("limit huge", "/at_risk", {"limit": 10**100}, 400, "limit"),
    ("limit over the max", "/at_risk", {"limit": 1001}, 400, "limit"),
    ("limit a fraction", "/at_risk", {"limit": 2.5}, 400, "limit"),
    ("limit a string", "/at_risk", {"limit": "2"}, 400, "limit"),
    ("limit a boolean", "/at_risk", {"limit": True}, 400, "limit"),
    ("segment not exact", "/at_risk", {"segment": "at-risk"}, 400, "segment"),
    ("segment unknown", "/at_risk", {"segment": "Vampire"}, 400, "segment"),
    ("min value huge", "/at_risk", {"min_value_at_risk": 1e300}, 400, "min_value_at_risk"),
    ("min value negative", "/at_risk", {"min_value_at_risk": -1}, 400, "min_value_at_risk"),
    ("rows not a list", "/predict_features", {"rows": {"a": 1}}, 400, "rows"),
]
RAW = [
    ("NaN top_k", "/predict", b'{"customer_ids": ["C1"], "top_k": NaN}', 400, "top_k"),
    ("Infinity", "/at_risk", b'{"min_value_at_risk": Infinity}', 400, "min_value_at_risk"),
    ("1e999", "/at_risk", b'{"min_value_at_risk": 1e999}', 400, "min_value_at_risk"),
    ("lone surrogate", "/predict", b'{"customer_ids": ["\\ud800"]}', 400, "Invalid JSON"),
    ("bad utf-8", "/predict", b'{"customer_ids": ["\xff\xfe"]}', 400, "invalid request"),
    ("truncated", "/predict", b'{"customer_ids": ["C1"', 400, "Invalid JSON"),
    ("deep nesting", "/predict", b"[" * 10_000 + b"]" * 10_000, 400, "invalid request"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "text"), [c[1:] for c in MATRIX], ids=[c[0] for c in MATRIX]
)
def test_malformed_json_values_get_a_400_naming_the_field(client, path, body, status, text):
    resp = client.post(path, json=body)
    assert resp.status_code == status, resp.text
    assert text in resp.json()["error"]


@pytest.mark.parametrize(
    ("path", "body", "status", "text"), [c[1:] for c in RAW], ids=[c[0] for c in RAW]
)
def test_malformed_bodies_get_a_400(client, path, body, status, text):
    resp = _post(client, path, body)
    assert resp.status_code == status, resp.text
    assert text in resp.json()["error"]


def test_unicode_ids_are_unknown_customers_not_errors(client):
    odd = ["Ωμέγα-客户-🙂", "  padded  ", "‮right-to-left", "'; DROP TABLE x; --"]
    resp = client.post("/predict", json={"customer_ids": odd})
    assert resp.status_code == 200, resp.text
    out = PredictResponse.model_validate(resp.json())
    assert [p.customer_id for p in out.predictions] == odd
    assert {p.status for p in out.predictions} == {"unknown_customer"}


HEADERS = [
    # (name, headers, body, status, text)
    ("text/plain", {"content-type": "text/plain"}, b"{}", 415, "application/json"),
    ("multipart", {"content-type": "multipart/form-data; boundary=x"}, b"--x--", 415, "multipart"),
    ("gzip", {"content-encoding": "gzip"}, gzip.compress(b'{"customer_ids": ["C1"]}'), 415, "gzip"),
    ("br", {"content-encoding": "br"}, b"\x0b\x02\x80", 415, "not accepted"),
]


@pytest.mark.parametrize(
    ("headers", "body", "status", "text"), [c[1:] for c in HEADERS], ids=[c[0] for c in HEADERS]
)
def test_bad_headers_get_a_4xx(served, headers, body, status, text):
    # Raw request: httpx would fix a bad Content-Length itself.
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if "content-type" not in headers:
        head += "content-type: application/json\r\n"
    if "content-length" not in headers:
        head += f"content-length: {len(body)}\r\n"
    status_line, payload = _raw(served, f"POST /predict HTTP/1.1\r\nhost: x\r\n{head}\r\n", body)
    assert f" {status} " in status_line, (status_line, payload)
    assert text in json.loads(payload)["error"]


def test_a_request_broken_at_the_http_level_gets_a_400(served):
    # uvicorn's parser refuses it before any application code: a plain-text 400.
    status_line, payload = _raw(
        served,
        "POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        "content-length: twelve\r\n\r\n",
        b"{}",
    )
    assert " 400 " in status_line and b"Invalid HTTP request" in payload


def test_two_content_types_multipart_first(served):
    request = (
        "POST /predict HTTP/1.1\r\nhost: x\r\n"
        "content-type: multipart/form-data; boundary=x\r\ncontent-type: application/json\r\n"
        "content-length: 24\r\n\r\n"
    )
    status_line, payload = _raw(served, request, b'{"customer_ids": ["C1"]}')
    assert " 400 " in status_line, (status_line, payload)
    assert "2 Content-Type headers" in json.loads(payload)["error"]


def _raw(server, head: str, body: bytes = b"", timeout: float = 30.0) -> tuple[str, bytes]:
    """Send raw bytes; returns the status line and the body of the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(head.encode("latin-1") + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        header, _, rest = data.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in header.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
    return header.split(b"\r\n")[0].decode(), rest


def test_oversized_bodies_get_413_with_or_without_length(client, served):
    big = json.dumps({"customer_ids": ["C" * 100] * 3000}).encode()
    resp = _post(client, "/predict", big)
    assert resp.status_code == 413 and "serving.max_body_bytes" in resp.json()["error"]

    def chunks():
        for i in range(0, len(big), 50_000):
            yield big[i : i + 50_000]

    resp = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413
    # A Content-Length over the limit is refused before the body is read.
    status_line, _ = _raw(
        served,
        "POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        "content-length: 999999999\r\n\r\n",
    )
    assert " 413 " in status_line


def test_a_body_shorter_than_its_length_is_answered_quickly(served):
    began = time.monotonic()
    status_line, payload = _raw(
        served,
        "POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        "content-length: 100\r\n\r\n",
        b'{"customer_ids": ',
    )
    took = time.monotonic() - began
    assert " 400 " in status_line, (status_line, payload)
    assert "request body incomplete: 17 of 100 bytes" in json.loads(payload)["error"]
    assert BODY_TIMEOUT_S - 0.5 <= took < BODY_TIMEOUT_S + MARGIN_S


@pytest.mark.parametrize("partial", [b"", b"POST /predict HTTP/1.1\r\nhost: x\r\n"])
def test_connections_that_never_finish_their_headers_are_closed(served, partial):
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", served.port), timeout=60) as s:
        s.sendall(partial)
        answer = b""
        while chunk := s.recv(4096):  # ends when the server closes the connection
            answer += chunk
    took = time.monotonic() - began
    assert HEADER_TIMEOUT_S - 0.5 <= took < HEADER_TIMEOUT_S + MARGIN_S
    assert answer.startswith(b"HTTP/1.1 408")


def test_a_slow_but_steady_client_is_also_cut_off(served):
    # Headers trickled a byte at a time ("slowloris"): the deadline is for the headers
    # as a whole, not per byte, so steady progress does not keep the connection open.
    head = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" * 50
    began = time.monotonic()
    closed_after = None
    with socket.create_connection(("127.0.0.1", served.port), timeout=60) as s:
        for byte in head:
            readable, _, _ = select.select([s], [], [], 0.05)
            if readable:  # the server only writes here to close: a 408, or the end
                answer = s.recv(4096)
                assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
                closed_after = time.monotonic() - began
                break
            try:
                s.send(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - began
                break
    assert closed_after is not None, "the server kept a trickling connection open"
    assert closed_after < HEADER_TIMEOUT_S + MARGIN_S


# ------------------------------------------------------------ /predict_features


@pytest.fixture(scope="module")
def example_row(docs):
    schemas = docs["components"]["schemas"]
    request = next(v for k, v in schemas.items() if k.startswith("PredictFeaturesRequest"))
    (rows,) = request["properties"]["rows"]["examples"]
    return rows[0]


def test_the_documented_example_is_accepted(client, example_row):
    resp = client.post("/predict_features", json={"rows": [example_row], "explain": True})
    assert resp.status_code == 200, resp.text
    (pred,) = PredictFeaturesResponse.model_validate(resp.json()).predictions
    assert 0 <= pred.p_purchase <= 1 and 0 <= pred.p_churn <= 1
    assert math.isfinite(pred.clv) and pred.clv >= 0 and pred.value_at_risk >= 0
    assert len(pred.reasons) == 3


@pytest.mark.parametrize(
    ("feature", "value", "rule"),
    [
        ("purchases_30d", -1, "greater than or equal to 0"),
        ("purchases_30d", 2.5, "multiple of 1"),
        ("revenue_total", -10.0, "greater than or equal to 0"),
        ("avg_order_value", 1e300, "less than or equal to 1000000000000"),
        ("open_rate_30d", 1.5, "less than or equal to 1"),
        ("activity_trend_30d", -2.0, "greater than or equal to -1"),
        ("days_since_last_purchase", -3.0, "greater than or equal to 0"),
        ("has_purchased", 2, "less than or equal to 1"),
        ("last_nps_response_value", 11.0, "less than or equal to 10"),
        ("has_purchased", None, "Input should be a valid number"),
        ("purchases_30d", None, "Input should be a valid number"),
    ],
)
def test_out_of_range_features_are_refused_with_feature_and_rule(
    client, example_row, feature, value, rule
):
    rows = [example_row, {**example_row, feature: value}, {**example_row, feature: value}]
    resp = client.post("/predict_features", json={"rows": rows})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert f"rows.*.{feature}" in error and rule in error
    assert "2 item(s): rows.1, rows.2" in error  # how many rows break it


def test_missing_and_unknown_features_are_named(client, example_row):
    missing = {k: v for k, v in example_row.items() if k != "tenure_days"}
    resp = client.post("/predict_features", json={"rows": [missing]})
    error = resp.json()["error"]
    assert resp.status_code == 400 and "rows.*.tenure_days: Field required" in error
    assert "(1 item(s): rows.0)" in error
    resp = client.post("/predict_features", json={"rows": [{**example_row, "colour": 1}]})
    assert resp.status_code == 400 and "rows.*.colour: Extra inputs" in resp.json()["error"]


def test_extreme_valid_features_give_finite_values(client, example_row):
    top = {**example_row, "avg_order_value": 1e12, "purchases_365d": 10_000_000}
    resp = client.post("/predict_features", json={"rows": [top]})
    assert resp.status_code == 200, resp.text
    (pred,) = resp.json()["predictions"]
    assert pred["clv"] is not None and math.isfinite(pred["clv"]) and pred["clv"] > 0


# ------------------------------------------------------------------- the schema


def test_documented_errors_are_the_errors_sent(client, docs):
    schemas = docs["components"]["schemas"]
    error = schemas["ErrorResponse"]
    assert error["properties"]["detail"]["anyOf"][0]["type"] == "array"
    assert "InvalidArgument" not in schemas  # BentoML's {detail: string} is gone
    operation = docs["paths"]["/predict"]["post"]
    for status in ("400", "401", "408", "413", "415", "500", "503"):
        ref = operation["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorResponse"), status
    resp = client.post("/predict", json={"customer_ids": []})
    body = resp.json()
    assert isinstance(body["detail"], list) and set(body["detail"][0]) == {"loc", "msg", "type"}


def test_at_risk_segment_is_an_enum_and_limit_is_bounded(docs):
    from serving.segments import SEGMENTS

    schemas = docs["components"]["schemas"]
    request = next(v for k, v in schemas.items() if k.startswith("AtRiskRequest"))
    segment = request["properties"]["segment"]
    assert segment["enum"] == [*SEGMENTS, None] and segment["type"] == ["string", "null"]
    assert "null or absent" in segment["description"]
    assert request["properties"]["limit"]["maximum"] == 1000
    assert docs["openapi"].startswith("3.1")  # `null` in a type list is 3.1's dialect


def test_whole_floats_are_integers_like_json_schema_says(client):
    # JSON Schema counts 3.0 as an integer; 3.5 is not one.
    assert client.post("/at_risk", json={"limit": 3.0}).status_code in (200, 404)
    assert client.post("/at_risk", json={"limit": 3.5}).status_code == 400


def test_no_deprecation_warning_per_request(served, client, ids):
    for cid in ids["customers"][:5]:
        client.post("/predict", json={"customer_ids": [cid], "explain": True})
        client.post("/at_risk", json={"limit": 2})
        client.get("/ready")
    text = served.log.read_text()
    assert "Deprecat" not in text, [line for line in text.splitlines() if "Deprecat" in line][:3]


def test_the_api_key_is_compared_in_constant_time(monkeypatch):
    import asyncio
    import hmac

    from serving import service

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(service.hmac, "compare_digest", spy)
    settings = service.Settings(service.settings().params, service.settings().paths, "k3y", None)

    async def app(scope, receive, send):  # pragma: no cover - never reached without the key
        raise AssertionError("reached the app without a valid key")

    guard = service.RequestGuard(app, settings)
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "path": "/predict", "method": "POST", "headers": []}
    scope["headers"] = [(b"x-api-key", b"k3x")]
    asyncio.run(guard(scope, receive, send))
    assert sent[0]["status"] == 401
    assert calls == [(b"k3x", b"k3y")]


# --------------------------------------------------------------- still serving


def test_the_server_kept_serving_throughout(served, client, ids):
    resp = client.post("/predict", json={"customer_ids": ids["customers"][:3], "explain": True})
    assert resp.status_code == 200, resp.text
    assert all(p["status"] == "ok" for p in resp.json()["predictions"])
    assert served.proc.poll() is None
    assert "Traceback" not in served.log.read_text()


# -------------------------------------------------------------------- fuzzing


def _schemathesis(served, tmp_path, examples: int, max_time: int) -> dict:
    report = tmp_path / "st.ndjson"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(fx.ROOT / "schemathesis.toml"),
            "run",
            f"{served.url}/docs.json",
            "--checks",
            "all",
            "--exclude-checks",
            "ignored_auth,use_after_free,ensure_resource_availability",
            "--max-examples",
            str(examples),
            "--max-time",
            str(max_time),
            "--seed",
            "11",
            "--generation-database",
            "none",
            "--request-timeout",
            "30",
            "--no-color",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=max_time + 300,
        cwd=tmp_path,
    )
    return {"code": result.returncode, "out": result.stdout + result.stderr, "report": report}


@pytest.fixture(scope="module")
def scored(store_copy):
    """A batch scoring run, so that /at_risk has a list to answer with."""
    from engage.config import load_params
    from serving.scoring import score

    return score(paths_of(store_copy), load_params(), run_id="abuse")


def test_schemathesis_finds_no_server_error_and_no_schema_violation(served, scored, tmp_path):
    # Bounded for make test (the suite's 10-minute budget); test_schemathesis_long_run
    # (make test-reliability) goes further: 400 examples per operation, 15 minutes.
    run = _schemathesis(served, tmp_path, examples=10, max_time=15)
    assert run["code"] == 0, run["out"][-6000:]
    assert "Traceback" not in served.log.read_text()


@pytest.mark.reliability_heavy
@pytest.mark.slow
def test_schemathesis_long_run(served, scored, tmp_path):
    run = _schemathesis(served, tmp_path, examples=400, max_time=900)
    assert run["code"] == 0, run["out"][-6000:]
