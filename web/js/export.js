// Exports of the current view: folded stacks, an SVG flame graph, JSON. Pure (strings out),
// unit-tested; the page turns them into downloads. (pprof comes from the server.)

import { forEachStack } from "./tree.js";

/** Folded stacks (`a;b;c 123` per line), what flamegraph.pl and speedscope read. */
export function toFolded(root, isDiff = false) {
  const lines = [];
  forEachStack(root, isDiff, (frames, n) => {
    if (!frames.length) return;
    const v = isDiff ? n.rs : n.self;
    if (v > 0) lines.push(`${frames.map((f) => f.name.replace(/;/g, ":")).join(";")} ${v}`);
  });
  return lines.join("\n") + (lines.length ? "\n" : "");
}

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

/**
 * An SVG of laid-out frames (layout.js): one <rect> per frame with a <title> tooltip and a label
 * where it fits. `color(frame)` gives the fill, `label(frame)` the text, `title(frame)` the tooltip.
 */
export function toSvg(l, width, { color, label, title, charW = 7, font = "monospace", thinFill = "#d8c3b4" }) {
  const h = l.rows * l.rowH;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${Math.round(width)}" height="${h}" viewBox="0 0 ${Math.round(width)} ${h}" font-family="${esc(font)}" font-size="12">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
  ];
  // Runs of sub-pixel frames (layout.js), under the frames as on the canvas.
  const thin = l.thin ?? [];
  for (let k = 0; k < thin.length; k += 3) {
    const y = (l.orient === "flame" ? l.rows - 1 - thin[k + 1] : thin[k + 1]) * l.rowH;
    out.push(`<rect x="${thin[k]}" y="${y}" width="${thin[k + 2]}" height="${l.rowH - 1}" fill="${esc(thinFill)}"/>`);
  }
  for (const f of l.frames) {
    const w = Math.max(f.w - (f.w > 3 ? 1 : 0), 0.5);
    out.push(`<g><title>${esc(title(f))}</title><rect x="${f.x.toFixed(2)}" y="${f.y}" width="${w.toFixed(2)}" height="${l.rowH - 1}" fill="${esc(color(f))}"/>`);
    const max = Math.floor((f.w - 6) / charW);
    if (max >= 3) {
      const t = label(f);
      const text = t.length <= max ? t : t.slice(0, max - 1) + "…";
      out.push(`<text x="${(f.x + 3).toFixed(2)}" y="${f.y + l.rowH / 2 + 4}" fill="#111111">${esc(text)}</text>`);
    }
    out.push("</g>");
  }
  out.push("</svg>");
  return out.join("\n");
}

/** JSON of the view: its state (what the URL holds) and the displayed tree. */
export function toJson(view, root) {
  return JSON.stringify({ kiln_view: 1, ...view, root }, (k, v) => (k === "hit" || k === "sub" ? undefined : v), 1);
}
