"""Models: built-in loading, the stop-after-L forward, splicing, and other families."""

from __future__ import annotations

import time

import pytest
import torch

from featurescope.errors import FeaturescopeError
from featurescope.models import LanguageModel, load_model


class _Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, module, args, output) -> None:
        self.calls += 1


def _ids(model: LanguageModel, text: str = "The Golden Gate Bridge is a suspension bridge in") -> torch.Tensor:
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor([[model.bos_id, *ids]])


def test_default_is_gemma3_and_loads_fast_from_cache(gemma):
    assert gemma.family == "gemma3_text"
    assert (gemma.n_layers, gemma.d_model) == (18, 640)
    assert gemma.bos_id == 2 and 2 in gemma.special_ids
    start = time.perf_counter()
    again = load_model("default", device="cpu")
    assert time.perf_counter() - start < 30  # the GGUF conversion (~45 s) is cached
    ids = _ids(gemma)
    assert torch.equal(again.residual(ids, 3), gemma.residual(ids, 3))


def test_residual_matches_full_forward_and_stops_after_layer(gemma):
    ids = _ids(gemma)
    with torch.inference_mode():
        hidden = gemma.hf(input_ids=ids, output_hidden_states=True).hidden_states
    later, head = _Counter(), _Counter()
    handles = [gemma.blocks[10].register_forward_hook(later),
               gemma.hf.get_output_embeddings().register_forward_hook(head)]
    try:
        resid = gemma.residual(ids, 9)
    finally:
        for h in handles:
            h.remove()
    assert later.calls == 0 and head.calls == 0
    torch.testing.assert_close(resid, hidden[10])  # hidden_states[i + 1] is block i's output
    norms = resid[0].norm(dim=-1)
    assert norms[0] > 5 * norms[1:].median()  # the BOS position is an outlier


def test_splice_identity_keeps_logits_and_edit_changes_them(gemma):
    ids = _ids(gemma)
    clean = gemma.logits(ids)
    with gemma.splice(9, lambda h: h.clone()):
        same = gemma.logits(ids)
    torch.testing.assert_close(same, clean)
    with gemma.splice(9, torch.zeros_like):
        zeroed = gemma.logits(ids)
    assert (zeroed - clean).abs().max() > 1.0


def test_splice_sees_each_generated_token_with_kv_cache(gemma):
    seen: list[int] = []

    def record(h: torch.Tensor) -> torch.Tensor:
        seen.append(h.shape[1])
        return h

    ids = _ids(gemma)
    with gemma.splice(9, record), torch.inference_mode():
        gemma.hf.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
    assert seen[0] == ids.shape[1] and seen[1:] == [1, 1, 1]


def test_layer_out_of_range(gemma):
    with pytest.raises(FeaturescopeError, match="out of range"):
        gemma.residual(_ids(gemma), 18)


def test_smollm2_llama_family():
    model = load_model("smollm2", device="cpu")
    assert model.family == "llama" and model.n_layers == 30 and model.d_model == 576
    ids = _ids(model)
    resid = model.residual(ids, 15)
    assert resid.shape == (1, ids.shape[1], 576)
    assert model.final_norm is not None


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_other_families_from_local_folder(family, tmp_path, gemma):
    from transformers import AutoModelForCausalLM, GPT2Config, Qwen2Config

    vocab = len(gemma.tokenizer)
    if family == "gpt2":
        cfg = GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=vocab, bos_token_id=2, eos_token_id=1)
    else:
        cfg = Qwen2Config(num_hidden_layers=3, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                          num_key_value_heads=1, vocab_size=vocab, bos_token_id=2, eos_token_id=1)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    gemma.tokenizer.save_pretrained(tmp_path)
    model = load_model(str(tmp_path), device="cpu")
    assert model.family == family and model.n_layers == 3 and model.d_model == 32
    ids = _ids(model)
    with torch.inference_mode():
        hidden = model.hf(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(model.residual(ids, 1), hidden[2])
    clean = model.logits(ids)
    with model.splice(1, torch.zeros_like):
        assert not torch.allclose(model.logits(ids), clean)


def test_bad_model_names(tmp_path):
    with pytest.raises(FeaturescopeError, match="unknown model"):
        load_model("no-such-model")
    with pytest.raises(FeaturescopeError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(FeaturescopeError, match="no such .gguf"):
        load_model(str(tmp_path / "x.gguf"))
