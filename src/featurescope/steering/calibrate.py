"""A per-feature steering value that keeps the text fluent and makes the concept show: what `steer` uses when no
value (or `auto`) is given.

The rule (docs/steering.md): greedy-continue a few fixed neutral prompts (`CalibrationConfig.prompts`, one
batch) for `max_new_tokens` tokens with the feature clamped at m × its max activation, for m = 1, 1.5, 2, 3,
5, 8, 10 in turn. A continuation is *degenerate* when

- the same token comes more than `max_run` times in a row ("outstanding outstanding outstanding outstanding"), or
- distinct token bigrams / all bigrams fall below min(`min_distinct`, the unsteered continuation's own ratio −
  `slack`) (loops such as "LIVE- LIVE- LIVE-"; the relative bar tolerates a base model that repeats itself).

A multiple is *fluent* when at least a `quorum` share of the prompts' continuations are not degenerate; the
ladder stops at the first multiple that is not. At each fluent multiple the *concept score* is measured: the
unsteered model reads each prompt with its steered continuation, and the score is the share of continuation
tokens on which the feature fires (≥ `fire_at` × its max activation) minus that share on the unsteered
continuations. auto is the smallest fluent multiple whose concept score reaches `near` × the best fluent one
(a smaller clamp keeps the text closer to the model's own); when the feature fires on none of the steered text,
the largest fluent multiple, and the reason says the concept did not show.
If 1× is already not fluent, 0.5× is tried; if that fails too, 1× (the feature's own maximum, which it reaches
in real text) is kept and the reason says so. `changed` records whether a multiple changed any continuation.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from featurescope.errors import FeaturescopeError
from featurescope.models import LanguageModel
from featurescope.models.language import pad_right
from featurescope.sae import SAE
from featurescope.steering.generate import decode, generation_kwargs
from featurescope.steering.hook import SteeringHook, attach, check_compatible

RULE_VERSION = 2
"""Bumped whenever the rule changes, so that cached choices of an older rule are recomputed."""
LADDER = (1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 10.0)
BELOW = 0.5
"""Tried only when 1× is degenerate."""
FALLBACK = 1.0

NEUTRAL_PROMPTS = ("I went for a walk and", "The best thing about the weekend is", "My favourite place to visit is")


@dataclass(frozen=True)
class CalibrationConfig:
    """Settings of the rule (module doc)."""

    prompts: tuple[str, ...] = NEUTRAL_PROMPTS
    multiples: tuple[float, ...] = LADDER
    max_new_tokens: int = 20
    max_run: int = 3
    min_distinct: float = 0.6
    slack: float = 0.15
    quorum: float = 0.6
    """Share of the prompts whose continuations must stay fluent (2 of 3)."""
    fire_at: float = 0.1
    """Share of the max activation from which the feature counts as firing when its concept is scored."""
    near: float = 0.75
    """auto takes the smallest fluent multiple whose concept score is at least this share of the best one."""
    mode: str = "clamp"

    def needed(self) -> int:
        """How many continuations must stay fluent for a multiple to be fluent."""
        return max(1, math.ceil(self.quorum * len(self.prompts) - 1e-9))

    def key(self) -> str:
        """A short digest of the rule's settings (part of the cache key)."""
        text = repr((RULE_VERSION, self.prompts, self.multiples, self.max_new_tokens, self.max_run,
                     self.min_distinct, self.slack, self.quorum, self.fire_at, self.near,
                     self.mode))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


class Fluency(NamedTuple):
    """Repetition measures of one continuation's token ids."""

    run: int
    """The longest run of one token repeated back to back."""
    distinct: float
    """Distinct token bigrams / all bigrams (1.0 when there are fewer than two tokens)."""


class Trial(NamedTuple):
    """The continuations at one multiple and the verdict on them."""

    multiple: float
    value: float
    texts: list[str]
    fluency: list[Fluency]
    fluent: bool
    changed: bool
    """Whether any continuation differs from the unsteered one."""
    concept: float = 0.0
    """Share of the continuations' tokens on which the feature fires, minus that share unsteered (module doc)."""


class Calibration(NamedTuple):
    """What `calibrate_feature` returns (or the cache gives back)."""

    feature: int
    mode: str
    multiple: float
    value: float
    max_activation: float
    reason: str
    trials: list[Trial]
    baseline: list[str]
    cached: bool = False


def fluency(ids: list[int]) -> Fluency:
    """Longest same-token run and distinct-bigram ratio of `ids`."""
    run = best = 0
    prev = None
    for t in ids:
        run = run + 1 if t == prev else 1
        best = max(best, run)
        prev = t
    pairs = list(itertools.pairwise(ids))
    return Fluency(best, len(set(pairs)) / len(pairs) if pairs else 1.0)


def is_fluent(f: Fluency, base: Fluency, cfg: CalibrationConfig) -> bool:
    """The rule of the module doc for one continuation, given the unsteered one's measures."""
    return f.run <= cfg.max_run and f.distinct >= min(cfg.min_distinct, base.distinct - cfg.slack)


@torch.inference_mode()
def generate_batch(model: LanguageModel, prompts: tuple[str, ...], max_new_tokens: int,
                   hook: SteeringHook | None = None, layer: int = 0) -> list[list[int]]:
    """Greedy continuations (new token ids, special tokens dropped) of `prompts` in one left-padded batch."""
    tok: Any = model.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(list(prompts), return_tensors="pt", padding=True)
    finally:
        tok.padding_side = side
    ids = enc["input_ids"].to(model.device)
    kwargs = generation_kwargs(model, max_new_tokens=max_new_tokens, temperature=0.0)
    with attach(model, hook, layer) if hook is not None else contextlib.nullcontext():
        out = model.hf.generate(input_ids=ids, attention_mask=enc["attention_mask"].to(model.device), **kwargs)
    special = model.special_ids
    return [[t for t in row.tolist() if t not in special] for row in out[:, ids.shape[1]:]]


@torch.inference_mode()
def firing_share(model: LanguageModel, sae: SAE, layer: int, prompts: tuple[str, ...], continuations: list[list[int]],
                 feature: int, threshold: float) -> list[float]:
    """Per prompt: the share of its continuation's tokens at which `feature` ≥ `threshold` when the unsteered
    model reads the prompt followed by the continuation (one right-padded batch; 0.0 for an empty one)."""
    tok: Any = model.tokenizer
    heads = [list(tok(p)["input_ids"]) for p in prompts]
    rows = [h + c for h, c in zip(heads, continuations, strict=True)]
    ids, mask = pad_right(rows)
    acts = sae.encode(model.residual(ids, layer, attention_mask=mask))[..., feature]
    out = []
    for j, (h, c) in enumerate(zip(heads, continuations, strict=True)):
        a = acts[j, len(h):len(h) + len(c)]
        out.append(float(((a >= threshold) & (a > 0)).float().mean()) if len(c) else 0.0)
    return out


class _Run(NamedTuple):
    """What every trial of one calibration shares."""

    model: LanguageModel
    sae: SAE
    layer: int
    feature: int
    top: float
    cfg: CalibrationConfig
    base_ids: list[list[int]]
    base_flu: list[Fluency]
    base_share: float


def _share(r: _Run, ids: list[list[int]]) -> float:
    shares = firing_share(r.model, r.sae, r.layer, r.cfg.prompts, ids, r.feature, r.cfg.fire_at * r.top)
    return sum(shares) / len(shares)


def _trial(r: _Run, m: float) -> Trial:
    hook = SteeringHook(r.sae, {r.feature: m * r.top}, r.cfg.mode, r.model.special_ids)
    ids = generate_batch(r.model, r.cfg.prompts, r.cfg.max_new_tokens, hook, r.layer)
    flu = [fluency(x) for x in ids]
    ok = sum(is_fluent(f, b, r.cfg) for f, b in zip(flu, r.base_flu, strict=True)) >= r.cfg.needed()
    concept = _share(r, ids) - r.base_share if ok else 0.0
    texts = [decode(r.model, x) for x in ids]
    return Trial(m, m * r.top, texts, flu, ok, ids != r.base_ids, concept)


def _why_not(t: Trial, cfg: CalibrationConfig) -> str:
    worst = min(range(len(t.fluency)), key=lambda j: (t.fluency[j].distinct, -t.fluency[j].run))
    f = t.fluency[worst]
    what = (f"a token repeated {f.run}× in a row" if f.run > cfg.max_run
            else f"distinct bigrams {f.distinct:.2f}")
    return f"{t.multiple:g}x degenerates ({what}: {t.texts[worst][:40]!r})"


def choose(trials: list[Trial], cfg: CalibrationConfig) -> tuple[float, str]:
    """(multiple, reason) by the rule of the module doc, from the trials in the order they were run."""
    fluent = [t for t in trials if t.fluent]
    if not fluent:
        return FALLBACK, f"no multiple tried stays fluent ({_why_not(trials[0], cfg)}); 1x, the feature's own maximum"
    failed = next((t for t in trials if not t.fluent and t.multiple > fluent[-1].multiple), None)
    limit = (_why_not(failed, cfg) if failed is not None
             else f"every multiple up to {cfg.multiples[-1]:g}x stays fluent")
    top = max(t.concept for t in fluent)
    if top > 0:
        best = min((t for t in fluent if t.concept >= cfg.near * top), key=lambda t: t.multiple)
        reason = (f"the smallest fluent multiple at which the feature fires on what it makes the model write "
                  f"about as much as at the best one (+{best.concept:.0%} of the tokens of {len(cfg.prompts)} "
                  f"neutral continuations; best +{top:.0%}); {limit}")
    else:
        best = fluent[-1]
        reason = (f"the largest multiple whose neutral continuations stay fluent; the feature does not fire on the "
                  f"steered text at any fluent multiple, so its concept may not show; {limit}")
    if not best.changed:
        reason += "; it leaves the continuations unchanged"
    return best.multiple, reason


def calibrate_feature(model: LanguageModel, sae: SAE, feature: int, max_activation: float,
                      cfg: CalibrationConfig | None = None) -> Calibration:
    """Choose the steering multiple of `feature` by the rule of the module doc (on `model`'s device)."""
    cfg = cfg or CalibrationConfig()
    if not max_activation > 0:
        raise FeaturescopeError(f"feature {feature} never fired in the database (max activation "
                                f"{max_activation:g}): auto needs a max activation; give an absolute value")
    if not cfg.prompts or not cfg.multiples:
        raise FeaturescopeError("the calibration needs prompts and multiples")
    layer = check_compatible(model, sae)
    sae.to(model.device)
    base_ids = generate_batch(model, cfg.prompts, cfg.max_new_tokens)
    r = _Run(model, sae, layer, feature, max_activation, cfg, base_ids, [fluency(x) for x in base_ids], 0.0)
    r = r._replace(base_share=_share(r, base_ids))
    trials: list[Trial] = []
    for m in cfg.multiples:
        trials.append(_trial(r, m))
        if not trials[-1].fluent:
            break
    if not any(t.fluent for t in trials) and BELOW not in cfg.multiples:
        trials.append(_trial(r, BELOW))
    multiple, reason = choose(trials, cfg)
    baseline = [decode(model, x) for x in base_ids]
    return Calibration(feature, cfg.mode, multiple, multiple * max_activation, max_activation, reason, trials,
                       baseline)


def fingerprint(model: LanguageModel, sae: SAE, feature: int, cfg: CalibrationConfig) -> str:
    """A digest of what the choice depends on: the model, the feature's encoder and decoder rows, the rule."""
    h = hashlib.sha256(f"{model.name}|{sae.cfg.layer}|{sae.cfg.architecture}|{cfg.key()}".encode())
    for t in (sae.W_dec.detach()[feature], sae.W_enc_rows.detach()[feature], sae.b_enc.detach()[feature]):
        h.update(_bytes(t))
    return h.hexdigest()[:16]


def _bytes(t: Tensor) -> bytes:
    return t.float().cpu().contiguous().numpy().tobytes()
