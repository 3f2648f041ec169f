// Search: run a text through the model and SAE (per-token activations, the features that fire), or find
// features whose label contains a phrase.
import { api, clear, el, featureLink, fmt, initNav, param, pct, showError } from "./common.js";
import { recolour, tokenStrip } from "./tokens.js";

const main = document.getElementById("main");

function summaryTable(rows, id) {
  if (!rows.length) return el("p", { class: "muted", id }, "No feature has a label like that.");
  return el("table", { id },
    el("thead", {}, el("tr", {}, el("th", {}, "feature"), el("th", {}, "label"), el("th", { class: "num" }, "score"),
      el("th", { class: "num" }, "density"), el("th", { class: "num" }, "max"))),
    el("tbody", {}, rows.map((r) => el("tr", {}, el("td", {}, featureLink(r.id)), el("td", {}, r.label),
      el("td", { class: "num" }, r.score === null ? "—" : fmt(r.score)), el("td", { class: "num" }, pct(r.density)),
      el("td", { class: "num" }, fmt(r.max))))));
}

function bar(fraction) {
  const fill = el("div");
  fill.style.width = `${Math.min(100, 100 * fraction).toFixed(1)}%`;
  return fill;
}

function hitRows(result, strip) {
  const rows = [];
  const choose = (i) => {
    rows.forEach((r, j) => r.setAttribute("aria-selected", String(i === j)));
    const hit = result.hits[i];
    recolour(strip, hit.acts, hit.max);
  };
  result.hits.forEach((hit, i) => {
    const row = el("div", { class: "hit", role: "option", "aria-selected": "false" },
      el("button", { type: "button", onclick: () => choose(i), title: "colour the text by this feature" }, "show"),
      featureLink(hit.feature), el("span", {}, hit.label || "(no label)"),
      el("span", { class: "num small", title: "highest activation on the text" }, fmt(hit.max)),
      el("div", { class: "bar-cell", title: `${pct(hit.relative)} of its max over the corpus` },
        bar(hit.relative)));
    rows.push(row);
  });
  if (rows.length) choose(0);
  return rows;
}

async function runText(text, by, out) {
  clear(out).append(el("p", { class: "muted" }, "Running the model…"));
  const result = await api("/api/search/text", { text, n: 20, by });
  const strip = tokenStrip(result.tokens, result.tokens.map(() => 0), 1);
  strip.id = "text-tokens";
  clear(out).append(el("h3", {}, "Tokens (coloured by the selected feature)"), strip,
    el("h3", {}, `Features that fire (${result.hits.length})`),
    result.hits.length ? el("div", { role: "listbox", id: "hits" }, hitRows(result, strip))
      : el("p", { class: "muted" }, "No feature fires on this text."));
}

async function runLabels(q, out) {
  clear(out).append(summaryTable(await api(`/api/search/labels?q=${encodeURIComponent(q)}&n=50`), "label-results"));
}

function textSection(live) {
  const text = el("textarea", { id: "text", "aria-label": "text to run through the model", maxlength: "4000",
                                placeholder: "Type or paste a text…", "data-primary": live || false });
  const by = el("select", { id: "by", "aria-label": "rank features by" },
    el("option", { value: "max" }, "rank by activation"),
    el("option", { value: "relative" }, "rank by activation / corpus max"));
  const out = el("div", { id: "text-results" });
  const form = el("form", { onsubmit: (e) => {
    e.preventDefault();
    if (text.value.trim()) runText(text.value, by.value, out).catch((err) => { clear(out); showError(out, err); });
  } }, text, el("div", { class: "row" }, el("button", { class: "primary", type: "submit", disabled: !live }, "Run"),
    by, el("span", { class: "muted small" }, "Ctrl+Enter runs")));
  const section = el("section", { class: "card" }, el("h2", {}, "Which features fire on a text"), form, out);
  if (!live) {
    section.insertBefore(el("p", { class: "notice" }, "Live text search needs the model: start the explorer with "
      + "featurescope serve DB --sae SAE_DIR (and --model)."), form);
  }
  const start = param("text");
  if (start && live) { text.value = start; queueMicrotask(() => form.requestSubmit()); }
  return section;
}

function labelSection(live) {
  const q = el("input", { id: "label-query", type: "search", maxlength: "200", placeholder: "e.g. bridge",
                          "aria-label": "label contains", "data-primary": !live || false });
  const out = el("div", { id: "label-out" });
  const form = el("form", { class: "row", onsubmit: (e) => {
    e.preventDefault();
    if (q.value.trim()) runLabels(q.value.trim(), out).catch((err) => { clear(out); showError(out, err); });
  } }, q, el("button", { type: "submit" }, "Find"));
  const start = param("q");
  if (start) { q.value = start; queueMicrotask(() => form.requestSubmit()); }
  return el("section", { class: "card" }, el("h2", {}, "Find features by label"), form, out);
}

async function main_() {
  const information = await initNav("/search");
  clear(main).append(el("h1", {}, "Search"),
    el("div", { class: "grid" }, labelSection(information.live), textSection(information.live)),
    el("footer", { class: "keys" }, "Keys: / focus the search box · Ctrl+Enter run · ? help"));
}

main_().catch((e) => showError(main, e));
