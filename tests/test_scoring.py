"""Batch scoring: content, agreement with Feast online features, atomic runs, at-risk list."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.catalog import ENTITY_KEY, recency_feature
from features.snapshots import list_snapshots, pick_snapshot
from serving.at_risk import at_risk_list, suggested_action, to_csv, to_json
from serving.champions import load_champions
from serving.index import STAGES, dial_in_quadrant, engagement_index, stabilise
from serving.runs import check_run_id, list_runs, previous_stages, read_run
from serving.scoring import score
from serving.segments import SEGMENTS, assign_segments

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def champions(pipeline):
    return load_champions(pipeline.paths, pipeline.params)


@pytest.fixture(scope="module")
def latest(pipeline, champions):
    return score(pipeline.paths, pipeline.params, champions=champions)


def test_every_contact_of_the_latest_snapshot_is_scored(pipeline, champions, latest):
    snap = pick_snapshot(pipeline.paths.features_dir)
    features = pd.read_parquet(snap.path)
    info, scores = read_run(pipeline.paths, latest.run_id)
    assert latest.path.name == f"run={latest.run_id}.parquet"
    assert latest.run_id.startswith(f"{snap.as_of:%Y%m%d}-")
    assert latest.rows == len(scores) == len(features)
    assert scores[ENTITY_KEY].tolist() == features[ENTITY_KEY].tolist()
    assert (scores["as_of"] == snap.as_of).all() and info.as_of == snap.as_of
    assert info.versions == {m: pipeline.results[m].version for m in ("churn", "appetence")}
    assert (scores["churn_version"] == pipeline.results["churn"].version).all()

    customer = features["has_purchased"].to_numpy() == 1
    # The churn model scores customers only; the appetence model scores everyone.
    assert scores.loc[customer, "p_churn"].notna().all()
    assert scores.loc[~customer, "p_churn"].isna().all()
    np.testing.assert_allclose(scores["p_purchase"], champions["appetence"].predict_proba(features))
    # Stage, score and dial are the index functions with the stability rule against the
    # previous run; segments the segment rules.
    index = engagement_index(
        customer, scores["p_purchase"], scores["p_churn"], pipeline.params.index
    )
    previous = previous_stages(pipeline.paths, snap.as_of)
    assert latest.previous_run == (previous.run.run_id if previous.run else None)
    before, before_runs = previous.lookup(scores[ENTITY_KEY])
    plain = pd.Categorical(index["stage"], categories=list(STAGES)).codes
    stage, runs = stabilise(
        plain, customer, scores["p_purchase"], scores["p_churn"], pipeline.params.index,
        before, before_runs,
    )  # fmt: skip
    assert scores["stage"].tolist() == [STAGES[c] for c in stage]
    assert scores["stage_runs"].tolist() == runs.tolist()
    np.testing.assert_allclose(
        scores["dial_position"], dial_in_quadrant(stage, index["dial_position"].to_numpy())
    )
    segments = assign_segments(features, pipeline.params.segments).astype(str)
    assert scores["segment"].tolist() == list(segments)
    assert sum(latest.stages.values()) == sum(latest.segments.values()) == len(scores)
    assert (scores.loc[~customer, "value_at_risk"] == 0).all()
    np.testing.assert_allclose(
        scores.loc[customer, "value_at_risk"],
        scores.loc[customer, "p_churn"] * scores.loc[customer, "clv"],
    )

    # Reasons: 3 per contact, from the model of its half, largest contribution first.
    k = pipeline.params.scoring.top_k_reasons
    assert scores["reasons"].map(len).eq(k).all()
    first = scores["reasons"].iloc[int(np.flatnonzero(customer)[0])]
    assert all(r["text"].endswith("churn risk") for r in first)
    first = scores["reasons"].iloc[int(np.flatnonzero(~customer)[0])]
    assert all(r["text"].endswith("purchase readiness") for r in first)
    sizes = [abs(r["contribution"]) for r in first]
    assert sizes == sorted(sizes, reverse=True)


def test_score_frame_on_a_few_rows(pipeline, champions):
    from serving.champions import make_explainers, typical_by_half
    from serving.scoring import score_frame

    snap = pick_snapshot(pipeline.paths.features_dir)
    features = pd.read_parquet(snap.path).head(20)
    explainers = make_explainers(
        champions, pipeline.params, typical_by_half(snap.path, champions.features)
    )
    frame = score_frame(features, champions, pipeline.params, explainers)
    assert len(frame) == 20 and frame["reasons"].map(len).eq(3).all()
    assert "(typical " in frame["reasons"].iloc[0][0]["text"]
    assert score_frame(features.iloc[:0], champions, pipeline.params, explainers).empty


def test_scores_decide_with_the_thresholds_carried_to_the_models_horizon(pipeline, champions):
    from serving.index import thresholds_at
    from serving.scoring import score_frame

    # The champions answer within 30 days; thresholds stated for 10 days are carried to 30
    # (tau_churn 0.5 -> 0.125), so many more customers land in Exit than at 0.5.
    stated_10 = pipeline.params.model_copy(
        update={"index": pipeline.params.index.model_copy(update={"stated_horizon_days": 10})}
    )
    snap = pick_snapshot(pipeline.paths.features_dir)
    features = pd.read_parquet(snap.path)
    at_30 = score_frame(features, champions, pipeline.params)
    carried = score_frame(features, champions, stated_10)
    tau = thresholds_at(stated_10.index, 30)
    assert tau.tau_churn == pytest.approx(0.5**3)
    expected = engagement_index(
        carried["has_purchased"], carried["p_purchase"], carried["p_churn"], tau
    )["stage"].astype(str)
    assert (carried["stage"].astype(str).to_numpy() == expected.to_numpy()).all()
    exits = [(f["stage"].astype(str) == "Exit").sum() for f in (at_30, carried)]
    assert exits[1] > exits[0]


def test_batch_features_are_the_online_features(pipeline, champions, latest):
    """Feast's online store (latest snapshot) and the batch file give the same scores."""
    from features.store import get_store, online_features

    _, scores = read_run(pipeline.paths, latest.run_id)
    ids = scores[ENTITY_KEY].sample(40, random_state=0).tolist()
    online = online_features(get_store(pipeline.paths), ids, "churn_v1")
    expected = scores.set_index(ENTITY_KEY).loc[ids]
    np.testing.assert_allclose(
        champions["appetence"].predict_proba(online), expected["p_purchase"], atol=1e-12
    )
    customer = online["has_purchased"].to_numpy() == 1
    np.testing.assert_allclose(
        champions["churn"].predict_proba(online[customer]),
        expected["p_churn"].to_numpy()[customer],
        atol=1e-12,
    )


def test_reruns_replace_and_history_is_kept(pipeline, champions, latest):
    paths, params = pipeline.paths, pipeline.params
    again = score(paths, params, champions=champions)
    assert again.run_id == latest.run_id  # same snapshot, models and rules
    assert len(list(paths.scores_dir.glob(f"run={latest.run_id}*"))) == 1
    older = list_snapshots(paths.features_dir)[-3]
    past = score(paths, params, as_of=older.as_of + pd.Timedelta(hours=1), champions=champions)
    assert past.as_of == older.as_of and past.run_id != latest.run_id
    runs = [r.run_id for r in list_runs(paths)]
    assert runs.index(past.run_id) < runs.index(latest.run_id)
    assert read_run(paths)[0].run_id == latest.run_id  # the latest as-of comes last
    with pytest.raises(FileNotFoundError, match="no feature snapshot at or before 2000-01-01"):
        score(paths, params, as_of="2000-01-01", champions=champions)


def test_a_failed_run_leaves_no_partial_table(pipeline, champions, latest, monkeypatch):
    import serving.scoring as scoring

    paths = pipeline.paths
    params = pipeline.params.model_copy(
        update={"scoring": pipeline.params.scoring.model_copy(update={"batch_rows": 500})}
    )
    real = scoring.to_arrow
    calls = {"n": 0}

    def fail_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "to_arrow", fail_on_second_batch)
    before = sorted(p.name for p in paths.scores_dir.iterdir())
    with pytest.raises(RuntimeError, match="disk full"):
        score(paths, params, run_id="broken", champions=champions)
    assert calls["n"] == 2
    # Neither the final name nor the temporary file is left behind.
    assert sorted(p.name for p in paths.scores_dir.iterdir()) == before

    # Failing while replacing an existing run keeps the previous complete copy.
    old = latest.path.read_bytes()
    calls["n"] = 0
    with pytest.raises(RuntimeError, match="disk full"):
        score(paths, params, run_id=latest.run_id, champions=champions)
    assert latest.path.read_bytes() == old


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "run id", "-lead"])
def test_run_ids_are_file_name_safe(bad):
    with pytest.raises(ValueError, match="run id"):
        check_run_id(bad)


def test_at_risk_list(pipeline, latest):
    info, top = at_risk_list(pipeline.paths, top=15)
    assert info.run_id == latest.run_id and len(top) == 15
    _, scores = read_run(pipeline.paths, latest.run_id)
    customers = scores[scores["has_purchased"] == 1]
    reachable = customers[~customers["lapsed"]]
    # Reachable customers only, by construction: lapsed ones never fill the top.
    assert not top["lapsed"].any()
    assert top["value_at_risk"].tolist() == reachable["value_at_risk"].nlargest(15).tolist()
    assert top["reasons"].map(len).eq(3).all()
    assert all(
        a == suggested_action(s, g) for a, s, g in top[["action", "stage", "segment"]].values
    )

    segment = top["segment"].iloc[0]
    _, only = at_risk_list(pipeline.paths, top=5, segment=segment.upper().replace(" ", "-"))
    assert (only["segment"] == segment).all()
    with pytest.raises(ValueError, match="unknown segment 'vip': valid segments are"):
        at_risk_list(pipeline.paths, segment="vip")
    with pytest.raises(LookupError, match="no scoring run 'nope'"):
        at_risk_list(pipeline.paths, run_id="nope")

    # The lapsed customers (no activity within the churn window) are a win-back list.
    lapsed = customers[customers["lapsed"]]
    assert len(lapsed) and not (scores.loc[scores["has_purchased"] == 0, "lapsed"]).any()
    _, back = at_risk_list(pipeline.paths, top=10, win_back=True)
    assert back["lapsed"].all()
    assert back["value_at_risk"].tolist() == lapsed["value_at_risk"].nlargest(10).tolist()
    # Lapsed = a customer none of whose activities is within the churn window.
    params = pipeline.params
    window = params.labels.churn_active_within_days
    cols = [recency_feature(params, t) for t in params.labels.churn_activity_types]
    snap = pd.read_parquet(pick_snapshot(pipeline.paths.features_dir).path)
    snap = snap.set_index(ENTITY_KEY).loc[scores[ENTITY_KEY]]
    active = (snap[cols] <= window).any(axis=1).to_numpy()
    want = (snap["has_purchased"].to_numpy() == 1) & ~active
    np.testing.assert_array_equal(scores["lapsed"].to_numpy(), want)
    assert latest.lapsed == int(want.sum())
    # Old runs without the flag fall back on the segments: Lost and At risk are lapsed.
    import pyarrow.parquet as pq

    from serving.runs import META_KEY

    old = pq.read_table(latest.path).drop_columns(["lapsed"])
    meta = json.loads(old.schema.metadata[META_KEY])
    meta.update(run_id="old-run", scored_at="2000-01-01T00:00:00+00:00")  # never the latest
    old_path = pipeline.paths.scores_dir / "run=old-run.parquet"
    pq.write_table(old.replace_schema_metadata({META_KEY: json.dumps(meta).encode()}), old_path)
    try:
        _, old_top = at_risk_list(pipeline.paths, top=50, run_id="old-run")
        assert not old_top["segment"].isin(["Lost", "At risk"]).any()
        _, old_back = at_risk_list(pipeline.paths, top=50, run_id="old-run", win_back=True)
        assert old_back["segment"].isin(["Lost", "At risk"]).all() and len(old_back)
    finally:
        old_path.unlink()

    doc = json.loads(to_json(top, info))
    assert doc["run_id"] == latest.run_id and len(doc["contacts"]) == 15
    assert doc["contacts"][0]["reasons"] == top["reasons"].iloc[0]
    csv = pd.read_csv(pd.io.common.StringIO(to_csv(top)))
    assert csv[ENTITY_KEY].tolist() == top[ENTITY_KEY].tolist()


@pytest.mark.parametrize(
    ("stage", "segment", "words"),
    [
        ("Exit", "Occasional", "win-back"),
        ("Exit", "Waiting", "abandoned-cart"),
        ("Nurture", "Waiting", "abandoned-cart"),
        ("Purchase", "Lead", "sales call"),
        ("Retention", "Hero", "upsell"),
        ("Nurture", "Lead", "nurturing"),
        ("Retention", "Occasional", "social retargeting"),
        ("Nurture", "Ghost", "pop-up"),
    ],
)
def test_suggested_actions(stage, segment, words):
    assert words in suggested_action(stage, segment)
    assert all(suggested_action(s, g) for s in ("Nurture", "Exit") for g in SEGMENTS)


def test_cli_score_and_at_risk(pipeline, latest):
    from cli.main import app

    runner = CliRunner()
    out = runner.invoke(app, ["at-risk", "--top", "3", "--format", "json"])
    assert out.exit_code == 0, out.output
    assert len(json.loads(out.output)["contacts"]) == 3
    out = runner.invoke(app, ["at-risk", "--segment", "vip"])
    assert out.exit_code == 1 and "valid segments are" in out.output
    out = runner.invoke(app, ["at-risk", "--format", "xml"])
    assert out.exit_code == 1 and "--format must be one of" in out.output
    # A scores folder of its own: the shared pipeline's latest run stays the one other
    # tests (the service's /at_risk) compare with.
    out = runner.invoke(app, ["--set", "scoring.dir=scores-cli", "score", "--run-id", "cli-run"])
    assert out.exit_code == 0, out.output
    assert "Nurture" in out.output and "run cli-run" in out.output
    assert (pipeline.paths.data_dir / "scores-cli" / "run=cli-run.parquet").exists()
    assert not (pipeline.paths.scores_dir / "run=cli-run.parquet").exists()


def test_service_lookup_reads_the_packed_store_like_the_feast_sdk(pipeline, champions, latest):
    """The predictor's direct read of the packed store equals Feast's get_online_features."""
    from serving.online import OnlinePredictor

    predictor = OnlinePredictor(pipeline.paths, pipeline.params, champions)
    assert predictor._direct is not None  # the project's store: the direct path is used
    _, scores = read_run(pipeline.paths, latest.run_id)
    ids = scores[ENTITY_KEY].sample(300, random_state=1).tolist()
    ids = [*ids, "NO-SUCH-CUSTOMER", ids[0]]  # an unknown id and a duplicate
    X, as_of = predictor.lookup(ids)
    direct, predictor._direct = predictor._direct, None
    try:
        X_sdk, as_of_sdk = predictor.lookup(ids)
    finally:
        predictor._direct = direct
    np.testing.assert_array_equal(X, X_sdk)
    np.testing.assert_array_equal(as_of, as_of_sdk)
    assert np.isnan(as_of[-2]) and np.isnan(X[-2]).all()
    np.testing.assert_array_equal(X[-1], X[0])
    assert np.isfinite(as_of[:-2]).all()


def test_run_metadata_keeps_the_lapsed_count_and_the_range_check(pipeline, latest):
    from serving.runs import run_info

    checks = run_info(latest.path).checks
    assert checks["lapsed"] == latest.lapsed > 0
    assert checks["scored"] == latest.scored
    assert checks["out_of_range"] == latest.out_of_range
    assert checks["warnings"] == latest.warnings
    # The churn model scores customers only, the appetence model every contact; the range
    # check counts the churn model's population (lapsed customers are outside it).
    assert latest.scored["appetence"] == latest.rows > latest.scored["churn"] > 0
    customers = int(pq.read_table(latest.path, columns=["has_purchased"])["has_purchased"]
                    .to_numpy().sum())  # fmt: skip
    assert latest.scored["churn"] + latest.lapsed == customers
    # The last snapshot is a month past the refit's last as-of time: the oldest contacts'
    # tenure lies beyond anything the models were fitted on, and is counted.
    assert latest.out_of_range["churn"].get("tenure_days", 0) > 0
