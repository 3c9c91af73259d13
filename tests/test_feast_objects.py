"""The Feast definitions built in code, how they are applied, the Feast CLI and UI on them.

No data is needed: applying only writes the registry and creates the online tables, so
every test here works on an empty temporary data directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from engage.config import PROJECT_ROOT, Params, Paths, load_params, parse_params
from engage.specs import CHURN, MODEL_SPECS
from features.catalog import ACTIVITY, ENGAGEMENT, FAMILIES, VIEWS, feature_names
from features.feast_objects import build_feast_objects, feature_services
from features.snapshots import snapshot_glob
from features.store import apply_objects, apply_repo, get_store, repo_config

FEAST = Path(sys.executable).parent / "feast"
UNITS = {"days", "count", "amount", "seconds", "score", "rate", "flag", "ratio", "share"}
UNITS |= {"per_period", "amount_per_period", "multiple"}  # cohort-free forms
OTHER = ("features.windows_days=[14]", "features.ttl_days=50")


def _paths(data_dir: Path, params: Params) -> Paths:
    return Paths(
        root=PROJECT_ROOT, data_dir=data_dir, mlruns_dir=data_dir / "mlruns", params=params
    )


def _layouts(paths: Paths) -> dict[str, list[str]]:
    """Online store tables and their feature lists, as the packed store recorded them."""
    with sqlite3.connect(paths.feast_dir / "online_store.db") as conn:
        rows = conn.execute("SELECT tbl, layout FROM _engage_layout").fetchall()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    layouts = {t: [name for name, _ in json.loads(js)] for t, js in rows}
    assert set(layouts) <= tables  # a recorded layout always has its table
    return layouts


def _registry(paths: Paths) -> dict:
    store = get_store(paths)
    return {
        "sources": {s.name: s.path for s in store.list_data_sources()},
        "views": {v.name: v for v in store.list_feature_views()},
        "services": {s.name: s for s in store.list_feature_services()},
        "entities": {e.name for e in store.list_entities()},
    }


# --------------------------------------------------------------------------- definitions


@pytest.mark.parametrize("profile", [None, "cdnow"])
def test_every_feature_has_a_description_and_tags_from_the_catalog(profile):
    params = load_params(profile=profile)
    objects = build_feast_objects(params, _paths(Path("/nowhere"), params))
    vocabulary = set(params.data.event_types)

    assert [v.name for v in objects.views] == list(VIEWS)
    assert [s.name for s in objects.services] == [s.feature_service for s in MODEL_SPECS.values()]
    seen = []
    for view in objects.views:
        assert view.description == VIEWS[view.name]
        assert view.tags == {"family": FAMILIES[view.name]}
        for field in view.features:
            seen.append(field.name)
            assert field.description.strip(), field.name
            tags = field.tags
            assert tags["family"] == FAMILIES[view.name], field.name
            assert tags["model_input"] == ("false" if field.name == "snapshot_epoch_s" else "true")
            # params.yaml declares the unit of every `value`, so every feature has one.
            assert tags.get("unit") in UNITS, field.name
            window = re.search(r"_(\d+)d$", field.name)
            if window:
                assert tags["window_days"] == window.group(1), field.name
            types = tags["event_types"].split(",") if "event_types" in tags else []
            assert set(types) <= vocabulary, field.name
    assert seen == feature_names(params)  # same features, same order as the snapshots
    fields = {f.name: f.tags for v in objects.views for f in v.features}
    assert fields["open_rate_7d"]["event_types"] == "email_open,email_sent"
    assert fields["web_visit_value_30d"]["unit"] == "seconds"
    assert fields["revenue_90d"] == {
        "family": "rfm",
        "model_input": "true",
        "unit": "amount",
        "window_days": "90",
        "event_types": "purchase",
    }
    assert "event_types" not in fields["tenure_days"]  # from the customers table
    for service in objects.services:
        assert service.description.strip() and service.tags["models"]


def test_a_value_unit_must_belong_to_a_value_event_type():
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["data"]["value_units"] = {"email_open": "seconds"}
    with pytest.raises(ValueError, match=r"data\.value_units: not in data\.value_event_types"):
        parse_params(raw)
    raw["data"]["value_units"] = {}
    fields = {
        f.name: f.tags
        for v in build_feast_objects(parse_params(raw), _paths(Path("/x"), parse_params(raw))).views
        for f in v.features
    }
    assert "unit" not in fields["revenue_total"]  # unknown, so not tagged
    assert fields["purchases_total"]["unit"] == "count"


# --------------------------------------------------------------------------------- apply


def test_two_applies_in_one_process_keep_their_own_source_and_fields(tmp_path, monkeypatch):
    # The environment points elsewhere: apply must use only the paths and params it gets.
    monkeypatch.setenv("ENGAGE_DATA_DIR", str(tmp_path / "elsewhere"))
    env_before, modules_before = dict(os.environ), set(sys.modules)
    cwd_before = Path.cwd()
    pa = _paths(tmp_path / "a", load_params())
    pb = _paths(tmp_path / "b", load_params(overrides=OTHER))

    apply_repo(pa)
    result_b = apply_repo(pb)

    assert result_b.deleted == ()
    for paths in (pa, pb):
        reg = _registry(paths)
        want = snapshot_glob(paths.features_dir)
        assert reg["sources"] == {"customer_features_source": want}
        for name, view in reg["views"].items():
            assert view.batch_source.path == want
            assert [f.name for f in view.features] == feature_names(paths.params, (name,))
            assert view.ttl == timedelta(days=paths.params.features.ttl_days)
        layouts = _layouts(paths)
        assert layouts[f"engage_{ACTIVITY}"] == feature_names(paths.params, (ACTIVITY,))
    assert any(n.endswith("_14d") for n in feature_names(pb.params, (ACTIVITY,)))
    assert not any(n.endswith("_14d") for n in feature_names(pa.params, (ACTIVITY,)))
    assert not (tmp_path / "elsewhere").exists()
    assert dict(os.environ) == env_before and Path.cwd() == cwd_before
    assert not {"entities", "data_sources", "feature_views", "feature_services"} & (
        set(sys.modules) - modules_before
    )

    # Other windows on the same data dir: the online table follows the new feature list.
    again = _paths(pa.data_dir, pb.params)
    assert apply_repo(again).deleted == ()
    assert _layouts(again)[f"engage_{ACTIVITY}"] == feature_names(pb.params, (ACTIVITY,))
    assert _registry(again)["views"][ACTIVITY].ttl == timedelta(days=50)


def test_an_object_no_longer_defined_is_deleted_on_the_next_apply(tmp_path, monkeypatch):
    paths = _paths(tmp_path, load_params())
    apply_repo(paths)
    full = build_feast_objects(paths.params, paths)
    assert set(_registry(paths)["services"]) == {"churn_v1", "appetence_v1"}

    # A model spec removed from the table: its service leaves the registry.
    monkeypatch.delitem(MODEL_SPECS, "appetence")
    result = apply_repo(paths)
    assert result.deleted == ("FeatureService appetence_v1",)
    assert set(_registry(paths)["services"]) == {"churn_v1"}

    # A view no longer defined: deleted from the registry and its online table dropped.
    kept = tuple(v for v in full.views if v.name != ENGAGEMENT)
    fewer = dataclasses.replace(full, views=kept, services=feature_services(kept, [CHURN]))
    result = apply_objects(get_store(paths), fewer)
    assert result.deleted == (f"FeatureView {ENGAGEMENT}",)
    reg = _registry(paths)
    assert set(reg["views"]) == set(VIEWS) - {ENGAGEMENT}
    kept_names = [v.name for v in kept]
    assert [p.name for p in reg["services"]["churn_v1"].feature_view_projections] == kept_names
    assert set(_layouts(paths)) == {f"engage_{n}" for n in kept_names}
    with sqlite3.connect(paths.feast_dir / "online_store.db") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert f"engage_{ENGAGEMENT}" not in tables

    # Defined again: everything is back.
    monkeypatch.undo()
    assert apply_repo(paths).deleted == ()
    reg = _registry(paths)
    assert set(reg["views"]) == set(VIEWS)
    assert set(reg["services"]) == {"churn_v1", "appetence_v1"}
    assert set(_layouts(paths)) == {f"engage_{n}" for n in VIEWS}


# ------------------------------------------------------------------------------ Feast CLI


def _feast(args: list[str], paths: Paths, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        [
            str(FEAST),
            "-c",
            str(paths.feature_repo),
            "-f",
            str(paths.feast_dir / "feature_store.yaml"),
            *args,
        ],
        cwd=cwd,
        env={**os.environ, **env, "FEAST_USAGE": "False"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# Heavy lane (the suite's 10-minute budget); make test keeps the feast CLI's listing from
# any directory (tests/test_feast_store.py) and `feast ui` offline.
@pytest.mark.reliability_heavy
@pytest.mark.slow
def test_feast_cli_applies_and_lists_the_repo_files_under_the_engage_environment(tmp_path):
    # Other parameters through ENGAGE_PARAMS, another data dir through ENGAGE_DATA_DIR.
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["features"]["windows_days"] = [14]
    raw["features"]["ttl_days"] = 50
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    data_dir = tmp_path / "data"
    paths = _paths(data_dir, load_params(params_file))
    repo_config(paths)  # writes the config copy the CLI reads with -f
    env = {"ENGAGE_DATA_DIR": str(data_dir), "ENGAGE_PARAMS": str(params_file)}
    cwd = tmp_path / "somewhere"  # not the project: nothing may depend on the cwd
    cwd.mkdir()

    _feast(["apply"], paths, cwd, env)

    # The CLI read feature_repo/*.py: the same objects as the builder, field by field.
    want = build_feast_objects(paths.params, paths)
    reg = _registry(paths)
    assert reg["sources"] == {"customer_features_source": snapshot_glob(paths.features_dir)}
    assert reg["entities"] == {want.entity.name}
    assert set(reg["views"]) == {v.name for v in want.views}
    for view in want.views:
        got = reg["views"][view.name]
        assert got.description == view.description and got.ttl == timedelta(days=50)
        assert [(f.name, f.dtype, f.description, f.tags) for f in got.features] == [
            (f.name, f.dtype, f.description, f.tags) for f in view.features
        ]
    assert {n: s.description for n, s in reg["services"].items()} == {
        s.name: s.description for s in want.services
    }
    # Nothing differs, so applying the same definitions from code deletes nothing.
    assert apply_repo(paths).deleted == ()

    listed = _feast(["feature-views", "list"], paths, cwd, env)
    names = {line.split()[0] for line in listed.splitlines()[1:] if line.strip()}
    assert names == set(VIEWS)
    described = yaml.safe_load(_feast(["feature-views", "describe", ACTIVITY], paths, cwd, env))
    field = next(f for f in described["spec"]["features"] if f["name"] == "web_visit_count_14d")
    assert field["description"] == "web visit events in the last 14 days"
    assert field["tags"] == {
        "family": "activity",
        "model_input": "true",
        "unit": "count",
        "window_days": "14",
        "event_types": "web_visit",
    }


# ------------------------------------------------------------------------------- Feast UI


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    # No proxy: the request must stay on the loopback interface.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.mark.slow
def test_feast_ui_serves_its_page_and_the_registry_offline(tmp_path):
    paths = _paths(tmp_path / "data", load_params())
    apply_repo(paths)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    # Any outbound HTTP(S) the server tried would go to a dead proxy and fail.
    dead = "http://127.0.0.1:9"
    env = {
        **os.environ,
        "ENGAGE_DATA_DIR": str(paths.data_dir),
        "FEAST_USAGE": "False",
        "HTTP_PROXY": dead,
        "HTTPS_PROXY": dead,
        "http_proxy": dead,
        "https_proxy": dead,
        "NO_PROXY": "",
        "no_proxy": "",
    }
    config = paths.feast_dir / "feature_store.yaml"
    cmd = [str(FEAST), "-c", str(paths.feature_repo), "-f", str(config), "ui"]
    proc = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        status, page = 0, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, page = _get(base + "/")
                if status == 200:
                    break
            except OSError:
                pass  # not listening yet
            time.sleep(0.5)
        assert proc.poll() is None, "feast ui exited early"
        assert page is not None and status == 200, "feast ui did not answer in time"
        html = page.decode()
        assert "<title>Feast Feature Store</title>" in html and 'id="root"' in html
        # Every asset of the page comes from this server, none from a CDN.
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
        assets = re.findall(r"""(?:src|href)=["']?(/[^"' >]+)""", html)
        assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
        for asset in assets:
            assert _get(base + asset)[0] == 200, asset

        status, body = _get(base + "/projects-list.json")
        assert status == 200
        projects = json.loads(body)["projects"]
        assert [(p["id"], p["registryPath"]) for p in projects] == [("engage", "/api/v1")]
        status, body = _get(base + "/api/v1/feature_views?project=engage")
        assert status == 200
        views = {v["spec"]["name"] for v in json.loads(body)["featureViews"]}
        assert views == set(VIEWS)
        status, body = _get(base + "/api/v1/features?project=engage")
        assert status == 200
        features = json.loads(body)["features"]
        assert sorted(f["name"] for f in features) == sorted(feature_names(paths.params))
        for f in features:
            assert f["description"] and f["tags"]["family"] == FAMILIES[f["featureView"]], f
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        if proc.stdout:
            proc.stdout.close()
