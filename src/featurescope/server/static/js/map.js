// The map: every feature as a point (UMAP or PCA of decoder directions), coloured by log10 density.
// Hover shows the label; click opens the feature; shift-click (or the box) selects one and highlights its
// neighbours. plotly reads a small HTML subset in hover text, so labels are entity-escaped for it.
import { api, append, clear, copyLinkButton, el, featureHref, featureLink, fmt, initNav, intParam, param, pct,
         plotlyText, setParams, showError } from "./common.js";

const main = document.getElementById("main");
const GL_ABOVE = 20000; // points beyond which the WebGL trace type is used

function cssVar(name, fallback) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

function layout() {
  return {
    margin: { l: 30, r: 10, t: 10, b: 30 }, hovermode: "closest", dragmode: "pan", showlegend: true,
    legend: { orientation: "h", y: -0.06 }, xaxis: { zeroline: false, showticklabels: false },
    yaxis: { zeroline: false, showticklabels: false, scaleanchor: "x" }, paper_bgcolor: cssVar("--bg", "#fbfbfa"),
    plot_bgcolor: cssVar("--card", "#ffffff"), font: { color: cssVar("--fg", "#1d1d1f") },
  };
}

const view = { feature: null, q: "" };

function matches(points, q) {
  const needle = q.trim().toLowerCase();
  if (!needle) return [];
  return points.ids.filter((id, i) => (points.labels[i] || "").toLowerCase().includes(needle)
    || String(id) === needle);
}

// Features that fired are coloured by log10 density (the scale spans only them); never-fired ones are grey.
function traces(points, selected, neighbours, found = []) {
  const type = points.ids.length > GL_ABOVE ? "scattergl" : "scatter";
  const text = points.ids.map((id, i) => `#${id}  ${plotlyText(points.labels[i] || "(no label)")}<br>density `
    + `${pct(points.density[i])}`);
  const alive = points.ids.map((_, i) => i).filter((i) => points.density[i] > 0);
  const dead = points.ids.map((_, i) => i).filter((i) => !(points.density[i] > 0));
  const index = new Map(points.ids.map((id, i) => [id, i]));
  const pick = (ids) => ids.filter((f) => index.has(f)).map((f) => index.get(f));
  const subset = (idx, name, marker) => ({
    type, mode: "markers", name, x: idx.map((i) => points.x[i]), y: idx.map((i) => points.y[i]),
    customdata: idx.map((i) => points.ids[i]), hovertext: idx.map((i) => text[i]), hoverinfo: "text", marker,
  });
  return [
    subset(alive, "features", { size: 5, color: alive.map((i) => Math.log10(points.density[i])),
      colorscale: "Viridis", opacity: 0.75, colorbar: { title: { text: "log10 density" }, thickness: 10 } }),
    subset(pick(neighbours), "neighbours", { size: 11, color: "#ff7f0e", line: { color: "#222", width: 1 } }),
    subset(pick(selected === null ? [] : [selected]), "selected",
      { size: 15, color: "#d62728", symbol: "star", line: { color: "#222", width: 1 } }),
    subset(dead, `never fired (${dead.length})`, { size: 4, color: "#b0b0b0", opacity: 0.6 }),
    subset(pick(found), "matches", { size: 10, color: "rgba(0,0,0,0)", line: { color: "#0b5cad", width: 2 } }),
  ];
}

function matchList(points, found) {
  if (!view.q) return null;
  const label = new Map(points.ids.map((id, i) => [id, points.labels[i]]));
  return el("div", {}, el("h3", {}, `${found.length} match${found.length === 1 ? "" : "es"} for `
    + `${JSON.stringify(view.q)}`), el("ol", { id: "map-matches" }, found.slice(0, 50).map((f) => el("li", {},
    featureLink(f), " ", label.get(f) || ""))));
}

async function select(plot, points, panel, feature) {
  view.feature = feature;
  setParams({ feature: feature ?? "", q: view.q });
  const found = matches(points, view.q);
  clear(panel);
  if (feature === null) {
    append(panel, [el("p", { class: "muted" }, "Shift-click a point, or type a feature id, to highlight its neighbours."),
      matchList(points, found)]);
    window.Plotly.react(plot, traces(points, null, [], found), layout());
    return;
  }
  const [summary, neighbours] = await Promise.all([
    api(`/api/features/${feature}/summary`), api(`/api/features/${feature}/neighbours?n=10`)]);
  window.Plotly.react(plot, traces(points, feature, neighbours.map((n) => n.feature), found), layout());
  append(panel, [
    el("h2", {}, featureLink(feature, `Feature ${feature}`)), el("p", {}, summary.label || "(no label)"),
    el("p", { class: "small muted" }, `density ${pct(summary.density)} · max ${fmt(summary.max)}`),
    el("h3", {}, "Neighbours"),
    el("ol", { id: "map-neighbours" }, neighbours.map((n) => el("li", {},
      featureLink(n.feature), " ", el("span", { class: "small muted" }, `cos ${fmt(n.cosine)}`), " ", n.label))),
    matchList(points, found)]);
}

async function main_() {
  const information = await initNav("/map");
  if (!window.Plotly) throw new Error("plotly.js did not load (is the plotly Python package installed?)");
  const points = await api("/api/map");
  const box = el("input", { type: "number", min: "0", max: String(information.d_sae - 1), id: "select-feature",
                            "data-primary": true, placeholder: "feature #", "aria-label": "select feature" });
  const search = el("input", { type: "search", id: "map-search", placeholder: "label contains…", value: param("q") || "",
                               "aria-label": "highlight features whose label contains", maxlength: "200" });
  view.q = search.value.trim();
  const panel = el("aside", { class: "card", id: "panel" });
  const plot = el("div", { id: "plot", role: "img", "aria-label": "map of features" });
  clear(main).append(
    el("div", { class: "row" }, el("h1", {}, "Feature map"),
      el("span", { class: "muted small" },
        `${points.ids.length.toLocaleString()} features · ${points.method ?? "no"} layout · hover for labels, `
        + "click to open, shift-click to select"),
      el("span", { class: "spacer" }),
      el("form", { class: "row", onsubmit: (e) => {
        e.preventDefault();
        if (box.value !== "") select(plot, points, panel, Number(box.value)).catch((err) => showError(panel, err));
      } }, el("label", { for: "select-feature" }, "Select"), box, el("button", { type: "submit" }, "Show")),
      el("form", { class: "row", onsubmit: (e) => {
        e.preventDefault();
        view.q = search.value.trim();
        select(plot, points, panel, view.feature).catch((err) => showError(panel, err));
      } }, search, el("button", { type: "submit" }, "Find")), copyLinkButton()),
    points.ids.length ? el("div", { class: "map-layout" }, plot, panel)
      : el("p", { class: "notice" }, "This database has no map (it was analysed with --map none)."));
  if (!points.ids.length) return;
  await window.Plotly.newPlot(plot, traces(points, null, []), layout(),
    { displaylogo: false, responsive: true, scrollZoom: true });
  plot.on("plotly_click", (event) => {
    const p = event.points && event.points[0];
    if (!p) return;
    const feature = Number(p.customdata);
    if (event.event && event.event.shiftKey) select(plot, points, panel, feature).catch((e) => showError(panel, e));
    else window.location.href = featureHref(feature);
  });
  const start = intParam("feature");
  if (param("feature") && (start === null || start >= information.d_sae)) {
    showError(panel.parentNode, new Error(`${JSON.stringify(param("feature"))} is not a feature id `
      + `(0..${information.d_sae - 1}): nothing selected`));
  }
  await select(plot, points, panel, start !== null && start < information.d_sae ? start : null);
  plot.dataset.ready = "1";
}

main_().catch((e) => showError(main, e));
