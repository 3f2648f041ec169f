// The overview: what the database is, SAE quality (FVU, L0, dead %, CE loss recovered), the density
// histogram of all features, and the most frequent / strongest / best-labelled features.
import { api, clear, el, featureLink, fmt, initNav, pct, showError } from "./common.js";
import { barChart } from "./charts.js";

const main = document.getElementById("main");

function stat(key, value, title) {
  return el("div", { class: "stat", title }, el("div", { class: "v" }, value), el("div", { class: "k" }, key));
}

function infoTable(i) {
  const rows = [
    ["model", `${i.model ?? "?"} (layer ${i.layer ?? "?"})`], ["SAE", `${i.architecture ?? "?"}${i.k ? `, k = ${i.k}` : ""}`
      + `, ${i.d_sae.toLocaleString()} features over d = ${i.d_in ?? "?"}`],
    ["tokens analysed", i.tokens === null ? "?" : i.tokens.toLocaleString()], ["corpus", i.corpus ?? "?"],
    ["map", i.map_method ?? "none"], ["created", i.created ?? "?"],
    ["live model", i.live ? "loaded: text search and steering on" : "not loaded (start with --sae for search by text "
      + "and steering)"],
  ];
  return el("table", { id: "info", class: "compact" }, el("tbody", {}, rows.map(([k, v]) => el("tr", {}, el("th", {}, k),
    el("td", {}, v)))));
}

function ceCell(o, live, rerender) {
  const q = o.quality;
  if (q.loss_recovered !== undefined && q.loss_recovered !== null) {
    return stat("CE loss recovered", pct(q.loss_recovered, 3), o.ce_source || "");
  }
  const box = el("div", { class: "stat", id: "ce" }, el("div", { class: "v" }, "—"),
    el("div", { class: "k" }, "CE loss recovered: not measured"));
  if (live) {
    const button = el("button", { type: "button", onclick: async () => {
      button.disabled = true;
      button.textContent = "measuring…";
      try { await api("/api/quality/ce", { contexts: 8 }); rerender(); } catch (e) { showError(box, e); }
    } }, "measure now");
    box.append(button);
  } else {
    box.title = "run featurescope eval SAE --activations ACTS, or serve with --sae to measure it here";
  }
  return box;
}

function quality(o, live, rerender, tokens) {
  const q = o.quality;
  const ood = q.ood_loss_recovered === undefined || q.ood_loss_recovered === null ? null
    : stat("CE loss recovered, out of domain", pct(q.ood_loss_recovered, 3), o.ood_source || "");
  const analysed = tokens === null ? "the analysed tokens" : `the ${tokens.toLocaleString()} analysed tokens`;
  return [el("div", { class: "stats", id: "quality" },
    stat("FVU", fmt(q.fvu), "fraction of variance unexplained (around the mean), over the analysed tokens"),
    stat("L0", fmt(q.l0), "mean number of features active per token"),
    stat("dead", pct(q.dead_fraction), "features that never fired on the analysed tokens"),
    stat("alive", q.alive === undefined ? "—" : q.alive.toLocaleString(), "features that fired at least once"),
    ceCell(o, live, rerender), ood),
  el("p", { class: "small muted", id: "quality-note" }, `FVU, L0, dead and alive: over ${analysed} (training `
    + "and held-out text alike). " + (o.ce_source ? `CE loss recovered: from ${o.ce_source}.` : "")
    + (ood && o.ood_source ? ` Out of domain: ${o.ood_source}.` : ""))];
}

function densityChart(h) {
  if (!h.counts.length) return el("p", { class: "muted" }, "No feature fired.");
  const tips = h.counts.map((c, i) => `${c} features with density 10^${fmt(h.edges[i])} – 10^${fmt(h.edges[i + 1])}`);
  const lo = h.edges[0];
  const hi = h.edges[h.edges.length - 1];
  const ticks = [];
  for (let d = Math.ceil(lo); d <= Math.floor(hi); d += 1) ticks.push([(d - lo) / (hi - lo), d === 0 ? "1" : `1e${d}`]);
  return el("div", {}, barChart({ counts: h.counts, tips, ticks, xTitle: "activation density (fraction of tokens)",
    label: "density histogram" }),
  el("p", { class: "small muted" }, `${h.never_fired.toLocaleString()} features never fired (not shown).`));
}

function list(title, rows, value) {
  return el("section", { class: "card" }, el("h3", {}, title), el("table", {}, el("tbody", {},
    rows.map((r) => el("tr", {}, el("td", {}, featureLink(r.id)), el("td", {}, r.label || "(no label)"),
      el("td", { class: "num" }, value(r)))))));
}

async function render(information) {
  const [o, frequent, strongest, labelled] = await Promise.all([
    api("/api/overview"), api("/api/features?by=density&n=10"), api("/api/features?by=max&n=10"),
    api("/api/features?by=label-score&n=10")]);
  clear(main).append(
    el("h1", {}, `Overview of ${information.db}`), infoTable(information),
    el("h2", {}, "SAE quality"), ...quality(o, information.live, () => render(information).catch((e) => showError(main, e)),
      information.tokens),
    el("h2", {}, "Activation density of all features"), densityChart(o.density),
    el("h2", {}, "Browse"),
    el("div", { class: "grid cols-3" },
      list("Most frequent", frequent, (r) => pct(r.density)), list("Strongest", strongest, (r) => fmt(r.max)),
      list("Best labelled", labelled, (r) => (r.score === null ? "—" : fmt(r.score)))),
    el("footer", { class: "keys" }, "Keys: f go to feature · m map · s search · t steer · ? help"));
}

initNav("/overview").then(render).catch((e) => showError(main, e));
