"""The four SAE architectures: they learn known features, work in raw units, and keep their invariants."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

from featurescope.activations import TensorSource
from featurescope.sae import SAE, SAEConfig, SparseCodes
from featurescope.synthetic import make_synthetic, recovery
from featurescope.train import TrainConfig, train

D, N_TRUE, FEATURES, ROWS, HELDOUT = 32, 64, 128, 50_000, 8192
RAW_NORM = 5000.0
"""Rows are scaled to a mean norm like Gemma's residual stream, so normalisation must work."""
BAR = 0.9
"""Hungarian-matched mean cosine a trained SAE must reach (measured 0.96-1.00 at these settings)."""
UNTRAINED_MAX = 0.6
"""An untrained SAE's decoder stays below this (measured 0.44 with 128 random directions in R^32)."""
SETTINGS = {
    "topk": {"k": 4},
    "batchtopk": {"k": 4},
    "jumprelu": {},
    "relu": {"sparsity_coefficient": 2.0, "lr": 1e-2},  # λ = 5 is for d_in in the thousands
}


class Trained(NamedTuple):
    sae: SAE
    heldout: torch.Tensor
    true: torch.Tensor


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    syn = make_synthetic(ROWS + HELDOUT, D, N_TRUE, mean_active=4, seed=1)
    return syn.data * (RAW_NORM / syn.data.norm(dim=1).mean()), syn.true_features


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> dict[str, Trained]:
    """One SAE per architecture, 3 epochs of 50k rows at batch 512 (~300 steps)."""
    x, true = data
    out: dict[str, Trained] = {}
    for arch, extra in SETTINGS.items():
        cfg = TrainConfig(out=str(tmp_path_factory.mktemp(arch)), arch=arch, features=FEATURES, batch_size=512,
                          epochs=3, **extra)
        result = train(cfg, source=TensorSource(x[:ROWS]), progress=False)
        out[arch] = Trained(result.sae, x[ROWS:], true)
    return out


def fvu(sae: SAE, x: torch.Tensor) -> float:
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    return float((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@pytest.mark.parametrize("arch", list(SETTINGS))
def test_learns_the_true_features(trained, arch):
    t = trained[arch]
    assert recovery(t.sae.W_dec, t.true).hungarian >= BAR
    untrained = SAE.create(t.sae.cfg, seed=0)
    assert recovery(untrained.W_dec, t.true).hungarian < UNTRAINED_MAX


@pytest.mark.parametrize("arch", list(SETTINGS))
def test_reconstructs_in_raw_units_and_round_trips(trained, arch, tmp_path):
    t = trained[arch]
    assert t.heldout.norm(dim=1).mean() > 1000  # raw units, far from the SAE's internal scale
    assert fvu(t.sae, t.heldout) < 0.35
    assert float(t.sae.input_scale) == pytest.approx(D**0.5 / RAW_NORM, rel=0.05)
    t.sae.save(tmp_path / "sae")
    loaded = SAE.load(tmp_path / "sae")
    assert type(loaded) is type(t.sae) and loaded.cfg.architecture == arch
    with torch.no_grad():
        assert torch.equal(loaded(t.heldout), t.sae(t.heldout))
        assert torch.equal(loaded.encode(t.heldout), t.sae.encode(t.heldout))


def test_batchtopk_threshold_gives_l0_near_k(trained):
    sae = trained["batchtopk"].sae
    assert float(sae.threshold) > 0
    with torch.no_grad():
        l0 = float((sae.encode(trained["batchtopk"].heldout) > 0).sum(-1).float().mean())
    assert l0 == pytest.approx(4, rel=0.2)


def test_topk_dense_encode_is_the_sparse_code_scattered(trained):
    t = trained["topk"]
    x = t.heldout[:1000]
    with torch.no_grad():
        dense = t.sae.encode(x)
        codes = t.sae.encode_sparse(x)
        assert isinstance(codes, SparseCodes) and codes.values.shape == (1000, 4)
        scattered = torch.zeros_like(dense).scatter_(-1, codes.indices, codes.values)
        assert torch.equal(dense, scattered)
        assert torch.allclose(t.sae.decode_sparse(codes), t.sae.decode(dense), rtol=1e-5, atol=1e-2)
    assert ((dense > 0).sum(-1) <= 4).all()


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu"])
def test_unit_norm_decoders_stay_unit_norm(trained, arch):
    norms = trained[arch].sae.W_dec.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_relu_decoder_norms_are_free(trained):
    norms = trained["relu"].sae.W_dec.norm(dim=1)
    assert norms.std() > 0.01 and not torch.allclose(norms, torch.full_like(norms, 0.1))


def test_jumprelu_thresholds_are_positive_and_learned(trained):
    sae = trained["jumprelu"].sae
    theta = sae.threshold.detach()
    assert (theta > 0).all()
    moved = (theta.log() - torch.log(torch.tensor(sae.init_threshold))).abs()
    assert moved.mean() > 0.5 and theta.std() > 0
    with torch.no_grad():  # the rule is f = z·H(z − θ): nothing at or under its feature's threshold fires
        x = trained["jumprelu"].heldout[:500]
        pre = sae.pre_acts(sae.normalize(x))
        f = sae.encode(x)
    assert torch.equal(f > 0, pre > theta)


def _train_with_planted_dead(auxk_coefficient: float, x: torch.Tensor) -> tuple[int, int]:
    """TopK (k=1, 64 latents) whose first 16 encoder rows are shrunk ×0.1: they never win the top-1."""
    sae = SAE.create(SAEConfig(d_in=D, d_sae=64, architecture="topk", k=1,
                               extra={"auxk_coefficient": auxk_coefficient}), seed=0)
    x = x * (D**0.5 / x.norm(dim=1).mean())
    train_x, held = x[:40000], x[40000:]
    sae.init_from_data(train_x[:8192])
    with torch.no_grad():
        sae.W_enc_rows[:16] *= 0.1
        before = int((sae.encode(train_x)[:, :16] > 0).any(0).sum())
    opt = torch.optim.Adam(sae.parameters(), lr=8e-3, eps=6.25e-10)
    since = torch.zeros(64, dtype=torch.long)
    for i in range(300):
        s = (i * 512) % 39424
        out = sae.training_loss(train_x[s : s + 512], i / 300, dead=since >= 4096)
        opt.zero_grad()
        out.loss.backward()
        sae.before_step()
        opt.step()
        sae.after_step()
        since += 512
        since[out.fired] = 0
    with torch.no_grad():
        after = int((sae.encode(held)[:, :16] > 0).any(0).sum())
    return before, after


def test_auxk_revives_dead_latents(data):
    x = data[0][:48192]
    before, after = _train_with_planted_dead(1 / 32, x)
    assert before == 0 and after >= 8  # measured 14 of 16
    before, after = _train_with_planted_dead(0.0, x)
    assert before == 0 and after == 0  # without AuxK nothing ever reaches them


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_generic_sparse_codes_round_trip(arch):
    sae = SAE.create(SAEConfig(d_in=16, d_sae=64, architecture=arch, k=4), seed=3)
    x = torch.randn(50, 16)
    with torch.no_grad():
        f = sae.encode(x)
        codes = sae.encode_sparse(x)
        assert torch.allclose(sae.decode_sparse(codes), sae.decode(f), atol=1e-5)
        assert int((codes.values != 0).sum()) == int((f != 0).sum())


def test_topk_sparse_gradients_match_a_dense_reference():
    sae = SAE.create(SAEConfig(d_in=16, d_sae=64, architecture="topk", k=4, extra={"select_dtype": "float32"}),
                     seed=0)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    x = torch.randn(32, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:10] = True
    sae.training_loss(x, 0.5, dead=dead).loss.backward()
    fast = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    x_c = x - sae.b_dec
    pre = x_c @ sae.W_enc_rows.T + sae.b_enc
    mask = torch.zeros_like(pre).scatter(-1, pre.detach().topk(4, dim=-1).indices, 1.0)
    x_hat = (pre * mask).relu() @ sae.W_dec + sae.b_dec
    e = (x - x_hat).detach()
    pre_dead = x_c @ sae.W_enc_rows[:10].T + sae.b_enc[:10]  # k_aux = d_in / 2 = 8 of the 10 dead
    aux_mask = torch.zeros_like(pre_dead).scatter(-1, pre_dead.detach().topk(8, dim=-1).indices, 1.0)
    e_hat = (pre_dead * aux_mask).relu() @ sae.W_dec[:10]
    auxk = (e_hat - e).pow(2).sum() / e.pow(2).sum()
    variance = (x - x.mean(0)).pow(2).sum(-1).mean()
    ((x_hat - x).pow(2).sum(-1).mean() + auxk * variance / 32).backward()
    for n, p in sae.named_parameters():
        assert torch.allclose(p.grad, fast[n], atol=1e-4, rtol=1e-4), n


def test_bf16_selection_picks_the_fp32_top_k(trained):
    t = trained["topk"]
    sae = t.sae
    with torch.no_grad():
        x_c = sae.normalize(t.heldout) - sae.b_dec
        exact = sae.pre_acts(sae.normalize(t.heldout)).topk(4, dim=-1).indices.sort(-1).values
        fast = sae._select(x_c).cols.view(-1, 4).sort(-1).values
    assert float((exact == fast).float().mean()) > 0.98


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu"])
def test_unit_norm_decoders_drop_the_gradient_along_each_row(arch):
    sae = SAE.create(SAEConfig(d_in=16, d_sae=64, architecture=arch, k=4), seed=1)
    sae.training_loss(torch.randn(256, 16), 0.5).loss.backward()
    w = sae.W_dec.detach()
    assert float((sae.W_dec.grad * w).sum(1).abs().max()) > 1e-3
    sae.before_step()
    assert float((sae.W_dec.grad * w).sum(1).abs().max()) < 1e-5


@pytest.mark.parametrize(("arch", "term", "lam"), [("relu", "l1", 5.0), ("jumprelu", "l0_penalty", 1.0)])
def test_sparsity_coefficient_warms_up_linearly(arch, term, lam):
    sae = SAE.create(SAEConfig(d_in=16, d_sae=64, architecture=arch, extra={"warmup": 0.1}), seed=1)
    x = torch.randn(128, 16)
    for progress, weight in ((0.0, 0.0), (0.05, 0.5), (0.1, 1.0), (0.7, 1.0)):
        out = sae.training_loss(x, progress)
        expected = out.terms["mse"] + weight * lam * out.terms[term]
        assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_topk_starts_b_dec_at_the_geometric_median():
    from featurescope.sae.kernels import geometric_median

    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])
    median = geometric_median(points)
    # on the diagonal the pulls of (0, 0) and (100, 100) cancel, and those of (1, 0) and (0, 1) at t = 0.5
    assert torch.allclose(median, torch.tensor([0.5, 0.5]), atol=1e-4)  # the mean is (25.25, 25.25)
    sae = SAE.create(SAEConfig(d_in=2, d_sae=8, architecture="topk", k=2), seed=0)
    sae.init_from_data(points)
    assert torch.allclose(sae.b_dec, median)
