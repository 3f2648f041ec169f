"""Evaluate an SAE: FVU, L0, dead fraction over activations, and CE loss recovered inside the model.

FVU is around the mean: Σ‖x − x̂‖² / Σ‖x − mean(x)‖² (raw units). CE loss recovered is a ratio of means
over the whole evaluation set: (CE_zero − CE_spliced) / (CE_zero − CE_clean), where the reconstruction
(or zero) replaces the residual stream after block L at every position the SAE reads, and special
positions (BOS, padding) and massive-activation outliers (`featurescope.outliers`) keep the model's own
activation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from featurescope.activations import ActivationSource, ActivationStore, open_source
from featurescope.cli_args import option
from featurescope.corpus import contexts, open_corpus
from featurescope.errors import FeaturescopeError
from featurescope.models import LanguageModel, default_device, load_model
from featurescope.outliers import outlier_positions
from featurescope.sae import SAE


@dataclass
class EvalConfig:
    """Settings of `featurescope eval`."""

    sae: str = option("", "SAE folder (ours, SAELens or sparsify)")
    activations: str = option("", "activation store or .npy to measure FVU, L0 and dead %% on")
    model: str = option("", "model for CE loss recovered (default: the store's or the SAE's model)")
    corpus: str = option("", "corpus for CE contexts (default: the store's own last contexts)")
    rows: int = option(200_000, "activation rows sampled for FVU, L0 and dead %%")
    ce_contexts: int = option(16, "contexts for CE loss recovered (0 skips it)")
    batch_size: int = option(8, "contexts per forward pass")
    seed: int = option(0, "seed for sampling rows")
    device: str = option("auto", "cpu, cuda or auto")
    json: bool = option(False, "print JSON instead of a table")


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
    """Replaces the residual at the positions in `mask` by the SAE's reconstruction (or by zero)."""

    def __init__(self, sae: SAE, zero: bool) -> None:
        self.sae, self.zero = sae, zero
        self.mask: Tensor | None = None

    def __call__(self, h: Tensor) -> Tensor:
        assert self.mask is not None
        m = self.mask.to(h.device)
        m = (m & ~outlier_positions(h.float().norm(dim=-1), m)).unsqueeze(-1)
        new = torch.zeros_like(h) if self.zero else self.sae(h.float()).to(h.dtype)
        return torch.where(m, new, h)


def _sum_ce(model: LanguageModel, ids: Tensor) -> float:
    logits = model.logits(ids).float()
    return float(torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten().to(logits.device), reduction="sum"))


@torch.inference_mode()
def ce_metrics(model: LanguageModel, sae: SAE, layer: int, ids: Tensor, *, batch_size: int = 8,
               progress: bool = False) -> CEMetrics:
    """CE clean / spliced / zero-ablated over contexts `ids` [n, ctx_len], as ratios of means."""
    special = torch.tensor(sorted(model.special_ids) or [-1])
    sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    splices = {"spliced": _SpliceSAE(sae, zero=False), "zero": _SpliceSAE(sae, zero=True)}
    for s in tqdm(range(0, len(ids), batch_size), desc="CE loss", disable=not progress, leave=False):
        batch = ids[s : s + batch_size]
        sums["clean"] += _sum_ce(model, batch)
        for name, editor in splices.items():
            editor.mask = ~torch.isin(batch, special)
            with model.splice(layer, editor):
                sums[name] += _sum_ce(model, batch)
    n = ids.shape[0] * (ids.shape[1] - 1)
    clean, spliced, zero = (sums[k] / n for k in ("clean", "spliced", "zero"))
    recovered = (zero - spliced) / (zero - clean) if zero != clean else float("nan")
    return CEMetrics(clean, spliced, zero, recovered, n)


def _store_contexts(source: ActivationSource, n: int) -> Tensor | None:
    """The last `n` full contexts recorded in a store (None for sources without token ids)."""
    if not isinstance(source, ActivationStore):
        return None
    out: list[Tensor] = []
    for i in reversed(range(len(source.shards))):
        out.insert(0, source.read_shard(i).tokens.long())
        if sum(len(t) for t in out) >= n:
            break
    return torch.cat(out)[-n:]


class EvalResult(NamedTuple):
    """All metrics of `evaluate`."""

    reconstruction: ReconstructionMetrics | None
    ce: CEMetrics | None


def evaluate(cfg: EvalConfig, *, sae: SAE | None = None, model: LanguageModel | None = None,
             progress: bool = True) -> EvalResult:
    """Reconstruction metrics on `cfg.activations` and CE loss recovered on the model, as configured."""
    if not cfg.sae and sae is None:
        raise FeaturescopeError("no SAE given")
    if not cfg.activations and not cfg.corpus:
        raise FeaturescopeError("give --activations (a store or .npy) and/or --corpus for CE loss recovered")
    device = default_device() if cfg.device == "auto" else cfg.device
    sae = sae or SAE.load(cfg.sae, device=device)
    source = open_source(cfg.activations) if cfg.activations else None
    recon = None
    if source is not None:
        if source.d_model != sae.d_in:
            raise FeaturescopeError(f"the store has d_model={source.d_model} but the SAE reads d_in={sae.d_in}")
        if source.layer is not None and sae.cfg.layer is not None and source.layer != sae.cfg.layer:
            raise FeaturescopeError(f"the store is from layer {source.layer} but the SAE reads layer {sae.cfg.layer}")
        recon = reconstruction_metrics(sae, source.sample(cfg.rows, seed=cfg.seed))
    ce = None
    if cfg.ce_contexts > 0:
        model_name = cfg.model or (source.model if source is not None else None) or sae.cfg.model
        layer = sae.cfg.layer if sae.cfg.layer is not None else (source.layer if source is not None else None)
        if model_name and layer is not None:
            model = model or load_model(model_name, device=device)
            if model.d_model != sae.d_in:
                raise FeaturescopeError(f"{model.name} has d_model={model.d_model} but the SAE reads d_in={sae.d_in}")
            model.check_layer(layer)
            ids = None if cfg.corpus else _store_contexts(source, cfg.ce_contexts) if source else None
            if ids is None:
                ctx_len = int(source.manifest["ctx_len"]) if isinstance(source, ActivationStore) else 128
                stream = contexts(open_corpus(cfg.corpus or "wiki-en", seed=cfg.seed + 1), model.tokenizer,
                                  ctx_len=ctx_len, bos_id=model.bos_id)
                ids = torch.tensor(list(itertools.islice(stream, cfg.ce_contexts)))
            if len(ids) == 0:
                raise FeaturescopeError("no contexts for CE loss recovered (empty corpus?)")
            sae = sae.to(model.device)
            ce = ce_metrics(model, sae, layer, ids, batch_size=cfg.batch_size, progress=progress)
        elif cfg.model or cfg.corpus:
            raise FeaturescopeError("CE loss recovered needs the SAE's layer (not recorded in its cfg or the store)")
    return EvalResult(recon, ce)
