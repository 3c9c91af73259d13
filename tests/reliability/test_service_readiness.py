"""Readiness checks every dependency an answer needs; the service never writes a store.

The probe finding: ``/ready`` answered ready while the online store was missing or
corrupt and every ``/predict`` was a 500. Now readiness reads the online store for
real (at most once a second), and a store that cannot be read is a 503 naming it, on
``/ready``, ``/readyz`` and ``/predict`` alike, until it is back.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from serving.at_risk import AtRiskCache
from tests.reliability import service_fixtures as fx
from tests.reliability.service_fixtures import known_ids, paths_of

served = fx.served  # fixtures of the shared module
store_copy = fx.store_copy
WITHIN_S = 15.0  # readiness re-reads at most once a second; a loaded machine is slow


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served.url, timeout=30) as c:
        yield c


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def stores(store_copy, served):
    """Digests of the stores once the server is up; checked again at the module end."""
    files = [
        store_copy / "mlruns" / "mlflow.db",
        store_copy / "feast" / "registry.db",
        store_copy / "feast" / "online_store.db",
    ]
    before = {p: _digest(p) for p in files}
    listing = sorted(str(p.relative_to(store_copy)) for p in (store_copy / "mlruns").rglob("*"))
    yield files
    assert {p: _digest(p) for p in files} == before
    after = sorted(str(p.relative_to(store_copy)) for p in (store_copy / "mlruns").rglob("*"))
    assert after == listing


def _until(fn, within: float = WITHIN_S):
    deadline = time.monotonic() + within
    while True:
        result = fn()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.3)


def test_ready_reports_loaded_and_registry_versions(client, store_copy, stores):
    from training.registry import champion_version

    body = client.get("/ready").json()
    assert body["status"] == "ready"
    assert body["restart_needed"] is False and body["registry_problem"] is None
    for name in ("churn", "appetence"):
        version = champion_version(paths_of(store_copy), name)
        assert body["models"][name]["version"] == version
        assert body["models"][name]["registry_version"] == version
    assert client.get("/readyz").status_code == 200


def _unready(client, words: str):
    def check():
        resp = client.get("/ready")
        return resp if resp.status_code == 503 and words in resp.json()["error"] else None

    return _until(check)


def _ready_again(client, ids):
    def check():
        ok = client.get("/ready").status_code == 200
        predict = client.post("/predict", json={"customer_ids": ids[:2]})
        return ok and predict.status_code == 200

    return _until(check)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_an_unreadable_online_store_makes_the_service_unready(client, store_copy, stores, damage):
    ids = known_ids(store_copy)["customers"]
    online = store_copy / "feast" / "online_store.db"
    away = online.with_name("online_store.db.away")
    assert client.post("/predict", json={"customer_ids": ids[:2]}).status_code == 200
    online.rename(away)
    try:
        if damage == "corrupt":
            online.write_bytes(b"\x00not a database" * 1000)
        words = "is missing" if damage == "missing" else "cannot be read"
        resp = _unready(client, words)
        assert resp is not None, client.get("/ready").text
        body = resp.json()
        assert body["status"] == "unavailable"
        assert str(online) in body["error"] and "engage features build" in body["error"]
        assert client.get("/readyz").status_code == 503
        assert client.get("/livez").status_code == 200  # alive, just not ready
        predict = client.post("/predict", json={"customer_ids": ids[:2]})
        assert predict.status_code == 503, predict.text
        assert str(online) in predict.json()["error"]
        if damage == "corrupt":
            assert online.read_bytes() == b"\x00not a database" * 1000  # never "repaired"
    finally:
        online.unlink(missing_ok=True)
        away.rename(online)
    assert _ready_again(client, ids), client.get("/ready").text


def test_an_unreadable_registry_is_reported_but_the_models_keep_answering(
    client, store_copy, stores
):
    ids = known_ids(store_copy)["customers"]
    db = store_copy / "mlruns" / "mlflow.db"
    away = db.with_name("mlflow.db.away")
    db.rename(away)
    try:

        def reported():
            body = client.get("/ready").json()
            return body if body.get("registry_problem") else None

        body = _until(reported)
        assert body is not None and "no MLflow store at" in body["registry_problem"]
        assert body["status"] == "ready" and body["models"]["churn"]["registry_version"] is None
        assert client.post("/predict", json={"customer_ids": ids[:2]}).status_code == 200
        assert not db.exists()  # the service did not create an empty store in its place
    finally:
        away.rename(db)


def test_a_new_promotion_asks_for_a_restart(client, store_copy, stores):
    db = store_copy / "mlruns" / "mlflow.db"
    saved = db.read_bytes()
    con = sqlite3.connect(db)
    try:
        version = con.execute(
            "SELECT version FROM registered_model_aliases WHERE name='churn' AND alias='champion'"
        ).fetchone()[0]
        con.execute(
            "INSERT INTO model_versions (name, version, run_id, source, storage_location, "
            "status, workspace) SELECT name, version + 100, run_id, source, storage_location, "
            "status, workspace FROM model_versions WHERE name='churn' AND version=?",
            (version,),
        )
        con.execute(
            "UPDATE registered_model_aliases SET version=? WHERE name='churn' AND alias='champion'",
            (version + 100,),
        )
        con.commit()
    finally:
        con.close()
    try:

        def flagged():
            body = client.get("/ready").json()
            return body if body.get("restart_needed") else None

        body = _until(flagged)
        assert body is not None
        assert body["models"]["churn"]["version"] == str(version)
        assert body["models"]["churn"]["registry_version"] == str(version + 100)
    finally:
        db.write_bytes(saved)
    assert _until(lambda: client.get("/ready").json().get("restart_needed") is False)


def test_at_risk_is_cached_until_a_new_run_appears(client, store_copy, stores):
    from engage.config import load_params
    from serving.scoring import score

    paths = paths_of(store_copy)
    params = load_params()
    first = score(paths, params, run_id="reliability-a")
    resp = _until(
        lambda: (
            (r := client.post("/at_risk", json={"limit": 5})).status_code == 200
            and r.json()["run_id"] == first.run_id
            and r
        )
    )
    assert resp, client.post("/at_risk", json={"limit": 5}).text
    top = resp.json()["contacts"]
    assert [c["value_at_risk"] for c in top] == sorted(
        (c["value_at_risk"] for c in top), reverse=True
    )
    assert len(client.post("/at_risk", json={"limit": 1000}).json()["contacts"]) <= 1000

    # In-process: repeated queries do not re-read the run; a new run file does.
    cache = AtRiskCache(paths, check_every_s=0.0)
    for limit in (1, 10, 100, 1000):
        cache.get(limit)
        cache.get(limit, "Hero", 10.0)
    assert cache.builds == 1
    second = score(paths, params, run_id="reliability-b")
    info, _ = cache.get(3)
    assert cache.builds == 2 and info.run_id == second.run_id
    # ... and the server notices it too.
    assert _until(
        lambda: client.post("/at_risk", json={"limit": 3}).json().get("run_id") == second.run_id
    )
