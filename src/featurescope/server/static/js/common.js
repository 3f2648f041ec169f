// Shared helpers of the explorer pages: DOM building, API calls, the navigation bar, keyboard shortcuts.
// Every string from the server (tokens, labels, corpus text) goes into the page as text: el() makes text
// nodes and sets attributes with setAttribute; nothing here parses HTML.

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on")) {
      if (typeof value !== "function") throw new TypeError(`${key} must be a function`);
      node.addEventListener(key.slice(2), value);
    } else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

function detailText(data) {
  if (!data) return "";
  if (typeof data.detail === "string") return data.detail;
  if (Array.isArray(data.detail)) {
    return data.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  }
  return "";
}

// GET `path`, or POST `body` as JSON; resolves to the parsed reply, rejects with an Error carrying .status.
export async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (!response.ok) {
    const error = new Error(detailText(data) || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

export function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "—";
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (a >= 1e5 || a < 1e-3) return x.toExponential(digits - 1);
  return Number(x.toPrecision(digits)).toString();
}

export function pct(x, digits = 2) {
  if (x === null || x === undefined) return "—";
  return `${fmt(100 * x, digits)}%`;
}

// Text for plotly's labels and hover text, which read a small HTML subset: entity-escaped (no &quot;: plotly shows
// it raw).
export function plotlyText(s) {
  return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

export function featureHref(id) {
  return `/feature/${Number(id)}`;
}

export function featureLink(id, text) {
  return el("a", { href: featureHref(id), class: "mono" }, text ?? `#${Number(id)}`);
}

export function showError(where, error) {
  const box = el("div", { class: "error", role: "alert" }, error.message || String(error));
  where.prepend(box);
  return box;
}

let infoPromise = null;
export function info() {
  infoPromise ??= api("/api/info");
  return infoPromise;
}

export function param(name) {
  return new URLSearchParams(window.location.search).get(name);
}

const NAV = [
  ["/overview", "Overview", "o"], ["/features", "Features", "l"], ["/map", "Map", "m"], ["/search", "Search", "s"],
  ["/steer", "Steer", "t"], ["/multilingual", "Languages", "g"], ["/safety", "Safety", "y"], ["/saes", "SAEs", "e"],
  ["/docs", "API", "a"],
];
const pageKeys = {};

function typing(event) {
  const t = event.target;
  return t instanceof HTMLElement && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName));
}

function helpDialog() {
  const rows = [
    ["/", "focus the search box of the page"], ["f", "go to a feature by id"],
    ["o  l  m  s  t  g  y  e  a", "overview, features, map, search, steer, languages, safety, SAEs, API"], ["← →  or  k j", "previous / next feature"],
    ["Ctrl+Enter", "run the form you are typing in"], ["?", "this help"], ["Esc", "close"],
  ];
  return el("dialog", { id: "help", "aria-label": "Keyboard shortcuts" },
    el("h2", { text: "Keyboard shortcuts" }),
    el("table", {}, rows.map(([k, v]) => el("tr", {}, el("td", {}, el("kbd", { text: k })), el("td", { text: v })))),
    el("p", {}, el("button", { onclick: (e) => e.target.closest("dialog").close() }, "Close")));
}

// Pages register extra single-key shortcuts: onKey({ArrowLeft: fn, ...}).
export function onKey(map) {
  Object.assign(pageKeys, map);
}

function keydown(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || typing(event)) return;
  const go = (url) => { window.location.href = url; };
  const primary = document.querySelector("[data-primary]");
  const actions = {
    "/": () => (primary ? primary.focus() : go("/search")),
    f: () => document.getElementById("goto").focus(),
    "?": () => { const d = document.getElementById("help"); d.open ? d.close() : d.showModal(); },
    ...Object.fromEntries(NAV.map(([url, , key]) => [key, () => go(url)])),
    ...pageKeys,
  };
  const action = actions[event.key];
  if (action) { event.preventDefault(); action(event); }
}

// Ctrl+Enter inside a form submits it.
function ctrlEnter(event) {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    const form = event.target.closest && event.target.closest("form");
    if (form) { event.preventDefault(); form.requestSubmit(); }
  }
}

export function initNav(current) {
  const goto = el("input", {
    id: "goto", type: "number", min: "0", placeholder: "feature #", "aria-label": "go to feature id",
  });
  const form = el("form", {
    onsubmit: (e) => {
      e.preventDefault();
      if (goto.value !== "") window.location.href = featureHref(goto.value);
    },
  }, goto, el("button", { type: "submit" }, "Go"));
  const db = el("span", { class: "db" });
  const links = NAV.map(([url, text, key]) => el("a", {
    href: url, "aria-current": url === current ? "page" : false, title: `${text} (key ${key})`,
  }, text));
  const header = el("header", { class: "nav" }, el("nav", { class: "bar", "aria-label": "main" },
    el("a", { href: "/overview", class: "brand" }, "featurescope"), links, db, form,
    el("a", { href: "#", title: "keyboard shortcuts", onclick: (e) => {
      e.preventDefault(); document.getElementById("help").showModal();
    } }, el("kbd", { text: "?" }))));
  document.body.prepend(header);
  document.body.append(helpDialog());
  document.addEventListener("keydown", keydown);
  document.addEventListener("keydown", ctrlEnter);
  return info().then((i) => {
    goto.max = String(i.d_sae - 1);
    db.textContent = `${i.db} · ${i.d_sae.toLocaleString()} features · ${i.model ?? "?"} layer ${i.layer ?? "?"}`;
    return i;
  });
}

// Replace the page's query string with `params` (an object of string or string-array values; empty ones left
// out), without reloading: every state of a page lives in its URL.
export function setParams(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    for (const v of [value].flat()) if (v !== undefined && v !== null && v !== "") q.append(key, String(v));
  }
  const s = q.toString();
  window.history.replaceState(null, "", `${window.location.pathname}${s ? `?${s}` : ""}`);
}

// A whole number from a URL parameter, or null when it is missing or not one (never NaN).
export function intParam(name) {
  const raw = param(name);
  return raw !== null && /^\d+$/.test(raw.trim()) ? Number(raw) : null;
}

// A button that copies the page's current URL.
export function copyLinkButton() {
  const button = el("button", { type: "button", class: "copy-link", title: "copy a link to this view",
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(window.location.href);
        button.textContent = "Link copied";
      } catch { button.textContent = "Copy failed: use the address bar"; }
      setTimeout(() => { button.textContent = "Copy link"; }, 2000);
    } }, "Copy link");
  return button;
}

// POST `body` to `path` and call onEvent(event) for each line of its newline-delimited JSON reply; `signal`
// aborts it. Rejects like api() when the reply is not 200.
export async function streamEvents(path, body, onEvent, signal) {
  const response = await fetch(path, { method: "POST", headers: { "content-type": "application/json" },
                                       body: JSON.stringify(body), signal });
  if (!response.ok) {
    let data = null;
    try { data = await response.json(); } catch { data = null; }
    const error = new Error(detailText(data) || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split("\n");
    buffer = lines.pop();
    lines.filter((l) => l.trim()).forEach((l) => onEvent(JSON.parse(l)));
  }
  if (buffer.trim()) onEvent(JSON.parse(buffer));
}
