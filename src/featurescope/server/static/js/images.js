// The image side of the feature page: top images with the feature's per-patch activations as a heat-map overlay,
// next to its top text-only contexts, and its modality score. Hidden when the database has no image analysis.
import { api, el, fmt, pct } from "./common.js";
import { exampleRow } from "./tokens.js";

// A patch's overlay colour: transparent at 0, at most 65% orange, so the picture stays visible.
function heat(act, top) {
  const a = top > 0 ? Math.min(Math.max(act / top, 0), 1) : 0;
  return a > 0 ? `rgba(255, 120, 0, ${(0.08 + 0.57 * a).toFixed(3)})` : "";
}

// One image: the thumbnail with a rows × cols grid of cells on top, each shaded by its patch's activation.
export function heatmap(image, top) {
  const grid = el("div", { class: "heat", "aria-hidden": "true" });
  grid.style.gridTemplateColumns = `repeat(${image.cols}, 1fr)`;
  grid.style.gridTemplateRows = `repeat(${image.rows}, 1fr)`;
  image.acts.forEach((act, k) => {
    const row = Math.floor(k / image.cols);
    const col = k % image.cols;
    const peak = row === image.row && col === image.col;
    const cell = el("div", { class: peak ? "cell peak" : "cell", "data-row": row, "data-col": col,
      "data-act": act, title: `patch (${row}, ${col}): activation ${fmt(act, 4)}` });
    const colour = heat(act, top);
    if (colour) cell.style.backgroundColor = colour;
    grid.append(cell);
  });
  return el("figure", { class: "image-example", "data-image": image.image },
    el("div", { class: "imgbox" }, el("img", { src: image.thumbnail, alt: image.ref, loading: "lazy" }), grid),
    el("figcaption", { class: "small" }, el("b", {}, fmt(image.value, 3)), " ", el("bdi", {}, image.ref),
      image.text ? el("div", { class: "muted" }, el("bdi", {}, image.text)) : null));
}

function modalityLine(m) {
  if (!m || m.score === null) return el("p", { class: "muted" }, "The feature never fired on the analysed images.");
  return el("p", { id: "modality" },
    el("b", {}, `${pct(m.score)} of its firing is on image positions`),
    ` (${m.image_count.toLocaleString()} image patches, ${m.text_count.toLocaleString()} text tokens; per position: `,
    `${pct(m.balanced)} image).`);
}

function fill(section, data) {
  if (!data.available) { section.remove(); return; }
  const top = Math.max(0, ...data.images.map((i) => i.value), ...data.texts.map((t) => t.value));
  const images = data.images.length
    ? el("div", { class: "image-grid" }, data.images.map((i) => heatmap(i, top)))
    : el("p", { class: "muted" }, "It fires on no image.");
  const texts = data.texts.length ? el("div", {}, data.texts.map((t) => exampleRow(t, top)))
    : el("p", { class: "muted" }, "It fires on no text position.");
  section.replaceChildren(el("h2", {}, "Images and text"), modalityLine(data.modality),
    el("div", { class: "grid cols-2" },
      el("div", { id: "top-images" }, el("h3", {}, "Top images (firing patches highlighted)"), images),
      el("div", { id: "top-texts" }, el("h3", {}, "Top texts (text positions only)"), texts)));
}

// A section that fills itself from /api/features/{id}/images (or removes itself when there are no images).
export function imagesSection(id) {
  const section = el("section", { id: "images" }, el("p", { class: "muted" }, "Loading images…"));
  api(`/api/features/${id}/images`).then((data) => fill(section, data))
    .catch((e) => section.replaceChildren(el("p", { class: "error" }, `images: ${e.message}`)));
  return section;
}
