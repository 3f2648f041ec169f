"""Massive-activation positions: found relative to the median norm, never among excluded positions."""

from __future__ import annotations

import torch

from featurescope.outliers import outlier_positions


def test_outliers_are_far_above_the_median_of_the_rows():
    norms = torch.tensor([[88_000.0, 5_000, 6_000, 60_000, 4_500], [90_000.0, 9_000, 5_500, 7_000, 15_000]])
    rows = torch.ones_like(norms, dtype=torch.bool)
    rows[:, 0] = False  # BOS: not a row, so neither an outlier nor part of the median
    out = outlier_positions(norms, rows)
    assert out.tolist() == [[False, False, False, True, False], [False, False, False, False, False]]
    assert not outlier_positions(norms, rows, ratio=0).any()
    assert outlier_positions(norms, rows, ratio=2).sum() == 2  # 60k and 15k against a median of 6k
    assert not outlier_positions(norms, torch.zeros_like(rows)).any()
