// The features list: every feature, paginated and sortable, filtered by density range, dead / dense and label
// text; the filters live in the URL.
import { api, clear, copyLinkButton, el, featureLink, fmt, initNav, param, pct, setParams,
         showError } from "./common.js";

const main = document.getElementById("main");
const PAGE = 50;
const SORTS = [["id", "id"], ["density", "density"], ["max", "max activation"], ["label-score", "label score"]];

function readState() {
  const num = (k) => { const v = param(k); return v !== null && v.trim() !== "" && Number.isFinite(Number(v)) ? v : ""; };
  const pick = (k, allowed, d) => (allowed.includes(param(k)) ? param(k) : d);
  const page = Number.parseInt(param("page") ?? "1", 10);
  return { sort: pick("sort", SORTS.map(([v]) => v), "id"), order: pick("order", ["asc", "desc"], "asc"),
           show: pick("show", ["all", "alive", "dead", "dense"], "all"), label: param("label") || "",
           min: num("min"), max: num("max"), page: Number.isFinite(page) && page > 0 ? page : 1 };
}

function table(data, state, rerun) {
  const head = (key, text) => {
    const active = state.sort === key;
    return el("th", { class: key === "id" || key === "label-score" ? "" : "num" }, el("button", {
      type: "button", class: "sort", "data-sort": key, "aria-sort": active ? `${state.order}ending` : false,
      onclick: () => {
        state.order = active && state.order === "asc" ? "desc" : active ? "asc" : key === "id" ? "asc" : "desc";
        state.sort = key;
        state.page = 1;
        rerun();
      } }, text, active ? (state.order === "asc" ? " ▲" : " ▼") : ""));
  };
  return el("table", { id: "feature-table" },
    el("thead", {}, el("tr", {}, head("id", "feature"), el("th", {}, "label"), head("label-score", "score"),
      head("density", "density"), head("max", "max"))),
    el("tbody", {}, data.rows.map((r) => el("tr", { class: r.density > 0 ? "" : "dead" },
      el("td", {}, featureLink(r.id)), el("td", {}, r.label || el("span", { class: "muted" }, "(no label)")),
      el("td", {}, r.score === null ? "—" : fmt(r.score)),
      el("td", { class: "num" }, r.density > 0 ? pct(r.density) : "never fired"), el("td", { class: "num" },
        fmt(r.max))))));
}

async function load(state, out) {
  setParams({ sort: state.sort === "id" ? "" : state.sort, order: state.order === "asc" ? "" : state.order,
              show: state.show === "all" ? "" : state.show, label: state.label, min: state.min, max: state.max,
              page: state.page > 1 ? state.page : "" });
  const q = new URLSearchParams({ sort: state.sort, order: state.order, show: state.show, n: String(PAGE),
                                  offset: String((state.page - 1) * PAGE) });
  if (state.label) q.set("label", state.label);
  if (state.min !== "") q.set("min_density", String(Number(state.min) / 100));
  if (state.max !== "") q.set("max_density", String(Number(state.max) / 100));
  const data = await api(`/api/feature-list?${q}`);
  const pages = Math.max(1, Math.ceil(data.total / PAGE));
  const rerun = () => load(state, out).catch((e) => { clear(out); showError(out, e); });
  const go = (p) => el("button", { type: "button", disabled: p < 1 || p > pages, onclick: () => {
    state.page = p; rerun();
  } }, p < state.page ? "← previous" : "next →");
  clear(out).append(
    el("div", { class: "row" }, el("span", { id: "feature-count" }, `${data.total.toLocaleString()} features`
      + ` · page ${state.page} of ${pages}`), el("span", { class: "spacer" }), go(state.page - 1), go(state.page + 1)),
    table(data, state, rerun));
}

function filters(state, out) {
  const input = (id, label, value, attrs = {}) => el("label", {}, `${label} `, el("input", { id, value, ...attrs }));
  const show = el("select", { id: "show", "aria-label": "which features" },
    [["all", "all"], ["alive", "fired"], ["dead", "never fired (dead)"], ["dense", "dense (≥ 10% of tokens)"]]
      .map(([v, t]) => el("option", { value: v, selected: state.show === v }, t)));
  const form = el("form", { class: "row", id: "filters", onsubmit: (e) => {
    e.preventDefault();
    state.label = form.querySelector("#label-filter").value.trim();
    state.min = form.querySelector("#min-density").value;
    state.max = form.querySelector("#max-density").value;
    state.show = show.value;
    state.page = 1;
    load(state, out).catch((err) => { clear(out); showError(out, err); });
  } },
  input("label-filter", "label contains", state.label, { type: "search", maxlength: "200", "data-primary": true }),
  input("min-density", "density ≥", state.min, { type: "number", min: "0", max: "100", step: "any",
                                                  style: "width: 6rem", title: "percent of tokens" }), "%",
  input("max-density", "≤", state.max, { type: "number", min: "0", max: "100", step: "any", style: "width: 6rem",
                                         title: "percent of tokens" }), "%",
  show, el("button", { type: "submit", class: "primary" }, "Filter"));
  return form;
}

async function main_() {
  await initNav("/features");
  const state = readState();
  const out = el("div", { id: "feature-list" });
  clear(main).append(el("div", { class: "row" }, el("h1", {}, "Features"), el("span", { class: "spacer" }),
    copyLinkButton()), el("section", { class: "card" }, filters(state, out)), out);
  await load(state, out);
}

main_().catch((e) => showError(main, e));
