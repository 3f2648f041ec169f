// The safety page: per probe category the reported features and their held-out AUROC, and a monitor box that
// shows whether and where a pasted text makes those features fire above a chosen fraction of their corpus max.
import { api, append, clear, el, featureLink, fmt, initNav, pct, showError } from "./common.js";
import { tokenStrip } from "./tokens.js";

const main = document.getElementById("main");

function categoryCard(c) {
  const reported = c.candidates.filter((r) => r.reported);
  return el("section", { class: "card category", "data-category": c.category },
    el("h3", {}, `${c.probe_set} · ${c.category}`),
    el("p", { class: "small muted" }, `${c.verdict} · ${c.positives} positive / ${c.negatives} negative texts · `
      + `best train AUROC ${fmt(c.best_train_auroc)} (chance up to ${fmt(c.null_train_max)})`),
    reported.length ? el("table", { class: "small" },
      el("thead", {}, el("tr", {}, el("th", {}, "feature"), el("th", { class: "num" }, "held-out AUROC"),
        el("th", { class: "num" }, "p"), el("th", {}, "peaks on"))),
      el("tbody", {}, reported.map((r) => el("tr", {}, el("td", {}, featureLink(r.feature)),
        el("td", { class: "num" }, fmt(r.heldout_auroc)), el("td", { class: "num" }, fmt(r.p_value)),
        el("td", { class: "mono small" }, r.peak_tokens.slice(0, 3).map((t) => JSON.stringify(t[0])).join(" "))))))
      : el("p", { class: "muted small" }, "No feature generalised to the held-out texts."));
}

async function check(text, watched, threshold, out) {
  clear(out).append(el("p", { class: "muted" }, "Running the model…"));
  const r = await api("/api/activations", { text, features: watched });
  const rel = r.tokens.map((_, t) => Math.max(0, ...r.features.map((f) => (f.corpus_max > 0
    ? f.acts[t] / f.corpus_max : 0))));
  const triggers = [];
  r.features.forEach((f) => f.acts.forEach((a, t) => {
    if (f.corpus_max > 0 && a / f.corpus_max > threshold) triggers.push([t, f.feature, a / f.corpus_max]);
  }));
  const flagged = triggers.length > 0;
  append(clear(out), [
    el("p", { id: "monitor-verdict", class: flagged ? "error" : "notice", "data-flagged": String(flagged) },
      flagged ? `Flagged: ${triggers.length} trigger(s) above ${pct(threshold, 2)} of a feature's corpus max.`
        : `Not flagged: no watched feature exceeds ${pct(threshold, 2)} of its corpus max (peak `
          + `${pct(Math.max(0, ...rel), 2)}).`),
    tokenStrip(r.tokens, rel, 1),
    triggers.length ? el("table", { class: "small", id: "monitor-triggers" }, el("tbody", {},
      triggers.slice(0, 30).map(([t, f, v]) => el("tr", {}, el("td", { class: "mono" }, JSON.stringify(r.tokens[t])),
        el("td", {}, featureLink(f)), el("td", { class: "num" }, pct(v, 2)))))) : null]);
}

function monitorBox(watched, live) {
  const text = el("textarea", { id: "monitor-text", maxlength: "4000", "aria-label": "text to monitor",
                                placeholder: "Paste a text…", "data-primary": true });
  const threshold = el("input", { id: "monitor-threshold", type: "number", min: "0.01", max: "1", step: "0.05",
                                  value: "0.5", style: "width: 5rem" });
  const out = el("div", { id: "monitor-out" });
  const form = el("form", { onsubmit: (e) => {
    e.preventDefault();
    if (text.value.trim()) {
      check(text.value, watched, Number(threshold.value), out).catch((err) => { clear(out); showError(out, err); });
    }
  } }, text, el("div", { class: "row" }, el("button", { type: "submit", class: "primary", disabled: !live }, "Check"),
    el("label", {}, "flag above ", threshold, " × corpus max"),
    el("span", { class: "muted small" }, `${watched.length} reported feature(s) watched`)));
  return el("section", { class: "card", id: "monitor" }, el("h2", {}, "Monitor a text"),
    el("p", { class: "small muted" }, "An uncalibrated check: featurescope monitor calibrates the threshold for a "
      + "stated false-positive rate on held-out negatives."),
    live ? null : el("p", { class: "notice" }, "The monitor needs the model: start the explorer with --sae."),
    form, out);
}

async function main_() {
  const information = await initNav("/safety");
  const categories = await api("/api/probes");
  clear(main).append(el("h1", {}, "Safety probes"));
  if (!categories.length) {
    main.append(el("p", { class: "notice" }, "This database has no probe results: run featurescope probe DB "
      + "(see docs/probes.md)."));
    return;
  }
  const watched = [...new Set(categories.flatMap((c) => c.candidates.filter((r) => r.reported)
    .map((r) => r.feature)))].slice(0, information.limits.max_hits);
  append(main, [el("div", { class: "grid cols-2", id: "categories" }, categories.map(categoryCard)),
    watched.length ? monitorBox(watched, information.live) : null]);
}

main_().catch((e) => showError(main, e));
