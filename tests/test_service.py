"""The prediction service over HTTP: real `bentoml serve` processes on loopback.

Two servers start once for the module, in parallel, on the session's ``pipeline`` data:
``open`` (no API key, the clock as reference time: the simulated features are stale)
and ``keyed`` (``ENGAGE_API_KEY`` set, ``ENGAGE_SERVING_NOW`` one hour after the
snapshot: fresh features). Each is killed (its process group) at teardown.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from features.catalog import ENTITY_KEY
from features.snapshots import pick_snapshot
from serving.api_models import PredictFeaturesResponse, PredictResponse
from serving.at_risk import at_risk_list
from serving.local_server import LocalServer
from serving.runs import read_run
from serving.scoring import score

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key-5b1e"
START_TIMEOUT_S = 120
UNKNOWN = "NO-SUCH-CUSTOMER-7f3a"


@pytest.fixture(scope="module")
def snapshot(pipeline):
    return pick_snapshot(pipeline.paths.features_dir)


@pytest.fixture(scope="module")
def servers(pipeline, snapshot, tmp_path_factory):
    from cli.app import Context
    from cli.serve import serve_env

    logs = tmp_path_factory.mktemp("service-logs")
    # The same environment `engage serve` gives the service (the test's params included).
    # One worker each (the default is one per core): two servers start faster.
    base = serve_env(Context(pipeline.params, pipeline.paths), workers=1)
    base.pop(pipeline.params.serving.api_key_env, None)
    base.pop("ENGAGE_SERVING_NOW", None)
    keyed = dict(base)
    keyed[pipeline.params.serving.api_key_env] = API_KEY
    keyed["ENGAGE_SERVING_NOW"] = (snapshot.as_of + pd.Timedelta(hours=1)).isoformat()
    started = {
        "open": LocalServer(base, logs / "open.log"),
        "keyed": LocalServer(keyed, logs / "keyed.log"),
    }
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        for name, s in started.items():
            try:
                s.wait_ready(deadline)
            except RuntimeError as err:
                pytest.fail(f"{name} {err}")
        yield started
    finally:
        for s in started.values():
            s.stop()


@pytest.fixture(scope="module")
def client(servers):
    with httpx.Client(base_url=servers["open"].url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def keyed(servers):
    with httpx.Client(base_url=servers["keyed"].url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def batch(pipeline):
    """A batch scoring run (`engage score`) of the latest snapshot, as a frame by id."""
    run = score(pipeline.paths, pipeline.params)
    _, frame = read_run(pipeline.paths, run.run_id)
    return run, frame.set_index(ENTITY_KEY)


@pytest.fixture(scope="module")
def sample_ids(batch):
    _, frame = batch
    rng = np.random.default_rng(7)
    customers = frame.index[frame["has_purchased"] == 1].to_numpy()
    prospects = frame.index[frame["has_purchased"] == 0].to_numpy()
    picked = [*rng.choice(customers, 20, replace=False), *rng.choice(prospects, 20, replace=False)]
    return [str(c) for c in picked]


def _predict(client, ids, **extra) -> PredictResponse:
    resp = client.post("/predict", json={"customer_ids": ids, **extra})
    assert resp.status_code == 200, resp.text
    return PredictResponse.model_validate(resp.json())


# ------------------------------------------------------------------------ readiness


def test_ready_reports_the_registry_champions(client, pipeline):
    from training.registry import alias_version, setup_mlflow

    registry = setup_mlflow(pipeline.paths)
    resp = client.get("/ready")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ready" and body["api_key_required"] is False
    for m in ("churn", "appetence"):
        assert body["models"][m]["version"] == str(alias_version(registry, m))
        assert body["models"][m]["version"] == str(pipeline.results[m].version)
        assert body["models"][m]["uri"] == f"models:/{m}@champion"
    assert body["max_ids"] == pipeline.params.serving.max_ids
    assert "has_purchased" in body["feature_names"]
    hazard = pipeline.params.hazard
    assert body["horizons_days"] == list(hazard.horizons_days)
    assert body["h_max_days"] == hazard.period_days * hazard.h_max_periods
    for probe in ("/livez", "/healthz", "/readyz"):
        assert client.get(probe).status_code == 200


def test_openapi_documents_the_endpoints_and_models(client):
    spec = client.get("/docs.json").json()
    for path in ("/predict", "/predict_features", "/at_risk", "/ready"):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    request = next(v for k, v in schemas.items() if k.startswith("PredictRequest"))
    ids = request["properties"]["customer_ids"]
    assert "serving.max_ids" in ids["description"] and ids["examples"]
    prediction = schemas["Prediction"]["properties"]
    assert "unknown customer" in prediction["p_purchase"]["description"]
    assert "stale_after_hours" in prediction["stale"]["description"]


# ----------------------------------------------------------------------- /predict


def test_known_and_unknown_ids(client, pipeline, sample_ids, snapshot):
    ids = [sample_ids[0], UNKNOWN, sample_ids[-1]]
    out = _predict(client, ids)
    assert [p.customer_id for p in out.predictions] == ids
    known, unknown, prospect = out.predictions
    versions = {m: str(pipeline.results[m].version) for m in ("churn", "appetence")}
    assert out.model_versions == versions

    assert known.status == "ok" and prospect.status == "ok"
    assert 0 <= known.p_purchase <= 1 and 0 <= known.p_churn <= 1
    assert known.stage in ("Retention", "Exit")
    assert prospect.p_churn is None and prospect.stage in ("Nurture", "Purchase")
    assert known.features_as_of == snapshot.as_of.to_pydatetime()
    assert known.model_versions == versions and known.reasons is None
    # The simulated snapshot is far older than stale_after_hours before the clock.
    assert known.stale is True

    assert unknown.status == "unknown_customer"
    assert (unknown.stage, unknown.segment) == ("Nurture", "New")
    assert unknown.p_purchase is None and unknown.p_churn is None
    assert unknown.engagement_score is None and unknown.dial_position is None
    assert unknown.value_at_risk == 0 and unknown.features_as_of is None
    assert unknown.stale is False

    # Every probability names its horizon: the deciding ones, and the hazard models' per
    # asked horizon (null where a hazard model is missing, and for an unknown id).
    h = pipeline.params.labels.horizon_days
    assert known.decision_horizon_days == {"p_purchase": h, "p_churn": h}
    assert out.horizons_days == list(pipeline.params.hazard.horizons_days)
    assert set(out.timing_missing) | set(out.timing_versions) == {"churn", "appetence"}
    for p in out.predictions:
        assert [a.horizon_days for a in p.horizons] == out.horizons_days
    assert all(a.p_purchase is None for a in unknown.horizons) and unknown.days_to_churn is None
    if "appetence" in out.timing_missing:
        assert all(a.p_purchase is None for a in known.horizons)
    asked = _predict(client, ids, horizons_days=[14])
    assert asked.horizons_days == [14] and asked.predictions[0].horizons[0].horizon_days == 14


def test_predict_agrees_with_batch_scoring(client, batch, sample_ids):
    _, frame = batch
    out = _predict(client, sample_ids, explain=True, top_k=3)
    got = pd.DataFrame([p.model_dump() for p in out.predictions]).set_index("customer_id")
    want = frame.loc[sample_ids]
    for col in ("p_purchase", "p_churn", "engagement_score", "dial_position", "clv"):
        np.testing.assert_allclose(
            got[col].astype(float), want[col].astype(float), rtol=1e-9, atol=1e-9, err_msg=col
        )
    np.testing.assert_allclose(got["value_at_risk"], want["value_at_risk"], rtol=1e-9)
    assert got["stage"].tolist() == want["stage"].tolist()
    assert got["segment"].tolist() == want["segment"].tolist()
    assert got["lapsed"].tolist() == want["lapsed"].tolist()
    # Same models, same typical values: the same top-3 reasons, word for word.
    for cid in sample_ids:
        online = [r["text"] for r in got.loc[cid, "reasons"]]
        assert online == [r["text"] for r in want.loc[cid, "reasons"]], cid


def test_explanations_are_top_k_by_absolute_contribution(client, sample_ids):
    out = _predict(client, sample_ids[:10] + [UNKNOWN], explain=True, top_k=5)
    for p in out.predictions[:-1]:
        assert len(p.reasons) == 5
        sizes = [abs(r.contribution) for r in p.reasons]
        assert sizes == sorted(sizes, reverse=True)
        for r in p.reasons:
            assert r.direction == ("raises" if r.contribution > 0 else "lowers")
            assert r.text and r.feature
    assert out.predictions[-1].reasons == []
    plain = _predict(client, sample_ids[:2])
    assert all(p.reasons is None for p in plain.predictions)


def test_duplicate_ids_are_answered_in_order(client, sample_ids):
    ids = [sample_ids[3], sample_ids[3], UNKNOWN, sample_ids[3]]
    out = _predict(client, ids)
    assert [p.customer_id for p in out.predictions] == ids
    assert out.predictions[0] == out.predictions[1] == out.predictions[3]


# -------------------------------------------------------------- /predict_features


@pytest.fixture(scope="module")
def feature_rows(client, snapshot, sample_ids):
    names = client.get("/ready").json()["feature_names"]
    table = pd.read_parquet(snapshot.path).set_index(ENTITY_KEY).loc[sample_ids[:6], names]
    rows = [
        {k: (None if pd.isna(v) else float(v)) for k, v in rec.items()}
        for rec in table.to_dict(orient="records")
    ]
    return sample_ids[:6], rows


def test_predict_features_agrees_with_predict(client, feature_rows):
    ids, rows = feature_rows
    resp = client.post("/predict_features", json={"rows": rows, "explain": True})
    assert resp.status_code == 200, resp.text
    got = PredictFeaturesResponse.model_validate(resp.json()).predictions
    want = _predict(client, ids, explain=True).predictions
    assert [p.row for p in got] == list(range(len(ids)))
    for g, w in zip(got, want, strict=True):
        assert g.p_purchase == pytest.approx(w.p_purchase, abs=1e-12)
        assert (g.p_churn is None) == (w.p_churn is None)
        if w.p_churn is not None:
            assert g.p_churn == pytest.approx(w.p_churn, abs=1e-12)
        assert (g.stage, g.segment) == (w.stage, w.segment)
        assert [r.text for r in g.reasons] == [r.text for r in w.reasons]


def _raw(client, path: str, body: bytes, **headers) -> httpx.Response:
    return client.post(path, content=body, headers={"content-type": "application/json", **headers})


def test_predict_features_rejects_bad_features(client, feature_rows):
    _, rows = feature_rows
    row = rows[0]
    name = next(k for k in row if k != "has_purchased")

    def post(bad_row):
        return client.post("/predict_features", json={"rows": [row, bad_row]})

    missing = {k: v for k, v in row.items() if k != name}
    resp = post(missing)
    assert resp.status_code == 400 and name in resp.json()["error"]
    assert f"rows.*.{name}: Field required (1 item(s): rows.1)" in resp.json()["error"]

    resp = post({**row, "favourite_colour": 1.0})
    assert resp.status_code == 400 and "favourite_colour" in resp.json()["error"]

    resp = post({**row, name: "12"})
    assert resp.status_code == 400 and f"rows.*.{name}" in resp.json()["error"]
    assert "(1 item(s): rows.1)" in resp.json()["error"]

    resp = post({**row, name: True})
    assert resp.status_code == 400 and f"rows.*.{name}" in resp.json()["error"]

    resp = post({**row, "has_purchased": 2.0})
    assert resp.status_code == 400 and "has_purchased" in resp.json()["error"]
    assert "less than or equal to 1" in resp.json()["error"]

    for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
        body = json.dumps({"rows": [row]}).replace(
            f'"{name}": {json.dumps(row[name])}', f'"{name}": {literal}'
        )
        assert literal in body
        resp = _raw(client, "/predict_features", body.encode())
        assert resp.status_code == 400, literal
        assert f"rows.*.{name}" in resp.json()["error"], literal


# ------------------------------------------------------------------ bad requests


def _too_many_ids(max_ids: int) -> bytes:
    return json.dumps({"customer_ids": [f"C{i}" for i in range(max_ids + 1)]}).encode()


BAD_REQUESTS = [
    # (name, path, body, extra headers, status, text the error must contain)
    ("malformed json", "/predict", b'{"customer_ids": [', {}, 400, "Invalid JSON"),
    ("not an object", "/predict", b'["C1"]', {}, 400, "body"),
    ("empty body", "/predict", b"", {}, 400, "customer_ids: Field required"),
    ("ids not a list", "/predict", b'{"customer_ids": "C1"}', {}, 400, "customer_ids"),
    ("id not a string", "/predict", b'{"customer_ids": [12]}', {}, 400, "customer_ids.0"),
    ("empty id", "/predict", b'{"customer_ids": [""]}', {}, 400, "customer_ids.0"),
    ("empty list", "/predict", b'{"customer_ids": []}', {}, 400, "customer_ids"),
    ("unknown key", "/predict", b'{"customer_ids": ["C1"], "topk": 2}', {}, 400, "topk"),
    ("top_k zero", "/predict", b'{"customer_ids": ["C1"], "top_k": 0}', {}, 400, "top_k"),
    ("top_k NaN", "/predict", b'{"customer_ids": ["C1"], "top_k": NaN}', {}, 400, "top_k"),
    ("explain str", "/predict", b'{"customer_ids": ["C1"], "explain": "yes"}', {}, 400, "explain"),
    ("null ids", "/predict", b'{"customer_ids": null}', {}, 400, "customer_ids"),
    (
        "horizon beyond H_max",
        "/predict",
        b'{"customer_ids": ["C1"], "horizons_days": [7, 92]}',
        {},
        400,
        "horizons_days.1",
    ),
    (
        "repeated horizon",
        "/predict",
        b'{"customer_ids": ["C1"], "horizons_days": [7, 7]}',
        {},
        400,
        "horizons_days: each horizon once",
    ),
    (
        "no horizon",
        "/predict",
        b'{"customer_ids": ["C1"], "horizons_days": []}',
        {},
        400,
        "horizons_days",
    ),
    ("rows empty", "/predict_features", b'{"rows": []}', {}, 400, "rows"),
    ("rows not dicts", "/predict_features", b'{"rows": [1]}', {}, 400, "rows.0"),
    ("limit negative", "/at_risk", b'{"limit": -1}', {}, 400, "limit"),
    ("min value NaN", "/at_risk", b'{"min_value_at_risk": NaN}', {}, 400, "min_value_at_risk"),
    ("bad segment", "/at_risk", b'{"segment": "Vampire"}', {}, 400, "segment: Input should be"),
    (
        "wrong content type",
        "/predict",
        b"customer_ids=C1",
        {"content-type": "application/x-www-form-urlencoded"},
        415,
        "application/json",
    ),
    (
        "pickle",
        "/predict",
        b"\x80\x04",
        {"content-type": "application/vnd.bentoml+pickle"},
        415,
        "",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "text"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_request_gets_a_4xx_naming_the_problem(client, path, body, headers, status, text):
    resp = _raw(client, path, body, **headers)
    assert resp.status_code == status, resp.text
    assert text in resp.json()["error"]


def test_too_many_ids(client, pipeline):
    resp = _raw(client, "/predict", _too_many_ids(pipeline.params.serving.max_ids))
    assert resp.status_code == 400
    assert "serving.max_ids" in resp.json()["error"]


def test_oversized_bodies_get_413(client, pipeline):
    limit = pipeline.params.serving.max_body_bytes
    big = json.dumps({"customer_ids": ["C" * 100] * (limit // 100)}).encode()
    assert len(big) > limit
    resp = _raw(client, "/predict", big)
    assert resp.status_code == 413 and "serving.max_body_bytes" in resp.json()["error"]

    def chunks():  # no Content-Length: the guard counts what it reads
        yield big[: limit // 2]
        yield big[limit // 2 :]

    resp = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413


def test_wrong_method_and_path(client):
    assert client.get("/predict").status_code == 405
    assert client.post("/nowhere", json={}).status_code == 404


def test_service_keeps_serving_after_bad_requests(client, sample_ids, servers):
    # Runs after the bad-request tests: the same process still answers good requests.
    out = _predict(client, sample_ids[:2], explain=True)
    assert all(p.status == "ok" for p in out.predictions)
    assert servers["open"].proc.poll() is None


# ----------------------------------------------------------------------- /at_risk


def test_at_risk_lists_the_latest_run(client, pipeline, batch):
    run, _ = batch
    resp = client.post("/at_risk", json={"limit": 5})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    _, want = at_risk_list(pipeline.paths, top=5)
    assert body["run_id"] == run.run_id
    assert [c["customer_id"] for c in body["contacts"]] == want[ENTITY_KEY].tolist()
    values = [c["value_at_risk"] for c in body["contacts"]]
    assert values == sorted(values, reverse=True)
    assert all(c["reasons"] and c["action"] for c in body["contacts"])

    threshold = values[2]
    resp = client.post("/at_risk", json={"limit": 5, "min_value_at_risk": threshold})
    assert [c["value_at_risk"] for c in resp.json()["contacts"]] == values[:3]

    segment = body["contacts"][0]["segment"]
    resp = client.post("/at_risk", json={"limit": 3, "segment": segment})
    assert resp.status_code == 200
    assert {c["segment"] for c in resp.json()["contacts"]} == {segment}
    # The documented enum: segment names exactly as spelled.
    resp = client.post("/at_risk", json={"limit": 3, "segment": segment.upper()})
    assert resp.status_code == 400 and "segment" in resp.json()["error"]

    # Reachable customers by default; the lapsed ones only on the win-back list.
    assert not any(c["lapsed"] for c in body["contacts"])
    resp = client.post("/at_risk", json={"limit": 5, "win_back": True})
    assert resp.status_code == 200, resp.text
    _, back = at_risk_list(pipeline.paths, top=5, win_back=True)
    contacts = resp.json()["contacts"]
    assert [c["customer_id"] for c in contacts] == back[ENTITY_KEY].tolist()
    assert contacts and all(c["lapsed"] for c in contacts)


# --------------------------------------------------------- API key and stale flag


def test_api_key_is_required_when_set(keyed, sample_ids):
    body = {"customer_ids": sample_ids[:1]}
    assert keyed.post("/predict", json=body).status_code == 401
    wrong = keyed.post("/predict", json=body, headers={"x-api-key": "nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
    assert keyed.post("/at_risk", json={}).status_code == 401
    ok = keyed.post("/predict", json=body, headers={"x-api-key": API_KEY})
    assert ok.status_code == 200
    bearer = keyed.post("/predict", json=body, headers={"authorization": f"Bearer {API_KEY}"})
    assert bearer.status_code == 200
    # Health and docs stay open.
    for probe in ("/livez", "/healthz", "/readyz", "/ready", "/docs.json"):
        assert keyed.get(probe).status_code == 200, probe
    assert keyed.get("/ready").json()["api_key_required"] is True


def test_stale_flag_follows_the_reference_time(keyed, snapshot, sample_ids):
    resp = keyed.post(
        "/predict", json={"customer_ids": sample_ids[:2]}, headers={"x-api-key": API_KEY}
    )
    out = PredictResponse.model_validate(resp.json())
    assert out.reference_time == (snapshot.as_of + pd.Timedelta(hours=1)).to_pydatetime()
    assert all(p.stale is False for p in out.predictions)


def test_no_customer_data_in_the_server_log(servers, sample_ids):
    # Every test above sent ids and features; none may show up in the logs.
    for s in servers.values():
        text = s.log.read_text(errors="replace")
        assert UNKNOWN not in text
        assert not any(cid in text for cid in sample_ids)
        assert "Traceback" not in text


# ------------------------------------------------------------------- the OpenAPI page


def test_openapi_is_the_products_and_every_example_is_accepted(client, batch):
    # `batch` is a scoring run: /at_risk answers from the latest one, as after `make run`.
    from engage import __version__
    from serving.service import REQUEST_MODELS

    spec = client.get("/docs.json").json()
    info = spec["info"]
    assert (info["title"], info["version"]) == ("engage", __version__)
    assert "engagement index" in info["description"]
    assert "BentoML" not in json.dumps(info) and "contact" not in info
    posted = 0
    for path, model in REQUEST_MODELS.items():
        media = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        for name, example in media["examples"].items():
            model.model_validate(example["value"])  # the service's own rules
            resp = client.post(path, json=example["value"])
            assert resp.status_code == 200, (path, name, resp.text)
            posted += 1
    assert posted == len(REQUEST_MODELS) == 3


def test_the_docs_page_loads_nothing_from_the_network(client):
    import re

    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<title>engage" in html and "validatorUrl: null" in html
    assert not re.search(r"https?://", html), "the page names a remote URL"
    for asset in re.findall(r'(?:src|href)="\./([^"]+)"', html):
        assert client.get(f"/{asset}").status_code == 200, asset
    spec = client.get("/docs.json").text
    # Markdown images in descriptions would be fetched by the page.
    assert not re.search(r"!\[[^\]]*\]\(https?://", spec)


def test_readme_curl_examples_work(servers, batch):
    import re
    import shlex

    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Try it with curl", 1)[1].split("\n### ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("curl ")]
    assert len(lines) >= 3
    for line in lines:
        cmd = shlex.split(line.replace("http://127.0.0.1:3000", servers["open"].url))
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        assert isinstance(json.loads(done.stdout), dict), line
    assert re.search(r"curl -sf -X POST \S+/predict ", section)


# Heavy lane (the suite's 10-minute budget): about 25 s of server start and stop.
@pytest.mark.reliability_heavy
def test_ctrl_c_stops_engage_serve_and_every_process_it_started(pipeline, tmp_path):
    import psutil

    from serving.local_server import free_port

    port = free_port()
    env = {**os.environ, "ENGAGE_DATA_DIR": str(pipeline.paths.data_dir)}
    log = (tmp_path / "serve.log").open("wb")
    cmd = [sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    family = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len(family) >= 2, family  # the BentoML server and at least one worker
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends, to engage serve only
        assert proc.wait(timeout=90) == 0
        _, alive = psutil.wait_procs(family, timeout=10)
        assert alive == [], alive
    finally:
        log.close()
        for p in [proc, *family]:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                p.kill()


# ------------------------------------------------------------------------ packaging


def test_bentofile_packages_match_pyproject():
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert bentofile["python"]["lock_packages"] is False
    assert bentofile["python"]["packages"] == project["dependencies"]
    assert bentofile["service"] == "serving.service:EngageService"


def test_serve_command_is_registered():
    from typer.testing import CliRunner

    from cli.main import app

    assert [c.name for c in app.registered_commands].count("serve") == 1
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0 and "--port" in result.output


def test_reasons_are_finite(client, sample_ids):
    out = _predict(client, sample_ids[:5], explain=True, top_k=20)
    for p in out.predictions:
        assert all(math.isfinite(r.contribution) for r in p.reasons)


def test_bentoml_build_works_offline(tmp_path):
    # A few seconds on an idle machine (about 25 s on a loaded 2-core one): no package
    # index is needed (lock_packages: false) and nothing is written outside BENTOML_HOME.
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "PIP_NO_INDEX": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    bento = next((tmp_path / "bentoml" / "bentos" / "engage").glob("*/bento.yaml"))
    src = bento.parent / "src"
    for needed in ("serving/service.py", "serving/online.py", "params.yaml", "feature_repo"):
        assert (src / needed).exists(), needed
    assert not (src / "tests").exists() and not (src / "data").exists()


def test_engage_serve_binds_loopback_by_default(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import cli.serve as serve_module
    from cli.main import app

    started = []

    class FakeChild:
        def __init__(self, cmd, env, cwd, **kwargs):
            started.append((cmd, env))

        def wait(self, timeout=None):
            return 0

    class Loaded:  # what the preflight returns once the stores check out
        versions = {"churn": "1", "appetence": "1"}
        snapshot_as_of = "2026-01-01"

    monkeypatch.setenv("ENGAGE_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(serve_module.subprocess, "Popen", FakeChild)
    monkeypatch.setattr("serving.startup.preflight", lambda paths, params: Loaded())
    result = CliRunner().invoke(app, ["serve", "--port", "3999"])
    assert result.exit_code == 0, result.output
    ((cmd, env),) = started
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--port") + 1] == "3999"
    assert cmd[cmd.index("serve") + 1] == "serving.service:EngageService"
    assert env["ENGAGE_DATA_DIR"] == str(tmp_path)
    assert env["ENGAGE_MLRUNS_DIR"] == str(tmp_path / "mlruns")
