// Feature-page sections from the probes' tables: the cross-lingual score with aligned examples per language,
// and the probe categories (safety, user sets) in which the feature was a candidate.
import { api, el, fmt } from "./common.js";
import { tokenStrip } from "./tokens.js";

export function alignedExample(example, top) {
  return el("div", { class: "card" },
    el("div", { class: "small muted" }, `${example.source} ${example.ref}`),
    el("table", { class: "small" }, el("tbody", {}, example.langs.map((lang) => el("tr", {},
      el("td", { class: "lang" }, lang.lang),
      el("td", { class: "num" }, fmt(lang.value)),
      el("td", {}, tokenStrip(lang.tokens, lang.acts, top)))))));
}

export async function multilingualSection(id, maxAct) {
  const m = await api(`/api/features/${id}/multilingual`);
  if (!m.available) return null;
  const pairs = Object.entries(m.pairs || {}).map(([k, v]) => `${k} ${fmt(v, 2)}`).join(" · ");
  const verdict = m.listed ? "listed as cross-lingual" : m.eligible ? "not cross-lingual" : "not eligible";
  return el("section", { id: "multilingual" },
    el("h2", {}, "Across languages"),
    el("p", {}, `cross-lingual score ${fmt(m.score, 3)} (${verdict}; shuffled-alignment null ${fmt(m.null_max, 3)})`),
    pairs ? el("p", { class: "small muted" }, `per language pair: ${pairs}`) : null,
    el("div", {}, (m.examples || []).slice(0, 5).map((e) => alignedExample(e, maxAct))));
}

export async function probesSection(id) {
  const rows = await api(`/api/features/${id}/probes`);
  if (!rows.length) return null;
  return el("section", { id: "probes" },
    el("h2", {}, "Probe sets"),
    el("table", { class: "small" },
      el("thead", {}, el("tr", {}, el("th", {}, "set"), el("th", {}, "category"),
        el("th", { class: "num" }, "AUROC (held out)"), el("th", {}, "reported"))),
      el("tbody", {}, rows.map((r) => el("tr", {},
        el("td", {}, r.probe_set), el("td", {}, r.category),
        el("td", { class: "num" }, fmt(r.heldout_auroc)),
        el("td", {}, r.reported ? "yes" : "no"))))));
}
