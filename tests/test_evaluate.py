"""Model-quality metrics of training/evaluate.py against answers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.evaluate import (
    expected_calibration_error,
    probability_metrics,
    ranking_metrics,
    top_decile,
)

# --- expected calibration error ------------------------------------------------------
# 10 equal-width bins [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0]; the last one is closed.


def test_ece_by_hand_with_empty_bins_and_p_equal_to_one():
    y = [0, 0, 1, 1, 0, 1]
    p = [0.05, 0.12, 0.18, 0.9, 1.0, 0.95]
    # bin 0: {0.05 -> 0}              rate 0,    mean p 0.05, gap 0.05, 1 row
    # bin 1: {0.12 -> 0, 0.18 -> 1}   rate 1/2,  mean p 0.15, gap 0.35, 2 rows
    # bins 2-8: empty, they add nothing (no NaN)
    # bin 9: {0.9 -> 1, 1.0 -> 0, 0.95 -> 1}: rate 2/3, mean p 0.95, gap 0.95 - 2/3, 3 rows
    #        (p = 1.0 falls in the last bin; dropped, bin 9 would give 2 * 0.075 instead)
    # ECE = (1 * 0.05 + 2 * 0.35 + 3 * (0.95 - 2/3)) / 6 = (0.05 + 0.70 + 0.85) / 6 = 4/15
    assert expected_calibration_error(y, p) == pytest.approx(4 / 15, abs=1e-12)


def test_ece_p_equal_to_one_is_counted_in_the_last_bin():
    # One row at p = 1.0 with y = 0: a gap of 1 over 1 row. Were the row dropped (an
    # eleventh bin), the ECE would be 0; were it put anywhere else, the gap would differ.
    assert expected_calibration_error([0], [1.0]) == pytest.approx(1.0)
    # With y = 1 it is perfectly calibrated.
    assert expected_calibration_error([1], [1.0]) == pytest.approx(0.0, abs=1e-12)


def test_ece_bin_edges_belong_to_the_bin_they_open():
    # 0.2 opens bin 2: it is pooled with 0.25 (rate 1/2, mean 0.225, gap 0.275, 2 rows),
    # not with 0.15 (bin 1: rate 0, mean 0.15, gap 0.15, 1 row). ECE = (0.55 + 0.15) / 3.
    y, p = [1, 0, 0], [0.2, 0.25, 0.15]
    assert expected_calibration_error(y, p) == pytest.approx(0.7 / 3, abs=1e-12)


def test_ece_with_two_bins():
    # bins [0, 0.5) and [0.5, 1.0]: {0.2 -> 0} gap 0.2; {0.5, 0.5, 1.0 -> 0, 1, 1}:
    # rate 2/3, mean p 2/3, gap 0. ECE = 0.2 * 1 / 4 = 0.05.
    assert expected_calibration_error([0, 0, 1, 1], [0.2, 0.5, 0.5, 1.0], bins=2) == (
        pytest.approx(0.05, abs=1e-12)
    )


def test_ece_is_zero_when_perfectly_calibrated():
    # Each bin's observed rate equals its mean prediction: 0.25 -> 1 of 4, 0.75 -> 3 of 4,
    # 0.0 -> never, 1.0 -> always.
    y = [1, 0, 0, 0] + [1, 1, 1, 0] + [0, 0] + [1]
    p = [0.25] * 4 + [0.75] * 4 + [0.0, 0.0] + [1.0]
    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)


def test_ece_is_row_weighted_not_a_mean_over_bins():
    # bin 0: 9 rows at 0.05, all 0 (gap 0.05); bin 9: 1 row at 0.95, 0 (gap 0.95).
    # Row-weighted: (9 * 0.05 + 0.95) / 10 = 0.14; a plain mean over bins would give 0.5.
    y, p = [0] * 10, [0.05] * 9 + [0.95]
    assert expected_calibration_error(y, p) == pytest.approx(0.14, abs=1e-12)


# --- precision and lift in the top decile ---------------------------------------------


def test_top_decile_by_hand_with_a_tie_resolved_in_row_order():
    # n = 12 -> k = ceil(1.2) = 2 rows. Highest score 0.9 (row 1, positive); the second
    # place is a tie at 0.7 between row 2 (negative) and row 3 (positive): the sort is
    # stable, so the earlier row 2 is taken. Precision = 1/2; base rate = 3/12 = 1/4;
    # lift = (1/2) / (1/4) = 2. (Taking row 3 instead would give precision 1, lift 4.)
    score = [0.5, 0.9, 0.7, 0.7, 0.1, 0.2, 0.3, 0.4, 0.6, 0.05, 0.15, 0.25]
    y = [0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    precision, lift = top_decile(y, score)
    assert precision == pytest.approx(0.5)
    assert lift == pytest.approx(2.0)
    # The same rows in the opposite order: now the positive comes first in the tie.
    precision, lift = top_decile(y[::-1], score[::-1])
    assert precision == pytest.approx(1.0) and lift == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("n", "k"),
    [(1, 1), (5, 1), (9, 1), (10, 1), (11, 2), (19, 2), (20, 2), (21, 3), (30, 3), (70, 7)],
)
def test_top_decile_takes_ceil_of_a_tenth_of_the_rows(n, k):
    # Scores n, n-1, ..., 1, so row i is the (i+1)-th best. Exactly k = ceil(n / 10) rows
    # (at least 1) are taken: with the k-th row the only positive, the precision is 1/k
    # (0 if fewer rows were taken, 1/(k+1) if one more) and the lift (1/k) / (1/n) = n/k.
    score = np.arange(n, 0, -1, dtype=float)
    y = np.zeros(n)
    y[k - 1] = 1
    precision, lift = top_decile(y, score)
    assert precision == pytest.approx(1 / k)
    assert lift == pytest.approx(n / k)
    if n > k:  # the row just after the top k is never counted
        y = np.zeros(n)
        y[k] = 1
        assert top_decile(y, score)[0] == pytest.approx(0.0)


def test_top_decile_base_rate_zero_gives_nan_lift():
    precision, lift = top_decile([0, 0, 0, 0], [0.4, 0.3, 0.2, 0.1])
    assert precision == 0.0
    assert math.isnan(lift)


def test_top_decile_lift_below_one_when_the_ranking_is_inverted():
    # n = 10 -> k = 1: the top-scored row is negative, base rate 0.5 -> precision 0, lift 0.
    y = [0] + [1] * 5 + [0] * 4
    score = list(range(10, 0, -1))
    assert top_decile(y, score) == (0.0, 0.0)


# --- ranking metrics -----------------------------------------------------------------


def test_ranking_metrics_by_hand_on_four_rows():
    # y = 0, 0, 1, 1 with scores 0.1, 0.4, 0.35, 0.8.
    # ROC-AUC = share of (positive, negative) pairs ranked right:
    #   (0.35, 0.1) right, (0.35, 0.4) wrong, (0.8, 0.1) right, (0.8, 0.4) right -> 3/4.
    # PR-AUC (average precision): by decreasing score the rows are + - + -; the positives
    #   sit at precision 1/1 (recall 1/2) and 2/3 (recall 1), AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    # Top decile: k = ceil(0.4) = 1, the 0.8 row, positive: precision 1, lift 1 / 0.5 = 2.
    m = ranking_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["pr_auc"] == pytest.approx(5 / 6)
    assert m["precision_top_decile"] == pytest.approx(1.0)
    assert m["lift_top_decile"] == pytest.approx(2.0)


def test_ranking_metrics_roc_auc_counts_a_tie_as_half():
    # (0.4 positive, 0.4 negative) is a tie: 1/2; the other three pairs are right.
    # ROC-AUC = (3 + 0.5) / 4 = 0.875.
    m = ranking_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.4, 0.8]))
    assert m["roc_auc"] == pytest.approx(0.875)


def test_ranking_metrics_accept_scores_that_are_not_probabilities():
    # Only the order matters: a monotone transform (here x -> 10 x - 3) changes nothing.
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert ranking_metrics(y, 10 * s - 3) == pytest.approx(ranking_metrics(y, s))


# --- probability metrics -------------------------------------------------------------


def test_probability_metrics_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    m = probability_metrics(y, p)
    # Brier = mean squared error = (0.01 + 0.16 + 0.4225 + 0.04) / 4.
    assert m["brier"] == pytest.approx(0.6325 / 4)
    # Log loss = -mean(log(1 - p) for negatives, log(p) for positives).
    expected = -(math.log(0.9) + math.log(0.6) + math.log(0.35) + math.log(0.8)) / 4
    assert m["log_loss"] == pytest.approx(expected)
    # ECE, one row per bin (bins 1, 4, 3, 8): gaps 0.1, 0.4, 0.65, 0.2 -> 1.35 / 4.
    assert m["ece"] == pytest.approx(1.35 / 4)
    assert m["roc_auc"] == pytest.approx(0.75)
    # The bins argument reaches the ECE: 2 bins -> {0.1, 0.4, 0.35} rate 1/3, mean 0.85/3,
    # gap 0.15/3 over 3 rows; {0.8} gap 0.2. ECE = (0.15 + 0.2) / 4.
    assert probability_metrics(y, p, bins=2)["ece"] == pytest.approx(0.35 / 4)


@pytest.mark.parametrize("bad", [1.2, -0.1, float("nan")])
def test_probability_metrics_refuse_values_that_are_not_probabilities(bad):
    with pytest.raises(ValueError, match="probabilities"):
        probability_metrics(np.array([0, 1]), np.array([0.5, bad]))


def test_probability_metrics_log_loss_is_finite_at_zero_and_one():
    # A confident miss (p = 0 for a positive) is clipped to 1e-15, not infinite.
    m = probability_metrics(np.array([1, 0]), np.array([0.0, 0.0]))
    assert math.isfinite(m["log_loss"])
    assert m["log_loss"] == pytest.approx(-math.log(1e-15) / 2, rel=1e-6)
