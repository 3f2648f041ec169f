"""A causal task: does clamping a language's feature move the next-token distribution toward that language?

For each language of the `language_id` dataset but English (the prompts are English):

1. Its **feature**: the one whose mean activation over the language's train texts exceeds its mean over the
   other languages' by the most (the positive side of sparse probing's top-1 choice).
2. Its **tokens**: token ids that occur at least `min_count` times in the language's train texts (the tokens
   pooled, `Pooled.ids`) and at least `ratio` times as often as in any other language's (a crude, data-derived
   "this language's vocabulary").
3. The **shift**: over `PROMPTS` (neutral English sentence starts), the probability the model gives the
   language's tokens as the next token with the feature clamped at `multiple` × its peak activation on the
   language's train texts (every position, `steering.hook`), minus that probability unsteered. The default
   1× is the strongest the feature gets in real text; on a planted French feature the mass rises from 0.0003
   to 0.28 at 1×, to 0.03 at 0.5× and 0.004 at 2×, and collapses (< 1e-5) from 3× on, where the text degenerates.
4. The **control**: the same for `controls` random features that fire on the dataset's texts, each clamped at
   `multiple` × its own peak; `random_shift` is their mean.

A language feature that causes the language moves more mass than random features do: `shift_ratio` =
mean shift / mean random shift (over the languages), and `languages_above_control` counts the languages whose
shift exceeds every one of its controls'.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from featurescope.evalsuite.datasets import ProbeDataset
from featurescope.evalsuite.pooled import Pooled
from featurescope.models import LanguageModel
from featurescope.models.language import pad_right
from featurescope.sae import SAE
from featurescope.steering.hook import SteeringHook, attach

PROMPTS = ("I went for a walk and", "The best thing about the weekend is", "My favourite place to visit is",
           "Yesterday my friend told me that", "The weather today is", "In the morning we usually",
           "She opened the door and said", "The most important thing in life is")


def language_tokens(ids: Sequence[list[int]], ds: ProbeDataset, *, min_count: int = 3,
                    ratio: float = 4.0) -> dict[int, list[int]]:
    """Per class of `ds`: the token ids that are its own (module doc, step 2), from the token ids of its train
    texts (`Pooled.ids`)."""
    counts: dict[int, Counter[int]] = {c: Counter() for c in range(len(ds.classes))}
    for row, (_, c) in zip(ids, ds.train, strict=True):
        counts[c].update(row)
    own = {}
    for c, mine in counts.items():
        others = [counts[o] for o in counts if o != c]
        own[c] = sorted(t for t, n in mine.items()
                        if n >= min_count and n >= ratio * max((o[t] for o in others), default=0))
    return own


@torch.inference_mode()
def next_token_mass(model: LanguageModel, prompts: tuple[str, ...], tokens: list[int],
                    hook: SteeringHook | None = None, layer: int = 0) -> float:
    """Mean over `prompts` of the next-token probability of `tokens` (one right-padded batch; with `hook` on
    block `layer`)."""
    rows = [list(model.tokenizer(p)["input_ids"]) for p in prompts]
    ids, mask = pad_right(rows)
    if hook is None:
        logits = model.logits(ids, mask)
    else:
        with attach(model, hook, layer):
            logits = model.logits(ids, mask)
    last = logits[torch.arange(len(rows)), mask.sum(1).to(logits.device) - 1].float()
    probs = last.softmax(-1)[:, torch.tensor(tokens, dtype=torch.long, device=last.device)]
    return float(probs.sum(-1).mean())


def _shift(model: LanguageModel, sae: SAE, layer: int, feature: int, value: float, tokens: list[int],
           clean: float) -> float:
    hook = SteeringHook(sae, {feature: value}, "clamp", model.special_ids)
    return next_token_mass(model, PROMPTS, tokens, hook, layer) - clean


def causal_language(model: LanguageModel, sae: SAE, layer: int, ds: ProbeDataset, train: Pooled, *,
                    multiple: float = 1.0, controls: int = 3, seed: int = 0) -> dict[str, Any]:
    """The causal task of the module doc on `ds` (a `language_id` dataset) with its pooled train texts."""
    start = time.perf_counter()
    sae.to(model.device)
    labels = np.array([c for _, c in ds.train])
    own = language_tokens(train.ids, ds)
    alive = np.flatnonzero(train.peak.max(0) > 0)
    rng = random.Random(seed)
    details: list[dict[str, Any]] = []
    for c, lang in enumerate(ds.classes):
        if lang == "en" or not own[c]:
            continue
        diff = train.features[labels == c].mean(0) - train.features[labels != c].mean(0)
        feature = int(np.argmax(diff))
        clean = next_token_mass(model, PROMPTS, own[c])
        peak = float(train.peak[labels == c, feature].max())
        shift = _shift(model, sae, layer, feature, multiple * peak, own[c], clean)
        others = rng.sample([int(f) for f in alive if f != feature], min(controls, len(alive) - 1))
        random_shifts = [_shift(model, sae, layer, f, multiple * float(train.peak[:, f].max()), own[c], clean)
                         for f in others]
        details.append({"language": lang, "feature": feature, "value": multiple * peak, "tokens": len(own[c]),
                        "p_clean": clean, "p_steered": clean + shift, "shift": shift,
                        "random_features": others, "random_shifts": random_shifts})
    shifts = [d["shift"] for d in details]
    controls_mean = [float(np.mean(d["random_shifts"])) for d in details if d["random_shifts"]]
    mean_random = float(np.mean(controls_mean)) if controls_mean else float("nan")
    mean_shift = float(np.mean(shifts)) if shifts else float("nan")
    return {"eval_type_id": "causal_language",
            "eval_config": {"multiple": multiple, "controls": controls, "random_seed": seed,
                            "prompts": list(PROMPTS)},
            "eval_result_metrics": {"causal": {
                "language_shift": mean_shift, "random_shift": mean_random,
                "shift_ratio": mean_shift / mean_random if mean_random > 0 else float("nan"),
                "languages_above_control": sum(d["shift"] > max(d["random_shifts"], default=float("-inf"))
                                               for d in details),
                "languages": len(details)}},
            "eval_result_details": details, "seconds": round(time.perf_counter() - start, 2)}
