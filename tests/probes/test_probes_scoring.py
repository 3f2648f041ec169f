"""Cross-lingual scores and held-out feature selection on planted activations with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from featurescope.probes.crossling import aligned_examples, cross_lingual
from featurescope.probes.selection import rank_category
from featurescope.probes.sets import ProbeText
from featurescope.probes.stats import split_groups
from featurescope.probes.suppress import _pairs, selectivity

LANGS = ["en", "fr", "de", "es", "zh"]


def _planted(n_seg: int = 120, seed: int = 0) -> np.ndarray:
    """acts [segments, 5 languages, 6 features]:
    0 shared: fires on the same 15 segments in every language (strength varies by segment, with noise);
    1 French only; 2 random segments, drawn independently per language; 3 fires on every segment (dense);
    4 shared on the same segments but never in Chinese; 5 never fires."""
    rng = np.random.default_rng(seed)
    acts = np.zeros((n_seg, len(LANGS), 6))
    on = rng.choice(n_seg, 15, replace=False)
    strength = rng.uniform(2, 5, 15)
    acts[on, :, 0] = strength[:, None] + rng.normal(0, 0.2, (15, len(LANGS)))
    acts[rng.choice(n_seg, 15, replace=False), 1, 1] = 3.0
    for li in range(len(LANGS)):
        acts[rng.choice(n_seg, 15, replace=False), li, 2] = rng.uniform(2, 5, 15)
    acts[:, :, 3] = rng.uniform(1, 2, (n_seg, len(LANGS)))
    acts[on, :4, 4] = strength[:, None]
    return acts


def test_cross_lingual_score_on_planted_features():
    cl = cross_lingual(_planted(), LANGS, density=np.array([0.01, 0.01, 0.01, 0.5, 0.01, 0.0]))
    assert cl.score[0] > 0.9  # same segments everywhere
    assert abs(cl.score[1]) < 0.1 and abs(cl.score[2]) < 0.15  # language-specific / unrelated across languages
    assert 0.5 < cl.score[4] < 0.7  # 6 of 10 language pairs agree, the 4 with Chinese are 0
    assert cl.pairs[cl.pair_names.index("en-zh"), 4] == 0.0 and cl.pairs[cl.pair_names.index("en-fr"), 4] > 0.99
    assert cl.score[5] == 0.0
    assert list(cl.eligible) == [True, False, True, False, False, False]  # 1, 4: silent somewhere; 3: dense
    assert cl.null_max < 0.3
    assert list(cl.listed(0.3)) == [0]
    assert cl.transfer[0] == pytest.approx(1.0) and cl.transfer[2] < 0.4
    assert cl.base_rate[2] == pytest.approx(15 / 120)
    assert np.isnan(cl.transfer[5])


def test_dense_feature_is_never_listed_even_when_it_correlates():
    acts = _planted()
    length = np.random.default_rng(1).uniform(1, 3, acts.shape[0])
    acts[:, :, 3] = length[:, None]  # a "segment length" feature: perfectly correlated across languages
    cl = cross_lingual(acts, LANGS, density=np.array([0.01, 0.01, 0.01, 0.5, 0.01, 0.0]))
    assert cl.score[3] > 0.99 and 3 not in cl.listed(0.3)
    no_density = cross_lingual(acts, LANGS, None, max_segment_fraction=1.0)
    assert 3 in no_density.listed(0.3)  # only the density filter kept it out


def test_aligned_examples_rank_by_mean_activation():
    acts = np.zeros((5, 2, 2))
    acts[3, :, 0] = [4.0, 2.0]
    acts[1, :, 0] = [1.0, 1.0]
    order, valid = aligned_examples(acts, 3)
    assert list(order[:2, 0]) == [3, 1] and list(valid[:, 0]) == [True, True, False]
    assert not valid[:, 1].any()


def _probe_case(n_pairs: int = 40, n_noise: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.tile([1, 0], n_pairs)
    groups = np.repeat([f"p{i}" for i in range(n_pairs)], 2)
    noise = rng.exponential(size=(2 * n_pairs, n_noise)) * (rng.random((2 * n_pairs, n_noise)) < 0.3)
    return labels, groups, noise, rng


def test_selection_reports_a_planted_feature_and_nothing_else():
    labels, groups, noise, rng = _probe_case()
    planted = labels * rng.uniform(2, 4, len(labels))  # fires on positives only
    scores = np.column_stack([noise[:, :17], planted, noise[:, 17:]])
    split = split_groups(groups, labels, 0.5, seed=0)
    r = rank_category("planted", scores, labels, groups, split, permutations=500)
    assert r.candidates[0].feature == 17 and r.candidates[0].heldout_auroc == 1.0
    assert [c.feature for c in r.reported] == [17]
    assert r.best_train_auroc == 1.0 and r.null_train_max < 0.8
    assert "1 feature generalise" in r.verdict


def test_selection_says_so_when_nothing_generalises():
    labels, groups, noise, _ = _probe_case(seed=1)
    split = split_groups(groups, labels, 0.5, seed=0)
    r = rank_category("noise", noise, labels, groups, split, permutations=500)
    assert r.candidates and not r.reported
    assert r.best_train_auroc > 0.65  # the best of 300 noise features looks promising on the discovery half
    assert r.verdict.startswith("no feature generalises")
    assert max(c.heldout_auroc for c in r.candidates) < 0.75
    nothing = rank_category("silent", np.zeros_like(noise), labels, groups, split, permutations=50)
    assert nothing.candidates == [] and nothing.verdict.startswith("no feature fires more")


def test_suppression_selectivity_over_pairs():
    items = [ProbeText("c", lab, f"t{g}{lab}", f"g{g}") for g in range(30) for lab in (1, 0)]
    pairs = _pairs(items)
    assert len(pairs) == 30 and all(items[p].label == 1 and items[n].label == 0 for p, n in pairs)
    labels = np.array([t.label for t in items])
    delta = np.where(labels == 1, 0.5, 0.1) + np.random.default_rng(0).normal(0, 0.05, len(items))
    est, lo, hi = selectivity(delta, labels, pairs)
    assert est == pytest.approx(0.4, abs=0.03) and lo < est < hi and lo > 0.3
    est0, lo0, hi0 = selectivity(np.zeros(len(items)) + 0.2, labels, [])
    assert est0 == pytest.approx(0.0) and lo0 <= 0 <= hi0


def test_same_token_fraction():
    from featurescope.probes.multilingual import same_token_fraction

    assert same_token_fraction([" 1889", "1889", " 1889"]) == 1.0  # a number spelt alike
    assert same_token_fraction([" Tower", " tour", "塔"]) == 0.0  # one concept, three spellings
    assert same_token_fraction([" Paris", " Paris", " París", "巴黎"]) == pytest.approx(1 / 6)


def test_control_features_match_the_targets_scale():
    from featurescope.probes.suppress import control_features

    max_acts = np.array([1.0, 1.1, 0.9, 5.0, 1.2, 1.05, 0.0, 1.0])
    density = np.array([0.01, 0.01, 0.01, 0.01, 0.01, 0.5, 0.0, 0.01])
    got = control_features(max_acts, density, 0, 10, exclude={7}, seed=0)
    assert got == [1, 2, 4]  # not 3 (5× larger), 5 (dense), 6 (dead), 7 (excluded) or the target
    assert len(control_features(max_acts, density, 0, 2, exclude=set(), seed=0)) == 2
    assert control_features(max_acts, density, 3, 2, exclude=set(), seed=0) == []
