// The whole view in the URL: selection, range, profile type, zoom path, search, transforms, view
// mode, orientation, colours and compare settings. Pure (URLSearchParams only), unit-tested.
//
// Defaults are left out of the URL so links stay short; `v=2` marks this layout. Links of the
// first page (`label`/`value`, `range`, `compare`) are still understood.

import { parseTransform, formatTransform } from "./transforms.js";

export const VIEWS = ["both", "graph", "table", "sandwich"];
export const RANGE_PRESETS = [
  ["now-5m", "Last 5 minutes"], ["now-15m", "Last 15 minutes"], ["now-1h", "Last 1 hour"],
  ["now-6h", "Last 6 hours"], ["now-24h", "Last 24 hours"], ["now-7d", "Last 7 days"],
];

export const DEFAULTS = Object.freeze({
  query: "{}", type: "cpu:nanoseconds", from: "now-1h", until: "now",
  search: "", view: "both", fn: "", orient: "icicle", color: "package",
  zoom: [], tf: [], split: "",
  compare: false, cmpQuery: "", cmpFrom: "", cmpUntil: "", palette: "rg",
  auto: false, maxNodes: "",
});

const LEGACY_RANGES = { "5m": "now-5m", "15m": "now-15m", "1h": "now-1h", "6h": "now-6h", "24h": "now-24h" };
const quote = (v) => '"' + String(v).replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n") + '"';

/** Query string → view state (unknown or malformed values fall back to defaults). */
export function parseState(search) {
  const p = new URLSearchParams(search);
  const s = { ...DEFAULTS, zoom: [], tf: [] };
  const str = (k) => p.get(k) ?? "";
  if (p.has("query")) s.query = str("query") || DEFAULTS.query;
  else if (p.get("value") && p.get("value") !== "all") s.query = `{${str("label") || "service_name"}=${quote(str("value"))}}`;
  if (p.get("type")) s.type = str("type");
  const legacy = LEGACY_RANGES[str("range")];
  if (p.get("from")) s.from = str("from");
  else if (legacy) s.from = legacy;
  if (p.get("until")) s.until = str("until");
  s.search = str("search");
  if (VIEWS.includes(str("view"))) s.view = str("view");
  s.fn = str("fn");
  if (s.view === "sandwich" && !s.fn) s.view = DEFAULTS.view;
  if (str("orient") === "flame") s.orient = "flame";
  if (str("color") === "kind") s.color = "kind";
  s.zoom = p.getAll("zoom");
  s.tf = p.getAll("tf").map(parseTransform).filter(Boolean);
  s.split = str("split");
  // Compare: `cmp=1` (v2) or a legacy `compare=<selector>`.
  const legacyCompare = p.get("compare") && p.get("compare") !== "1";
  s.compare = p.get("cmp") === "1" || !!legacyCompare;
  s.cmpQuery = str("cmp_query") || (legacyCompare ? str("compare") : "");
  s.cmpFrom = str("cmp_from") || str("compare_from");
  s.cmpUntil = str("cmp_until") || str("compare_until");
  if (str("palette") === "cb") s.palette = "cb";
  s.auto = p.get("auto") === "1";
  s.maxNodes = /^\d+$/.test(str("max_nodes")) ? str("max_nodes") : "";
  return s;
}

/** View state → query string (without `?`), defaults omitted, in a stable order. */
export function serializeState(s) {
  const p = new URLSearchParams();
  p.set("v", "2");
  const put = (k, v, d) => { if (v !== d && v !== "" && v != null) p.set(k, v); };
  put("query", s.query, DEFAULTS.query);
  put("type", s.type, DEFAULTS.type);
  put("from", s.from, DEFAULTS.from);
  put("until", s.until, DEFAULTS.until);
  put("search", s.search, "");
  put("view", s.view, DEFAULTS.view);
  if (s.view === "sandwich") put("fn", s.fn, "");
  put("orient", s.orient, DEFAULTS.orient);
  put("color", s.color, DEFAULTS.color);
  for (const z of s.zoom) p.append("zoom", z);
  for (const t of s.tf) p.append("tf", formatTransform(t));
  put("split", s.split, "");
  if (s.compare) {
    p.set("cmp", "1");
    put("cmp_query", s.cmpQuery, "");
    put("cmp_from", s.cmpFrom, "");
    put("cmp_until", s.cmpUntil, "");
  }
  put("palette", s.palette, DEFAULTS.palette);
  if (s.auto) p.set("auto", "1");
  put("max_nodes", s.maxNodes, "");
  return p.toString();
}

/** The baseline of a comparison: its own selector and range, or the page's. */
export function baseline(s) {
  return { query: s.cmpQuery || s.query, from: s.cmpFrom || s.from, until: s.cmpUntil || s.until };
}
