"""Streaming per-feature statistics: counts, moments, reconstruction error, token frequencies, histograms.

All state is a few tensors of size d_sae (or d_sae × bins, or vocab), updated batch by batch, so memory
does not depend on how many tokens are analysed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from featurescope.analysis.source import Batch
from featurescope.sae import SAE


class Codes(NamedTuple):
    """The SAE's nonzero activations on one batch of C contexts × T positions, sorted by `key`."""

    shape: tuple[int, int, int]
    """(C, T, d_sae)."""
    row: Tensor
    """[nnz] int64 row of `Batch.acts`."""
    ctx: Tensor
    """[nnz] int64 context index within the batch."""
    pos: Tensor
    """[nnz] int64 position within the context."""
    feat: Tensor
    """[nnz] int64 feature id."""
    value: Tensor
    """[nnz] float32 activation (> 0)."""
    key: Tensor
    """[nnz] int64 (ctx·T + pos)·d_sae + feat, ascending: for `lookup`."""
    run_key: Tensor
    """[nnz] int64 (ctx·d_sae + feat)·T + pos, sorted: each (context, feature) is one run, for `windows`."""
    run_order: Tensor
    """[nnz] int64: entry i of `run_key` is nonzero `run_order[i]`."""


def make_codes(shape: tuple[int, int, int], row: Tensor, ctx: Tensor, pos: Tensor, feat: Tensor,
               value: Tensor) -> Codes:
    """Codes from nonzeros listed by (context, position, feature) ascending."""
    _, T, F = shape
    run = (ctx * F + feat) * T + pos
    run_key, run_order = run.sort()
    return Codes(shape, row, ctx, pos, feat, value, (ctx * T + pos) * F + feat, run_key, run_order)


def codes_from_dense(dense: Tensor) -> Codes:
    """Codes of a dense [C, T, d_sae] tensor, every position a row."""
    C, T, F = dense.shape
    flat = dense.reshape(C * T, F)
    row, feat = (flat > 0).nonzero(as_tuple=True)
    return make_codes((C, T, F), row, row // T, row % T, feat, flat[row, feat].float())


@torch.inference_mode()
def encode_batch(sae: SAE, batch: Batch) -> Codes:
    """Encode a batch's rows and list the nonzero activations (`SAE.encode_active`: a TopK SAE makes no dense
    [rows, d_sae] code)."""
    x = batch.acts.to(sae.W_dec.device)
    where = batch.mask.to(x.device).nonzero()
    row, feat, value = sae.encode_active(x)
    return make_codes((*batch.mask.shape, sae.d_sae), row, where[row, 0], where[row, 1], feat, value)


def lookup(codes: Codes, ctx: Tensor, pos: Tensor, feat: Tensor) -> Tensor:
    """Activations at (ctx, pos, feat) (broadcast), 0 where the feature does not fire."""
    _, T, F = codes.shape
    if not len(codes.key):
        return torch.zeros(torch.broadcast_shapes(ctx.shape, pos.shape, feat.shape), device=codes.value.device)
    q = (ctx * T + pos) * F + feat
    i = torch.searchsorted(codes.key, q).clamp_(max=len(codes.key) - 1)
    return torch.where(codes.key[i] == q, codes.value[i], 0.0)


def windows(codes: Codes, ctx: Tensor, start: Tensor, feat: Tensor, width: int) -> Tensor:
    """Activations [n, width] of feature feat[i] at positions start[i] … start[i] + width − 1 of context ctx[i].

    Two binary searches per window find the run of its feature's nonzeros in that context (not one per token).
    """
    _, T, F = codes.shape
    out = torch.zeros(len(ctx), width, device=codes.value.device)
    if not len(ctx) or not len(codes.run_key):
        return out
    base = (ctx * F + feat) * T + start
    lo = torch.searchsorted(codes.run_key, base)
    n = torch.searchsorted(codes.run_key, base + width) - lo
    total = int(n.sum())
    if total:
        ends = torch.cumsum(n, 0)
        entry = torch.searchsorted(ends, torch.arange(total, device=ctx.device), right=True)
        first = ends - n
        j = codes.run_order[lo[entry] + torch.arange(total, device=ctx.device) - first[entry]]
        out[entry, codes.pos[j] - start[entry]] = codes.value[j]
    return out


def context_peaks(codes: Codes) -> tuple[Tensor, Tensor]:
    """Each feature's highest activation in each context [C, d_sae] and its first position there [C, d_sae]."""
    C, T, F = codes.shape
    seg = codes.ctx * F + codes.feat
    peak = torch.zeros(C * F, device=codes.value.device).scatter_reduce_(0, seg, codes.value, "amax")
    top = codes.value == peak[seg]
    arg = torch.full((C * F,), T, dtype=torch.int64, device=codes.value.device)
    arg.scatter_reduce_(0, seg[top], codes.pos[top], "amin")
    return peak.view(C, F), arg.view(C, F).clamp_(max=T - 1)


@torch.inference_mode()
def reconstruct(sae: SAE, codes: Codes, rows: int) -> Tensor:
    """The SAE's reconstruction [rows, d_in] in raw units, decoded from the nonzeros only."""
    counts = torch.bincount(codes.row, minlength=rows)
    offsets = torch.cumsum(counts, 0) - counts
    w = sae.W_dec
    out = F.embedding_bag(codes.feat, w, offsets, mode="sum", per_sample_weights=codes.value.to(w.dtype))
    return sae.denormalize(out + sae.b_dec).float()


class FeatureStats:
    """Per-feature firing counts and moments, the SAE's reconstruction error, and token frequencies."""

    def __init__(self, d_sae: int, d_in: int, vocab: int, device: torch.device | str = "cpu") -> None:
        dev = torch.device(device)
        self.count = torch.zeros(d_sae, dtype=torch.int64, device=dev)
        self.sum = torch.zeros(d_sae, dtype=torch.float64, device=dev)
        self.sumsq = torch.zeros(d_sae, dtype=torch.float64, device=dev)
        self.sum_x = torch.zeros(d_in, dtype=torch.float64, device=dev)
        self.sums = torch.zeros(3, dtype=torch.float64, device=dev)
        """rows, Σ‖x‖², Σ‖x − x̂‖²."""
        self.token_counts = torch.zeros(vocab, dtype=torch.int64)
        """How often each token id is an analysed position (on the CPU)."""

    @torch.inference_mode()
    def update(self, batch: Batch, codes: Codes, x_hat: Tensor) -> None:
        x = batch.acts.to(x_hat.device)
        self.count += torch.bincount(codes.feat, minlength=len(self.count))
        v = codes.value.double()
        self.sum.index_add_(0, codes.feat, v)
        self.sumsq.index_add_(0, codes.feat, v * v)
        self.sum_x += x.sum(0, dtype=torch.float64)
        self.sums[0] += len(x)
        self.sums[1] += torch.linalg.vector_norm(x, dtype=torch.float64).square()
        self.sums[2] += torch.linalg.vector_norm(x - x_hat, dtype=torch.float64).square()
        ids = batch.tokens[batch.mask]
        if len(ids) and int(ids.max()) >= len(self.token_counts):
            grown = torch.zeros(int(ids.max()) + 1, dtype=torch.int64)
            grown[: len(self.token_counts)] = self.token_counts
            self.token_counts = grown
        self.token_counts += torch.bincount(ids, minlength=len(self.token_counts))

    @property
    def rows(self) -> int:
        return int(self.sums[0])

    def quality(self) -> dict[str, float]:
        """FVU (around the mean), L0 and the fraction of features that never fired, over the analysed tokens."""
        n = max(self.rows, 1)
        total = float(self.sums[1]) - float(self.sum_x.pow(2).sum()) / n
        return {"fvu": float(self.sums[2]) / total if total > 0 else float("nan"),
                "l0": float(self.count.sum()) / n, "dead_fraction": float((self.count == 0).double().mean())}

    def mean_std(self) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of each feature's nonzero activations (NaN where it never fired)."""
        n = self.count.double()
        mean = self.sum / n
        var = (self.sumsq / n - mean * mean).clamp_min(0)
        return mean, var.sqrt()

    def state_dict(self) -> dict[str, Tensor]:
        return {"count": self.count, "sum": self.sum, "sumsq": self.sumsq, "sum_x": self.sum_x, "sums": self.sums,
                "token_counts": self.token_counts}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for k, v in state.items():
            setattr(self, k, v.to(getattr(self, k).device))


class Histograms:
    """Counts of each feature's nonzero activations in `bins` equal-width bins over (0, max]."""

    def __init__(self, max_act: Tensor, bins: int) -> None:
        self.max = max_act.float()
        self.bins = bins
        self.counts = torch.zeros(len(max_act), bins, dtype=torch.int64, device=max_act.device)

    @torch.inference_mode()
    def update(self, codes: Codes) -> None:
        b = bin_index(codes.value, self.max[codes.feat], self.bins)
        self.counts.view(-1).index_add_(0, codes.feat * self.bins + b, torch.ones_like(b))

    def state_dict(self) -> dict[str, Tensor]:
        return {"counts": self.counts}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.counts = state["counts"].to(self.counts.device)


def bin_index(value: Tensor, top: Tensor, bins: int) -> Tensor:
    """Index of the equal-width bin of (0, top] holding `value` (top itself falls in the last bin)."""
    j = torch.floor(value.double() * bins / top.double().clamp_min(1e-30)).long()
    return j.clamp_(0, bins - 1)
