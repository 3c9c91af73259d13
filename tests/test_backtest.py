"""The rolling-origin backtest: grid, cut, labels, bootstrap, verdicts, cache (small data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from engage.config import load_params
from evaluation import backtest as bt

UTC = "UTC"
CUT = pd.Timestamp("2025-03-01", tz=UTC)


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz=UTC)


def write_log(folder: Path, rows: list[tuple], customers: dict[str, str] | None = None) -> Path:
    """Events (id, customer, time, type, value) and customers into ``folder``."""
    from engage.data.io import write_customers, write_events

    events = pd.DataFrame(
        {
            "event_id": [r[0] for r in rows],
            "customer_id": [r[1] for r in rows],
            "event_time": pd.to_datetime([r[2] for r in rows], utc=True, format="ISO8601").as_unit(
                "us"
            ),
            "event_type": [r[3] for r in rows],
            "value": [r[4] for r in rows],
            "channel": "web",
            "campaign_id": None,
        }
    )
    first = events.groupby("customer_id")["event_time"].min()
    if customers:
        for cid, t in customers.items():
            first[cid] = pd.Timestamp(t, tz=UTC)
    folder.mkdir(parents=True, exist_ok=True)
    write_events(events, folder / "events.parquet")
    write_customers(
        first.rename("first_seen").reset_index().astype({"first_seen": "datetime64[us, UTC]"}),
        folder / "customers.parquet",
    )
    return folder


# A hand-made log around the cut (2025-03-01). Horizon 10 days: window [03-01, 03-11).
ROWS = [
    ("e1", "a", "2025-01-05 10:00", "purchase", 20.0),  # a: customer, buys in the window
    ("e2", "a", "2025-02-20 10:00", "web_visit", 30.0),
    ("e3", "a", "2025-03-05 10:00", "purchase", 25.0),
    ("e4", "b", "2025-02-01 09:00", "purchase", 10.0),  # b: customer, quiet afterwards
    ("e5", "b", "2025-03-20 09:00", "purchase", 10.0),  # after the window: not counted
    ("e6", "c", "2025-02-10 08:00", "web_visit", 5.0),  # c: prospect, buys AT the cut
    ("e7", "c", "2025-03-01 00:00", "purchase", 40.0),
    ("e8", "d", "2025-02-27 23:59:59.999999", "email_open", None),  # d: prospect, opens
    ("e9", "d", "2025-03-10 23:59", "email_click", None),  # activity inside the window
    ("e10", "e", "2025-03-02 12:00", "purchase", 15.0),  # e: first seen after the cut
    ("e11", "f", "2025-04-01 00:00", "web_visit", 1.0),  # observes the data up to 04-02
]


@pytest.fixture
def log(tmp_path) -> bt.FullLog:
    folder = write_log(tmp_path / "full", ROWS)
    return bt.describe_log("hand", folder, ts("2025-01-01"), {"dataset": "hand"})


def params_h(days: int = 10):
    return load_params(overrides=(f"labels.horizon_days={days}",))


# ----------------------------------------------------------------------------- grid


def test_parse_cut_dates_and_weeks():
    origin = ts("1997-01-01")
    assert bt.parse_cut("w16", origin) == ts("1997-04-23")
    assert bt.parse_cut("1997-06-01", origin) == ts("1997-06-01")
    with pytest.raises(bt.BacktestError, match=r"--cuts: 'june' is neither a date"):
        bt.parse_cut("june", origin)
    with pytest.raises(bt.BacktestError, match=r"--cuts: '1997-13-01' is neither a date"):
        bt.parse_cut("1997-13-01", origin)
    with pytest.raises(bt.BacktestError, match="not at midnight UTC"):
        bt.parse_cut("1997-06-01T12:00", origin)


def test_parse_horizon_days_and_weeks():
    assert [bt.parse_horizon(x) for x in ("28", "28d", "4w", "13W")] == [28, 28, 28, 91]
    for bad in ("0", "-3", "4m", ""):
        with pytest.raises(bt.BacktestError, match="--horizons"):
            bt.parse_horizon(bad)


def test_default_cdnow_grid_is_weeks_16_to_52_every_4_and_3_horizons():
    grid = bt.default_grid("cdnow")
    cuts = bt.weekly_cuts(ts("1997-01-01"), grid.cut_weeks)
    assert cuts[0] == ts("1997-04-23") and cuts[-1] == ts("1997-12-31") and len(cuts) == 10
    assert grid.horizon_days == (28, 91, 182)
    with pytest.raises(bt.BacktestError, match="dataset must be one of"):
        bt.default_grid("nope")


def test_a_cell_past_the_data_end_is_skipped_with_its_reason():
    end = ts("1998-07-01")
    cells, skipped = bt.plan_cells(
        [ts("1997-12-31"), ts("1998-04-01")], [28, 182], ts("1997-01-01"), end
    )
    assert [c.key for c in cells] == [
        "cut=1997-12-31_h=28d",
        "cut=1997-12-31_h=182d",  # ends exactly at the end of the data: kept
        "cut=1998-04-01_h=28d",
    ]
    assert len(skipped) == 1
    assert skipped[0].cell == bt.Cell(ts("1998-04-01"), 182)
    assert skipped[0].reason == (
        "label window ends 1998-09-30, after the end of the data (1998-07-01)"
    )


def test_a_cut_before_the_first_event_is_skipped():
    cells, skipped = bt.plan_cells([ts("1996-12-01")], [28], ts("1997-01-01"), ts("1998-07-01"))
    assert cells == [] and "no event before the cut" in skipped[0].reason


# ---------------------------------------------------------------------- the cut itself


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_export_holds_only_events_strictly_before_the_cut(log, tmp_path, fmt):
    from engage.data.ingest import apply_mapping, parse_mapping, read_user_file

    out = tmp_path / f"export.{fmt}"
    n = bt.export_events(log.events, CUT, out, fmt)
    # e7 is AT the cut: after it (a label input), never a feature input.
    assert n == 5
    mapping = parse_mapping(bt.map_options()[1::2])
    back = apply_mapping(read_user_file(out), mapping)
    assert sorted(back["event_id"]) == ["e1", "e2", "e4", "e6", "e8"]
    times = pd.to_datetime(back["event_time"], utc=True, format="ISO8601")
    assert times.max() == ts("2025-02-27 23:59:59.999999")  # microseconds survive the CSV
    assert (times < CUT).all()
    # The product's own ingest takes every exported row, strictly.
    from engage.data.ingest import ingest_events
    from engage.data.io import read_events

    store = tmp_path / "store"
    report = ingest_events(
        back, params_h().data, store / "events.parquet", store / "q.parquet", strict=True
    )
    assert (report.good_rows, report.bad_rows) == (5, 0)
    stored = read_events(store / "events.parquet").set_index("event_id")
    original = pd.read_parquet(log.events).set_index("event_id").loc[stored.index]
    pd.testing.assert_series_equal(stored["event_time"], original["event_time"])
    pd.testing.assert_series_equal(stored["value"], original["value"])


def test_a_planted_event_after_the_cut_changes_nothing_the_pipeline_sees(tmp_path):
    clean = write_log(tmp_path / "clean", ROWS)
    planted_rows = [
        *ROWS,
        ("p1", "a", "2025-03-01 00:00", "purchase", 999.0),  # at the cut
        ("p2", "b", "2025-03-01 00:00:00.000001", "web_visit", 999.0),  # right after it
        ("p3", "z", "2025-03-01 00:01", "cart_add", None),  # a contact who appears after it
    ]
    planted = write_log(tmp_path / "planted", planted_rows)
    for fmt in bt.EXPORT_FORMATS:
        a, b = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
        bt.export_events(clean / "events.parquet", CUT, a, fmt)
        bt.export_events(planted / "events.parquet", CUT, b, fmt)
        if fmt == "csv":
            assert a.read_bytes() == b.read_bytes()
        else:
            pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))


def test_a_stored_event_at_the_cut_is_a_leak(tmp_path):
    from training.dataset import LeakageError

    before = [r for r in ROWS if ts(r[2]) < CUT]
    at_cut = [r for r in ROWS if r[0] == "e7"]
    folder = write_log(tmp_path / "cell", before + at_cut)
    paths = bt.cell_paths(tmp_path / "cell", params_h())
    with pytest.raises(LeakageError, match=r"event_time: 1 stored events at or after the cut"):
        bt.check_no_leak(paths, CUT)
    write_log(folder, before)
    assert bt.check_no_leak(paths, CUT)["stored_events"] == 5


def test_commands_forward_the_layers_and_score_at_the_cut(tmp_path):
    layers = bt.Layers(profile="cdnow", params_file=Path("/x/p.yaml"), sets=("a.b=1",))
    grid = [ts("2025-02-15"), ts("2025-02-22"), CUT]
    cmds = bt.cell_commands(bt.Cell(CUT, 28), tmp_path / "e.csv", layers, grid)
    assert [c.step for c in cmds] == ["ingest", "features", "train", "score"]
    head = ["--profile", "cdnow", "--params", "/x/p.yaml", "--set", "a.b=1"]
    for c in cmds:
        assert c.argv[:8] == [*head, "--set", "labels.horizon_days=28"]
    assert cmds[0].argv[8:11] == ["data", "ingest", str(tmp_path / "e.csv")]
    assert "contact=customer_id" in cmds[0].argv and "occurred_at=event_time" in cmds[0].argv
    assert cmds[1].argv[-2:] == ["--as-of", CUT.isoformat()]
    assert cmds[2].argv[8:] == ["train"]
    assert cmds[3].argv[8:] == ["score", "--as-of", "2025-03-01T00:00:00+00:00"]


def test_as_of_grid_ends_exactly_at_the_cut():
    p = params_h()
    grid = bt.as_of_grid(ts("2025-01-05 10:00"), CUT, p)
    assert grid[-1] == CUT
    assert all(
        b - a == pd.Timedelta(days=p.features.snapshot_every_days)
        for a, b in zip(grid[:-1], grid[1:], strict=True)
    )
    assert grid[0] > ts("2025-01-05 10:00")


def test_error_text_joins_the_wrapped_cli_error():
    out = "training churn\nerror: churn: training: 3 labelled as-of\ntimes, need more than 4\n"
    assert bt.error_text(out) == "error: churn: training: 3 labelled as-of times, need more than 4"
    assert bt.error_text("Traceback...\nKeyError: 'x'\n") == "KeyError: 'x'"


# ------------------------------------------------------------------------------ labels


def test_realised_labels_are_make_labels_at_the_cut_on_the_full_log(log):
    from training.labels import make_labels

    p = params_h(10)
    app = bt.realised_labels(log, CUT, p, "appetence")
    # a buys on 03-05, c buys AT the cut (in the window), b buys on 03-20 (after it),
    # d never buys, e is first seen after the cut (not a contact yet), f too.
    assert app.to_dict() == {"a": 1, "b": 0, "c": 1, "d": 0}
    churn = bt.realised_labels(log, CUT, p, "churn")
    # Active customers at the cut: a and b. a acts in the window; b only after it.
    assert churn.to_dict() == {"a": 0, "b": 1}
    for model, got in (("appetence", app), ("churn", churn)):
        want = make_labels(log.events, log.customers, [CUT], p, model)
        assert (want["event_timestamp"] == CUT).all()
        assert got.to_dict() == want.set_index("customer_id")["label"].to_dict()


def test_realised_labels_refuse_a_window_past_the_data(log):
    with pytest.raises(ValueError, match="no as-of time has a fully observed label window"):
        bt.realised_labels(log, CUT, params_h(60), "appetence")


# ---------------------------------------------------------------------------- baselines


def test_recency_ranks_recent_contacts_first_for_purchase_and_last_for_churn():
    X = pd.DataFrame({"days_since_last_event": [1.0, 30.0, np.nan, 5.0]})
    app = bt.recency_score(X, "appetence")
    churn = bt.recency_score(X, "churn")
    assert list(np.argsort(-app)) == [0, 3, 1, 2]  # never acted = least recent
    assert list(np.argsort(-churn)) == [2, 1, 3, 0]


def test_bgnbd_gives_prospects_zero_and_customers_a_probability(tmp_path):
    pytest.importorskip("lifetimes")
    rng = np.random.default_rng(3)
    rows, k = [], 0
    for c in range(60):
        for _ in range(rng.integers(1, 6)):
            day = pd.Timestamp("2025-01-01", tz=UTC) + pd.Timedelta(days=int(rng.integers(0, 55)))
            rows.append((f"x{k}", f"c{c:02d}", str(day), "purchase", 10.0))
            k += 1
    rows.append((f"x{k}", "prospect", "2025-02-01", "web_visit", 3.0))
    folder = write_log(tmp_path / "cell", rows)
    ids = pd.Index(["prospect", "c00", "c01", "c02"])
    p, facts = bt.bgnbd_probability(folder / "events.parquet", params_h(28), CUT, ids, 28)
    assert p[0] == 0.0
    assert ((p[1:] > 0) & (p[1:] < 1)).all()
    # Fitted on all 60 buyers, read for the 3 judged ones.
    assert (facts["customers"], facts["judged_customers"]) == (60, 3)
    assert set(facts["params"]) == {"r", "alpha", "a", "b"}


def test_churn_is_no_purchase_only_on_cdnow_like_rules():
    assert bt.churn_is_no_purchase(load_params(profile="cdnow"))
    assert not bt.churn_is_no_purchase(load_params())


# ----------------------------------------------------------------------------- metrics


def test_weighted_metrics_equal_sklearn_with_weights_and_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    score = np.round(rng.normal(size=400) + y, 1)  # many ties
    w = rng.integers(0, 4, 400).astype(float)
    m = bt.weighted_ranking_metrics(y, score, np.vstack([w, np.ones(400)]))
    assert m["roc_auc"][0] == pytest.approx(roc_auc_score(y, score, sample_weight=w), abs=1e-12)
    assert m["pr_auc"][0] == pytest.approx(
        average_precision_score(y, score, sample_weight=w), abs=1e-12
    )
    assert m["roc_auc"][1] == pytest.approx(roc_auc_score(y, score), abs=1e-12)


def test_top_decile_shares_a_tied_boundary_group_pro_rata():
    # 20 contacts: top 10 % = 2. The best score is a positive; the next 4 tie, one of
    # them positive: one of the 4 places goes to the top, half... 1 slot x 1/4 positive.
    y = np.array([1, 1, 0, 0, 0] + [0] * 15)
    score = np.array([9.0, 5.0, 5.0, 5.0, 5.0] + [0.0] * 15)
    got = bt.ranking_point(y, score)["precision_top_decile"]
    assert got == pytest.approx((1 + 1 * 0.25) / 2)
    # Without ties it is the plain share of positives in the top 2.
    assert bt.ranking_point(y, np.arange(20.0)[::-1])["precision_top_decile"] == 1.0


def test_perfect_scores_give_auc_1_with_interval_1_1():
    y = np.array([0, 0, 0, 1, 1, 0, 1, 0, 0, 1] * 5)
    r = bt.compare(y, y * 0.9 + 0.05, {"noise": np.arange(len(y), dtype=float)}, n_boot=300)
    champ = r["methods"]["champion"]["roc_auc"]
    assert (champ["value"], champ["lo"], champ["hi"]) == (1.0, 1.0, 1.0)
    assert r["methods"]["champion"]["pr_auc"]["lo"] == 1.0


def test_paired_difference_has_the_sign_of_a_hand_built_case():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    good = y + rng.normal(0, 0.3, 300)  # ranks well
    bad = rng.normal(0, 1, 300)  # random
    win = bt.compare(y, good, {"random": bad}, n_boot=400, seed=2)
    assert win["verdict"] == "win"
    assert win["difference"]["roc_auc"]["lo"] > 0
    assert win["difference"]["roc_auc"]["value"] == pytest.approx(
        roc_auc_score(y, good) - roc_auc_score(y, bad)
    )
    loss = bt.compare(y, bad, {"good": good, "random": rng.normal(size=300)}, n_boot=400)
    assert loss["best_baseline"] == "good"
    assert loss["verdict"] == "loss" and loss["difference"]["roc_auc"]["hi"] < 0
    # The same scores as the baseline: every paired resample differs by exactly 0.
    tie = bt.compare(y, good, {"same": good.copy()}, n_boot=200)
    assert tie["verdict"] == "tie"
    assert (tie["difference"]["roc_auc"]["lo"], tie["difference"]["roc_auc"]["hi"]) == (0, 0)


def test_bootstrap_is_paired_and_seeded():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 200)
    s1, s2 = y + rng.normal(0, 1, 200), y + rng.normal(0, 1, 200)
    a = bt.compare(y, s1, {"b": s2}, n_boot=300, seed=9)
    b = bt.compare(y, s1, {"b": s2}, n_boot=300, seed=9)
    assert a == b
    # Paired: the interval of the difference is narrower than the two intervals allow.
    d = a["difference"]["roc_auc"]
    m1, m2 = a["methods"]["champion"]["roc_auc"], a["methods"]["b"]["roc_auc"]
    assert d["hi"] - d["lo"] < (m1["hi"] - m1["lo"]) + (m2["hi"] - m2["lo"])


def test_compare_refuses_a_single_class_and_nan_scores():
    with pytest.raises(ValueError, match="a single class"):
        bt.compare(np.ones(10), np.arange(10.0), {"b": np.arange(10.0)})
    with pytest.raises(ValueError, match="score: 1 NaN value"):
        bt.compare(np.array([0, 1, 0, 1]), np.array([0.1, np.nan, 0.2, 0.3]), {"b": np.ones(4)})


@pytest.mark.parametrize(
    ("lo", "hi", "want"),
    [(0.01, 0.05, "win"), (-0.05, -0.001, "loss"), (-0.01, 0.02, "tie"), (0.0, 0.02, "tie")],
)
def test_verdict_is_a_tie_when_the_interval_contains_zero(lo, hi, want):
    assert bt.verdict(lo, hi) == want


# -------------------------------------------------------------- summary, table, cache


def _model_doc(verdict: str, diff: float, positives: int = 200) -> dict:
    ci = {"value": diff, "lo": diff - 0.01, "hi": diff + 0.01}
    auc = {"value": 0.7, "lo": 0.68, "hi": 0.72}
    return {
        "status": "ok",
        "contacts": 1000,
        "positives": positives,
        "positive_rate": positives / 1000,
        "champion": {"kind": "lightgbm"},
        "methods": {
            "champion": {"roc_auc": auc},
            "recency": {"roc_auc": {**auc, "value": 0.7 - diff}},
        },
        "best_baseline": "recency",
        "difference": {"roc_auc": ci, "pr_auc": ci, "precision_top_decile": ci},
        "verdict": verdict,
    }


def _result(docs: list[dict], skipped=()) -> bt.BacktestResult:
    log = bt.FullLog("demo", Path("e"), Path("c"), CUT, CUT, CUT + pd.Timedelta(days=99), 10, 5, {})
    return bt.BacktestResult("demo", log, {}, docs, list(skipped), 1.0)


def test_summary_counts_wins_ties_losses_and_cells_without_a_model():
    docs = [
        {
            "cut": "2025-03-01",
            "horizon_days": 30,
            "status": "ok",
            "models": {"churn": _model_doc("win", 0.05), "appetence": _model_doc("loss", -0.03)},
        },
        {
            "cut": "2025-03-29",
            "horizon_days": 30,
            "status": "ok",
            "models": {"churn": _model_doc("tie", 0.0), "appetence": _model_doc("loss", -0.05)},
        },
        {
            "cut": "2025-04-26",
            "horizon_days": 30,
            "status": "failed",
            "step": "train",
            "error": "error: churn: too few as-of times",
        },
    ]
    skipped = [bt.Skipped(bt.Cell(CUT, 300), "label window ends ...")]
    s = bt.summary(_result(docs, skipped))
    assert (s["win"], s["tie"], s["loss"], s["compared"]) == (1, 1, 2, 4)
    assert s["mean_difference"] == pytest.approx((0.05 - 0.03 + 0.0 - 0.05) / 4)
    assert s["by_model"]["appetence"] == {
        "win": 0,
        "tie": 0,
        "loss": 2,
        "mean_difference": pytest.approx(-0.04),
        "compared": 2,
    }
    assert s["failed_cells"] == 1 and s["skipped_cells"] == 1
    rows = bt.table_rows(_result(docs))
    assert len(rows) == 5
    assert rows[0].difference == "+0.050 [+0.040, +0.060]" and rows[0].verdict == "win"
    assert rows[-1].verdict.startswith("failed at train: error: churn: too few")
    md = bt.report_markdown(_result(docs, skipped))
    assert "**1 wins, 1 ties, 2 losses**" in md
    assert "Skipped (demo): 2025-03-01 + 300 d (label window ends ...)" in md


class FakePipeline:
    """Stands in for the engage subprocesses: records calls, can fail a step."""

    def __init__(self, fail: dict | None = None):
        self.calls: list[str] = []
        self.fail = fail or {}

    def __call__(self, cell, log, cell_dir, layers, params, export_format, on_step=None):
        self.calls.append(cell.key)
        data_dir = Path(cell_dir) / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        code = self.fail.get(cell.key, 0)
        cmd = bt.Command("train", ["train"], returncode=code, error="error: boom" if code else None)
        return bt.PipelineRun(cell, data_dir, [cmd], exported_rows=3, seconds=0.1)


@pytest.fixture
def fakes(monkeypatch):
    judged: list[tuple[str, int]] = []

    def fake_evaluate(cell, log, data_dir, params, n_boot, seed):
        judged.append((cell.key, n_boot))
        return {"models": {}, "scored_contacts": 3}

    monkeypatch.setattr(bt, "evaluate_cell", fake_evaluate)
    return judged


def test_finished_cells_are_cached_and_skipped_on_rerun(tmp_path, log, monkeypatch, fakes):
    cells = [bt.Cell(CUT, 10), bt.Cell(CUT - pd.Timedelta(days=7), 10)]
    pipe = FakePipeline()
    monkeypatch.setattr(bt, "run_pipeline", pipe)
    first = bt.run_backtest(log, cells, tmp_path / "bt", bt.Layers(), n_boot=100)
    assert sorted(pipe.calls) == sorted(c.key for c in cells) and len(fakes) == 2
    assert first.computed == 2 and [d["status"] for d in first.cells] == ["ok", "ok"]
    assert [d["cut"][:10] for d in first.cells] == ["2025-02-22", "2025-03-01"]  # grid order
    cached = json.loads((tmp_path / "bt" / "results" / f"{cells[0].key}.json").read_text())
    assert cached["status"] == "ok" and cached["setup"]["n_boot"] == 100

    again = bt.run_backtest(log, cells, tmp_path / "bt", bt.Layers(), n_boot=100)
    assert len(pipe.calls) == 2 and len(fakes) == 2  # nothing ran
    assert again.cached == 2 and again.cells == first.cells

    # Another bootstrap count: judged again from the stored pipelines, not rerun.
    third = bt.run_backtest(log, cells, tmp_path / "bt", bt.Layers(), n_boot=200)
    assert len(pipe.calls) == 2 and fakes[-2:] == [(c.key, 200) for c in sorted(cells)]
    assert third.reevaluated == 2

    # Other layers: the pipelines rerun; --fresh reruns everything.
    bt.run_backtest(
        log, cells[:1], tmp_path / "bt", bt.Layers(sets=("training.seed=7",)), n_boot=200
    )
    assert len(pipe.calls) == 3
    bt.run_backtest(log, cells, tmp_path / "bt", bt.Layers(), n_boot=200, fresh=True)
    assert len(pipe.calls) == 5


def test_a_failed_command_is_cached_but_a_killed_one_is_not(tmp_path, log, monkeypatch, fakes):
    failed, killed = bt.Cell(CUT, 10), bt.Cell(CUT - pd.Timedelta(days=7), 10)
    pipe = FakePipeline(fail={failed.key: 1, killed.key: -9})
    monkeypatch.setattr(bt, "run_pipeline", pipe)
    out = bt.run_backtest(log, [failed, killed], tmp_path / "bt", bt.Layers(), n_boot=100)
    by_cut = {d["cut"][:10]: d for d in out.cells}
    assert by_cut["2025-03-01"]["status"] == "failed"
    assert by_cut["2025-03-01"]["error"] == "error: boom" and fakes == []
    assert bt.result_path(tmp_path / "bt", failed).is_file()
    assert not bt.result_path(tmp_path / "bt", killed).is_file()
    bt.run_backtest(log, [failed, killed], tmp_path / "bt", bt.Layers(), n_boot=100)
    assert pipe.calls.count(failed.key) == 1 and pipe.calls.count(killed.key) == 2


def test_an_evaluation_error_is_reported_and_never_cached(tmp_path, log, monkeypatch):
    from training.dataset import LeakageError

    def leaky(*_a, **_k):
        raise LeakageError("event_time: 2 stored events at or after the cut")

    monkeypatch.setattr(bt, "run_pipeline", FakePipeline())
    monkeypatch.setattr(bt, "evaluate_cell", leaky)
    cell = bt.Cell(CUT, 10)
    out = bt.run_backtest(log, [cell], tmp_path / "bt", bt.Layers(), n_boot=100)
    assert out.cells[0]["status"] == "error" and out.cells[0]["step"] == "evaluate"
    assert "LeakageError: event_time: 2 stored events" in out.cells[0]["error"]
    assert not bt.result_path(tmp_path / "bt", cell).exists()


def test_run_backtest_validates_its_arguments(tmp_path, log):
    with pytest.raises(bt.BacktestError, match="jobs must be at least 1, got 0"):
        bt.run_backtest(log, [], tmp_path, bt.Layers(), jobs=0)


# ------------------------------------------------------------------------------- CLI


def test_cli_refuses_bad_options_with_one_line_errors(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    base = ["bench", "backtest", "--folder", str(tmp_path / "bt")]
    cases = [
        (base + ["--dataset", "nope"], "error: --dataset must be one of cdnow, demo, got 'nope'"),
        (base + ["--dataset", "demo", "--export", "xls"], "error: --export must be one of"),
        (
            ["--profile", "scale", *base, "--dataset", "cdnow"],
            "error: the cdnow backtest runs with --profile cdnow, got --profile scale",
        ),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert message in " ".join(result.output.split())
        assert "Traceback" not in result.output


def test_the_evaluation_reads_the_parameters_the_cli_calls_get():
    sets = ("simulate.days=240",)
    assert bt.Layers(sets=sets).params(30) == load_params(
        overrides=(*sets, "labels.horizon_days=30")
    )
    assert bt.Layers(profile="cdnow").params(28).labels.horizon_days == 28


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_crash_of_the_backtest_itself_is_reported_not_cached(tmp_path, log, monkeypatch, jobs):
    def crash(cell, *_a, **_k):
        raise OSError(f"disk full while exporting {cell.key}")

    monkeypatch.setattr(bt, "run_pipeline", crash)
    cells = [bt.Cell(CUT, 10), bt.Cell(CUT - pd.Timedelta(days=7), 10)]
    out = bt.run_backtest(log, cells, tmp_path / "bt", bt.Layers(), n_boot=100, jobs=jobs)
    assert [d["status"] for d in out.cells] == ["error", "error"]
    assert out.cells[0]["error"] == "OSError: disk full while exporting cut=2025-02-22_h=10d"
    assert not (tmp_path / "bt" / "results").exists()


def test_the_report_says_when_churn_only_mirrors_appetence():
    def cell(churn_pos: int) -> dict:
        return {
            "cut": "2025-03-01",
            "horizon_days": 28,
            "status": "ok",
            "models": {
                "churn": _model_doc("loss", -0.02, positives=churn_pos),
                "appetence": _model_doc("loss", -0.02, positives=100),
            },
        }

    assert "Churn mirrors appetence here" in bt.report_markdown(_result([cell(900)]))
    assert "mirrors" not in bt.report_markdown(_result([cell(900), cell(850)]))
