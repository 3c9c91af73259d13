"""The demo part of the hazard evaluation end to end: simulate, features, Feast, both models.

About a minute of pipeline on a small simulated log: outside `make test`'s budget, in the
heavy lane (`make test-reliability`); tests/test_hazard_evaluation.py covers the metrics
and tables on tiny frames in `make test`.
"""

from __future__ import annotations

import pytest

from engage.config import load_params
from evaluation import hazard as ev

pytestmark = [pytest.mark.slow, pytest.mark.reliability_heavy]


def test_run_demo_on_a_small_simulation(tmp_path):
    params = load_params(
        overrides=(
            "hazard.h_max_periods=4",
            "hazard.horizons_days=[7,28]",
            "hazard.primary_metric=roc_auc_28d",
            "training.valid_snapshots=2",
            "training.test_snapshots=2",
            "training.lightgbm.n_estimators=40",
        )
    )
    out = ev.run_demo(tmp_path, params, 600, 250, 7, 7, None, lambda _m: None)
    assert set(out["models"]) == {"appetence", "churn"}
    for model, r in out["models"].items():
        assert list(r["metrics"]) == [7, 28], model
        for ms in r["metrics"].values():
            for m in ("hazard", "fixed"):
                assert 0.5 < ms[m]["roc_auc"] <= 1, (model, m)
        assert 0.5 < r["survival"]["hazard"]["c_index"] <= 1
        assert r["survival"]["hazard"]["ibs"] < r["survival"]["population"]["ibs"]
    assert "counts" in out["models"]["appetence"] and "counts" not in out["models"]["churn"]
    text = ev.report_markdown(
        {
            "demo": out,
            "demo_params": params.hazard,
            "cdnow": None,
            "seconds": out["seconds"],
            "peak_rss_mb": 0.0,
        }
    )
    assert text.count("### demo ") == 2
