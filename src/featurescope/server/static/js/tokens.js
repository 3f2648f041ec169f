// Token strips: one <span> per token, its text set with textContent, its background strength ∝ activation.
import { el, fmt } from "./common.js";

export function shade(act, top) {
  const a = top > 0 ? Math.min(Math.max(act / top, 0), 1) : 0;
  return a > 0 ? `rgba(255, 140, 0, ${(0.12 + 0.78 * a).toFixed(3)})` : "";
}

// tokens: strings; acts: numbers (same length); top: the activation that gets the full colour.
export function tokenStrip(tokens, acts, top, { peak = -1 } = {}) {
  const strip = el("div", { class: "tokens" });
  tokens.forEach((token, i) => {
    const act = acts[i] ?? 0;
    const newline = token.includes("\n");
    const span = el("span", {
      class: `tok${i === peak ? " peak" : ""}${newline ? " nl" : ""}`,
      title: `${JSON.stringify(token)}  activation ${fmt(act, 4)}`,
    }, newline ? token.replace(/\n/g, "⏎") : token);
    const colour = shade(act, top);
    if (colour) span.style.backgroundColor = colour;
    strip.append(span);
    if (newline) strip.append(document.createElement("br"));
  });
  return strip;
}

// Re-colour an existing strip with another feature's activations.
export function recolour(strip, acts, top) {
  [...strip.querySelectorAll(".tok")].forEach((span, i) => {
    span.style.backgroundColor = shade(acts[i] ?? 0, top);
    const token = span.title.split("  activation ")[0];
    span.title = `${token}  activation ${fmt(acts[i] ?? 0, 4)}`;
  });
}

// One example row: its activation, then the window with the example's own token outlined.
export function exampleRow(example, top) {
  const peak = example.position - example.start;
  return el("div", { class: "example" },
    el("div", { class: "act", title: "activation at the outlined token" }, fmt(example.value, 3)),
    tokenStrip(example.tokens, example.acts, top, { peak }));
}
