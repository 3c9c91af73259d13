"""Scoring with only the models that exist (an appetence-only data set needs no churn model).

A copy of the pipeline's data dir loses one champion alias (as if that model had never
been trained); `engage score` then decides the half of the index whose model exists,
leaves the other half out of the run and says so, and the lists that need the missing
model refuse with a message naming it.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from engage.config import load_params, resolve_paths
from features.snapshots import pick_snapshot
from serving.at_risk import at_risk_list
from serving.champions import load_champions
from serving.decision import DecisionInputError, Layout, decide
from serving.leads import lead_list
from serving.runs import find_run, read_run
from training.registry import CHAMPION, NoChampion, setup_mlflow

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture()
def without(scratch):
    """A copy of the pipeline's data dir; call it with the models whose champion to drop."""
    from tests.conftest import SMALL

    def drop(*models: str):
        params = load_params(overrides=SMALL)
        paths = resolve_paths(params)
        client = setup_mlflow(paths)
        for m in models:
            client.delete_registered_model_alias(m, CHAMPION)
        return params, paths

    return drop


@pytest.mark.parametrize(
    ("missing", "kept_half", "stages", "refused"),
    [
        ("churn", 0, {"Nurture", "Purchase"}, "at-risk"),
        ("appetence", 1, {"Retention", "Exit"}, "leads"),
    ],
)
def test_score_decides_the_half_whose_model_exists_and_names_the_missing_one(
    without, missing, kept_half, stages, refused
):
    params, paths = without(missing)
    snap = pick_snapshot(paths.features_dir)
    halves = pd.read_parquet(snap.path, columns=["has_purchased"])["has_purchased"]
    left_out = int((halves != kept_half).sum())
    assert left_out > 0

    result = CliRunner().invoke(app, ["score"])
    out = ANSI.sub("", result.output)
    assert result.exit_code == 0, out
    assert f"no {missing} model" in out
    half = "customers" if missing == "churn" else "prospects"
    assert f"{half} half" in out and f"{left_out:,} {half} were left out" in out

    info = find_run(paths)
    assert info.missing_models == (missing,)
    assert info.checks["undecided"] == left_out
    assert missing not in info.versions
    _, scores = read_run(paths, info.run_id)
    # Only the decided half is written, each contact once, with a real stage.
    assert len(scores) == int((halves == kept_half).sum())
    assert (scores["has_purchased"] == kept_half).all()
    assert set(scores["stage"]) <= stages
    deciding = "p_purchase" if kept_half == 0 else "p_churn"
    assert scores[deciding].between(0, 1).all()

    with pytest.raises(LookupError, match=f"scored without an? {missing} model"):
        if refused == "at-risk":
            at_risk_list(paths)
        else:
            lead_list(paths, params)
    cli = CliRunner().invoke(app, [refused])
    assert cli.exit_code != 0
    assert re.search(f"scored without an? {missing} model", ANSI.sub("", cli.output))
    # The report still renders; its sections that need the missing model say why not.
    report = CliRunner().invoke(app, ["report", "--out", str(paths.data_dir / "r.html")])
    assert report.exit_code == 0, ANSI.sub("", report.output)
    html = (paths.data_dir / "r.html").read_text()
    if missing == "churn":
        assert "scored without a churn model" in html


def test_only_scoring_allows_a_missing_model(without):
    params, paths = without("churn")
    # The service and the monitors ask for every model: a missing one is an error there.
    with pytest.raises(NoChampion, match="no 'churn' model with alias 'champion'"):
        load_champions(paths, params)
    champions = load_champions(paths, params, allow_missing=True)
    assert champions.missing == ("churn",) and list(champions.models) == ["appetence"]
    assert champions.decides(0) and not champions.decides(1)

    # The decision core refuses rows it cannot decide instead of inventing a stage.
    snap = pd.read_parquet(pick_snapshot(paths.features_dir).path)
    layout = Layout.of(champions)
    X = snap[layout.inputs].to_numpy(dtype="float64", na_value=np.nan)
    customers = int((snap["has_purchased"] == 1).sum())
    with pytest.raises(DecisionInputError, match=f"no churn model: {customers} row"):
        decide(X, layout, champions, params)


def test_no_champion_at_all_is_an_error(without):
    params, paths = without("churn", "appetence")
    with pytest.raises(LookupError, match="no champion model at all"):
        load_champions(paths, params, allow_missing=True)
    result = CliRunner().invoke(app, ["score"])
    assert result.exit_code != 0 and "no champion model at all" in ANSI.sub("", result.output)


def test_a_champion_of_other_data_is_replaced_not_compared(without):
    """The demo's champion is not kept over a model of the user's own events."""
    from types import SimpleNamespace

    from engage.data.store import store_origin
    from training.registry import load_model
    from training.train import promotion_gate

    params, paths = without()
    champion, version = load_model(paths, "churn")
    origin = store_origin(paths.events)
    assert origin.startswith("simulate at ")
    assert champion.training["store_origin"] == origin
    # A model trained after the user's ingest replaced the demo events.
    challenger = SimpleNamespace(
        metrics={"model": {params.training.promotion_metric: 0.61}},
        chosen="model",
        split=SimpleNamespace(test=None),
        model=SimpleNamespace(training={"store_origin": "ingest at 2026-12-01T10:00:00+00:00"}),
    )
    decision = promotion_gate(paths, "churn", challenger, params)
    assert decision.alias == CHAMPION and decision.champion_version == version
    assert f"champion v{version} was trained on other data ({origin};" in decision.reason
    assert "ingest at 2026-12-01" in decision.reason


def test_a_model_left_without_champion_is_trained_again_even_on_identical_data(without):
    """A training killed between registration and the gate leaves a version, no alias."""
    from monitoring.retrain import training_plan

    params, paths = without("churn")
    plan = {d.model: d for d in training_plan(paths, params)}
    assert plan["churn"].train and plan["churn"].reason == "no champion yet"
    # The other model's champion was trained on these events with these parameters.
    assert not plan["appetence"].train
    assert "trained on these events with these parameters" in plan["appetence"].reason
