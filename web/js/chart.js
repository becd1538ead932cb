// CPU over time above the flame graph: `/api/v1/series` stacked by a label's top N values plus
// "other", in cores for CPU time. Dragging across the chart narrows the range (brush); clicking a
// column or a legend entry selects that series. `stackSeries` and `niceTicks` are pure and tested.

import { fmtCores, fmtClock, fmtValue } from "./format.js";

export const OTHER = "other";

/**
 * Series answer → {times (ms), layers: [{key, labels, values, total}], rate, unit}. Each layer's
 * values are per bucket: cores for nanoseconds (CPU time / bucket length), else value per second.
 * The `topN` largest series are kept and the rest summed into one "other" layer.
 */
export function stackSeries(resp, topN = 5) {
  const step = Number(resp.step) || 10;
  const unit = resp.unit || "";
  const per = unit === "nanoseconds" ? step * 1e9 : step;
  const series = (resp.series ?? []).map((s) => ({
    labels: s.labels ?? {},
    points: s.points ?? [],
    total: (s.points ?? []).reduce((a, p) => a + Number(p[1]), 0),
  }));
  series.sort((a, b) => b.total - a.total);
  const kept = series.slice(0, topN);
  const rest = series.slice(topN);
  const timeSet = new Set();
  for (const s of series) for (const p of s.points) timeSet.add(Number(p[0]));
  const times = [...timeSet].sort((a, b) => a - b);
  const at = new Map(times.map((t, i) => [t, i]));
  const mk = (key, labels, list) => {
    const values = new Array(times.length).fill(0);
    let total = 0;
    for (const s of list) for (const [t, v] of s.points) {
      values[at.get(Number(t))] += Number(v) / per;
      total += Number(v);
    }
    return { key, labels, values, total };
  };
  const layers = kept.map((s) => mk(labelKey(s.labels), s.labels, [s]));
  if (rest.length) layers.push(mk(OTHER, null, rest));
  return { times, layers, step, unit, rate: unit === "nanoseconds" ? "cores" : `${unit || "value"}/s` };
}

export function labelKey(labels) {
  const e = Object.entries(labels ?? {});
  return e.length ? e.map(([k, v]) => `${k}=${v}`).join(", ") : "all";
}

/** About `n` round tick values from 0 to at least `max`. */
export function niceTicks(max, n = 4) {
  if (!(max > 0)) return [0];
  const raw = max / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let v = 0; v <= max + step * 0.999; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

const COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
export const layerColor = (i, key) => (key === OTHER ? "#9aa0a6" : COLORS[i % COLORS.length]);

/** The chart widget (DOM): draws into `canvas`, lists the legend, reports brush and clicks. */
export class Chart {
  constructor({ canvas, legend, tooltip, onBrush, onSelect }) {
    Object.assign(this, { canvas, legend, tooltip, onBrush, onSelect });
    this.data = null;
    this.range = null; // [fromMs, untilMs]
    this.drag = null;
    this.geom = null;
    canvas.addEventListener("mousedown", (e) => this.down(e));
    window.addEventListener("mousemove", (e) => this.move(e));
    window.addEventListener("mouseup", (e) => this.up(e));
    canvas.addEventListener("mouseleave", () => { this.tooltip.hidden = true; });
  }

  set(data, fromMs, untilMs) {
    this.data = data;
    this.range = [fromMs, untilMs];
    this.renderLegend();
    this.draw();
  }

  renderLegend() {
    const frag = document.createDocumentFragment();
    (this.data?.layers ?? []).forEach((l, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "legend-item";
      b.dataset.key = l.key;
      b.title = l.labels ? `Select ${l.key}` : "The other series together";
      b.disabled = !l.labels || !Object.keys(l.labels).length;
      const sw = document.createElement("i");
      sw.className = "sw";
      sw.style.background = layerColor(i, l.key);
      b.append(sw, document.createTextNode(l.key));
      b.addEventListener("click", () => l.labels && this.onSelect(l.labels));
      frag.append(b);
    });
    this.legend.replaceChildren(frag);
  }

  draw() {
    const c = this.canvas;
    const width = Math.max(1, c.clientWidth);
    const height = Math.max(1, c.clientHeight);
    const dpr = window.devicePixelRatio || 1;
    c.width = Math.round(width * dpr);
    c.height = Math.round(height * dpr);
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const css = getComputedStyle(document.documentElement);
    const fg = css.getPropertyValue("--muted").trim() || "#666";
    const grid = css.getPropertyValue("--border").trim() || "#ddd";
    const d = this.data;
    if (!d || !this.range) return;
    const [t0, t1] = this.range;
    const left = 64, right = 8, top = 6, bottom = 18;
    const pw = width - left - right, ph = height - top - bottom;
    const sums = d.times.map((_, i) => d.layers.reduce((a, l) => a + l.values[i], 0));
    const max = Math.max(...sums, 0);
    const ticks = niceTicks(max || 1);
    const ymax = ticks[ticks.length - 1];
    const xOf = (t) => left + ((t - t0) / Math.max(1, t1 - t0)) * pw;
    const yOf = (v) => top + ph - (v / ymax) * ph;
    this.geom = { left, pw, t0, t1, top, ph, yOf };
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = fg;
    ctx.strokeStyle = grid;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const v of ticks) {
      const y = Math.round(yOf(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + pw, y); ctx.stroke();
      ctx.fillText(v === 0 ? "0" : d.rate === "cores" ? fmtCores(v).replace(/ cores?$/, "") : String(v), left - 6, y);
    }
    ctx.save();
    ctx.translate(10, top + ph / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "center";
    ctx.fillText(d.rate, 0, 0);
    ctx.restore();
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let k = 0; k <= 4; k++) {
      const t = t0 + ((t1 - t0) * k) / 4;
      ctx.fillText(fmtClock(t, t1 - t0), Math.min(Math.max(xOf(t), left + 20), left + pw - 20), top + ph + 4);
    }
    // Stacked columns, one per bucket.
    const bw = Math.max(1, (d.step * 1000 / Math.max(1, t1 - t0)) * pw - 1);
    d.layers.forEach((l, li) => {
      ctx.fillStyle = layerColor(li, l.key);
      d.times.forEach((t, i) => {
        let below = 0;
        for (let k = 0; k < li; k++) below += d.layers[k].values[i];
        const v = l.values[i];
        if (!v) return;
        const x = xOf(t);
        if (x + bw < left || x > left + pw) return;
        ctx.fillRect(x, yOf(below + v), bw, yOf(below) - yOf(below + v));
      });
    });
    if (this.drag && Math.abs(this.drag.x1 - this.drag.x0) > 2) {
      ctx.fillStyle = "rgba(100, 140, 255, 0.25)";
      const a = Math.min(this.drag.x0, this.drag.x1), b = Math.max(this.drag.x0, this.drag.x1);
      ctx.fillRect(a, top, b - a, ph);
    }
  }

  xToTime(x) {
    const g = this.geom;
    return g.t0 + ((Math.min(Math.max(x, g.left), g.left + g.pw) - g.left) / g.pw) * (g.t1 - g.t0);
  }

  point(e) {
    const r = this.canvas.getBoundingClientRect();
    return { x: e.clientX - r.left, y: e.clientY - r.top };
  }

  down(e) {
    if (!this.geom || e.button !== 0) return;
    const p = this.point(e);
    this.drag = { x0: p.x, x1: p.x, y: p.y };
    e.preventDefault();
  }

  move(e) {
    if (!this.geom) return;
    const p = this.point(e);
    if (this.drag) {
      this.drag.x1 = p.x;
      this.draw();
      return;
    }
    if (e.target !== this.canvas) return;
    const hit = this.hit(p);
    if (!hit) { this.tooltip.hidden = true; return; }
    const d = this.data;
    const lines = d.layers.map((l) => [l.key, l.values[hit.i]]).filter(([, v]) => v > 0)
      .map(([k, v]) => `${k}: ${d.rate === "cores" ? fmtCores(v) : fmtValue(v, "")}`);
    this.tooltip.textContent = `${new Date(d.times[hit.i]).toLocaleString()}\n${lines.join("\n")}`;
    this.tooltip.hidden = false;
    this.tooltip.style.left = `${Math.min(p.x + 12, this.canvas.clientWidth - 200)}px`;
    this.tooltip.style.top = `${p.y + 12}px`;
  }

  up(e) {
    const drag = this.drag;
    if (!drag) return;
    this.drag = null;
    const p = this.point(e);
    if (Math.abs(p.x - drag.x0) > 3) {
      const a = this.xToTime(Math.min(drag.x0, p.x)), b = this.xToTime(Math.max(drag.x0, p.x));
      this.draw();
      this.onBrush(Math.floor(a / 1000), Math.ceil(b / 1000));
      return;
    }
    this.draw();
    const hit = this.hit(p);
    if (hit && hit.layer?.labels && Object.keys(hit.layer.labels).length) this.onSelect(hit.layer.labels);
  }

  /** The bucket and layer under a point. */
  hit(p) {
    const d = this.data, g = this.geom;
    if (!d || !g || p.x < g.left || p.x > g.left + g.pw) return null;
    const t = this.xToTime(p.x);
    const stepMs = d.step * 1000;
    const i = d.times.findIndex((x) => t >= x && t < x + stepMs);
    if (i < 0) return null;
    let acc = 0;
    for (const l of d.layers) {
      const y0 = g.yOf(acc), y1 = g.yOf(acc + l.values[i]);
      if (p.y <= y0 && p.y >= y1) return { i, layer: l };
      acc += l.values[i];
    }
    return { i, layer: null };
  }
}
