"""Exact top and bottom `n` of each row of `D @ W.T` (float32), screened with a bfloat16 product.

A bfloat16 matrix product runs at about twice the float32 rate on CPUs with bfloat16 dot products, but its
values are only approximate. So it serves as a screen: each row keeps the `keep` largest and `keep` smallest
approximate values (found through the maxima and minima of blocks of BLOCK columns, without a full sort),
those candidates are computed again in float64, and a rigorous bound on the screen's error decides whether
any column left out could still belong to the top (or bottom) `n`. Where it could (near-ties, zero rows), the
row is computed in full in float32, as `full_extremes` does. So the columns are those of the exact top and
bottom `n`; a float32 product finds the same ones except where two values lie within its rounding (~1e-6
relative), whose order it decides by chance.

The bound: with d̂, ŵ the bfloat16 roundings of d, w (r_d = d − d̂, r_w = w − ŵ), the product sums exact
products d̂_j ŵ_j in float32 (error ≤ γ‖d̂‖‖ŵ‖, γ = 2K·2⁻²⁴) and rounds the sum to bfloat16 (relative error
≤ u = 2⁻⁸); d·w − d̂·ŵ = r_d·ŵ + d̂·r_w + r_d·r_w is at most ‖r_d‖‖ŵ‖ + ‖d̂‖‖r_w‖ + ‖r_d‖‖r_w‖ (Cauchy–Schwarz,
with the largest norms over the columns). A column left out whose approximate value is at most h is thus at
most h + 2u|h| + that margin (+ γ‖d‖‖w‖ to spare); below the n-th candidate's exact value, it cannot belong.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

BLOCK = 64
"""Columns per block whose maximum and minimum the screen compares."""
KEEP = 32
"""Candidates per row and side computed again in float64."""
MIN_ROWS, MIN_COLUMNS = 256, 8192
"""Below these sizes the screen does not pay for itself: `screened_extremes` computes in full."""
U = 2.0**-8
"""Unit roundoff of bfloat16."""


class Extremes(NamedTuple):
    """Per row, the `n` largest values (largest first) and the `n` smallest (smallest first), with their columns."""

    top_ids: Tensor
    top_values: Tensor
    bottom_ids: Tensor
    bottom_values: Tensor


def full_extremes(d: Tensor, w: Tensor, n: int) -> Extremes:
    """The top and bottom `n` of `d @ w.T`, computed in full in `w`'s precision (values float32)."""
    values = (d.to(w.dtype) @ w.T).float()
    top, bottom = values.topk(n, dim=1), values.topk(n, dim=1, largest=False)
    return Extremes(top.indices, top.values, bottom.indices, bottom.values)


def worth_screening(rows: int, w: Tensor) -> bool:
    """Whether `screened_extremes` pays for itself: float32 on the CPU, enough rows and columns."""
    return w.dtype == torch.float32 and w.device.type == "cpu" and rows >= MIN_ROWS and len(w) >= MIN_COLUMNS


class _Screen(NamedTuple):
    """The bfloat16 copy of `w` and what the error bound needs of it."""

    w_bf16: Tensor
    norm_bf16: float
    """max_t ‖ŵ_t‖."""
    norm_error: float
    """max_t ‖w_t − ŵ_t‖."""
    norm: float
    """max_t ‖w_t‖."""


def _prepare(w: Tensor, chunk: int = 16384) -> _Screen:
    w_bf16 = w.to(torch.bfloat16)
    norm_bf16 = norm_error = norm = 0.0
    for s in range(0, len(w), chunk):
        part, rounded = w[s:s + chunk], w_bf16[s:s + chunk].float()
        norm_bf16 = max(norm_bf16, float(rounded.norm(dim=1).max()))
        norm_error = max(norm_error, float((part - rounded).norm(dim=1).max()))
        norm = max(norm, float(part.norm(dim=1).max()))
    return _Screen(w_bf16, norm_bf16, norm_error, norm)


def _side(approx: Tensor, block_extreme: Tensor, keep: int, largest: bool) -> tuple[Tensor, Tensor]:
    """Columns of the `keep` most extreme approximate values of each row [R, keep], and the most extreme
    approximate value among the columns left out [R] (float32)."""
    rows = len(approx)
    blocks = block_extreme.topk(keep + 1, dim=1, largest=largest)
    chosen = blocks.indices[:, :keep]
    cols = (chosen[:, :, None] * BLOCK + torch.arange(BLOCK)).reshape(rows, -1)  # [R, keep · BLOCK]
    best = approx.gather(1, cols).topk(keep + 1, dim=1, largest=largest)
    ids = cols.gather(1, best.indices[:, :keep])
    inner, outer = best.values[:, keep].float(), blocks.values[:, keep].float()  # the best left out, in and out
    left_out = torch.maximum(inner, outer) if largest else torch.minimum(inner, outer)
    return ids, left_out


def _exact(d: Tensor, w: Tensor, ids: Tensor) -> Tensor:
    """d[r] · w[ids[r, j]] in float64: [R, J]."""
    return torch.bmm(w[ids].double(), d.double()[:, :, None]).squeeze(2)


@torch.inference_mode()
def screened_extremes(d: Tensor, w: Tensor, n: int, chunk: int = 256, keep: int = KEEP,
                      screen: _Screen | None = None) -> Extremes:
    """The top and bottom `n` of each row of `d @ w.T` (both float32, on the CPU), values computed in float64
    (see the module's docstring), `chunk` rows at a time."""
    rows, k = d.shape
    n = min(n, len(w))
    keep = max(keep, n)
    main = (len(w) // BLOCK) * BLOCK
    if rows == 0 or main // BLOCK <= keep:
        return full_extremes(d, w, n)
    sc = screen if screen is not None else _prepare(w)
    gamma = 2 * k * 2.0**-24
    tail = torch.arange(main, len(w))  # the last < BLOCK columns: always candidates
    parts: list[Extremes] = []
    for s in range(0, rows, chunk):
        dc = d[s:s + chunk].float().contiguous()
        db = dc.to(torch.bfloat16)
        r_d = (dc - db.float()).norm(dim=1)
        n_db = db.float().norm(dim=1)
        margin = (r_d * sc.norm_bf16 + n_db * sc.norm_error + r_d * sc.norm_error
                  + gamma * (n_db * sc.norm_bf16 + dc.norm(dim=1) * sc.norm))
        approx = db @ sc.w_bf16[:main].T  # [R, main] bfloat16
        blocked = approx.view(len(dc), -1, BLOCK)
        top_ids, top_out = _side(approx, blocked.amax(2), keep, largest=True)
        bot_ids, bot_out = _side(approx, blocked.amin(2), keep, largest=False)
        del approx, blocked
        extra = tail.expand(len(dc), -1)
        top_ids, bot_ids = torch.cat([top_ids, extra], 1), torch.cat([bot_ids, extra], 1)
        top_val, bot_val = _exact(dc, w, top_ids), _exact(dc, w, bot_ids)
        top = top_val.topk(n, dim=1)
        bottom = bot_val.topk(n, dim=1, largest=False)
        top_ok = top_out + 2 * U * top_out.abs() + margin < top.values[:, -1]
        bot_ok = bot_out - 2 * U * bot_out.abs() - margin > bottom.values[:, -1]
        part = Extremes(top_ids.gather(1, top.indices), top.values.float(), bot_ids.gather(1, bottom.indices),
                        bottom.values.float())
        redo = (~(top_ok & bot_ok)).nonzero().squeeze(1)
        if len(redo):  # a column left out might belong: these rows in full
            full = full_extremes(dc[redo], w, n)
            for mine, theirs in zip(part, full, strict=True):
                mine[redo] = theirs
        parts.append(part)
    return Extremes(*(torch.cat(p) for p in zip(*parts, strict=True)))
