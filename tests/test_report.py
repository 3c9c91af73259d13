"""KPI formulas (hand-computed, docs/DOMAIN.md#kpi-formulas) and the HTML report of a run."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from reporting.kpis import churn_rate, ctr, monthly_kpis, nps, retention_rate
from reporting.report import SECTIONS, build_report


def test_kpi_formulas_match_the_domain_examples():
    assert retention_rate(start=10_000, end=12_000, acquired=5_000) == pytest.approx(70.0)
    assert churn_rate(start=1_000, lost=100) == pytest.approx(10.0)
    assert ctr(clicks=100, sent=1_000) == pytest.approx(10.0)
    answers = pd.Series([10] * 300 + [7] * 100 + [3] * 100)
    assert nps(answers) == pytest.approx(40.0)
    assert math.isnan(retention_rate(0, 5, 5)) and math.isnan(nps(pd.Series([], dtype=float)))


def test_monthly_kpis_on_a_tiny_log(tmp_path):
    from engage.config import load_params

    rows = [
        ("A", "2025-01-05", "purchase", 10.0),
        ("B", "2025-01-20", "purchase", 30.0),
        ("A", "2025-02-03", "purchase", 20.0),
        ("C", "2025-02-10", "purchase", 5.0),
        ("A", "2025-02-11", "email_sent", None),
        ("A", "2025-02-12", "email_click", None),
        ("B", "2025-02-15", "nps_response", 10.0),
        ("C", "2025-02-16", "nps_response", 2.0),
    ]
    df = pd.DataFrame(rows, columns=["customer_id", "event_time", "event_type", "value"])
    df["event_time"] = pd.to_datetime(df["event_time"], utc=True).astype("datetime64[us, UTC]")
    df.to_parquet(tmp_path / "e.parquet")
    params = load_params(overrides=("labels.active_within_days=20",))
    k = monthly_kpis(tmp_path / "e.parquet", params).set_index("month")
    # At 2025-02-01 only B bought within 20 days (A bought 27 days before).
    feb = k.loc["2025-02"]
    assert feb["customers_start"] == 1 and feb["acquired"] == 1  # C is new in February
    # At 2025-03-01 only C bought within 20 days (A's purchase is 26 days old).
    assert feb["customers_end"] == 1
    assert feb["lost"] == 1 and feb["churn_rate"] == pytest.approx(100.0)
    assert feb["retention_rate"] == pytest.approx((1 - 1) / 1 * 100)
    assert feb["ctr"] == pytest.approx(100.0) and feb["nps"] == pytest.approx(0.0)
    assert feb["avg_customer_value"] == pytest.approx(25 / 2)


def test_warm_up_months_have_no_rates(tmp_path):
    from engage.config import load_params

    rows = [
        ("A", "2025-01-05", "purchase", 10.0),
        ("A", "2025-02-01", "purchase", 10.0),
        ("B", "2025-02-20", "purchase", 10.0),
        ("B", "2025-03-20", "purchase", 10.0),
    ]
    df = pd.DataFrame(rows, columns=["customer_id", "event_time", "event_type", "value"])
    df["event_time"] = pd.to_datetime(df["event_time"], utc=True).astype("datetime64[us, UTC]")
    df.to_parquet(tmp_path / "e.parquet")
    # A 40-day active window: January and February start less than 40 days after the
    # first event (January 5), March (55 days after it) does not.
    params = load_params(overrides=("labels.active_within_days=40",))
    k = monthly_kpis(tmp_path / "e.parquet", params).set_index("month")
    assert k["warm_up"].tolist() == [True, True, False]
    assert k.loc[["2025-01", "2025-02"], ["retention_rate", "churn_rate"]].isna().all().all()
    # March: A (last bought Feb 1) lapses during it, B is still active: 1 of 2 lost.
    assert k.loc["2025-03", "churn_rate"] == pytest.approx(50.0)


def test_model_quality_in_plain_words_is_generic_over_methods():
    from reporting.quality import compare, methods

    metrics = {
        "test_model_precision_top_decile": 0.71,
        "test_model_roc_auc": 0.80,
        "test_recency_precision_top_decile": 0.52,
        "test_recency_roc_auc": 0.74,
        "test_logreg_precision_top_decile": 0.60,
        "test_logreg_roc_auc": 0.70,
        "test_bgnbd_roc_auc": 0.72,
        "train_rows": 1000.0,
    }
    assert list(methods(metrics)) == ["model", "bgnbd", "logreg", "recency"]
    got = compare("churn", metrics, {}, 30)
    # Without a best_baseline tag, the best other method by ROC-AUC is recency.
    assert got.sentence == (
        "Of the top 10 % of customers flagged by the model, 71 % went quiet within 30 days, "
        "against 52 % for recency alone (held-out weeks)."
    )
    tagged = compare("churn", metrics, {"best_baseline": "logreg"}, 30)
    assert "against 60 % for a logistic regression" in tagged.sentence
    served = compare("appetence", metrics, {"champion_kind": "recency"}, 30)
    assert served.sentence.startswith(
        "Of the top 10 % of contacts flagged by recency alone, 52 % bought"
    )
    assert "LightGBM did not beat it" in served.sentence
    assert (
        "no top-decile precision" in compare("churn", {"test_model_roc_auc": 0.8}, {}, 30).sentence
    )


@pytest.fixture(scope="module")
def scored(pipeline):
    """Three consecutive weekly runs of the small pipeline, each against the one before."""
    from features.snapshots import list_snapshots
    from serving.scoring import score

    return [
        score(pipeline.paths, pipeline.params, as_of=snap.as_of)
        for snap in list_snapshots(pipeline.paths.features_dir)[-3:]
    ]


def test_report_has_every_section_and_no_external_resources(pipeline, scored, tmp_path):
    path = build_report(pipeline.paths, pipeline.params, tmp_path / "r.html")
    text = path.read_text()
    for title in SECTIONS:
        assert f">{title}</h2>" in text
    assert "data:image/png;base64," in text
    assert "http://" not in text and "https://" not in text  # opens offline
    assert 'data-chart="stage-flow"' in text and 'data-chart="capacity"' in text
    assert "test_model_roc_auc" not in text and "LightGBM (calibrated)" in text
    assert "Of the top 10 % of customers flagged by" in text
    assert f" {pipeline.params.value.currency}" in text
    words = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert "n/a" not in words and "nan" not in words.lower().split()


def test_headline_numbers_equal_the_cli(pipeline, scored):
    """Calls, value at risk, their change and the Exit entries are the CLI's numbers."""
    import json

    from typer.testing import CliRunner

    from cli.main import app
    from reporting.headline import headline
    from serving.runs import find_run
    from serving.transitions import stage_transitions

    h = headline(pipeline.paths, pipeline.params)
    # The latest run and the one before it, as `engage transitions` pairs them (other
    # tests of the session may have rescored a snapshot).
    assert h.run.run_id == find_run(pipeline.paths).run_id
    assert h.previous.run_id == stage_transitions(pipeline.paths).from_run.run_id
    runner = CliRunner()

    def calls(*extra):
        out = runner.invoke(app, ["at-risk", "--call-list", "--format", "json", *extra])
        assert out.exit_code == 0, out.output
        contacts = json.loads(out.output)["contacts"]
        assert all(c["stage"] == "Exit" for c in contacts)
        assert not {c["segment"] for c in contacts} & {"Lost", "At risk"}
        return len(contacts), sum(c["value_at_risk"] for c in contacts)

    assert calls() == (h.to_call, pytest.approx(h.value_at_risk))
    assert calls("--run", h.previous.run_id) == (h.to_call_before, pytest.approx(h.value_before))
    out = runner.invoke(app, ["transitions", "--no-post"], terminal_width=200)
    assert out.exit_code == 0, out.output
    entered = out.output.split("entered: ", 1)[1].splitlines()[0]
    assert f"Exit {h.entered_exit:,}" in entered
    assert h.to_call <= pipeline.params.report.capacity
    html_text = build_report(pipeline.paths, pipeline.params).read_text()
    assert f'<div class="v">{h.to_call:,}</div>' in html_text


def test_report_in_headless_chromium(pipeline, scored, tmp_path):
    """The report as a person sees it: no console error, charts drawn, legends off the plots."""
    import io

    import numpy as np
    from PIL import Image

    from reporting.report import capacity_rows, pick_capacity
    from serving.thresholds import load_held_out
    from tests.chromium import Browser, chromium_path

    if chromium_path() is None:
        pytest.skip("chromium is not installed (make install-dev installs it with apt-get)")
    path = build_report(pipeline.paths, pipeline.params, tmp_path / "report.html")
    with Browser(width=1200) as page:
        page.open(path.as_uri())
        assert page.errors == []
        charts = page.js(
            """[...document.querySelectorAll('svg.chart')].map(svg => {
                 const box = r => r ? r.getBoundingClientRect() : null;
                 const p = box(svg.querySelector('g.plot'));
                 const l = box(svg.querySelector('g.legend'));
                 const marks = 'g.plot polyline, g.plot rect.bar, g.plot path.band';
                 return {name: svg.dataset.chart, w: p.width, h: p.height,
                   marks: svg.querySelectorAll(marks).length,
                   overlap: l ? !(l.bottom <= p.top || l.top >= p.bottom
                                  || l.right <= p.left || l.left >= p.right) : false};
               })"""
        )
        names = {c["name"] for c in charts}
        assert {"churn-distribution", "capacity", "precision", "stage-trend", "stage-flow",
                "lead-funnel", "kpi-retention", "kpi-ctr", "kpi-nps"} <= names  # fmt: skip
        for c in charts:
            assert c["w"] > 100 and c["h"] > 50 and c["marks"] > 0, c
            assert not c["overlap"], f"legend over the plot in {c['name']}"
        assert page.js("document.querySelectorAll('.card').length") == 4
        # The capacity slider: the script gives the same answer as the Python rule.
        rows = capacity_rows(load_held_out(pipeline.paths, "churn")[0])
        assert page.js("document.getElementById('capacity-out').textContent") == pick_capacity(
            rows, pipeline.params.report.capacity
        )
        for cap in (0, 3, 40, 10_000):
            got = page.js(
                f"(() => {{ const s = document.getElementById('capacity'); s.value = {cap};"
                " s.dispatchEvent(new Event('input'));"
                " return document.getElementById('capacity-out').textContent; })()"
            )
            assert got == pick_capacity(rows, min(cap, float(page.js(
                "document.getElementById('capacity').max"))))  # fmt: skip
        png = page.screenshot()
        assert page.errors == []
    (tmp_path / "report.png").write_bytes(png)
    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    assert image.shape[0] > 2000 and image.shape[1] == 1200
    assert (image < 200).mean() > 0.02 and image.std() > 20  # not a blank page
