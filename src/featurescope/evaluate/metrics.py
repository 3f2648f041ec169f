"""The measurements: reconstruction quality over activation rows, and next-token cross-entropy with SAEs spliced
into the model (CE loss recovered, KL to the clean model).

CE loss recovered is a ratio of means over the whole evaluation set: (CE_zero − CE_spliced) / (CE_zero − CE_clean),
where the reconstruction (or zero) replaces the residual stream after block L at every position the SAE reads, and
special positions (BOS, padding) and massive-activation outliers (`featurescope.outliers`) keep the model's own
activation. KL is the mean over the same predicted tokens of KL(clean ‖ spliced) of the next-token distributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from featurescope.errors import FeaturescopeError
from featurescope.models import LanguageModel
from featurescope.outliers import outlier_positions
from featurescope.sae import SAE


class ReconstructionMetrics(NamedTuple):
    """Quality of the reconstruction over activation rows."""

    fvu: float
    mse: float
    l0: float
    dead_fraction: float
    rows: int


class CEMetrics(NamedTuple):
    """Next-token cross-entropy of the model clean, with the SAE spliced in, and with the layer zeroed."""

    ce_clean: float
    ce_spliced: float
    ce_zero: float
    loss_recovered: float
    kl: float
    """Mean KL(clean ‖ spliced) per predicted token, in nats."""
    tokens: int


@torch.inference_mode()
def reconstruction_metrics(sae: SAE, x: Tensor, batch_size: int = 4096) -> ReconstructionMetrics:
    """FVU (around the mean), MSE, L0 and the fraction of features that never fire, over rows `x`."""
    if x.shape[-1] != sae.d_in:
        raise FeaturescopeError(f"activations have width {x.shape[-1]} but the SAE reads d_in={sae.d_in}")
    if len(x) == 0:
        raise FeaturescopeError("no activation rows to evaluate")
    device = sae.W_dec.device
    mean = x.double().mean(0)
    sq_err = sq_tot = active = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=device)
    for s in range(0, len(x), batch_size):
        xb = x[s : s + batch_size].to(device)
        f = sae.encode(xb)
        x_hat = sae.decode(f)
        sq_err += float((xb.double() - x_hat.double()).pow(2).sum())
        sq_tot += float((xb.double() - mean.to(device)).pow(2).sum())
        nz = f > 0
        active += float(nz.sum())
        fired |= nz.any(0)
    n = len(x)
    return ReconstructionMetrics(
        fvu=sq_err / sq_tot, mse=sq_err / (n * sae.d_in), l0=active / n,
        dead_fraction=1.0 - float(fired.float().mean()), rows=n,
    )


class _SpliceSAE:
    """Replaces the residual at the positions in `mask` by the SAE's reconstruction (or by zero: `sae` None)."""

    def __init__(self, sae: SAE | None) -> None:
        self.sae = sae
        self.mask: Tensor | None = None

    def __call__(self, h: Tensor) -> Tensor:
        assert self.mask is not None
        m = self.mask.to(h.device)
        m = (m & ~outlier_positions(h.float().norm(dim=-1), m)).unsqueeze(-1)
        new = torch.zeros_like(h) if self.sae is None else self.sae(h.float()).to(h.dtype)
        return torch.where(m, new, h)


@torch.inference_mode()
def ce_metrics(model: LanguageModel, sae: SAE, layer: int, ids: Tensor, *, batch_size: int = 8,
               progress: bool = False) -> CEMetrics:
    """CE clean / spliced / zero-ablated and KL(clean ‖ spliced) over contexts `ids` [n, ctx_len], as means."""
    return ce_metrics_many(model, [sae], layer, ids, batch_size=batch_size, progress=progress)[0]


@torch.inference_mode()
def ce_metrics_many(model: LanguageModel, saes: Sequence[SAE], layer: int, ids: Tensor, *, batch_size: int = 8,
                    progress: bool = False) -> list[CEMetrics]:
    """`ce_metrics` of each of `saes` on the same contexts: per batch, the clean and the zero-ablated forward
    passes run once and serve every SAE, and each SAE adds one forward pass (the head's logits are made once per
    chunk for all of them, `LanguageModel.next_token_scores`)."""
    special = torch.tensor(sorted(model.special_ids) or [-1])
    edits = [*(_SpliceSAE(sae) for sae in saes), _SpliceSAE(None)]  # the SAEs, then zero
    clean_sum = 0.0
    sums = [0.0] * len(edits)
    kls = [0.0] * len(saes)
    for s in tqdm(range(0, len(ids), batch_size), desc="CE loss", disable=not progress, leave=False):
        batch = ids[s : s + batch_size]
        states = [model.head_state(batch)]
        mask = ~torch.isin(batch, special)
        for edit in edits:
            edit.mask = mask
            with model.splice(layer, edit):
                states.append(model.head_state(batch))
        scores = model.next_token_scores(batch, states, reference=0)
        clean_sum += float(scores[0].nll.double().sum())
        for k, score in enumerate(scores[1:]):
            sums[k] += float(score.nll.double().sum())
            if k < len(saes):
                assert score.kl is not None
                kls[k] += float(score.kl.double().sum())
    n = ids.shape[0] * (ids.shape[1] - 1)
    clean, zero = clean_sum / n, sums[-1] / n
    out = []
    for k in range(len(saes)):
        spliced = sums[k] / n
        recovered = (zero - spliced) / (zero - clean) if zero != clean else float("nan")
        out.append(CEMetrics(clean, spliced, zero, recovered, kls[k] / n, n))
    return out
