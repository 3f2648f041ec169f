// The API page: the endpoints of /openapi.json, their parameters and bodies, read without any CDN.
import { api, clear, el, initNav, showError } from "./common.js";

const main = document.getElementById("main");

function typeOf(schema, spec) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.anyOf) return schema.anyOf.map((s) => typeOf(s, spec)).join(" | ");
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.type === "array") return `${typeOf(schema.items, spec)}[]`;
  const bounds = [["minimum", "≥"], ["maximum", "≤"], ["minLength", "length ≥"], ["maxLength", "length ≤"],
    ["minItems", "items ≥"], ["maxItems", "items ≤"]]
    .filter(([k]) => schema[k] !== undefined).map(([k, s]) => `${s} ${schema[k]}`);
  return `${schema.type ?? "any"}${bounds.length ? ` (${bounds.join(", ")})` : ""}`;
}

function schemaTable(name, spec) {
  const schema = spec.components.schemas[name];
  if (!schema || !schema.properties) return null;
  const required = new Set(schema.required || []);
  return el("table", { class: "small" }, el("tbody", {}, Object.entries(schema.properties).map(([k, s]) =>
    el("tr", {}, el("td", { class: "mono" }, k + (required.has(k) ? " *" : "")), el("td", {}, typeOf(s, spec)),
      el("td", { class: "muted" }, s.description || (s.default !== undefined ? `default ${JSON.stringify(s.default)}`
        : ""))))));
}

function endpoint(path, method, op, spec) {
  const params = (op.parameters || []).map((p) => el("tr", {}, el("td", { class: "mono" }, p.name),
    el("td", {}, p.in), el("td", {}, typeOf(p.schema, spec)),
    el("td", { class: "muted" }, p.schema && p.schema.default !== undefined ? `default ${JSON.stringify(p.schema.default)}`
      : (p.required ? "required" : ""))));
  const body = op.requestBody && op.requestBody.content["application/json"].schema;
  const ok = op.responses["200"] && op.responses["200"].content && op.responses["200"].content["application/json"];
  return el("div", { class: "endpoint" },
    el("div", { class: "row" }, el("span", { class: `method ${method}` }, method.toUpperCase()),
      el("span", { class: "mono" }, path), el("span", { class: "muted" }, op.summary || "")),
    params.length ? el("table", { class: "small" }, el("tbody", {}, params)) : null,
    body ? el("div", {}, el("h3", { class: "small" }, `JSON body: ${typeOf(body, spec)}`),
      schemaTable(typeOf(body, spec), spec)) : null,
    ok ? el("p", { class: "small muted" }, `returns ${typeOf(ok.schema, spec)}`) : null);
}

async function main_() {
  await initNav("/docs");
  const spec = await api("/openapi.json");
  const sections = Object.entries(spec.paths).flatMap(([path, ops]) =>
    Object.entries(ops).map(([method, op]) => endpoint(path, method, op, spec)));
  clear(main).append(el("h1", {}, `${spec.info.title} API ${spec.info.version}`),
    el("p", { class: "muted" }, spec.info.description || ""),
    el("p", {}, "The machine-readable document: ", el("a", { href: "/openapi.json" }, "/openapi.json"), "."),
    ...sections);
}

main_().catch((e) => showError(main, e));
