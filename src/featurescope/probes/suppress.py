"""What suppressing a feature does to the model on a probe set.

Clamping a feature at block L (`featurescope.steer`, e.g. at −2 × its max activation) changes everything
downstream of L; re-scoring the same layer's features would only show the clamp itself. So the effect is read
from the model's own predictions: for each text, the mean next-token loss (NLL, nats per token, over the text's
own tokens) clean and steered. If the feature carries the category's concept, suppressing it should make the
positives harder to predict than their matched negatives:

    selectivity = mean over matched pairs of [(steered − clean) NLL of the positive − (steered − clean) NLL of
                  the negative]

with a 95% bootstrap interval over pairs (over texts of each label when the set has no matched pairs).
Positive: the feature matters more for the category's texts than for their controls. A large clamp perturbs
every text, and texts the model finds harder may suffer more from any perturbation, so the same measurement
is made for *control features* (`control_features`: random sparse features with a similar max activation):
a target's selectivity means something only when it clearly exceeds its controls'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from featurescope.models import LanguageModel
from featurescope.probes.encode import tokenize
from featurescope.probes.sets import ProbeText
from featurescope.sae import SAE
from featurescope.steering.hook import steer

BOOTSTRAP = 2000


class Suppression(NamedTuple):
    """The effect of clamping `feature` to `clamp` (= `value`, e.g. "-2x") on one category."""

    category: str
    feature: int
    value: str
    mode: str
    clamp: float
    pairs: int
    clean_pos: float
    steered_pos: float
    clean_neg: float
    steered_neg: float
    selectivity: float
    ci_low: float
    ci_high: float
    target: int
    """The feature this row is about: `feature` itself, or the target that `feature` is a control for."""


@torch.inference_mode()
def text_nll(model: LanguageModel, texts: Sequence[str], *, batch_size: int = 8, max_tokens: int = 128) -> np.ndarray:
    """Mean next-token NLL of each text's own tokens given BOS and the tokens before (nats), [n]."""
    ids, _ = tokenize(model, texts, max_tokens)
    bos = model.bos_id
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    out = np.zeros(len(texts))
    for s in range(0, len(texts), batch_size):
        rows = [([bos] if bos is not None else []) + ids[i] for i in range(s, min(s + batch_size, len(texts)))]
        width = max(len(r) for r in rows)
        x = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(x)
        for r, row in enumerate(rows):
            x[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
        logits = model.logits(x, attention_mask=mask).float()
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:].to(logits.device), reduction="none").cpu()
        valid = mask[:, 1:].float()
        out[s:s + len(rows)] = ((nll * valid).sum(1) / valid.sum(1).clamp_min(1)).numpy()
    return out


def _pairs(items: Sequence[ProbeText]) -> list[tuple[int, int]]:
    by_group: dict[str, list[int]] = {}
    for j, t in enumerate(items):
        by_group.setdefault(t.group, []).append(j)
    out = []
    for members in by_group.values():
        pos = [j for j in members if items[j].label == 1]
        neg = [j for j in members if items[j].label == 0]
        if len(pos) == 1 and len(neg) == 1:
            out.append((pos[0], neg[0]))
    return out


def selectivity(delta: np.ndarray, labels: np.ndarray, pairs: list[tuple[int, int]], seed: int = 0
                ) -> tuple[float, float, float]:
    """(estimate, 2.5%, 97.5%) of the selectivity from per-text NLL changes `delta` (see the module doc)."""
    rng = np.random.default_rng(seed)
    if pairs:
        d = np.array([delta[p] - delta[n] for p, n in pairs])
        boot = d[rng.integers(0, len(d), (BOOTSTRAP, len(d)))].mean(axis=1)
        lo, hi = np.quantile(boot, [0.025, 0.975])
        return float(d.mean()), float(lo), float(hi)
    pos, neg = delta[labels == 1], delta[labels == 0]
    boot = (pos[rng.integers(0, len(pos), (BOOTSTRAP, len(pos)))].mean(axis=1)
            - neg[rng.integers(0, len(neg), (BOOTSTRAP, len(neg)))].mean(axis=1))
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return float(pos.mean() - neg.mean()), float(lo), float(hi)


def control_features(max_acts: np.ndarray, density: np.ndarray, target: int, n: int, exclude: set[int], seed: int,
                     *, max_density: float = 0.05) -> list[int]:
    """`n` random features (seeded) whose max activation is within a factor 4/3 of the target's, sparse
    (density ≤ max_density, firing at all) and not in `exclude`."""
    m = float(max_acts[target])
    ok = (max_acts >= 0.75 * m) & (max_acts <= m / 0.75) & (density > 0) & (density <= max_density)
    pool = [int(i) for i in np.flatnonzero(ok) if int(i) != target and int(i) not in exclude]
    rng = np.random.default_rng(seed + target)
    return sorted(int(i) for i in rng.choice(pool, size=min(n, len(pool)), replace=False)) if pool else []


def suppression_effect(model: LanguageModel, sae: SAE, items: Sequence[ProbeText], feature: int, value: str,
                       max_acts: torch.Tensor, *, mode: str = "clamp", batch_size: int = 8, max_tokens: int = 128,
                       seed: int = 0, clean: np.ndarray | None = None, target: int | None = None) -> Suppression:
    """Clean vs steered NLL of one category's texts with `feature` clamped to `value` (e.g. "-2x"); `clean`:
    the texts' clean NLL if already measured; `target`: the feature this one is a control for."""
    texts = [t.text for t in items]
    labels = np.array([t.label for t in items])
    if clean is None:
        clean = text_nll(model, texts, batch_size=batch_size, max_tokens=max_tokens)
    with steer(model, sae, {feature: value}, mode=mode, max_acts=max_acts) as hook:
        steered = text_nll(model, texts, batch_size=batch_size, max_tokens=max_tokens)
        clamp = float(hook.values[0])
    pairs = _pairs(items)
    est, lo, hi = selectivity(steered - clean, labels, pairs, seed)
    pos, neg = labels == 1, labels == 0
    return Suppression(items[0].category, feature, value, mode, clamp, len(pairs), float(clean[pos].mean()),
                       float(steered[pos].mean()), float(clean[neg].mean()), float(steered[neg].mean()), est, lo, hi,
                       feature if target is None else target)
