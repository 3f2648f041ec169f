"""The bfloat16 screen of logit effects finds the exact top and bottom columns, falling back where it cannot tell."""

from __future__ import annotations

import torch

from featurescope.analysis import screen
from featurescope.analysis.screen import full_extremes, screened_extremes


def test_screened_extremes_equal_float64_brute_force_and_redo_ties(monkeypatch):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8192 + 37, 48, generator=g) * torch.rand(1, 48, generator=g) * 3  # a tail of 37 columns
    d = torch.randn(300, 48, generator=g)
    d[5] = 0  # every value ties: only the full product can order them as it always has
    d[6] = w[8200] * 2  # the best column is in the tail
    redone = []

    def full(d_: torch.Tensor, w_: torch.Tensor, n: int) -> screen.Extremes:
        redone.append(len(d_))
        return full_extremes(d_, w_, n)

    monkeypatch.setattr(screen, "full_extremes", full)
    got = screened_extremes(d, w, 10, chunk=128)
    exact = d.double() @ w.double().T
    exact[5] = 0
    top, bottom = exact.topk(10, dim=1), exact.topk(10, dim=1, largest=False)
    rows = [i for i in range(len(d)) if i != 5]
    assert torch.equal(got.top_ids[rows], top.indices[rows]) and torch.equal(got.bottom_ids[rows], bottom.indices[rows])
    assert torch.allclose(got.top_values, top.values.float(), rtol=1e-6, atol=1e-6)
    assert torch.allclose(got.bottom_values, bottom.values.float(), rtol=1e-6, atol=1e-6)
    assert int(got.top_ids[6, 0]) == 8200
    assert sum(redone) >= 1 and sum(redone) < 10  # the zero row (and at most a few near-ties) in full
    zero = full_extremes(d[5:6], w, 10)
    assert torch.equal(got.top_ids[5], zero.top_ids[0]) and torch.equal(got.bottom_ids[5], zero.bottom_ids[0])
