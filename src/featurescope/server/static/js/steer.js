// The steering playground: pick features and values (or a sweep of values), stream a baseline and the steered
// continuations token by token side by side, cancel at any time. The whole form lives in the URL.
import { api, clear, copyLinkButton, el, featureLink, fmt, initNav, param, setParams, showError,
         streamEvents } from "./common.js";

const main = document.getElementById("main");
const NUMBER = /^\s*-?(\d+\.?\d*|\.\d+)(e-?\d+)?\s*$/i;

// The value the API uses when none is given (its schema default), so "auto" shows once the server has it.
async function defaultValue() {
  try {
    const spec = await api("/openapi.json");
    const v = spec.components.schemas.SteerFeature.properties.value.default;
    return v === undefined || v === null ? "5x" : String(v);
  } catch { return "5x"; }
}

function asValue(raw) {
  const s = String(raw).trim();
  return NUMBER.test(s) ? Number(s) : s;
}

function featureRow(information, rows, start, value) {
  const label = el("span", { class: "small muted" });
  const id = el("input", { type: "number", min: "0", max: String(information.d_sae - 1), value: start,
                           "aria-label": "feature id", class: "feature-id", required: true });
  const val = el("input", { type: "text", value, maxlength: "32", "aria-label": "value", class: "feature-value",
                            title: "auto (calibrated), a multiple of the feature's max activation (5x, -2x) "
                              + "or an absolute value" });
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

function readForm(form) {
  const rows = [...form.querySelectorAll(".feature-row")].map((r) => ({
    feature: Number(r.querySelector(".feature-id").value), value: r.querySelector(".feature-value").value.trim(),
  }));
  const sweep = form.querySelector("#sweep-on").checked
    ? [...new Set(form.querySelector("#sweep").value.split(",").map((s) => s.trim()).filter(Boolean))] : [];
  return {
    prompt: form.querySelector("#prompt").value, rows, sweep, mode: form.querySelector("#mode").value,
    n: Number(form.querySelector("#max-new").value), temperature: Number(form.querySelector("#temperature").value),
    seed: Number(form.querySelector("#seed").value), chat: form.querySelector("#chat").checked,
  };
}

function saveState(s) {
  setParams({ prompt: s.prompt, feature: s.rows.map((r) => r.feature), value: s.rows.map((r) => r.value),
              mode: s.mode, n: s.n, temperature: s.temperature || "", seed: s.seed || "", chat: s.chat ? "1" : "",
              sweep: s.sweep.join(",") });
}

function requestBody(s) {
  const columns = s.sweep.length
    ? s.sweep.map((v) => s.rows.map((r) => ({ feature: r.feature, value: asValue(v) })))
    : [s.rows.map((r) => ({ feature: r.feature, value: r.value === "" ? undefined : asValue(r.value) }))];
  return { prompt: s.prompt, columns, mode: s.mode, max_new_tokens: s.n, temperature: s.temperature, seed: s.seed,
           chat: s.chat };
}

function columnCard(column, i, prompt) {
  const id = i === 0 ? "baseline" : i === 1 ? "steered" : `steered-${i}`;
  const values = Object.entries(column.values).map(([f, v]) => `#${f} = ${fmt(v)}`).join(", ");
  const text = document.createTextNode("");
  const card = el("section", { class: "card gen-card", "data-column": String(i) },
    el("h3", {}, i === 0 ? "Baseline" : `Steered: ${column.title}`),
    values ? el("p", { class: "small muted" }, `absolute values ${values}`) : null,
    ...Object.entries(column.auto || {}).map(([f, c]) =>
      el("p", { class: "small muted auto-reason" }, `#${f} auto = ${fmt(c.multiple)}x: ${c.reason}`)),
    el("div", { class: "gen", id }, el("span", { class: "prompt" }, prompt), text));
  return { card, text };
}

async function generate(form, out, status, controls) {
  const state = readForm(form);
  saveState(state);
  const controller = new AbortController();
  let job = null;
  let tokens = 0;
  let columns = [];
  controls.start(async () => { // ask the server to stop; drop the connection only if that fails
    status.textContent = "Cancelling…";
    if (!job) { controller.abort(); return; }
    await api(`/api/steer/jobs/${job}/cancel`, {}).catch(() => controller.abort());
  });
  clear(out);
  status.textContent = "Starting…";
  try {
    await streamEvents("/api/steer/stream", requestBody(state), (e) => {
      if (e.event === "start") {
        job = e.job;
        columns = e.columns.map((c, i) => columnCard(c, i, e.prompt));
        const grid = el("div", { class: `grid ${columns.length > 2 ? "cols-3" : "cols-2"}`, id: "steer-columns" },
          columns.map((c) => c.card));
        out.append(grid);
        status.textContent = "Generating the baseline…";
      } else if (e.event === "token") {
        const c = columns[e.column];
        c.text.data = e.replace ? e.text : c.text.data + e.text;
        tokens += 1;
        status.textContent = `Generating ${e.column === 0 ? "the baseline" : `column ${e.column + 1}`}… `
          + `(${tokens} tokens so far)`;
      } else if (e.event === "column") {
        columns[e.column].card.classList.add("complete");
      } else if (e.event === "done") {
        status.textContent = e.cancelled ? "Cancelled." : "Done.";
        status.dataset.state = e.cancelled ? "cancelled" : "done";
      } else if (e.event === "error") {
        status.textContent = `Failed: ${e.detail}`;
        status.dataset.state = "error";
      }
    }, controller.signal);
  } catch (err) {
    if (err.name === "AbortError") {
      status.textContent = "Cancelled.";
      status.dataset.state = "cancelled";
    } else {
      status.textContent = "";
      status.dataset.state = "error";
      showError(out, err);
    }
  } finally {
    controls.stop();
  }
}

function initialRows(information, fallback) {
  const ids = new URLSearchParams(window.location.search).getAll("feature");
  const values = new URLSearchParams(window.location.search).getAll("value");
  const good = [];
  const bad = [];
  ids.forEach((raw, i) => {
    const ok = /^\d+$/.test(raw.trim()) && Number(raw) < information.d_sae;
    (ok ? good : bad).push(ok ? [raw.trim(), values[i] || fallback] : raw);
  });
  return { rows: good.slice(0, information.limits.max_steer_features), bad };
}

function form(information, value) {
  const limits = information.limits;
  const rows = el("div", { id: "feature-rows" });
  const { rows: starts, bad } = initialRows(information, value);
  (starts.length ? starts : [["", value]]).forEach(([f, v]) => rows.append(featureRow(information, rows, f, v)));
  const add = el("button", { type: "button", onclick: () => {
    if (rows.children.length < limits.max_steer_features) rows.append(featureRow(information, rows, "", value));
  } }, "+ feature");
  const out = el("div", { id: "steer-out" });
  const status = el("span", { id: "steer-status", class: "muted small", role: "status" });
  const go = el("button", { class: "primary", type: "submit" }, "Generate");
  const cancel = el("button", { type: "button", id: "cancel", disabled: true }, "Cancel");
  const controls = {
    start(stop) { go.disabled = true; cancel.disabled = false; cancel.onclick = stop; },
    stop() { go.disabled = false; cancel.disabled = true; cancel.onclick = null; },
  };
  const sweepDefault = [...new Set([value, "1x", "2x", "5x"])].join(", ");
  const sweepParam = param("sweep");
  const numberInput = (id, v, attrs) => el("input", { id, type: "number", value: v, style: "width: 5rem", ...attrs });
  const f = el("form", { onsubmit: (e) => {
    e.preventDefault();
    status.dataset.state = "running";
    generate(f, out, status, controls).catch((err) => { clear(out); showError(out, err); });
  } },
  el("label", { for: "prompt" }, "Prompt"),
  el("textarea", { id: "prompt", maxlength: String(limits.max_text_chars), "data-primary": true, required: true },
    param("prompt") ?? "The Golden Gate Bridge is"),
  el("h3", {}, "Features (id, value)"), rows, add,
  el("div", { class: "row", style: "margin-top: 0.7rem" },
    el("label", {}, el("input", { type: "checkbox", id: "sweep-on", checked: sweepParam !== null }),
      " sweep: one column per value "),
    el("input", { id: "sweep", type: "text", value: sweepParam || sweepDefault, "aria-label": "sweep values",
                  title: `up to ${limits.max_sweep_columns} values, comma-separated`, style: "width: 14rem" })),
  el("div", { class: "row", style: "margin-top: 0.7rem" },
    el("label", {}, "mode ", el("select", { id: "mode" }, ["clamp", "add", "conditional"].map((m) =>
      el("option", { value: m, selected: param("mode") === m }, m)))),
    el("label", {}, "new tokens ", numberInput("max-new", param("n") ?? "30",
      { min: "1", max: String(limits.max_new_tokens) })),
    el("label", {}, "temperature ", numberInput("temperature", param("temperature") ?? "0",
      { min: "0", max: "5", step: "0.1" })),
    el("label", {}, "seed ", numberInput("seed", param("seed") ?? "0", { min: "0" })),
    el("label", { title: "wrap the prompt in the model's chat template as one user turn" },
      el("input", { type: "checkbox", id: "chat", checked: param("chat") === "1" }), " chat"),
    el("span", { class: "spacer" }), go, cancel, el("span", { class: "muted small" }, "Ctrl+Enter")),
  el("div", { class: "row" }, status, el("span", { class: "spacer" }), copyLinkButton()));
  const notes = bad.length ? el("p", { class: "notice", id: "bad-features" },
    `Ignored from the link: ${bad.map((b) => JSON.stringify(b)).join(", ")} (not a feature id 0..${information.d_sae - 1}).`)
    : null;
  return [notes, el("section", { class: "card" }, f), out];
}

async function main_() {
  const information = await initNav("/steer");
  clear(main).append(el("h1", {}, "Steering playground"),
    el("p", { class: "muted" }, "Clamp features to a multiple of their max activation (5x), suppress them (-2x) or "
      + "ablate them (0), and compare the continuations with the model's own (same seed), streamed as they are "
      + "generated. A sweep shows several values side by side. Greedy at temperature 0."));
  if (!information.live) {
    main.append(el("p", { class: "notice" }, "Steering needs the model: start the explorer with "
      + "featurescope serve DB --sae SAE_DIR (and --model)."));
    return;
  }
  main.append(...form(information, await defaultValue()).filter(Boolean));
}

main_().catch((e) => showError(main, e));
