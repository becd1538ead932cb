// Canvas drawing of a laid-out flame graph (layout.js).
//
// The rectangles are not drawn with fillRect: Chromium records canvas calls and replays them into
// the bitmap when the frame is committed, at about 1.5 µs per rectangle in software rendering
// (no GPU), and a 100,000-node graph is ~1,500 frames plus ~6,000 runs of sub-pixel frames: a
// zoom's commit alone took longer than a 60 Hz frame. Instead the rectangles are written into
// pixels here (`rasterize`, pure: one scan line per graph row, copied down the row's height) and
// handed to the canvas in one putImageData; only the labels (where 20+ px fit) and the hover
// outline are canvas calls. Edges are snapped to device pixels. The canvas follows
// devicePixelRatio.

const FONT = `12px ui-monospace, "DejaVu Sans Mono", Menlo, monospace`;
const TEXT_MIN_W = 20;

/**
 * Writes the frames and sub-pixel runs of layout `l` into `px` (RGBA pixels as little-endian
 * u32, `stride` per line, `lines` lines, transparent where nothing is drawn) at `dpr` device
 * pixels per CSS px. `fillOf(i)` is frame i's colour as such a u32, `thin` the colour of the
 * sub-pixel runs. Frames wider than 3 CSS px keep a 1 px gap on their right, and every row a 1 px
 * gap below, so neighbours stay apart; any frame is at least one device pixel wide.
 */
export function rasterize(px, stride, lines, l, dpr, fillOf, thin) {
  px.fill(0, 0, Math.min(px.length, stride * lines));
  if (!l.rows) return;
  const rowH = l.rowH;
  const gap = Math.max(1, Math.round(dpr));
  const line = new Uint32Array(stride);
  // The sub-pixel runs: x, depth, w triples, by increasing depth (layout.js).
  const runs = l.thin ?? [];
  let k = 0;
  for (let depth = 0; depth < l.rows; depth++) {
    const row = l.rowIndex[depth] ?? [];
    if (!row.length && !(k < runs.length && runs[k + 1] === depth)) continue;
    line.fill(0);
    for (; k < runs.length && runs[k + 1] === depth; k += 3) {
      const x0 = Math.max(0, Math.round(runs[k] * dpr));
      const x1 = Math.min(stride, Math.max(x0 + 1, Math.round((runs[k] + runs[k + 2]) * dpr)));
      line.fill(thin, x0, x1);
    }
    for (const i of row) {
      const f = l.frames[i];
      const x0 = Math.max(0, Math.round(f.x * dpr));
      let x1 = Math.round((f.x + f.w) * dpr);
      if (f.w > 3) x1 -= gap;
      line.fill(fillOf(i), x0, Math.min(stride, Math.max(x0 + 1, x1)));
    }
    const y = (l.orient === "flame" ? l.rows - 1 - depth : depth) * rowH;
    const y0 = Math.round(y * dpr);
    const y1 = Math.min(lines, Math.max(y0 + 1, Math.round((y + rowH) * dpr) - gap));
    for (let yy = y0; yy < y1; yy++) px.set(line, yy * stride);
  }
}

const COLOR_CACHE_MAX = 4096; // diff colours are continuous: bound the distinct strings kept

/** CSS colour → little-endian RGBA u32 (what `rasterize` writes), parsed by the canvas itself. */
function colorParser(ctx) {
  const cache = new Map();
  return (css) => {
    let v = cache.get(css);
    if (v !== undefined) return v;
    if (cache.size >= COLOR_CACHE_MAX) cache.clear();
    ctx.fillStyle = "#000000";
    ctx.fillStyle = css;
    const s = ctx.fillStyle; // normalised: "#rrggbb" or "rgba(r, g, b, a)"
    let r = 0, g = 0, b = 0, a = 255;
    if (s[0] === "#") {
      r = parseInt(s.slice(1, 3), 16); g = parseInt(s.slice(3, 5), 16); b = parseInt(s.slice(5, 7), 16);
    } else {
      const m = s.match(/[\d.]+/g) ?? [];
      [r, g, b] = m.slice(0, 3).map(Number);
      a = Math.round(Number(m[3] ?? 1) * 255);
    }
    v = ((a << 24) | (b << 16) | (g << 8) | r) >>> 0;
    cache.set(css, v);
    return v;
  };
}

/**
 * Paints `l` into `canvas` (CSS width `width`). `style(frame)` → {fill, text} colours;
 * `label(frame)` → the text; `hover` is the hovered frame's index or -1; `thinFill` colours the
 * runs of sub-pixel frames. `reuse`: only the hover changed since `l` was last painted here.
 */
export function drawFlame(canvas, l, width, { style, label, hover = -1, outline = "#000", thinFill = "#c8c8cc", reuse = false }) {
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
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  const rgba = canvas._rgba ?? (canvas._rgba = colorParser(ctx));
  // One ImageData per backing-store size, reused (a new one per paint is megabytes of garbage).
  const lines = Math.min(canvas.height, bh);
  let img = canvas._img;
  if (!img || img.width !== canvas.width || img.height !== lines) {
    img = canvas._img = ctx.createImageData(canvas.width, lines);
    canvas._imgOf = null;
  }
  const px = new Uint32Array(img.data.buffer);
  const styles = new Array(l.frames.length);
  for (let i = 0; i < l.frames.length; i++) styles[i] = style(l.frames[i]);
  // style() hands out one object per colour: its pixel value is computed once, kept on it.
  const fillOf = (i) => {
    const s = styles[i];
    return s.px ?? (s.px = rgba(s.fill));
  };
  // `reuse`: the pixels of this very layout are still in `img` (a hover moved): no rasterizing.
  if (!reuse || canvas._imgOf !== l) rasterize(px, canvas.width, lines, l, dpr, fillOf, rgba(thinFill));
  canvas._imgOf = l;
  ctx.putImageData(img, 0, 0);
  if (canvas.height > lines) ctx.clearRect(0, lines, canvas.width, canvas.height - lines);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  const rowH = l.rowH;
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
