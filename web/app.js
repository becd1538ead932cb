// Kiln flame-graph UI. Plain ES module, no build step, no dependencies.
// Talks to the server's HTTP API (docs/API.md) with relative URLs so the page
// also works behind a path-prefixing reverse proxy.

const ROW_H = 18; // CSS px per flame-graph row
const MIN_W = 0.5; // frames narrower than this (CSS px) are not drawn
const TEXT_MIN_W = 24; // no label on frames narrower than this
const AUTO_REFRESH_MS = 10_000;
const RANGES = { "5m": "now-5m", "15m": "now-15m", "1h": "now-1h", "6h": "now-6h", "24h": "now-24h" };
const DEFAULTS = { label: "service_name", value: "", type: "cpu:nanoseconds", range: "1h" };
const TOP_LIMIT = 200;

const $ = (id) => document.getElementById(id);
const els = {
  labelName: $("label-name"), labelValue: $("label-value"), profileType: $("profile-type"),
  range: $("range"), customRange: $("custom-range"), from: $("from"), until: $("until"),
  refresh: $("refresh"), auto: $("auto-refresh"), download: $("download-pprof"),
  query: $("query"), compare: $("compare"), search: $("search"), searchMatch: $("search-match"),
  status: $("status"), error: $("error"), truncated: $("truncated-note"),
  breadcrumbs: $("breadcrumbs"), summary: $("summary"),
  container: $("flame-container"), canvas: $("flamegraph"), tooltip: $("tooltip"),
  topTable: $("top-table"),
  authDialog: $("auth-dialog"), authForm: $("auth-form"), authMessage: $("auth-message"),
  authToken: $("auth-token"), authRemember: $("auth-remember"),
};

// ---------------------------------------------------------------- state

const state = {
  sel: readUrl(),      // what is selected (mirrored in the URL)
  data: null,          // last flamegraph response
  top: null,           // last top response
  zoomPath: [],        // names from root's child down to the zoomed node
  frames: [],          // laid-out rectangles of the last render
  hover: null,         // frame under the mouse
  matcher: null,       // search predicate or null
  matchedTotal: 0,
  status: "idle",
  sort: { key: "self", dir: "desc" },
  selectedTopName: null,
  inflight: null,      // AbortController of the running load
  loadSeq: 0,
  timer: null,
};

function readUrl() {
  const p = new URLSearchParams(location.search);
  const sel = {
    label: p.get("label") || DEFAULTS.label,
    value: p.get("value") ?? DEFAULTS.value,
    type: p.get("type") || DEFAULTS.type,
    range: p.get("range") || "",
    from: p.get("from") || "",
    until: p.get("until") || "",
    query: p.get("query") || "", // raw selector override (typed by the user)
    search: p.get("search") || "",
    auto: p.get("auto") === "1",
    maxNodes: p.get("max_nodes") || "", // advanced, URL only: the server's node budget
    // Diff mode: a baseline selector, and optionally its own range (URL only).
    compare: p.get("compare") || "",
    compareFrom: p.get("compare_from") || "",
    compareUntil: p.get("compare_until") || "",
  };
  if (sel.value === "all") sel.value = "";
  if (!sel.range) sel.range = sel.from || sel.until ? "custom" : DEFAULTS.range;
  if (sel.range !== "custom" && !(sel.range in RANGES)) sel.range = DEFAULTS.range;
  return sel;
}

function writeUrl() {
  const s = state.sel;
  const p = new URLSearchParams();
  if (s.query) p.set("query", s.query);
  else {
    if (s.label !== DEFAULTS.label) p.set("label", s.label);
    if (s.value) p.set("value", s.value);
  }
  if (s.type !== DEFAULTS.type) p.set("type", s.type);
  if (s.range === "custom") {
    if (s.from) p.set("from", s.from);
    if (s.until) p.set("until", s.until);
  } else if (s.range !== DEFAULTS.range) p.set("range", s.range);
  if (s.search) p.set("search", s.search);
  if (s.auto) p.set("auto", "1");
  if (s.maxNodes) p.set("max_nodes", s.maxNodes);
  if (s.compare) p.set("compare", s.compare);
  if (s.compareFrom) p.set("compare_from", s.compareFrom);
  if (s.compareUntil) p.set("compare_until", s.compareUntil);
  const qs = p.toString();
  const url = location.pathname + (qs ? "?" + qs : "") + location.hash;
  if (url !== location.pathname + location.search + location.hash) history.replaceState(null, "", url);
}

// PromQL-style string literal.
function quote(v) {
  return '"' + String(v).replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n") + '"';
}

function selector() {
  const s = state.sel;
  if (s.query) return s.query;
  if (!s.value) return "{}";
  return `{${s.label}=${quote(s.value)}}`;
}

function timeRange() {
  const s = state.sel;
  if (s.range === "custom") return { from: s.from || "now-1h", until: s.until || "now" };
  return { from: RANGES[s.range], until: "now" };
}

function apiUrl(path, extra = {}) {
  const { from, until } = timeRange();
  const p = new URLSearchParams({ query: selector(), from, until, ...extra });
  return `${path}?${p}`;
}

// ---------------------------------------------------------------- fetching

class ApiError extends Error {}

// A server started with --auth-token answers 401 without `Authorization: Bearer <token>`. The page
// then asks for the token, keeps it for this tab (sessionStorage) or, if asked to, this browser
// (localStorage), and sends it with every request, the pprof download included.
const TOKEN_KEY = "kiln.authToken";
let authRequired = false;
let memoryToken = ""; // the token given on this page, should storage be disabled

function authToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY) || memoryToken;
  } catch {
    return memoryToken; // storage disabled
  }
}
function authHeaders() {
  const t = authToken();
  return t ? { Authorization: `Bearer ${t}` } : {};
}
function saveToken(token, remember) {
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
    if (remember) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch { /* storage disabled: the token lasts until the page is left */ }
  memoryToken = token;
}

/** Shows the token prompt (once, however many requests were refused). */
function askForToken(serverMessage) {
  authRequired = true;
  els.authMessage.textContent = authToken()
    ? `The server refused the token: ${serverMessage}`
    : "This Kiln server requires a token.";
  if (!els.authDialog.open) {
    els.authDialog.showModal();
    els.authToken.focus();
  }
}

async function errorMessage(res) {
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  return body && typeof body.error === "string" ? body.error : (text.trim() || res.statusText);
}

async function getJson(url, signal) {
  let res;
  try {
    res = await fetch(url, { signal, headers: { Accept: "application/json", ...authHeaders() } });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(`cannot reach the Kiln server (${e.message})`);
  }
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!res.ok) {
    const msg = body && typeof body.error === "string" ? body.error : (text.trim() || res.statusText);
    if (res.status === 401) askForToken(msg);
    throw new ApiError(`${msg} (HTTP ${res.status})`);
  }
  if (body === null) throw new ApiError(`unexpected non-JSON answer from ${url.split("?")[0]}`);
  return body;
}

async function loadChoices(signal) {
  // Profile types and label names/values are helpers for the selectors;
  // their failure must not hide the flame graph, so errors are swallowed here.
  const { from, until } = timeRange();
  const range = new URLSearchParams({ from, until });
  const [types, names, values] = await Promise.all([
    // Types present in the selection (the server takes the selection here too).
    getJson(`api/v1/profile_types?${new URLSearchParams({ query: selector(), from, until })}`, signal).catch(() => null),
    getJson(`api/v1/labels?${range}`, signal).catch(() => null),
    getJson(`api/v1/labels/${encodeURIComponent(state.sel.label)}/values?${range}`, signal).catch(() => null),
  ]);
  const typeList = [...(types?.profile_types ?? [])];
  if (!typeList.includes(DEFAULTS.type)) typeList.unshift(DEFAULTS.type);
  fillSelect(els.profileType, typeList, state.sel.type, null);
  const nameList = [...(names?.names ?? [])];
  for (const n of ["service_name", "comm", "pid", "node"]) if (!nameList.includes(n)) nameList.push(n);
  nameList.sort();
  fillSelect(els.labelName, nameList, state.sel.label, null);
  fillSelect(els.labelValue, values?.values ?? [], state.sel.value, { value: "", text: "all" });
  els.labelName.disabled = els.labelValue.disabled = !!state.sel.query;
}

function fillSelect(select, items, current, first) {
  const list = [...items];
  if (current && !list.includes(current)) list.unshift(current);
  const frag = document.createDocumentFragment();
  if (first) frag.append(new Option(first.text, first.value));
  for (const v of list) frag.append(new Option(v, v));
  select.replaceChildren(frag);
  select.value = current;
}

async function load({ keepChoices = false } = {}) {
  state.inflight?.abort();
  const ctl = new AbortController();
  state.inflight = ctl;
  const seq = ++state.loadSeq;
  syncControls();
  updateDownloadLink();
  setStatus("loading", "Loading…");
  hideError();
  try {
    const choices = keepChoices ? null : loadChoices(ctl.signal);
    const type = state.sel.type;
    const maxNodes = state.sel.maxNodes ? { max_nodes: state.sel.maxNodes } : {};
    const fgUrl = state.sel.compare
      ? diffUrl({ profile_type: type, ...maxNodes })
      // With no value picked ("all"), split the graph by the chosen label: processes on top,
      // their functions below.
      : apiUrl("api/v1/flamegraph", {
        profile_type: type, ...maxNodes,
        ...(!state.sel.value && !state.sel.query ? { group_by: state.sel.label } : {}),
      });
    const [fg, top] = await Promise.all([
      getJson(fgUrl, ctl.signal),
      getJson(apiUrl("api/v1/top", { profile_type: type, limit: String(TOP_LIMIT) }), ctl.signal),
    ]);
    await choices;
    if (seq !== state.loadSeq) return;
    state.data = state.sel.compare ? normalizeDiff(fg) : normalize(fg);
    state.top = top;
    const hasSamples = state.data.root.total > 0;
    if (hasSamples) {
      setStatus("ok", "");
    } else {
      setStatus("empty", "No samples in this range — is the agent running?");
    }
    if (!resolveZoom()) state.zoomPath = [];
    showTruncated(fg.truncated_nodes);
    applySearch();
    renderTop();
    render();
  } catch (e) {
    if (e.name === "AbortError" || seq !== state.loadSeq) return;
    state.data = null;
    state.top = null;
    state.zoomPath = [];
    showError(e instanceof ApiError ? e.message : `unexpected error: ${e.message}`);
    setStatus("error", "query failed");
    showTruncated(0);
    applySearch();
    renderTop();
    render();
  } finally {
    if (state.inflight === ctl) state.inflight = null;
  }
}

function normalize(fg) {
  const root = fg.root ?? { name: "total", self: 0, total: fg.total ?? 0, children: [] };
  (function fix(n) {
    n.self = Number(n.self) || 0;
    n.total = Number(n.total) || 0;
    n.children = Array.isArray(n.children) ? n.children : [];
    for (const c of n.children) fix(c);
  })(root);
  return { total: Number(fg.total) || root.total, unit: fg.unit || unitOf(state.sel.type), profiles: fg.profiles, root };
}

// /api/v1/diff: the baseline (`compare`, left) against the page's selection (right).
function diffUrl(extra) {
  const { from, until } = timeRange();
  const s = state.sel;
  const p = new URLSearchParams({
    left_query: s.compare, left_from: s.compareFrom || from, left_until: s.compareUntil || until,
    right_query: selector(), right_from: from, right_until: until, ...extra,
  });
  return `api/v1/diff?${p}`;
}

// A diff tree drawn like a flame graph: a frame is as wide as baseline + current together, and
// `diff` keeps both sides for colour and tooltip.
function normalizeDiff(d) {
  const root = d.root ?? { name: "total", left_total: 0, right_total: 0, children: [] };
  const stack = [root];
  while (stack.length) {
    const n = stack.pop();
    n.diff = {
      leftTotal: Number(n.left_total) || 0, leftSelf: Number(n.left_self) || 0,
      rightTotal: Number(n.right_total) || 0, rightSelf: Number(n.right_self) || 0,
    };
    n.total = n.diff.leftTotal + n.diff.rightTotal;
    n.self = n.diff.leftSelf + n.diff.rightSelf;
    n.children = Array.isArray(n.children) ? n.children : [];
    stack.push(...n.children);
  }
  return {
    total: root.total, unit: d.unit || unitOf(state.sel.type), profiles: null, root,
    diff: { left: Number(d.left?.total) || 0, right: Number(d.right?.total) || 0 },
  };
}

// Change of a frame's share of its side's total: > 0 grew (red), < 0 shrank (green).
function shareChange(diff) {
  const t = state.data.diff;
  const l = t.left > 0 ? diff.leftTotal / t.left : 0;
  const r = t.right > 0 ? diff.rightTotal / t.right : 0;
  return r - l;
}

function diffColor(diff) {
  const c = shareChange(diff);
  // Saturates at a 20-point change in share; near zero is a neutral grey.
  const m = Math.min(1, Math.abs(c) / 0.2);
  if (m < 0.02) return "hsl(220, 6%, 78%)";
  return `hsl(${c > 0 ? 0 : 130}, ${40 + m * 45}%, ${82 - m * 30}%)`;
}

const unitOf = (type) => type.split(":")[1] || "";

function setStatus(st, text) {
  state.status = st;
  els.status.dataset.state = st;
  els.status.textContent = text;
  document.body.dataset.state = st;
}
function showError(msg) {
  els.error.textContent = `Error: ${msg}`;
  els.error.hidden = false;
}
function hideError() {
  els.error.hidden = true;
  els.error.textContent = "";
}
function showTruncated(n) {
  if (n > 0) {
    els.truncated.hidden = false;
    els.truncated.textContent = `Note: ${n.toLocaleString("en-US")} small nodes were folded into "(other)" frames by the server to keep the graph manageable. Narrow the selection or zoom for more detail.`;
  } else {
    els.truncated.hidden = true;
  }
}

// ---------------------------------------------------------------- controls

function syncControls() {
  const s = state.sel;
  els.range.value = s.range;
  els.customRange.hidden = s.range !== "custom";
  els.from.value = toLocalInput(s.from);
  els.until.value = toLocalInput(s.until);
  els.query.value = selector();
  els.compare.value = s.compare;
  els.auto.checked = s.auto;
  if (els.search.value !== s.search) els.search.value = s.search;
  els.labelName.disabled = els.labelValue.disabled = !!s.query;
  els.labelName.title = s.query ? "A custom selector is in use (clear the Selector box to use these)" : "Label that identifies the process";
}

function updateDownloadLink() {
  els.download.href = apiUrl("api/v1/pprof");
}

// "1764301027" (any of s/ms/µs/ns) -> Date, else null
function parseUnix(v) {
  if (!/^\d{10,19}$/.test(v)) return null;
  const n = Number(v);
  const ms = v.length <= 10 ? n * 1e3 : v.length <= 13 ? n : v.length <= 16 ? n / 1e3 : n / 1e6;
  return new Date(ms);
}
function toLocalInput(v) {
  const d = parseUnix(v);
  if (!d) return "";
  const pad = (x) => String(x).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function fromLocalInput(v) {
  if (!v) return "";
  const t = new Date(v).getTime();
  return Number.isFinite(t) ? String(Math.floor(t / 1000)) : "";
}

function changeSel(patch, opts) {
  Object.assign(state.sel, patch);
  writeUrl();
  load(opts);
}

els.labelName.addEventListener("change", () => changeSel({ label: els.labelName.value, value: "", query: "" }));
els.labelValue.addEventListener("change", () => changeSel({ value: els.labelValue.value, query: "" }));
els.profileType.addEventListener("change", () => changeSel({ type: els.profileType.value }, { keepChoices: true }));
els.range.addEventListener("change", () => {
  const r = els.range.value;
  if (r === "custom") {
    // Start the custom range from what was shown.
    const now = Math.floor(Date.now() / 1000);
    const span = { "5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400 }[state.sel.range] ?? 3600;
    changeSel({ range: "custom", from: state.sel.from || String(now - span), until: state.sel.until || String(now) });
  } else {
    changeSel({ range: r, from: "", until: "" });
  }
});
for (const inp of [els.from, els.until]) {
  inp.addEventListener("change", () => {
    const from = fromLocalInput(els.from.value);
    const until = fromLocalInput(els.until.value);
    if (from && until) changeSel({ range: "custom", from, until });
  });
}
els.query.addEventListener("keydown", (e) => {
  if (e.key !== "Enter") return;
  e.preventDefault();
  const q = els.query.value.trim();
  // An empty box (or the selector the dropdowns would build anyway) returns control to the dropdowns.
  const built = state.sel.value ? `{${state.sel.label}=${quote(state.sel.value)}}` : "{}";
  changeSel({ query: q && q !== built ? q : "" });
});
els.compare.addEventListener("keydown", (e) => {
  if (e.key !== "Enter") return;
  e.preventDefault();
  changeSel({ compare: els.compare.value.trim() });
});
els.refresh.addEventListener("click", () => load());

els.authForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const token = els.authToken.value.trim();
  if (!token) return;
  saveToken(token, els.authRemember.checked);
  els.authToken.value = "";
  els.authDialog.close();
  load();
});

// Behind a token, a plain link cannot send it: fetch the file with the header and save the blob.
els.download.addEventListener("click", async (e) => {
  if (!authRequired && !authToken()) return; // no auth: the link downloads by itself
  e.preventDefault();
  const href = els.download.getAttribute("href");
  try {
    const res = await fetch(href, { headers: authHeaders() });
    if (!res.ok) {
      const msg = await errorMessage(res);
      if (res.status === 401) askForToken(msg);
      else showError(`pprof download failed: ${msg} (HTTP ${res.status})`);
      return;
    }
    const url = URL.createObjectURL(await res.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = els.download.getAttribute("download") || "kiln.pb.gz";
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (err) {
    showError(`pprof download failed: ${err.message}`);
  }
});
els.auto.addEventListener("change", () => {
  state.sel.auto = els.auto.checked;
  writeUrl();
  scheduleAuto();
});
function scheduleAuto() {
  clearInterval(state.timer);
  state.timer = null;
  if (state.sel.auto) {
    state.timer = setInterval(() => {
      if (!document.hidden && !state.inflight) load({ keepChoices: true });
    }, AUTO_REFRESH_MS);
  }
}

// ---------------------------------------------------------------- search

let searchDebounce = null;
els.search.addEventListener("input", () => {
  clearTimeout(searchDebounce);
  searchDebounce = setTimeout(() => setSearch(els.search.value), 120);
});
els.search.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && els.search.value) {
    e.stopPropagation();
    els.search.value = "";
    setSearch("");
  }
});

function setSearch(text) {
  clearTimeout(searchDebounce);
  if (els.search.value !== text) els.search.value = text;
  state.sel.search = text;
  writeUrl();
  applySearch();
  render();
  markTopSelection();
}

function makeMatcher(text) {
  if (!text) return null;
  try {
    const re = new RegExp(text, "i");
    return (name) => re.test(name);
  } catch {
    const needle = text.toLowerCase();
    return (name) => name.toLowerCase().includes(needle);
  }
}

function applySearch() {
  state.matcher = makeMatcher(state.sel.search);
  state.matchedTotal = 0;
  const out = els.searchMatch;
  if (!state.matcher || !state.data) {
    out.textContent = state.matcher ? "no data" : "";
    out.classList.toggle("active", false);
    out.dataset.percent = "";
    return;
  }
  // Sum the totals of matching nodes, not counting a match below another match twice.
  let sum = 0;
  const stack = [...state.data.root.children];
  while (stack.length) {
    const n = stack.pop();
    if (state.matcher(n.name)) sum += n.total;
    else stack.push(...n.children);
  }
  state.matchedTotal = sum;
  const total = state.data.root.total;
  const pct = total > 0 ? (100 * sum) / total : 0;
  out.dataset.percent = pct.toFixed(2);
  out.classList.toggle("active", sum > 0);
  out.textContent = sum > 0
    ? `Matched: ${fmtPct(pct)} of total (${fmtValue(sum, state.data.unit)})`
    : "Matched: 0% — no frame matches";
}

// ---------------------------------------------------------------- zoom

function zoomChain() {
  // [root, ..., zoomed node]
  const chain = [state.data.root];
  for (const name of state.zoomPath) {
    const next = chain[chain.length - 1].children.find((c) => c.name === name);
    if (!next) break;
    chain.push(next);
  }
  return chain;
}
function resolveZoom() {
  if (!state.data) return false;
  return zoomChain().length === state.zoomPath.length + 1;
}
function zoomTo(path) {
  state.zoomPath = path;
  hideTooltip();
  render();
}

document.addEventListener("keydown", (e) => {
  if (e.key !== "Escape") return;
  const t = e.target;
  if (t instanceof HTMLInputElement && t !== els.search) return;
  if (state.zoomPath.length) zoomTo([]);
  hideTooltip();
});

// ---------------------------------------------------------------- rendering

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function hash(str) {
  // FNV-1a 32-bit
  let h = 0x811c9dc5;
  for (let i = 0; i < str.length; i++) {
    h ^= str.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

const UNSYM = /^0x[0-9a-f]+$|\+0x[0-9a-f]+$/i;
// What the server's `reason` codes mean (storage-server/src/query/reason.rs).
const REASONS = {
  no_mapping: "address in no known mapping (the process exited before its mappings were read?)",
  no_build_id: "the binary has no build ID",
  no_file: "code not backed by a file (JIT without a perf map?)",
  kernel_unknown: "kernel address not in /proc/kallsyms",
  no_debuginfo: "no debuginfo uploaded for this build ID (yet)",
  stripped: "stripped binary and no separate debuginfo",
  unknown_address: "no symbol covers this address",
  invalid_offset: "address outside the binary's segments",
  symbolizer_error: "the symbolizer failed on this binary",
  debuginfod_miss: "no debuginfo uploaded, and debuginfod does not have it",
  debuginfod_pending: "debuginfo is being fetched from debuginfod (reload shortly)",
  truncated: "the stack was cut here (stack copy size or depth limit)",
  unwind_failed: "the unwinder could not go further",
};

function frameKind(name, reason) {
  if (reason) return "unsym";
  if (name.endsWith(" [k]")) return "kernel";
  if (UNSYM.test(name)) return "unsym";
  if (name === "(other)") return "other";
  return "user";
}

function frameColor(name, isRoot, reason) {
  if (isRoot) return "hsl(220, 8%, 70%)";
  const h = hash(name);
  const a = (h & 0xff) / 255;
  const b = ((h >>> 8) & 0xff) / 255;
  switch (frameKind(name, reason)) {
    case "kernel": return `hsl(${190 + a * 35}, ${55 + b * 20}%, ${58 + b * 10}%)`;
    case "unsym": return `hsl(0, 0%, ${66 + a * 12}%)`;
    case "other": return "hsl(40, 6%, 80%)";
    default: {
      // Warm palette: red -> orange -> yellow, lightness varied by name.
      // Go/Rust style package prefix ("runtime.", "std::") shifts the hue a little
      // so related functions look related.
      return `hsl(${4 + a * 48}, ${72 + b * 18}%, ${56 + ((h >>> 16) & 0xff) / 255 * 12}%)`;
    }
  }
}

function layout(width) {
  const frames = [];
  if (!state.data || state.data.root.total <= 0) return frames;
  const chain = zoomChain();
  // Ancestors of the zoomed node are shown collapsed, full width, on top.
  for (let i = 0; i < chain.length - 1; i++) {
    const n = chain[i];
    frames.push(mkFrame(n, chain.slice(1, i + 1).map((x) => x.name), 0, i * ROW_H, width, i, true));
  }
  const zoomed = chain[chain.length - 1];
  const scale = width / zoomed.total;
  const base = chain.length - 1;
  const zoomNames = chain.slice(1).map((x) => x.name);
  // Browsers cap a canvas at ~32k device px per side: very deep stacks are cut (zoom in to see them).
  const maxDepth = Math.floor(30000 / (window.devicePixelRatio || 1) / ROW_H);
  // Iterative DFS to survive very deep stacks.
  const stack = [{ n: zoomed, x: 0, d: base, path: zoomNames }];
  while (stack.length) {
    const { n, x, d, path } = stack.pop();
    const w = n.total * scale;
    if (w < MIN_W || d >= maxDepth) continue;
    frames.push(mkFrame(n, path, x, d * ROW_H, w, d, false));
    let cx = x;
    const kids = [];
    for (const c of n.children) {
      kids.push({ n: c, x: cx, d: d + 1, path: [...path, c.name] });
      cx += c.total * scale;
    }
    for (let i = kids.length - 1; i >= 0; i--) stack.push(kids[i]);
  }
  return frames;
}

function mkFrame(n, path, x, y, w, depth, collapsed) {
  return {
    name: n.name, x, y, w, h: ROW_H, total: n.total, self: n.self, depth,
    collapsed, highlighted: !!(state.matcher && path.length && state.matcher(n.name)),
    path, node: n,
  };
}

let renderQueued = false;
function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderNow();
  });
}

function renderNow() {
  const canvas = els.canvas;
  const width = Math.max(1, Math.floor(els.container.clientWidth));
  const frames = layout(width);
  state.frames = frames;
  const depth = frames.reduce((m, f) => Math.max(m, f.depth + 1), 0);
  const height = depth * ROW_H;
  const dpr = window.devicePixelRatio || 1;
  canvas.style.height = `${height}px`;
  canvas.width = Math.max(1, Math.round(width * dpr));
  canvas.height = Math.max(1, Math.round(height * dpr));
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = `12px ui-monospace, "DejaVu Sans Mono", Menlo, monospace`;
  ctx.textBaseline = "middle";
  const searching = !!state.matcher;
  const pal = {
    match: cssVar("--match") || "#d63af9",
    dim: cssVar("--frame-dim") || "#e4e4e7",
    dimText: cssVar("--frame-dim-text") || "#6b6b73",
    collapsed: cssVar("--frame-collapsed") || "#d4d4d8",
    collapsedText: cssVar("--fg") || "#111111",
  };
  const charW = ctx.measureText("m").width || 7;
  for (const f of frames) {
    const isRoot = f.path.length === 0;
    let fill, textColor = "#111111";
    if (f.highlighted) {
      fill = pal.match;
      textColor = "#ffffff";
    } else if (f.collapsed && !isRoot) {
      fill = pal.collapsed;
      textColor = pal.collapsedText;
    } else if (searching && !isRoot) {
      fill = pal.dim;
      textColor = pal.dimText;
    } else if (state.data.diff && !isRoot) {
      fill = diffColor(f.node.diff);
    } else {
      fill = frameColor(f.name, isRoot, f.node?.reason);
    }
    ctx.fillStyle = fill;
    // 1px gap right/bottom separates neighbours without hiding tiny frames.
    const gap = f.w > 3 ? 1 : 0;
    ctx.fillRect(f.x, f.y, Math.max(f.w - gap, 0.5), ROW_H - 1);
    if (f.w >= TEXT_MIN_W) {
      ctx.fillStyle = textColor;
      const label = isRoot ? rootLabel() : f.name;
      const text = fitText(ctx, label, f.w - 6, charW);
      if (text) ctx.fillText(text, f.x + 3, f.y + ROW_H / 2);
    }
  }
  ctx.globalAlpha = 1;
  if (state.hover) {
    const h = frames.find((f) => f.path.join("\u0000") === state.hover.path.join("\u0000") && f.collapsed === state.hover.collapsed);
    if (h) {
      ctx.strokeStyle = cssVar("--fg") || "#000";
      ctx.lineWidth = 1;
      ctx.strokeRect(h.x + 0.5, h.y + 0.5, Math.max(h.w - 2, 1), ROW_H - 2);
    }
  }
  els.container.dataset.placeholder = frames.length ? "" : {
    loading: "Loading…",
    empty: "Try a longer time range or another process, or check that an agent is sending profiles.",
    error: "No flame graph: see the error above.",
  }[state.status] ?? "";
  const diffMode = !!state.data?.diff;
  $("legend").hidden = diffMode;
  $("legend-diff").hidden = !diffMode;
  renderBreadcrumbs();
  renderSummary();
}

function rootLabel() {
  const d = state.data;
  if (d.diff) return `baseline ${fmtValue(d.diff.left, d.unit)} → current ${fmtValue(d.diff.right, d.unit)}`;
  return `total — ${fmtValue(d.root.total, d.unit)}${d.profiles != null ? ` in ${d.profiles} profile${d.profiles === 1 ? "" : "s"}` : ""}`;
}

function fitText(ctx, text, maxW, charW) {
  if (maxW <= charW) return "";
  if (ctx.measureText(text).width <= maxW) return text;
  // Monospace: estimate, then correct.
  let n = Math.max(0, Math.floor(maxW / charW) - 1);
  while (n > 0 && ctx.measureText(text.slice(0, n) + "…").width > maxW) n--;
  return n > 0 ? text.slice(0, n) + "…" : "";
}

function renderBreadcrumbs() {
  const bc = els.breadcrumbs;
  bc.replaceChildren();
  if (!state.data || state.data.root.total <= 0) return;
  const chain = zoomChain();
  chain.forEach((n, i) => {
    if (i > 0) {
      const sep = document.createElement("span");
      sep.className = "sep";
      sep.textContent = "›";
      bc.append(sep);
    }
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = i === 0 ? "all (root)" : n.name;
    b.title = i === 0 ? "Reset zoom (Esc)" : n.name;
    b.dataset.depth = String(i);
    if (i === chain.length - 1) b.setAttribute("aria-current", "true");
    b.addEventListener("click", () => zoomTo(chain.slice(1, i + 1).map((x) => x.name)));
    bc.append(b);
  });
}

function renderSummary() {
  const d = state.data;
  if (!d || d.root.total <= 0) {
    els.summary.textContent = "";
    return;
  }
  const parts = d.diff
    ? [`${state.sel.type}`, `diff: baseline ${fmtValue(d.diff.left, d.unit)}, current ${fmtValue(d.diff.right, d.unit)}`]
    : [`${state.sel.type}`, `total ${fmtValue(d.root.total, d.unit)}`];
  if (d.profiles != null) parts.push(`${d.profiles} profile${d.profiles === 1 ? "" : "s"}`);
  if (state.zoomPath.length) {
    const z = zoomChain().at(-1);
    parts.push(`zoomed: ${fmtPct((100 * z.total) / d.root.total)} of total`);
  }
  els.summary.textContent = parts.join(" · ");
}

// ---------------------------------------------------------------- mouse

function frameAt(x, y) {
  for (let i = state.frames.length - 1; i >= 0; i--) {
    const f = state.frames[i];
    if (y >= f.y && y < f.y + f.h && x >= f.x && x < f.x + f.w) return f;
  }
  return null;
}

function canvasPoint(e) {
  const r = els.canvas.getBoundingClientRect();
  return { x: e.clientX - r.left, y: e.clientY - r.top };
}

els.canvas.addEventListener("mousemove", (e) => {
  const p = canvasPoint(e);
  const f = frameAt(p.x, p.y);
  if (!f) {
    hideTooltip();
    return;
  }
  const key = (x) => `${x.collapsed ? 1 : 0}\u0000${x.path.join("\u0000")}`;
  const changed = !state.hover || key(state.hover) !== key(f);
  state.hover = f;
  showTooltip(f, p);
  if (changed) render();
});
els.canvas.addEventListener("mouseleave", hideTooltip);
els.canvas.addEventListener("click", (e) => {
  const p = canvasPoint(e);
  const f = frameAt(p.x, p.y);
  if (!f) return;
  zoomTo(f.path);
});

function showTooltip(f, p) {
  const d = state.data;
  const t = els.tooltip;
  const pct = d.root.total > 0 ? (100 * f.total) / d.root.total : 0;
  const x = f.node?.diff;
  const share = (v, t) => (t > 0 ? ` (${fmtPct((100 * v) / t)})` : "");
  const rows = x && d.diff
    ? [
      ["Baseline", `${fmtValue(x.leftTotal, d.unit)}${share(x.leftTotal, d.diff.left)}`],
      ["Current", `${fmtValue(x.rightTotal, d.unit)}${share(x.rightTotal, d.diff.right)}`],
      ["Self (base → cur)", `${fmtValue(x.leftSelf, d.unit)} → ${fmtValue(x.rightSelf, d.unit)}`],
      ["Share change", `${shareChange(x) >= 0 ? "+" : "−"}${fmtPct(Math.abs(100 * shareChange(x)))} points`],
    ]
    : [
      ["Total", `${fmtValue(f.total, d.unit)}`],
      ["Self", `${fmtValue(f.self, d.unit)}`],
      ["% of total", fmtPct(pct)],
    ];
  if (state.zoomPath.length && !f.collapsed) {
    const z = zoomChain().at(-1);
    rows.push(["% of zoomed", fmtPct((100 * f.total) / z.total)]);
  }
  const kind = frameKind(f.name, f.node?.reason);
  if (kind === "kernel") rows.push(["Kind", "kernel"]);
  if (kind === "unsym") rows.push(["Kind", "unsymbolized"]);
  const reason = f.node?.reason;
  if (reason) rows.push(["Why no name", REASONS[reason] || reason]);
  const name = document.createElement("div");
  name.className = "tt-name";
  name.textContent = f.path.length ? f.name : "total (all stacks)";
  const table = document.createElement("table");
  for (const [k, v] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = v;
  }
  t.replaceChildren(name, table);
  t.hidden = false;
  t.dataset.name = f.name;
  // Keep the tooltip inside the container.
  const cw = els.container.clientWidth;
  const tw = t.offsetWidth;
  let left = p.x + 14;
  if (left + tw > cw) left = Math.max(0, p.x - tw - 14);
  t.style.left = `${left}px`;
  t.style.top = `${p.y + 16}px`;
}

function hideTooltip() {
  els.tooltip.hidden = true;
  if (state.hover) {
    state.hover = null;
    render();
  }
}

// ---------------------------------------------------------------- top table

const topHeaders = [...els.topTable.querySelectorAll("th[data-key]")];
for (const th of topHeaders) {
  th.querySelector("button").addEventListener("click", () => {
    const key = th.dataset.key;
    if (state.sort.key === key) state.sort.dir = state.sort.dir === "desc" ? "asc" : "desc";
    else state.sort = { key, dir: key === "name" ? "asc" : "desc" };
    renderTop();
  });
}

function renderTop() {
  const tbody = els.topTable.tBodies[0];
  tbody.replaceChildren();
  for (const th of topHeaders) {
    th.setAttribute("aria-sort", th.dataset.key === state.sort.key ? (state.sort.dir === "asc" ? "ascending" : "descending") : "none");
  }
  const top = state.top;
  const fns = top?.functions ?? [];
  if (!fns.length) {
    const td = tbody.insertRow().insertCell();
    td.colSpan = 5;
    td.className = "empty";
    td.textContent = state.status === "error" ? "—" : "no functions";
    return;
  }
  const total = Number(top.total) || 0;
  const unit = top.unit || unitOf(state.sel.type);
  const rows = fns.map((f) => ({
    name: f.name,
    self: Number(f.self) || 0,
    total: Number(f.total) || 0,
    selfPct: total > 0 ? (100 * (Number(f.self) || 0)) / total : 0,
    totalPct: total > 0 ? (100 * (Number(f.total) || 0)) / total : 0,
  }));
  const { key, dir } = state.sort;
  const sign = dir === "asc" ? 1 : -1;
  rows.sort((a, b) => {
    const va = a[key], vb = b[key];
    const c = typeof va === "string" ? va.localeCompare(vb) : va - vb;
    return c !== 0 ? sign * c : a.name.localeCompare(b.name);
  });
  const maxSelfPct = Math.max(...rows.map((r) => r.selfPct), 1e-9);
  const frag = document.createDocumentFragment();
  for (const r of rows) {
    const tr = document.createElement("tr");
    tr.dataset.name = r.name;
    tr.dataset.self = String(r.self);
    tr.dataset.total = String(r.total);
    tr.tabIndex = 0;
    tr.title = "Highlight in the flame graph";
    const cells = [
      [r.name, "name-col"],
      [fmtValue(r.self, unit), "num"],
      [fmtPct(r.selfPct), "num"],
      [fmtValue(r.total, unit), "num"],
      [fmtPct(r.totalPct), "num"],
    ];
    for (const [text, cls] of cells) {
      const td = document.createElement("td");
      td.className = cls;
      td.textContent = text;
      tr.append(td);
    }
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, Math.round((40 * r.selfPct) / maxSelfPct))}px`;
    tr.cells[2].prepend(bar);
    frag.append(tr);
  }
  tbody.append(frag);
  markTopSelection();
}

function exactRegex(name) {
  return "^" + name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") + "$";
}

function selectTopRow(tr) {
  const name = tr.dataset.name;
  const q = exactRegex(name);
  setSearch(state.sel.search === q ? "" : q);
}

els.topTable.tBodies[0].addEventListener("click", (e) => {
  const tr = e.target.closest("tr[data-name]");
  if (tr) selectTopRow(tr);
});
els.topTable.tBodies[0].addEventListener("keydown", (e) => {
  const tr = e.target.closest("tr[data-name]");
  if (!tr) return;
  if (e.key === "Enter" || e.key === " ") {
    e.preventDefault();
    selectTopRow(tr);
  }
});

function markTopSelection() {
  for (const tr of els.topTable.tBodies[0].rows) {
    const sel = !!tr.dataset.name && state.sel.search === exactRegex(tr.dataset.name);
    tr.classList.toggle("selected", sel);
    tr.setAttribute("aria-selected", String(sel));
  }
}

// ---------------------------------------------------------------- formatting

function fmtNum(v, digits) {
  return v.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function fmtValue(v, unit) {
  const a = Math.abs(v);
  switch (unit) {
    case "nanoseconds": {
      if (a === 0) return "0 ms";
      if (a >= 3600e9) return `${fmtNum(v / 3600e9, 2)} h`;
      if (a >= 60e9) return `${fmtNum(v / 60e9, 2)} min`;
      if (a >= 1e9) return `${fmtNum(v / 1e9, 2)} s`;
      if (a >= 1e6) return `${fmtNum(v / 1e6, a >= 100e6 ? 0 : 1)} ms`;
      if (a >= 1e3) return `${fmtNum(v / 1e3, 1)} µs`;
      return `${v} ns`;
    }
    case "microseconds": return fmtValue(v * 1e3, "nanoseconds");
    case "milliseconds": return fmtValue(v * 1e6, "nanoseconds");
    case "seconds": return fmtValue(v * 1e9, "nanoseconds");
    case "count":
    case "samples": return `${fmtNum(v, 0)} sample${v === 1 ? "" : "s"}`;
    case "bytes": {
      const u = ["B", "KiB", "MiB", "GiB", "TiB"];
      let x = v, i = 0;
      while (Math.abs(x) >= 1024 && i < u.length - 1) { x /= 1024; i++; }
      return `${fmtNum(x, i ? 1 : 0)} ${u[i]}`;
    }
    default: return `${fmtNum(v, 0)}${unit ? " " + unit : ""}`;
  }
}

function fmtPct(p) {
  if (p === 0) return "0%";
  if (p < 0.01) return "<0.01%";
  return `${p >= 10 ? p.toFixed(1) : p.toFixed(2)}%`;
}

// ---------------------------------------------------------------- test hooks

window.kiln = {
  /** Laid-out rectangles of the last render, canvas-relative CSS px. */
  frames: () => state.frames.map(({ name, x, y, w, h, total, self, depth, collapsed, highlighted, node }) =>
    ({ name, x, y, w, h, total, self, depth, collapsed, highlighted, ...(node?.reason ? { reason: node.reason } : {}), ...(node?.diff ? { diff: { ...node.diff } } : {}) })),
  status: () => state.status,
  zoomPath: () => [...state.zoomPath],
  selection: () => ({ ...state.sel, selector: selector(), ...timeRange() }),
  matchedPercent: () => (state.data && state.data.root.total > 0 ? (100 * state.matchedTotal) / state.data.root.total : 0),
  reload: () => load(),
  /** Resolves once no load is running and the last render has been painted. */
  idle: async () => {
    while (state.inflight || renderQueued) await new Promise((r) => setTimeout(r, 20));
  },
};

// ---------------------------------------------------------------- boot

new ResizeObserver(() => render()).observe(els.container);
window.addEventListener("popstate", () => {
  state.sel = readUrl();
  load();
});
syncControls();
applySearch();
scheduleAuto();
load();
