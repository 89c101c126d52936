"""Scoring functions against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autointerp.label import scoring


def ex(*pairs):
    return [(np.asarray(t, float), np.asarray(p, float)) for t, p in pairs]


def test_pearson_by_hand():
    # x = 1,2,3 ; y = 1,3,2: cov = (-1*-1 + 0*1 + 1*0)/3 = 1/3, var x = var y = 2/3 -> r = 0.5
    assert scoring.pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert scoring.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert math.isnan(scoring.pearson([1, 1, 1], [1, 2, 3]))


def test_pooled_correlation_pools_tokens_across_examples():
    examples = ex(([1, 2], [1, 3]), ([3], [2]))
    assert scoring.pooled_correlation(examples) == pytest.approx(0.5)


def test_calibration_and_explained_variance_by_hand():
    cal = scoring.fit_calibration(ex(([2, 4, 6], [1, 2, 3])))  # true = 2 * pred + 0
    assert cal == pytest.approx((2.0, 0.0))
    # true 2,4,6 ; calibrated pred 2,4,8 -> residuals 0,0,-2: mse 4/3; var(true) = 8/3 -> EV = 0.5
    assert scoring.explained_variance(ex(([2, 4, 6], [1, 2, 4])), cal) == pytest.approx(0.5)
    # a constant prediction calibrates to the mean: EV 0
    const = scoring.fit_calibration(ex(([1, 2, 3], [5, 5, 5])))
    assert const == pytest.approx((0.0, 2.0))
    assert scoring.explained_variance(ex(([1, 2, 3], [5, 5, 5])), const) == pytest.approx(0.0)


def test_balanced_accuracy_by_hand():
    labels = np.array([1, 1, 1, 1, 0, 0], bool)
    preds = np.array([1, 1, 1, 0, 1, 0], bool)
    # TPR 3/4, TNR 1/2 -> 0.625
    assert scoring.balanced_accuracy(labels, preds) == pytest.approx(0.625)
    assert math.isnan(scoring.balanced_accuracy(np.ones(3, bool), np.ones(3, bool)))


def test_auc_by_hand():
    # positives 0.9, 0.4 ; negatives 0.4, 0.1: pairs (0.9>0.4, 0.9>0.1, 0.4=0.4 half, 0.4>0.1) -> 3.5/4
    assert scoring.auc([1, 1, 0, 0], [0.9, 0.4, 0.4, 0.1]) == pytest.approx(0.875)


def test_bootstrap_ci_contains_the_value_and_narrows_with_more_examples():
    rng = np.random.default_rng(0)

    def make(n):
        out = []
        for _ in range(n):
            t = rng.normal(size=16)
            out.append((t, t + rng.normal(scale=1.0, size=16)))
        return out

    small = scoring.correlation_score("correlation_top_random", make(10), n_boot=300)
    large = scoring.correlation_score("correlation_top_random", make(200), n_boot=300)
    for s in (small, large):
        assert s.ci_low <= s.value <= s.ci_high
    assert (large.ci_high - large.ci_low) < (small.ci_high - small.ci_low)
    assert large.value == pytest.approx(1 / math.sqrt(2), abs=0.05)


def test_scores_are_seeded():
    examples = ex(([1, 2, 3], [1, 3, 2]), ([0, 1, 0], [0, 1, 1]), ([2, 2, 5], [1, 2, 6]))
    a = scoring.correlation_score("c", examples, seed=1)
    assert a == scoring.correlation_score("c", examples, seed=1)


def test_vectorised_bootstrap_equals_the_plain_resampling_loop():
    rng = np.random.default_rng(3)
    examples = [(rng.normal(size=8), rng.normal(size=8)) for _ in range(25)]
    fast = scoring.correlation_score("c", examples, n_boot=200, seed=5)
    slow = scoring.bootstrap(lambda idx: scoring.pooled_correlation([examples[i] for i in idx]), 25, 200, 5)
    assert (fast.ci_low, fast.ci_high) == pytest.approx(slow)
    cal = [(rng.normal(size=8), rng.normal(size=8)) for _ in range(5)]
    a_b = scoring.fit_calibration(cal)
    fast = scoring.explained_variance_score(cal, examples, n_boot=200, seed=5)
    slow = scoring.bootstrap(lambda idx: scoring.explained_variance([examples[i] for i in idx], a_b), 25, 200, 5)
    assert (fast.ci_low, fast.ci_high) == pytest.approx(slow)


def test_vectorised_accuracy_and_auc_bootstraps_equal_the_plain_loop():
    rng = np.random.default_rng(4)
    y = rng.random(30) < 0.5
    pred = rng.random(30) < 0.6
    s = rng.random(30)
    fast = scoring.accuracy_score("detection", y, pred, n_boot=300, seed=2)
    slow = scoring.bootstrap(lambda idx: scoring.balanced_accuracy(y[idx], pred[idx]), 30, 300, 2)
    assert (fast.ci_low, fast.ci_high) == pytest.approx(slow)
    fast = scoring.auc_score("detection_auc", y, s, n_boot=300, seed=2)
    slow = scoring.bootstrap(lambda idx: scoring.auc(y[idx], s[idx]), 30, 300, 2)
    assert (fast.ci_low, fast.ci_high) == pytest.approx(slow)
