// The steering playground: pick features and values, generate a baseline and a steered continuation side by side.
import { api, clear, el, featureLink, fmt, initNav, showError } from "./common.js";

const main = document.getElementById("main");

function featureRow(information, rows, start = "", value = "auto") {
  const label = el("span", { class: "small muted" });
  const id = el("input", { type: "number", min: "0", max: String(information.d_sae - 1), value: start,
                           "aria-label": "feature id", class: "feature-id", required: true });
  const val = el("input", { type: "text", value, maxlength: "32", "aria-label": "value", class: "feature-value",
                            title: "auto (the calibrated multiple), a multiple of the feature's max activation (5x, -2x) or an "
                              + "absolute value" });
  const lookup = async () => {
    label.replaceChildren();
    if (id.value === "") return;
    try {
      const s = await api(`/api/features/${Number(id.value)}/summary`);
      label.append(featureLink(s.id), " ", s.label || "(no label)", ` · max ${fmt(s.max)}`);
    } catch (e) { label.textContent = e.message; }
  };
  id.addEventListener("change", lookup);
  const row = el("div", { class: "feature-row" }, id, val, label,
    el("button", { type: "button", title: "remove", "aria-label": "remove feature",
                   onclick: () => { row.remove(); rows.dispatchEvent(new Event("change")); } }, "✕"));
  if (start !== "") lookup();
  return row;
}

function column(title, prompt, text, id) {
  return el("section", { class: "card" }, el("h3", {}, title),
    el("div", { class: "gen", id }, el("span", { class: "prompt" }, prompt), text));
}

async function generate(form, out) {
  const features = [...form.querySelectorAll(".feature-row")].map((r) => {
    const raw = r.querySelector(".feature-value").value.trim();
    const number = Number(raw);
    return { feature: Number(r.querySelector(".feature-id").value),
             value: raw !== "" && Number.isFinite(number) ? number : raw };
  });
  const body = {
    prompt: form.querySelector("#prompt").value, features, mode: form.querySelector("#mode").value,
    max_new_tokens: Number(form.querySelector("#max-new").value),
    temperature: Number(form.querySelector("#temperature").value), seed: Number(form.querySelector("#seed").value),
  };
  const button = form.querySelector("button.primary");
  button.disabled = true;
  clear(out).append(el("p", { class: "muted" }, "Generating (baseline, then steered)…"));
  try {
    const r = await api("/api/steer", body);
    const auto = r.auto || {};
    const values = Object.entries(r.values).map(([f, v]) => `#${f} = ${fmt(v)}`
      + (auto[f] ? ` (auto ${fmt(auto[f].multiple)}x)` : "")).join(", ");
    clear(out).append(el("div", { class: "grid cols-2" },
      column("Baseline", r.prompt, r.baseline, "baseline"),
      column(`Steered (${body.mode} ${values})`, r.prompt, r.steered, "steered")),
      ...Object.entries(auto).map(([f, c]) => el("p", { class: "muted small" }, `#${f} auto: ${c.reason}`)));
  } finally {
    button.disabled = false;
  }
}

function form(information) {
  const limits = information.limits;
  const rows = el("div", { id: "feature-rows" });
  const starts = new URLSearchParams(window.location.search).getAll("feature");
  (starts.length ? starts : [""]).slice(0, limits.max_steer_features)
    .forEach((f) => rows.append(featureRow(information, rows, f)));
  const add = el("button", { type: "button", onclick: () => {
    if (rows.children.length < limits.max_steer_features) rows.append(featureRow(information, rows));
  } }, "+ feature");
  const out = el("div", { id: "steer-out" });
  const f = el("form", { onsubmit: (e) => {
    e.preventDefault();
    generate(f, out).catch((err) => { clear(out); showError(out, err); });
  } },
  el("label", { for: "prompt" }, "Prompt"),
  el("textarea", { id: "prompt", maxlength: String(limits.max_text_chars), "data-primary": true, required: true },
    "The Golden Gate Bridge is"),
  el("h3", {}, "Features (id, value)"), rows, add,
  el("div", { class: "row", style: "margin-top: 0.7rem" },
    el("label", {}, "mode ", el("select", { id: "mode" }, ["clamp", "add", "conditional"].map((m) =>
      el("option", { value: m }, m)))),
    el("label", {}, "new tokens ", el("input", { id: "max-new", type: "number", min: "1",
      max: String(limits.max_new_tokens), value: "30", style: "width: 5rem" })),
    el("label", {}, "temperature ", el("input", { id: "temperature", type: "number", min: "0", max: "5",
      step: "0.1", value: "0", style: "width: 5rem" })),
    el("label", {}, "seed ", el("input", { id: "seed", type: "number", min: "0", value: "0",
      style: "width: 5rem" })),
    el("span", { class: "spacer" }),
    el("button", { class: "primary", type: "submit" }, "Generate"),
    el("span", { class: "muted small" }, "Ctrl+Enter")));
  return [el("section", { class: "card" }, f), out];
}

async function main_() {
  const information = await initNav("/steer");
  clear(main).append(el("h1", {}, "Steering playground"),
    el("p", { class: "muted" }, "Clamp features to a calibrated value (auto: the largest multiple of their max "
      + "activation that keeps text fluent), a multiple of it (5x), suppress them (-2x) or ablate them (0), and compare the continuation with the model's own (same seed). Greedy at temperature 0."));
  if (!information.live) {
    main.append(el("p", { class: "notice" }, "Steering needs the model: start the explorer with "
      + "featurescope serve DB --sae SAE_DIR (and --model)."));
    return;
  }
  main.append(...form(information));
}

main_().catch((e) => showError(main, e));
