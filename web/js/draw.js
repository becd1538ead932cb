// Canvas drawing of a laid-out flame graph (layout.js). Rectangles are grouped by fill colour
// (one fillStyle change per colour; fillRect, not one path per colour: Chromium's software
// rasterizer fills a path of thousands of rectangles several times slower at commit), sub-pixel
// frames are runs of one muted colour, and labels are drawn only where 20+ px fit, so a
// 100,000-node graph paints in a few milliseconds; the canvas follows devicePixelRatio.

const FONT = `12px ui-monospace, "DejaVu Sans Mono", Menlo, monospace`;
const TEXT_MIN_W = 20;

/**
 * Paints `l` into `canvas` (CSS width `width`). `style(frame)` → {fill, text} colours;
 * `label(frame)` → the text; `hover` is the hovered frame's index or -1; `thinFill` colours the
 * runs of sub-pixel frames.
 */
export function drawFlame(canvas, l, width, { style, label, hover = -1, outline = "#000", thinFill = "#c8c8cc" }) {
  const height = Math.max(1, l.rows * l.rowH);
  const dpr = globalThis.devicePixelRatio || 1;
  const bw = Math.max(1, Math.round(width * dpr)), bh = Math.max(1, Math.round(height * dpr));
  // A new backing store (any change of canvas.width/height) costs more than painting a big graph:
  // keep it while the graph is at most a little shorter (zooms change the row count), and show
  // only the graph's rows by the container's height (it clips, style.css).
  if (canvas.width !== bw || canvas.height < bh || canvas.height > bh * 1.5 + 64) {
    canvas.width = bw;
    canvas.height = bh;
  }
  const cssH = `${canvas.height / dpr}px`;
  if (canvas.style.height !== cssH) canvas.style.height = cssH;
  const boxH = l.rows ? `${height}px` : ""; // empty: the container's placeholder sizes it
  if (canvas.parentElement && canvas.parentElement.style.height !== boxH) canvas.parentElement.style.height = boxH;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, canvas.height / dpr);
  const rowH = l.rowH;
  // Sub-pixel frames (layout.js `thin`): one muted run per row segment, under the frames.
  const thin = l.thin ?? [];
  if (thin.length) {
    ctx.fillStyle = thinFill;
    for (let k = 0; k < thin.length; k += 3) {
      const y = (l.orient === "flame" ? l.rows - 1 - thin[k + 1] : thin[k + 1]) * rowH;
      ctx.fillRect(thin[k], y, thin[k + 2], rowH - 1);
    }
  }
  const styles = new Array(l.frames.length);
  const batches = new Map();
  for (let i = 0; i < l.frames.length; i++) {
    const f = l.frames[i];
    const s = style(f);
    styles[i] = s;
    let b = batches.get(s.fill);
    if (!b) batches.set(s.fill, (b = []));
    b.push(i);
  }
  for (const [fill, idx] of batches) {
    ctx.fillStyle = fill;
    for (const i of idx) {
      const f = l.frames[i];
      // A 1px gap right and below separates neighbours without hiding tiny frames.
      ctx.fillRect(f.x, f.y, Math.max(f.w - (f.w > 3 ? 1 : 0), 0.5), rowH - 1);
    }
  }
  ctx.font = FONT;
  ctx.textBaseline = "middle";
  const charW = ctx.measureText("m").width || 7.2;
  let lastText = null;
  for (let i = 0; i < l.frames.length; i++) {
    const f = l.frames[i];
    if (f.w < TEXT_MIN_W) continue;
    const max = Math.floor((f.w - 6) / charW);
    if (max < 2) continue;
    const t = label(f);
    const text = t.length <= max ? t : t.slice(0, max - 1) + "…";
    if (styles[i].text !== lastText) ctx.fillStyle = lastText = styles[i].text;
    ctx.fillText(text, f.x + 3, f.y + rowH / 2);
  }
  if (hover >= 0 && hover < l.frames.length) {
    const h = l.frames[hover];
    ctx.strokeStyle = outline;
    ctx.lineWidth = 1.5;
    ctx.strokeRect(h.x + 0.75, h.y + 0.75, Math.max(h.w - 2, 1), rowH - 2.5);
  }
}
