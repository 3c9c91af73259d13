"""Threshold helper: per-snapshot volumes, precision / recall, proposals, MLflow artifact."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from serving.thresholds import load_held_out, propose, threshold_table

T1, T2 = pd.Timestamp("2025-03-04", tz="UTC"), pd.Timestamp("2025-03-11", tz="UTC")


def held_out() -> pd.DataFrame:
    # Two held-out snapshots of four contacts; 4 positives in all.
    return pd.DataFrame(
        {
            "customer_id": list("ABCD") * 2,
            "event_timestamp": [T1] * 4 + [T2] * 4,
            "label": [1, 0, 1, 0, 1, 1, 0, 0],
            "p": [0.9, 0.7, 0.4, 0.2, 0.8, 0.6, 0.3, 0.1],
        }
    )


def test_counts_are_scaled_to_one_snapshot():
    table = threshold_table(held_out(), [0.4, 0.5, 0.85, 1.0]).set_index("threshold")
    # p >= 0.4 (inclusive): 3 contacts at T1 (2 positives), 2 at T2 (2 positives).
    assert table.loc[0.4].to_dict() == pytest.approx(
        {"contacts": 2.5, "tp": 2.0, "fp": 0.5, "precision": 0.8, "recall": 1.0}
    )
    assert table.loc[0.5].to_dict() == pytest.approx(
        {"contacts": 2.0, "tp": 1.5, "fp": 0.5, "precision": 0.75, "recall": 0.75}
    )
    assert table.loc[0.85].to_dict() == pytest.approx(
        {"contacts": 0.5, "tp": 0.5, "fp": 0.0, "precision": 1.0, "recall": 0.25}
    )
    assert table.loc[1.0, "contacts"] == 0 and np.isnan(table.loc[1.0, "precision"])
    last = threshold_table(held_out(), [0.5], per="last").iloc[0]
    assert (last["contacts"], last["tp"], last["precision"], last["recall"]) == (2, 2, 1.0, 1.0)


@pytest.mark.parametrize(
    ("capacity", "precision", "threshold", "contacts"),
    [
        (2, None, 0.6, 2.0),  # the lowest threshold with at most 2 contacts per snapshot
        (3.4, None, 0.3, 3.0),
        (0, None, 1.0, 0.0),
        (None, 0.8, 0.4, 2.5),  # precision 4/5 first reached at 0.4
        (None, 1.0, 0.8, 1.0),
        (1, 0.9, 0.8, 1.0),  # both constraints
    ],
)
def test_proposals(capacity, precision, threshold, contacts):
    got = propose(held_out(), capacity=capacity, target_precision=precision)
    assert got.threshold == pytest.approx(threshold)
    assert got.contacts == pytest.approx(contacts)
    assert "lowest threshold with" in got.reason


def test_unreachable_targets_and_bad_arguments():
    negatives = held_out().assign(label=0)
    none = propose(negatives, target_precision=0.5)
    assert none.threshold is None and "no threshold reaches precision >= 50%" in none.reason
    with pytest.raises(ValueError, match="give a capacity and/or a target precision"):
        propose(held_out())
    with pytest.raises(ValueError, match=r"target precision must be in \(0, 1\]"):
        propose(held_out(), target_precision=1.5)
    with pytest.raises(ValueError, match="per must be 'mean' or 'last'"):
        threshold_table(held_out(), [0.5], per="median")
    with pytest.raises(ValueError, match="held-out predictions are empty"):
        threshold_table(held_out().iloc[:0], [0.5])


@pytest.mark.slow
def test_held_out_predictions_come_from_the_champion_run(pipeline):
    churn, version = load_held_out(pipeline.paths, "churn")
    result = pipeline.results["churn"]
    assert version == result.version
    assert len(churn) == len(result.test)
    # The held-out fit's predictions (the served model is its refit: it has seen them).
    assert result.chosen == "model"
    np.testing.assert_allclose(
        np.sort(churn["p"]), np.sort(result.lightgbm.predict_proba(result.test))
    )
    np.testing.assert_allclose(churn["p_model"], churn["p"])
    # Appetence: only prospects can land in the Purchase quadrant.
    appetence, _ = load_held_out(pipeline.paths, "appetence")
    assert 0 < len(appetence) < len(pipeline.results["appetence"].test)
    with pytest.raises(ValueError, match="model must be one of"):
        load_held_out(pipeline.paths, "ltv")


@pytest.mark.slow
def test_cli_thresholds(pipeline):
    from cli.main import app

    runner = CliRunner()
    out = runner.invoke(app, ["thresholds", "--model", "churn", "--capacity", "50"])
    assert out.exit_code == 0, out.output
    assert "Exit quadrant" in out.output and "(current)" in out.output
    assert "proposal: index.tau_churn" in out.output
    out = runner.invoke(app, ["thresholds", "--model", "appetence", "--target-precision", "0.99"])
    assert out.exit_code == 0 and "Purchase quadrant" in out.output
    out = runner.invoke(app, ["thresholds", "--model", "ltv"])
    assert out.exit_code == 1 and "--model must be one of churn, appetence" in out.output
