"""Rich renderings of features for the terminal: contexts with firing tokens highlighted, tables, histograms.

Token text is added with `Text.append`, never parsed as markup, so any text prints as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from featurescope.analysis.labels import show_token
from featurescope.analysis.search import TextSearch
from featurescope.featuredb.records import Example, Feature, FeatureSummary, Neighbour

BARS = " ▁▂▃▄▅▆▇█"
LABEL_HELP = ("label: the tokens the feature fires on most (→ the tokens it promotes, shown only where they agree); "
              "(various): none stands out. score: detection balanced accuracy on held-out windows (0.5 chance, "
              "1 perfect), blank with under 10 firing or 5 non-firing windows; ≥: its lower 95% bound, which "
              "ranks labels.")


def _style(act: float, top: float) -> str:
    a = min(max(act / top, 0.0), 1.0) if top > 0 else 0.0
    return f"black on rgb(255,{int(255 - 150 * a)},{int(255 - 255 * a)})"


def highlighted(tokens: Sequence[str], acts: Sequence[float], top: float) -> Text:
    """The tokens joined, each firing one on a background whose strength is act / top."""
    text = Text()
    for tok, act in zip(tokens, acts, strict=True):
        shown = tok.replace("\n", "⏎")
        if act > 0:
            text.append(shown, style=_style(act, top))
        else:
            text.append(shown)
    return text


def sparkline(counts: Sequence[int]) -> str:
    """One block character per bin, height ∝ log(1 + count)."""
    import math

    if not counts:
        return ""
    top = max(math.log1p(c) for c in counts) or 1.0
    return "".join(BARS[round(math.log1p(c) / top * (len(BARS) - 1))] for c in counts)


def _examples_table(title: str, examples: Sequence[Example], top: float) -> Table:
    table = Table(title=title, show_header=True, expand=True, title_justify="left")
    table.add_column("act", justify="right", width=8)
    table.add_column("context")
    for ex in examples:
        table.add_row(f"{ex.value:.3g}", highlighted(ex.tokens, ex.acts, top))
    return table


def feature_panel(feature: Feature, *, examples: int = 10, per_interval: int = 1) -> Group:
    """Everything about one feature."""
    s = feature.stats
    label = feature.label
    head = Text()
    head.append(f"Feature {feature.id}", style="bold")
    if label is not None:
        score = f" (score {_score(label.score, label.score_lower)})" if label.score is not None else ""
        head.append(f"  {label.text}{score}")
    lines = [f"density {s.density:.3g} ({s.count} tokens)   max {s.max:.4g}   "
             + (f"mean {s.mean:.4g} ± {s.std:.3g}" if s.mean is not None else "never fires")]
    if feature.histogram is not None:
        lines.append(f"histogram (0 … {feature.histogram.max:.3g}): {sparkline(feature.histogram.counts)}")
    for lb in feature.labels:
        score = _score(lb.score, lb.score_lower) if lb.score is not None else "n/a"
        lines.append(f"{lb.kind} label: {lb.text}  [score {score}]")
    lines.append(LABEL_HELP)
    parts: list[RenderableType] = [Panel(Group(head, *(Text(line) for line in lines)), expand=True)]
    logits = Table(title="logit effects", title_justify="left")
    logits.add_column("promotes")
    logits.add_column("", justify="right")
    logits.add_column("suppresses")
    logits.add_column("", justify="right")
    for p, n in zip(feature.positive_logits, feature.negative_logits, strict=False):
        logits.add_row(show_token(p.text), f"{p.value:+.3g}", show_token(n.text), f"{n.value:+.3g}")
    parts.append(logits)
    parts.append(neighbours_table(feature.id, feature.neighbours))
    parts.append(_examples_table("top contexts", feature.top[:examples], s.max))
    chosen: list[Example] = []
    counts: dict[int, int] = {}
    for ex in feature.quantiles:
        if counts.get(ex.interval, 0) < per_interval:
            chosen.append(ex)
            counts[ex.interval] = counts.get(ex.interval, 0) + 1
    if chosen:
        parts.append(_examples_table("samples by interval of the max (highest first)", chosen, s.max))
    return Group(*parts)


def neighbours_table(feature: int, neighbours: Sequence[Neighbour]) -> Table:
    table = Table(title=f"nearest neighbours of {feature} (decoder cosine)", title_justify="left")
    table.add_column("feature", justify="right")
    table.add_column("cosine", justify="right")
    table.add_column("label")
    for nb in neighbours:
        table.add_row(str(nb.feature), f"{nb.cosine:.3f}", nb.label)
    return table


def _score(score: float | None, lower: float | None) -> str:
    """`0.93 ≥0.85`: a score and its lower bound (blank when unscored)."""
    if score is None:
        return ""
    return f"{score:.2f}" + (f" ≥{lower:.2f}" if lower is not None else "")


def summary_table(title: str, rows: Sequence[FeatureSummary]) -> Table:
    table = Table(title=title, title_justify="left", caption=LABEL_HELP, caption_justify="left")
    for col, justify in (("feature", "right"), ("density", "right"), ("max", "right"), ("score", "right"),
                         ("label", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(str(r.id), f"{r.density:.3g}", f"{r.max:.4g}", _score(r.score, r.score_lower), r.label)
    return table


def search_table(result: TextSearch) -> Table:
    table = Table(title="features firing on the text", title_justify="left", expand=True, caption=LABEL_HELP,
                  caption_justify="left")
    table.add_column("feature", justify="right")
    table.add_column("max", justify="right")
    table.add_column("of corpus max", justify="right")
    table.add_column("label")
    table.add_column("strongest tokens")
    table.add_column("activations on the text")
    for hit in result.hits:
        shown = [i for i, t in enumerate(result.tokens) if t]  # one entry per character
        best = sorted(shown, key=lambda i: -hit.acts[i])[:3]
        strongest = ", ".join(f"{show_token(result.tokens[i])} {hit.acts[i]:.3g}" for i in best if hit.acts[i] > 0)
        table.add_row(str(hit.feature), f"{hit.max:.3g}", f"{hit.relative:.2f}", hit.label, strongest,
                      highlighted(result.tokens, hit.acts, max(hit.max, 1e-30)))
    return table
