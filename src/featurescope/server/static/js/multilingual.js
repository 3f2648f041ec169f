// The cross-lingual page: the most cross-lingual features, each with its aligned examples in every language.
import { api, clear, el, featureLink, fmt, initNav, showError } from "./common.js";
import { alignedExample } from "./probes.js";

const main = document.getElementById("main");

function featureCard(f) {
  const pairs = Object.entries(f.pairs || {}).map(([k, v]) => `${k} ${fmt(v, 2)}`).join(" · ");
  const top = Math.max(0, ...(f.examples || []).flatMap((e) => e.langs.map((l) => l.value)));
  return el("section", { class: "card ml-feature" },
    el("h2", {}, featureLink(f.feature, `Feature ${f.feature}`), " ",
      el("span", { class: "small muted" }, `cross-lingual score ${fmt(f.score, 3)}`
        + `${f.listed ? " · listed" : ""}`)),
    pairs ? el("p", { class: "small muted" }, `per language pair: ${pairs}`) : null,
    el("div", { class: "grid" }, (f.examples || []).slice(0, 3).map((e) => alignedExample(e, top))));
}

async function main_() {
  await initNav("/multilingual");
  const data = await api("/api/multilingual?n=20&listed_only=false");
  clear(main).append(el("h1", {}, "Across languages"));
  if (!data.available) {
    main.append(el("p", { class: "notice" }, "This database has no cross-lingual scores: run "
      + "featurescope multilingual DB (see docs/probes.md)."));
    return;
  }
  const langs = (data.meta && data.meta.langs) || [];
  main.append(el("p", { class: "muted" }, `The features that fire alike on the same text in ${langs.join(", ")}, `
    + "best first, each with aligned examples (activation on every token, coloured relative to the feature's "
    + `strongest example here). Shuffled-alignment null: ${fmt(data.meta && data.meta.null_max, 3)}.`),
  el("div", { id: "ml-features" }, data.features.map(featureCard)));
}

main_().catch((e) => showError(main, e));
