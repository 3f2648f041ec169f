"""Rich tables of the probe commands: cross-lingual features side by side per language, probe categories, and
suppression effects. Corpus text is shown as rich `Text` (never parsed as markup)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from featurescope.featuredb.probes import LangExample, MultilingualFeature
from featurescope.probes.selection import CategoryResult
from featurescope.probes.suppress import Suppression

SNIPPET_TOKENS = 4
"""Tokens shown on each side of the peak."""


def snippet(ex: LangExample, width: int = SNIPPET_TOKENS) -> Text:
    """The tokens around the peak activation, the peak in bold (the tokens where the feature fires underlined)."""
    if not ex.acts:
        return Text("")
    peak = max(range(len(ex.acts)), key=lambda t: ex.acts[t])
    lo, hi = max(0, peak - width), min(len(ex.tokens), peak + width + 1)
    out = Text("…" if lo > 0 else "")
    for t in range(lo, hi):
        token = ex.tokens[t].replace("\n", "⏎")
        style = "bold magenta" if t == peak else "underline" if ex.acts[t] > 0 else ""
        out.append(token, style=style)
    if hi < len(ex.tokens):
        out.append("…")
    out.append(f" ({ex.value:.3g})", style="dim")
    return out


def multilingual_table(features: list[MultilingualFeature], labels: dict[int, str], title: str) -> Table:
    """One row per feature: its scores and its best aligned example in every language."""
    table = Table(title=title, show_lines=True)
    table.add_column("feature", justify="right")
    table.add_column("score\n(min pair)", justify="right")
    table.add_column("transfer\n(base)", justify="right")
    table.add_column("same\ntoken", justify="right")
    langs = features[0].langs if features else []
    for lang in langs:
        table.add_column(lang, overflow="fold")
    for f in features:
        head = Text(str(f.feature))
        if labels.get(f.feature):
            head.append("\n" + labels[f.feature], style="dim")
        transfer = "–" if f.transfer is None else f"{f.transfer:.2f}"
        cells = [snippet(e) for e in f.examples[0].langs] if f.examples else [Text("") for _ in langs]
        worst = min(f.pairs.values()) if f.pairs else float("nan")
        same = "–" if f.same_token is None else f"{f.same_token:.2f}"
        table.add_row(head, f"{f.score:.3f}\n({worst:.2f})", f"{transfer}\n({f.base_rate:.2f})", same, *cells)
    return table


def category_table(r: CategoryResult, labels: dict[int, str], show: int) -> Group:
    """A category's best candidates and its verdict."""
    table = Table(title=f"{r.category}: {r.positives} positives, {r.negatives} negatives "
                        f"({r.train_items} for discovery, {r.heldout_items} held out)")
    for name in ("feature", "label", "peaks on (positives)", "discovery AUROC", "held-out AUROC", "p (corrected)",
                 "all texts", "reported"):
        table.add_column(name, justify="left" if name in ("label", "peaks on (positives)") else "right")
    m = max(1, len(r.candidates))
    for c in r.candidates[:show]:
        peaks = ", ".join(f"{t.strip() or repr(t)} ×{n}" for t, n in c.peak_tokens)
        table.add_row(str(c.feature), Text(labels.get(c.feature, "")), Text(peaks), f"{c.train_auroc:.3f}",
                      f"{c.heldout_auroc:.3f}", f"{min(1.0, c.p_value * m):.3g}", f"{c.auroc:.3f}",
                      "yes" if c.reported else "no")
    style = "green" if r.reported else "yellow"
    chance = Text(f"chance level of the best discovery AUROC (95th pct. over permutations): {r.null_train_max:.3f}",
                  style="dim")
    return Group(table, chance, Text(r.verdict, style=style))


def suppression_table(rows: list[Suppression]) -> Table:
    """Clean vs steered next-token loss on positives and negatives, and the selectivity."""
    table = Table(title="suppressing features: next-token loss (nats/token) on the probe texts")
    for name in ("feature", "value", "category", "positives clean → steered", "negatives clean → steered",
                 "selectivity [95% CI]"):
        table.add_column(name, justify="right")
    for r in rows:
        control = r.target != r.feature
        name = f"{r.feature} (control for {r.target})" if control else str(r.feature)
        table.add_row(name, f"{r.value} = {r.clamp:.3g}", r.category,
                      f"{r.clean_pos:.3f} → {r.steered_pos:.3f}", f"{r.clean_neg:.3f} → {r.steered_neg:.3f}",
                      f"{r.selectivity:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]", style="dim" if control else None)
    return table
