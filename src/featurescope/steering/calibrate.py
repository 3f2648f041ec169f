"""A per-feature steering value that keeps the text fluent: what `steer` uses when no value (or `auto`) is given.

The rule (docs/steering.md): greedy-continue a few fixed neutral prompts (`CalibrationConfig.prompts`, one
batch) for `max_new_tokens` tokens with the feature clamped at m × its max activation, for m = 1, 1.5, 2, 3,
5, 8, 10 in turn, and stop at the first m whose continuation of any prompt is *degenerate*:

- the same token more than `max_run` times in a row ("outstanding outstanding outstanding outstanding"), or
- distinct token bigrams / all bigrams below min(`min_distinct`, the unsteered continuation's own ratio −
  `slack`) (loops such as "LIVE- LIVE- LIVE-"; the relative bar tolerates a base model that repeats itself).

The chosen multiple is the last fluent one before that. If 1× is already degenerate, 0.5× is tried; if that
fails too, 1× (the feature's own maximum, which it reaches in real text) is kept and the reason says so.
`effect` records whether the chosen multiple changed any continuation at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from featurescope.errors import FeaturescopeError
from featurescope.models import LanguageModel
from featurescope.sae import SAE
from featurescope.steering.generate import decode, generation_kwargs
from featurescope.steering.hook import SteeringHook, attach, check_compatible

RULE_VERSION = 1
"""Bumped whenever the rule changes, so that cached choices of an older rule are recomputed."""
LADDER = (1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 10.0)
BELOW = 0.5
"""Tried only when 1× is degenerate."""
FALLBACK = 1.0

NEUTRAL_PROMPTS = ("I went for a walk and", "The best thing about the weekend is", "My favourite place to visit is")


@dataclass(frozen=True)
class CalibrationConfig:
    """Settings of the fluency rule (module doc)."""

    prompts: tuple[str, ...] = NEUTRAL_PROMPTS
    multiples: tuple[float, ...] = LADDER
    max_new_tokens: int = 20
    max_run: int = 3
    min_distinct: float = 0.6
    slack: float = 0.15
    mode: str = "clamp"

    def key(self) -> str:
        """A short digest of the rule's settings (part of the cache key)."""
        text = repr((RULE_VERSION, self.prompts, self.multiples, self.max_new_tokens, self.max_run,
                     self.min_distinct, self.slack, self.mode))
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


def _trial(model: LanguageModel, sae: SAE, layer: int, feature: int, m: float, top: float, cfg: CalibrationConfig,
           base_ids: list[list[int]], base_flu: list[Fluency]) -> Trial:
    hook = SteeringHook(sae, {feature: m * top}, cfg.mode, model.special_ids)
    ids = generate_batch(model, cfg.prompts, cfg.max_new_tokens, hook, layer)
    flu = [fluency(x) for x in ids]
    ok = all(is_fluent(f, b, cfg) for f, b in zip(flu, base_flu, strict=True))
    texts = [decode(model, x) for x in ids]
    return Trial(m, m * top, texts, flu, ok, ids != base_ids)


def _why_not(t: Trial, cfg: CalibrationConfig) -> str:
    worst = min(range(len(t.fluency)), key=lambda j: (t.fluency[j].distinct, -t.fluency[j].run))
    f = t.fluency[worst]
    what = (f"a token repeated {f.run}× in a row" if f.run > cfg.max_run
            else f"distinct bigrams {f.distinct:.2f}")
    return f"{t.multiple:g}x degenerates ({what}: {t.texts[worst][:40]!r})"


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
    base_flu = [fluency(x) for x in base_ids]
    trials: list[Trial] = []
    chosen: Trial | None = None
    for m in cfg.multiples:
        t = _trial(model, sae, layer, feature, m, max_activation, cfg, base_ids, base_flu)
        trials.append(t)
        if not t.fluent:
            break
        chosen = t
    failed = next((t for t in trials if not t.fluent), None)
    if chosen is None and BELOW not in cfg.multiples:
        t = _trial(model, sae, layer, feature, BELOW, max_activation, cfg, base_ids, base_flu)
        trials.append(t)
        chosen = t if t.fluent else None
    n = len(cfg.prompts)
    if chosen is None:
        multiple = FALLBACK
        reason = f"no multiple tried stays fluent ({_why_not(trials[0], cfg)}); 1x, the feature's own maximum"
    else:
        multiple = chosen.multiple
        reason = (f"the largest multiple whose {n} neutral continuations stay fluent; "
                  + (_why_not(failed, cfg) if failed is not None and failed.multiple > multiple
                     else f"every multiple up to {cfg.multiples[-1]:g}x stays fluent"))
        if not chosen.changed:
            reason += "; it leaves the continuations unchanged"
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
