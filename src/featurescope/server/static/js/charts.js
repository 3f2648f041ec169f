// Small SVG bar charts built with DOM calls (no library): histograms of activations and densities.
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// counts: bar heights; tips[i]: tooltip of bar i; ticks: [[fraction of the x axis, text], ...];
// log: bar heights ∝ log(1 + count).
export function barChart({ counts, tips = [], ticks = [], xTitle = "", log = false,
                           width = 640, height = 170, label = "histogram" }) {
  const pad = { l: 8, r: 8, t: 8, b: 34 };
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
  const scale = (c) => (log ? Math.log1p(c) : c);
  const top = Math.max(1e-9, ...counts.map(scale));
  const w = (width - pad.l - pad.r) / Math.max(counts.length, 1);
  const h = height - pad.t - pad.b;
  counts.forEach((c, i) => {
    const bh = c > 0 ? Math.max(1.5, (scale(c) / top) * h) : 0;
    const bar = svg("rect", { class: "bar", x: pad.l + i * w + 0.5, y: pad.t + h - bh, width: Math.max(w - 1, 0.5),
                              height: bh });
    bar.append(svg("title", {}, tips[i] ?? String(c)));
    chart.append(bar);
  });
  chart.append(svg("line", { x1: pad.l, x2: width - pad.r, y1: pad.t + h, y2: pad.t + h }));
  const span = width - pad.l - pad.r;
  for (const [at, text] of ticks) {
    const x = pad.l + at * span;
    const anchor = at <= 0.02 ? "start" : at >= 0.98 ? "end" : "middle";
    chart.append(svg("line", { x1: x, x2: x, y1: pad.t + h, y2: pad.t + h + 4 }));
    chart.append(svg("text", { x, y: height - 18, "text-anchor": anchor }, text));
  }
  chart.append(svg("text", { x: width / 2, y: height - 4, "text-anchor": "middle" },
    `${xTitle}${log ? "  (bar height: log scale)" : ""}`));
  return chart;
}
