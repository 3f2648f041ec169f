// The feature page: labels, statistics, activation histogram, logit effects, neighbours, top and quantile examples.
import { api, append, clear, copyLinkButton, el, featureHref, featureLink, fmt, initNav, onKey, pct,
         showError } from "./common.js";
import { barChart } from "./charts.js";
import { multilingualSection, probesSection } from "./probes.js";
import { exampleRow, tokenStrip } from "./tokens.js";
import { imagesSection } from "./images.js";

const main = document.getElementById("main");
const id = Number((window.location.pathname.match(/^\/feature\/(-?\d+)/) || [])[1]);

function stat(key, value, title) {
  return el("div", { class: "stat", title }, el("div", { class: "v" }, value), el("div", { class: "k" }, key));
}

function statsGrid(f) {
  const s = f.stats;
  const every = s.density > 0 ? `1 in ${fmt(1 / s.density, 3)} tokens` : "never fired";
  return el("div", { class: "stats" },
    stat("density", pct(s.density), every), stat("tokens fired on", s.count.toLocaleString()),
    stat("max activation", fmt(s.max)), stat("mean when firing", fmt(s.mean)), stat("std when firing", fmt(s.std)),
    stat("decoder norm", fmt(s.decoder_norm)));
}

function labelsBlock(f) {
  const rows = f.labels.map((lb) => el("tr", {},
    el("td", {}, lb.kind), el("td", {}, lb.text), el("td", { class: "num" }, lb.score === null ? "—"
      : fmt(lb.score) + (lb.score_lower == null ? "" : ` ≥${fmt(lb.score_lower)}`))));
  return el("section", { class: "card" },
    el("div", { class: "label-main", id: "label" }, f.label || "(no label)"),
    rows.length ? el("table", { class: "small" },
      el("thead", {}, el("tr", {}, el("th", {}, "kind"), el("th", {}, "label"),
        el("th", { class: "num", title: "detection score: balanced accuracy of the label at telling firing "
          + "from non-firing windows" }, "score"))),
      el("tbody", {}, rows)) : null,
    rows.length ? el("p", { class: "small muted", id: "label-help" }, "Label: the tokens the feature fires on most "
      + "(→ the tokens it promotes, shown only where they agree); (various): none stands out. Score: balanced "
      + "accuracy at telling held-out firing windows from non-firing ones (0.5 chance, 1 perfect), blank with "
      + "under 10 firing or 5 non-firing windows; ≥ its lower 95% bound, which ranks labels.") : null);
}

function histogram(f) {
  if (!f.histogram) return el("p", { class: "muted" }, "No histogram (the feature never fired).");
  const { counts, max } = f.histogram;
  const w = max / counts.length;
  const tips = counts.map((c, i) => `${c.toLocaleString()} tokens in (${fmt(i * w)}, ${fmt((i + 1) * w)}]`);
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((t) => [t, fmt(t * max)]);
  return barChart({ counts, tips, ticks, xTitle: "activation", log: true,
                    label: "activation histogram" });
}

function effects(list, cls) {
  if (!list.length) return el("p", { class: "muted small" }, "none");
  return el("div", { class: "chips" }, list.map((t) => el("span", { class: `chip ${cls}`, title: `token ${t.token}` },
    el("bdi", {}, t.text), el("span", { class: "val" }, fmt(t.value)))));
}

function neighbours(f) {
  if (!f.neighbours.length) return el("p", { class: "muted" }, "none stored");
  return el("table", { id: "neighbours" },
    el("thead", {}, el("tr", {}, el("th", {}, "feature"), el("th", { class: "num" }, "cosine"), el("th", {}, "label"))),
    el("tbody", {}, f.neighbours.map((n) => el("tr", {},
      el("td", {}, featureLink(n.feature)), el("td", { class: "num" }, fmt(n.cosine)), el("td", {}, n.label)))));
}

function examples(list, top, empty) {
  if (!list.length) return el("p", { class: "muted" }, empty);
  return el("div", {}, list.map((e) => exampleRow(e, top)));
}

function quantiles(f) {
  if (!f.quantiles.length) return el("p", { class: "muted" }, "no samples");
  const n = f.intervals || 1 + Math.max(...f.quantiles.map((e) => e.interval));
  const groups = new Map();
  for (const e of f.quantiles) groups.set(e.interval, [...(groups.get(e.interval) || []), e]);
  return el("div", {}, [...groups.keys()].sort((a, b) => b - a).map((j) => el("div", {},
    el("h3", { class: "small muted" },
      `interval ${j + 1} of ${n}: activation ${fmt((j * f.stats.max) / n)} – ${fmt(((j + 1) * f.stats.max) / n)}`),
    examples(groups.get(j), f.stats.max, ""))));
}

function header(f, information) {
  const prev = f.id > 0 ? el("a", { href: featureHref(f.id - 1), title: "previous (←)" }, "← prev") : null;
  const next = f.id < information.d_sae - 1 ? el("a", { href: featureHref(f.id + 1), title: "next (→)" }, "next →")
    : null;
  const dead = f.stats.count === 0;
  const steer = information.live && !dead ? el("a", { href: `/steer?feature=${f.id}`, id: "steer-link" },
    "steer with it") : null;
  return el("div", { class: "row" }, el("h1", {}, `Feature ${f.id}`), dead ? el("span", { class: "notice small" },
    "never fired on the analysed tokens") : null, el("span", { class: "spacer" }),
    prev, next, el("a", { href: `/map?feature=${f.id}` }, "show on map"), steer,
    el("a", { href: `/api/features/${f.id}`, download: `feature-${f.id}.json`, id: "export-json",
              title: "everything on this page as JSON" }, "export JSON"), copyLinkButton());
}

// "Try this feature on your text": its activation on every token, coloured relative to its corpus max.
function tryBox(f, information) {
  if (!information.live) return null;
  const text = el("textarea", { id: "try-text", maxlength: String(information.limits.max_text_chars),
                                "aria-label": "text to try this feature on", placeholder: "Type or paste a text…" });
  const out = el("div", { id: "try-out" });
  const run = async () => {
    clear(out).append(el("p", { class: "muted" }, "Running the model…"));
    const r = await api("/api/activations", { text: text.value, features: [f.id] });
    const acts = r.features[0].acts;
    const top = Math.max(0, ...acts);
    const peak = acts.indexOf(top);
    const top1 = r.features[0].corpus_max;
    clear(out).append(el("p", { class: "small muted", id: "try-summary" }, top > 0
      ? `peaks at ${fmt(top)} (${pct(top1 > 0 ? top / top1 : 0)} of its corpus max) on `
        + `${JSON.stringify(r.tokens[peak])}` : "It does not fire on this text."),
    tokenStrip(r.tokens, acts, top1 > 0 ? top1 : top, { peak: top > 0 ? peak : -1 }));
  };
  const form = el("form", { onsubmit: (e) => {
    e.preventDefault();
    if (text.value.trim()) run().catch((err) => { clear(out); showError(out, err); });
  } }, text, el("div", { class: "row" }, el("button", { type: "submit", class: "primary" }, "Try"),
    el("span", { class: "muted small" }, "colour: activation / the feature's max over the corpus")));
  return el("section", { class: "card", id: "try" }, el("h2", {}, "Try it on your text"), form, out);
}

function render(f, information) {
  document.title = `Feature ${f.id} · featurescope`;
  append(clear(main), [
    header(f, information), labelsBlock(f), el("h2", {}, "Statistics"), statsGrid(f),
    el("div", { class: "grid cols-2" },
      el("section", {}, el("h2", {}, "Activation histogram"), histogram(f),
        el("h2", {}, "Logit effects"),
        el("h3", { class: "small" }, "promotes"), effects(f.positive_logits, "pos"),
        el("h3", { class: "small" }, "suppresses"), effects(f.negative_logits, "neg")),
      el("section", {}, el("h2", {}, "Neighbours (decoder cosine)"), neighbours(f))),
    imagesSection(f.id),
    tryBox(f, information),
    el("section", { id: "top" }, el("h2", {}, "Top activations"),
      examples(f.top, f.stats.max, "The feature never fired on the analysed tokens.")),
    el("section", {}, el("h2", {}, "Samples across activation quantiles"), quantiles(f)),
    el("div", { id: "probe-sections" }),
    el("footer", { class: "keys" }, "Keys: ← → previous / next feature · f go to feature · m map · ? help")]);
}

async function main_() {
  const information = await initNav("");
  const go = (d) => () => {
    const j = id + d;
    if (j >= 0 && j < information.d_sae) window.location.href = featureHref(j);
  };
  onKey({ ArrowLeft: go(-1), ArrowRight: go(1), k: go(-1), j: go(1) });
  if (!Number.isInteger(id)) throw new Error("no feature id in the address");
  const f = await api(`/api/features/${id}`);
  render(f, information);
  const extra = await Promise.all([multilingualSection(id, f.stats.max), probesSection(id)]);
  document.getElementById("probe-sections").append(...extra.filter(Boolean));
}

main_().catch((e) => { clear(main); showError(main, e); });
