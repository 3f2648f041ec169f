"""Logit effects through each kind of final norm, neighbours against brute-force cosine, the map."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from featurescope.analysis.feature_map import feature_map, have_umap, pca_map
from featurescope.analysis.logit_effects import logit_effects, norm_scale
from featurescope.analysis.neighbours import nearest_neighbours
from featurescope.errors import FeaturescopeError
from featurescope.featuredb.core import FeatureStore, create_db


def test_gemma_logit_effects_equal_w_u_times_scaled_decoder(gemma):
    torch.manual_seed(0)
    w_dec = torch.randn(6, gemma.d_model) * 3
    norm = gemma.final_norm
    scale = norm_scale(norm, gemma.d_model)
    gain = 1.0 + norm.weight.detach().float()  # Gemma 3: x / rms · (1 + w)
    assert torch.allclose(scale.gain, gain, rtol=1e-5, atol=1e-6) and not scale.center
    effects = logit_effects(w_dec, gemma.unembed, scale, n=10, chunk=4)
    direct = (gain * (w_dec / w_dec.norm(dim=1, keepdim=True))) @ gemma.unembed.detach().float().T
    for i in range(6):
        top = direct[i].topk(10)
        bottom = direct[i].topk(10, largest=False)
        assert effects.top_tokens[i].tolist() == top.indices.tolist()
        assert torch.allclose(effects.top_values[i], top.values, rtol=1e-4, atol=1e-4)
        assert effects.bottom_tokens[i].tolist() == bottom.indices.tolist()
        assert torch.allclose(effects.bottom_values[i], bottom.values, rtol=1e-4, atol=1e-4)


def test_norm_scale_reads_llama_rmsnorm_and_centres_layernorm():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    rms = LlamaRMSNorm(8, eps=1e-5)
    with torch.no_grad():
        rms.weight.copy_(torch.arange(1.0, 9.0))
    scale = norm_scale(rms, 8)
    assert torch.allclose(scale.gain, torch.arange(1.0, 9.0), rtol=1e-6) and not scale.center  # x / rms · w

    ln = nn.LayerNorm(8)
    with torch.no_grad():
        ln.weight.copy_(torch.linspace(0.5, 2.0, 8))
        ln.bias.fill_(3.0)
    scale = norm_scale(ln, 8)
    assert scale.center and torch.equal(scale.gain, ln.weight.detach())
    w_u = torch.randn(20, 8)
    d = torch.randn(1, 8)
    effects = logit_effects(d, w_u, scale, n=20)
    u = d / d.norm()
    expected = (ln.weight.detach() * (u - u.mean())) @ w_u.T
    assert torch.allclose(effects.top_values[0], expected[0].sort(descending=True).values, atol=1e-5)
    # a direction along the all-ones vector is invisible to a LayerNorm
    flat = logit_effects(torch.ones(1, 8), w_u, scale, n=3)
    assert flat.top_values.abs().max() < 1e-5
    assert torch.equal(norm_scale(None, 8).gain, torch.ones(8))


def test_neighbours_equal_brute_force_cosine():
    torch.manual_seed(0)
    w = torch.randn(300, 16) * torch.rand(300, 1) * 5
    nb = nearest_neighbours(w, n=10, chunk=64)
    u = w / w.norm(dim=1, keepdim=True)
    sims = u @ u.T
    sims.fill_diagonal_(-2)
    top = sims.topk(10, dim=1)
    assert torch.equal(nb.ids, top.indices)
    assert torch.allclose(nb.cosine, top.values, atol=1e-6)


def _decoder_db(path, w: torch.Tensor) -> None:
    """A database holding only meta, features and decoder directions."""
    with create_db(path) as db:
        db.meta({"format": "featurescope.features", "version": 1, "d_sae": len(w), "d_in": w.shape[1]})
        db.insert("features", ("id", "count", "density", "max", "decoder_norm"),
                  ((i, 1, 0.1, 1.0, 1.0) for i in range(len(w))))
        db.decoder(w / w.norm(dim=1, keepdim=True))


def test_on_demand_neighbours_of_16k_features_take_milliseconds(tmp_path):
    torch.manual_seed(1)
    w = torch.randn(16384, 64)
    _decoder_db(tmp_path / "f.db", w)
    u = w / w.norm(dim=1, keepdim=True)
    with FeatureStore.open(tmp_path / "f.db") as store:
        store.neighbours(0, n=5)  # loads the directions once
        start = time.perf_counter()
        for i in (1, 500, 16383):
            got = store.neighbours(i, n=20)
        elapsed = (time.perf_counter() - start) / 3
        sims = u @ u[16383]
        sims[16383] = -2
        exact = sims.topk(20)
        ids = [n.feature for n in got]
        cos = torch.tensor([n.cosine for n in got])
        assert 16383 not in ids
        assert torch.allclose(cos, sims[ids], atol=2e-3)  # float16 directions
        assert float(cos.min()) >= float(exact.values[-1]) - 2e-3
        assert len(set(ids) & set(exact.indices.tolist())) >= 18
        assert elapsed < 0.05, f"{elapsed * 1000:.1f} ms per query"
        with pytest.raises(FeaturescopeError, match="out of range"):
            store.neighbours(16384)


def test_pca_map_is_in_the_unit_square_and_separates_clusters():
    torch.manual_seed(0)
    a = torch.randn(1, 32) + 0.05 * torch.randn(40, 32)
    b = torch.randn(1, 32) + 0.05 * torch.randn(40, 32)
    xy = pca_map(torch.cat([a, b]))
    assert xy.shape == (80, 2) and xy.min() >= 0 and xy.max() <= 1
    assert (xy[:40].mean(0) - xy[40:].mean(0)).norm() > 0.5
    assert feature_map(torch.cat([a, b]), "none") is None
    assert feature_map(torch.cat([a, b]), "pca").method == "pca"
    with pytest.raises(FeaturescopeError, match="unknown map"):
        feature_map(a, "tsne")


@pytest.mark.slow
@pytest.mark.skipif(not have_umap(), reason="umap-learn is not installed")
def test_umap_map_keeps_clusters_apart():
    torch.manual_seed(0)
    centres = torch.randn(3, 32)
    w = torch.cat([c + 0.05 * torch.randn(50, 32) for c in centres])
    m = feature_map(w, "auto")
    assert m.method == "umap" and m.xy.shape == (150, 2)
    means = torch.stack([m.xy[i * 50:(i + 1) * 50].mean(0) for i in range(3)])
    assert torch.cdist(means, means).fill_diagonal_(1).min() > 0.2
