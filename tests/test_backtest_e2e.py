"""The backtest end to end: real ``engage`` processes on a small simulated log, 2 cuts.

A canary is planted in the full log: purchases at the first cut and one hour after it
for a few contacts. They must reach the realised labels and nothing the pipeline sees.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluation import backtest as bt
from training.model import KINDS

# About two minutes of subprocess pipelines: outside `make test`'s budget, in the heavy lane
# (`make test-reliability`); tests/test_backtest.py covers the judging in `make test`.
pytestmark = [pytest.mark.slow, pytest.mark.reliability_heavy]

SETS = ("simulate.days=240",)
CUTS = ("w26", "w30")
HORIZON = 30


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backtest")
    layers = bt.Layers(sets=SETS)
    params = layers.params(HORIZON)
    log = bt.prepare_demo(folder / "full", params, customers=600, seed=11)
    cut1 = bt.parse_cut(CUTS[0], log.origin)
    events = pd.read_parquet(log.events)
    clean = events.copy()
    known = events.loc[events["event_time"] < cut1, "customer_id"].drop_duplicates()
    canaries = known.sample(5, random_state=0).tolist()
    plant = pd.DataFrame(
        {
            "event_id": [f"canary-{i}-{k}" for i in range(5) for k in range(2)],
            "customer_id": [c for c in canaries for _ in range(2)],
            "event_time": [t for _ in canaries for t in (cut1, cut1 + pd.Timedelta(hours=1))],
            "event_type": "purchase",
            "value": 50.0,
            "channel": "web",
            "campaign_id": None,
        }
    ).astype({"event_time": events["event_time"].dtype})
    from engage.data.io import write_events

    write_events(pd.concat([events, plant], ignore_index=True), log.events)
    log = bt.describe_log("demo", log.events.parent, log.origin, {**log.source, "canary": 1})
    cells, skipped = bt.plan_cells(
        [bt.parse_cut(c, log.origin) for c in CUTS], [HORIZON], log.first_event, log.end
    )
    assert skipped == [] and len(cells) == 2
    result = bt.run_backtest(
        log, cells, folder / "bt", layers, jobs=2, n_boot=200, seed=params.training.seed
    )
    return {
        "result": result,
        "log": log,
        "layers": layers,
        "params": params,
        "folder": folder / "bt",
        "cells": cells,
        "canaries": canaries,
        "clean": clean,
        "cut1": cut1,
    }


def test_every_cell_ran_the_pipeline_and_was_judged(run):
    result = run["result"]
    assert [d["status"] for d in result.cells] == ["ok", "ok"], [
        (d.get("step"), d.get("error")) for d in result.cells
    ]
    for doc in result.cells:
        assert [c["step"] for c in doc["commands"]] == ["ingest", "features", "train", "score"]
        assert all(c["returncode"] == 0 for c in doc["commands"])
        assert doc["scored_as_of"] == doc["cut"] == doc["snapshot_as_of"]
        assert doc["leakage"]["audited_rows"] > 0
        for name, m in doc["models"].items():
            assert m["status"] == "ok"
            # LightGBM, or the best baseline when the gate found LightGBM no better.
            assert m["champion"]["kind"] in KINDS
            assert m["champion"]["registry_version"] == m["champion"]["scored_version"] == "1"
            assert m["population_not_scored"] >= 0 and m["contacts"] > 50
            assert set(m["methods"]) >= {"champion", "recency", "rfm", "logistic"}
            assert ("bgnbd" in m["methods"]) == (name == "appetence")
            d = m["difference"]["roc_auc"]
            assert d["lo"] <= d["value"] <= d["hi"]
            assert m["verdict"] == bt.verdict(d["lo"], d["hi"])


def test_the_cell_store_holds_nothing_from_the_cut_on_not_even_the_canary(run):
    doc = run["result"].cells[0]
    stored = pd.read_parquet(f"{doc['data_dir']}/events.parquet")
    assert stored["event_time"].max() < run["cut1"]
    assert not stored["event_id"].str.startswith("canary").any()
    clean = run["clean"]
    assert len(stored) == int((clean["event_time"] < run["cut1"]).sum()) == doc["exported_rows"]


def test_the_scored_features_ignore_the_canary(run):
    from features.catalog import model_feature_names
    from features.reference import reference_snapshot
    from features.snapshots import snapshot_path

    doc, params = run["result"].cells[0], run["params"]
    paths = bt.cell_paths(doc["data_dir"], params)
    snap = pd.read_parquet(snapshot_path(paths.features_dir, run["cut1"]))
    snap = snap.set_index("customer_id").loc[run["canaries"]]
    clean = run["clean"][run["clean"]["customer_id"].isin(run["canaries"])]
    want = reference_snapshot(clean, None, run["cut1"], params).loc[run["canaries"]]
    feats = model_feature_names(params)
    np.testing.assert_allclose(
        snap[feats].astype(float).to_numpy(), want[feats].astype(float).to_numpy(), rtol=1e-6
    )


def test_the_canary_reaches_the_realised_labels(run):
    labels = bt.realised_labels(run["log"], run["cut1"], run["params"], "appetence")
    assert (labels.loc[run["canaries"]] == 1).all()


def test_the_report_and_a_rerun_from_the_cache(run):
    result = run["result"]
    md = bt.report_markdown(result)
    assert md.count("| 2025-07-") >= 8  # 2 cells x 2 models, in both tables
    s = bt.summary(result)
    assert s["win"] + s["tie"] + s["loss"] == s["compared"] == 4
    again = bt.run_backtest(
        run["log"],
        run["cells"],
        run["folder"],
        run["layers"],
        n_boot=200,
        seed=run["params"].training.seed,
    )
    assert again.cached == 2 and again.computed == 0 and again.cells == result.cells
