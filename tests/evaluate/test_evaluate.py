"""Evaluation: FVU / L0 / dead fraction and CE loss recovered, checked on SAEs with known answers."""

from __future__ import annotations

import pytest
import torch

from featurescope.activations import ActivationStore
from featurescope.errors import FeaturescopeError
from featurescope.evaluate import EvalConfig, ce_metrics, evaluate, reconstruction_metrics
from featurescope.sae import SAE
from sae_helpers import exact_relu_sae


def _zero_sae(d: int) -> SAE:
    sae = exact_relu_sae(d)
    with torch.no_grad():
        sae.W_dec.zero_()
    return sae


def test_reconstruction_metrics_known_answers():
    torch.manual_seed(0)
    x = torch.randn(2000, 16) * 3000 + 500
    exact = reconstruction_metrics(exact_relu_sae(16), x)
    assert exact.fvu == pytest.approx(0.0, abs=1e-10) and exact.mse == pytest.approx(0.0, abs=1e-6)
    assert exact.l0 == pytest.approx(16.0, abs=0.01)  # one of ±e_i fires per dimension
    assert exact.dead_fraction == 0.0
    zero = reconstruction_metrics(_zero_sae(16), x)
    # x̂ = 0: FVU = Σ‖x‖² / Σ‖x − mean‖² > 1 because the mean is not zero (FVU is taken around the mean)
    expected = float((x.double() ** 2).sum() / ((x.double() - x.double().mean(0)) ** 2).sum())
    assert zero.fvu == pytest.approx(expected, rel=1e-6)
    half = exact_relu_sae(16)
    with torch.no_grad():
        half.b_enc[16:] = -1e9  # the negative half never fires
    assert reconstruction_metrics(half, x).dead_fraction == pytest.approx(0.5)


def test_ce_loss_recovered_is_one_for_exact_and_zero_for_zero_sae(gemma, small_store):
    ids = ActivationStore(small_store).read_shard(0).tokens.long()[:2]
    exact = ce_metrics(gemma, exact_relu_sae(640), 9, ids)
    assert exact.ce_spliced == pytest.approx(exact.ce_clean, rel=1e-4)
    assert exact.loss_recovered == pytest.approx(1.0, abs=1e-3)
    assert exact.ce_zero > exact.ce_clean + 1.0
    zero = ce_metrics(gemma, _zero_sae(640), 9, ids)
    assert zero.loss_recovered == pytest.approx(0.0, abs=1e-6)
    assert zero.ce_clean == pytest.approx(exact.ce_clean) and zero.ce_zero == pytest.approx(exact.ce_zero)


def test_next_token_nll_matches_the_full_logits(gemma, small_store):
    ids = ActivationStore(small_store).read_shard(0).tokens.long()[:2, :40]
    logits = gemma.logits(ids)[:, :-1].float()
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    got = gemma.next_token_nll(ids, chunk=7)  # chunks that do not divide the 78 positions
    assert got.shape == (2, 39)
    torch.testing.assert_close(got.flatten(), expected, rtol=1e-4, atol=1e-4)


def test_evaluate_on_store_and_mismatches(gemma, small_store, tmp_path):
    sae_dir = exact_relu_sae(640).save(tmp_path / "exact")
    result = evaluate(EvalConfig(sae=str(sae_dir), activations=str(small_store), ce_contexts=2), model=gemma,
                      progress=False)
    # held-out rows by default (bf16 store vs fp32 SAE)
    assert result.reconstruction.rows == ActivationStore(small_store).heldout_rows > 0
    assert result.split == "heldout" and result.reconstruction.fvu < 1e-4
    assert result.ce.loss_recovered == pytest.approx(1.0, abs=1e-3)
    wrong_width = exact_relu_sae(32).save(tmp_path / "w")
    with pytest.raises(FeaturescopeError, match="d_model=640 but the SAE reads d_in=32"):
        evaluate(EvalConfig(sae=str(wrong_width), activations=str(small_store)), model=gemma)
    wrong_layer = exact_relu_sae(640, layer=4).save(tmp_path / "l")
    with pytest.raises(FeaturescopeError, match="layer 9 but the SAE reads layer 4"):
        evaluate(EvalConfig(sae=str(wrong_layer), activations=str(small_store)), model=gemma)
