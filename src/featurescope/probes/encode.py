"""Run short texts through the model and the SAE; keep every token's nonzero feature activations (sparse).

Each text is tokenised without special tokens, cut to `max_tokens`, and given the model's BOS first. The BOS
and any special-token position are never encoded (their activations are outliers the SAE never saw), so
`tokens[t]` is the text's t-th own token and positions count from 0 after the BOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from featurescope.errors import FeaturescopeError
from featurescope.models import LanguageModel
from featurescope.sae import SAE


class EncodedTexts(NamedTuple):
    """Sparse activations of n texts: entry j says feature `feature[j]` has `value[j]` at token `position[j]`
    of text `text[j]` (sorted by text, feature, position)."""

    token_ids: list[list[int]]
    truncated: list[bool]
    text: Tensor
    feature: Tensor
    position: Tensor
    value: Tensor
    d_sae: int

    def max_per_text(self) -> Tensor:
        """Each feature's max activation over each text's tokens, float32 [n_texts, d_sae] (0: never fires)."""
        n = len(self.token_ids)
        out = torch.zeros(n * self.d_sae, dtype=torch.float32)
        if len(self.value):
            out.scatter_reduce_(0, self.text * self.d_sae + self.feature, self.value, "amax", include_self=True)
        return out.view(n, self.d_sae)

    def token_acts(self, text: int, feature: int) -> list[float]:
        """Feature `feature`'s activation on every token of text `text`."""
        return self.token_acts_many([text], [feature])[0]

    def token_acts_many(self, texts: Sequence[int], features: Sequence[int]) -> list[list[float]]:
        """`token_acts` for many (text, feature) pairs at once."""
        keys = self.text * self.d_sae + self.feature
        query = torch.tensor(texts, dtype=torch.long) * self.d_sae + torch.tensor(features, dtype=torch.long)
        lo = torch.searchsorted(keys, query, side="left").tolist()
        hi = torch.searchsorted(keys, query, side="right").tolist()
        pos, val = self.position.numpy(), self.value.numpy()
        out = []
        for t, a, b in zip(texts, lo, hi, strict=True):
            row = np.zeros(len(self.token_ids[t]), dtype=np.float32)
            row[pos[a:b]] = val[a:b]
            out.append(row.tolist())
        return out


def tokenize(model: LanguageModel, texts: Sequence[str], max_tokens: int) -> tuple[list[list[int]], list[bool]]:
    """Token ids of each text (no special tokens added, at most `max_tokens`) and whether it was cut."""
    ids, cut = [], []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise FeaturescopeError(f"text {i} is empty")
        t = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.append(list(t[:max_tokens]))
        cut.append(len(t) > max_tokens)
    return ids, cut


@torch.inference_mode()
def encode_texts(model: LanguageModel, sae: SAE, texts: Sequence[str], layer: int, *, batch_size: int = 16,
                 max_tokens: int = 128, progress: bool = False, desc: str = "encode") -> EncodedTexts:
    """Run `texts` through `model` up to block `layer` and `sae`; return their sparse token activations."""
    token_ids, truncated = tokenize(model, texts, max_tokens)
    bos = model.bos_id
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    special = torch.tensor(sorted(model.special_ids) or [-1])
    order = sorted(range(len(texts)), key=lambda i: len(token_ids[i]))
    parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    bar = tqdm(total=len(texts), desc=desc, disable=not progress, leave=False)
    offset = 1 if bos is not None else 0
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        width = offset + max(len(token_ids[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            row = ([bos] if bos is not None else []) + token_ids[i]
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
        resid = model.residual(ids, layer, attention_mask=mask).float().cpu()
        keep = mask.bool() & ~torch.isin(ids, special)
        keep[:, :offset] = False
        rows, cols = keep.nonzero(as_tuple=True)
        if len(rows):
            codes = sae.encode(resid[rows, cols].to(sae.W_dec.device)).float().cpu()
            tok, feat = codes.nonzero(as_tuple=True)
            text_ids = torch.tensor(idx, dtype=torch.long)[rows[tok]]
            parts.append((text_ids, feat, cols[tok] - offset, codes[tok, feat]))
        bar.update(len(idx))
    bar.close()
    if parts:
        text, feature, position, value = (torch.cat(p) for p in zip(*parts, strict=True))
    else:
        text = feature = position = torch.zeros(0, dtype=torch.long)
        value = torch.zeros(0)
    key = (text * sae.cfg.d_sae + feature) * (max_tokens + 1) + position
    sort = torch.argsort(key)
    return EncodedTexts(token_ids, truncated, text[sort], feature[sort], position[sort], value[sort], sae.cfg.d_sae)


def decode_tokens(model: LanguageModel, ids: Sequence[int]) -> list[str]:
    """The string of each token id (`tokenizer.decode([id])`, as the feature database stores them)."""
    return model.tokenizer.batch_decode([[i] for i in ids])
