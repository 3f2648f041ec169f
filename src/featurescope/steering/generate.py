"""Generate a baseline and a steered continuation of one prompt, with the same seed, side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor

from featurescope.errors import FeaturescopeError
from featurescope.models import LanguageModel
from featurescope.sae import SAE
from featurescope.steering.hook import SteeringHook, attach, make_hook
from featurescope.steering.values import MaxActivations


class Generation(NamedTuple):
    """What `generate` returns: the two continuations (new text only) and what was fed in."""

    baseline: str
    steered: str
    prompt: str
    """The text the model saw (after the chat template, if any)."""
    values: dict[int, float]
    """The absolute value c (or α) each feature was steered with."""


def encode_prompt(model: LanguageModel, prompt: str, *, chat: bool = False) -> tuple[Tensor, str]:
    """(token ids [1, T], text fed in) of `prompt`; with `chat`, one user turn in the tokenizer's chat template."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise FeaturescopeError("the prompt is empty")
    tok: Any = model.tokenizer
    if chat:
        if not getattr(tok, "chat_template", None):
            raise FeaturescopeError(f"{model.name} has no chat template: leave out `chat` (chat=False)",
                                    settings=("chat",))
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    else:
        text = prompt
        ids = tok(prompt, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:
        raise FeaturescopeError("the prompt has no tokens")
    return ids.to(model.device), text


def generation_kwargs(model: LanguageModel, *, max_new_tokens: int, temperature: float,
                      min_new_tokens: int | None = None) -> dict[str, Any]:
    """Keyword arguments for `model.hf.generate`: greedy when `temperature` is 0, else sampling at it."""
    if max_new_tokens <= 0:
        raise FeaturescopeError(f"max_new_tokens must be positive (got {max_new_tokens})")
    if temperature < 0:
        raise FeaturescopeError(f"temperature must be >= 0 (got {temperature})")
    tok: Any = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0, "pad_token_id": pad}
    if temperature > 0:
        kwargs["temperature"] = temperature
    else:  # greedy: neutralise sampling settings a model's generation_config may carry
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if min_new_tokens is not None:
        kwargs["min_new_tokens"] = min_new_tokens
    return kwargs


@torch.inference_mode()
def run_generate(model: LanguageModel, ids: Tensor, kwargs: Mapping[str, Any], seed: int) -> Tensor:
    """`model.hf.generate` on `ids` [1, T] after seeding torch's RNG with `seed`; returns the new token ids [n]."""
    torch.manual_seed(seed)
    out = model.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    return out[0, ids.shape[1]:]


def decode(model: LanguageModel, ids: Tensor | Sequence[int]) -> str:
    """Text of token ids, special tokens left out."""
    ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    return cast(str, model.tokenizer.decode(ids, skip_special_tokens=True))


def generate_pair(model: LanguageModel, hook: SteeringHook, layer: int, ids: Tensor, kwargs: Mapping[str, Any],
                  seed: int) -> tuple[Tensor, Tensor]:
    """New token ids without and with `hook` on block `layer`, each generated after seeding with `seed`."""
    baseline = run_generate(model, ids, kwargs, seed)
    with attach(model, hook, layer):
        steered = run_generate(model, ids, kwargs, seed)
    return baseline, steered


def generate(model: LanguageModel, sae: SAE, prompt: str, features: Mapping[int, Any], *, mode: str = "clamp",
             max_acts: MaxActivations | str | Any | None = None, max_new_tokens: int = 60, seed: int = 0,
             chat: bool = False, temperature: float = 0.0, layer: int | None = None,
             skip_special: bool = True) -> Generation:
    """Continue `prompt` without and with steering (`features` and `mode` as in `steer`), same seed for both.

    Greedy when `temperature` is 0 (the default), else sampled at that temperature; the model's other
    generation settings apply to both runs alike.
    """
    hook, layer = make_hook(model, sae, features, mode=mode, max_acts=max_acts, layer=layer,
                            skip_special=skip_special)
    ids, text = encode_prompt(model, prompt, chat=chat)
    kwargs = generation_kwargs(model, max_new_tokens=max_new_tokens, temperature=temperature)
    baseline, steered = generate_pair(model, hook, layer, ids, kwargs, seed)
    values = {i: float(v) for i, v in zip(hook.features, hook.values.tolist(), strict=True)}
    return Generation(decode(model, baseline), decode(model, steered), text, values)
