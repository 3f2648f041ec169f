"""The JSON the explorer's API sends and accepts (pydantic models; they also make the OpenAPI document).

Every string that comes from the corpus (tokens, labels) is plain text: the pages insert it with
`textContent`, never as HTML.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from featurescope.server import limits


class Info(BaseModel):
    """What the database is and what this explorer can do."""

    db: str
    d_sae: int
    d_in: int | None
    model: str | None
    layer: int | None
    architecture: str | None
    k: int | None
    tokens: int | None
    corpus: str | None
    created: str | None
    map_method: str | None
    live: bool = Field(description="whether a model and SAE are loaded (live search, steering, CE loss)")
    limits: dict[str, float]


class FeatureSummary(BaseModel):
    """One line of a listing: a feature, how often and how strongly it fires, and its best label."""

    id: int
    density: float
    max: float
    label: str
    score: float | None
    score_lower: float | None = Field(default=None, description="lower 95% bound of the score (ranks labels)")


class Stats(BaseModel):
    count: int = Field(description="tokens where the feature fires")
    density: float = Field(description="count / tokens analysed")
    mean: float | None = Field(description="mean activation where it fires")
    std: float | None
    max: float
    max_context: int | None
    max_position: int | None
    decoder_norm: float


class Histogram(BaseModel):
    max: float = Field(description="the bins split (0, max] into equal widths")
    counts: list[int]


class Example(BaseModel):
    """A window of one context with the feature's activation on every token."""

    kind: str = Field(description="top, quantile or negative")
    interval: int = Field(description="quantile interval j covers [j·max/n, (j+1)·max/n]")
    rank: int
    value: float
    context: int
    position: int = Field(description="the token the example is about, as a position in the context")
    start: int = Field(description="position of the window's first token in the context")
    tokens: list[str]
    token_ids: list[int]
    acts: list[float]


class TokenEffect(BaseModel):
    token: int
    text: str
    value: float


class Neighbour(BaseModel):
    feature: int
    cosine: float
    label: str


class Label(BaseModel):
    kind: str = Field(description="auto (LLM-free) or llm")
    text: str
    score: float | None = Field(description="detection score (balanced accuracy), if scored")
    details: dict[str, Any]
    score_lower: float | None = Field(default=None, description="lower 95% bound of the score (ranks labels)")


class FeatureDetail(BaseModel):
    """Everything the database holds about one feature."""

    id: int
    label: str
    stats: Stats
    histogram: Histogram | None
    top: list[Example]
    quantiles: list[Example]
    positive_logits: list[TokenEffect]
    negative_logits: list[TokenEffect]
    neighbours: list[Neighbour]
    map_xy: list[float] | None
    labels: list[Label]
    intervals: int | None = Field(description="quantile intervals the analysis used")


class MapPoints(BaseModel):
    """All features on the 2-D map, column by column (features without a point are left out)."""

    method: str | None
    ids: list[int]
    x: list[float]
    y: list[float]
    density: list[float]
    labels: list[str]


class DensityHistogram(BaseModel):
    """Features by log10 activation density; `never_fired` are the features that never fired."""

    edges: list[float]
    counts: list[int]
    never_fired: int


class Overview(BaseModel):
    info: Info
    quality: dict[str, float | None] = Field(description="fvu, l0, dead_fraction, alive over the analysed tokens, "
                                                         "and CE loss recovered once measured")
    sae_metrics: dict[str, float | None] = Field(description="metrics recorded when the SAE was trained")
    ce_source: str | None = Field(description="where loss_recovered comes from (None: not measured)")
    ood_source: str | None = Field(None, description="what quality.ood_loss_recovered (from --eval) counts")
    density: DensityHistogram


class TextSearchRequest(BaseModel):
    text: str = Field(min_length=1, max_length=limits.MAX_TEXT_CHARS)
    n: int = Field(10, ge=1, le=limits.MAX_HITS)
    by: Literal["max", "relative"] = Field(
        "relative", description="relative (default): activation / the feature's corpus max, so that features "
        "firing near their usual strength come first; max: raw activation (favours dense, strong features)")


class Hit(BaseModel):
    feature: int
    max: float
    relative: float = Field(description="max / the feature's max over the analysed corpus")
    label: str
    acts: list[float] = Field(description="the feature's activation on every token of the text")


class TextSearchResult(BaseModel):
    tokens: list[str]
    token_ids: list[int]
    hits: list[Hit]


class SteerFeature(BaseModel):
    feature: int = Field(ge=0)
    value: str | float = Field("auto", description='"auto" (the calibrated multiple, docs/steering.md), a multiple '
                               'of the max activation ("5x", "-2x") or a number')

    @field_validator("value")
    @classmethod
    def _short(cls, v: str | float) -> str | float:
        if isinstance(v, str) and len(v) > 32:
            raise ValueError("steering value too long")
        return v


class SteerRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=limits.MAX_TEXT_CHARS)
    features: list[SteerFeature] = Field(min_length=1, max_length=limits.MAX_STEER_FEATURES)
    mode: Literal["clamp", "add", "conditional"] = "clamp"
    max_new_tokens: int = Field(40, ge=1, le=limits.MAX_NEW_TOKENS)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    chat: bool = False


class AutoChoice(BaseModel):
    multiple: float = Field(description="the chosen multiple of the feature's max activation")
    reason: str


class SteerResult(BaseModel):
    prompt: str = Field(description="the text the model saw")
    baseline: str
    steered: str
    values: dict[int, float] = Field(description="the absolute value each feature was steered with")
    auto: dict[int, AutoChoice] = Field(default_factory=dict, description="the choice made for each feature "
                                        "given auto")


class CERequest(BaseModel):
    contexts: int = Field(8, ge=1, le=limits.MAX_CE_CONTEXTS)


class CEResult(BaseModel):
    ce_clean: float | None
    ce_spliced: float | None
    ce_zero: float | None
    loss_recovered: float | None
    tokens: int
    corpus: str


class StreamSteerRequest(BaseModel):
    """A streamed steering run: the baseline, then one steered continuation per entry of `columns`."""

    prompt: str = Field(min_length=1, max_length=limits.MAX_TEXT_CHARS)
    columns: list[list[SteerFeature]] = Field(
        min_length=1, max_length=limits.MAX_SWEEP_COLUMNS,
        description="each column's features and values (a sweep: the same features at several values)")
    mode: Literal["clamp", "add", "conditional"] = "clamp"
    max_new_tokens: int = Field(40, ge=1, le=limits.MAX_NEW_TOKENS)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    chat: bool = False

    @field_validator("columns")
    @classmethod
    def _column_sizes(cls, v: list[list[SteerFeature]]) -> list[list[SteerFeature]]:
        if any(not 1 <= len(c) <= limits.MAX_STEER_FEATURES for c in v):
            raise ValueError(f"each column steers 1..{limits.MAX_STEER_FEATURES} features")
        return v
