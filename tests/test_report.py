"""KPI formulas (hand-computed, docs/DOMAIN.md#kpi-formulas) and the HTML report of a run."""

from __future__ import annotations

import math

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


def test_report_has_every_section_and_no_external_resources(pipeline, tmp_path):
    from features.snapshots import list_snapshots
    from serving.scoring import score

    for snap in list_snapshots(pipeline.paths.features_dir)[-2:]:
        score(pipeline.paths, pipeline.params, as_of=snap.as_of)
    path = build_report(pipeline.paths, pipeline.params, tmp_path / "r.html")
    text = path.read_text()
    for title in SECTIONS:
        assert f">{title}</h2>" in text
    assert "data:image/png;base64," in text
    assert "http://" not in text and "https://" not in text  # opens offline
    assert "Stage changes" in text  # movement between the last two runs
    assert "test_model_roc_auc" not in text and "LightGBM (calibrated)" in text
