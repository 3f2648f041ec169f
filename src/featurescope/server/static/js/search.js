// Search: run a text through the model and SAE (per-token activations, the features that fire), or find
// features whose label contains a phrase.
import { api, clear, copyLinkButton, el, featureLink, fmt, initNav, param, pct, setParams,
         showError } from "./common.js";
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

// The feature's max over the analysed corpus (the activation that gets the full colour).
function corpusMax(hit) {
  return hit.relative > 0 ? hit.max / hit.relative : hit.max;
}

function peakOf(acts) {
  let best = 0;
  acts.forEach((a, i) => { if (a > acts[best]) best = i; });
  return best;
}

function hitRows(result, strip) {
  const rows = [];
  const choose = (i) => {
    rows.forEach((r, j) => r.setAttribute("aria-selected", String(i === j)));
    const hit = result.hits[i];
    recolour(strip, hit.acts, corpusMax(hit));
  };
  result.hits.forEach((hit, i) => {
    const peak = peakOf(hit.acts);
    const row = el("div", { class: "hit", role: "option", "aria-selected": "false" },
      el("button", { type: "button", onclick: () => choose(i), title: "colour the text by this feature "
        + "(full colour: its max over the corpus)" }, "show"),
      featureLink(hit.feature), el("span", { class: "hit-label" }, hit.label || "(no label)",
        el("span", { class: "peak-token muted small", title: "the token where it peaks on this text" },
          ` peaks on ${JSON.stringify(result.tokens[peak] ?? "")}`)),
      el("span", { class: "num small", title: "highest activation on the text" }, fmt(hit.max)),
      el("div", { class: "bar-cell", title: `${pct(hit.relative)} of its max over the corpus` },
        bar(hit.relative)));
    rows.push(row);
  });
  if (rows.length) choose(0);
  return rows;
}

async function showToken(text, position, strip, box) {
  [...strip.querySelectorAll(".tok")].forEach((s, i) => s.classList.toggle("chosen", i === position));
  clear(box).append(el("p", { class: "muted" }, "Reading the features on this token…"));
  const r = await api("/api/search/token", { text, position, n: 10 });
  clear(box).append(el("h3", {}, `Features on token ${position}: ${JSON.stringify(r.token)}`),
    r.hits.length ? el("table", { id: "token-hits" },
      el("thead", {}, el("tr", {}, el("th", {}, "feature"), el("th", {}, "label"),
        el("th", { class: "num" }, "activation"), el("th", { class: "num" }, "of corpus max"))),
      el("tbody", {}, r.hits.map((h) => el("tr", {}, el("td", {}, featureLink(h.feature)), el("td", {}, h.label),
        el("td", { class: "num" }, fmt(h.act)), el("td", { class: "num" }, pct(h.relative))))))
      : el("p", { class: "muted", id: "token-hits" }, "No feature fires on this token."));
}

async function runText(text, by, out) {
  clear(out).append(el("p", { class: "muted" }, "Running the model…"));
  const result = await api("/api/search/text", { text, n: 20, by });
  const strip = tokenStrip(result.tokens, result.tokens.map(() => 0), 1);
  strip.id = "text-tokens";
  strip.classList.add("clickable");
  strip.title = "click a token: the features that fire most on it";
  const tokenBox = el("div", { id: "token-view" });
  strip.addEventListener("click", (e) => {
    const span = e.target.closest(".tok");
    if (!span) return;
    const position = [...strip.querySelectorAll(".tok")].indexOf(span);
    showToken(text, position, strip, tokenBox).catch((err) => { clear(tokenBox); showError(tokenBox, err); });
  });
  clear(out).append(el("h3", {}, "Tokens (coloured by the selected feature; click one for its features)"), strip,
    tokenBox, el("h3", {}, `Features that fire (${result.hits.length})`),
    result.hits.length ? el("div", { role: "listbox", id: "hits" }, hitRows(result, strip))
      : el("p", { class: "muted" }, "No feature fires on this text."));
}

async function runLabels(q, out) {
  clear(out).append(summaryTable(await api(`/api/search/labels?q=${encodeURIComponent(q)}&n=50`), "label-results"));
}

function textSection(live) {
  const text = el("textarea", { id: "text", "aria-label": "text to run through the model", maxlength: "4000",
                                placeholder: "Type or paste a text…", "data-primary": live || false });
  const by = el("select", { id: "by", "aria-label": "rank features by",
                            title: "activation / corpus max puts features firing near their usual strength first; "
                              + "raw activation favours dense features" },
    el("option", { value: "relative", selected: param("by") !== "max" }, "rank by activation / corpus max"),
    el("option", { value: "max", selected: param("by") === "max" }, "rank by raw activation"));
  const out = el("div", { id: "text-results" });
  const form = el("form", { onsubmit: (e) => {
    e.preventDefault();
    if (!text.value.trim()) return;
    state.text = text.value;
    state.by = by.value === "relative" ? "" : by.value;
    setParams(state);
    runText(text.value, by.value, out).catch((err) => { clear(out); showError(out, err); });
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
    if (!q.value.trim()) return;
    state.q = q.value.trim();
    setParams(state);
    runLabels(q.value.trim(), out).catch((err) => { clear(out); showError(out, err); });
  } }, q, el("button", { type: "submit" }, "Find"));
  const start = param("q");
  if (start) { q.value = start; queueMicrotask(() => form.requestSubmit()); }
  return el("section", { class: "card" }, el("h2", {}, "Find features by label"), form, out);
}

const state = { q: param("q") || "", text: param("text") || "", by: param("by") === "max" ? "max" : "" };

async function main_() {
  const information = await initNav("/search");
  clear(main).append(el("h1", {}, "Search"),
    el("div", { class: "grid" }, labelSection(information.live), textSection(information.live)),
    el("div", { class: "row" }, el("span", { class: "spacer" }), copyLinkButton()),
    el("footer", { class: "keys" }, "Keys: / focus the search box · Ctrl+Enter run · ? help"));
}

main_().catch((e) => showError(main, e));
