"""Steering: the clamp holds at generated positions with a KV cache, every mode edits exactly, values resolve."""

from __future__ import annotations

import pytest
import torch

from featurescope.errors import FeaturescopeError
from featurescope.sae import SAE, SAEConfig
from featurescope.steering.generate import encode_prompt, generate, generation_kwargs
from featurescope.steering.hook import FeatureReader, SteeringHook, feature_directions, steer
from featurescope.steering.values import SteerValue, parse_value, parse_values, resolve_values
from steering_helpers import LAYER, PROMPT, Recorder, make_db, orthogonal_sae, trained_sae

LONG_PROMPT = "The Golden Gate Bridge is a suspension bridge spanning the strait between San Francisco Bay and"


@pytest.fixture(scope="module")
def topk_sae(small_store, tmp_path_factory):
    return trained_sae(small_store, tmp_path_factory.mktemp("steer") / "sae")


def _greedy(model, ids, n, **extra):
    kwargs = {**generation_kwargs(model, max_new_tokens=n, temperature=0.0), **extra}
    with torch.inference_mode():
        return model.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)[0, ids.shape[1]:]


def _steered_run(model, sae, features, ids, n, **steer_kwargs):
    """Greedy generation under `steer`, with block L's output recorded before and after the steering hook."""
    pre, post = Recorder(), Recorder()
    block = model.blocks[LAYER]
    first = block.register_forward_hook(pre, prepend=True)
    try:
        with steer(model, sae, features, **steer_kwargs) as hook:
            last = block.register_forward_hook(post)
            try:
                new = _greedy(model, ids, n)
            finally:
                last.remove()
    finally:
        first.remove()
    return pre.outputs, post.outputs, new, hook


def test_clamp_holds_at_generated_positions_with_kv_cache(gemma):
    sae = orthogonal_sae()
    ids, _ = encode_prompt(gemma, PROMPT)
    n, t = 6, ids.shape[1]
    pre, post, new, hook = _steered_run(gemma, sae, {2: 130.0, 5: 80.0}, ids, n)
    # one pass for the prompt, then each generated token passes through the hook once, alone
    assert [h.shape[1] for h in post] == [t] + [1] * (n - 1)
    assert hook.calls == n and hook.positions == (t - 1) + (n - 1)  # BOS is left alone
    others = [0, 1, 3, 4, 6, 7]
    for x, y in zip(pre, post, strict=True):
        start = 1 if x.shape[1] > 1 else 0
        fx, fy = sae.encode(x[0, start:]), sae.encode(y[0, start:])
        torch.testing.assert_close(fy[:, 2], torch.full_like(fy[:, 2], 130.0), atol=2e-3, rtol=0)
        torch.testing.assert_close(fy[:, 5], torch.full_like(fy[:, 5], 80.0), atol=2e-3, rtol=0)
        torch.testing.assert_close(fy[:, others], fx[:, others], atol=2e-3, rtol=0)
        assert (fx[:, 2] - 130.0).abs().min() > 1.0  # the clamp really moved it
    assert torch.equal(post[0][0, 0], pre[0][0, 0])  # BOS position untouched
    assert not torch.equal(new, _greedy(gemma, ids, n))


class _PromptOnly:
    """A broken steering hook that edits only multi-token passes: the bug a KV cache hides (TransformerLens #500)."""

    def __init__(self, hook: SteeringHook) -> None:
        self.hook = hook

    def __call__(self, h):
        return self.hook(h) if h.shape[1] > 1 else h


def test_kv_cache_and_no_cache_give_the_same_steered_tokens(gemma):
    sae = orthogonal_sae()
    ids, _ = encode_prompt(gemma, PROMPT)
    with steer(gemma, sae, {2: 115.0}) as hook:
        cached = _greedy(gemma, ids, 8, use_cache=True)
        uncached = _greedy(gemma, ids, 8, use_cache=False)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, _greedy(gemma, ids, 8))
    with gemma.splice(LAYER, _PromptOnly(hook)):
        prompt_only = _greedy(gemma, ids, 8, use_cache=True)
    assert not torch.equal(prompt_only, cached)  # so the equality above does test generated positions


def test_multi_feature_clamp_edits_exactly_and_keeps_the_error_term(gemma, topk_sae):
    ids, _ = encode_prompt(gemma, LONG_PROMPT)
    f0 = topk_sae.encode(gemma.residual(ids, LAYER)[0, 1:]).detach()
    a, b = f0.sum(0).topk(2).indices.tolist()  # the two features most active on the prompt
    values = {a: 4.0 * float(f0[:, a].max()), b: 0.0}
    pre, post, _, _ = _steered_run(gemma, topk_sae, values, ids, 5)
    d = feature_directions(topk_sae, [a, b])
    c = torch.tensor(list(values.values()))
    for x, y in zip(pre, post, strict=True):
        x, y = x[0], y[0]
        f = topk_sae.encode(x)
        edit = (c - f[:, [a, b]]) @ d
        if x.shape[0] > 1:
            edit[0] = 0  # BOS
        torch.testing.assert_close(y - x, edit, atol=2e-3, rtol=1e-4)
        # SAE reconstruction with f_a := c_a, f_b := 0, plus the error term x − x̂ of the *unhooked* x
        clamped = f.clone()
        clamped[1 if x.shape[0] > 1 else 0:, [a, b]] = c
        torch.testing.assert_close(y - topk_sae.decode(clamped), x - topk_sae.decode(f), atol=2e-2, rtol=1e-4)
    assert (post[0][0, 1:] - pre[0][0, 1:]).norm(dim=-1).min() > 1.0


def test_conditional_mode_leaves_positions_where_the_feature_is_zero(gemma, topk_sae):
    ids, _ = encode_prompt(gemma, LONG_PROMPT)
    f0 = topk_sae.encode(gemma.residual(ids, LAYER)[0, 1:]).detach()
    firing = (f0 > 0).float().mean(0)
    i = int(torch.where((firing > 0.2) & (firing < 0.8), firing, torch.zeros_like(firing)).argmax())
    assert 0 < firing[i] < 1
    c = 3.0 * float(f0[:, i].max())
    pre, post, _, _ = _steered_run(gemma, topk_sae, {i: c}, ids, 4, mode="conditional")
    d = feature_directions(topk_sae, [i])[0]
    seen = {True: 0, False: 0}
    for x, y in zip(pre, post, strict=True):
        x, y = x[0], y[0]
        f = topk_sae.encode(x)[:, i]
        fires = f > 0
        if x.shape[0] > 1:
            fires[0] = False  # BOS
        assert torch.equal(y[~fires], x[~fires])
        torch.testing.assert_close(y[fires] - x[fires], (c - f[fires])[:, None] * d, atol=2e-3, rtol=1e-4)
        seen[True] += int(fires.sum())
        seen[False] += int((~fires).sum())
    assert seen[True] > 0 and seen[False] > 1


def test_additive_mode_adds_exactly_alpha_times_the_direction(gemma, topk_sae):
    ids, _ = encode_prompt(gemma, PROMPT)
    pre, post, _, _ = _steered_run(gemma, topk_sae, {7: 7.5}, ids, 4, mode="add")
    d = feature_directions(topk_sae, [7])[0]
    assert d.norm() > 0
    for x, y in zip(pre, post, strict=True):
        start = 1 if x.shape[1] > 1 else 0
        torch.testing.assert_close(y[0, start:] - x[0, start:], (7.5 * d).expand(x.shape[1] - start, -1),
                                   atol=2e-3, rtol=1e-4)
    assert torch.equal(post[0][0, 0], pre[0][0, 0])


def test_all_positions_steers_bos_too(gemma):
    sae = orthogonal_sae()
    ids, _ = encode_prompt(gemma, PROMPT)
    _, post, _, hook = _steered_run(gemma, sae, {2: 130.0}, ids, 1, skip_special=False)
    assert hook.positions == ids.shape[1]
    assert float(sae.encode(post[0][0, 0]).detach()[2]) == pytest.approx(130.0, abs=2e-2)


def test_generate_baseline_is_plain_generation_with_the_same_seed(gemma):
    sae = orthogonal_sae()
    result = generate(gemma, sae, PROMPT, {2: 130.0}, max_new_tokens=5, seed=3, temperature=0.9)
    ids, _ = encode_prompt(gemma, PROMPT)
    torch.manual_seed(3)
    plain = gemma.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=True,
                              temperature=0.9, pad_token_id=gemma.tokenizer.pad_token_id)
    assert result.baseline == gemma.tokenizer.decode(plain[0, ids.shape[1]:], skip_special_tokens=True)
    assert result.steered != result.baseline and result.values == {2: 130.0} and result.prompt == PROMPT
    noop = generate(gemma, sae, PROMPT, {2: 0.0}, mode="add", max_new_tokens=5, seed=3, temperature=0.9)
    assert noop.steered == noop.baseline == result.baseline  # the steered run is sampled with the same seed


def test_values_parse_and_resolve():
    assert parse_value("5x") == SteerValue(5.0, True) and parse_value("-2x") == SteerValue(-2.0, True)
    assert parse_value("0") == SteerValue(0.0, False) and parse_value("12.5") == SteerValue(12.5, False)
    assert parse_value(" 10 × ") == SteerValue(10.0, True) and parse_value(3) == SteerValue(3.0, False)
    assert str(parse_value("-2x")) == "-2x" and parse_values("-2,0,5x") == [SteerValue(-2.0, True),
                                                                             SteerValue(0.0, True),
                                                                             SteerValue(5.0, True)]
    for bad in ("abc", "x", "nan", "inf", "", True, None):
        with pytest.raises(FeaturescopeError):
            parse_value(bad)
    maxes = torch.tensor([1.0, 2.0, 0.0, 4.0])
    assert resolve_values({1: "5x", 3: "-0.5x", 0: "0", 2: 12.5}, 4, maxes) == {1: 10.0, 3: -2.0, 0: 0.0, 2: 12.5}
    assert resolve_values({1: "2x"}, 4, {1: 3.0}) == {1: 6.0}
    with pytest.raises(FeaturescopeError, match="max activation, which is unknown.*`db`"):
        resolve_values({1: "5x"}, 4, None)
    with pytest.raises(FeaturescopeError, match="feature 2 never fired"):
        resolve_values({2: "5x"}, 4, maxes)
    with pytest.raises(FeaturescopeError, match="out of range"):
        resolve_values({4: 1.0}, 4, maxes)
    with pytest.raises(FeaturescopeError, match="no features"):
        resolve_values({}, 4, maxes)


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "topk", "batchtopk"])
def test_feature_reader_equals_encode(arch):
    sae = SAE.create(SAEConfig(d_in=16, d_sae=64, architecture=arch, k=8 if "topk" in arch else None), seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(64, generator=g) * 0.3)
        sae.b_dec.copy_(torch.randn(16, generator=g))
        sae.input_scale.fill_(0.5)
        if arch == "jumprelu":
            sae.log_threshold.copy_(torch.randn(64, generator=g) * 0.5 - 1)
        if arch == "batchtopk":
            sae.threshold.fill_(0.3)
    x = torch.randn(3, 50, 16, generator=g) * 2
    idx = [0, 5, 17, 63]
    expected = sae.encode(x)[..., idx]
    assert (expected > 0).any() and (expected == 0).any()
    torch.testing.assert_close(FeatureReader(sae, idx)(x), expected, atol=1e-5, rtol=1e-5)


def test_multiples_resolve_from_the_feature_database(gemma, tmp_path):
    sae = orthogonal_sae()
    maxes = torch.tensor([10.0, 20.0, 100.0, 0.0, 5.0, 6.0, 7.0, 8.0])
    db = make_db(tmp_path / "features.db", sae, maxes)
    with steer(gemma, sae, {2: "1.3x", 4: "-2x", 5: 3.0}, max_acts=str(db)) as hook:
        assert dict(zip(hook.features, hook.values.tolist(), strict=True)) == pytest.approx(
            {2: 130.0, 4: -10.0, 5: 3.0})
    result = generate(gemma, sae, PROMPT, {2: "1.3x"}, max_acts=db, max_new_tokens=1)
    assert result.values == pytest.approx({2: 130.0})
    with pytest.raises(FeaturescopeError, match="feature 3 never fired"):
        generate(gemma, sae, PROMPT, {3: "1x"}, max_acts=db, max_new_tokens=1)
    other = make_db(tmp_path / "other.db", orthogonal_sae(n=4), torch.ones(4))
    with pytest.raises(FeaturescopeError, match="SAE with 4 features; this one has 8"):
        generate(gemma, sae, PROMPT, {2: "1x"}, max_acts=other, max_new_tokens=1)
    wrong_layer = make_db(tmp_path / "l4.db", orthogonal_sae(layer=4), maxes)
    with pytest.raises(FeaturescopeError, match="from layer 4 but the SAE reads layer 9"):
        generate(gemma, sae, PROMPT, {2: "1x"}, max_acts=wrong_layer, max_new_tokens=1)


def test_bad_inputs_are_clear_errors(gemma):
    sae = orthogonal_sae()
    cases = [
        ({"sae": sae, "features": {8: 1.0}}, "feature 8 is out of range: the SAE has features 0..7"),
        ({"sae": sae, "features": {-1: 1.0}}, "feature -1 is out of range"),
        ({"sae": orthogonal_sae(d=32), "features": {0: 1.0}}, "the SAE reads d_in=32 but default has d_model=640"),
        ({"sae": orthogonal_sae(layer=30), "features": {0: 1.0}}, "layer 30 is out of range"),
        ({"sae": sae, "features": {0: 1.0}, "layer": 4}, "the SAE reads layer 9, not layer 4"),
        ({"sae": sae, "features": {0: "5x"}}, "max activation, which is unknown"),
        ({"sae": sae, "features": {0: 1.0}, "prompt": "  "}, "the prompt is empty"),
        ({"sae": sae, "features": {0: 1.0}, "mode": "boost"}, "unknown steering mode 'boost'"),
        ({"sae": sae, "features": {0: 1.0}, "chat": True}, "has no chat template"),
        ({"sae": sae, "features": {0: "5z"}}, "bad steering value"),
    ]
    for kwargs, message in cases:
        kwargs = {"prompt": PROMPT, "max_new_tokens": 1, **kwargs}
        with pytest.raises(FeaturescopeError, match=message):
            generate(gemma, kwargs.pop("sae"), kwargs.pop("prompt"), kwargs.pop("features"), **kwargs)


def test_chat_template_prompt_and_its_special_tokens_are_left_alone():
    from featurescope.models import load_model

    smol = load_model("smollm2", device="cpu")  # SmolLM2-135M-Instruct has a chat template
    sae = orthogonal_sae(d=smol.d_model, layer=15)
    ids, text = encode_prompt(smol, "Hi", chat=True)
    assert "<|im_start|>user\nHi<|im_end|>" in text and text.rstrip().endswith("assistant")
    special = sum(t in smol.special_ids for t in ids[0].tolist())
    assert special >= 3
    with steer(smol, sae, {0: 150.0}) as hook:
        _greedy(smol, ids, 1)
    assert hook.calls == 1 and hook.positions == ids.shape[1] - special
    result = generate(smol, sae, "Hi", {0: 150.0}, chat=True, max_new_tokens=3)
    assert result.prompt == text and result.steered != result.baseline
