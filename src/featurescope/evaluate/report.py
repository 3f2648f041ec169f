"""The outputs of an SAE comparison: compare.json, pareto.html (the table and the two Pareto plots in one
self-contained page: plotly.js is inlined, nothing is fetched) and pareto.png (matplotlib, a
dependency; an install without it skips the PNG and says so)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, NamedTuple

from featurescope.atomic import atomic_path, write_json, write_text
from featurescope.errors import FeaturescopeError
from featurescope.evaluate.compare import CompareRow, Comparison

OUTPUT_FILES = ("compare.json", "pareto.html", "pareto.png")
COLUMNS = (("name", "SAE"), ("architecture", "arch"), ("d_sae", "features"), ("fvu", "FVU"), ("l0", "L0"),
           ("dead_fraction", "dead %"), ("loss_recovered", "CE recovered"), ("kl", "KL to clean"),
           ("ood_loss_recovered", "OOD CE recovered"), ("front_ce", "front"))
"""The table's columns: (CompareRow field, heading)."""
PANELS = (("loss_recovered", "CE loss recovered", "front_ce"), ("fvu", "FVU", "front_fvu"))
"""The plots: (y field, y title, Pareto flag), each against L0."""


class Written(NamedTuple):
    """The files written, and why pareto.png was not (empty when it was)."""

    paths: list[Path]
    skipped_png: str


def cell(row: CompareRow, field: str) -> str:
    """A table cell as text: 4 significant digits, percentages for dead %, ★ on the CE front."""
    value = getattr(row, field)
    if field == "front_ce":
        return "★" if value else ""
    if value is None:
        return "—"
    if field == "dead_fraction":
        return f"{100 * value:.1f}%"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _plotly_text(s: str) -> str:
    """Text for plotly's HTML-subset labels: <, > and & as entities (as the explorer's map does)."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def pareto_figure(c: Comparison) -> Any:
    """L0 against CE loss recovered and against FVU, one point per SAE, each front joined by a line."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=[
        f"L0 vs {title} (front: ★)" for _, title, _ in PANELS])
    for col, (field, title, flag) in enumerate(PANELS, start=1):
        pts = [r for r in c.rows if r.l0 is not None and getattr(r, field) is not None]
        front = sorted((r for r in pts if getattr(r, flag)), key=lambda r: r.l0 or 0.0)
        names = [_plotly_text(r.name) for r in pts]
        fig.add_trace(go.Scatter(
            x=[r.l0 for r in pts], y=[getattr(r, field) for r in pts], mode="markers+text", text=names,
            textposition="top center", name="SAEs", showlegend=col == 1,
            marker={"size": [14 if getattr(r, flag) else 9 for r in pts],
                    "symbol": ["star" if getattr(r, flag) else "circle" for r in pts]},
            hovertemplate=f"%{{text}}<br>L0 %{{x:.4g}}<br>{title} %{{y:.4g}}<extra></extra>"), row=1, col=col)
        fig.add_trace(go.Scatter(x=[r.l0 for r in front], y=[getattr(r, field) for r in front], mode="lines",
                                 name="Pareto front", showlegend=col == 1, hoverinfo="skip",
                                 line={"dash": "dot", "color": "#d62728"}), row=1, col=col)
        fig.update_xaxes(title_text="L0 (active features per token)", row=1, col=col)
        fig.update_yaxes(title_text=title, row=1, col=col)
    fig.update_layout(height=520, width=1200, legend={"orientation": "h", "y": -0.18})
    return fig


def _table_html(c: Comparison) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(r, f))}</td>" for f, _ in COLUMNS) + "</tr>"
                   for r in c.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def pareto_html(c: Comparison) -> str:
    """The whole page: what was measured, the table, the plots; every string from an SAE or a path escaped."""
    data = c.as_dict()
    what = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in data["measured_on"].items())
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in data["notes"])
    plot = pareto_figure(c).to_html(include_plotlyjs=True, full_html=False)
    where = f"model {c.model or '?'}, layer {c.layer if c.layer is not None else '?'}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SAE comparison · featurescope</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#1d1d1f}}table{{border-collapse:collapse}}
td,th{{padding:.3rem .7rem;border-bottom:1px solid #ddd;text-align:right}}
td:first-child,th:first-child{{text-align:left}}
.muted{{color:#666}}</style></head><body>
<h1>SAE comparison</h1>
<p class="muted">{html.escape(where)} · {html.escape(data["split"])} rows · ★: on the Pareto front of L0 against CE
loss recovered (no other SAE is at least as sparse and recovers at least as much)</p>
{_table_html(c)}
<ul class="muted">{what}</ul>{f"<p>Notes:</p><ul>{notes}</ul>" if notes else ""}
{plot}
</body></html>
"""


def pareto_png(c: Comparison, path: Path) -> str:
    """Draw the plots with matplotlib into `path`; the reason when it is not installed (else '')."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "pareto.png not written: matplotlib is not installed (pip install matplotlib); pareto.html has the plots"
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, (field, title, flag) in zip(axes, PANELS, strict=True):
        pts = [r for r in c.rows if r.l0 is not None and getattr(r, field) is not None]
        front = sorted((r for r in pts if getattr(r, flag)), key=lambda r: r.l0 or 0.0)
        ax.scatter([r.l0 for r in pts], [getattr(r, field) for r in pts], c=["#d62728" if getattr(r, flag) else
                                                                             "#1f77b4" for r in pts])
        ax.plot([r.l0 for r in front], [getattr(r, field) for r in front], ":", color="#d62728")
        for r in pts:
            ax.annotate(r.name, (r.l0, getattr(r, field)), fontsize=8)
        ax.set_xlabel("L0 (active features per token)")
        ax.set_ylabel(title)
        ax.set_title(f"L0 vs {title} (red: Pareto front)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return ""


def write_comparison(c: Comparison, out: str | Path) -> Written:
    """compare.json, pareto.html and pareto.png in folder `out`: a new one, or one holding only these files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FeaturescopeError(f"{out} exists and is not a folder")
    ours = set(OUTPUT_FILES) | {p.name for p in out.glob(".*.tmp")} if out.is_dir() else set()  # killed writes
    others = sorted(p.name for p in out.iterdir() if p.name not in ours) if out.is_dir() else []
    if others:
        raise FeaturescopeError(f"{out} holds other files ({', '.join(others[:3])}): give a new folder, or one "
                                "with only an earlier comparison")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", c.as_dict())
    write_text(out / "pareto.html", pareto_html(c))
    skipped = pareto_png(c, out / "pareto.png")
    if skipped:
        (out / "pareto.png").unlink(missing_ok=True)  # an earlier comparison's plot would not match
    return Written([out / n for n in OUTPUT_FILES if (out / n).is_file()], skipped)
