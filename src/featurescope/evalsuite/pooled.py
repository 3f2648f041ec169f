"""Texts through the model and the SAE, pooled per text over its own tokens (the BOS and padding left out): the
mean residual and the mean SAE activations, as in SAEBench's sparse probing, and each feature's peak."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from featurescope.models import LanguageModel
from featurescope.models.language import pad_right
from featurescope.probes.encode import tokenize
from featurescope.sae import SAE


class Pooled(NamedTuple):
    """Per text: the mean residual [n, d_model], the mean SAE activations [n, d_sae] and their maximum over the
    text's tokens [n, d_sae] (float32), and the text's token ids (cut to `max_tokens`, no BOS)."""

    residual: np.ndarray
    features: np.ndarray
    peak: np.ndarray
    ids: list[list[int]]


@torch.inference_mode()
def pooled(model: LanguageModel, sae: SAE, layer: int, texts: Sequence[str], *, max_tokens: int = 64,
           batch_size: int = 16, progress: bool = False, desc: str = "encode") -> Pooled:
    """Mean residual and mean SAE activations of each text at block `layer` (texts cut to `max_tokens`; the SAE is
    moved to the model's device)."""
    sae.to(model.device)
    ids, _ = tokenize(model, texts, max_tokens)
    bos = [] if model.bos_id is None else [model.bos_id]
    resid, feats, peaks = [], [], []
    for s in tqdm(range(0, len(ids), batch_size), desc=desc, disable=not progress, dynamic_ncols=True):
        rows = [bos + r for r in ids[s:s + batch_size]]
        batch, mask = pad_right(rows)
        h = model.residual(batch, layer, attention_mask=mask).float()
        own = mask.to(h.device).bool()
        own[:, :len(bos)] = False
        h = h * own.unsqueeze(-1)  # padding zeroed: finite whatever the model leaves there
        weight = (own.float() / own.sum(1, keepdim=True).clamp(min=1)).unsqueeze(-1)
        resid.append((h * weight).sum(1).cpu())
        f = sae.encode(h) * own.unsqueeze(-1)
        feats.append((f * weight.to(f.dtype)).sum(1).float().cpu())
        peaks.append(f.amax(1).float().cpu())
    return Pooled(torch.cat(resid).numpy(), torch.cat(feats).numpy(), torch.cat(peaks).numpy(), ids)
