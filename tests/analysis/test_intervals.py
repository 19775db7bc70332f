"""histlib.analysis.intervals: the group bootstrap covers the truth when patches of one group are correlated."""

from __future__ import annotations

import math

import numpy as np
import pytest

from histlib.analysis import intervals

# Logit model of a test split: G groups of M patches; a group's difficulty (SU) and its own difference between the
# two rows (SV) are shared by all its patches, each row's seeds shift the logit a little (SS); every image has one
# difficulty draw per row that all seeds of that row share (seeds agree on most images, as trained networks do).
SU, SV, SS, DELTA = 1.5, 2.0, 0.15, -0.3


def _expit(x):
    return 1 / (1 + np.exp(-x))


def _simulate(rng, n_groups, per_group, seeds):
    u = np.repeat(rng.normal(0, SU, n_groups), per_group)
    v = np.repeat(rng.normal(0, SV, n_groups), per_group)
    groups = np.repeat(np.arange(n_groups), per_group)
    y = groups % 2
    ua, ub = rng.random(len(y)), rng.random(len(y))
    a = np.stack([ua < _expit(1.0 + DELTA + u + v + rng.normal(0, SS)) for _ in range(seeds)])
    b = np.stack([ub < _expit(1.0 + u + rng.normal(0, SS)) for _ in range(seeds)])
    return a, b, y, groups


def test_group_bootstrap_covers_the_truth_where_the_patch_bootstrap_does_not():
    rng = np.random.default_rng(123)
    k = 1_000_000  # the truth: expected accuracy difference over groups, images and seeds
    u, v = rng.normal(0, SU, k), rng.normal(0, SV, k)
    truth = float(np.mean(_expit(1.0 + DELTA + u + v + rng.normal(0, SS, k)) - _expit(1.0 + u + rng.normal(0, SS, k))))
    reps, covered_group, covered_patch = 150, 0, 0
    for r in range(reps):
        a, b, y, groups = _simulate(np.random.default_rng(r), n_groups=20, per_group=20, seeds=3)
        by_group = intervals.paired_group_interval(a, b, y, groups, n_resamples=400, seed=r)
        by_patch = intervals.paired_group_interval(a, b, y, np.arange(len(y)), n_resamples=400, seed=r)
        assert by_group.n_groups == 20 and by_patch.n_groups == 400 and by_group.note == ""
        covered_group += by_group.low <= truth <= by_group.high
        covered_patch += by_patch.low <= truth <= by_patch.high
    # 150 replications: a coverage estimate's standard error is about 2 points near 95 %
    assert covered_group / reps >= 0.88, covered_group / reps
    assert covered_patch / reps <= 0.80, covered_patch / reps


def test_point_difference_pairing_and_refusals():
    y = np.repeat([0, 1], 30)  # 60 images, 2 classes, 12 groups of 5
    groups = np.repeat(np.arange(12), 5)
    a = np.ones((2, 60), bool)
    b = np.ones((2, 60), bool)
    b[:, :6] = False  # 6 of the 30 class-0 images wrong in both seeds of b
    acc = intervals.paired_group_interval(a, b, y, groups, n_resamples=300)
    assert acc.difference == pytest.approx(6 / 60) and acc.low <= acc.difference <= acc.high
    assert (acc.n_images, acc.n_groups, acc.n_seeds_a, acc.n_seeds_b) == (60, 12, 2, 2)
    bal = intervals.paired_group_interval(a, b, y, groups, metric="balanced_accuracy", n_resamples=300)
    assert bal.difference == pytest.approx((6 / 30) / 2)
    same = intervals.paired_group_interval(b, b, y, groups, n_resamples=300)  # paired: identical rows, no spread
    assert same.difference == 0 and same.low == 0 and same.high == 0
    few = intervals.paired_group_interval(a, b, y, groups % 9, n_resamples=300)
    assert few.note == intervals.TOO_FEW_GROUPS and math.isnan(few.low) and few.n_groups == 9
    one_seed = intervals.paired_group_interval(a[:1], b, y, groups, n_resamples=300)
    assert one_seed.note == intervals.TOO_FEW_SEEDS and one_seed.difference == pytest.approx(0.1)
    assert "not recorded" in intervals.paired_group_interval(a, b, y, None).note
    with pytest.raises(ValueError, match="same images"):
        intervals.paired_group_interval(a[:, :10], b, y, groups)
    with pytest.raises(ValueError, match="metric="):
        intervals.paired_group_interval(a, b, y, groups, metric="f1")


def test_fold_interval_is_the_corrected_resampled_t_interval():
    diffs = [1.3, -0.3, 1.0, 3.9, 1.0]  # five folds' own differences, points
    share = 104 / 311  # a fold's test images over its training images
    fi = intervals.fold_interval(diffs, share)
    mean, var = np.mean(diffs), np.var(diffs, ddof=1)
    half = 2.7764451051977987 * math.sqrt(var * (1 / 5 + share))  # t(0.975, 4 degrees of freedom)
    assert fi.n_folds == 5 and fi.difference == pytest.approx(mean)
    assert (fi.low, fi.high) == pytest.approx((mean - half, mean + half))
    # the correction for the folds' shared training images widens the plain t interval by sqrt(1 + k n_test/n_train)
    plain = 2.7764451051977987 * math.sqrt(var / 5)
    assert (fi.high - fi.low) / (2 * plain) == pytest.approx(math.sqrt(1 + 5 * share))
    assert (intervals.fold_interval(diffs, share, ci=0.8).high - mean) < half
    one = intervals.fold_interval([2.0], share)
    assert one.difference == 2.0 and math.isnan(one.low) and math.isnan(one.high)
    for bad in (dict(differences=[1.0, math.nan], test_over_train=share), dict(differences=[1.0, 2.0],
                test_over_train=0.0), dict(differences=[1.0, 2.0], test_over_train=share, ci=1.0)):
        with pytest.raises(ValueError, match="fold_interval"):
            intervals.fold_interval(**bad)
