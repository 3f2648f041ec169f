"""What the feature database holds about a feature, as the records `FeatureStore` returns (NamedTuples), and how
labels are ranked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple


class FeatureStats(NamedTuple):
    """Activation statistics of one feature over the analysed tokens."""

    count: int  # type: ignore[assignment]  # shadows tuple.count, as NamedTuple allows
    """Tokens where the feature fires (activation > 0)."""
    density: float
    """count / tokens analysed."""
    mean: float | None
    """Mean activation where it fires."""
    std: float | None
    max: float
    max_context: int | None
    max_position: int | None
    decoder_norm: float


class Histogram(NamedTuple):
    """Counts of nonzero activations in equal-width bins over (0, max]."""

    max: float
    counts: list[int]


class Example(NamedTuple):
    """A window of one context with the feature's activation on each token."""

    kind: str
    """top (highest activation per context), quantile (sampled from an interval of [0, max]) or negative."""
    interval: int
    """Quantile interval j covers [j·max/n, (j+1)·max/n]; 0 for the other kinds."""
    rank: int
    value: float
    """The activation at `position` (the context's peak for top examples)."""
    context: int
    position: int
    start: int
    """Position in the context of the window's first token."""
    token_ids: list[int]
    tokens: list[str]
    """Each token's text, byte tokens merged into characters (`featurescope.tokentext`): "" for a byte token whose
    character is shown on an earlier token."""
    acts: list[float]
    """The activation on each token; the tokens of one character all carry the max of theirs."""


class TokenEffect(NamedTuple):
    """A token and the feature's direct effect on its logit."""

    token: int
    text: str
    value: float


class Neighbour(NamedTuple):
    """Another feature and the cosine similarity of the two decoder directions."""

    feature: int
    cosine: float
    label: str


class Label(NamedTuple):
    """A label: `auto` (LLM-free) or `llm`, with its detection score (balanced accuracy) and details."""

    kind: str
    text: str
    score: float | None
    details: dict[str, Any]
    score_lower: float | None = None
    """The score's lower 95% confidence bound (labels rank by it); None where unscored or in version 1 databases."""

    @property
    def rank_score(self) -> float:
        """What labels are ranked by: the lower bound, else the score, else −1."""
        return label_rank(self.score, self.score_lower)


class Feature(NamedTuple):
    """Everything the database holds about one feature."""

    id: int
    stats: FeatureStats
    histogram: Histogram | None
    top: list[Example]
    quantiles: list[Example]
    negatives: list[Example]
    positive_logits: list[TokenEffect]
    negative_logits: list[TokenEffect]
    neighbours: list[Neighbour]
    map_xy: tuple[float, float] | None
    labels: list[Label]

    @property
    def label(self) -> Label | None:
        """The best-scored label (an LLM label wins ties)."""
        return best_label(self.labels)


class FeatureSummary(NamedTuple):
    """One line of a feature listing."""

    id: int
    density: float
    max: float
    label: str
    score: float | None
    score_lower: float | None = None


def label_rank(score: float | None, score_lower: float | None) -> float:
    """A label's rank: its score's lower confidence bound, else its score (version 1 databases), else −1."""
    if score_lower is not None:
        return score_lower
    return score if score is not None else -1.0


def best_label(labels: Sequence[Label]) -> Label | None:
    """The label ranked highest by `Label.rank_score` (unscored last; `llm` before `auto` on ties)."""
    if not labels:
        return None
    return max(labels, key=lambda lb: (lb.rank_score, lb.kind == "llm"))
