"""Cross-lingual consistency of every feature from its activations on aligned segments.

`acts[u, l, i]` is feature i's max activation over the tokens of segment u in language l. Then

- score_i = the mean, over the unordered language pairs (l, m), of the Pearson correlation across segments of
  acts[:, l, i] and acts[:, m, i] (0 for a pair where the feature is constant in either language, e.g. never
  fires there). 1: it fires on the same segments, equally strongly, in every language.
- transfer_i = the mean, over ordered pairs (l, m), of the fraction of feature i's top `top_segments` segments in
  l (those where it fires) whose translation into m also makes it fire; `base_rate_i` = the mean fraction of
  all segments on which it fires, the transfer a feature firing at random would reach.
- eligible_i: the feature is sparse (corpus density ≤ max_density), fires on ≥ min_segments segments in every
  language and on ≤ max_segment_fraction of the segments in every language. Dense features correlate across
  languages through segment length alone; they are never reported as cross-lingual.
- null_max: the highest score any eligible feature reaches after the segments of each language are shuffled
  independently (`shuffles` times): what chance alignment gives. A feature is listed as cross-lingual only when
  eligible and its score is ≥ min_score and > null_max.
"""

from __future__ import annotations

from itertools import combinations, permutations
from typing import NamedTuple

import numpy as np

from featurescope.probes.stats import column_pearson


class CrossLingual(NamedTuple):
    """Per-feature scores (arrays over features) and the chance level."""

    score: np.ndarray
    pairs: np.ndarray
    """Pearson r per unordered language pair [P, d]."""
    pair_names: list[str]
    transfer: np.ndarray
    """NaN where the feature never fires."""
    base_rate: np.ndarray
    fired: np.ndarray
    """Segments on which each feature fires, per language [L, d]."""
    eligible: np.ndarray
    null_max: float

    def listed(self, min_score: float) -> np.ndarray:
        """Feature ids reported as cross-lingual, highest score first."""
        ok = self.eligible & (self.score >= min_score) & (self.score > self.null_max)
        ids = np.flatnonzero(ok)
        return ids[np.argsort(-self.score[ids], kind="stable")]


def pair_scores(acts: np.ndarray, langs: list[str]) -> tuple[np.ndarray, list[str]]:
    """Pearson r of each feature between each unordered pair of languages: [P, d] and the pair names."""
    pairs = list(combinations(range(len(langs)), 2))
    r = np.stack([column_pearson(acts[:, a], acts[:, b]) for a, b in pairs])
    return r, [f"{langs[a]}-{langs[b]}" for a, b in pairs]


def transfer_rates(acts: np.ndarray, top_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """(transfer [d], base_rate [d]) as defined in the module doc."""
    n_seg, n_lang, d = acts.shape
    fires = acts > 0
    k = min(top_segments, n_seg)
    hit = np.zeros(d)
    count = np.zeros(d)
    for a, b in permutations(range(n_lang), 2):
        order = np.argsort(-acts[:, a], axis=0, kind="stable")[:k]
        top = np.take_along_axis(fires[:, a], order, axis=0)
        also = np.take_along_axis(fires[:, b], order, axis=0)
        n_top = top.sum(axis=0)
        used = n_top > 0
        hit[used] += (top & also).sum(axis=0)[used] / n_top[used]
        count[used] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        transfer = np.where(count > 0, hit / np.maximum(count, 1), np.nan)
    return transfer, fires.mean(axis=(0, 1))


def eligibility(fired: np.ndarray, n_seg: int, density: np.ndarray | None, *, max_density: float,
                min_segments: int, max_segment_fraction: float) -> np.ndarray:
    """Bool [d]: sparse in the corpus, and firing on neither too few nor too many segments in every language."""
    ok = np.asarray((fired >= min_segments).all(axis=0) & (fired <= max_segment_fraction * n_seg).all(axis=0))
    if density is not None:
        ok &= np.asarray(density) <= max_density
    return ok


def cross_lingual(acts: np.ndarray, langs: list[str], density: np.ndarray | None = None, *,
                  max_density: float = 0.05, min_segments: int = 3, max_segment_fraction: float = 0.5,
                  top_segments: int = 10, shuffles: int = 5, seed: int = 0) -> CrossLingual:
    """Score every feature from `acts` [segments, languages, d] (see the module doc); `density` [d] is each
    feature's firing density over the analysed corpus (None: no density filter)."""
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim != 3 or acts.shape[1] != len(langs) or len(langs) < 2:
        raise ValueError(f"expected activations [segments, {len(langs)} languages, features], got {acts.shape}")
    n_seg = acts.shape[0]
    r, names = pair_scores(acts, langs)
    score = r.mean(axis=0)
    transfer, base = transfer_rates(acts, top_segments)
    fired = (acts > 0).sum(axis=0)
    eligible = eligibility(fired, n_seg, density, max_density=max_density, min_segments=min_segments,
                           max_segment_fraction=max_segment_fraction)
    rng = np.random.default_rng(seed)
    null_max = -1.0
    idx = np.flatnonzero(eligible)
    for _ in range(shuffles if len(idx) else 0):
        shuffled = np.stack([acts[rng.permutation(n_seg), li][:, idx] for li in range(len(langs))], axis=1)
        null_max = max(null_max, float(pair_scores(shuffled, langs)[0].mean(axis=0).max()))
    return CrossLingual(score, r, names, transfer, base, fired, eligible, null_max)


def aligned_examples(acts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's top `k` segments by mean activation over languages: (segment ids [k, d], valid [k, d]);
    a slot is invalid where the mean is 0 (fewer than k segments make the feature fire)."""
    mean = np.asarray(acts, dtype=np.float64).mean(axis=1)
    k = min(k, mean.shape[0])
    order = np.argsort(-mean, axis=0, kind="stable")[:k]
    return order, np.take_along_axis(mean, order, axis=0) > 0
