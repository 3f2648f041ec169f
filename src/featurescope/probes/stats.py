"""The statistics of the probes: AUROC with tied ranks, permutation nulls, column correlations, split-conformal
thresholds, and group-aware splits. Pure numpy; every function works on many features (columns) at once."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.stats import rankdata

from featurescope.errors import FeaturescopeError


def _labels(labels: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(labels).astype(bool).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{y.shape[0]} labels for {n} rows")
    if y.all() or not y.any():
        raise FeaturescopeError("AUROC needs at least one positive and one negative example")
    return y


def midranks(scores: np.ndarray) -> np.ndarray:
    """Ranks 1..n of each column of `scores` [n, d] (tied values share the mean of their ranks), float64."""
    return rankdata(np.asarray(scores, dtype=np.float64), method="average", axis=0)


def auroc_from_ranks(ranks: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of each column from its mid-ranks [n, d] and 0/1 labels [n] or [P, n] (P label vectors → [P, d]).

    AUROC = (R₊ − n₊(n₊+1)/2) / (n₊ n₋), R₊ the rank sum of the positives: the Mann–Whitney U over n₊ n₋,
    i.e. P(score of a random positive > that of a random negative) + ½ P(tie).
    """
    y = np.asarray(labels, dtype=np.float64)
    n_pos = y.sum(axis=-1, keepdims=True)
    n_neg = y.shape[-1] - n_pos
    return (y @ ranks - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of each column of `scores` [n, d] (or a vector [n] → scalar array) for 0/1 `labels` [n]; ties count ½."""
    s = np.asarray(scores, dtype=np.float64)
    vector = s.ndim == 1
    s = s.reshape(s.shape[0], -1)
    y = _labels(labels, s.shape[0])
    out = auroc_from_ranks(midranks(s), y.astype(np.float64))
    return out[0] if vector else out


def permuted_labels(labels: np.ndarray, groups: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` label vectors [n, len(labels)] drawn from the null that labels are exchangeable within each group.

    Within a matched pair (a group of one positive and one negative) the two labels swap with probability ½;
    items whose group has one member are shuffled among all such items.
    """
    y = np.asarray(labels).astype(np.float64)
    g = np.asarray(groups)
    out = np.repeat(y[None, :], n, axis=0)
    _, inverse, counts = np.unique(g, return_inverse=True, return_counts=True)
    singles = np.flatnonzero(counts[inverse] == 1)
    if len(singles) > 1:
        order = np.argsort(rng.random((n, len(singles))), axis=1)
        out[:, singles] = y[singles][order]
    for gid in np.flatnonzero(counts > 1):
        members = np.flatnonzero(inverse == gid)
        order = np.argsort(rng.random((n, len(members))), axis=1)
        out[:, members] = y[members][order]
    return out


def permutation_pvalues(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, n: int,
                        rng: np.random.Generator) -> np.ndarray:
    """One-sided p-values [d] that each column's AUROC is this high under `permuted_labels`: (1 + #{null ≥ obs}) /
    (1 + n). Scores [n_items, d]."""
    s = np.asarray(scores, dtype=np.float64).reshape(len(labels), -1)
    ranks = midranks(s)
    observed = auroc_from_ranks(ranks, np.asarray(labels, dtype=np.float64))
    null = auroc_from_ranks(ranks, permuted_labels(labels, groups, n, rng))
    return (1 + (null >= observed[None, :] - 1e-12).sum(axis=0)) / (1 + n)


def null_max_auroc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, n: int,
                   rng: np.random.Generator) -> np.ndarray:
    """The best AUROC over all columns under each of `n` label permutations [n]: how high the top feature's
    AUROC gets by chance when one picks the best of d."""
    ranks = midranks(np.asarray(scores, dtype=np.float64).reshape(len(labels), -1))
    out = np.empty(n)
    for s in range(0, n, 64):
        perm = permuted_labels(labels, groups, min(64, n - s), rng)
        out[s:s + len(perm)] = auroc_from_ranks(ranks, perm).max(axis=1)
    return out


def column_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of `a` with the same column of `b` ([n, d] each); 0 where either
    column is constant (the correlation is undefined there)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    num = (a * b).sum(axis=0)
    den = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    out = np.zeros_like(num)
    ok = den > 1e-12 * np.maximum(1.0, np.abs(num))
    out[ok] = num[ok] / den[ok]
    return np.clip(out, -1.0, 1.0)


def conformal_threshold(negatives: np.ndarray, fpr: float) -> float:
    """The threshold τ such that a fresh negative exchangeable with `negatives` scores > τ with probability
    at most `fpr`: the ⌈(n+1)(1−fpr)⌉-th smallest score (split conformal). +inf when n < 1/fpr − 1."""
    if not 0 < fpr < 1:
        raise FeaturescopeError(f"the false-positive rate must be between 0 and 1 (got {fpr})")
    s = np.sort(np.asarray(negatives, dtype=np.float64).reshape(-1))
    k = math.ceil((len(s) + 1) * (1 - fpr))
    return float(s[k - 1]) if k <= len(s) else math.inf


def min_negatives(fpr: float) -> int:
    """The fewest calibration negatives for which `conformal_threshold` is finite."""
    return max(1, math.ceil(1 / fpr - 1))


class Split(NamedTuple):
    """Boolean masks over the items: discovery (train) and held-out (validation)."""

    train: np.ndarray
    heldout: np.ndarray


def split_groups(groups: np.ndarray, labels: np.ndarray, heldout: float, seed: int) -> Split:
    """Hold out a fraction `heldout` of the groups (both members of a matched pair go to the same side),
    drawn separately among the groups that hold positives and those that hold only negatives."""
    if not 0 < heldout < 1:
        raise FeaturescopeError(f"the held-out fraction must be between 0 and 1 (got {heldout})")
    g = np.asarray(groups)
    y = np.asarray(labels).astype(bool)
    rng = np.random.default_rng(seed)
    uniq = np.unique(g)
    has_pos = np.array([y[g == u].any() for u in uniq])
    chosen: list[np.ndarray] = []
    for stratum in (uniq[has_pos], uniq[~has_pos]):
        if len(stratum) == 0:
            continue
        k = round(len(stratum) * heldout)
        k = min(max(k, 1), len(stratum) - 1) if len(stratum) > 1 else 0
        chosen.append(rng.permutation(stratum)[:k])
    mask = np.isin(g, np.concatenate(chosen) if chosen else np.array([], dtype=g.dtype))
    return Split(~mask, mask)


DEFAULT_CALIBRATION = 0.3
"""The calibration fraction of `featurescope probe` (the monitor's when no probe run is stored)."""


class Parts(NamedTuple):
    """Boolean masks over the items: discovery, held-out validation, and monitor calibration (disjoint)."""

    train: np.ndarray
    heldout: np.ndarray
    calibration: np.ndarray


def split_parts(groups: np.ndarray, labels: np.ndarray, heldout: float, calibration: float, seed: int) -> Parts:
    """Three disjoint parts by group: first a fraction `calibration` of the groups is set aside for the monitor's
    threshold (`split_groups` with `seed`), then the rest is split into discovery and a held-out fraction
    `heldout` of it (`split_groups` with `seed` + 1). `calibration` 0 leaves no calibration part."""
    g = np.asarray(groups)
    y = np.asarray(labels)
    cal = np.zeros(len(g), dtype=bool) if calibration == 0 else split_groups(g, y, calibration, seed).heldout
    rest = np.flatnonzero(~cal)
    inner = split_groups(g[rest], y[rest], heldout, seed + 1 if calibration else seed)
    train = np.zeros(len(g), dtype=bool)
    held = np.zeros(len(g), dtype=bool)
    train[rest[inner.train]] = True
    held[rest[inner.heldout]] = True
    return Parts(train, held, cal)
