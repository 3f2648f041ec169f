"""Sparse building blocks for TopK-style SAEs: top-k selection, gathered dot products and gathered sums.

A sparse code is a `Pattern`: entry `e` says "row `rows[e]` uses feature `cols[e]`", entries sorted by row,
`offsets[r]` the first entry of row `r`. Encoding the selected features (`sparse_dot`) and decoding them
(`sparse_sum`) cost O(entries × d_in) forward and backward — never a dense d_sae × d_in product per row:
the backward passes are an `embedding_bag` (gradient of the rows) and a sparse-COO product (gradient
of the weight matrix), as in OpenAI's TopK kernels and EleutherAI's sparsify.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_ENTRIES = 4096
"""Entries per chunk in `sparse_dot`'s forward: keeps the gathered rows in cache."""


class Pattern(NamedTuple):
    """Which features each row uses (entries sorted by row)."""

    rows: Tensor
    """[E] int64 row of each entry."""
    cols: Tensor
    """[E] int64 feature of each entry."""
    offsets: Tensor
    """[n_rows] int64 index of each row's first entry."""
    n_rows: int
    k: int = 0
    """Entries per row when every row has the same number (then entry e belongs to row e // k), else 0."""

    @staticmethod
    def from_topk(indices: Tensor) -> Pattern:
        """Pattern of a [n_rows, k] index matrix (every row has k entries)."""
        n, k = indices.shape
        rows = torch.arange(n, device=indices.device).repeat_interleave(k)
        offsets = torch.arange(0, n * k, k, device=indices.device)
        return Pattern(rows, indices.reshape(-1).long(), offsets, n, k)

    @staticmethod
    def from_flat(flat: Tensor, n_cols: int, n_rows: int) -> Pattern:
        """Pattern of flat indices `row * n_cols + col` (any order)."""
        flat = flat.sort().values
        rows = torch.div(flat, n_cols, rounding_mode="floor")
        cols = flat - rows * n_cols
        counts = torch.bincount(rows, minlength=n_rows)
        offsets = torch.cumsum(counts, 0) - counts
        return Pattern(rows, cols, offsets, n_rows)


def _coo_t(pattern: Pattern, values: Tensor, n_cols: int) -> Tensor:
    """The sparse matrix [n_cols, n_rows] with `values` at (cols, rows)."""
    index = torch.stack([pattern.cols, pattern.rows])
    return torch.sparse_coo_tensor(
        index, values, (n_cols, pattern.n_rows), check_invariants=False
    )


def _row_grad(pattern: Pattern, g: Tensor, x: Tensor, n_cols: int) -> Tensor:
    """Σ_e g[e]·x[rows[e]] accumulated into row cols[e] of an [n_cols, d] matrix."""
    if x.device.type == "cpu":
        return torch.sparse.mm(_coo_t(pattern, g.to(x.dtype), n_cols), x)
    out = torch.zeros(n_cols, x.shape[1], dtype=x.dtype, device=x.device)
    return out.index_add_(0, pattern.cols, g.to(x.dtype)[:, None] * x[pattern.rows])


def _gathered_dot(x: Tensor, W: Tensor, pattern: Pattern) -> Tensor:
    """out[e] = <x[rows[e]], W[cols[e]]>, in chunks that stay in cache."""
    n = pattern.cols.numel()
    dtype = torch.promote_types(x.dtype, W.dtype)
    out = torch.empty(n, dtype=dtype, device=x.device)
    k = pattern.k
    if k:  # every row has k entries: gather only W's rows, x is read in place
        step = max(1, CHUNK_ENTRIES // k)
        for s in range(0, pattern.n_rows, step):
            w = W.index_select(0, pattern.cols[s * k : (s + step) * k]).view(-1, k, W.shape[1])
            v = x[s : s + step].unsqueeze(2)
            out[s * k : (s + step) * k] = torch.bmm(w.to(dtype), v.to(dtype)).view(-1)
        return out
    for s in range(0, n, CHUNK_ENTRIES):
        w = W.index_select(0, pattern.cols[s : s + CHUNK_ENTRIES]).unsqueeze(1)
        v = x.index_select(0, pattern.rows[s : s + CHUNK_ENTRIES]).unsqueeze(2)
        out[s : s + CHUNK_ENTRIES] = torch.bmm(w.to(dtype), v.to(dtype)).view(-1)
    return out


class _SparseDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, W: Tensor, b: Tensor, pattern: Pattern) -> Tensor:
        ctx.save_for_backward(x, W)
        ctx.pattern = pattern
        return _gathered_dot(x, W, pattern) + b[pattern.cols]

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, W = ctx.saved_tensors
        p: Pattern = ctx.pattern
        gx = gW = gb = None
        if ctx.needs_input_grad[0]:
            gx = F.embedding_bag(p.cols, W, p.offsets, mode="sum", per_sample_weights=g.to(W.dtype))
            gx = gx.to(x.dtype)
        if ctx.needs_input_grad[1]:
            gW = _row_grad(p, g, x.to(W.dtype), W.shape[0])
        if ctx.needs_input_grad[2]:
            gb = torch.bincount(p.cols, weights=g.float(), minlength=W.shape[0]).to(W.dtype)
        return gx, gW, gb, None


class _SparseSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, values: Tensor, W: Tensor, pattern: Pattern) -> Tensor:
        ctx.save_for_backward(values, W)
        ctx.pattern = pattern
        return F.embedding_bag(pattern.cols, W, pattern.offsets, mode="sum",
                               per_sample_weights=values.to(W.dtype))

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        values, W = ctx.saved_tensors
        p: Pattern = ctx.pattern
        gv = gW = None
        g = g.contiguous()
        if ctx.needs_input_grad[0]:
            gv = _gathered_dot(g, W, p).to(values.dtype)
        if ctx.needs_input_grad[1]:
            gW = _row_grad(p, values, g.to(W.dtype), W.shape[0])
        return gv, gW, None


def sparse_dot(x: Tensor, W: Tensor, b: Tensor, pattern: Pattern) -> Tensor:
    """Pre-activations of the selected features: out[e] = <x[rows[e]], W[cols[e]]> + b[cols[e]] ([E])."""
    return _SparseDot.apply(x, W, b, pattern)


def sparse_sum(values: Tensor, W: Tensor, pattern: Pattern) -> Tensor:
    """Decoded rows: out[r] = Σ_{e in row r} values[e]·W[cols[e]] ([n_rows, d])."""
    return _SparseSum.apply(values, W, pattern)


def topk_rows(scores: Tensor, k: int) -> Tensor:
    """Indices [n, k] of the k largest entries of each row of `scores` [n, m] (unordered)."""
    return scores.topk(k, dim=-1, sorted=False).indices


def topk_flat(scores: Tensor, K: int, block: int = 16) -> Tensor:
    """Flat indices of the K largest entries of `scores` (any shape), exact up to ties.

    Two-stage: the K largest entries all lie in the K blocks (of `block` consecutive entries) with the
    largest maxima, so a top-K over the block maxima and one over their entries replace a top-K over
    everything (~6x faster on CPU for K = 32k of 8M).
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    K = min(K, n)
    if n % block or n // block < K:
        return flat.topk(K, sorted=False).indices
    block_max = flat.view(-1, block).amax(-1)
    blocks = block_max.topk(K, sorted=False).indices
    cand = (blocks[:, None] * block + torch.arange(block, device=flat.device)).view(-1)
    pick = flat[cand].topk(K, sorted=False).indices
    return cand[pick]


def geometric_median(x: Tensor, iters: int = 50, eps: float = 1e-8) -> Tensor:
    """Geometric median of the rows of `x` [n, d] (Weiszfeld's algorithm, from the mean)."""
    x = x.double()
    med = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - med).norm(dim=1).clamp_min(eps)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - med).norm() <= 1e-7 * (1.0 + med.norm()):
            med = new
            break
        med = new
    return med.float()
