"""The probes' statistics against cases with a known answer: AUROC (planted features, ties), permutation nulls,
split-conformal calibration on fresh negatives, group-aware splits, column correlations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu, pearsonr

from featurescope.errors import FeaturescopeError
from featurescope.probes.stats import (
    auroc,
    column_pearson,
    conformal_threshold,
    min_negatives,
    null_max_auroc,
    permutation_pvalues,
    permuted_labels,
    split_groups,
)


def test_auroc_of_planted_features():
    labels = np.array([1] * 20 + [0] * 20)
    rng = np.random.default_rng(0)
    perfect = np.where(labels == 1, 5.0 + rng.random(40), rng.random(40))  # every positive above every negative
    reversed_ = -perfect
    constant = np.full(40, 3.0)  # all tied: a coin flip
    same = np.tile(rng.random(20), 2)  # identical values for positives and negatives
    got = auroc(np.stack([perfect, reversed_, constant, same], axis=1), labels)
    np.testing.assert_allclose(got, [1.0, 0.0, 0.5, 0.5], atol=1e-12)
    assert float(auroc(perfect, labels)) == 1.0  # vector input


def test_auroc_with_ties_matches_mann_whitney():
    rng = np.random.default_rng(1)
    labels = np.array([1] * 17 + [0] * 23)
    scores = rng.integers(0, 4, size=(40, 6)).astype(float)  # few distinct values: many ties
    scores[:, 1] = np.where(labels == 1, np.maximum(scores[:, 1], 2), scores[:, 1])  # a shifted, still tied column
    scores[:17, 2] = 0.0  # positives all at 0 where negatives vary
    got = auroc(scores, labels)
    for j in range(scores.shape[1]):
        u = mannwhitneyu(scores[labels == 1, j], scores[labels == 0, j], alternative="two-sided").statistic
        assert got[j] == pytest.approx(u / (17 * 23), abs=1e-12)
    # brute force: P(pos > neg) + ½ P(tie)
    pos, neg = scores[labels == 1, 1], scores[labels == 0, 1]
    brute = ((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())
    assert got[1] == pytest.approx(brute, abs=1e-12)


def test_auroc_needs_both_labels():
    with pytest.raises(FeaturescopeError, match="one positive and one negative"):
        auroc(np.ones((4, 2)), np.ones(4))


def test_permuted_labels_swap_within_pairs_only():
    labels = np.array([1, 0, 1, 0, 1, 0])
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    perm = permuted_labels(labels, groups, 500, np.random.default_rng(0))
    for g in "abc":
        members = groups == g
        assert (perm[:, members].sum(axis=1) == 1).all()  # each pair keeps one positive
    assert 0.4 < perm[:, 0].mean() < 0.6  # and the positive is either member, equally often


def test_permutation_pvalues_separate_signal_from_noise():
    rng = np.random.default_rng(2)
    labels = np.tile([1, 0], 20)
    groups = np.repeat(np.arange(20), 2)
    signal = labels * 2.0 + rng.normal(size=40)
    noise = rng.normal(size=(40, 200))
    p = permutation_pvalues(np.column_stack([signal, noise]), labels, groups, 999, rng)
    assert p[0] <= 0.002
    assert 0.3 < p[1:].mean() < 0.7  # roughly uniform under the null
    assert (p[1:] < 0.05).mean() < 0.12


def test_null_max_auroc_shows_selection_bias():
    rng = np.random.default_rng(3)
    labels = np.tile([1, 0], 15)
    noise = rng.normal(size=(30, 500))
    best = auroc(noise, labels).max()
    null = null_max_auroc(noise, labels, np.repeat(np.arange(15), 2), 100, rng)
    assert best > 0.7  # the best of 500 noise features looks good on 30 texts...
    assert np.quantile(null, 0.95) >= best - 0.05  # ...and the null says that is what chance gives


def test_conformal_threshold_holds_the_false_positive_rate_on_fresh_negatives():
    rng = np.random.default_rng(4)
    for fpr in (0.05, 0.2):
        rates = []
        for _ in range(20):
            calibration = rng.gamma(2.0, size=500)
            tau = conformal_threshold(calibration, fpr)
            rates.append((rng.gamma(2.0, size=20_000) > tau).mean())
        assert np.mean(rates) == pytest.approx(fpr, abs=0.01)
        assert np.mean(rates) <= fpr + 0.005


def test_conformal_threshold_with_many_zeros_and_too_few_negatives():
    rng = np.random.default_rng(5)
    calibration = np.where(rng.random(400) < 0.9, 0.0, rng.exponential(size=400))  # a sparse feature
    tau = conformal_threshold(calibration, 0.05)
    fresh = np.where(rng.random(50_000) < 0.9, 0.0, rng.exponential(size=50_000))
    assert (fresh > tau).mean() <= 0.05 + 0.005
    assert conformal_threshold(np.arange(10.0), 0.05) == float("inf")  # 10 < 1/0.05 − 1 negatives
    assert min_negatives(0.05) == 19 and np.isfinite(conformal_threshold(np.arange(19.0), 0.05))
    with pytest.raises(FeaturescopeError, match="between 0 and 1"):
        conformal_threshold(calibration, 1.0)


def test_split_keeps_pairs_together_and_is_seeded():
    groups = np.repeat([f"g{i}" for i in range(40)], 2)
    labels = np.tile([1, 0], 40)
    a = split_groups(groups, labels, 0.5, seed=0)
    assert a.train.sum() == a.heldout.sum() == 40 and not (a.train & a.heldout).any()
    for g in np.unique(groups):
        assert len(set(a.heldout[groups == g])) == 1
    assert (split_groups(groups, labels, 0.5, seed=0).heldout == a.heldout).all()
    assert (split_groups(groups, labels, 0.5, seed=1).heldout != a.heldout).any()
    singles = split_groups(np.arange(10).astype(str), np.array([1] * 5 + [0] * 5), 0.4, seed=0)
    assert singles.heldout[:5].sum() == 2 and singles.heldout[5:].sum() == 2  # stratified by label


def test_column_pearson_matches_scipy_and_handles_constants():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    b[:, 1] = 2 * a[:, 1] + 1
    a[:, 2] = 0.0
    got = column_pearson(a, b)
    assert got[0] == pytest.approx(pearsonr(a[:, 0], b[:, 0]).statistic, abs=1e-12)
    assert got[1] == pytest.approx(1.0) and got[2] == 0.0
