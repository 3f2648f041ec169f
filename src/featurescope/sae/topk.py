"""TopK (OpenAI, Gao et al. 2024) and BatchTopK (Bussmann et al. 2024) sparse autoencoders.

TopK: f = scatter(TopK_k(W_enc (x − b_dec) + b_enc)) then ReLU; decoder rows unit norm (the gradient
component along each row is removed before the step, rows renormalised after it); b_dec starts at the
geometric median of the data; dead latents get the AuxK loss. BatchTopK keeps the k·batch largest
pre-activations of the whole batch during training and, at inference, every pre-activation above one
threshold θ estimated during training (a running mean of the smallest selected activation).

Training only ever multiplies densely for the selection (optionally in bfloat16, without autograd);
the selected latents are recomputed exactly in the parameter dtype and decoded with the gather
kernels of `featurescope.sae.kernels`, so the backward pass touches k rows per input, not d_sae.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from featurescope.sae.base import SAE, ActiveFeatures, LossOutput, SparseCodes
from featurescope.sae.config import SAEConfig
from featurescope.sae.init import normalize_rows, remove_parallel_grad, tied_init
from featurescope.sae.kernels import Pattern, geometric_median, select_scores, sparse_dot, sparse_sum
from featurescope.sae.parallel import row_pattern

AUXK_COEFFICIENT = 1 / 32
"""OpenAI's weight of the AuxK loss."""
THRESHOLD_EMA = 0.1
"""BatchTopK: θ is a running mean over its first 1/THRESHOLD_EMA updates, then an EMA at this rate."""
SELECT_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


class TopKSAE(SAE):
    """TopK SAE: exactly k active latents per input (fewer if some selected pre-activations are ≤ 0).

    Settings read from `cfg.extra`: `auxk_coefficient` (default 1/32), `k_aux` (default d_in // 2),
    `select_dtype` (dtype of the training-time selection matmul, default "bfloat16").
    """

    architecture = "topk"
    adam_betas, adam_eps = (0.9, 0.999), 6.25e-10  # OpenAI
    subtracts_b_dec = True
    training_settings: ClassVar[dict[str, str]] = {
        "auxk_coefficient": "auxk_coefficient", "k_aux": "k_aux", "select_dtype": "select_dtype"}

    @classmethod
    def default_k(cls, features: int) -> int:
        """k = 32 (sparsify's and a common OpenAI setting), at most features / 4."""
        return max(1, min(32, features // 4))

    @classmethod
    def default_k_aux(cls, d_in: int) -> int:
        """d_in / 2 (OpenAI)."""
        return max(1, d_in // 2)

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        assert cfg.k is not None
        self.k = cfg.k
        self.auxk_coefficient = float(cfg.extra.get("auxk_coefficient", AUXK_COEFFICIENT))
        self.k_aux = int(cfg.extra.get("k_aux") or self.default_k_aux(cfg.d_in))
        self.select_dtype = SELECT_DTYPES[cfg.extra.get("select_dtype", "bfloat16")]
        self._scores: Tensor | None = None

    def reset_parameters(self, generator: torch.Generator) -> None:
        tied_init(self, generator, dec_norm=1.0)

    @torch.no_grad()
    def init_from_data(self, x_norm: Tensor) -> None:
        """b_dec ← geometric median of the sample (OpenAI)."""
        self.b_dec.copy_(geometric_median(x_norm.to(self.b_dec.device)).to(self.b_dec.dtype))

    # -- inference ---------------------------------------------------------------------------
    def _top(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        values, indices = pre.topk(self.k, dim=-1, sorted=True)
        return values.relu(), indices

    def activation(self, pre: Tensor) -> Tensor:
        values, indices = self._top(pre)
        return torch.zeros_like(pre).scatter_(-1, indices, values)

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        """Raw activations [N, d_in] -> the k latents of each row, largest first ([N, k] each)."""
        self._check_input(x)
        x = x.reshape(-1, self.d_in).to(self.W_dec.dtype)
        values, indices = self._top(self.pre_acts(self.normalize(x)))
        return SparseCodes(values, indices)

    def encode_active(self, x: Tensor) -> ActiveFeatures:
        """From the k latents of each row (`encode_sparse`): no dense [N, d_sae] code."""
        values, indices = self.encode_sparse(x)
        indices, order = indices.sort(dim=1)
        values = values.gather(1, order).float().flatten()
        row = torch.arange(len(indices), device=indices.device).repeat_interleave(indices.shape[1])
        keep = values > 0
        return ActiveFeatures(row[keep], indices.flatten()[keep], values[keep])

    def decode_partial(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """The k largest pre-activations of each row over all shards' features (`parallel.row_top`)."""
        top = self.parallel.row_top(pre, self.k)
        keep = top.keep if top.keep is not None else torch.ones_like(top.indices, dtype=torch.bool)
        idx = torch.where(keep, top.indices, 0)
        values = pre.gather(-1, idx).relu() * keep
        partial = F.embedding_bag(idx, self.W_dec, mode="sum", per_sample_weights=values)
        return partial, (values != 0).sum()

    # -- training ----------------------------------------------------------------------------
    def _centered(self, x_norm: Tensor) -> Tensor:
        return self.parallel.feature_input(x_norm - self.b_dec) if self.cfg.apply_b_dec_to_input else x_norm

    @torch.no_grad()
    def _selection_scores(self, x_c: Tensor) -> Tensor:
        """Pre-activations of every latent for choosing the active ones (no autograd; reused buffer)."""
        dt = self.select_dtype if x_c.device.type in ("cpu", "cuda") else self.W_enc_rows.dtype
        n = x_c.shape[0]
        buf = self._scores
        if buf is None or buf.shape != (n, self.d_sae) or buf.dtype != dt or buf.device != x_c.device:
            buf = self._scores = torch.empty(n, self.d_sae, dtype=dt, device=x_c.device)
        return select_scores(x_c, self.W_enc_rows, self.b_enc, buf)

    def _select(self, x_c: Tensor) -> Pattern:
        return row_pattern(self.parallel.row_top(self._selection_scores(x_c), self.k))

    def train(self, mode: bool = True) -> TopKSAE:
        """Switch training mode; leaving it frees the selection buffer."""
        if not mode:
            self._scores = None
        return super().train(mode)

    def training_loss(self, x_norm: Tensor, progress: float, dead: Tensor | None = None) -> LossOutput:
        par = self.parallel
        x_c = self._centered(x_norm)
        pattern = self._select(x_c)
        values = sparse_dot(x_c, self.W_enc_rows, self.b_enc, pattern).relu()
        x_hat = par.features_sum(sparse_sum(values, self.W_dec, pattern)) + self.b_dec
        self._after_selection(values)
        mse = par.row_mean((x_hat - x_norm).pow(2).sum(-1))
        auxk = self._auxk_loss(x_c, (x_norm - x_hat).detach(), dead)
        loss = mse
        if auxk is not None:  # OpenAI: α · NMSE(ê, e) next to the FVU, i.e. α · NMSE · variance next to the MSE
            variance = par.batch_variance(x_norm).detach()
            loss = mse + self.auxk_coefficient * auxk * variance
        with torch.no_grad():
            active = values > 0
            fired = torch.zeros(self.d_sae, dtype=torch.bool, device=x_norm.device)
            fired[pattern.cols[active]] = True
            l0 = active.sum().float() / par.rows(x_norm.shape[0])
        terms = {"mse": mse.detach()}
        if auxk is not None:
            terms["auxk"] = auxk.detach()
        return LossOutput(loss, x_hat, l0, fired, terms)

    def _after_selection(self, values: Tensor) -> None:
        """Hook for BatchTopK's threshold update."""

    def _auxk_loss(self, x_c: Tensor, residual: Tensor, dead: Tensor | None) -> Tensor | None:
        """AuxK: how badly the top-k_aux dead latents reconstruct the residual e = x − x̂ (‖e − ê‖² / ‖e‖²)."""
        if dead is None or self.auxk_coefficient == 0:
            return None
        par = self.parallel
        dead_idx = dead.nonzero().squeeze(1)
        n_dead = int(par.features_total(torch.tensor(dead_idx.numel(), device=dead.device)))
        if n_dead == 0:
            return None
        pre = torch.addmm(self.b_enc[dead_idx], x_c, self.W_enc_rows[dead_idx].T)
        if self.k_aux < n_dead:
            top = par.row_top(pre.detach(), self.k_aux)
            if top.keep is None:
                acts = torch.zeros_like(pre).scatter(-1, top.indices, pre.gather(-1, top.indices).relu())
            elif pre.shape[1]:  # another shard's entries add 0 at column 0
                idx = torch.where(top.keep, top.indices, 0)
                picked = pre.gather(-1, idx).relu() * top.keep
                acts = torch.zeros_like(pre).scatter_add(-1, idx, picked)
            else:  # no dead features on this shard
                acts = pre
        else:
            acts = pre.relu()
        e_hat = par.features_sum(acts @ self.W_dec[dead_idx])
        return (e_hat - residual).pow(2).sum() / par.rows_sum(residual.pow(2).sum()).clamp_min(1e-12)

    def before_step(self) -> None:
        remove_parallel_grad(self.W_dec)

    def after_step(self) -> None:
        normalize_rows(self.W_dec.data)


class BatchTopKSAE(TopKSAE):
    """BatchTopK SAE: k·batch active latents per training batch, one threshold θ (`threshold`) at inference.

    Inference: f = pre · (pre > θ). Until the first training step θ is 0 (plain ReLU).
    """

    architecture = "batchtopk"
    threshold: Tensor
    threshold_updates: Tensor
    # Adam as TopK's (Bussmann et al.)

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.int64), persistent=False)

    def activation(self, pre: Tensor) -> Tensor:
        return pre * (pre > self.threshold.clamp_min(0))

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        return SAE.encode_sparse(self, x)

    def encode_active(self, x: Tensor) -> ActiveFeatures:
        return SAE.encode_active(self, x)

    def feature_thresholds(self, index: Tensor) -> Tensor:
        return self.threshold.detach().clamp_min(0).expand(len(index)).clone()

    def decode_partial(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        return SAE.decode_partial(self, pre)

    def _select(self, x_c: Tensor) -> Pattern:
        scores = self._selection_scores(x_c)
        n = x_c.shape[0]
        flat = self.parallel.top_k_flat(scores, self.k * self.parallel.rows(n))
        flat = flat[scores.view(-1)[flat] > 0]
        return Pattern.from_flat(flat, self.d_sae, n)

    @torch.no_grad()
    def _after_selection(self, values: Tensor) -> None:
        positive = values[values > 0]
        smallest = positive.min() if positive.numel() else values.new_full((), float("inf"))
        smallest = self.parallel.all_min(smallest).to(self.threshold.dtype)
        if not bool(torch.isfinite(smallest)):
            return
        self.threshold_updates += 1
        rate = max(1.0 / float(self.threshold_updates), THRESHOLD_EMA)
        self.threshold.mul_(1 - rate).add_(rate * smallest)

    def training_state(self) -> dict[str, Tensor]:
        return {"threshold_updates": self.threshold_updates.detach().clone()}

    def load_training_state(self, state: dict[str, Tensor]) -> None:
        if "threshold_updates" in state:
            self.threshold_updates.copy_(state["threshold_updates"])
