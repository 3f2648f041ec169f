// The SAEs page: the comparison that `featurescope eval SAE SAE … --db` stored (one row per SAE: FVU, L0, dead %,
// CE loss recovered, KL to the clean model, out-of-domain CE loss recovered) and two Pareto plots against L0.
// Names and paths go into the table as text and into plotly (which reads an HTML subset) entity-escaped.
// Below them, the offline suite's results that `featurescope eval … --suite --db` stored (one row per SAE).
import { api, append, clear, el, fmt, initNav, pct, plotlyText, showError } from "./common.js";

const main = document.getElementById("main");
const COLUMNS = [
  ["name", "SAE"], ["format", "format"], ["architecture", "arch"], ["d_sae", "features"], ["fvu", "FVU"],
  ["l0", "L0"], ["dead_fraction", "dead"], ["loss_recovered", "CE recovered"], ["kl", "KL to clean"],
  ["ood_loss_recovered", "OOD CE recovered"], ["front_ce", "front"],
];
const TEXT = new Set(["name", "format", "architecture"]);
const PANELS = [["loss_recovered", "CE loss recovered", "front_ce"], ["fvu", "FVU", "front_fvu"]];

function cell(row, key) {
  const v = row[key];
  if (key === "front_ce") return v ? "★" : "";
  if (key === "dead_fraction") return pct(v, 3);
  if (key === "d_sae") return v.toLocaleString();
  return TEXT.has(key) ? String(v) : fmt(v, 4);
}

function table(saes) {
  return el("table", { id: "sae-table" },
    el("thead", {}, el("tr", {}, COLUMNS.map(([key, title]) => el("th", { class: TEXT.has(key) ? null : "num" },
      title)))),
    el("tbody", {}, saes.map((r) => el("tr", { class: r.front_ce ? "front" : null, title: r.path },
      COLUMNS.map(([key]) => el("td", { class: TEXT.has(key) ? "mono" : "num" }, cell(r, key)))))));
}

function cssVar(name, fallback) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

function traces(saes) {
  return PANELS.flatMap(([key, title, flag], i) => {
    const axes = { xaxis: i ? "x2" : "x", yaxis: i ? "y2" : "y" };
    const pts = saes.filter((r) => r.l0 !== null && r[key] !== null);
    const front = pts.filter((r) => r[flag]).sort((a, b) => a.l0 - b.l0);
    return [
      { ...axes, type: "scatter", mode: "markers+text", name: "SAEs", showlegend: i === 0,
        x: pts.map((r) => r.l0), y: pts.map((r) => r[key]), text: pts.map((r) => plotlyText(r.name)),
        textposition: "top center", hovertemplate: `%{text}<br>L0 %{x:.4g}<br>${title} %{y:.4g}<extra></extra>`,
        marker: { size: pts.map((r) => (r[flag] ? 14 : 9)), symbol: pts.map((r) => (r[flag] ? "star" : "circle")) } },
      { ...axes, type: "scatter", mode: "lines", name: "Pareto front", showlegend: i === 0, hoverinfo: "skip",
        x: front.map((r) => r.l0), y: front.map((r) => r[key]), line: { dash: "dot", color: "#d62728" } },
    ];
  });
}

function layout() {
  const axis = (title, domain) => ({ title: { text: title }, domain, zeroline: false });
  return {
    margin: { l: 60, r: 20, t: 30, b: 50 }, hovermode: "closest", legend: { orientation: "h", y: -0.2 },
    xaxis: axis("L0 (active features per token)", [0, 0.45]), yaxis: axis(PANELS[0][1]),
    xaxis2: axis("L0 (active features per token)", [0.55, 1]), yaxis2: { ...axis(PANELS[1][1]), anchor: "x2" },
    paper_bgcolor: cssVar("--bg", "#fbfbfa"), plot_bgcolor: cssVar("--card", "#ffffff"),
    font: { color: cssVar("--fg", "#1d1d1f") },
  };
}

const SUITE = [
  ["sparse_probing", "llm_test_accuracy", "dense probe"], ["sparse_probing", "sae_top_1_test_accuracy", "top-1"],
  ["sparse_probing", "sae_top_5_test_accuracy", "top-5"],
  ["absorption_first_letter", "mean_absorption_fraction_score", "absorption"],
  ["absorption_first_letter", "mean_full_absorption_score", "full absorption"],
  ["absorption_first_letter", "mean_num_split_features", "split"],
  ["causal_language", "language_shift", "language shift"], ["causal_language", "random_shift", "random shift"],
  ["autointerp", "autointerp_score", "autointerp"],
];

function suiteTable(rows) {
  const bySae = new Map();
  for (const r of rows) {
    if (!bySae.has(r.sae)) bySae.set(r.sae, {});
    bySae.get(r.sae)[`${r.task}/${r.metric}`] = r.value;
  }
  const value = (got, task, metric) => {
    if (`${task}/skipped` in got) return "skipped";
    const v = got[`${task}/${metric}`];
    return v === undefined ? "" : fmt(v, 4);
  };
  return el("table", { id: "suite-table" },
    el("thead", {}, el("tr", {}, [el("th", {}, "SAE"), ...SUITE.map(([, , title]) => el("th", { class: "num" },
      title))])),
    el("tbody", {}, [...bySae].map(([sae, got]) => el("tr", {}, [el("td", { class: "mono" }, sae),
      ...SUITE.map(([task, metric]) => el("td", { class: "num" }, value(got, task, metric)))]))));
}

function suiteSection(rows) {
  if (!rows.length) return null;
  return el("section", { id: "suite" }, el("h2", {}, "Offline suite"),
    el("p", { class: "muted" }, "featurescope eval --suite (docs/evaluation.md): sparse probing test accuracy, "
      + "first-letter absorption (SAEBench's scores), the causal language task and AutoInterp detection."),
    suiteTable(rows));
}

async function main_() {
  await initNav("/saes");
  const data = await api("/api/saes");
  clear(main).append(el("h1", {}, "SAEs compared"));
  if (!data.available) {
    append(main, [el("p", { class: "notice" }, "This database has no SAE comparison: run featurescope eval SAE SAE … "
      + "--activations ACTS --db DB (see docs/evaluation.md)."), suiteSection(data.suite || [])]);
    return;
  }
  const where = data.in_sample ? "IN-SAMPLE: training rows" : "held-out rows and contexts";
  main.append(el("p", { class: "muted" }, `${data.saes.length} SAEs of ${data.model ?? "?"} layer `
    + `${data.layer ?? "?"}, measured on the same ${where}. ★: on the Pareto front of L0 against CE loss recovered `
    + "(no other SAE is as sparse and recovers as much)."), table(data.saes),
  el("ul", { class: "small muted", id: "measured-on" }, Object.entries(data.measured_on || {})
    .map(([k, v]) => el("li", {}, el("b", {}, k), `: ${v}`))),
  (data.notes || []).length ? el("div", { class: "notice", id: "notes" }, data.notes.map((n) => el("p", {}, `note: ${n}`)))
    : null);
  if (!window.Plotly) throw new Error("plotly.js did not load (is the plotly Python package installed?)");
  const plot = el("div", { id: "plot", class: "pareto", role: "img",
                           "aria-label": "L0 against CE loss recovered and against FVU, one point per SAE" });
  append(main, [plot, suiteSection(data.suite || [])]);
  await window.Plotly.newPlot(plot, traces(data.saes), layout(), { displaylogo: false, responsive: true });
  plot.dataset.ready = "1";
}

main_().catch((e) => showError(main, e));
