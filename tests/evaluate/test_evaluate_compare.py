"""Several SAEs evaluated together: the same figures as one at a time, one clean forward pass per batch, KL to the
clean model, the Pareto fronts, one clear error for SAEs that read different activations, the output files."""

from __future__ import annotations

import json
import sqlite3
import struct

import pytest
import torch

from cli_helpers import run_main
from featurescope.activations import ActivationStore
from featurescope.errors import FeaturescopeError
from featurescope.evaluate import EvalConfig, compare_saes, evaluate, evaluate_many, pareto_front, write_comparison
from featurescope.featuredb.compare import read_comparison, replace_comparison
from featurescope.sae import SAE, SAEConfig
from sae_helpers import exact_relu_sae

FIGURES = ("fvu", "mse", "l0", "dead_fraction", "ce_clean", "ce_spliced", "ce_zero", "loss_recovered", "kl",
           "ood_ce_clean", "ood_ce_spliced", "ood_ce_zero", "ood_loss_recovered", "ood_kl")


def _saes(tmp_path) -> list[str]:
    """Three layer-9 SAEs of the default model: exact, exact with a noisy decoder, a random TopK one."""
    exact = exact_relu_sae(640)
    noisy = exact_relu_sae(640)
    with torch.no_grad():
        noisy.W_dec.add_(0.002 * torch.randn(noisy.W_dec.shape, generator=torch.Generator().manual_seed(1)))
    topk = SAE.create(SAEConfig(d_in=640, d_sae=256, architecture="topk", k=8, model="default", layer=9), seed=3)
    return [str(s.save(tmp_path / name)) for s, name in ((exact, "exact"), (noisy, "noisy"), (topk, "topk"))]


def test_several_saes_give_each_ones_figures_and_share_the_clean_pass(gemma, small_store, tmp_path):
    paths = _saes(tmp_path)
    cfg = EvalConfig(activations=str(small_store), corpus="wiki-en", rows=600, ce_contexts=3, ood_contexts=2,
                     batch_size=2)
    forwards: list[bool] = []  # per forward pass: whether it ran clean (nothing spliced into block 9)
    handle = gemma.blocks[0].register_forward_pre_hook(
        lambda *_: forwards.append(not gemma.blocks[9]._forward_hooks))
    try:
        together = evaluate_many(cfg, paths, model=gemma, progress=False)
    finally:
        handle.remove()
    batches = 2 + 1  # 3 in-domain contexts in batches of 2, then 2 out-of-domain ones
    assert len(forwards) == batches * (len(paths) + 2)  # clean + zero once per batch, one per SAE
    assert sum(forwards) == batches
    for path, many in list(zip(paths, together, strict=True))[::2]:  # exact and topk: a ReLU and a TopK SAE
        alone = evaluate(EvalConfig(**{**cfg.__dict__, "sae": path}), model=gemma, progress=False).as_dict()
        got = many.as_dict()
        for key in FIGURES:
            assert got[key] == pytest.approx(alone[key], rel=1e-5, abs=1e-5), (path, key)
        assert got["measured_on"] == alone["measured_on"] and got["notes"] == alone["notes"]
    exact, noisy, topk = together
    assert exact.ce.kl == pytest.approx(0.0, abs=2e-3) and exact.ce.loss_recovered == pytest.approx(1.0, abs=1e-3)
    assert exact.ce.kl < noisy.ce.kl and noisy.ce.loss_recovered < exact.ce.loss_recovered
    assert topk.ce.kl > 1.0 and topk.ce.ce_spliced > exact.ce.ce_spliced  # a random SAE moves the predictions a lot
    assert "KL(clean ‖ spliced)" in exact.as_dict()["measured_on"]["kl"]


def test_kl_matches_the_full_logits(gemma, small_store):
    ids = ActivationStore(small_store).read_shard(0).tokens.long()[:2, :40]
    clean = gemma.head_state(ids)
    noisy = clean + 0.3 * clean.std() * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    scores = gemma.next_token_scores(ids, [noisy, clean], reference=1, chunk=7)

    def logp(h):
        return torch.log_softmax(gemma.hf.get_output_embeddings()(h[:, :-1]).double(), dim=-1)

    ref, other = logp(clean), logp(noisy)
    expected = (ref.exp() * (ref - other)).sum(-1).float()
    torch.testing.assert_close(scores[0].kl, expected, rtol=1e-3, atol=1e-4)
    assert float(scores[0].kl.mean()) > 0.05 and bool((scores[1].kl == 0).all())
    torch.testing.assert_close(scores[1].nll, gemma.next_token_nll(ids, chunk=7), rtol=0, atol=0)


def test_pareto_front_on_a_constructed_example():
    l0 = [10, 20, 20, 40, 5, 30, None, 40]
    ce = [0.80, 0.90, 0.85, 0.95, 0.60, 0.90, 0.99, 0.95]
    # 20/0.85 is beaten by 20/0.90; 30/0.90 by 20/0.90; the missing L0 is on no front; the two 40/0.95 tie
    assert pareto_front(l0, ce, higher_y=True) == [True, True, False, True, True, False, False, True]
    fvu = [0.3, 0.2, 0.1, 0.05, 0.3, None, 0.01, 0.2]
    # 10/0.3 is beaten by 5/0.3 (sparser, as good), 20/0.2 and 40/0.2 by 20/0.1
    assert pareto_front(l0, fvu, higher_y=False) == [False, False, True, True, True, False, False, False]
    assert pareto_front([], [], higher_y=True) == []


def test_saes_reading_different_activations_are_one_clear_error(capsys, small_store, tmp_path):
    wide, narrow = exact_relu_sae(640).save(tmp_path / "wide"), exact_relu_sae(32).save(tmp_path / "narrow")
    code, out, err = run_main(capsys, "-q", "eval", str(wide), str(narrow), "--activations", str(small_store))
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["featurescope: error: the SAEs do not read the same activations: wide has "
                                        "d_in=640 but narrow has d_in=32"]
    other_layer = exact_relu_sae(640, layer=4).save(tmp_path / "l4")
    code, _, err = run_main(capsys, "-q", "eval", str(tmp_path / "[wl]*"), "--activations", str(small_store))
    assert code == 2 and "l4 has layer=4 but wide has layer=9" in err and len(err.strip().splitlines()) == 1
    assert other_layer.is_dir()
    code, _, err = run_main(capsys, "-q", "eval", str(tmp_path / "nothing-*"), "--activations", str(small_store))
    assert code == 2 and "nothing-*: no SAE folder matches" in err


def test_compare_writes_the_json_and_a_self_contained_page_and_fills_the_tables(gemma, small_store, tmp_path):
    paths = _saes(tmp_path)
    out = tmp_path / "cmp"
    cfg = EvalConfig(activations=str(small_store), rows=400, ce_contexts=2, ood_corpus="", batch_size=2)
    c = compare_saes(cfg, paths, model=gemma, progress=False)
    assert [r.name for r in c.rows] == ["exact", "noisy", "topk"] and [r.format for r in c.rows] == ["featurescope"] * 3
    assert c.rows[0].front_ce and c.rows[0].kl is not None and c.rows[0].ood_loss_recovered is None
    written = write_comparison(c, out)
    data = json.loads((out / "compare.json").read_text())
    assert data["format"] == "featurescope.sae-compare" and len(data["saes"]) == 3
    assert data["saes"][1]["eval"]["l0"] == pytest.approx(c.results[1].reconstruction.l0)
    page = (out / "pareto.html").read_text()
    assert "<script src=" not in page and "Plotly" in page and len(page) > 1_000_000  # plotly.js inlined
    assert page.count("<tr>") == 4
    png = (out / "pareto.png").read_bytes()  # matplotlib is a dependency: the PNG is always written
    assert written.skipped_png == "" and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1440, 600)  # 12 × 5 inches at 120 dpi: both panels
    (out / "stranger.txt").write_text("x")
    with pytest.raises(FeaturescopeError, match="holds other files"):
        write_comparison(c, out)
    con = sqlite3.connect(":memory:")
    assert read_comparison(con) is None
    replace_comparison(con, data)
    stored = read_comparison(con)
    assert [s["name"] for s in stored["saes"]] == ["exact", "noisy", "topk"] and stored["layer"] == 9
    assert stored["saes"][0]["front_ce"] is True and stored["measured_on"] == data["measured_on"]
