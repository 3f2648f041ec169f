"""Sweep one feature's steering value over multiples of its max activation and measure what each one does.

For every multiple m (value c = m × max activation), and for the unsteered model as a reference:

- `act_hooked`: mean f_i at the generated tokens, read at layer L right after the edit (the clamp holding);
- `act_text` / `fire_text`: mean f_i and the fraction of tokens with f_i > 0 when the *unsteered* model reads
  the steered continuation (does the text itself now carry the feature?);
- `kl`, `delta_ce`: mean KL(clean ‖ steered) of the next-token distributions and the change in cross-entropy
  on a reference text (the fluency cost);
- `top_prob_ratio`, `top_rate`: how much probability the feature's top logit-effect tokens gain on the
  reference text (steered / clean), and the fraction of generated tokens that are among them.
"""

from __future__ import annotations

import itertools
import math
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from featurescope.config_fields import option
from featurescope.corpus import contexts, open_corpus
from featurescope.errors import FeaturescopeError
from featurescope.models import LanguageModel
from featurescope.sae import SAE
from featurescope.steering.generate import decode, encode_prompt, generation_kwargs, run_generate
from featurescope.steering.hook import MODES, FeatureReader, SteeringHook, attach, make_hook
from featurescope.steering.values import MaxActivations, check_feature, max_activation, parse_values


@dataclass
class SweepConfig:
    """Settings of `featurescope steer-sweep`."""

    sae: str = option("", "SAE folder", required=True)
    feature: int = option(-1, "the feature to sweep", required=True)
    db: str = option("", "feature database: max activation and top logit-effect tokens")
    max_activation: float | None = option(None, "the feature's max activation, if there is no --db")
    multiples: str = option("-4,-2,0,1,2,5,10", "multiples of the max activation, comma-separated")
    mode: str = option("clamp", "clamp, add (x + α·d) or conditional (clamp where the feature fires)",
                       choices=MODES)
    prompt: str = option("I went for a walk and", "prompt whose continuation is measured")
    chat: bool = option(False, "wrap the prompt in the tokenizer's chat template")
    max_new_tokens: int = option(24, "tokens generated per multiple")
    temperature: float = option(0.0, "0 = greedy; else sample at this temperature")
    seed: int = option(0, "seed of every generation")
    text: str = option("wiki-en", "reference text for KL / CE: a corpus name or a .txt/.jsonl path")
    text_seed: int = option(12345, "document order of the reference corpus")
    contexts: int = option(4, "reference contexts")
    ctx_len: int = option(64, "tokens per reference context")
    batch_size: int = option(2, "reference contexts per forward pass")
    top_tokens: int = option(10, "how many top logit-effect tokens to follow")
    model: str = option("", "model to load; empty means the SAE's own")
    device: str = option("auto", "cpu, cuda or auto")
    out: str = option("steer-sweep", "folder for feature_N.json and feature_N.html")


class SweepRow(NamedTuple):
    """Measurements at one multiple (`multiple` None: the unsteered model)."""

    multiple: float | None
    value: float | None
    act_hooked: float
    act_text: float
    fire_text: float
    kl: float
    ce: float
    delta_ce: float
    top_prob: float
    top_prob_ratio: float
    top_rate: float
    text: str


class SweepResult(NamedTuple):
    """What `sweep` returns; `rows[0]` is the unsteered baseline."""

    feature: int
    mode: str
    max_activation: float
    top_tokens: list[tuple[int, str]]
    rows: list[SweepRow]
    prompt: str
    reference_tokens: int


def top_token_ids(model: LanguageModel, sae: SAE, feature: int, k: int, store: Any = None) -> list[int]:
    """The feature's top-k logit-effect tokens: from the database when it has them, else computed the same way
    `analyze` does (W_U · (g ⊙ ŵ_i), g the final norm's gain)."""
    if store is not None:
        from featurescope.steering.values import store_top_tokens

        ids = store_top_tokens(store, feature, k)
        if ids:
            return ids
    from featurescope.analysis.logit_effects import logit_effects, norm_scale

    w_dec = sae.W_dec.detach()[feature : feature + 1]
    effects = logit_effects(w_dec, model.unembed, norm_scale(model.final_norm, model.d_model), n=k)
    return effects.top_tokens[0].tolist()


class ReadBack:
    """Forward hook after the steering one: f_i at the newest position of every pass but the first (the prompt)."""

    def __init__(self, reader: FeatureReader) -> None:
        self.reader = reader
        self.passes = 0
        self.values: list[Tensor] = []

    def __call__(self, module: nn.Module, args: object, output: object) -> None:
        h = output[0] if isinstance(output, tuple) else output
        self.passes += 1
        if self.passes > 1:
            self.values.append(self.reader(h[:, -1]).flatten().float().cpu())  # type: ignore[index]

    def mean(self) -> float:
        return float(torch.cat(self.values).mean()) if self.values else float("nan")


def reference_ids(model: LanguageModel, cfg: SweepConfig) -> Tensor:
    """The reference contexts [n, ctx_len] (BOS first)."""
    stream = contexts(open_corpus(cfg.text, seed=cfg.text_seed), model.tokenizer, ctx_len=cfg.ctx_len,
                      bos_id=model.bos_id)
    ids = torch.tensor(list(itertools.islice(stream, cfg.contexts)), dtype=torch.long)
    if ids.numel() == 0:
        raise FeaturescopeError(f"no reference contexts of {cfg.ctx_len} tokens in {cfg.text}")
    return ids


class _RefStats:
    """Running sums of KL, CE and top-token probability over reference positions."""

    def __init__(self) -> None:
        self.kl = self.ce = self.top = 0.0
        self.n = 0

    def add(self, logp: Tensor, clean: Tensor, targets: Tensor, top: Tensor) -> None:
        self.kl += float((clean.exp() * (clean - logp)).sum())
        self.ce += float(F.nll_loss(logp.flatten(0, 1), targets.flatten(), reduction="sum"))
        self.top += float(logp[..., top].exp().sum())
        self.n += targets.numel()


@torch.inference_mode()
def reference_stats(model: LanguageModel, hooks: list[tuple[SteeringHook | None, int]], ids: Tensor,
                    top: list[int], batch_size: int, progress: bool = False) -> list[_RefStats]:
    """KL / CE / top-token mass for each hook (None: unsteered) over `ids`, one clean pass per batch."""
    stats = [_RefStats() for _ in hooks]
    top_t = torch.tensor(top, dtype=torch.long, device=model.device)
    for s in tqdm(range(0, len(ids), batch_size), desc="reference text", disable=not progress, leave=False):
        batch = ids[s : s + batch_size].to(model.device)
        targets = batch[:, 1:]
        clean = F.log_softmax(model.logits(batch)[:, :-1].float(), dim=-1)
        for (hook, layer), st in zip(hooks, stats, strict=True):
            if hook is None:
                st.add(clean, clean, targets, top_t)
                continue
            with attach(model, hook, layer):
                logp = F.log_softmax(model.logits(batch)[:, :-1].float(), dim=-1)
            st.add(logp, clean, targets, top_t)
    return stats


def _generated_stats(model: LanguageModel, reader: FeatureReader, layer: int, prompt_ids: Tensor, new: Tensor,
                     top: set[int]) -> tuple[float, float, float]:
    """(mean f_i, fraction f_i > 0, fraction in `top`) over the generated tokens, read by the unsteered model."""
    new = new.cpu()
    keep = torch.tensor([t not in model.special_ids for t in new.tolist()], dtype=torch.bool)
    if not keep.any():
        return float("nan"), float("nan"), float("nan")
    full = torch.cat([prompt_ids[0].cpu(), new])[None]
    f = reader(model.residual(full, layer)[0, prompt_ids.shape[1]:]).flatten().float().cpu()[keep]
    rate = sum(t in top for t in new[keep].tolist()) / int(keep.sum())
    return float(f.mean()), float((f > 0).float().mean()), rate


def _nan_none(x: float) -> float | None:
    return None if isinstance(x, float) and math.isnan(x) else x


def sweep(cfg: SweepConfig, model: LanguageModel, sae: SAE, *, max_acts: MaxActivations | None = None,
          store: Any = None, progress: bool = True) -> SweepResult:
    """Measure generation and reference-text effects of steering `cfg.feature` at each of `cfg.multiples`."""
    feature = check_feature(cfg.feature, sae.cfg.d_sae)
    multiples = [v.amount for v in parse_values(cfg.multiples)]
    top_act = cfg.max_activation if cfg.max_activation is not None else max_activation(max_acts, feature)
    if top_act is None:
        raise FeaturescopeError("a sweep over multiples needs the feature's max activation: give `db` or "
                                "`max_activation`", settings=("db", "max_activation"))
    if not math.isfinite(top_act) or top_act <= 0:
        raise FeaturescopeError(f"feature {feature} never fired (max activation {top_act:g}): nothing to sweep")
    if cfg.top_tokens <= 0 or cfg.contexts <= 0 or cfg.batch_size <= 0:
        raise FeaturescopeError("`top_tokens`, `contexts` and `batch_size` must be positive",
                                settings=("top_tokens", "contexts", "batch_size"))
    prompt_ids, prompt_text = encode_prompt(model, cfg.prompt, chat=cfg.chat)
    kwargs = generation_kwargs(model, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    hooks: list[tuple[SteeringHook | None, int]] = [(None, 0)]
    for m in multiples:
        hooks.append(make_hook(model, sae, {feature: m * top_act}, mode=cfg.mode))
    layer = hooks[1][1]
    top = top_token_ids(model, sae, feature, cfg.top_tokens, store)
    reader = FeatureReader(sae, [feature])
    ref = reference_stats(model, hooks, reference_ids(model, cfg), top, cfg.batch_size, progress)
    clean = ref[0]
    rows = []
    for (hook, _), st, m in tqdm(list(zip(hooks, ref, [None, *multiples], strict=True)), desc="generations",
                                 disable=not progress, leave=False):
        back = ReadBack(reader)
        with ExitStack() as stack:
            if hook is not None:
                stack.enter_context(attach(model, hook, layer))
            stack.callback(model.blocks[layer].register_forward_hook(back).remove)  # after the edit
            new = run_generate(model, prompt_ids, kwargs, cfg.seed)
        act, fire, rate = _generated_stats(model, reader, layer, prompt_ids, new, set(top))
        rows.append(SweepRow(
            multiple=m, value=None if m is None else m * top_act, act_hooked=back.mean(), act_text=act,
            fire_text=fire, kl=st.kl / st.n, ce=st.ce / st.n, delta_ce=(st.ce - clean.ce) / st.n,
            top_prob=st.top / st.n, top_prob_ratio=st.top / clean.top if clean.top > 0 else float("nan"),
            top_rate=rate, text=decode(model, new),
        ))
    top_named = [(i, cast(str, model.tokenizer.decode([i]))) for i in top]
    return SweepResult(feature, cfg.mode, top_act, top_named, rows, prompt_text, clean.n)


def result_json(result: SweepResult) -> dict[str, Any]:
    """The sweep as plain JSON (NaN → null)."""
    return {
        "feature": result.feature, "mode": result.mode, "max_activation": result.max_activation,
        "prompt": result.prompt, "reference_tokens": result.reference_tokens,
        "top_tokens": [{"id": i, "token": t} for i, t in result.top_tokens],
        "rows": [{k: _nan_none(v) for k, v in row._asdict().items()} for row in result.rows],
    }

