"""The steer-sweep outputs: its JSON and one self-contained HTML plot (plotly, its JavaScript embedded; offline)."""

from __future__ import annotations

from pathlib import Path

from featurescope.atomic import write_json, write_text
from featurescope.errors import FeaturescopeError
from featurescope.steering.sweep import SweepResult, result_json


def write_outputs(result: SweepResult, out: str | Path) -> tuple[Path, Path]:
    """Write OUT/feature_N.json and OUT/feature_N.html (a plotly page with its JS embedded); return both paths."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FeaturescopeError(f"{out} exists and is not a folder")
    json_path, html_path = out / f"feature_{result.feature}.json", out / f"feature_{result.feature}.html"
    write_json(json_path, result_json(result))
    write_text(html_path, sweep_html(result))
    return json_path, html_path


def sweep_html(result: SweepResult) -> str:
    """Four panels against the multiple: activation at generated tokens, fluency cost, top-token gain (2)."""
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:  # pragma: no cover - plotly is a dependency
        raise FeaturescopeError("the sweep plot needs plotly: pip install plotly") from None

    rows = [r for r in result.rows if r.multiple is not None]
    base = result.rows[0]
    xs = [r.multiple for r in rows]
    fig = make_subplots(rows=2, cols=2, vertical_spacing=0.16, subplot_titles=(
        "feature activation at generated tokens", "fluency cost on the reference text (nats/token)",
        "top logit-effect tokens: probability steered / clean", "top logit-effect tokens among generated ones"))

    def line(y: list[float], name: str, cell: tuple[int, int], dash: str | None = None) -> None:
        fig.add_trace(go.Scatter(x=xs, y=y, name=name, mode="lines+markers", line={"dash": dash}),
                      row=cell[0], col=cell[1])

    line([r.act_hooked for r in rows], "f at layer L after the edit", (1, 1))
    line([r.act_text for r in rows], "f when the unsteered model reads the continuation", (1, 1))
    line([base.act_text] * len(rows), "f in the unsteered continuation", (1, 1), dash="dot")
    line([r.kl for r in rows], "KL(clean ‖ steered)", (1, 2))
    line([r.delta_ce for r in rows], "Δ cross-entropy", (1, 2))
    line([r.top_prob_ratio for r in rows], "probability ratio", (2, 1))
    line([r.top_rate for r in rows], "fraction of generated tokens", (2, 2))
    line([base.top_rate] * len(rows), "unsteered continuation", (2, 2), dash="dot")
    fig.update_yaxes(type="log", row=2, col=1)
    for cell in ((1, 1), (1, 2), (2, 1), (2, 2)):
        fig.update_xaxes(title_text="multiple of max activation", row=cell[0], col=cell[1])
    tokens = ", ".join(repr(t) for _, t in result.top_tokens[:10])
    fig.update_layout(
        title=f"Steering feature {result.feature} ({result.mode}; max activation {result.max_activation:.4g}) "
              f"<br><sup>top logit-effect tokens: {tokens}</sup>",
        height=900, width=1300, legend={"orientation": "h", "y": -0.12},
    )
    return fig.to_html(include_plotlyjs=True, full_html=True)
