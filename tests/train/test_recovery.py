"""Synthetic data with known features, and the recovery measure."""

from __future__ import annotations

import pytest
import torch

from featurescope.errors import FeaturescopeError
from featurescope.synthetic import make_synthetic, recovery


def test_synthetic_is_deterministic_by_seed():
    a = make_synthetic(2000, 32, 64, seed=3)
    b = make_synthetic(2000, 32, 64, seed=3)
    c = make_synthetic(2000, 32, 64, seed=4)
    assert torch.equal(a.data, b.data) and torch.equal(a.true_features, b.true_features)
    assert not torch.equal(a.data, c.data) and not torch.equal(a.true_features, c.true_features)
    assert a.data.shape == (2000, 32) and a.data.dtype == torch.float32
    assert a.true_features.shape == (64, 32)
    assert torch.allclose(a.true_features.norm(dim=1), torch.ones(64))


def test_features_are_not_what_torch_seeding_gives():
    syn = make_synthetic(10, 16, 8, seed=0)
    torch.manual_seed(0)
    rand = torch.randn(8, 16)
    rand = rand / rand.norm(dim=1, keepdim=True)
    assert recovery(rand, syn.true_features).hungarian < 0.7


def test_firing_is_sparse_zipf_like_positive_and_group_correlated():
    # 32 features in R^256 are linearly independent: without noise, the codes are exactly data @ pinv(features)
    syn = make_synthetic(40_000, 256, 32, mean_active=6, group_size=8, noise=0.0, seed=1)
    rates = syn.firing_rates
    assert float(rates.sum()) == pytest.approx(6, rel=1e-4)
    assert (rates[:-1] >= rates[1:]).all() and rates[0] > 2 * rates[-1]
    codes = syn.data.double() @ torch.linalg.pinv(syn.true_features.double())
    active = codes > 1e-4
    assert float(codes.min()) > -1e-4  # magnitudes are positive
    assert float(active.sum(1).float().mean()) == pytest.approx(6, rel=0.1)
    assert float(codes[active].min()) >= 0.25 - 1e-4 and float(codes[active].max()) <= 2.25 + 1e-4
    assert torch.allclose(active.float().mean(0), rates, atol=0.01)
    proj = codes

    def corr(i: int, j: int) -> float:
        both = active[:, i] & active[:, j]
        a, b = proj[both, i], proj[both, j]
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    assert corr(0, 1) > 0.3 and corr(2, 5) > 0.3  # same group
    assert abs(corr(0, 9)) < 0.15 and abs(corr(3, 17)) < 0.15  # different groups


def test_noise_level():
    quiet = make_synthetic(5000, 64, 32, noise=0.0, seed=2).data
    noisy = make_synthetic(5000, 64, 32, noise=0.05, seed=2).data
    assert float((noisy - quiet).std()) == pytest.approx(0.05, rel=0.05)


def test_recovery_of_perfect_partial_and_random_dictionaries():
    true = make_synthetic(10, 32, 48, seed=5).true_features
    perm = torch.randperm(48, generator=torch.Generator().manual_seed(0))
    perfect = recovery(3.0 * true[perm], true)
    assert perfect.hungarian == pytest.approx(1.0, abs=1e-5)
    assert perfect.true_max_cos == pytest.approx(1.0, abs=1e-5)
    assert perfect.latent_max_cos == pytest.approx(1.0, abs=1e-5)
    rand = torch.randn(48, 32, generator=torch.Generator().manual_seed(1))
    r = recovery(rand, true)
    assert r.hungarian < 0.45 and r.hungarian <= r.true_max_cos
    half = torch.cat([true[:24], rand[24:]])
    h = recovery(half, true)
    assert 0.5 + 0.5 * 0.0 < h.hungarian < 0.5 + 0.5 * 0.45
    fewer = recovery(true[:12], true)  # unmatched true features count as 0
    assert fewer.hungarian == pytest.approx(12 / 48, abs=1e-5)
    assert fewer.latent_max_cos == pytest.approx(1.0, abs=1e-5)


def test_bad_arguments_are_featurescope_errors():
    with pytest.raises(FeaturescopeError):
        make_synthetic(0, 8, 8)
    with pytest.raises(FeaturescopeError):
        make_synthetic(10, 8, 8, mean_active=20)
    with pytest.raises(FeaturescopeError):
        recovery(torch.randn(4, 8), torch.randn(4, 9))
