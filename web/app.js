// Kiln's web UI: wiring of the modules under js/ to the page. Native ES modules, no build step,
// no dependencies. What each module owns:
//   js/api.js        server requests, token, downloads      js/url-state.js  the view in the URL
//   js/tree.js       the call tree, top table, sandwich     js/transforms.js focus/hide/merge/…
//   js/layout.js     flame-graph geometry, hit-testing      js/draw.js       canvas painting
//   js/colors.js     frame kinds, packages, colours         js/diff.js       comparison colours, movers
//   js/chart.js      CPU over time                          js/table.js      top and movers tables
//   js/selector.js   selector parsing and completion        js/export.js     folded, SVG, JSON
//   js/keys.js       shortcuts                              js/format.js     numbers, times

import { getJson, getBinary, apiUrl, ApiError, saveFile, download, authToken, saveToken, setUnauthorizedHandler } from "./js/api.js";
import { parseState, serializeState, baseline, RANGE_PRESETS, DEFAULTS } from "./js/url-state.js";
import { decodeColumnar, normalizeDiff, zoomChain, markMatches, matchedTotal, topFunctions, sandwich } from "./js/tree.js";
import { applyTransforms, describe } from "./js/transforms.js";
import { layout, frameAt, framePath, ROW_H } from "./js/layout.js";
import { drawFlame } from "./js/draw.js";
import { frameColor, frameKind, packageOf, REASONS, kindColor } from "./js/colors.js";
import { shareChange, diffColor, movers } from "./js/diff.js";
import { Chart, stackSeries } from "./js/chart.js";
import { tableRows, TopTable, renderMovers } from "./js/table.js";
import { completionContext, applyCompletion, withMatcher, parseSelector } from "./js/selector.js";
import { toFolded, toSvg, toJson } from "./js/export.js";
import { SHORTCUTS, actionFor } from "./js/keys.js";
import { fmtValue, fmtPct, fmtPoints, normalizeTimeInput, resolveTime, fmtTime } from "./js/format.js";

const AUTO_REFRESH_MS = 10_000;
const WAIT_POLL_MS = 3_000;
const TOP_LIMIT = 500; // rows asked from the server (the filter searches them all)
const SPLIT_TOP_N = 5;

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- state

const S = parseState(location.search); // the view (mirrored in the URL)
const st = {
  data: null,         // normalized server answer (flame graph or diff)
  tree: null,         // data.root after the transforms
  layout: null,       // last flame-graph layout
  matcher: null,
  matches: [],        // paths of the outermost search matches
  matchIdx: -1,
  matchedTotal: 0,
  status: "idle",
  hover: -1,
  menuFrame: null,    // {name, path} of the frame the menu is for
  sort: { key: "self", dir: "desc" },
  inflight: null,
  loadSeq: 0,
  autoTimer: null,
  waitTimer: null,
  renderQueued: false,
  fullRender: false,  // a render other than a hover change is queued
  shownView: null,   // the view mode the page last showed
  sandwichOf: null,  // {tree, fn, callers, callees}: the last sandwich built
  labelNames: [],
  valueCache: new Map(),
  lastRenderMs: 0,
  flameWidth: 0,     // #flame-container's width, kept by a ResizeObserver
  graphRows: 0,      // the most rows the flame graph had since the tree or width changed
  urlQueued: false,  // a URL update waits for the next frame
};

function writeUrl() {
  // history.replaceState costs milliseconds (Chromium hands the entry to the browser process):
  // done once per burst of changes, after the frame that shows them, not inside a zoom's frame.
  if (st.urlQueued) return;
  st.urlQueued = true;
  requestAnimationFrame(() => setTimeout(() => {
    st.urlQueued = false;
    const url = `${location.pathname}?${serializeState(S)}${location.hash}`;
    if (url !== location.pathname + location.search + location.hash) history.replaceState(null, "", url);
  }, 0));
}

/** After a change of S: the URL, then a reload, a recompute (transforms, search) or a repaint. */
function commit({ reload = false, keepZoom = true, paintOnly = false } = {}) {
  if (!keepZoom) S.zoom = [];
  writeUrl();
  if (reload) load();
  else {
    if (!paintOnly) recompute();
    render();
  }
}

// ---------------------------------------------------------------- loading

function selParams(extra = {}) {
  return { query: S.query, from: S.from, until: S.until, profile_type: S.type, ...extra };
}

function isLive() {
  return String(S.until).trim() === "now";
}

async function load({ keepChoices = false } = {}) {
  st.inflight?.abort();
  clearTimeout(st.waitTimer);
  const ctl = new AbortController();
  st.inflight = ctl;
  const seq = ++st.loadSeq;
  syncControls();
  if (st.status !== "waiting") setStatus("loading", "Loading…");
  hideError();
  try {
    const choices = keepChoices ? null : loadChoices(ctl.signal);
    const maxNodes = S.maxNodes ? { max_nodes: S.maxNodes } : {};
    let fgUrl;
    if (S.compare) {
      const b = baseline(S);
      fgUrl = apiUrl("api/v1/diff", {
        left_query: b.query, left_from: b.from, left_until: b.until,
        right_query: S.query, right_from: S.from, right_until: S.until, profile_type: S.type, ...maxNodes,
      });
    } else {
      // One request: the flame graph and the top table come from the same merged tree.
      // Columnar: a names table and flat binary columns (a big graph's nested JSON cost more
      // to parse than to draw).
      fgUrl = apiUrl("api/v1/flamegraph", selParams({ top: TOP_LIMIT, format: "columnar", ...maxNodes }));
    }
    const seriesUrl = apiUrl("api/v1/series", selParams(S.split ? { group_by: S.split } : {}));
    const [fg, series] = await Promise.all([
      S.compare ? getJson(fgUrl, ctl.signal) : getBinary(fgUrl, ctl.signal),
      getJson(seriesUrl, ctl.signal).catch((e) => (e.name === "AbortError" ? Promise.reject(e) : null)),
    ]);
    await choices;
    if (seq !== st.loadSeq) return;
    const unit = S.type.split(":")[1] || "";
    st.data = S.compare ? normalizeDiff(fg, unit) : decodeColumnar(fg, unit);
    updateChart(series);
    if (st.data.root.total > 0) {
      setStatus("ok", "");
    } else if (isLive() && !S.compare) {
      // The agent ships a window every 10 s: keep asking until the first one arrives.
      setStatus("waiting", "Waiting for the first profiles of this selection — checking every 3 s…");
      st.waitTimer = setTimeout(() => load({ keepChoices: true }), WAIT_POLL_MS);
    } else {
      setStatus("empty", "No samples in this range: try a longer range or another selector.");
    }
    showTruncated(st.data.truncated);
    recompute();
    render();
  } catch (e) {
    if (e.name === "AbortError" || seq !== st.loadSeq) return;
    st.data = null;
    showError(e instanceof ApiError ? e.message : `unexpected error: ${e.message}`);
    setStatus("error", "query failed");
    showTruncated(0);
    recompute();
    render();
  } finally {
    if (st.inflight === ctl) st.inflight = null;
  }
}

async function loadChoices(signal) {
  // Helpers for the pickers: their failure must not hide the flame graph.
  const range = { from: S.from, until: S.until };
  const [types, names] = await Promise.all([
    getJson(apiUrl("api/v1/profile_types", { query: S.query, ...range }), signal).catch(() => null),
    getJson(apiUrl("api/v1/labels", range), signal).catch(() => null),
  ]);
  const typeList = [...(types?.profile_types ?? [])];
  if (!typeList.includes(DEFAULTS.type)) typeList.unshift(DEFAULTS.type);
  fillSelect($("profile-type"), typeList.map((t) => [t, t]), S.type);
  st.labelNames = (names?.names ?? []).filter((n) => n !== "__tenant__");
  st.valueCache.clear();
  fillSelect($("split"), [["", "(none)"], ...st.labelNames.map((n) => [n, n])], S.split);
}

function fillSelect(select, items, current) {
  const list = [...items];
  if (current && !list.some(([v]) => v === current)) list.unshift([current, current]);
  select.replaceChildren(...list.map(([v, t]) => new Option(t, v)));
  select.value = current;
}

async function labelValues(name) {
  if (st.valueCache.has(name)) return st.valueCache.get(name);
  const p = getJson(apiUrl(`api/v1/labels/${encodeURIComponent(name)}/values`, { from: S.from, until: S.until }))
    .then((r) => r.values ?? [])
    .catch(() => []);
  st.valueCache.set(name, p);
  return p;
}

// ---------------------------------------------------------------- derived view

function makeMatcher(text) {
  if (!text) return null;
  const m = /^\/(.*)\/$/.exec(text);
  try {
    const re = new RegExp(m ? m[1] : text, "i");
    return (name) => re.test(name);
  } catch {
    const needle = text.toLowerCase();
    return (name) => name.toLowerCase().includes(needle);
  }
}

/** Transforms, search marks and zoom resolution: everything between the data and the pixels. */
function recompute() {
  st.graphRows = 0;
  st.matcher = makeMatcher(S.search);
  if (!st.data) {
    st.tree = null;
    st.matches = [];
    st.matchedTotal = 0;
  } else {
    st.tree = applyTransforms(st.data.root, S.tf, !!st.data.diff);
    st.matches = markMatches(st.tree, st.matcher);
    st.matchedTotal = st.matcher ? matchedTotal(st.tree, st.matcher) : 0;
    const chain = zoomChain(st.tree, S.zoom);
    if (chain.length !== S.zoom.length + 1) S.zoom = chain.slice(1).map((n) => n.name);
  }
  renderSearchInfo();
  renderTransforms();
  renderTable();
}

// ---------------------------------------------------------------- rendering

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

let paletteCache = null;
function palette() {
  // getComputedStyle forces a style recalculation: read the theme's colours once per theme.
  if (paletteCache) return paletteCache;
  return (paletteCache = {
    match: cssVar("--match") || "#d63af9",
    dim: cssVar("--frame-dim") || "#e4e4e7",
    dimText: cssVar("--frame-dim-text") || "#6b6b73",
    collapsed: cssVar("--frame-collapsed") || "#d4d4d8",
    thin: cssVar("--frame-thin") || "#d8c3b4",
    fg: cssVar("--fg") || "#111",
    matchLegend: cssVar("--match") || "#d63af9",
  });
}

function frameStyle(pal) {
  const searching = !!st.matcher;
  const diff = st.data?.diff;
  // One style object per colour, not one per frame per paint (a big graph has tens of thousands).
  const collapsed = { fill: pal.collapsed, text: pal.fg };
  const hit = { fill: pal.match, text: "#ffffff" };
  const dim = { fill: pal.dim, text: pal.dimText };
  const byFill = new Map();
  const dark = (fill) => {
    let s = byFill.get(fill);
    if (!s) byFill.set(fill, (s = { fill, text: "#111111" }));
    return s;
  };
  return (f) => {
    const n = f.node;
    const isRoot = n === st.tree && !f.collapsed;
    if (f.collapsed) return collapsed;
    if (n.hit) return hit;
    if (searching && !isRoot) return dim;
    if (diff && !isRoot) return dark(diffColor(shareChange(n, diff), S.palette));
    return dark(frameColor(S.color, n.name, n.reason, isRoot));
  };
}

function frameLabel(l) {
  return (f) => {
    if (f.collapsed) return `↑ ${l.chain.slice(1, -1).map((n) => n.name).join(" › ") || "total"}`;
    if (f.node === st.tree) return rootLabel();
    return f.node.name;
  };
}

function rootLabel() {
  const d = st.data;
  if (d.diff) return `A ${fmtValue(d.diff.left, d.unit)} → B ${fmtValue(d.diff.right, d.unit)}`;
  return `total — ${fmtValue(st.tree.total, d.unit)}${d.profiles != null ? ` in ${d.profiles} profile${d.profiles === 1 ? "" : "s"}` : ""}`;
}

/**
 * Paints on the next frame. `hoverOnly`: only the hovered frame changed (the mouse moved), so the
 * last layout and its pixels are reused and only the outline moves; any other render in the same
 * frame makes it a full one.
 */
function render({ hoverOnly = false } = {}) {
  if (!hoverOnly) st.fullRender = true;
  if (st.renderQueued) return;
  st.renderQueued = true;
  requestAnimationFrame(() => {
    st.renderQueued = false;
    renderNow();
  });
}

function renderNow() {
  const t0 = performance.now();
  const full = st.fullRender;
  st.fullRender = false;
  if (!full && st.layout) {
    const pal = palette();
    drawFlame($("flamegraph"), st.layout, st.layout.width, {
      style: frameStyle(pal), label: frameLabel(st.layout), hover: st.hover, outline: pal.fg,
      thinFill: st.matcher ? pal.dim : pal.thin, reuse: true,
    });
    return;
  }
  if (st.shownView !== S.view) {
    // Only on a change of view: a zoom's frame has no time for a selector query.
    st.shownView = S.view;
    $("views").dataset.view = S.view;
    document.querySelectorAll(".seg button[data-view]").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.view === S.view)));
    $("sandwich-panel").hidden = S.view !== "sandwich";
  }
  const container = $("flame-container");
  // The width from the ResizeObserver: reading clientWidth here would force a style and layout
  // of the whole page (the table just rebuilt) in the middle of the frame.
  const width = Math.max(1, Math.floor(st.flameWidth || container.clientWidth));
  const pal = palette();
  const tree = st.tree;
  // Icicle zooms keep the graph's height (minRows, empty rows at the bottom): a shorter graph
  // would move everything below it, a relayout and repaint of the page on every click. Not in the
  // flame orientation: its zoomed frame is at the bottom, and a shrinking graph keeps it in view.
  const minRows = S.orient === "flame" ? 0 : st.graphRows;
  st.layout = layout(tree && tree.total > 0 ? tree : null, S.zoom, width, { orient: S.orient, minRows });
  st.graphRows = st.layout.rows;
  drawFlame($("flamegraph"), st.layout, width, {
    style: frameStyle(pal), label: frameLabel(st.layout), hover: st.hover, outline: pal.fg,
    thinFill: st.matcher ? pal.dim : pal.thin,
  });
  if (S.view === "sandwich") renderSandwich(pal);
  container.dataset.placeholder = st.layout.frames.length ? "" : ({
    loading: "Loading…",
    waiting: "Waiting for data…",
    empty: "No samples in this range.",
    error: "No flame graph: see the error above.",
  }[st.status] ?? "");
  renderBreadcrumbs();
  renderSummary();
  renderLegend();
  st.lastRenderMs = performance.now() - t0;
  performance.measure?.("kiln:render", { start: t0, end: t0 + st.lastRenderMs });
}

function renderSandwich(pal) {
  $("sandwich-name").textContent = S.fn;
  if (!st.tree) return;
  // Built once per tree and function (a big tree takes ~100 ms), not on every paint: a zoom or
  // a theme change repaints the view from the same trees.
  const key = st.sandwichOf;
  if (!key || key.tree !== st.tree || key.fn !== S.fn) st.sandwichOf = { tree: st.tree, fn: S.fn, ...sandwich(st.tree, S.fn, !!st.data?.diff) };
  const { callers, callees } = st.sandwichOf;
  const style = frameStyle(pal);
  const top = { fill: pal.match, text: "#fff" };
  for (const [id, tree, orient] of [["sandwich-callers", callers, "flame"], ["sandwich-callees", callees, "icicle"]]) {
    const canvas = $(id);
    const width = Math.max(1, Math.floor(canvas.parentElement.clientWidth));
    const l = layout(tree.total > 0 ? tree : null, [], width, { orient });
    canvas._layout = l;
    drawFlame(canvas, l, width, {
      style: (f) => (f.depth === 0 ? top : style(f)),
      label: (f) => f.node.name, outline: pal.fg, thinFill: pal.thin,
    });
  }
}

function renderBreadcrumbs() {
  const bc = $("breadcrumbs");
  bc.replaceChildren();
  if (!st.tree || st.tree.total <= 0) return;
  const chain = zoomChain(st.tree, S.zoom);
  chain.forEach((n, i) => {
    if (i > 0) {
      const sep = document.createElement("span");
      sep.className = "sep";
      sep.textContent = "›";
      bc.append(sep);
    }
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = i === 0 ? "all" : n.name;
    b.title = i === 0 ? "Reset zoom (Esc)" : n.name;
    if (i === chain.length - 1) b.setAttribute("aria-current", "true");
    b.addEventListener("click", () => zoomTo(chain.slice(1, i + 1).map((x) => x.name)));
    bc.append(b);
  });
}

function renderSummary() {
  const d = st.data;
  const out = $("summary");
  if (!d || !st.tree || st.tree.total <= 0) {
    out.textContent = "";
    return;
  }
  const parts = [S.type];
  if (d.diff) parts.push(`A ${fmtValue(d.diff.left, d.unit)} → B ${fmtValue(d.diff.right, d.unit)}`);
  else parts.push(`total ${fmtValue(st.tree.total, d.unit)}`);
  const secs = rangeSeconds();
  if (!d.diff && d.unit === "nanoseconds" && secs > 0) parts.push(`≈ ${(st.tree.total / 1e9 / secs).toFixed(3)} cores avg`);
  if (S.zoom.length) {
    const z = zoomChain(st.tree, S.zoom).at(-1);
    parts.push(`zoomed: ${fmtPct((100 * z.total) / st.tree.total)} of total`);
  }
  out.textContent = parts.join(" · ");
}

let legendKey = "";
function renderLegend() {
  const key = `${!!st.data?.diff}|${S.palette}|${S.color}`;
  if (key === legendKey) return;
  legendKey = key;
  const lg = $("legend");
  const items = st.data?.diff
    ? [[diffColor(10, S.palette), "share grew"], [diffColor(-10, S.palette), "share shrank"], [diffColor(0), "unchanged"]]
    : S.color === "kind"
      ? [[kindColor("f", null), "user"], [kindColor("f [k]", null), "kernel [k]"], [kindColor("runtime.x", null), "runtime"], [kindColor("0x1", null), "unsymbolized"]]
      : [["linear-gradient(90deg, hsl(20 60% 65%), hsl(140 60% 65%), hsl(260 60% 65%))", "one hue per package / binary"]];
  items.push([palette().matchLegend, "search match"], [palette().thin, "frames under 1 px"]);
  lg.replaceChildren(...items.flatMap(([c, t]) => {
    const i = document.createElement("i");
    i.className = "sw";
    i.style.background = c;
    return [i, document.createTextNode(t + " ")];
  }));
}

function rangeSeconds() {
  const now = Date.now();
  const a = resolveTime(S.from, now), b = resolveTime(S.until, now);
  return a != null && b != null && b > a ? (b - a) / 1000 : 0;
}

// ---------------------------------------------------------------- status, errors

function setStatus(state, text) {
  st.status = state;
  $("status").dataset.state = state;
  $("status").textContent = text;
  document.body.dataset.state = state;
}
function showError(msg) {
  $("error").textContent = `Error: ${msg}`;
  $("error").hidden = false;
}
function hideError() {
  $("error").hidden = true;
  $("error").textContent = "";
}
function showTruncated(n) {
  const el = $("truncated-note");
  el.hidden = !(n > 0);
  if (n > 0) el.textContent = `Note: ${n.toLocaleString("en-US")} small nodes were folded into "(other)" frames by the server to keep the graph manageable. Narrow the selection or zoom for more detail.`;
}

// ---------------------------------------------------------------- chart

const chart = new Chart({
  canvas: $("chart"), legend: $("chart-legend"), tooltip: $("chart-tooltip"),
  onBrush: (from, until) => {
    S.from = String(from);
    S.until = String(until);
    commit({ reload: true });
  },
  onSelect: (labels) => {
    let q = S.query;
    for (const [k, v] of Object.entries(labels)) q = withMatcher(q, k, v);
    S.query = q;
    if (S.split && labels[S.split] !== undefined) S.split = "";
    commit({ reload: true, keepZoom: false });
  },
});

function updateChart(series) {
  const now = Date.now();
  const from = resolveTime(S.from, now) ?? now - 3600e3;
  const until = resolveTime(S.until, now) ?? now;
  st.series = series ? stackSeries(series, SPLIT_TOP_N) : null;
  chart.set(st.series, from, until);
}

// ---------------------------------------------------------------- controls

function syncControls() {
  const q = $("query");
  if (document.activeElement !== q) q.value = S.query;
  const preset = RANGE_PRESETS.find(([f]) => f === S.from && S.until === "now");
  $("range").value = preset ? preset[0] : "custom";
  $("from").value = S.from;
  $("until").value = S.until;
  $("auto-refresh").checked = S.auto;
  if ($("search").value !== S.search) $("search").value = S.search;
  $("orient").textContent = S.orient === "flame" ? "⇅ flame" : "⇅ icicle";
  $("color-by").value = S.color;
  $("compare-on").checked = S.compare;
  $("compare-panel").hidden = !S.compare;
  $("cmp-query").value = S.cmpQuery;
  $("cmp-from").value = S.cmpFrom;
  $("cmp-until").value = S.cmpUntil;
  $("palette").value = S.palette;
  $("cur-desc").textContent = `${S.query} · ${fmtTime(S.from)} → ${fmtTime(S.until)} (edit above)`;
  $("split").value = S.split;
  $("download-pprof").href = apiUrl("api/v1/pprof", selParams());
}

$("range").replaceChildren(...RANGE_PRESETS.map(([v, t]) => new Option(t, v)), new Option("Custom", "custom"));
$("range").addEventListener("change", () => {
  const v = $("range").value;
  if (v === "custom") {
    // Start from the absolute times of what was shown.
    const now = Date.now();
    S.from = String(Math.floor((resolveTime(S.from, now) ?? now - 3600e3) / 1000));
    S.until = String(Math.floor((resolveTime(S.until, now) ?? now) / 1000));
  } else {
    S.from = v;
    S.until = "now";
  }
  commit({ reload: true });
});
for (const [id, key] of [["from", "from"], ["until", "until"], ["cmp-from", "cmpFrom"], ["cmp-until", "cmpUntil"]]) {
  const el = $(id);
  el.addEventListener("change", () => {
    const raw = el.value.trim();
    if (!raw && key.startsWith("cmp")) {
      S[key] = "";
      return commit({ reload: true });
    }
    const v = normalizeTimeInput(raw);
    el.classList.toggle("invalid", v == null);
    if (v == null) return showError(`cannot read the time ${JSON.stringify(raw)}: use now-2h, a date like 2026-12-03 07:00, or Unix time`);
    S[key] = v;
    commit({ reload: true });
  });
}
$("profile-type").addEventListener("change", () => {
  S.type = $("profile-type").value;
  commit({ reload: true, keepZoom: false });
});
$("split").addEventListener("change", () => {
  S.split = $("split").value;
  commit({ reload: true });
});
$("refresh").addEventListener("click", () => load());
$("auto-refresh").addEventListener("change", () => {
  S.auto = $("auto-refresh").checked;
  commit();
  scheduleAuto();
});
function scheduleAuto() {
  clearInterval(st.autoTimer);
  st.autoTimer = S.auto ? setInterval(() => {
    if (!document.hidden && !st.inflight) load({ keepChoices: true });
  }, AUTO_REFRESH_MS) : null;
}
$("orient").addEventListener("click", () => act("flip"));
$("color-by").addEventListener("change", () => {
  S.color = $("color-by").value;
  commit();
});
$("compare-on").addEventListener("change", () => {
  S.compare = $("compare-on").checked;
  commit({ reload: true, keepZoom: false });
});
$("cmp-query").addEventListener("change", () => {
  S.cmpQuery = $("cmp-query").value.trim();
  commit({ reload: true });
});
$("palette").addEventListener("change", () => {
  S.palette = $("palette").value;
  commit();
});
document.querySelectorAll(".seg button[data-view]").forEach((b) => b.addEventListener("click", () => setView(b.dataset.view)));

function setView(view) {
  if (view === "sandwich") {
    const fn = S.fn || focusName();
    if (!fn) return;
    S.fn = fn;
  }
  S.view = view;
  commit();
}

// ---------------------------------------------------------------- selector editor

const query = $("query");
const suggest = $("query-suggest");
let sugg = { items: [], idx: -1, ctx: null };

async function updateSuggestions() {
  const pos = query.selectionStart ?? query.value.length;
  const text = query.value;
  const ctx = completionContext(text, pos);
  let items = [];
  if (ctx?.kind === "name") items = st.labelNames.filter((n) => n.startsWith(ctx.prefix));
  else if (ctx?.kind === "op") items = ["=", "!=", "=~", "!~"];
  else if (ctx?.kind === "value") {
    const values = await labelValues(ctx.name);
    if (query.value !== text) return; // typed on meanwhile
    items = values.filter((v) => v.toLowerCase().includes(ctx.prefix.toLowerCase()));
  }
  sugg = { items: items.slice(0, 50), idx: items.length ? 0 : -1, ctx };
  drawSuggestions();
}

function drawSuggestions() {
  suggest.replaceChildren(...sugg.items.map((it, i) => {
    const li = document.createElement("li");
    li.role = "option";
    li.textContent = it;
    li.dataset.value = it;
    li.setAttribute("aria-selected", String(i === sugg.idx));
    li.addEventListener("mousedown", (e) => {
      e.preventDefault();
      pick(i);
    });
    return li;
  }));
  const open = sugg.items.length > 0 && document.activeElement === query;
  suggest.hidden = !open;
  query.setAttribute("aria-expanded", String(open));
}

function pick(i) {
  const { text, pos } = applyCompletion(query.value, query.selectionStart ?? query.value.length, sugg.ctx, sugg.items[i]);
  query.value = text;
  query.setSelectionRange(pos, pos);
  updateSuggestions();
}

query.addEventListener("input", updateSuggestions);
query.addEventListener("focus", updateSuggestions);
query.addEventListener("click", updateSuggestions);
query.addEventListener("blur", () => { suggest.hidden = true; });
query.addEventListener("keydown", (e) => {
  const open = !suggest.hidden && sugg.items.length;
  if (open && (e.key === "ArrowDown" || e.key === "ArrowUp")) {
    e.preventDefault();
    sugg.idx = (sugg.idx + (e.key === "ArrowDown" ? 1 : -1) + sugg.items.length) % sugg.items.length;
    drawSuggestions();
  } else if (open && e.key === "Tab") {
    e.preventDefault();
    pick(Math.max(0, sugg.idx));
  } else if (e.key === "Escape") {
    suggest.hidden = true;
  } else if (e.key === "Enter") {
    e.preventDefault();
    if (open && sugg.idx >= 0 && sugg.ctx?.kind !== "op" && !/}\s*$/.test(query.value.slice(0, query.selectionStart))) {
      pick(sugg.idx);
      return;
    }
    applyQuery();
  }
});

function applyQuery() {
  const q = query.value.trim() || "{}";
  try {
    parseSelector(q);
    query.classList.remove("invalid");
  } catch {
    // Sent anyway: the server's message says what is wrong.
    query.classList.add("invalid");
  }
  suggest.hidden = true;
  S.query = q;
  commit({ reload: true, keepZoom: false });
}

// ---------------------------------------------------------------- search

let searchDebounce = null;
$("search").addEventListener("input", () => {
  clearTimeout(searchDebounce);
  searchDebounce = setTimeout(() => setSearch($("search").value), 150);
});
$("search").addEventListener("keydown", (e) => {
  if (e.key === "Enter") {
    e.preventDefault();
    setSearch($("search").value);
    act(e.shiftKey ? "prevMatch" : "nextMatch");
  } else if (e.key === "Escape") {
    e.stopPropagation();
    $("search").value = "";
    setSearch("");
    $("search").blur();
  }
});
$("search-next").addEventListener("click", () => act("nextMatch"));
$("search-prev").addEventListener("click", () => act("prevMatch"));

function setSearch(text) {
  clearTimeout(searchDebounce);
  if ($("search").value !== text) $("search").value = text;
  if (S.search === text) return;
  S.search = text;
  st.matchIdx = -1;
  commit();
}

function renderSearchInfo() {
  const out = $("search-match");
  if (!st.matcher || !st.tree) {
    out.textContent = st.matcher ? "no data" : "";
    out.classList.remove("active");
    out.dataset.percent = "";
    out.dataset.count = "";
    return;
  }
  const total = st.tree.total;
  const pct = total > 0 ? (100 * st.matchedTotal) / total : 0;
  out.dataset.percent = pct.toFixed(2);
  out.dataset.count = String(st.matches.length);
  out.classList.toggle("active", st.matchedTotal > 0);
  out.textContent = st.matchedTotal > 0
    ? `${st.matches.length} match${st.matches.length === 1 ? "" : "es"}${st.matchIdx >= 0 ? ` (#${st.matchIdx + 1})` : ""} · ${fmtPct(pct)} of total (${fmtValue(st.matchedTotal, st.data.unit)})`
    : "no frame matches";
}

// ---------------------------------------------------------------- zoom and transforms

function zoomTo(path) {
  S.zoom = path;
  hideTooltip();
  // Zooming changes neither the tree nor the table: lay out and paint only.
  commit({ paintOnly: true });
}

function addTransform(kind, arg = "") {
  if (kind === "invert" && S.tf.some((t) => t.kind === "invert")) {
    // Invert is a toggle.
    S.tf = S.tf.filter((t) => t.kind !== "invert");
  } else if (S.tf.some((t) => t.kind === kind && t.arg === arg)) {
    return;
  } else S.tf = [...S.tf, { kind, arg }];
  commit({ keepZoom: false });
}

function renderTransforms() {
  const list = $("tf-list");
  list.replaceChildren(...S.tf.map((t, i) => {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.dataset.kind = t.kind;
    chip.textContent = describe(t);
    const x = document.createElement("button");
    x.type = "button";
    x.title = "Remove this transform";
    x.textContent = "×";
    x.addEventListener("click", () => {
      S.tf = S.tf.filter((_, k) => k !== i);
      commit({ keepZoom: false });
    });
    chip.append(x);
    return chip;
  }));
  if (!S.tf.length) list.textContent = "none";
  $("tf-undo").disabled = !S.tf.length;
  $("tf-invert").setAttribute("aria-pressed", String(S.tf.some((t) => t.kind === "invert")));
}

$("hide-input").addEventListener("keydown", (e) => {
  if (e.key !== "Enter") return;
  e.preventDefault();
  const re = $("hide-input").value.trim();
  if (!re) return;
  try {
    new RegExp(re);
  } catch (err) {
    return showError(`not a regex: ${err.message}`);
  }
  $("hide-input").value = "";
  addTransform("hide", re);
});
$("tf-rec-all").addEventListener("click", () => addTransform("rec", ""));
$("tf-invert").addEventListener("click", () => act("invert"));
$("tf-undo").addEventListener("click", () => act("undo"));

// ---------------------------------------------------------------- mouse on the flame graph

function canvasPoint(canvas, e) {
  const r = canvas.getBoundingClientRect();
  return { x: e.clientX - r.left, y: e.clientY - r.top };
}

const flame = $("flamegraph");
flame.addEventListener("mousemove", (e) => {
  if (!st.layout) return;
  const p = canvasPoint(flame, e);
  const i = frameAt(st.layout, p.x, p.y);
  if (i < 0) return hideTooltip();
  showTooltip(st.layout.frames[i], e);
  if (i !== st.hover) {
    st.hover = i;
    render({ hoverOnly: true });
  }
});
flame.addEventListener("mouseleave", hideTooltip);
flame.addEventListener("click", (e) => {
  hideMenu();
  const i = frameAt(st.layout, ...Object.values(canvasPoint(flame, e)));
  if (i >= 0) zoomTo(framePath(st.layout, i));
});
flame.addEventListener("contextmenu", (e) => {
  const i = frameAt(st.layout, ...Object.values(canvasPoint(flame, e)));
  if (i < 0) return;
  const f = st.layout.frames[i];
  if (f.collapsed || f.node === st.tree) return;
  e.preventDefault();
  openMenu(f.node.name, framePath(st.layout, i), e);
});
for (const id of ["sandwich-callers", "sandwich-callees"]) {
  const c = $(id);
  c.addEventListener("mousemove", (e) => {
    const p = canvasPoint(c, e);
    const i = c._layout ? frameAt(c._layout, p.x, p.y) : -1;
    if (i < 0) return hideTooltip();
    showTooltip(c._layout.frames[i], e, c._layout.chain[0]);
  });
  c.addEventListener("mouseleave", hideTooltip);
  c.addEventListener("click", (e) => {
    const p = canvasPoint(c, e);
    const i = c._layout ? frameAt(c._layout, p.x, p.y) : -1;
    if (i > 0) {
      S.fn = c._layout.frames[i].node.name;
      commit();
    }
  });
}

function showTooltip(f, e, rootOverride) {
  const d = st.data;
  const t = $("tooltip");
  const n = f.node;
  const root = rootOverride ?? st.tree;
  const isRoot = n === st.tree && !f.collapsed;
  const rows = [];
  if (f.collapsed) {
    rows.push(["Ancestors", zoomChain(st.tree, S.zoom).slice(1, -1).map((x) => x.name).join(" › ") || "(root)"], ["", "click to zoom out one level"]);
  } else if (d.diff) {
    const share = (v, tot) => (tot > 0 ? ` (${fmtPct((100 * v) / tot)})` : "");
    rows.push(
      ["A (baseline)", `${fmtValue(n.lt, d.unit)}${share(n.lt, d.diff.left)}`],
      ["B (current)", `${fmtValue(n.rt, d.unit)}${share(n.rt, d.diff.right)}`],
      ["Self A → B", `${fmtValue(n.ls, d.unit)} → ${fmtValue(n.rs, d.unit)}`],
      ["Share change", fmtPoints(shareChange(n, d.diff))],
    );
  } else {
    const secs = rangeSeconds();
    rows.push(
      ["Total", fmtValue(n.total, d.unit)],
      ["Self", fmtValue(n.self, d.unit)],
      ["% of total", fmtPct(root.total > 0 ? (100 * n.total) / root.total : 0)],
    );
    if (S.zoom.length && !rootOverride) {
      const z = zoomChain(st.tree, S.zoom).at(-1);
      rows.push(["% of zoomed", fmtPct(z.total > 0 ? (100 * n.total) / z.total : 0)]);
    }
    if (d.unit === "nanoseconds" && secs > 0) rows.push(["CPU", `${(n.total / 1e9 / secs).toFixed(3)} cores on average`]);
  }
  if (!isRoot && !f.collapsed) {
    const kind = frameKind(n.name, n.reason);
    rows.push(["Kind", { unsym: "unsymbolized", other: "folded small frames" }[kind] ?? kind]);
    rows.push(["Package", packageOf(n.name)]);
    if (n.reason) rows.push(["Why no name", REASONS[n.reason] || n.reason]);
  }
  const name = document.createElement("div");
  name.className = "tt-name";
  name.textContent = f.collapsed ? "(ancestors)" : isRoot ? "total (all stacks)" : n.name;
  const table = document.createElement("table");
  for (const [k, v] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = v;
  }
  t.replaceChildren(name, table);
  t.hidden = false;
  t.dataset.name = n.name;
  const tw = t.offsetWidth, th = t.offsetHeight;
  let left = e.clientX + 14, top = e.clientY + 16;
  if (left + tw > window.innerWidth - 4) left = Math.max(4, e.clientX - tw - 14);
  if (top + th > window.innerHeight - 4) top = Math.max(4, e.clientY - th - 12);
  t.style.left = `${left}px`;
  t.style.top = `${top}px`;
}

function hideTooltip() {
  $("tooltip").hidden = true;
  if (st.hover !== -1) {
    st.hover = -1;
    render({ hoverOnly: true });
  }
}

// ---------------------------------------------------------------- frame menu

function openMenu(name, path, e) {
  st.menuFrame = { name, path };
  const m = $("frame-menu");
  $("frame-menu-title").textContent = name;
  m.querySelector('[data-act="lib"]').textContent = `Collapse library ${packageOf(name)}`;
  m.hidden = false;
  m.style.left = `${Math.min(e.clientX, window.innerWidth - m.offsetWidth - 4)}px`;
  m.style.top = `${Math.min(e.clientY, window.innerHeight - m.offsetHeight - 4)}px`;
  hideTooltip();
  m.querySelector("button").focus();
}
function hideMenu() {
  $("frame-menu").hidden = true;
}
$("frame-menu").addEventListener("click", (e) => {
  const b = e.target.closest("button[data-act]");
  if (!b || !st.menuFrame) return;
  const { name, path } = st.menuFrame;
  hideMenu();
  const esc = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  switch (b.dataset.act) {
    case "zoom": return zoomTo(path);
    case "focus": return addTransform("focus", name);
    case "hide": return addTransform("hide", `^${esc}$`);
    case "merge": return addTransform("merge", name);
    case "rec": return addTransform("rec", name);
    case "lib": return addTransform("lib", packageOf(name));
    case "sandwich":
      S.fn = name;
      return setView("sandwich");
    case "search": return setSearch(`^${esc}$`);
    case "copy": return navigator.clipboard?.writeText(name).catch(() => {});
  }
});
document.addEventListener("mousedown", (e) => {
  if (!$("frame-menu").hidden && !e.target.closest("#frame-menu")) hideMenu();
});

// ---------------------------------------------------------------- tables

for (const th of document.querySelectorAll("#top-table th[data-key]")) {
  th.querySelector("button").addEventListener("click", () => {
    const key = th.dataset.key;
    if (st.sort.key === key) st.sort.dir = st.sort.dir === "desc" ? "asc" : "desc";
    else st.sort = { key, dir: key === "name" ? "asc" : "desc" };
    renderTable();
  });
}
$("table-filter").addEventListener("input", () => renderTable());

function exactRegex(name) {
  return "^" + name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") + "$";
}

const topTable = new TopTable($("top-table").tBodies[0], $("top-table").closest(".table-wrap"));

function renderTable() {
  for (const th of document.querySelectorAll("#top-table th[data-key]")) {
    th.setAttribute("aria-sort", th.dataset.key === st.sort.key ? (st.sort.dir === "asc" ? "ascending" : "descending") : "none");
  }
  const d = st.data;
  const diff = !!d?.diff;
  $("movers").hidden = !diff;
  $("top-table").hidden = diff;
  $("table-title").textContent = diff ? "Comparison" : "Top functions";
  if (!d || !st.tree) {
    topTable.set([], { empty: st.status === "error" ? "—" : "no functions" });
    return;
  }
  if (diff) {
    renderMovers($("movers-table").tBodies[0], movers(st.tree, d.diff, 100).filter((r) => !st.matcher || st.matcher(r.name)), { unit: d.unit, palette: S.palette });
    return;
  }
  // The server's table (whole tree, before the node budget) unless transforms changed the tree.
  const fromServer = !S.tf.length && d.top;
  const fns = fromServer ? d.top.map((f) => ({ name: f.name, self: Number(f.self) || 0, total: Number(f.total) || 0, reason: f.reason })) : topFunctions(st.tree);
  const rows = tableRows(fns, st.tree.total, { filter: $("table-filter").value, matcher: st.matcher, sort: st.sort });
  const selected = fns.find((f) => S.search === exactRegex(f.name))?.name;
  topTable.set(rows, { unit: d.unit, selected, empty: st.matcher ? "no function matches the search" : "no functions" });
  $("table-note").textContent = `${rows.length}${rows.length !== fns.length ? ` of ${fns.length}` : ""} functions${st.matcher ? " (filtered by the search)" : ""}${fromServer ? "" : " · after transforms"}`;
}

$("top-table").tBodies[0].addEventListener("click", (e) => {
  const tr = e.target.closest("tr[data-name]");
  if (!tr) return;
  if (e.target.closest("[data-action=sandwich]")) {
    S.fn = tr.dataset.name;
    return setView("sandwich");
  }
  const q = exactRegex(tr.dataset.name);
  setSearch(S.search === q ? "" : q);
});
$("top-table").tBodies[0].addEventListener("dblclick", (e) => {
  const tr = e.target.closest("tr[data-name]");
  if (!tr) return;
  S.fn = tr.dataset.name;
  setView("sandwich");
});
$("top-table").tBodies[0].addEventListener("keydown", (e) => {
  const tr = e.target.closest("tr[data-name]");
  if (tr && (e.key === "Enter" || e.key === " ")) {
    e.preventDefault();
    setSearch(exactRegex(tr.dataset.name));
  }
});

// ---------------------------------------------------------------- exports

function exportName(ext) {
  const fn = (S.query.match(/"([^"]+)"/)?.[1] ?? "all").replace(/[^A-Za-z0-9_.-]+/g, "_");
  return `kiln-${fn}.${ext}`;
}
$("export-folded").addEventListener("click", () => {
  if (st.tree) saveFile(toFolded(st.tree, !!st.data?.diff), exportName("folded.txt"), "text/plain");
});
$("export-svg").addEventListener("click", () => {
  if (!st.layout?.frames.length) return;
  const pal = { ...palette(), collapsed: "#cfd3da", dim: "#e6e6ea", dimText: "#74747c", fg: "#111111" };
  const style = frameStyle(pal);
  const width = st.layout.frames[0].w;
  const d = st.data;
  saveFile(toSvg(st.layout, width, {
    color: (f) => style(f).fill,
    label: frameLabel(st.layout),
    title: (f) => `${f.node.name} — total ${fmtValue(f.node.total, d.unit)}, self ${fmtValue(f.node.self, d.unit)}`,
  }), exportName("svg"), "image/svg+xml");
});
$("export-json").addEventListener("click", () => {
  if (!st.tree) return;
  saveFile(toJson({ state: { ...S }, url: location.href, unit: st.data.unit, profile_type: S.type }, st.tree), exportName("json"), "application/json");
});
$("download-pprof").addEventListener("click", async (e) => {
  if (!authToken()) return; // no token: the link downloads by itself
  e.preventDefault();
  try {
    await download($("download-pprof").getAttribute("href"), "kiln.pb.gz");
  } catch (err) {
    showError(err.message);
  }
});

// ---------------------------------------------------------------- keyboard

function focusName() {
  if (st.hover >= 0 && st.layout?.frames[st.hover] && !st.layout.frames[st.hover].collapsed && st.layout.frames[st.hover].node !== st.tree) {
    return st.layout.frames[st.hover].node.name;
  }
  return S.zoom.at(-1) ?? "";
}

function act(action) {
  switch (action) {
    case "focusSearch": $("search").focus(); $("search").select(); return true;
    case "nextMatch":
    case "prevMatch": {
      if (!st.matches.length) return true;
      const n = st.matches.length;
      st.matchIdx = action === "nextMatch" ? (st.matchIdx + 1) % n : (st.matchIdx - 1 + n) % n;
      zoomTo(st.matches[st.matchIdx]);
      renderSearchInfo();
      return true;
    }
    case "zoomOut": if (S.zoom.length) zoomTo(S.zoom.slice(0, -1)); return true;
    case "reset":
      hideMenu();
      if (S.zoom.length) zoomTo([]);
      return true;
    case "viewBoth": setView("both"); return true;
    case "viewGraph": setView("graph"); return true;
    case "viewTable": setView("table"); return true;
    case "viewSandwich": {
      const fn = focusName();
      if (fn) S.fn = fn;
      setView("sandwich");
      return true;
    }
    case "invert": addTransform("invert"); return true;
    case "flip":
      S.orient = S.orient === "flame" ? "icicle" : "flame";
      commit();
      return true;
    case "focusFn": { const fn = focusName(); if (fn) addTransform("focus", fn); return true; }
    case "mergeFn": { const fn = focusName(); if (fn) addTransform("merge", fn); return true; }
    case "recFn": { const fn = focusName(); if (fn) addTransform("rec", fn); return true; }
    case "libFn": { const fn = focusName(); if (fn) addTransform("lib", packageOf(fn)); return true; }
    case "undo":
      if (S.tf.length) {
        S.tf = S.tf.slice(0, -1);
        commit({ keepZoom: false });
      }
      return true;
    case "compare":
      S.compare = !S.compare;
      commit({ reload: true, keepZoom: false });
      return true;
    case "theme": cycleTheme(); return true;
    case "help": toggleHelp(); return true;
  }
  return false;
}

document.addEventListener("keydown", (e) => {
  const t = e.target;
  const inField = t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement;
  if (e.key === "Escape" && !$("frame-menu").hidden) return hideMenu();
  if ($("help-dialog").open && e.key === "?") {
    e.preventDefault();
    return $("help-dialog").close();
  }
  if ($("help-dialog").open || $("auth-dialog").open) return;
  // Enter on a focused button or table row is theirs.
  if (e.key === "Enter" && (t instanceof HTMLButtonElement || t.closest?.("tr[data-name]") || t instanceof HTMLAnchorElement)) return;
  const a = actionFor(e, inField);
  if (a && act(a)) e.preventDefault();
});

const helpTable = $("help-table");
for (const s of SHORTCUTS) {
  const tr = helpTable.insertRow();
  const k = tr.insertCell();
  k.append(...s.keys.flatMap((key, i) => {
    const kbd = document.createElement("kbd");
    kbd.textContent = key === " " ? "Space" : key;
    return i ? [document.createTextNode(" "), kbd] : [kbd];
  }));
  tr.insertCell().textContent = s.help;
}
function toggleHelp() {
  const d = $("help-dialog");
  if (d.open) d.close();
  else d.showModal();
}
$("help-button").addEventListener("click", toggleHelp);

// ---------------------------------------------------------------- theme

const THEMES = ["system", "light", "dark"];
function currentTheme() {
  return document.documentElement.dataset.theme || "system";
}
function setTheme(t) {
  if (t === "system") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = t;
  try {
    if (t === "system") localStorage.removeItem("kiln.theme");
    else localStorage.setItem("kiln.theme", t);
  } catch { /* storage disabled */ }
  $("theme-name").textContent = t;
  paletteCache = null;
  legendKey = "";
  render();
  chart.draw();
}
function cycleTheme() {
  setTheme(THEMES[(THEMES.indexOf(currentTheme()) + 1) % THEMES.length]);
}
$("theme-toggle").addEventListener("click", cycleTheme);
$("theme-name").textContent = currentTheme();
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
  paletteCache = null;
  render();
  chart.draw();
});

// ---------------------------------------------------------------- auth

setUnauthorizedHandler((msg) => {
  $("auth-message").textContent = authToken() ? `The server refused the token: ${msg}` : "This Kiln server requires a token.";
  if (!$("auth-dialog").open) {
    $("auth-dialog").showModal();
    $("auth-token").focus();
  }
});
$("auth-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("auth-token").value.trim();
  if (!token) return;
  saveToken(token, $("auth-remember").checked);
  $("auth-token").value = "";
  $("auth-dialog").close();
  load();
});

// ---------------------------------------------------------------- test hooks

window.kiln = {
  /** Laid-out rectangles of the last render, canvas-relative CSS px. */
  frames: () => (st.layout?.frames ?? []).map((f) => ({
    name: f.collapsed ? "(ancestors)" : f.node.name, x: f.x, y: f.y, w: f.w, h: ROW_H, total: f.node.total,
    self: f.node.self, depth: f.depth, collapsed: f.collapsed, highlighted: !!f.node.hit && !f.collapsed,
    ...(f.node.reason ? { reason: f.node.reason } : {}),
    ...(st.data?.diff ? { diff: { leftTotal: f.node.lt, leftSelf: f.node.ls, rightTotal: f.node.rt, rightSelf: f.node.rs } } : {}),
  })),
  /** Frames of the sandwich's callers (`which` = "callers") or callees canvas. */
  sandwichFrames: (which) => ($(`sandwich-${which}`)._layout?.frames ?? []).map((f) => ({ name: f.node.name, x: f.x, y: f.y, w: f.w, depth: f.depth, total: f.node.total })),
  status: () => st.status,
  zoomPath: () => [...S.zoom],
  state: () => JSON.parse(JSON.stringify(S)),
  selection: () => ({ ...S, selector: S.query }),
  matchedPercent: () => (st.tree && st.tree.total > 0 ? (100 * st.matchedTotal) / st.tree.total : 0),
  series: () => st.series,
  chartGeometry: () => chart.geom && { left: chart.geom.left, width: chart.geom.pw, top: chart.geom.top, height: chart.geom.ph },
  lastRenderMs: () => st.lastRenderMs,
  reload: () => load(),
  /** Resolves once no load is running, the last render has been painted and the URL written. */
  idle: async () => {
    while (st.inflight || st.renderQueued || st.urlQueued) await new Promise((r) => setTimeout(r, 10));
  },
};

// ---------------------------------------------------------------- boot

new ResizeObserver((entries) => {
  // Rounded like clientWidth (what the canvas width was taken from before).
  // Only a new width matters: the height changes with the graph itself (a zoom), and
  // redrawing then would paint the graph and the chart a second time.
  const w = Math.round(entries[entries.length - 1].contentRect.width);
  if (w === st.flameWidth) return;
  st.flameWidth = w;
  st.graphRows = 0;
  render();
  chart.draw();
}).observe($("flame-container"));
syncControls();
scheduleAuto();
recompute();
load();
