"""Which features detect a probe category, validated on held-out texts.

For one category with per-text scores (each feature's max activation over the text's tokens):

1. Split the matched groups into a discovery half and a held-out half (`stats.split_groups`).
2. Rank every feature by its AUROC on the discovery half (positives above negatives; features that fire more
   on negatives are not detectors and are never candidates). The `candidates` best with AUROC > ½ are kept.
3. Chance level of step 2: `null_train_max`, the 95th percentile over label permutations (within matched
   pairs) of the best discovery AUROC over all features — how high the winner's AUROC gets by selection alone.
4. Each candidate's AUROC on the held-out half, with a one-sided permutation p-value (labels swapped within
   matched pairs), Bonferroni-corrected over the candidates.
5. A candidate is *reported* when its held-out AUROC ≥ `min_auroc` and its corrected p-value ≤ `alpha`.
   A category with no reported feature says so in its verdict.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from featurescope.probes.stats import Split, auroc, null_max_auroc, permutation_pvalues

NULL_PERMUTATIONS = 200
"""Permutations for `null_train_max` (each one scores every feature)."""


class Candidate(NamedTuple):
    feature: int
    train_auroc: float
    heldout_auroc: float
    p_value: float
    """Uncorrected one-sided permutation p-value of the held-out AUROC."""
    auroc: float
    """AUROC on all texts of the category (for display; not used to decide)."""
    reported: bool
    peak_tokens: list[list[Any]]
    """The tokens on which it peaks in the category's positives, most frequent first: [[token, count], ...]
    (filled in by the caller that has the tokens; [] here)."""


class CategoryResult(NamedTuple):
    """The verdict on one category and its candidates, best discovery AUROC first."""

    category: str
    positives: int
    negatives: int
    train_items: int
    heldout_items: int
    best_train_auroc: float
    null_train_max: float
    candidates: list[Candidate]
    verdict: str

    @property
    def reported(self) -> list[Candidate]:
        return [c for c in self.candidates if c.reported]


def rank_category(category: str, scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, split: Split, *,
                  candidates: int = 10, min_auroc: float = 0.7, alpha: float = 0.05, permutations: int = 2000,
                  seed: int = 0) -> CategoryResult:
    """Steps 2–5 of the module doc for `scores` [n_texts, d_sae], 0/1 `labels` and `groups` [n_texts]."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    rng = np.random.default_rng(seed)
    tr, ho = split
    train = auroc(scores[tr], labels[tr])
    order = np.lexsort((np.arange(len(train)), -train))
    chosen = [int(f) for f in order[:candidates] if train[f] > 0.5]
    null = null_max_auroc(scores[tr], labels[tr], groups[tr], min(NULL_PERMUTATIONS, permutations), rng)
    null_train_max = float(np.quantile(null, 0.95))
    rows: list[Candidate] = []
    if chosen:
        held = auroc(scores[ho][:, chosen], labels[ho])
        p = permutation_pvalues(scores[ho][:, chosen], labels[ho], groups[ho], permutations, rng)
        full = auroc(scores[:, chosen], labels)
        m = len(chosen)
        for j, f in enumerate(chosen):
            ok = bool(held[j] >= min_auroc and min(1.0, p[j] * m) <= alpha)
            rows.append(Candidate(f, float(train[f]), float(held[j]), float(p[j]), float(full[j]), ok, []))
    best = float(train[order[0]]) if len(order) else 0.5
    result = CategoryResult(category, int(labels.sum()), int((1 - labels).sum()), int(tr.sum()), int(ho.sum()),
                            best, null_train_max, rows, "")
    return result._replace(verdict=verdict(result, min_auroc, alpha))


def verdict(r: CategoryResult, min_auroc: float, alpha: float) -> str:
    """One sentence: what was found, or why nothing was."""
    found = r.reported
    if found:
        best = max(found, key=lambda c: c.heldout_auroc)
        return (f"{len(found)} feature{'s' if len(found) > 1 else ''} generalise to held-out texts (best: "
                f"{best.feature}, held-out AUROC {best.heldout_auroc:.3f})")
    if not r.candidates:
        return "no feature fires more on positives than on negatives: nothing found"
    best = max(r.candidates, key=lambda c: c.heldout_auroc)
    chance = " (no better than the best-of-all-features chance level)" if r.best_train_auroc <= r.null_train_max \
        else ""
    return (f"no feature generalises: best held-out AUROC {best.heldout_auroc:.3f} (feature {best.feature}; bar "
            f"{min_auroc:g} and corrected p ≤ {alpha:g}); best discovery AUROC {r.best_train_auroc:.3f} vs chance "
            f"{r.null_train_max:.3f}{chance}")
