"""Hazard answers in the product: batch runs, /predict (in-process), at-risk sort, report.

Small hazard models are fitted here on the session's ``pipeline`` snapshots (three
features, 30 trees) and injected, as the registry loader will hand them over; the run
files go to a copy of the data dir so the other tests' runs are untouched.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from engage.config import resolve_paths
from features.catalog import ENTITY_KEY, TIMESTAMP
from features.snapshots import list_snapshots, pick_snapshot
from serving import timing as tm
from serving.runs import find_run, read_run

FEATURES = ["days_since_last_event", "tenure_days", "has_purchased"]
IDS = 30


def _fit(paths, params, name: str, snaps) -> object:
    from training import hazard as hz
    from training.labels import observed_until

    events = pd.read_parquet(paths.events, columns=["customer_id", "event_type", "event_time"])
    end = observed_until(paths.events)
    types = hz.target_event_types(params, name)
    frames = []
    for snap in snaps:
        rows = pd.read_parquet(snap.path, columns=[ENTITY_KEY, TIMESTAMP, *FEATURES])
        if name == "churn":
            rows = rows[rows["has_purchased"] == 1].reset_index(drop=True)
        first = hz.first_event_times(rows, events, types)
        pp = hz.person_period(rows, first, end, params.hazard)
        counts = (
            hz.count_frame(rows, events, end, params.hazard, params.data.conversion_event)
            if name == "appetence"
            else None
        )
        frames.append((pp, counts))
    (pp_tr, c_tr), (pp_va, c_va) = frames
    tp = params.training.model_copy(
        update={
            "lightgbm": params.training.lightgbm.model_copy(
                update={"n_estimators": 30, "num_threads": 1}
            )
        }
    )
    return hz.fit_hazard_model(name, FEATURES, pp_tr, pp_va, params.hazard, tp, c_tr, c_va)


@pytest.fixture(scope="module")
def timed(pipeline, tmp_path_factory):
    """A copy of the pipeline's data dir, small hazard models and a run scored with them."""
    from serving.scoring import score

    target = tmp_path_factory.mktemp("timed") / "data"
    shutil.copytree(pipeline.data_dir, target)
    old = os.environ["ENGAGE_DATA_DIR"]
    os.environ["ENGAGE_DATA_DIR"] = str(target)
    try:
        params = pipeline.params
        paths = resolve_paths(params)
        snaps = list_snapshots(paths.features_dir)
        # Two as-of times whose 13 weeks are observed: train and early stopping.
        fit_on = [snaps[-16], snaps[-15]]
        models = {m: _fit(paths, params, m, fit_on) for m in ("appetence", "churn")}
        timing = tm.Timing.of(models, params, {"appetence": "1", "churn": "1"})
        # A run without hazard models first (what the at-risk sort refuses), then the
        # timed run: the latest.
        score(paths, params, run_id="no-timing", timing=tm.Timing.of({}, params))
        run = score(paths, params, timing=timing)
        yield paths, params, timing, run
    finally:
        os.environ["ENGAGE_DATA_DIR"] = old


def test_batch_run_holds_horizon_named_columns_and_their_metadata(timed):
    from serving.scoring import planned_run_id

    paths, params, timing, run = timed
    info = find_run(paths, run.run_id)
    cols = pq.read_schema(info.path).names
    for h in params.hazard.horizons_days:
        assert {f"p_purchase_{h}d", f"p_churn_{h}d", f"expected_purchases_{h}d"} <= set(cols)
    assert {"days_to_purchase", "days_to_activity", "days_to_churn"} <= set(cols)
    assert info.timing_columns == timing.columns()
    assert info.timing["horizons_days"] == list(params.hazard.horizons_days)
    assert info.timing["versions"] == {"appetence": "1", "churn": "1"}
    assert info.timing["missing"] == []
    h = params.labels.horizon_days
    assert info.decision_horizon_days == {"p_purchase": h, "p_churn": h}
    # The numbers are timing_columns of the snapshot's rows (the one function).
    _, frame = read_run(paths, run.run_id)
    snap = pd.read_parquet(pick_snapshot(paths.features_dir).path)
    snap = snap.set_index(ENTITY_KEY).loc[frame[ENTITY_KEY]].reset_index()
    expected = tm.timing_columns(snap, timing)
    pd.testing.assert_frame_equal(
        frame[timing.columns()].reset_index(drop=True), expected.reset_index(drop=True)
    )
    probs = frame.filter(regex=r"^p_(purchase|churn)_\d+d$").to_numpy()
    assert np.nanmin(probs) >= 0 and np.nanmax(probs) <= 1
    assert (frame["p_purchase_7d"] <= frame["p_purchase_90d"] + 1e-12).all()
    customers = frame["has_purchased"] == 1
    assert (frame.loc[customers, "p_churn_90d"] <= frame.loc[customers, "p_churn_7d"]).all()
    assert frame.loc[~customers, "days_to_churn"].isna().all()
    # Lapsed (the run's own flag, from the churn champion's rule) <=> already churned: 0.
    lapsed = customers & frame["lapsed"]
    assert lapsed.any() and (frame.loc[lapsed, "days_to_churn"] == 0).all()
    reachable = frame.loc[customers & ~frame["lapsed"], "days_to_churn"].dropna()
    L = params.labels.churn_active_within_days
    assert len(reachable) and reachable.between(0, L).all()
    # The run id follows the hazard models and their horizons, not only the fixed ones.
    from serving.champions import load_champions

    ids = load_champions(paths, params, allow_missing=True).identity
    as_of = info.as_of
    with_timing = planned_run_id(paths, params, as_of, ids, timing)
    assert with_timing == run.run_id
    assert planned_run_id(paths, params, as_of, ids, None) != with_timing
    other = dataclasses.replace(timing, horizons_days=(7, 30))
    assert planned_run_id(paths, params, as_of, ids, other) != with_timing
    changed = tm.Timing.of(
        {**timing.models, "churn": timing.models["appetence"]}, params, timing.versions
    )
    assert changed.identity["churn"] != timing.identity["churn"]


def test_predict_gives_the_batch_numbers_and_checks_horizons(timed):
    from serving.api_models import PredictResponse
    from serving.online import OnlinePredictor, RequestError

    paths, params, timing, run = timed
    _, frame = read_run(paths, run.run_id)
    frame = frame.set_index(ENTITY_KEY)
    predictor = OnlinePredictor(paths, params, timing=timing)
    ids = [str(i) for i in frame.index[:IDS]]
    scored = predictor.predict_ids(ids)
    assert scored.horizons == tuple(params.hazard.horizons_days)
    np.testing.assert_allclose(
        scored.timing.to_numpy(), frame.loc[ids, timing.columns()].to_numpy(), rtol=1e-9
    )
    records = scored.records()
    for cid, rec in zip(ids, records, strict=True):
        row = frame.loc[cid]
        for answer in rec["horizons"]:
            h = answer["horizon_days"]
            assert answer["p_purchase"] == pytest.approx(row[f"p_purchase_{h}d"], rel=1e-9)
        dtc = rec["days_to_churn"]
        assert (dtc is None and np.isnan(row["days_to_churn"])) or dtc == pytest.approx(
            row["days_to_churn"]
        )
    # The answer fits the documented response model.
    doc = {
        "predictions": [
            {
                **r,
                "customer_id": c,
                "status": "ok",
                "model_versions": predictor.versions,
                "decision_horizon_days": predictor.decision_horizon_days,
                "features_as_of": "2026-01-01T00:00:00Z",
                "stale": False,
            }
            for c, r in zip(ids, records, strict=True)
        ],
        "model_versions": predictor.versions,
        "horizons_days": list(scored.horizons),
        "timing_versions": dict(timing.versions),
        "timing_missing": [],
        "reference_time": "2026-01-01T00:00:00Z",
    }
    PredictResponse.model_validate(doc)
    # Other horizons on request; unknown ids get nulls; beyond H_max is refused by name.
    asked = predictor.predict_ids([ids[0], "NO-SUCH-ID"], horizons=[14, 60])
    assert list(asked.timing.columns[:2]) == ["p_churn_14d", "p_churn_60d"]
    assert asked.timing.iloc[1].isna().all() and asked.records()[1]["days_to_purchase"] is None
    with pytest.raises(RequestError, match=r"horizons_days: each must be in 1\.\.91 days"):
        predictor.predict_ids(ids[:1], horizons=[7, 120])


def test_at_risk_sorts_by_days_to_churn_or_says_why_not(timed):
    from serving.at_risk import at_risk_list

    paths, params, timing, run = timed
    _, by_value = at_risk_list(paths, top=50, run_id=run.run_id)
    _, by_days = at_risk_list(paths, top=50, run_id=run.run_id, sort="days-to-churn")
    days = by_days["days_to_churn"].to_numpy()
    known = days[~np.isnan(days)]
    assert len(known) and (np.diff(known) >= 0).all()
    assert np.isnan(days[len(known) :]).all()  # expected to act first: after the dated ones
    assert (by_value["value_at_risk"].diff().dropna() <= 0).all()  # default unchanged
    plain = find_run(paths, "no-timing")
    assert "days_to_churn" not in pq.read_schema(plain.path).names
    with pytest.raises(
        ValueError, match=r"--sort days-to-churn: run no-timing has no days_to_churn"
    ):
        at_risk_list(paths, run_id="no-timing", sort="days-to-churn")
    with pytest.raises(ValueError, match=r"--sort must be one of value, days-to-churn"):
        at_risk_list(paths, run_id=run.run_id, sort="soonest")


def test_report_draws_a_contacts_curve_and_weekly_buyers(timed):
    from reporting.timing_section import pick_contact, timing_section, weekly_buyers
    from serving.at_risk import at_risk_list

    paths, params, timing, run = timed
    _, top = at_risk_list(paths, top=1)
    assert pick_contact(paths, None) == (top["customer_id"].iat[0], "the first of the at-risk list")
    page = timing_section(paths, params, timing)
    assert 'data-chart="survival"' in page and 'data-chart="buyers"' in page
    assert "P(no purchase yet)" in page and "P(no activity yet)" in page  # a customer
    as_of, weeks = weekly_buyers(paths, params, timing)
    K = timing.models["appetence"].periods
    assert list(weeks["period"]) == list(range(1, K + 1))
    # Expected first purchases per period add up to P(purchase within H_max), summed.
    from features.snapshots import pick_snapshot

    rows = pd.read_parquet(pick_snapshot(paths.features_dir, as_of).path)
    h_max = timing.models["appetence"].h_max_days
    total = tm.timing_columns(rows, timing, [h_max])[f"p_purchase_{h_max}d"].sum()
    assert weeks["predicted"].sum() == pytest.approx(total, rel=1e-9)
    observed = weeks["realised"].dropna()
    assert len(observed) and (observed >= 0).all()
    assert abs(weeks.loc[observed.index, "predicted"].sum() / observed.sum() - 1) < 0.5
    with pytest.raises(LookupError, match=r"--contact 'NOBODY': not in the latest scoring run"):
        timing_section(paths, params, timing, contact="NOBODY")
    none = timing_section(paths, params, tm.Timing.of({}, params))
    assert "No hazard (time-to-event) model is registered yet" in none


def test_cli_at_risk_sort_option(timed):
    from typer.testing import CliRunner

    from cli.main import app

    paths, params, timing, run = timed
    runner = CliRunner()
    out = runner.invoke(app, ["at-risk", "--run", run.run_id, "--sort", "days-to-churn"])
    assert out.exit_code == 0, out.output
    assert "by expected days to churn, soonest first" in out.output
    assert "days to churn" in out.output
    bad = runner.invoke(app, ["at-risk", "--run", "no-timing", "--sort", "days-to-churn"])
    assert bad.exit_code != 0
    assert "--sort days-to-churn: run no-timing has no days_to_churn" in bad.output


def test_timing_charts_draw_in_chromium_with_legends_off_the_plots(timed, tmp_path):
    from tests.chromium import Browser, chromium_path

    if chromium_path() is None:
        pytest.skip("chromium is not installed (make install-dev installs it with apt-get)")
    from reporting.timing_section import timing_section

    paths, params, timing, run = timed
    page_file = tmp_path / "when.html"
    page_file.write_text(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>when</title>"
        f"</head><body>{timing_section(paths, params, timing)}</body></html>",
        encoding="utf-8",
    )
    with Browser(width=1200) as page:
        page.open(page_file.as_uri())
        charts = page.js(
            """[...document.querySelectorAll('svg.chart')].map(svg => {
                 const box = r => r ? r.getBoundingClientRect() : null;
                 const p = box(svg.querySelector('g.plot'));
                 const l = box(svg.querySelector('g.legend'));
                 return {name: svg.dataset.chart, w: p.width, h: p.height,
                   marks: svg.querySelectorAll('g.plot polyline').length,
                   overlap: l ? !(l.bottom <= p.top || l.top >= p.bottom
                                  || l.right <= p.left || l.left >= p.right) : false};
               })"""
        )
        assert page.errors == []
    assert {c["name"] for c in charts} == {"survival", "buyers"}
    for c in charts:
        assert c["w"] > 100 and c["h"] > 50 and c["marks"] > 0, c
        assert not c["overlap"], f"legend over the plot in {c['name']}"
